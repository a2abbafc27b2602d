"""HomeStorage: the file system behind /home, owned by this stack, not by the cluster.

ParallelCluster deletes the storage it creates together with the cluster; home directories
must outlive a cluster that is replaced or deleted. So the stack creates the EFS file system
(or EBS volume) and hands ParallelCluster its id as external storage. With deletion policy
Retain, `pulumi destroy` leaves the file system in the account (its mount targets, which live
in the VPC's subnets, are removed); set `homeStorage.fileSystemId` to attach it again.

EFS access: the cluster mounts /home over TLS with IAM authorization (cluster_config.py), and the file
system policy below admits only this cluster's node roles (ParallelCluster creates them under the IAM
path /parallelcluster/<cluster name>/) and nothing without TLS. The policy is put only on a file system
this stack creates: an adopted one (`existing_id`) may be shared, and EFS has one policy per file system,
so writing it would replace its owner's policy and deleting it on `destroy` would open the file system.
For those, `file_system_policy` is the document to apply by hand (the `homeFileSystemPolicy` output).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

NFS_PORT = 2049
# What an NFS client may do with IAM authorization. ClientRootAccess is needed: without it EFS squashes root
# to nobody, and root writes /home on every node: the head node's cookbook copies the AMI's /home into the
# file system as root (`rsync -a`, aws-parallelcluster-cookbook restore_home_shared_data.rb) and pam_mkhomedir
# creates each AD user's home as root at first login. ParallelCluster grants the same three to its node roles.
EFS_CLIENT_ACTIONS = ["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite",
                      "elasticfilesystem:ClientRootAccess"]
# ParallelCluster's IAM path for the roles it creates for a cluster's nodes (lambda_src/join_handler.py ROLE_PATH).
NODE_ROLE_PATH = "/parallelcluster/{cluster}/"


def node_role_arn_pattern(partition: str, account: str, cluster_name: str) -> str:
    """Every role ParallelCluster creates for the cluster's nodes (head, queues, login pools)."""
    return f"arn:{partition}:iam::{account}:role{NODE_ROLE_PATH.format(cluster=cluster_name)}*"


def file_system_policy(file_system_arn: str, node_role_pattern: str) -> dict:
    """The /home file system policy: TLS only, and NFS access for the cluster's node roles only.

    The Deny on other principals makes it "only": an Allow alone would still let any principal of the account
    whose own IAM policy grants elasticfilesystem:Client* mount the homes (same-account access is granted by
    either side), and a client mounting without IAM is anonymous and has no aws:PrincipalArn, so ArnNotLike
    matches it too."""
    return {
        "Version": "2012-10-17",
        "Id": "pcluster-ad-home",
        "Statement": [
            {"Sid": "DenyWithoutTls", "Effect": "Deny", "Principal": {"AWS": "*"}, "Action": "*",
             "Resource": file_system_arn, "Condition": {"Bool": {"aws:SecureTransport": "false"}}},
            {"Sid": "DenyAllButClusterNodes", "Effect": "Deny", "Principal": {"AWS": "*"},
             "Action": EFS_CLIENT_ACTIONS, "Resource": file_system_arn,
             "Condition": {"ArnNotLike": {"aws:PrincipalArn": node_role_pattern}}},
            {"Sid": "AllowClusterNodes", "Effect": "Allow", "Principal": {"AWS": "*"},
             "Action": EFS_CLIENT_ACTIONS, "Resource": file_system_arn,
             "Condition": {"ArnLike": {"aws:PrincipalArn": node_role_pattern}}},
        ],
    }


@dataclass
class HomeStorageArgs:
    vpc_id: pulumi.Input[str]
    mount_subnet_ids: Sequence[pulumi.Input[str]]  # one per AZ the nodes run in (EFS)
    type: str = "Efs"  # Efs | Ebs
    deletion_policy: str = "Retain"  # Retain | Delete
    size_gib: int = 100  # Ebs only
    ebs_availability_zone: pulumi.Input[str] | None = None  # Ebs: the head node's AZ
    existing_id: str | None = None  # adopt a retained file system / volume instead of creating one
    cluster_name: str | None = None  # Efs: the file system policy admits this cluster's node roles only
    tags: dict[str, str] = field(default_factory=dict)


