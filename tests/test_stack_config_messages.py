"""Messages a user reads (issue 19, item 11): one line per cause, a map for keys pasted from ParallelCluster's docs,
no second message built on a refused value, each warning once (the README's test count: test_readme_consistency.py)."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest

from pcluster_ad.stack_config import NAME_LIMITS, ConfigError, parse_settings, physical_names
from pcluster_ad.tools.stack_file import dump
from tests.conftest import ROOT, stack_doc


def problems(raw: dict, stack: str = "dev") -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_settings(raw, stack=stack)
    return [str(p) for p in err.value.problems]


def dev() -> dict:
    return copy.deepcopy(stack_doc("dev")["config"])


def run_plan(tmp_path, config: dict, stack: str = "mine") -> subprocess.CompletedProcess:
    path = tmp_path / f"Pulumi.{stack}.yaml"
    path.write_text(dump({"config": config}))
    return subprocess.run([sys.executable, "-m", "pcluster_ad.tools.plan", "--config-file", str(path), "--out",
                           str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=120)


def problem_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("  - ")]


@pytest.mark.parametrize("region", ["eu-west-1", "ap-northeast-1", "ap-southeast-4"])
def test_a_long_stack_name_is_one_line_with_the_fix(region):
    """Three names carry the stack name (join role, join function, directory admin role): one cause, one line,
    with the longest stack name that fits all of them (it was three near-identical lines)."""
    stack = "s" * 45
    longest = max(n for n in range(1, 46)
                  if all(len(physical_names("s" * n, region)[k]) <= NAME_LIMITS[k] for k in NAME_LIMITS))
    raw = {**dev(), "aws:region": region}
    raw["pcluster-ad:network"].pop("availabilityZones", None)
    (line,) = problems(raw, stack=stack)
    assert line.startswith(f"stack name: '{stack}' is too long for region {region}: use a stack name of at most"
                           f" {longest} characters")


def test_a_long_stack_name_in_the_plan_is_one_line(tmp_path):
    config = {**dev(), "aws:region": "ap-northeast-1"}
    result = run_plan(tmp_path, config, stack="a" * 45)
    assert result.returncode == 1
    assert problem_lines(result.stderr) == [
        f"  - stack name: '{'a' * 45}' is too long for region ap-northeast-1: use a stack name of at most 39 characters"
        f" (it is part of the join role, join function and directory admin role names; 'pcad-{'a' * 45}"
        "-ap-northeast-1-join' would have 70 characters, limit 64)"]


def test_parallelcluster_keys_pasted_into_the_stack_config_are_mapped(tmp_path):
    """A docs-style paste: HeadNode, Image.Os and DirectoryService (ParallelCluster's own keys) each get one line
    naming this program's key for each pasted key (README "Configuration reference")."""
    config = dev()
    config["pcluster-ad:HeadNode"] = {"InstanceType": "c5.xlarge", "Ssh": {"KeyName": "mine"}}
    config["pcluster-ad:Image"] = {"Os": "alinux2023"}
    config["pcluster-ad:DirectoryService"] = {"DomainName": "corp.example.com", "DomainAddr": "ldaps://corp",
                                              "PasswordSecretArn": "arn:aws:secretsmanager:x"}
    config["Scheduling"] = {"SlurmQueues": [{"Name": "q", "ComputeResources": [{"InstanceType": "c5.large"}]}]}
    result = run_plan(tmp_path, config)
    assert result.returncode == 1
    lines = {line.split(": ", 1)[0][4:]: line for line in problem_lines(result.stderr)}
    assert set(lines) == {"pcluster-ad:HeadNode", "pcluster-ad:Image", "pcluster-ad:DirectoryService",
                          "pcluster-ad:Scheduling"}, result.stderr
    assert "HeadNode.InstanceType -> pcluster-ad:cluster.headNode.instanceType" in lines["pcluster-ad:HeadNode"]
    assert "HeadNode.Ssh.KeyName -> pcluster-ad:cluster.keyName" in lines["pcluster-ad:HeadNode"]
    assert "Image.Os -> pcluster-ad:cluster.os" in lines["pcluster-ad:Image"]
    directory = lines["pcluster-ad:DirectoryService"]
    assert "DirectoryService.DomainName -> pcluster-ad:directory.domainName" in directory
    assert "DirectoryService.DomainAddr -> pcluster-ad:directory.dnsIps" in directory
    assert "pcluster-ad:join.user" in directory and "pcluster-ad:joinPassword" in directory
    assert "Scheduling.SlurmQueues.ComputeResources.InstanceType -> pcluster-ad:cluster.queues[].instanceType" \
        in lines["pcluster-ad:Scheduling"]
    assert all("Configuration reference" in line for line in lines.values())


def test_parallelcluster_keys_pasted_under_the_cluster_key_are_mapped():
    raw = dev()
    raw["pcluster-ad:cluster"] = {**raw["pcluster-ad:cluster"], "Image": {"Os": "rhel9"},
                                  "HeadNode": {"InstanceType": "c5.xlarge"}}
    raw["pcluster-ad:cluster"]["headNode"] = {"InstanceType": "c5.xlarge"}
    got = problems(raw)
    assert any(p.startswith("pcluster-ad:cluster.Image: is a key of ParallelCluster's own config file")
               and "Image.Os -> pcluster-ad:cluster.os" in p for p in got), got
    assert any(p.startswith("pcluster-ad:cluster.HeadNode:") and "headNode.instanceType" in p for p in got), got
    # one level down, ParallelCluster's spelling of this program's own key is named
    assert "pcluster-ad:cluster.headNode.InstanceType: unknown key (did you mean 'instanceType'?)" in got


def test_a_refused_home_storage_type_is_the_only_message():
    """`type: EBS` is refused with the spelling that works, and sizeGiB is not then judged against the default
    (Efs), which said "applies only to type Ebs: remove it", the opposite of the fix."""
    raw = dev()
    raw["pcluster-ad:cluster"]["homeStorage"] = {"type": "EBS", "sizeGiB": 200, "volumeId": "vol-0123456789abcdef0"}
    assert problems(raw) == ["pcluster-ad:cluster.homeStorage.type: must be one of Efs, Ebs, got 'EBS' (did you mean"
                             " 'Ebs'? the values are case-sensitive)"]
    raw["pcluster-ad:cluster"]["homeStorage"] = {"type": "Ebs", "sizeGiB": 200}
    parse_settings(raw, stack="dev")


def test_a_refused_directory_type_is_the_only_message():
    raw = dev()
    raw["pcluster-ad:directory"] = {**raw["pcluster-ad:directory"], "type": "existing", "dnsIps": ["10.0.0.10"],
                                    "adminUser": "Admin", "parentOu": "DC=test,DC=domain"}
    raw["pcluster-ad:directory"].pop("size")
    assert problems(raw) == ["pcluster-ad:directory.type: must be one of SimpleAD, MicrosoftAD, Existing, got"
                             " 'existing' (did you mean 'Existing'? the values are case-sensitive)"]


def test_yaml_1_1_booleans_and_non_strings_say_how_to_write_them():
    raw = dev()
    raw["pcluster-ad:cluster"] = {**raw["pcluster-ad:cluster"], "sshPasswordAuth": "on", "name": 511}
    got = problems(raw)
    assert "pcluster-ad:cluster.sshPasswordAuth: must be true or false, got 'on' (YAML 1.1's yes/no/on/off are plain" \
           " strings to Pulumi, which reads YAML 1.2: write true or false)" in got
    assert any(p.startswith("pcluster-ad:cluster.name: must be a string, got 511 (in YAML an unquoted number")
               for p in got), got


def test_each_warning_is_printed_once_by_the_plan(tmp_path):
    """The program logs its settings' warnings again under the mocks; the plan printed both."""
    config = dev()
    config.pop("pcluster-ad:identity")
    config["pcluster-ad:users"] = [{"name": "alice"}]
    result = run_plan(tmp_path, config)
    assert result.returncode == 0, result.stderr
    warning = "pcluster-ad:identity.mode is idmap and pcluster-ad:users are declared"
    (line,) = [line for line in result.stderr.splitlines() if warning in line]
    assert line.startswith(f"warning: {warning}")

