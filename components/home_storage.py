"""HomeStorage: the file system behind /home, owned by this stack, not by the cluster.

ParallelCluster deletes the storage it creates together with the cluster; home directories
must outlive a cluster that is replaced or deleted. So the stack creates the EFS file system
(or EBS volume) and hands ParallelCluster its id as external storage. With deletion policy
Retain, `pulumi destroy` leaves the file system in the account (its mount targets, which live
in the VPC's subnets, are removed); set `homeStorage.fileSystemId` to attach it again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

NFS_PORT = 2049


@dataclass
class HomeStorageArgs:
    vpc_id: pulumi.Input[str]
    mount_subnet_ids: Sequence[pulumi.Input[str]]  # one per AZ the nodes run in (EFS)
    type: str = "Efs"  # Efs | Ebs
    deletion_policy: str = "Retain"  # Retain | Delete
    size_gib: int = 100  # Ebs only
    ebs_availability_zone: pulumi.Input[str] | None = None  # Ebs: the head node's AZ
    existing_id: str | None = None  # adopt a retained file system / volume instead of creating one
    tags: dict[str, str] = field(default_factory=dict)


class HomeStorage(pulumi.ComponentResource):
    storage_type: str
    storage_id: pulumi.Output[str]
    # Attached to every node: the mount targets admit NFS from this group only.
    node_security_group_ids: pulumi.Output[list[str]]
    # The cluster may start only when these exist (a node mounting /home needs a mount target).
    ready: list[pulumi.Resource]

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
            if args.existing_id:
                fs_id: pulumi.Output[str] = pulumi.Output.from_input(args.existing_id)
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
            self.ready = [
                aws.efs.MountTarget(f"{name}-mt-{i}", aws.efs.MountTargetArgs(
                    file_system_id=fs_id, subnet_id=subnet_id, security_groups=[targets_sg.id],
                ), child)
                for i, subnet_id in enumerate(args.mount_subnet_ids)
            ]
            self.storage_id = fs_id
            self.node_security_group_ids = pulumi.Output.all(clients.id)
        self.register_outputs({
            "storageId": self.storage_id,
            "nodeSecurityGroupIds": self.node_security_group_ids,
        })
