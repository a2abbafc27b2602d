"""The README's embedding example, run as a user would: installed with `pip install -e` into a fresh venv, from a
directory outside the checkout, no PYTHONPATH, against a recording stand-in `pulumi` (tests/pulumi_standin.py).

It runs on a private copy of the checkout (a git repository of its own, files as they are now), so that "no tracked
file changed" (`git status --porcelain`) is about this test alone, not about other work in the tree.
The fresh venv borrows the project venv's site-packages (a .pth file) for pulumi & co. and for pip/setuptools, so
the install runs offline (--no-build-isolation --no-index --no-deps) in seconds."""

from __future__ import annotations

import json
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests import pulumi_standin
from tests.conftest import ROOT, borrowing_venv, copy_checkout

PASSWORD = "Embedd3d-Admin-Pw"


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Embedding: Automation API"):]
    section = section[:section.index("\n## ", 1)]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "the Embedding section has exactly one python example"
    return blocks[0]


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid"}
    return subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """The checkout's files (tracked and new, not ignored) committed in a fresh repository."""
    copy = copy_checkout(tmp_path_factory.mktemp("checkout") / "pcluster-ad")
    git(copy, "init", "-q")
    git(copy, "add", "-A")
    git(copy, "commit", "-q", "-m", "snapshot")
    # The checkout's venv/ (ignored by git), which the cluster command runs: `up` checks it is there.
    (copy / "venv" / "bin").mkdir(parents=True)
    (copy / "venv" / "bin" / "python").symlink_to(sys.executable)
    return copy


@pytest.fixture(scope="module")
def installed_venv(tmp_path_factory, checkout) -> Path:
    """A fresh venv with the checkout installed editable, as the README says."""
    venv = tmp_path_factory.mktemp("embed-venv") / "venv"
    python = borrowing_venv(venv)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-build-isolation", "--no-index",
                           "--no-deps", "-e", str(checkout)], cwd=venv.parent, env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return venv


def run_example(tmp_path: Path, venv: Path, action: str, stdin: str = "", with_cli: bool = True,
                pcluster_venv: Path = ROOT / ".venv-pcluster") -> subprocess.CompletedProcess:
    work = tmp_path / "elsewhere"
    work.mkdir(exist_ok=True)
    (work / "embed.py").write_text(readme_example())
    pulumi_standin.install(tmp_path / "bin")
    # The copy has no ParallelCluster venv of its own: `up` checks for one first; use the checkout's.
    env = {"HOME": str(tmp_path / "home"), "LANG": "C.UTF-8", "PCLUSTER_AD_PCLUSTER_VENV": str(pcluster_venv),
           **pulumi_standin.env(tmp_path, tmp_path / "bin")}
    if not with_cli:
        env["PATH"] = os.pathsep.join(d for d in env["PATH"].split(os.pathsep)[1:] if not Path(d, "pulumi").exists())
    # No controlling terminal (new session): getpass reads the password from stdin, as in CI.
    return subprocess.run([str(venv / "bin" / "python"), "embed.py", action], cwd=work, env=env, input=stdin,
                          capture_output=True, text=True, timeout=600, check=False, start_new_session=True)


def test_readme_example_deploys_exactly_its_validated_config_from_outside_the_checkout(tmp_path, checkout,
                                                                                       installed_venv):
    assert git(checkout, "status", "--porcelain") == ""  # the install itself left nothing behind
    stack_files = {p.name: p.read_bytes() for p in checkout.glob("Pulumi*.yaml")}

    result = run_example(tmp_path, installed_venv, "up", stdin=PASSWORD + "\n")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "log in with: ssh <ad-user>@203.0.113.10" in result.stdout
    assert PASSWORD not in result.stdout + result.stderr

    calls = pulumi_standin.calls(tmp_path)
    work_dir = tmp_path / "home" / ".pcluster-ad" / "workspaces" / "team-hpc"
    assert all(not Path(c["cwd"]).is_relative_to(checkout) for c in calls)
    assert {c["cwd"] for c in calls if pulumi_standin.words(c)[0] != "version"} == {str(work_dir)}
    # What the engine got is exactly the example's config (validated in the example) plus the secret, on stdin.
    example = runpy.run_path(str(tmp_path / "elsewhere" / "embed.py"), run_name="example")
    up = [c for c in calls if pulumi_standin.words(c)[0] == "up"]
    assert len(up) == 1
    deployed = dict(up[0]["stack_file"]["config"])
    assert set(deployed.pop("pcluster-ad:adminPassword")) == {"secure"}
    assert deployed == example["config"]
    assert [c["stdin"] for c in calls if "stdin" in c] == [PASSWORD]
    assert not any(PASSWORD in arg for c in calls for arg in c["argv"])

    result = run_example(tmp_path, installed_venv, "destroy")
    assert result.returncode == 0, result.stdout + result.stderr
    assert [pulumi_standin.words(c)[0] for c in pulumi_standin.calls(tmp_path)[len(calls):]
            if pulumi_standin.words(c)[0] in ("up", "destroy")] == ["destroy"]

    assert git(checkout, "status", "--porcelain") == ""
    assert {p.name: p.read_bytes() for p in checkout.glob("Pulumi*.yaml")} == stack_files


