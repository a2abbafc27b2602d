"""`python -m pcluster_ad.tools.full_validation PLAN_DIR` (issue 19 item 2b): ParallelCluster's full create validation
of a planned stack, the gate scripts/deploy.sh and automation.preview/up run before anything is created. It picks
the ParallelCluster venv of the stack's version (never installing one) and refuses what `pcluster create-cluster`
would, such as an instance type that exists (the offline check passes it) but that the stack's region does not
offer."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pcluster_ad.launcher.core import SetupError
from pcluster_ad.stack_config import instance_type_problem
from pcluster_ad.tools import full_validation, plan
from tests.conftest import ROOT, stack_doc

# A real instance type (offline check: passes) that eu-west-1 does not offer (moto's offerings, which the full
# validation's world answers with; tests/test_instance_types.py compares both lists).
NOT_IN_EU_WEST_1 = "c8ib.large"


def plan_dir(tmp_path: Path, edit=None) -> Path:
    doc = stack_doc("dev")
    if edit:
        edit(doc["config"])
    config_file = tmp_path / "Pulumi.dev.yaml"
    config_file.write_text(yaml.safe_dump(doc))
    out = tmp_path / "plan"
    assert plan.main(["--config-file", str(config_file), "--out", str(out)]) == 0
    return out


def region_lacks_the_type(config):
    config["pcluster-ad:cluster"]["queues"][0]["instanceType"] = NOT_IN_EU_WEST_1


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pcluster_ad.tools.full_validation", *args], cwd=ROOT,
                          capture_output=True,
                          text=True, timeout=300, check=False, env={**os.environ, **(env or {})})


def test_a_type_the_region_does_not_offer_passes_offline_and_is_refused_here(tmp_path):
    assert instance_type_problem(NOT_IN_EU_WEST_1) is None
    out = plan_dir(tmp_path, region_lacks_the_type)  # the offline plan accepts it
    result = run_cli(str(out))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "ParallelCluster's full create validation refused the rendered cluster config" in result.stderr
    assert "nothing was created" in result.stderr
    # The queue's type: ParallelCluster's InstanceTypeBaseAMICompatibleValidator asks the region's offerings.
    assert re.search(rf"^  - ParallelCluster \w+Validator: The instance type '{NOT_IN_EU_WEST_1}' is not supported\.$",
                     result.stderr, re.M), result.stderr


def test_the_sample_passes_and_says_what_it_found(tmp_path):
    result = run_cli(str(plan_dir(tmp_path)))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ParallelCluster's full create validation passed (")
    assert "warning: ParallelCluster KeyPairValidator:" in result.stderr  # its warnings are shown, not hidden


def test_the_venv_of_the_stacks_version_is_used_and_never_installed(tmp_path):
    out = plan_dir(tmp_path, lambda c: c["pcluster-ad:cluster"].update(pclusterVersion="3.15.0"))
    env = {k: v for k, v in os.environ.items() if k != "PCLUSTER_AD_PCLUSTER_VENV"}
    result = run_cli(str(out), env=env)
    assert result.returncode == 4, result.stdout + result.stderr
    venv = ROOT / ".venv-pcluster-3.15.0"
    assert (f"PCLUSTER_AD_PCLUSTER_VENV={venv} bash {ROOT}/tools/pcluster_venv.sh --with-moto 3.15.0"
            in result.stderr), result.stderr
    assert not venv.exists()


def test_a_venv_without_moto_names_the_command_that_adds_it(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "pcluster").write_text("#!/bin/sh\n")
    (venv / "bin" / "pcluster").chmod(0o755)
    (venv / "lib" / "python3.11" / "site-packages" / "aws_parallelcluster-3.16.1.dist-info").mkdir(parents=True)
    with pytest.raises(SetupError) as err:
        full_validation.venv_python("3.16.1", {"PCLUSTER_AD_PCLUSTER_VENV": str(venv)})
    assert str(err.value) == (
        f"{venv} has no moto, which ParallelCluster's full validation needs (the deployment itself does not): run"
        f" `PCLUSTER_AD_PCLUSTER_VENV={venv} bash {ROOT}/tools/pcluster_venv.sh --with-moto 3.16.1`, then run"
        " this again")


def test_a_directory_without_a_plan_is_a_usage_error(tmp_path):
    result = run_cli(str(tmp_path))
    assert result.returncode == 2
    assert f"run `venv/bin/python -m pcluster_ad.tools.plan STACK --out {tmp_path}` first" in result.stderr


def test_a_kept_verdict_comes_back_only_for_the_same_plan_validator_and_venv(tmp_path, monkeypatch):
    """CACHE_ENV (CI, tests/test_deploy_script.py): the same plan, planned again (its JSON in another order), gets the
    kept verdict, refusals included, without a new world; an edited plan or another validator source gets a new one."""
    worlds = []
    for attempt in "abcdef":
        (tmp_path / attempt).mkdir()

    def validate_full(plan, name, *, python):  # stands in for the moto world: counts them, answers by the plan
        worlds.append(plan)
        refused = NOT_IN_EU_WEST_1 in (plan / "cluster-config.yaml").read_text()
        return {"ok": not refused, "seconds": 7.5, "blocked_network": [], "not_checked": [],
                "failures": [{"level": "ERROR", "type": "T", "message": "refused"}] if refused else []}

    monkeypatch.setattr(full_validation, "validate_full", validate_full)
    env = {**os.environ, full_validation.CACHE_ENV: str(tmp_path / "kept")}
    first = full_validation.validate_plan_dir(plan_dir(tmp_path / "a"), env)
    again = full_validation.validate_plan_dir(plan_dir(tmp_path / "b"), env)
    assert len(worlds) == 1 and "cached" not in first and again == {**first, "cached": True}
    assert len(list((tmp_path / "kept").iterdir())) == 1
    for attempt in ("c", "d"):  # a refusal is kept too, and raised again
        with pytest.raises(full_validation.FullValidationFailed, match="refused"):
            full_validation.validate_plan_dir(plan_dir(tmp_path / attempt, region_lacks_the_type), env)
    assert len(worlds) == 2
    validator = tmp_path / "validate_cluster_full.py"
    validator.write_text(full_validation.FULL_VALIDATOR.read_text() + "# changed\n")
    monkeypatch.setattr(full_validation, "FULL_VALIDATOR", validator)
    full_validation.validate_plan_dir(plan_dir(tmp_path / "e"), env)
    assert len(worlds) == 3
    full_validation.validate_plan_dir(plan_dir(tmp_path / "f"), {**env, full_validation.CACHE_ENV: ""})  # off
    assert len(worlds) == 4
