"""scripts/deploy.sh as a newcomer runs it, with a stand-in `pulumi` that records its calls
(the real CLI cannot be installed here)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
import yaml

from pcluster_ad.tools.full_validation import CACHE_ENV
from tests.conftest import ROOT, stack_doc

# `whoami --verbose` as the real CLI prints it (pkg/cmd/pulumi/whoami/whoami.go); PULUMI_STANDIN_BACKEND is the
# login's backend URL (default: local files).
STAND_IN = """#!/bin/sh
printf '%s\\n' "$*" >> "$PULUMI_CALLS"
case "$1" in
  whoami) [ "${PULUMI_STANDIN_WHOAMI:-ok}" = ok ] || { echo "error: not logged in" >&2; exit 255; }
    printf 'User: stand-in\\nOrganizations: \\nBackend URL: %s\\nToken type: personal\\n' \\
      "${PULUMI_STANDIN_BACKEND:-file://~}" ;;
esac
"""
PULUMI_CLOUD = {"PULUMI_STANDIN_BACKEND": "https://app.pulumi.com/stand-in"}
WHOAMI = "whoami --verbose --non-interactive"


@pytest.fixture(scope="module", autouse=True)
def _verdict_cache(tmp_path_factory):
    """Most tests here deploy the same dev plan, each through ParallelCluster's full validation (5-10 s in moto): its
    verdict is kept for the module (tools/full_validation.py CACHE_ENV, keyed by a digest of the plan, the validator
    and the venv), so a repeated plan gets the same verdict without a new world; another plan is validated afresh."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CACHE_ENV, str(tmp_path_factory.mktemp("full-validation-verdicts")))
        yield


def fake_node(version_output: str) -> str:
    return f"#!/bin/sh\n[ \"$1\" = --version ] && echo '{version_output}'\n"


def run_deploy(tmp_path, *args: str, with_pulumi: bool = True, passphrase: bool = True, extra_env=None,
               node_script: str | None = None):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    if with_pulumi:
        (bin_dir / "pulumi").write_text(STAND_IN)
        (bin_dir / "pulumi").chmod(0o755)
    node = shutil.which("node")
    if node_script is not None:
        (bin_dir / "node").write_text(node_script)
        (bin_dir / "node").chmod(0o755)
    elif node:
        (bin_dir / "node").symlink_to(node) if not (bin_dir / "node").exists() else None
    # The caller's PATH (its python3), minus nothing: no real Pulumi CLI exists on these machines.
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": os.environ.get("HOME", str(tmp_path)),
           "PULUMI_CALLS": str(tmp_path / "calls")}
    env.update({k: v for k, v in os.environ.items() if k.startswith("PYENV")})
    if passphrase:
        env["PULUMI_CONFIG_PASSPHRASE"] = "test-passphrase"
    env.update(extra_env or {})
    for key in ("PCLUSTER_AD_PCLUSTER_VENV", CACHE_ENV):
        if os.environ.get(key) and key not in (extra_env or {}):
            env[key] = os.environ[key]
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
    result, calls = run_deploy(tmp_path, "dev", "--yes", extra_env={CACHE_ENV: ""})  # a full validation, never kept
    assert result.returncode == 0, result.stdout + result.stderr
    assert calls == [WHOAMI, "stack select --create dev", "up --stack dev --yes"]


