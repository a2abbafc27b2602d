"""ParallelCluster 3.16.1's FULL create validation (schema and every semantic validator, as
`pcluster create-cluster --dryrun true` runs it) on the rendered config of every shipped sample stack,
against a moto world built from that stack's offline plan (tools/validate_cluster_full.py, in the
ParallelCluster venv). The broken variants prove the check has teeth: the /home EFS mount-target group
without NFS egress (the code before issue 9) and rocky9 without a custom AMI both fail with
ParallelCluster's own message."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from pcluster_ad.stack_config import PRIVATE_OSES, SUPPORTED_OS
from pcluster_ad.tools import plan
from pcluster_ad.tools.pcluster_schema import SchemaToolError, pcluster_python, validate_full
from tests.conftest import ROOT

SAMPLES = sorted(p.name.removeprefix("Pulumi.").removesuffix(".yaml") for p in ROOT.glob("Pulumi.*.yaml"))


def make_plan(tmp_path: Path, stack: str, edit=None) -> tuple[Path, str]:
    """tools.plan's output for a sample stack (optionally edited); returns (plan dir, cluster name)."""
    doc = yaml.safe_load((ROOT / f"Pulumi.{stack}.yaml").read_text())
    if edit:
        edit(doc["config"])
    config_file = tmp_path / f"Pulumi.{stack}.yaml"
    config_file.write_text(yaml.safe_dump(doc))
    out = tmp_path / f"plan-{stack}"
    assert plan.main(["--config-file", str(config_file), "--out", str(out)]) == 0
    return out, doc["config"]["pcluster-ad:cluster"]["name"]


def errors_of(result: dict) -> list[dict]:
    return [f for f in result["failures"] if f["level"] == "ERROR"]


def test_every_shipped_sample_is_covered():
    assert SAMPLES == ["dev", "prod"]


@pytest.mark.parametrize("stack", SAMPLES)
def test_sample_passes_parallelclusters_full_validation(tmp_path, stack):
    plan_dir, name = make_plan(tmp_path, stack)
    result = validate_full(plan_dir, name)
    print(f"\n{stack}: ParallelCluster full validation in {result['seconds']} s (world + validators); "
          f"notices: {[(f['level'], f['type']) for f in result['failures']]}")
    assert errors_of(result) == [], result["failures"]
    assert result["blocked_network"] == []  # nothing outside this machine was contacted
    assert result["ok"] is True
    # The world held the real things the config names: moto ids, not placeholders.
    ids = result["ids"]
    assert ids["<after-deploy:home-efs.id>"].startswith("fs-")
    assert ids["<after-deploy:home-clients.id>"].startswith("sg-")
    assert ids["<after-deploy:network-public-a.id>"].startswith("subnet-")


def test_efs_group_without_nfs_egress_fails_as_on_aws(tmp_path):
    """The mount-target group as it was before issue 9 (ingress only; the provider drops AWS's default
    egress): ParallelCluster's EfsIdValidator refuses create (and every update)."""
    plan_dir, name = make_plan(tmp_path, "dev")
    resources = json.loads((plan_dir / "resources.json").read_text())
    (group,) = [r for r in resources if r["name"] == "home-mount-targets"]
    assert group["inputs"].pop("egress")
    (plan_dir / "resources.json").write_text(json.dumps(resources))
    result = validate_full(plan_dir, name)
    assert result["ok"] is False
    failures = [f["message"] for f in errors_of(result) if f["type"] == "EfsIdValidator"]
    assert len(failures) == 2, failures  # one per AZ the cluster uses, each with its mount target
    efs_id = result["ids"]["<after-deploy:home-efs.id>"]
    zones = sorted(re.search(rf"in the Availability Zone (\S+) for EFS {efs_id},", m)[1] for m in failures)
    assert zones == ["eu-west-1a", "eu-west-1b"], failures
    for message in failures:
        assert "does not have a security group that allows inbound and outbound rules to support NFS" in message


def test_efs_group_without_nfs_ingress_fails_too(tmp_path):
    plan_dir, name = make_plan(tmp_path, "dev")
    resources = json.loads((plan_dir / "resources.json").read_text())
    (group,) = [r for r in resources if r["name"] == "home-mount-targets"]
    group["inputs"]["ingress"][0]["fromPort"] = group["inputs"]["ingress"][0]["toPort"] = 22
    (plan_dir / "resources.json").write_text(json.dumps(resources))
    result = validate_full(plan_dir, name)
    assert any(f["type"] == "EfsIdValidator" for f in errors_of(result)), result["failures"]


