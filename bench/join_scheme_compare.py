"""Join figures of two versions of the whole join chain, side by side in one run (issue 16: one-time computer
passwords against the shared join account).

    sudo venv/bin/python -m bench.join_scheme_compare BASE_REV [--sequential 10] [--burst 20] [--rounds 2]

`adlab_bench --compare-with` swaps only join-domain.sh; here the function, its contract and the lab's directory
setup changed too, so each side runs the adlab benchmark (join latency one node at a time, then a burst) from its
own checkout: BASE_REV in a temporary git worktree, and this working tree. The sides alternate, `--rounds` times,
so that both see the same machine load over the run; each figure is the median over the rounds. Prints a markdown
table; no asserts.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROWS = {
    "join p50": re.compile(r"^\| Join latency, start to first AD lookup, p50 \[[^]]*\] \| ([0-9.]+) s"),
    "join p95": re.compile(r"^\| Join latency, start to first AD lookup, p95 \[[^]]*\] \| ([0-9.]+) s"),
    "burst wall": re.compile(r"^\| Burst of \d+ nodes at once \[[^]]*\]: wall time until all finished \| ([0-9.]+) s"),
}
OK = re.compile(r"^\| Burst of \d+: nodes resolving AD users afterwards \| (\d+)/(\d+)")


def run_side(tree: Path, sequential: int, burst: int) -> dict[str, float]:
    out = subprocess.run(
        [str(REPO / "venv" / "bin" / "python"), "-m", "bench.adlab_bench", "--sequential", str(sequential),
         "--burst", str(burst), "--users", "0"],
        cwd=tree, capture_output=True, text=True, timeout=3600, check=False)
    figures: dict[str, float] = {}
    for line in out.stdout.splitlines():
        for name, pattern in ROWS.items():
            m = pattern.match(line)
            if m:
                figures[name] = float(m.group(1))
        m = OK.match(line)
        if m:
            figures["burst ok"] = int(m.group(1)) / int(m.group(2))
    if out.returncode != 0 or len(figures) < len(ROWS):
        raise SystemExit(f"benchmark in {tree} failed (rc {out.returncode}):\n"
                         f"{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return figures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("base_rev")
    ap.add_argument("--sequential", type=int, default=10)
    ap.add_argument("--burst", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args(argv)
    results: dict[str, list[dict[str, float]]] = {"base": [], "now": []}
    with tempfile.TemporaryDirectory(prefix="pcad-bench-base-") as tmp:
        base = Path(tmp) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", str(base), args.base_rev], cwd=REPO, check=True,
                       capture_output=True)
        try:
            for _ in range(args.rounds):
                results["base"].append(run_side(base, args.sequential, args.burst))
                results["now"].append(run_side(REPO, args.sequential, args.burst))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=REPO, check=False,
                           capture_output=True)
    print(f"| measure (median of {args.rounds} rounds) | {args.base_rev} | now | now / base |")
    print("| --- | --- | --- | --- |")
    for name in (*ROWS, "burst ok"):
        b = statistics.median(r[name] for r in results["base"])
        n = statistics.median(r[name] for r in results["now"])
        unit = "" if name == "burst ok" else " s"
        print(f"| {name} | {b:.2f}{unit} | {n:.2f}{unit} | {n / b * 100:.0f}% |")
    print("\nper round (base, now): " + "; ".join(
        f"{b} / {n}" for b, n in zip(results["base"], results["now"], strict=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
