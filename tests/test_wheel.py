"""A wheel built from the checkout works from any directory (issue 19 item 8): built with `pip wheel`, installed
into a fresh venv, it plans a stack from a temporary directory that holds a `program.py` and a `tools/` of its own,
reads its Lambda code, bootstrap scripts and ParallelCluster version from site-packages (never from the checkout),
and runs the cluster command line that the stack's state holds.

The fresh venv borrows the project venv's site-packages (a .pth file) for pulumi & co. and for pip/setuptools, so the
build and the install run offline in seconds."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, borrowing_venv, copy_checkout


def run(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PCLUSTER_AD_PCLUSTER_VENV")}
    return subprocess.run(argv, cwd=cwd, env={**clean, **(env or {})}, capture_output=True, text=True, timeout=600,
                          check=False)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    source = copy_checkout(tmp_path_factory.mktemp("src") / "pcluster-ad")
    out = tmp_path_factory.mktemp("wheel")
    proc = run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
                "-w", str(out), str(source)], cwd=out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (built,) = out.glob("pcluster_ad-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(tmp_path_factory, wheel) -> Path:
    venv = tmp_path_factory.mktemp("wheel-venv") / "venv"
    python = borrowing_venv(venv)
    proc = run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)], cwd=venv)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return venv


def site_package(venv: Path) -> Path:
    (package,) = venv.glob("lib/python3*/site-packages/pcluster_ad")
    return package


def test_the_wheel_carries_everything_the_program_reads_at_run_time(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {"pcluster_ad/pcluster_version.txt", "pcluster_ad/__main__.py", "pcluster_ad/program.py",
                "pcluster_ad/tools/pcluster_venv.sh", "pcluster_ad/tools/pcluster-venv.lock",
                "pcluster_ad/tools/pcluster-venv-moto.lock", "pcluster_ad/tools/update_policy.json",
                "pcluster_ad/launcher/__main__.py"}
    expected |= {f"pcluster_ad/{p.relative_to(ROOT)}" for folder in ("bootstrap", "lambda_src", "components")
                 for p in (ROOT / folder).iterdir() if p.is_file() and p.suffix != ".pyc"}
    expected |= {f"pcluster_ad/{p.relative_to(ROOT)}" for p in (ROOT / "bootstrap" / "node_agent").glob("*.py")}
    assert expected <= names, sorted(expected - names)
    tops = {name.split("/")[0] for name in names}
    assert tops == {"pcluster_ad", wheel.name.split("-py3")[0] + ".dist-info"}, tops  # one import name, no tests/


def test_metadata_dependencies_are_ranges_that_admit_the_pins_except_what_the_functions_package(wheel):
    """Ranges, so that the wheel installs beside other packages; each admits the lock's pin (what the tests ran).
    Exact only for the distributions copied into the Lambda zips: their bytes are the deployed functions."""
    from packaging.requirements import Requirement

    from pcluster_ad.components import directory_admin, join_function

    archive = zipfile.ZipFile(wheel)
    metadata = archive.read(next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    requires = [Requirement(line.split(":", 1)[1].strip()) for line in metadata.splitlines()
                if line.startswith("Requires-Dist:")]
    pins = dict(line.split("==") for line in (ROOT / "requirements.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    packaged = {**directory_admin.PACKAGED, **join_function.PACKAGED}
    assert {r.name for r in requires} == set(pins)
    for r in requires:
        operators = {s.operator for s in r.specifier}
        if r.name in packaged:
            assert str(r.specifier) == f"=={packaged[r.name]}", r
        else:
            assert {">=", "<"} <= operators and "==" not in operators, r
        assert r.specifier.contains(pins[r.name]), f"{r} does not admit the pin {pins[r.name]}"


def test_the_installed_wheel_plans_a_stack_from_a_directory_of_the_users_own(tmp_path, venv):
    work = tmp_path / "my-project"
    work.mkdir()
    (work / "program.py").write_text("raise SystemExit(\"the user's program.py was imported\")\n")
    (work / "tools").mkdir()
    (work / "tools" / "__init__.py").write_text("raise SystemExit(\"the user's tools/ was imported\")\n")
    (work / "Pulumi.team.yaml").write_bytes((ROOT / "Pulumi.dev.yaml").read_bytes())

    proc = run([str(venv / "bin" / "python"), "-m", "pcluster_ad.tools.plan", "team", "--out", "plan-out"], cwd=work)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    package = site_package(venv)
    resources = json.loads((work / "plan-out" / "resources.json").read_text())
    assets = [value for r in resources for value in _assets(r.get("inputs"))]
    assert assets, "the plan has Lambda code and bootstrap scripts"
    for path in assets:  # the package's own files relative to it, in site-packages; the checkout is never read
        if Path(path).is_absolute():  # a dependency copied into a Lambda zip, from the (borrowed) site-packages
            assert "/site-packages/" in path and "pcluster_ad" not in path, path
        else:
            assert (package / path).is_file(), path
    uploaded = {Path(p).name for p in assets}
    assert {"enable-ssh-password-auth.sh", "remap-home-owners.py", "join_handler.py", "directory_admin.py"} <= uploaded
    # The join script is uploaded with the wheel's node agent baked in (bootstrap/node_agent, package data).
    (join,) = [r for r in resources if r.get("inputs", {}).get("key") == "bootstrap/join-domain.sh"]
    assert re.search(r"^NODE_AGENT_ZIP='[A-Za-z0-9+/=]{1000,}'$", join["inputs"]["content"], re.M)
    config = yaml.safe_load((work / "plan-out" / "cluster-config.yaml").read_text())
    assert config["Scheduling"]["SlurmQueues"]
    outputs = json.loads((work / "plan-out" / "outputs.json").read_text())
    assert outputs["pclusterVersion"] == (ROOT / "pcluster_version.txt").read_text().strip()


def _assets(value) -> list[str]:
    if isinstance(value, dict):
        found = [value[k] for k in ("fileAsset", "fileArchive") if isinstance(value.get(k), str)]
        return found + [a for v in value.values() for a in _assets(v)]
    if isinstance(value, list):
        return [a for v in value for a in _assets(v)]
    return []


def test_the_cluster_command_line_of_the_state_runs_from_an_installed_wheel(tmp_path, venv):
    """`venv/bin/python -m launcher ...` (the line in the stack's state) runs in the program directory that
    automation makes for an installed package, with the wheel's launcher, and says what it needs: the ParallelCluster
    venv in the user's data directory (never inside site-packages), with the command that makes it."""
    code = ("import sys; from pathlib import Path; from pcluster_ad import automation; "
            "print(automation.program_dir(Path(sys.argv[1])))")
    proc = run([str(venv / "bin" / "python"), "-c", code, str(tmp_path / "ws")], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    main = Path(proc.stdout.strip())
    assert main == tmp_path / "ws" / "program"

    from pcluster_ad.components.cluster_launcher import launcher_commands

    line = launcher_commands("hpc-dev", "eu-west-1", "3.16.1")["delete"]
    home = tmp_path / "home"
    proc = subprocess.run(["bash", "-c", line], cwd=main, capture_output=True, text=True, timeout=300, check=False,
                          env={"PATH": os.environ["PATH"], "HOME": str(home), "PCLUSTER_AD_TIMEOUT_SECONDS": "60"})
    package = site_package(venv)
    expected_venv = home / ".local" / "share" / "pcluster-ad" / ".venv-pcluster"
    assert f"{expected_venv / 'bin' / 'pcluster'} is missing" in proc.stderr, proc.stdout + proc.stderr
    assert f"bash {package / 'tools' / 'pcluster_venv.sh'}" in proc.stderr
    assert "Traceback" not in proc.stderr
