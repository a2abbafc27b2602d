"""ParallelCluster's full create validation of a planned stack, before anything is created.

    venv/bin/python -m pcluster_ad.tools.plan dev --out plan-out/dev
    venv/bin/python -m pcluster_ad.tools.full_validation plan-out/dev

Judges the stack's rendered cluster config as `pcluster create-cluster --dryrun true` does (the schema and every
semantic validator: instance types the region offers, AMIs, subnets, security groups, EFS mount targets, ...), in a
moto world built from the plan: no AWS account, no network, about 5-10 s (tools/validate_cluster_full.py).
scripts/deploy.sh runs it before `pulumi up`; automation.preview/up run it (check_config) before the stack is
touched. It runs with the ParallelCluster venv of the stack's pclusterVersion (the plan's outputs.json), which must
hold moto: `bash tools/pcluster_venv.sh --with-moto [VERSION]` makes it; nothing is installed here.

With PCLUSTER_AD_FULL_VALIDATION_CACHE=DIR, a verdict is kept in DIR under a digest of everything it depends on (the
plan's resources, cluster config and outputs, the validator's sources, the venv's interpreter and installed
packages), and a plan with the same digest gets that verdict back without a new world: for CI and tests, which
validate the same plan many times (a plan's JSON comes out in varying order: the digest is over its sorted form).

Exit codes: 0 passed (warnings and what was not checked are printed), 1 refused (one line per failure),
2 usage (no plan there), 4 the venv is missing or has no moto.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
if not __package__ and str(ROOT) not in sys.path:  # run as a file in a checkout; imported, pcluster_ad is importable
    sys.path.insert(0, str(ROOT))  # (never the installed package's directory: its modules would shadow the caller's)

from pcluster_ad.launcher.core import EXIT_SETUP, SetupError, resolve_pcluster  # noqa: E402
from pcluster_ad.stack_config import SECRET_KEYS, ConfigError, Problem  # noqa: E402
from pcluster_ad.tools.pcluster_schema import FULL_VALIDATOR, SchemaToolError, validate_full  # noqa: E402

CACHE_ENV = "PCLUSTER_AD_FULL_VALIDATION_CACHE"


class FullValidationFailed(ConfigError):
    """ParallelCluster's create validation refused the rendered config: one Problem per ERROR-level failure,
    keyed by the validator that raised it."""

    def __init__(self, result: dict[str, Any]):
        super().__init__([Problem(f"ParallelCluster {f['type']}", f["message"]) for f in errors(result)]
                         + [Problem("ParallelCluster validation", f"tried to reach {host} (refused: it must stay"
                                    " offline)") for host in result.get("blocked_network") or []])
        self.result = result
        lines = "\n".join(f"  - {p}" for p in self.problems)
        self.args = (f"ParallelCluster's full create validation refused the rendered cluster config"
                     f" ({len(self.problems)} problem(s); nothing was created):\n{lines}",)


def errors(result: dict[str, Any]) -> list[dict[str, str]]:
    return [f for f in result.get("failures") or [] if f.get("level") == "ERROR"]


def venv_python(version: str, env: Mapping[str, str] | None = None) -> Path:
    """The interpreter of the ParallelCluster venv the launcher would use for `version` (launcher.core.resolve_pcluster,
    without PCLUSTER_AD_PCLUSTER: a bare executable has no venv to run the validator in), which must hold moto.
    SetupError naming the setup command otherwise; never installs."""
    env = {k: v for k, v in (os.environ if env is None else env).items() if k != "PCLUSTER_AD_PCLUSTER"}
    try:
        pcluster = Path(resolve_pcluster({**env, "PCLUSTER_AD_PCLUSTER_VERSION": version}))
    except SetupError as err:  # the same command, with the full validation's moto
        raise SetupError(str(err).replace("pcluster_venv.sh", "pcluster_venv.sh --with-moto")) from None
    venv = pcluster.parent.parent
    if not list(venv.glob("lib/python3*/site-packages/moto-*.dist-info")):
        command = f"bash {ROOT / 'tools' / 'pcluster_venv.sh'} --with-moto {version}"
        if env.get("PCLUSTER_AD_PCLUSTER_VENV") or venv.name != ".venv-pcluster":
            command = f"PCLUSTER_AD_PCLUSTER_VENV={venv} {command}"
        raise SetupError(f"{venv} has no moto, which ParallelCluster's full validation needs (the deployment itself"
                         f" does not): run `{command}`, then run this again")
    return pcluster.parent / "python"


def verdict_digest(plan_dir: Path, python: Path) -> str:
    """A digest of what the validation's verdict depends on (see CACHE_ENV): the plan (resources in sorted order, keys
    sorted: tools.plan writes them in varying order), the validator's sources, the interpreter and its packages."""
    resources = json.loads((plan_dir / "resources.json").read_text(encoding="utf-8"))
    site = sorted(p.name for p in python.parent.parent.glob("lib/python3*/site-packages/*.dist-info"))
    parts = {
        "resources": sorted(json.dumps(r, sort_keys=True) for r in resources),
        "config": (plan_dir / "cluster-config.yaml").read_text(encoding="utf-8"),
        "outputs": json.loads((plan_dir / "outputs.json").read_text(encoding="utf-8")),
        "validator": [Path(f).read_text(encoding="utf-8") for f in (FULL_VALIDATOR, __file__,
                                                                     ROOT / "tools" / "pcluster_schema.py")],
        "python": [str(python), os.path.realpath(python), site],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def validate_plan_dir(plan_dir: Path, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Run the validation on a `tools.plan` directory; its result ({"ok", "failures", "not_checked", ...}).
    Raises FullValidationFailed when ParallelCluster refuses, SetupError without a usable venv."""
    outputs = json.loads((plan_dir / "outputs.json").read_text())
    python = venv_python(outputs["pclusterVersion"], env)
    cache_dir = (os.environ if env is None else env).get(CACHE_ENV)
    cached = Path(cache_dir, f"{verdict_digest(plan_dir, python)}.json") if cache_dir else None
    if cached is not None and cached.is_file():
        result = {**json.loads(cached.read_text(encoding="utf-8")), "cached": True}
    else:
        result = validate_full(plan_dir, outputs["clusterName"], python=python)
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            partial = cached.with_suffix(f".{os.getpid()}.tmp")
            partial.write_text(json.dumps(result), encoding="utf-8")
            partial.replace(cached)  # whole or absent, for a concurrent reader
    if not result["ok"]:
        raise FullValidationFailed(result)
    return result


def check_config(config: Mapping[str, Any], secrets: Mapping[str, str] | None = None, *, stack: str,
                 env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Plan a config dict (as automation takes it) offline and run the validation on the plan. The plan runs in a
    subprocess (Pulumi's mocks are process-wide state; the caller may be about to run the real engine) from a stack
    file that holds the secrets' keys only: the cluster config never holds a secret."""
    with tempfile.TemporaryDirectory(prefix="pcluster-ad-full-validation-") as tmp:
        stack_file = Path(tmp) / f"Pulumi.{stack}.yaml"
        values: dict[str, Any] = dict(config)
        values.update({key: {"secure": "v1:not-needed-offline"} for key in (secrets or {}) if key in SECRET_KEYS})
        stack_file.write_text(yaml.safe_dump({"config": values}), encoding="utf-8")
        out = Path(tmp) / "plan"
        proc = subprocess.run([sys.executable, "-m", "pcluster_ad.tools.plan", "--config-file", str(stack_file),
                               "--out",
                               str(out)], cwd=ROOT, env=dict(os.environ if env is None else env),
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False, timeout=600)
        if proc.returncode != 0:  # the program's own checks (the config's passed already): its message names the key
            raise ConfigError([Problem("offline plan", proc.stderr.strip() or f"exit {proc.returncode}")])
        return validate_plan_dir(out, env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pcluster_ad.tools.full_validation",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("plan_dir", type=Path, help="a `python -m pcluster_ad.tools.plan ... --out DIR` directory")
    args = parser.parse_args(argv)
    if not (args.plan_dir / "outputs.json").is_file():
        print(f"error: {args.plan_dir} holds no plan with outputs.json: run `venv/bin/python -m"
              f" pcluster_ad.tools.plan STACK --out {args.plan_dir}` first", file=sys.stderr)
        return 2
    try:
        result = validate_plan_dir(args.plan_dir)
    except SetupError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_SETUP
    except FullValidationFailed as err:
        print(err, file=sys.stderr)
        return 1
    except SchemaToolError as err:
        print(f"error: the full validation could not run: {err}", file=sys.stderr)
        return 2
    for f in result["failures"]:
        print(f"{f['level'].lower()}: ParallelCluster {f['type']}: {f['message']}", file=sys.stderr)
    for note in result.get("not_checked") or []:
        print(f"not checked: {note}", file=sys.stderr)
    how = f"{result['seconds']} s" + (f", the verdict kept in ${CACHE_ENV}" if result.get("cached") else "")
    print(f"ParallelCluster's full create validation passed ({how})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
