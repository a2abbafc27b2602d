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


def pytest_collection_finish(session: pytest.Session) -> None:
    """A moto mock started while importing a test module never stops: every later ``mock_aws()`` of this process then
    starts on the state the one before left (the fixtures' tables "already exist"), in whatever order tests run."""
    from moto.core.models import MockAWS

    if MockAWS._nested_count:
        raise pytest.UsageError(f"{MockAWS._nested_count} moto mock(s) started while collecting tests: start moto in "
                                "a fixture or a program's main(), never at import")


class _SharedLoaderCache:
    """A botocore Loader's `_cache` (its @instance_cache: service models, endpoints, paginators, ...), shared by every
    Loader of this process that searches the same paths for the same extras. botocore already hands one loaded model
    to every client of a session, i.e. treats them as read-only; but each boto3 session has its own Loader, and moto
    makes a new default session per mock, so every test's world re-parsed the same JSON (about half of building a
    moto world). The key holds the search paths as they are at lookup time (boto3 appends its own after __init__)."""

    shared: dict[tuple, Any] = {}

    def __init__(self, loader: Any):
        self.loader = loader

    def _key(self, key: tuple) -> tuple:
        return (tuple(self.loader.search_paths), tuple(self.loader.extras_types), *key)

    def __contains__(self, key: tuple) -> bool:
        return self._key(key) in self.shared

    def __getitem__(self, key: tuple) -> Any:
        return self.shared[self._key(key)]

    def __setitem__(self, key: tuple, value: Any) -> None:
        self.shared[self._key(key)] = value


def _share_botocore_loaders() -> None:
    from botocore import loaders

    init = loaders.Loader.__init__
    if getattr(init, "shares_cache", False):
        return

    def shared_init(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        if type(self.file_loader) is loaders.JSONFileLoader:  # a custom file loader may read other things
            self._cache = _SharedLoaderCache(self)

    shared_init.shares_cache = True  # type: ignore[attr-defined]
    loaders.Loader.__init__ = shared_init


_share_botocore_loaders()


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


@pytest.fixture
def installed_package(tmp_path, monkeypatch):
    """automation as it runs from an installed wheel: its ROOT is a package directory, not a checkout."""
    from pcluster_ad import automation

    package = tmp_path / "site-packages" / "pcluster_ad"
    (package / "launcher").mkdir(parents=True)
    monkeypatch.setattr(automation, "ROOT", package)
    return package


def borrowing_venv(venv: Path) -> Path:
    """A fresh venv (no pip of its own) that borrows this venv's site-packages through a .pth file: pulumi & co. and
    pip/setuptools, so that installing the checkout into it runs offline in seconds. Returns its python."""
    import sysconfig

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True, timeout=300).stdout.strip()
    Path(purelib, "project-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python
