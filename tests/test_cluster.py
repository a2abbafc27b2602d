"""ClusterRole, BootstrapScripts, HomeStorage and ClusterLauncher in the full program graph,
and the rendered cluster config checked by the real ParallelCluster schema."""

from __future__ import annotations

import json

import pytest
import yaml

from pcluster_ad.cluster_config import compute_resource_name
from pcluster_ad.components.cluster_launcher import launcher_commands, parse_launcher_result
from pcluster_ad.tools.pcluster_schema import validate
from tests.conftest import ROOT, stack_doc

COMMAND = "command:local:Command"


def policy_of(resource) -> dict:
    return json.loads(resource.inputs["policy"])


def test_node_policies_are_least_privilege(run_stack):
    g = run_stack()
    function = g.named("join-function-fn")
    config = yaml.safe_load(g.outputs["clusterConfig"])
    attached = [p["Policy"] for p in config["HeadNode"]["Iam"]["AdditionalIamPolicies"]]
    assert attached == ["<after-deploy:join-function-invoke-policy.arn>",
                        "<after-deploy:cluster-role-scripts-policy.arn>"]
    for queue in config["Scheduling"]["SlurmQueues"]:
        assert [p["Policy"] for p in queue["Iam"]["AdditionalIamPolicies"]] == attached
    invoke = policy_of(g.named("join-function-invoke-policy"))["Statement"]
    assert sorted(a for st in invoke for a in st["Action"]) == ["lambda:InvokeFunction", "lambda:InvokeFunctionUrl"]
    assert all(st["Resource"] == [f"<after-deploy:{function.name}.arn>"] for st in invoke)
    scripts = policy_of(g.named("cluster-role-scripts-policy"))["Statement"]
    prefix = "<after-deploy:bootstrap-bucket.arn>/bootstrap/*"
    assert scripts == [
        {"Sid": "ReadBootstrapScripts", "Effect": "Allow", "Action": "s3:GetObject", "Resource": prefix,
         "Condition": {"StringEquals": {"s3:ResourceAccount": "<after-deploy:account-id>"}}},
        {"Sid": "DenyBootstrapScriptsFromOtherAccounts", "Effect": "Deny", "Action": "s3:GetObject",
         "Resource": prefix, "Condition": {"StringNotEquals": {"s3:ResourceAccount": "<after-deploy:account-id>"}}},
    ]


def test_scripts_are_read_from_a_bucket_of_this_account_only(run_stack):
    """The bucket name is fixed per account/region/stack, so another account may own a bucket of that name: the
    nodes' only S3 read of the scripts carries s3:ResourceAccount = the deploying account, and a Deny for any other
    account wins over whatever else a site attaches. ParallelCluster's Iam.S3Access (bucket and key only, no
    condition) is not used, so no other grant on the bucket name reaches the nodes."""
    from pcluster_ad.components.cluster_role import scripts_policy

    g = run_stack()
    (allow, deny) = policy_of(g.named("cluster-role-scripts-policy"))["Statement"]
    bucket = g.named("bootstrap-bucket").inputs["bucket"]
    assert "<after-deploy:account-id>" in bucket  # the name is derived from the account: it can be squatted
    assert allow["Condition"]["StringEquals"]["s3:ResourceAccount"] == "<after-deploy:account-id>"
    assert deny["Effect"] == "Deny" and deny["Resource"] == allow["Resource"]
    assert deny["Condition"] == {"StringNotEquals": {"s3:ResourceAccount": "<after-deploy:account-id>"}}
    config = yaml.safe_load(g.outputs["clusterConfig"])
    assert "S3Access" not in json.dumps(config)
    # The account id that reaches the policy is the one given, not a constant.
    other = scripts_policy("arn:aws:s3:::b/bootstrap/*", "210987654321")["Statement"]
    ops = ("StringEquals", "StringNotEquals")
    assert {st["Condition"][op]["s3:ResourceAccount"] for st, op in zip(other, ops, strict=True)} == {"210987654321"}