def test_the_example_reports_every_missing_prerequisite_at_once_without_a_traceback(tmp_path, checkout,
                                                                                     installed_venv):
    (checkout / "venv").rename(checkout / "venv.away")
    try:
        result = run_example(tmp_path, installed_venv, "up", stdin=PASSWORD + "\n", with_cli=False,
                             pcluster_venv=tmp_path / "no-pcluster-venv")
    finally:
        (checkout / "venv.away").rename(checkout / "venv")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr[result.stderr.index("error: "):].splitlines()  # after getpass's warning (no terminal)
    assert lines[0] == "error: 3 prerequisites are missing on this machine; nothing was touched:"
    assert lines[1].startswith("  - the Pulumi CLI ('pulumi') is not on PATH")
    assert lines[2].startswith(f"  - {checkout / 'venv' / 'bin' / 'python'} is missing")
    assert lines[3].startswith(f"  - {tmp_path / 'no-pcluster-venv' / 'bin' / 'pcluster'} is missing")
    assert pulumi_standin.calls(tmp_path) == []
    assert not (tmp_path / "home" / ".pcluster-ad").exists()


def test_the_example_plans_offline_without_the_cli(tmp_path, installed_venv):
    result = run_example(tmp_path, installed_venv, "plan", with_cli=False)
    assert result.returncode == 0, result.stdout + result.stderr
    out = tmp_path / "elsewhere" / "plan-out"
    resources = json.loads((out / "resources.json").read_text())
    assert result.stdout == f"{len(resources)} resources; resources.json and cluster-config.yaml in plan-out/\n"
    cluster = yaml.safe_load((out / "cluster-config.yaml").read_text())
    assert cluster["Region"] == "eu-west-1"
    assert cluster["Scheduling"]["SlurmQueues"][0]["Name"] == "compute"
    assert pulumi_standin.calls(tmp_path) == []


def test_the_installed_package_is_the_checkouts_top_level(checkout, installed_venv, tmp_path):
    """From a directory with a `program.py` and a `tools/` of its own (a user's project), the package still imports
    its own modules: nothing of pcluster-ad is a top-level name."""
    (tmp_path / "program.py").write_text("raise SystemExit('the user\'s program.py was imported')\n")
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "__init__.py").write_text("raise SystemExit('the user\'s tools/ was imported')\n")
    code = ("from pcluster_ad import automation, program; from pcluster_ad.tools import plan; "
            "print(automation.ROOT, program.__file__, plan.__file__)")
    proc = subprocess.run([str(installed_venv / "bin" / "python"), "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, check=False, env={k: v for k, v in os.environ.items()
                                                                    if k != "PYTHONPATH"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.split() == [str(checkout), str(checkout / "program.py"), str(checkout / "tools" / "plan.py")]


def test_an_invalid_config_in_the_example_stops_before_pulumi(tmp_path, installed_venv):
    result = run_example(tmp_path, installed_venv, "up", stdin="short\n")
    assert result.returncode == 1
    assert "pcluster-ad:adminPassword" in result.stderr
    assert pulumi_standin.calls(tmp_path) == []


def test_pyproject_packages_every_folder_with_code():
    """A folder of code, a top-level module or a bootstrap script added must be listed, or the wheel goes without it
    (listed, not globbed: a wheel built from a working checkout carries nothing else that sits there; setup.py)."""
    import ast
    import tomllib

    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setup["package-dir"] == {"pcluster_ad": "."}
    folders = {p.parent.name for p in ROOT.glob("*/*.py")} - {"tests", "bench", "pcluster_ad"}
    assert set(setup["packages"]) == {"pcluster_ad"} | {f"pcluster_ad.{name}" for name in folders} - {
        "pcluster_ad.bootstrap"}  # bootstrap/ is package data: scripts uploaded to S3, never imported
    bootstrap = {f"bootstrap/{p.name}" for p in (ROOT / "bootstrap").iterdir() if p.is_file()}
    bootstrap |= {f"bootstrap/node_agent/{p.name}" for p in (ROOT / "bootstrap" / "node_agent").glob("*.py")}
    assert bootstrap <= set(setup["package-data"]["pcluster_ad"])
    tree = ast.parse((ROOT / "setup.py").read_text())
    listed = next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                  and getattr(n.targets[0], "id", "") == "MODULES")
    assert listed == {p.stem for p in ROOT.glob("*.py")} - {"setup"}


def test_code_imports_through_the_package_only_what_the_wheel_carries():
    """In a checkout the package's __path__ is the whole top level, so `pcluster_ad.tests` would import there and
    nowhere else: the code names only packaged folders and top-level modules."""
    import re
    import tomllib

    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    modules = {p.stem for p in ROOT.glob("*.py")} - {"setup"}  # setup.py builds the wheel; it is no module of it
    packaged = {p.split(".", 1)[1] for p in setup["packages"] if "." in p} | modules
    # The node agent is package data the wheel carries, importable as pcluster_ad.bootstrap.node_agent (tests do).
    if "bootstrap/node_agent/__main__.py" in setup["package-data"]["pcluster_ad"]:
        packaged.add("bootstrap")
    named = set()
    for path in [*ROOT.glob("*.py"), *ROOT.glob("*/*.py"), *ROOT.glob("*/*/*.py")]:
        if path.parts[len(ROOT.parts)] in ("venv", "build"):
            continue
        named |= set(re.findall(r"^\s*(?:from|import) pcluster_ad\.(\w+)", path.read_text(encoding="utf-8"), re.M))
        named |= {n for group in re.findall(r"from pcluster_ad import ([\w, ]+)", path.read_text(encoding="utf-8"))
                  for n in group.replace(" ", "").split(",")}
    assert named - packaged == set(), f"not in the wheel: {sorted(named - packaged)}"