def test_logs_in_to_local_state_only_when_no_backend_is_configured(tmp_path):
    result, calls = run_deploy(tmp_path, "dev", "--yes", extra_env={"PULUMI_STANDIN_WHOAMI": "fail"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert calls == [WHOAMI, "login --local", "stack select --create dev",
                     "up --stack dev --yes"]
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
    assert calls == [WHOAMI]  # the backend, read for the passphrase check; nothing selected, created or changed


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
    assert plain.returncode == 2 and "PULUMI_CONFIG_PASSPHRASE" in plain.stdout and plain_calls == [WHOAMI]


def test_parallelclusters_full_validation_stops_it_before_pulumi(tmp_path):
    """Issue 19 item 2b: a type that exists (the offline check passes it) but that the stack's region does not offer
    is what `pcluster create-cluster` refuses 10-40 minutes into `pulumi up`, after the directory exists: deploy.sh
    runs ParallelCluster's own create validation on the plan first (tools/full_validation.py)."""
    doc = stack_doc("dev")
    doc["config"]["pcluster-ad:cluster"]["queues"][0]["instanceType"] = "c8ib.large"  # not offered in eu-west-1
    bad = ROOT / "Pulumi.citest-region.yaml"
    bad.write_text(yaml.safe_dump(doc))
    try:
        result, calls = run_deploy(tmp_path, "citest-region", "--yes")
    finally:
        bad.unlink()
        shutil.rmtree(ROOT / "plan-out" / "citest-region", ignore_errors=True)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "ParallelCluster's full create validation of plan-out/citest-region" in result.stdout
    assert "The instance type 'c8ib.large' is not supported." in result.stderr
    assert calls == [WHOAMI]  # the prerequisites' login check only: no stack selected, nothing created


def stack_file(name: str, **top_level: str):
    """Pulumi.<name>.yaml: the dev sample's config plus top-level keys (secretsprovider, encryptionsalt, ...)."""
    doc = {**stack_doc("dev"), **top_level}
    path = ROOT / f"Pulumi.{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_pulumi_cloud_needs_no_passphrase_for_a_new_stack(tmp_path):
    """Logged in to Pulumi Cloud, a stack without encryptionsalt gets the service's secrets manager."""
    result, calls = run_deploy(tmp_path, "dev", "--yes", passphrase=False, extra_env=PULUMI_CLOUD)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PULUMI_CONFIG_PASSPHRASE" not in result.stdout
    assert calls == [WHOAMI, "stack select --create dev", "up --stack dev --yes"]


def test_pulumi_cloud_by_backend_url_needs_no_passphrase_either(tmp_path):
    result, calls = run_deploy(tmp_path, "dev", passphrase=False,
                               extra_env={"PULUMI_BACKEND_URL": "https://api.pulumi.com"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert calls == ["stack select --create dev", "up --stack dev"]


def test_a_passphrase_encrypted_stack_needs_it_even_on_pulumi_cloud(tmp_path):
    """An encryptionsalt in the stack file: the CLI uses the passphrase provider, whatever the backend."""
    path = stack_file("citest-salt", encryptionsalt="v1:c2FsdA==:v1:abc:def")
    try:
        result, calls = run_deploy(tmp_path, "citest-salt", passphrase=False, extra_env=PULUMI_CLOUD)
    finally:
        path.unlink()
    assert result.returncode == 2
    assert ("error: set PULUMI_CONFIG_PASSPHRASE (or PULUMI_CONFIG_PASSPHRASE_FILE): Pulumi.citest-salt.yaml has an"
            " encryptionsalt: the stack's secrets are passphrase-encrypted") in result.stdout
    assert calls == [WHOAMI]


@pytest.mark.parametrize("backend", ["s3://team-state/pcluster-ad", "file://~", "azblob://state", "gs://state"])
def test_a_diy_backend_needs_the_passphrase_for_a_new_stack(tmp_path, backend):
    result, calls = run_deploy(tmp_path, "dev", passphrase=False, extra_env={"PULUMI_STANDIN_BACKEND": backend})
    assert result.returncode == 2
    assert f"PULUMI_CONFIG_PASSPHRASE_FILE): on {backend} (not Pulumi Cloud)" in result.stdout
    assert "stack select" not in " ".join(calls)


def test_no_login_means_local_state_and_the_passphrase(tmp_path):
    result, calls = run_deploy(tmp_path, "dev", passphrase=False, extra_env={"PULUMI_STANDIN_WHOAMI": "fail"})
    assert result.returncode == 2
    assert "with local state (no backend configured), the stack's secrets are passphrase-encrypted" in result.stdout
    assert calls == [WHOAMI]


@pytest.mark.parametrize("provider", ["awskms://alias/k?region=eu-west-1", "azurekeyvault://v.vault.azure.net/keys/k",
                                      "gcpkms://projects/p/locations/l/keyRings/r/cryptoKeys/k",
                                      "hashivault://pcluster-ad"])
def test_a_stack_with_its_own_secrets_provider_needs_no_passphrase_on_any_backend(tmp_path, provider):
    path = stack_file("citest-provider", secretsprovider=provider, encryptedkey="c3RhbmQtaW4ta2V5")
    try:
        result, calls = run_deploy(tmp_path, "citest-provider", passphrase=False,
                                   extra_env={"PULUMI_STANDIN_BACKEND": "s3://team-state"})
    finally:
        path.unlink()
        shutil.rmtree(ROOT / "plan-out" / "citest-provider", ignore_errors=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert calls[-1] == "up --stack citest-provider"


def test_secretsprovider_passphrase_is_the_passphrase(tmp_path):
    path = stack_file("citest-pp", secretsprovider="passphrase", encryptionsalt="v1:c2FsdA==:v1:abc:def")
    try:
        result, _calls = run_deploy(tmp_path, "citest-pp", passphrase=False, extra_env=PULUMI_CLOUD)
    finally:
        path.unlink()
    assert result.returncode == 2 and "has an encryptionsalt" in result.stdout


@pytest.mark.parametrize("version", ["v18.19.1", "v16.20.2", "v8.0.0"])
def test_a_node_older_than_20_is_refused_with_a_hint_that_installs_one_that_qualifies(tmp_path, version):
    result, calls = run_deploy(tmp_path, "dev", node_script=fake_node(version))
    assert result.returncode == 2 and calls == [WHOAMI]  # nothing else ran
    assert (f"error: Node.js {version} is too old for the ParallelCluster CLI; install Node.js 20 or newer"
            in result.stdout)
    installs = re.findall(r"nvm install (\d+)", result.stdout)
    assert installs and all(int(major) >= 20 for major in installs)
    assert "nvm-sh/nvm/v" in result.stdout  # a pinned nvm release, not a moving branch


@pytest.mark.parametrize("version", ["v20.0.0", "v22.11.0", "v24.1.0"])
def test_node_20_and_newer_pass(tmp_path, version):
    result, _calls = run_deploy(tmp_path, "dev", "--yes", node_script=fake_node(version))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Node.js" not in result.stdout


def test_a_node_that_prints_no_version_is_refused(tmp_path):
    result, _calls = run_deploy(tmp_path, "dev", node_script="#!/bin/sh\nexit 1\n")
    assert result.returncode == 2
    assert "`node --version` printed '', not a Node.js version: install Node.js 20 or newer" in result.stdout