def test_home_efs_with_tls_and_iam_authorization_passes(tmp_path):
    """Issue 16: /home is mounted with EncryptionInTransit and IamAuthorization; ParallelCluster's create validation
    (EfsMountOptionsValidator, EfsIdValidator, ...) accepts it, and the stack's EFS file system policy is in the plan
    (the validators do not read file system policies: its content is checked in tests/test_cluster.py)."""
    plan_dir, name = make_plan(tmp_path, "dev")
    (home,) = yaml.safe_load((plan_dir / "cluster-config.yaml").read_text())["SharedStorage"]
    assert home["EfsSettings"] == {"FileSystemId": "<after-deploy:home-efs.id>", "EncryptionInTransit": True,
                                   "IamAuthorization": True}
    resources = json.loads((plan_dir / "resources.json").read_text())
    assert [r["name"] for r in resources if r["type"] == "aws:efs/fileSystemPolicy:FileSystemPolicy"] == [
        "home-policy"]
    result = validate_full(plan_dir, name)
    assert errors_of(result) == [], result["failures"]
    assert not [f for f in result["failures"] if f["type"].startswith("Efs")], result["failures"]


def validate_edited(tmp_path, stack: str, old: str, new: str) -> dict:
    """ParallelCluster's full validation of the stack's rendered config with one line changed (old must be there)."""
    plan_dir, name = make_plan(tmp_path, stack)
    config = plan_dir / "cluster-config.yaml"
    text = config.read_text()
    assert old in text
    config.write_text(text.replace(old, new))
    return validate_full(plan_dir, name)


def test_iam_authorization_without_tls_fails_as_on_aws(tmp_path):
    """The constraint the render must keep: ParallelCluster refuses IamAuthorization without EncryptionInTransit."""
    result = validate_edited(tmp_path, "dev", "    EncryptionInTransit: true\n", "    EncryptionInTransit: false\n")
    assert result["ok"] is False
    (failure,) = [f for f in errors_of(result) if f["type"] == "EfsMountOptionsValidator"]
    assert failure["message"] == (
        "EFS IAM authorization cannot be enabled when encryption in-transit is disabled. Please either disable IAM "
        "authorization or enable encryption in-transit for file system home")


def test_rocky9_without_custom_ami_fails_as_on_aws(tmp_path):
    """stack_config refuses it offline; should a config get past that, ParallelCluster refuses it too."""
    result = validate_edited(tmp_path, "prod", "  Os: rhel9\n", "  Os: rocky9\n")
    assert result["ok"] is False
    # What `pcluster create-cluster` prints: resolving the (missing) official AMI stops the validation ...
    assert {"level": "ERROR", "type": "ConfigValidationError",
            "message": "Invalid cluster configuration: Cannot find official ParallelCluster AMI"} in result["failures"]
    # ... after OsCustomAmiValidator had said why.
    (failure,) = [f for f in errors_of(result) if f["type"] == "OsCustomAmiValidator"]
    assert "ParallelCluster has no official AMI for rocky9" in failure["message"]


def test_rocky9_with_custom_ami_passes(tmp_path):
    plan_dir, name = make_plan(tmp_path, "prod", lambda c: c["pcluster-ad:cluster"].update(
        os="rocky9", customAmi="ami-0123456789abcdef0"))
    assert "CustomAmi: ami-0123456789abcdef0" in (plan_dir / "cluster-config.yaml").read_text()
    result = validate_full(plan_dir, name)
    assert errors_of(result) == [], result["failures"]


def test_a_placeholder_naming_no_resource_is_a_tool_error(tmp_path):
    plan_dir, name = make_plan(tmp_path, "dev")
    config = plan_dir / "cluster-config.yaml"
    config.write_text(config.read_text().replace("<after-deploy:home-efs.id>", "<after-deploy:no-such.id>"))
    with pytest.raises(SchemaToolError, match="no-such.id> names no resource of the plan"):
        validate_full(plan_dir, name)


