"""Render the ParallelCluster 3 cluster configuration (YAML) from plain values.

Pure and side-effect free: the ClusterLauncher component feeds it resolved component
outputs, the offline plan feeds it placeholders, and the tests feed it to the real
ParallelCluster schema. The config never holds a secret: nodes fetch the join credentials
from the join function at boot.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import yaml

from pcluster_ad.stack_config import LoginNodesSettings, QueueSettings

JOIN_SCRIPT = "join-domain.sh"
SSH_SCRIPT = "enable-ssh-password-auth.sh"
JOIN_TIMEOUT_SECONDS = 600
LOGIN_POOL_NAME = "login"


@dataclass(frozen=True)
class HomeStorage:
    type: str  # Efs | Ebs
    id: str  # an EFS file system id or an EBS volume id, managed by this stack (outlives the cluster)


@dataclass(frozen=True)
class ClusterConfigInputs:
    region: str
    os: str
    head_node_instance_type: str
    public_subnet_id: str
    private_subnet_ids: Sequence[str]
    queues: Sequence[QueueSettings]
    scripts_base_uri: str  # s3://bucket/prefix (no trailing slash)
    additional_policy_arns: Sequence[str]
    home: HomeStorage
    node_security_group_ids: Sequence[str] = ()
    key_name: str | None = None
    allowed_ssh_cidr: str = "0.0.0.0/0"
    head_node_ssh_password_auth: bool = True
    custom_ami: str | None = None  # Image.CustomAmi (required for OSes without an official AMI)
    queue_update_strategy: str = "DRAIN"  # Scheduling.SlurmSettings.QueueUpdateStrategy
    login_nodes: LoginNodesSettings | None = None
    tags: dict[str, str] = field(default_factory=dict)
    # Compute queues' join action gets --restrict-imds (IMDS for root only after the join). Not the head
    # or login nodes: ParallelCluster locks IMDS there already.
    compute_restrict_imds: bool = False
    # Join into the cluster's OU under collision-free computer names (DirectoryAdmin; join-domain.sh
    # --computer-ou / --computer-prefix). None: the directory's default container / the host name.
    join_computer_ou: str | None = None
    join_computer_prefix: str | None = None


def compute_resource_name(instance_type: str) -> str:
    """c5.large -> c5-large (ParallelCluster: lower-case letters, digits and hyphens)."""
    return instance_type.replace(".", "-").lower()


def render(inputs: ClusterConfigInputs) -> dict:
    join_action = {
        "Script": f"{inputs.scripts_base_uri}/{JOIN_SCRIPT}",
        # No function URL: it is baked into the uploaded script (components/bootstrap_scripts.py). The head
        # node's custom actions cannot change in place, so a recreated function must not touch them.
        "Args": ["--region", inputs.region, "--timeout", str(JOIN_TIMEOUT_SECONDS),
                 *(["--computer-ou", inputs.join_computer_ou] if inputs.join_computer_ou else []),
                 *(["--computer-prefix", inputs.join_computer_prefix] if inputs.join_computer_prefix else [])],
    }
    ssh_action = {"Script": f"{inputs.scripts_base_uri}/{SSH_SCRIPT}"}
    policies = [{"Policy": arn} for arn in inputs.additional_policy_arns]

    def custom_actions(ssh: bool, *, restrict_imds: bool = False) -> dict:
        join = {**join_action, "Args": [*join_action["Args"], "--restrict-imds"]} if restrict_imds else join_action
        actions: dict = {"OnNodeStart": join}
        if ssh:
            actions["OnNodeConfigured"] = ssh_action
        return actions

    head_networking: dict = {"SubnetId": inputs.public_subnet_id}
    queue_networking: dict = {"SubnetIds": list(inputs.private_subnet_ids)}
    if inputs.node_security_group_ids:
        # Lets nodes reach the stack-managed home file system (its mount targets admit this group only).
        head_networking["AdditionalSecurityGroups"] = list(inputs.node_security_group_ids)
        queue_networking["AdditionalSecurityGroups"] = list(inputs.node_security_group_ids)

    ssh: dict = {"AllowedIps": inputs.allowed_ssh_cidr}
    if inputs.key_name:
        ssh["KeyName"] = inputs.key_name

    home: dict = {"MountDir": "/home", "Name": "home", "StorageType": inputs.home.type}
    if inputs.home.type == "Efs":
        # Mounted over TLS (efs-utils' stunnel) with the node role's IAM identity: the file system policy
        # (components/home_storage.py) admits only this cluster's node roles, and only over TLS. ParallelCluster
        # adds elasticfilesystem:ClientMount/ClientWrite/ClientRootAccess on this file system to each node role
        # it creates when IamAuthorization is set (EfsMountOptionsValidator: IamAuthorization needs
        # EncryptionInTransit). Both are UNSUPPORTED updates: changing them replaces the cluster.
        home["EfsSettings"] = {"FileSystemId": inputs.home.id, "EncryptionInTransit": True,
                               "IamAuthorization": True}
    else:
        home["EbsSettings"] = {"VolumeId": inputs.home.id}

    config: dict = {
        "Region": inputs.region,
        "Image": {"Os": inputs.os, **({"CustomAmi": inputs.custom_ami} if inputs.custom_ami else {})},
        "HeadNode": {
            "InstanceType": inputs.head_node_instance_type,
            "Networking": head_networking,
            "Ssh": ssh,
            "Iam": {"AdditionalIamPolicies": policies},
            "CustomActions": custom_actions(inputs.head_node_ssh_password_auth),
        },
        "Scheduling": {
            "Scheduler": "slurm",
            "SlurmSettings": {
                # The VPC's DHCP options carry the AD domain, so the EC2 host names are the ones
                # that resolve on every node (ParallelCluster's own switch for this case).
                "Dns": {"UseEc2Hostnames": True},
                # DRAIN: a queue change replaces that queue's nodes as their jobs finish, instead of
                # needing the whole compute fleet stopped.
                "QueueUpdateStrategy": inputs.queue_update_strategy,
            },
            "SlurmQueues": [
                {
                    "Name": q.name,
                    "ComputeResources": [{
                        "Name": cr.name,
                        # The Instances form: ParallelCluster refuses ComputeResource/InstanceType in a queue
                        # spanning two subnets (SingleInstanceTypeSubnetValidator), and ours span both AZs.
                        "Instances": [{"InstanceType": cr.instance_type}],
                        "MinCount": cr.min_count,
                        "MaxCount": cr.max_count,
                    } for cr in q.compute_resources],
                    "Networking": queue_networking,
                    "Iam": {"AdditionalIamPolicies": policies},
                    "CustomActions": custom_actions(q.ssh_password_auth, restrict_imds=inputs.compute_restrict_imds),
                }
                for q in inputs.queues
            ],
        },
        "SharedStorage": [home],
    }
    if inputs.login_nodes is not None:
        login_networking: dict = {"SubnetIds": [inputs.public_subnet_id]}  # one subnet per pool
        if inputs.node_security_group_ids:
            login_networking["AdditionalSecurityGroups"] = list(inputs.node_security_group_ids)
        config["LoginNodes"] = {"Pools": [{
            "Name": LOGIN_POOL_NAME,
            "InstanceType": inputs.login_nodes.instance_type,
            "Count": inputs.login_nodes.count,
            # In the public subnet: ParallelCluster puts an internet-facing load balancer in front of the pool.
            "Networking": login_networking,
            # No KeyName (ParallelCluster >= 3.15 uses the head node's); the same SSH range as the head node.
            "Ssh": {"AllowedIps": inputs.allowed_ssh_cidr},
            "Iam": {"AdditionalIamPolicies": policies},
            # Users log in here: joined like every node, with password SSH as on the head node.
            "CustomActions": custom_actions(inputs.head_node_ssh_password_auth),
        }]}
    if inputs.tags:
        config["Tags"] = [{"Key": k, "Value": v} for k, v in sorted(inputs.tags.items())]
    return config


class _NoAliasDumper(yaml.SafeDumper):
    """Writes shared sub-objects out in full: the config is read by people, not just parsers."""

    def ignore_aliases(self, data) -> bool:
        return True


def to_yaml(config: dict) -> str:
    return yaml.dump(config, Dumper=_NoAliasDumper, sort_keys=False, default_flow_style=False)
