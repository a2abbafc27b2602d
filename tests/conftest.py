"""Shared fixtures: run the real program under Pulumi's mocks with a stack config."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pcluster_ad.tools.mocks import Graph, PlanMocks, config_from_stack_file, run_program  # noqa: E402


def copy_checkout(dest: Path) -> Path:
    """The checkout's files as a user's clone has them (tracked and new, not ignored: no venv/, no plan-out/)."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for name in names:
        if name and (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


def stack_doc(stack: str = "dev") -> dict[str, Any]:
    return yaml.safe_load((ROOT / f"Pulumi.{stack}.yaml").read_text())


@pytest.fixture
def run_stack() -> Callable[..., Graph]:
    """run_stack(edit=None, stack="dev", secrets={}, mocks=None, base=None) -> Graph.

    `edit(config)` mutates the parsed `config:` map of Pulumi.<stack>.yaml (plain Python
    objects); `secrets` adds secret config values (full keys)."""

    def run(edit: Callable[[dict[str, Any]], None] | None = None, *, stack: str = "dev",
            secrets: dict[str, str] | None = None, mocks: PlanMocks | None = None,
            stack_name: str | None = None) -> Graph:
        from pcluster_ad import program

        doc = copy.deepcopy(stack_doc(stack))
        if edit:
            edit(doc["config"])
        config, secret_keys = config_from_stack_file(doc)
        for key, value in (secrets or {}).items():
            config[key] = value
            secret_keys.append(key)
        return run_program(program.pulumi_program, config=config, secret_keys=secret_keys,
                           stack=stack_name or stack, mocks=mocks or PlanMocks.from_config(config))

    return run


def dumps(value: Any) -> str:
    return json.dumps(value, default=str, sort_keys=True)