def test_os_lists_match_the_parallelcluster_package():
    """stack_config keeps copies (it must not import pcluster): they must equal the package's constants."""
    out = subprocess.run(
        [str(pcluster_python()), "-c", "import json; from pcluster.constants import PRIVATE_OSES, SUPPORTED_OSES;"
         " print(json.dumps({'private': PRIVATE_OSES, 'supported': SUPPORTED_OSES}))"],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout
    package = json.loads(out)
    assert sorted(PRIVATE_OSES) == sorted(package["private"])
    assert sorted(SUPPORTED_OS) == sorted(package["supported"])


def test_parallelcluster_grants_the_efs_client_actions_itself_with_iam_authorization():
    """Why ClusterRole adds no elasticfilesystem:Client* permission: ParallelCluster adds them, on exactly the file
    systems with IamAuthorization (external ones included), to each node role it creates. Read from the installed
    package, so an upgrade that drops it fails here."""
    code = (
        "import inspect, json\n"
        "from pcluster.templates.cdk_builder_utils import NodeIamResourcesBase as N\n"
        "from pcluster.templates.cluster_stack import ClusterCdkStack as C\n"
        "print(json.dumps({'grant': inspect.getsource(N._add_pcluster_policies_to_role),\n"
        "  'arns': inspect.getsource(N._get_efs_with_iam_authorization_arns),\n"
        "  'roles': inspect.getsource(N._add_role_and_policies),\n"
        "  'efs': inspect.getsource(C._add_efs_storage)}))\n"
    )
    src = json.loads(subprocess.run([str(pcluster_python()), "-c", code], capture_output=True, text=True,
                                    check=True, timeout=120).stdout)
    grant = re.sub(r"\s+", " ", src["grant"])
    assert ('actions=[ "elasticfilesystem:ClientMount", "elasticfilesystem:ClientRootAccess", '
            '"elasticfilesystem:ClientWrite", ], effect=iam.Effect.ALLOW, resources=efs_with_iam_authorization_arns'
            in grant), grant
    assert "if efs_storage.iam_authorization" in src["arns"] and 'resource=f"file-system/{efs_id}"' in src["arns"]
    # Every role ParallelCluster creates (no InstanceRole/InstanceProfile in our config) gets that policy ...
    assert "self._add_pcluster_policies_to_role(" in src["roles"]
    # ... and an external file system's id is the one recorded for it.
    assert "efs_id = shared_efs.file_system_id" in src["efs"]


EXISTING_NETWORK = {"vpcId": "vpc-0123456789abcdef0", "publicSubnetId": "subnet-0aaaaaaaaaaaaaaa1",
                    "privateSubnetIds": ["subnet-0bbbbbbbbbbbbbbb1", "subnet-0bbbbbbbbbbbbbbb2"]}


def test_an_existing_vpc_stack_passes_and_says_what_was_not_checked(tmp_path, capsys):
    """Issue 19 item 4: an adopted VPC (network.vpcId + subnet ids). The world creates that VPC and those subnets
    under the ids the stack names (before: the groups went into a VPC moto did not have, RevokeSecurityGroupEgress
    traceback), with the AZs the offline plan assumed; the plan and the validator both say it was assumed."""
    plan_dir, name = make_plan(tmp_path, "dev", lambda c: c.update({"pcluster-ad:network": dict(EXISTING_NETWORK)}))
    plan_warnings = [line for line in capsys.readouterr().err.splitlines() if "ASSUMED" in line]
    result = validate_full(plan_dir, name)
    print(f"\nexisting VPC: ParallelCluster full validation in {result['seconds']} s")
    assert errors_of(result) == [], result["failures"]
    assert result["ok"] is True and result["blocked_network"] == []
    config = (plan_dir / "cluster-config.yaml").read_text()
    for subnet in [EXISTING_NETWORK["publicSubnetId"], *EXISTING_NETWORK["privateSubnetIds"]]:
        assert subnet in config  # the config names the user's subnets, and ParallelCluster found them
    assert result["ids"]["<after-deploy:home-clients.id>"].startswith("sg-")
    (note,) = result["not_checked"]
    assert "vpc-0123456789abcdef0" in note and "ASSUMED" in note
    assert "Not checked: the real subnets' AZs and VPC, their route tables" in note
    # The validator built the subnets in the AZs the plan assumed (and said so, naming each subnet).
    (plan_warning,) = plan_warnings
    zones = {"subnet-0bbbbbbbbbbbbbbb1": "eu-west-1a", "subnet-0bbbbbbbbbbbbbbb2": "eu-west-1b",
             "subnet-0aaaaaaaaaaaaaaa1": "eu-west-1a"}
    for subnet, zone in zones.items():
        assert f"{subnet} in {zone}" in note and f"{subnet} in {zone}" in plan_warning, (note, plan_warning)


def test_a_sample_stack_has_nothing_unchecked(tmp_path):
    plan_dir, name = make_plan(tmp_path, "dev")
    assert validate_full(plan_dir, name)["not_checked"] == []


def test_an_ebs_home_on_an_existing_vpc_is_in_the_head_nodes_assumed_az(tmp_path):
    """The plan puts an EBS /home in the public subnet's (assumed) AZ; the world builds that subnet in the same AZ,
    so ParallelCluster's check that the volume is in the head node's AZ (an ERROR otherwise) passes. Before, the
    world had no EBS volume at all (a stand-in id: ConfigSchemaValidator 'VolumeId ... does not match')."""
    def edit(c):
        c["pcluster-ad:network"] = dict(EXISTING_NETWORK)
        c["pcluster-ad:cluster"]["homeStorage"]["type"] = "Ebs"

    plan_dir, name = make_plan(tmp_path, "dev", edit)
    resources = json.loads((plan_dir / "resources.json").read_text())
    (volume,) = [r for r in resources if r["type"] == "aws:ebs/volume:Volume"]
    assert volume["inputs"]["availabilityZone"] == "eu-west-1a"
    result = validate_full(plan_dir, name)
    assert errors_of(result) == [], result["failures"]
    assert result["ok"] is True
    assert [v for k, v in result["ids"].items() if "home" in k and v.startswith("vol-")], result["ids"]
    assert "subnet-0aaaaaaaaaaaaaaa1 in eu-west-1a" in result["not_checked"][0]