def test_bootstrap_bucket_is_private_encrypted_versioned_tls_only(run_stack):
    g = run_stack()
    block = g.named("bootstrap-public-access-block").inputs
    assert all(block[k] is True for k in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls",
                                          "restrictPublicBuckets"))
    assert g.named("bootstrap-versioning").inputs["versioningConfiguration"]["status"] == "Enabled"
    sse = g.named("bootstrap-encryption").inputs["rules"][0]["applyServerSideEncryptionByDefault"]
    assert sse["sseAlgorithm"] == "AES256"
    deny = policy_of(g.named("bootstrap-tls-only"))["Statement"][0]
    assert deny["Effect"] == "Deny" and deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    keys = sorted(r.inputs["key"] for r in g.of_type("aws:s3/bucketObjectv2:BucketObjectv2"))
    assert keys == ["bootstrap/enable-ssh-password-auth.sh", "bootstrap/join-domain.sh",
                    "bootstrap/remap-home-owners.py"]  # the admin's tool for an ID-mode switch (issue 18)


def test_changed_script_changes_the_uploaded_object(run_stack, tmp_path, monkeypatch):
    from pcluster_ad import program

    before = run_stack().named("bootstrap-enable-ssh-password-auth").inputs["sourceHash"]
    changed = tmp_path / "bootstrap"
    changed.mkdir()
    for f in (ROOT / "bootstrap").iterdir():
        if f.is_dir():  # the node agent, baked into the join script
            (changed / f.name).symlink_to(f)
        else:
            (changed / f.name).write_bytes(f.read_bytes())
    (changed / "enable-ssh-password-auth.sh").write_text(
        (ROOT / "bootstrap" / "enable-ssh-password-auth.sh").read_text() + "\n# v2\n")
    (changed / "join-domain.sh").write_text((ROOT / "bootstrap" / "join-domain.sh").read_text() + "\n# v2\n")
    (tmp_path / "lambda_src").symlink_to(ROOT / "lambda_src")
    monkeypatch.setattr(program, "ROOT", tmp_path)
    g = run_stack()
    after = g.named("bootstrap-enable-ssh-password-auth").inputs["sourceHash"]
    assert before != after and len(after) == 64
    assert g.named("bootstrap-join-domain").inputs["content"].endswith("\n# v2\n")  # baked copy: content


def test_home_efs_outlives_the_cluster_and_admits_only_cluster_nodes(run_stack):
    g = run_stack()
    efs = g.named("home-efs")
    assert efs.inputs["encrypted"] is True
    assert efs.options["retainOnDelete"] is True  # Retain: `pulumi destroy` keeps the homes
    targets = g.of_type("aws:efs/mountTarget:MountTarget")
    assert sorted(t.inputs["subnetId"] for t in targets) == ["<after-deploy:network-private-a.id>",
                                                              "<after-deploy:network-private-b.id>"]
    assert all(not t.options["retainOnDelete"] for t in targets)  # they live in subnets that go
    ingress = g.named("home-mount-targets").inputs["ingress"]
    assert ingress == [{"protocol": "tcp", "fromPort": 2049, "toPort": 2049,
                        "securityGroups": ["<after-deploy:home-clients.id>"], "description": "NFS from cluster nodes"}]
    config = yaml.safe_load(g.outputs["clusterConfig"])
    assert config["SharedStorage"] == [{"MountDir": "/home", "Name": "home", "StorageType": "Efs",
                                        "EfsSettings": {"FileSystemId": "<after-deploy:home-efs.id>",
                                                        "EncryptionInTransit": True, "IamAuthorization": True}}]
    assert config["HeadNode"]["Networking"]["AdditionalSecurityGroups"] == ["<after-deploy:home-clients.id>"]


CLIENT_ACTIONS = ["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite",
                  "elasticfilesystem:ClientRootAccess"]


def _statements(policy: dict) -> dict[str, dict]:
    return {st["Sid"]: st for st in policy["Statement"]}


