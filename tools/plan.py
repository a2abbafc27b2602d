"""Offline plan: what `pulumi up` would declare for a stack, with no AWS and no Pulumi CLI.

    bash scripts/plan.sh dev                  # sets up venv/ first (no root), then this; plan-out/dev
    venv/bin/python -m pcluster_ad.tools.plan dev --out plan-out
    venv/bin/python -m pcluster_ad.tools.plan --config-file my-stack.yaml --out plan-out

Evaluates the real program under Pulumi's mocks and writes DIR/resources.json (every
resource: type, name, parent, dependencies, inputs with secrets shown as "[secret]"),
DIR/cluster-config.yaml (the ParallelCluster config) and DIR/outputs.json (the stack outputs).
ParallelCluster's full validation of that plan: `venv/bin/python -m pcluster_ad.tools.full_validation DIR`.
Values known only after deployment appear as "<after-deploy:RESOURCE.PROPERTY>".
Invalid config: every problem is printed, nothing is written, exit status 1.
`plan()` is the same for config values in Python (automation.plan uses it).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pcluster_ad.launcher.core import is_checkout

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pcluster_ad.tools.plan", description=__doc__.split("\n\n")[0])
    parser.add_argument("stack", nargs="?", help="stack name: reads Pulumi.<STACK>.yaml")
    parser.add_argument("--config-file", type=Path, help="a stack settings file to use instead of Pulumi.<STACK>.yaml")
    parser.add_argument("--out", type=Path, help="directory to write resources.json into (default: plan-out/STACK)")
    args = parser.parse_args(argv)
    if args.stack is None and args.config_file is None:
        parser.error("give a STACK name (Pulumi.<STACK>.yaml) or --config-file FILE")

    started = time.perf_counter()
    stacks_dir = ROOT if is_checkout(ROOT) else Path.cwd()  # an installed package: the caller's stack files
    config_file = args.config_file or stacks_dir / f"Pulumi.{args.stack}.yaml"
    stack = args.stack or config_file.stem.removeprefix("Pulumi.")
    if not config_file.is_file():
        stacks = sorted(p.name for p in stacks_dir.glob("Pulumi.*.yaml"))
        print(f"error: {config_file} not found (stack files here: {', '.join(stacks) or 'none'})", file=sys.stderr)
        return 1
    from pcluster_ad.stack_config import PROJECT, ConfigError, program_values, settings_from_values
    from pcluster_ad.tools.stack_file import StackFileError, read

    try:  # as the Pulumi engine reads it (YAML as gopkg.in/yaml.v3 resolves it), not as YAML 1.1 would
        engine = read(config_file.read_text(encoding="utf-8"), project=PROJECT)
    except StackFileError as e:
        print(f"error: {config_file}: {e}\nNothing was written.", file=sys.stderr)
        return 1
    for warning in engine.warnings:
        print(f"warning: {config_file.name}: {warning}", file=sys.stderr)
    config, secret_keys = engine.config, engine.secret_keys
    values = program_values(config)
    try:  # the same validation the program runs, before anything is evaluated
        settings = settings_from_values(values, stack=stack, secret_keys=secret_keys)
    except ConfigError as e:
        print(f"{config_file.name}: {e}\nNothing was written.", file=sys.stderr)
        return 1
    for warning in settings.warnings:  # accepted, but worth a second look (e.g. the admin as join account)
        print(f"warning: {warning}", file=sys.stderr)
    out = args.out or Path("plan-out") / stack

    import pulumi

    log = _ProgramLog(settings.warnings)  # the program logs these again: each line once
    logging.getLogger().addHandler(log)
    try:
        result = _plan(config, secret_keys, stack)
    except (ConfigError, pulumi.RunError) as e:  # checks that need the program (e.g. existing subnets)
        print(f"{config_file.name}: {e}\nNothing was written.", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - a bug, not the user's input: say so, without a traceback
        print(f"{config_file.name}: the program failed while planning ({type(e).__name__}: {e}). This is a bug in"
              " pcluster-ad, not in your config: please report it with this message.\nNothing was written.",
              file=sys.stderr)
        return 1
    finally:
        logging.getLogger().removeHandler(log)
    write_files(result, out)
    elapsed = time.perf_counter() - started
    _print_summary(result["resources"], result["outputs"], out, elapsed)
    for warning in result["warnings"]:  # what the plan could not check (an adopted VPC)
        print(f"warning: {warning}", file=sys.stderr)
    return 0


class _ProgramLog(logging.Handler):
    """The program's pulumi.log lines (Pulumi's mocks log them to the root logger, unprefixed), as the CLI shows
    them: "warning: ..." and each once."""

    def __init__(self, shown: tuple[str, ...]) -> None:
        super().__init__(logging.WARNING)
        self.shown = set(shown)

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message not in self.shown:
            self.shown.add(message)
            print(f"{record.levelname.lower()}: {message}", file=sys.stderr)


def plan(values: Mapping[str, Any], secret_keys: Sequence[str] = (), stack: str = "dev") -> dict[str, Any]:
    """The offline plan of a stack's config values (Python objects, as in a stack file's `config:`; the keys in
    `secret_keys` are secrets): {"resources": [...], "outputs": {...}, "files": {name: text}, "warnings": [...]}.
    Raises stack_config.ConfigError (every problem, the same validation the program runs, before anything is
    evaluated) or pulumi.RunError (a check that needs the program)."""
    from pcluster_ad.stack_config import PROJECT, program_values, settings_from_values
    from pcluster_ad.tools.stack_file import config_of

    engine = config_of(values, project=PROJECT)  # what the engine reads back from a stack file of these values
    settings = settings_from_values(program_values(engine.config), stack=stack, secret_keys=list(secret_keys))
    result = _plan(engine.config, list(secret_keys), stack)
    return {**result, "warnings": [*engine.warnings, *settings.warnings, *result["warnings"]]}


def write_files(result: dict[str, Any], out: Path) -> None:
    """The files of a plan() result (resources.json, outputs.json, cluster-config.yaml) into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    for name, content in result["files"].items():
        (out / name).write_text(content)


