"""scripts/deploy.sh as a newcomer runs it, with a stand-in `pulumi` that records its calls
(the real CLI cannot be installed here)."""

from __future__ import annotations

import os
import shutil
import subprocess

import yaml

from tests.conftest import ROOT, stack_doc

STAND_IN = """#!/bin/sh
printf '%s\\n' "$*" >> "$PULUMI_CALLS"
case "$1" in
  whoami) [ "${PULUMI_STANDIN_WHOAMI:-ok}" = ok ] || { echo "error: not logged in" >&2; exit 255; } ;;
esac
"""


def run_deploy(tmp_path, *args: str, with_pulumi: bool = True, passphrase: bool = True, extra_env=None):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    if with_pulumi:
        (bin_dir / "pulumi").write_text(STAND_IN)
        (bin_dir / "pulumi").chmod(0o755)
    node = shutil.which("node")
    if node:
        (bin_dir / "node").symlink_to(node) if not (bin_dir / "node").exists() else None
    # The caller's PATH (its python3), minus nothing: no real Pulumi CLI exists on these machines.
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": os.environ.get("HOME", str(tmp_path)),
           "PULUMI_CALLS": str(tmp_path / "calls")}
    env.update({k: v for k, v in os.environ.items() if k.startswith("PYENV")})
    if passphrase:
        env["PULUMI_CONFIG_PASSPHRASE"] = "test-passphrase"
    env.update(extra_env or {})
    if os.environ.get("PCLUSTER_AD_PCLUSTER_VENV"):
        env["PCLUSTER_AD_PCLUSTER_VENV"] = os.environ["PCLUSTER_AD_PCLUSTER_VENV"]
    result = subprocess.run(["bash", "scripts/deploy.sh", *args], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=600, check=False)
    calls = (tmp_path / "calls").read_text().splitlines() if (tmp_path / "calls").exists() else []
    return result, calls


def test_missing_prerequisites_are_named_before_anything_runs(tmp_path):
    assert shutil.which("pulumi") is None, "this test needs a machine without the Pulumi CLI"
    result, calls = run_deploy(tmp_path, "dev", with_pulumi=False, passphrase=False)
    assert result.returncode == 2
    assert "Pulumi CLI is not installed" in result.stdout
    assert "PULUMI_CONFIG_PASSPHRASE" in result.stdout
    assert calls == []


def test_unknown_stack_is_named(tmp_path):
    result, calls = run_deploy(tmp_path, "nosuch")
    assert result.returncode == 2 and "Pulumi.nosuch.yaml not found" in result.stdout and "dev" in result.stdout
    assert calls == []


def test_deploys_the_dev_stack_after_validating_it(tmp_path):
    result, calls = run_deploy(tmp_path, "dev", "--yes")
    assert result.returncode == 0, result.stdout + result.stderr
    assert calls == ["whoami --non-interactive", "stack select --create dev", "up --stack dev --yes"]


def test_logs_in_to_local_state_only_when_no_backend_is_configured(tmp_path):
    result, calls = run_deploy(tmp_path, "dev", "--yes", extra_env={"PULUMI_STANDIN_WHOAMI": "fail"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert calls == ["whoami --non-interactive", "login --local", "stack select --create dev", "up --stack dev --yes"]
    assert "using local state" in result.stdout


def test_a_configured_backend_url_is_used_as_is(tmp_path):
    result, calls = run_deploy(tmp_path, "dev", extra_env={"PULUMI_BACKEND_URL": "s3://team-state/pcluster-ad",
                                                           "PULUMI_STANDIN_WHOAMI": "fail"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert calls == ["stack select --create dev", "up --stack dev"]


def test_the_project_pins_no_backend():
    """A `backend:` in Pulumi.yaml would override every `pulumi login` (only PULUMI_BACKEND_URL beats it)."""
    assert "backend" not in yaml.safe_load((ROOT / "Pulumi.yaml").read_text())


def test_help_is_a_usage_text_that_names_the_offline_plan(tmp_path):
    for flag in ("--help", "-h"):
        result, calls = run_deploy(tmp_path, flag, with_pulumi=False, passphrase=False)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.startswith("usage: bash scripts/deploy.sh [STACK]")
        assert "bash scripts/plan.sh STACK" in result.stdout
        assert "not found" not in result.stdout + result.stderr
        assert calls == []


def test_a_flag_in_place_of_the_stack_is_refused_with_the_usage(tmp_path):
    result, calls = run_deploy(tmp_path, "--yes")
    assert result.returncode == 2
    assert "the first argument is the stack name, not '--yes'" in result.stdout
    assert "usage:" in result.stderr
    assert calls == []


def test_invalid_config_stops_before_pulumi(tmp_path):
    doc = stack_doc("dev")
    doc["config"]["pcluster-ad:cluster"]["queues"][0]["minCount"] = 99
    bad = ROOT / "Pulumi.citest-bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    try:
        result, calls = run_deploy(tmp_path, "citest-bad")
    finally:
        bad.unlink()
        shutil.rmtree(ROOT / "plan-out" / "citest-bad", ignore_errors=True)
    assert result.returncode != 0
    assert "queues[0].minCount" in result.stderr
    assert calls == []


def test_a_kms_stack_needs_no_passphrase(tmp_path):
    doc = stack_doc("dev")
    doc["secretsprovider"] = "awskms://alias/pcluster-ad-pulumi?region=eu-west-1"
    doc["encryptedkey"] = "c3RhbmQtaW4ta2V5"
    kms = ROOT / "Pulumi.citest-kms.yaml"
    kms.write_text(yaml.safe_dump(doc))
    try:
        result, calls = run_deploy(tmp_path, "citest-kms", passphrase=False)
        (tmp_path / "plain").mkdir()
        plain, plain_calls = run_deploy(tmp_path / "plain", "dev", passphrase=False)
    finally:
        kms.unlink()
        shutil.rmtree(ROOT / "plan-out" / "citest-kms", ignore_errors=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert calls[-1] == "up --stack citest-kms"
    assert plain.returncode == 2 and "PULUMI_CONFIG_PASSPHRASE" in plain.stdout and plain_calls == []