def test_home_efs_policy_admits_only_this_clusters_node_roles_over_tls(run_stack):
    g = run_stack()
    name = g.named("cluster-pcluster").inputs["create"].split("--cluster-name ")[1].split()[0]
    (fs_policy,) = g.of_type("aws:efs/fileSystemPolicy:FileSystemPolicy")
    assert fs_policy.name == "home-policy" and g.parent_name(fs_policy) == "home"
    assert fs_policy.inputs["fileSystemId"] == "<after-deploy:home-efs.id>"
    assert not fs_policy.options["retainOnDelete"]  # `destroy` takes it with the mount targets
    policy = json.loads(fs_policy.inputs["policy"])
    sts = _statements(policy)
    assert set(sts) == {"DenyWithoutTls", "DenyAllButClusterNodes", "AllowClusterNodes"}
    fs_arn = "<after-deploy:home-efs.arn>"
    assert all(st["Resource"] == fs_arn and st["Principal"] == {"AWS": "*"} for st in sts.values())
    # Nothing without TLS, whatever the action or principal.
    assert sts["DenyWithoutTls"]["Effect"] == "Deny" and sts["DenyWithoutTls"]["Action"] == "*"
    assert sts["DenyWithoutTls"]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    # NFS access: the roles ParallelCluster creates for THIS cluster's nodes (IAM path /parallelcluster/<name>/).
    pattern = f"arn:aws:iam::<after-deploy:account-id>:role/parallelcluster/{name}/*"
    assert sts["AllowClusterNodes"]["Effect"] == "Allow"
    assert sts["AllowClusterNodes"]["Action"] == CLIENT_ACTIONS  # root: the head node's cookbook, pam_mkhomedir
    assert sts["AllowClusterNodes"]["Condition"] == {"ArnLike": {"aws:PrincipalArn": pattern}}
    # ... and nobody else: an Allow alone would still admit same-account principals with their own grants.
    assert sts["DenyAllButClusterNodes"]["Effect"] == "Deny"
    assert sts["DenyAllButClusterNodes"]["Action"] == CLIENT_ACTIONS
    assert sts["DenyAllButClusterNodes"]["Condition"] == {"ArnNotLike": {"aws:PrincipalArn": pattern}}
    # The cluster starts only once the policy is in place, and the output shows the same document.
    assert "home-policy" in g.dependency_names(g.named("cluster-pcluster"))
    assert json.loads(g.outputs["homeFileSystemPolicy"]) == policy


def test_home_efs_policy_follows_the_cluster_name(run_stack):
    g = run_stack(lambda c: c["pcluster-ad:cluster"].update(name="other-hpc"))
    (fs_policy,) = g.of_type("aws:efs/fileSystemPolicy:FileSystemPolicy")
    sts = _statements(json.loads(fs_policy.inputs["policy"]))
    assert sts["AllowClusterNodes"]["Condition"]["ArnLike"]["aws:PrincipalArn"].endswith(
        ":role/parallelcluster/other-hpc/*")


def test_adopted_home_file_system_gets_no_policy_but_the_document_to_apply(run_stack):
    """An adopted file system may be shared and has ONE policy: the stack neither overwrites it nor (on destroy)
    deletes it. The output carries the document for that file system's ARN, for `aws efs put-file-system-policy`."""
    g = run_stack(lambda c: c["pcluster-ad:cluster"]["homeStorage"].update(fileSystemId="fs-0123456789abcdef0"))
    assert not g.of_type("aws:efs/fileSystemPolicy:FileSystemPolicy")
    policy = json.loads(g.outputs["homeFileSystemPolicy"])
    assert {st["Resource"] for st in policy["Statement"]} == {
        "arn:aws:elasticfilesystem:eu-west-1:<after-deploy:account-id>:file-system/fs-0123456789abcdef0"}
    config = yaml.safe_load(g.outputs["clusterConfig"])
    assert config["SharedStorage"][0]["EfsSettings"] == {"FileSystemId": "fs-0123456789abcdef0",
                                                         "EncryptionInTransit": True, "IamAuthorization": True}


