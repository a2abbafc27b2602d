"""scripts/plan.sh, the README's one command from a fresh clone to an offline plan, run as a user who is not root.

As root (CI), the script runs as `nobody` (runuser) on a copy of the checkout that `nobody` owns, in a directory of
its own outside the checkout; as any other user, as that user. What that proves: creating venv/, pip's hash-checked
install of requirements.lock into it, and the plan need no root and write nowhere but the checkout and the caller's
directory. What it does not prove: the downloads. The tests must not fetch ~450 MB from the package index, so pip
runs with --no-index and finds every pin of the lock already installed, the project venv's packages being on
PYTHONPATH (it then installs nothing; a missing or differing pin would fail the install)."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, copy_checkout, stack_doc

RUNUSER = shutil.which("runuser")


def as_user(argv: list[str]) -> list[str]:
    """argv run as a user who is not root: `nobody` when the tests run as root, else the caller."""
    return [str(RUNUSER), "-u", "nobody", "--", *argv] if os.geteuid() == 0 else argv


def user_python(env: dict[str, str]) -> str:
    """A Python of the project venv's version that the user can run and that can import the venv's packages
    (the script's find_python checks the rest: venv, ensurepip, a full standard library)."""
    minor = f"{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [os.path.realpath(sys.executable), shutil.which(f"python{minor}"), f"/usr/bin/python{minor}",
                  f"/usr/local/bin/python{minor}"]
    for candidate in dict.fromkeys(c for c in candidates if c and os.path.isfile(c)):
        probe = subprocess.run(as_user([candidate, "-c", "import pulumi, pulumi_aws, venv, ensurepip"]), env=env,
                               capture_output=True, text=True, timeout=120, check=False)
        if probe.returncode == 0:
            return candidate
    user = "nobody" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
    pytest.skip(f"no Python {minor} that {user} may run and that reads the project venv's packages"
                f" ({sysconfig.get_paths()['purelib']}); tried {candidates}")


@pytest.fixture(scope="module")
def clone() -> Iterator[tuple[Path, Path, dict[str, str]]]:
    """(checkout copy, the user's working directory, environment), all owned by the user."""
    if os.geteuid() == 0 and RUNUSER is None:
        pytest.fail("running as root, the test needs runuser (util-linux) to run the script as nobody")
    base = Path(tempfile.mkdtemp(prefix="pcluster-ad-plan-sh-"))  # not pytest's tmp_path: 0700, root's
    try:
        base.chmod(0o755)
        checkout, work = copy_checkout(base / "pcluster-ad"), base / "work"
        work.mkdir()
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(base / "home"), "LANG": "C.UTF-8",
               "PYTHONPATH": sysconfig.get_paths()["purelib"], "PIP_NO_INDEX": "1"}
        if os.geteuid() == 0:
            subprocess.run(["chown", "-R", "nobody:", str(base)], check=True)
        env["PYTHON"] = user_python(env)
        yield checkout, work, env
    finally:
        shutil.rmtree(base, ignore_errors=True)


def plan_sh(clone: tuple[Path, Path, dict[str, str]], *args: str) -> subprocess.CompletedProcess:
    checkout, work, env = clone
    return subprocess.run(as_user(["bash", str(checkout / "scripts" / "plan.sh"), *args]), cwd=work, env=env,
                          capture_output=True, text=True, timeout=900, check=False)


def test_one_command_sets_up_the_venv_and_plans_a_stack_without_root(clone):
    checkout, work, _env = clone
    assert not (checkout / "venv").exists()
    result = plan_sh(clone, "dev")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "creating venv/ with" in result.stdout and "installing requirements.lock into venv/" in result.stdout
    marker = checkout / "venv" / ".installed-requirements.lock"
    assert marker.read_bytes() == (ROOT / "requirements.lock").read_bytes()
    if os.geteuid() == 0:
        assert (checkout / "venv" / "bin" / "python").lstat().st_uid == pwd.getpwnam("nobody").pw_uid

    # The plan of Pulumi.dev.yaml, in the caller's directory (default plan-out/STACK).
    out = work / "plan-out" / "dev"
    assert f"wrote cluster-config.yaml, outputs.json, resources.json to {Path('plan-out/dev')}/" in result.stdout
    resources = json.loads((out / "resources.json").read_text())
    dev = stack_doc("dev")["config"]
    types = {r["type"] for r in resources}
    assert {"aws:ec2/vpc:Vpc", "aws:directoryservice/directory:Directory", "command:local:Command"} <= types
    assert f"{len(resources)} resources would be declared:" in result.stdout
    cluster = yaml.safe_load((out / "cluster-config.yaml").read_text())
    queue = dev["pcluster-ad:cluster"]["queues"][0]
    assert cluster["Scheduling"]["SlurmQueues"][0]["Name"] == queue["name"]
    assert cluster["Scheduling"]["SlurmQueues"][0]["ComputeResources"][0]["Instances"] == [
        {"InstanceType": queue["instanceType"]}]
    assert f'clusterName: "{dev["pcluster-ad:cluster"]["name"]}"' in result.stdout


def test_a_second_run_reuses_the_venv_and_takes_files_relative_to_the_caller(clone):
    checkout, work, _env = clone
    if not (checkout / "venv" / ".installed-requirements.lock").exists():
        assert plan_sh(clone, "dev").returncode == 0
    doc = stack_doc("dev")
    doc["config"]["pcluster-ad:cluster"]["name"] = "hpc-mine"
    (work / "mine.yaml").write_text(yaml.safe_dump(doc))  # root's file, readable by all
    result = plan_sh(clone, "--config-file", "mine.yaml", "--out", "out/mine")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "installing" not in result.stdout and "creating venv/" not in result.stdout
    assert 'clusterName: "hpc-mine"' in result.stdout
    assert (work / "out" / "mine" / "resources.json").is_file()


def test_an_invalid_stack_prints_every_problem_and_writes_nothing(clone):
    _checkout, work, _env = clone
    doc = stack_doc("dev")
    doc["config"]["pcluster-ad:cluster"]["queues"][0]["minCount"] = 99
    doc["config"]["pcluster-ad:cluster"]["name"] = "bad_name"
    (work / "bad.yaml").write_text(yaml.safe_dump(doc))
    result = plan_sh(clone, "--config-file", "bad.yaml")
    assert result.returncode == 1
    assert "queues[0].minCount" in result.stderr and "cluster.name" in result.stderr
    assert "Nothing was written." in result.stderr and not (work / "plan-out" / "bad").exists()


def test_usage_without_a_stack(clone):
    result = plan_sh(clone)
    assert result.returncode == 2 and result.stdout.startswith("usage: bash scripts/plan.sh STACK")
    result = plan_sh(clone, "--help")
    assert result.returncode == 0 and "neither root, nor the Pulumi CLI, nor AWS credentials" in result.stdout