def _plan(config: dict[str, str], secret_keys: list[str], stack: str) -> dict[str, Any]:
    from pcluster_ad import program
    from pcluster_ad.tools.mocks import PlanMocks, run_program

    mocks = PlanMocks.from_config(config)
    graph = run_program(program.pulumi_program, config=config, secret_keys=secret_keys, stack=stack, mocks=mocks)
    graph.root = str(ROOT)
    resources = graph.to_plan()
    files = {"resources.json": json.dumps(resources, indent=2, sort_keys=False, default=str) + "\n",
             # The stack outputs as the plan knows them (tools/full_validation.py reads clusterName, pclusterVersion).
             "outputs.json": json.dumps({k: v for k, v in graph.outputs.items() if k != "clusterConfig"}, indent=2,
                                        default=str) + "\n"}
    if isinstance(graph.outputs.get("clusterConfig"), str):
        files["cluster-config.yaml"] = (
            "# ParallelCluster 3 config as the stack would render it; <after-deploy:...> values are known\n"
            "# only after deployment.\n" + graph.outputs["clusterConfig"])
    assumed = mocks.assumption_warning()  # an adopted VPC: what the plan could not ask AWS
    return {"resources": resources, "outputs": graph.outputs, "files": files, "warnings": [assumed] if assumed else []}


def _print_summary(resources: list[dict[str, Any]], outputs: dict[str, Any], out: Path, elapsed: float) -> None:
    print(f"{len(resources)} resources would be declared:")
    for r in resources:
        parent = f"  (in {r['parent']})" if r["parent"] else ""
        deps = f"  <- {', '.join(r['dependencies'])}" if r["dependencies"] else ""
        print(f"  {r['type']:<50} {r['name']}{parent}{deps}")
    secrets = sorted({r["name"] for r in resources if "[secret]" in json.dumps(r["inputs"])})
    if secrets:
        print(f"secret inputs (masked as [secret]): {', '.join(secrets)}")
    print("outputs:")
    for key, value in outputs.items():
        if key != "clusterConfig":
            print(f"  {key}: {json.dumps(value, default=str)}")
    print(f"wrote {', '.join(sorted(p.name for p in out.iterdir()))} to {out}/ in {elapsed:.2f} s")


if __name__ == "__main__":
    sys.exit(main())