def test_home_mount_targets_allow_nfs_in_and_out_to_the_node_group(run_stack):
    """ParallelCluster's EfsIdValidator: a mount target's groups must allow NFS in AND out to a group every
    node carries; the provider removes AWS's default allow-all egress, so it must be written out, and no more."""
    g = run_stack()
    targets = g.named("home-mount-targets")
    assert targets.inputs["egress"] == [{"protocol": "tcp", "fromPort": 2049, "toPort": 2049,
                                         "securityGroups": ["<after-deploy:home-clients.id>"],
                                         "description": "NFS to cluster nodes (ParallelCluster's EfsIdValidator)"}]
    assert {t.inputs["securityGroups"][0] for t in g.of_type("aws:efs/mountTarget:MountTarget")} == {
        "<after-deploy:home-mount-targets.id>"}
    (out,) = g.of_type("aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule")
    assert out.name == "home-clients-nfs-out" and g.parent_name(out) == "home"
    assert {k: out.inputs[k] for k in ("securityGroupId", "referencedSecurityGroupId", "ipProtocol", "fromPort",
                                       "toPort")} == {
        "securityGroupId": "<after-deploy:home-clients.id>",
        "referencedSecurityGroupId": "<after-deploy:home-mount-targets.id>",
        "ipProtocol": "tcp", "fromPort": 2049, "toPort": 2049}
    assert "egress" not in g.named("home-clients").inputs  # no allow-all: only the NFS rule above
    config = yaml.safe_load(g.outputs["clusterConfig"])
    for networking in [config["HeadNode"]["Networking"]] + [q["Networking"] for q in
                                                           config["Scheduling"]["SlurmQueues"]]:
        assert networking["AdditionalSecurityGroups"] == ["<after-deploy:home-clients.id>"]


def test_home_delete_policy_and_reattach(run_stack):
    g = run_stack(lambda c: c["pcluster-ad:cluster"]["homeStorage"].update(deletionPolicy="Delete"))
    assert g.named("home-efs").options["retainOnDelete"] is False
    g = run_stack(lambda c: c["pcluster-ad:cluster"]["homeStorage"].update(fileSystemId="fs-0123456789abcdef0"))
    assert not g.of_type("aws:efs/fileSystem:FileSystem")
    assert {t.inputs["fileSystemId"] for t in g.of_type("aws:efs/mountTarget:MountTarget")} == {"fs-0123456789abcdef0"}


def test_home_on_ebs_in_the_head_node_az(run_stack):
    g = run_stack(lambda c: c["pcluster-ad:cluster"].__setitem__("homeStorage", {"type": "Ebs", "sizeGiB": 500}))
    volume = g.named("home-volume")
    assert volume.inputs["availabilityZone"] == "eu-west-1a" and volume.inputs["size"] == 500
    assert volume.inputs["encrypted"] is True and volume.options["retainOnDelete"] is True
    assert g.named("network-public-a").inputs["availabilityZone"] == "eu-west-1a"  # where the head node runs
    config = yaml.safe_load(g.outputs["clusterConfig"])
    assert config["SharedStorage"][0]["EbsSettings"] == {"VolumeId": "<after-deploy:home-volume.id>"}
    assert not g.of_type("aws:efs/fileSystemPolicy:FileSystemPolicy") and "homeFileSystemPolicy" not in g.outputs


def test_launcher_runs_after_everything_a_node_needs(run_stack):
    g = run_stack()
    cmd = g.named("cluster-pcluster")
    assert cmd.type == COMMAND and g.parent_name(cmd) == "cluster"
    deps = set(g.dependency_names(cmd))
    # depends_on a component means on all of its children: check the ones a booting node needs.
    needed = {"directory-ad", "directory-dhcp-assoc", "bootstrap-join-domain", "bootstrap-enable-ssh-password-auth",
              "cluster-role-scripts-policy", "home-mt-0", "home-mt-1", "network-private-a-rta", "network-nat-a"}
    needed |= {r.name for r in g.resources if r.custom and g.parent_name(r) in ("join-function", "join-secrets")}
    assert any(r.type == "aws:lambda/functionUrl:FunctionUrl" for r in g.resources if r.name in needed)
    assert needed <= deps, sorted(needed - deps)
    assert cmd.options["deleteBeforeReplace"] is True
    assert "create" in cmd.options["replaceOnChanges"]
    assert cmd.options["customTimeouts"]["create"] == "90m"


def test_launcher_command_lines_carry_no_config_and_no_secret(run_stack):
    g = run_stack(secrets={"pcluster-ad:adminPassword": "Sup3r-Secret-Passw0rd"})
    cmd = g.named("cluster-pcluster").inputs
    assert cmd["create"].startswith("PCLUSTER_AD_PCLUSTER_VERSION=3.16.1 venv/bin/python -m launcher create")
    assert "--cluster-name hpc-dev --region eu-west-1 --config-file -" in cmd["create"]
    assert " update " in cmd["update"] and " delete " in cmd["delete"] and "--config-file" not in cmd["delete"]
    assert yaml.safe_load(cmd["stdin"]) == yaml.safe_load(g.outputs["clusterConfig"])
    assert "Sup3r-Secret-Passw0rd" not in json.dumps(cmd)
    assert "Sup3r-Secret-Passw0rd" not in g.outputs["clusterConfig"]