class HomeStorage(pulumi.ComponentResource):
    storage_type: str
    storage_id: pulumi.Output[str]
    # Attached to every node: the mount targets admit NFS from this group only.
    node_security_group_ids: pulumi.Output[list[str]]
    # The cluster may start only when these exist (a node mounting /home needs a mount target).
    ready: list[pulumi.Resource]
    # Efs: the file system policy (JSON), put on the file system when the stack created it; for an adopted one
    # (existing_id) the document to apply by hand. None for Ebs.
    file_system_policy: pulumi.Output[str] | None
    file_system_policy_managed: bool

    def __init__(self, name: str, args: HomeStorageArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("pcluster-ad:index:HomeStorage", name, None, opts)
        self.storage_type = args.type
        retain = args.deletion_policy == "Retain"
        data_opts = pulumi.ResourceOptions(parent=self, retain_on_delete=retain)
        child = pulumi.ResourceOptions(parent=self)

        def tags(part: str) -> dict[str, str]:
            return {**args.tags, "Name": f"{name}-{part}"}

        if args.type == "Ebs":
            if args.existing_id:
                self.storage_id = pulumi.Output.from_input(args.existing_id)
            else:
                volume = aws.ebs.Volume(f"{name}-volume", aws.ebs.VolumeArgs(
                    availability_zone=args.ebs_availability_zone, size=args.size_gib, type="gp3",
                    encrypted=True, tags=tags("volume"),
                ), data_opts)
                self.storage_id = volume.id
            self.node_security_group_ids = pulumi.Output.from_input([])
            self.ready = []
            self.file_system_policy = None
            self.file_system_policy_managed = False
        else:
            clients = aws.ec2.SecurityGroup(f"{name}-clients", aws.ec2.SecurityGroupArgs(
                vpc_id=args.vpc_id,
                description="pcluster-ad nodes that mount /home",
                tags=tags("clients"),
            ), child)
            targets_sg = aws.ec2.SecurityGroup(f"{name}-mount-targets", aws.ec2.SecurityGroupArgs(
                vpc_id=args.vpc_id,
                description="pcluster-ad /home EFS mount targets: NFS from cluster nodes only",
                ingress=[aws.ec2.SecurityGroupIngressArgs(
                    protocol="tcp", from_port=NFS_PORT, to_port=NFS_PORT, security_groups=[clients.id],
                    description="NFS from cluster nodes",
                )],
                # The provider revokes AWS's default allow-all egress on groups it creates, and
                # ParallelCluster's EfsIdValidator (create and every update) wants each mount
                # target's groups to allow NFS both in AND out to a group every node carries.
                egress=[aws.ec2.SecurityGroupEgressArgs(
                    protocol="tcp", from_port=NFS_PORT, to_port=NFS_PORT, security_groups=[clients.id],
                    description="NFS to cluster nodes (ParallelCluster's EfsIdValidator)",
                )],
                tags=tags("mount-targets"),
            ), child)
            # The clients group's own way out to the mount targets, so that mounting /home does not
            # depend on the allow-all egress of ParallelCluster's managed node groups. A separate
            # rule: inline it would make the two groups refer to each other.
            aws.vpc.SecurityGroupEgressRule(f"{name}-clients-nfs-out", aws.vpc.SecurityGroupEgressRuleArgs(
                security_group_id=clients.id, referenced_security_group_id=targets_sg.id,
                ip_protocol="tcp", from_port=NFS_PORT, to_port=NFS_PORT,
                description="NFS to the /home mount targets",
            ), child)
            if not args.cluster_name:
                raise ValueError("HomeStorage: an Efs home needs cluster_name (its file system policy names the "
                                 "cluster's node roles)")
            invoke = pulumi.InvokeOutputOptions(parent=self)
            account = aws.get_caller_identity_output(opts=invoke).account_id
            partition = aws.get_partition_output(opts=invoke).partition
            pattern = pulumi.Output.all(partition, account).apply(
                lambda v: node_role_arn_pattern(v[0], v[1], args.cluster_name))
            fs_policy: aws.efs.FileSystemPolicy | None = None
            if args.existing_id:
                fs_id: pulumi.Output[str] = pulumi.Output.from_input(args.existing_id)
                region = aws.get_region_output(opts=invoke).region
                fs_arn = pulumi.Output.concat("arn:", partition, ":elasticfilesystem:", region, ":", account,
                                              ":file-system/", args.existing_id)
            else:
                fs = aws.efs.FileSystem(f"{name}-efs", aws.efs.FileSystemArgs(
                    encrypted=True,
                    performance_mode="generalPurpose",
                    throughput_mode="elastic",
                    lifecycle_policies=[aws.efs.FileSystemLifecyclePolicyArgs(transition_to_ia="AFTER_30_DAYS")],
                    tags=tags("efs"),
                ), data_opts)
                aws.efs.BackupPolicy(f"{name}-backup", aws.efs.BackupPolicyArgs(
                    file_system_id=fs.id,
                    backup_policy=aws.efs.BackupPolicyBackupPolicyArgs(status="ENABLED"),
                ), data_opts)
                fs_id = fs.id
                fs_arn = fs.arn
            document = pulumi.Output.all(fs_arn, pattern).apply(
                lambda v: json.dumps(file_system_policy(v[0], v[1]), indent=2))
            if not args.existing_id:
                # Not retained: `destroy` removes it with the mount targets, so a kept file system is reachable
                # by nobody until a new stack adopts it (and applies the policy for its own cluster).
                fs_policy = aws.efs.FileSystemPolicy(f"{name}-policy", aws.efs.FileSystemPolicyArgs(
                    file_system_id=fs_id, policy=document,
                ), child)
            self.file_system_policy = document
            self.file_system_policy_managed = fs_policy is not None
            self.ready = [
                aws.efs.MountTarget(f"{name}-mt-{i}", aws.efs.MountTargetArgs(
                    file_system_id=fs_id, subnet_id=subnet_id, security_groups=[targets_sg.id],
                ), child)
                for i, subnet_id in enumerate(args.mount_subnet_ids)
            ]
            if fs_policy is not None:
                self.ready.append(fs_policy)  # no cluster node ever mounts the homes without it
            self.storage_id = fs_id
            self.node_security_group_ids = pulumi.Output.all(clients.id)
        self.register_outputs({
            "storageId": self.storage_id,
            "nodeSecurityGroupIds": self.node_security_group_ids,
        })