def test_launcher_commands_replace_only_on_identity_changes():
    a = launcher_commands("hpc", "eu-west-1", "3.16.1")
    assert launcher_commands("hpc2", "eu-west-1", "3.16.1")["create"] != a["create"]
    assert launcher_commands("hpc", "us-east-1", "3.16.1")["create"] != a["create"]
    assert launcher_commands("hpc", "eu-west-1", "3.15.0")["create"] != a["create"]
    assert "'hpc; rm -rf /'" in launcher_commands("hpc; rm -rf /", "eu-west-1", "3.16.1")["create"]


def test_launcher_time_limit_is_in_the_environment(run_stack):
    cmd = run_stack().named("cluster-pcluster").inputs
    assert cmd["environment"] == {"PCLUSTER_AD_TIMEOUT_SECONDS": str(90 * 60 - 60), "PYTHONUNBUFFERED": "1"}
    assert '--timeout "$PCLUSTER_AD_TIMEOUT_SECONDS"' in cmd["create"]


def test_parse_launcher_result():
    last = {"clusterName": "hpc", "status": "CREATE_COMPLETE", "headNodePublicIp": "203.0.113.9",
            "headNodePrivateIp": "10.0.128.4"}
    assert parse_launcher_result("progress\n" + json.dumps(last) + "\n") == last
    assert parse_launcher_result("<after-deploy:cluster-pcluster.stdout>")["status"] is None


def test_rendered_config_joins_every_node_and_keeps_ssh_off_compute(run_stack):
    config = yaml.safe_load(run_stack().outputs["clusterConfig"])
    head = config["HeadNode"]
    join = head["CustomActions"]["OnNodeStart"]
    assert join["Script"] == "s3://pcluster-ad-dev-<after-deploy:account-id>-eu-west-1/bootstrap/join-domain.sh"
    assert join["Args"][:4] == ["--region", "eu-west-1", "--timeout", "600"]  # the URL is baked into the script
    assert head["CustomActions"]["OnNodeConfigured"]["Script"].endswith("/enable-ssh-password-auth.sh")
    assert head["Networking"]["SubnetId"] == "<after-deploy:network-public-a.id>"
    assert head["Ssh"] == {"AllowedIps": "203.0.113.0/24"}  # the dev sample names no key pair
    (queue,) = config["Scheduling"]["SlurmQueues"]
    assert queue["CustomActions"] == {"OnNodeStart": join}
    assert queue["Networking"]["SubnetIds"] == ["<after-deploy:network-private-a.id>",
                                                "<after-deploy:network-private-b.id>"]
    assert queue["ComputeResources"] == [{"Name": "c5-large", "Instances": [{"InstanceType": "c5.large"}],
                                          "MinCount": 2, "MaxCount": 10}]
    assert config["Scheduling"]["SlurmSettings"]["Dns"] == {"UseEc2Hostnames": True}


def test_key_pair_is_passed_when_configured(run_stack):
    g = run_stack(lambda c: c["pcluster-ad:cluster"].update(keyName="ops-key"))
    config = yaml.safe_load(g.outputs["clusterConfig"])
    assert config["HeadNode"]["Ssh"]["KeyName"] == "ops-key"


def test_compute_resource_names():
    assert compute_resource_name("c6i.4xlarge") == "c6i-4xlarge"


def concrete(config_yaml: str) -> str:
    """Placeholders -> values of the right shape, so that the schema judges the structure."""
    fake = {"network-public-a.id": "subnet-0aaaaaaaaaaaaaaaa", "network-private-a.id": "subnet-0bbbbbbbbbbbbbbbb",
            "network-private-b.id": "subnet-0cccccccccccccccc", "home-efs.id": "fs-0123456789abcdef0",
            "home-volume.id": "vol-0123456789abcdef0", "home-clients.id": "sg-0123456789abcdef0",
            "bootstrap-bucket.bucket": "pcluster-ad-bootstrap-abc", "account-id": "123456789012",
            "join-function-url.functionUrl": "https://abc.lambda-url.eu-west-1.on.aws/",
            "cluster-role-scripts-policy.arn": "arn:aws:iam::123456789012:policy/scripts",
            "join-function-invoke-policy.arn": "arn:aws:iam::123456789012:policy/invoke"}
    for key, value in fake.items():
        config_yaml = config_yaml.replace(f"<after-deploy:{key}>", value)
    assert "<after-deploy:" not in config_yaml, config_yaml
    return config_yaml


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_sample_stack_config_passes_the_real_parallelcluster_schema(run_stack, stack):
    g = run_stack(stack=stack)
    doc = stack_doc(stack)["config"]
    errors = validate(concrete(g.outputs["clusterConfig"]), doc["pcluster-ad:cluster"]["name"], doc["aws:region"])
    assert errors == []


def test_the_real_schema_rejects_a_broken_render(run_stack):
    config = yaml.safe_load(concrete(run_stack().outputs["clusterConfig"]))
    del config["HeadNode"]["Networking"]["SubnetId"]
    config["Scheduling"]["SlurmQueues"][0]["ComputeResources"][0]["MinCount"] = -1
    errors = validate(yaml.safe_dump(config), "hpc-dev", "eu-west-1")
    assert any("SubnetId" in e for e in errors), errors
    assert any("MinCount" in e for e in errors), errors


def test_join_function_concurrency_follows_the_config(run_stack):
    fn = run_stack().named("join-function-fn")
    assert fn.inputs["reservedConcurrentExecutions"] == 150  # stack_config.JOIN_RESERVED_CONCURRENCY (bench-sized)
    fn = run_stack(lambda c: c.setdefault("pcluster-ad:join", {}).update(reservedConcurrency=0)).named(
        "join-function-fn")
    assert "reservedConcurrentExecutions" not in fn.inputs


def test_restrict_imds_reaches_the_compute_queues_join_action_only(run_stack):
    def join_args(config: dict) -> dict[str, list[str]]:
        out = {"head": config["HeadNode"]["CustomActions"]["OnNodeStart"]["Args"]}
        for q in config["Scheduling"]["SlurmQueues"]:
            out[q["Name"]] = q["CustomActions"]["OnNodeStart"]["Args"]
        for pool in config.get("LoginNodes", {}).get("Pools", []):
            out["login:" + pool["Name"]] = pool["CustomActions"]["OnNodeStart"]["Args"]
        return out

    default = join_args(yaml.safe_load(run_stack().outputs["clusterConfig"]))
    assert not any("--restrict-imds" in args for args in default.values())  # default: off

    def edit(c):
        c["pcluster-ad:cluster"]["restrictImds"] = True
        c["pcluster-ad:cluster"]["queues"].append({"name": "second", "instanceType": "c5.xlarge", "maxCount": 2})

    config = yaml.safe_load(run_stack(edit).outputs["clusterConfig"])
    on = join_args(config)
    queues = [q["Name"] for q in config["Scheduling"]["SlurmQueues"]]
    assert len(queues) >= 2
    for name, args in on.items():
        if name in queues:
            assert args == [*default.get(name, default[queues[0]]), "--restrict-imds"], (name, args)
        else:  # head and login nodes: ParallelCluster locks IMDS there itself
            assert "--restrict-imds" not in args, (name, args)
    assert validate(concrete(yaml.safe_dump(config)), "hpc-dev", "eu-west-1") == []


def test_custom_ami_and_queue_update_strategy_are_rendered(run_stack):
    config = yaml.safe_load(run_stack().outputs["clusterConfig"])
    assert config["Image"] == {"Os": "alinux2023"}  # official AMI: no CustomAmi key
    assert config["Scheduling"]["SlurmSettings"]["QueueUpdateStrategy"] == "DRAIN"  # default: no fleet stop

    def edit(c):
        c["pcluster-ad:cluster"].update(os="rocky9", customAmi="ami-0123456789abcdef0",
                                        queueUpdateStrategy="TERMINATE")

    config = yaml.safe_load(run_stack(edit).outputs["clusterConfig"])
    assert config["Image"] == {"Os": "rocky9", "CustomAmi": "ami-0123456789abcdef0"}
    assert config["Scheduling"]["SlurmSettings"]["QueueUpdateStrategy"] == "TERMINATE"
    assert validate(concrete(yaml.safe_dump(config)), "hpc-dev", "eu-west-1") == []
