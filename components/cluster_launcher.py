"""ClusterLauncher: the ParallelCluster 3 config and the command that drives the `pcluster` CLI.

The rendered config (cluster_config.py) goes to `python -m launcher` on stdin; the launcher
creates, updates or deletes the cluster and prints a final JSON line that becomes this
component's outputs. The command is REPLACED (a new cluster, the old one deleted first) when its
`create` (name, region, ParallelCluster version) or its `triggers` change: the digest of the config
values ParallelCluster refuses to update in place (update_policy.py, derived from pcluster's own
update policy), so `pulumi preview` shows a replacement exactly where `pcluster update-cluster`
would refuse; any other change runs `update`. The command depends on everything a booting node needs, so Pulumi runs
it last on `up` and deletes the cluster first on `destroy`, before the network and directory.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_command as command

from pcluster_ad.cluster_config import ClusterConfigInputs, HomeStorage, render, to_yaml
from pcluster_ad.stack_config import ClusterSettings
from pcluster_ad.update_policy import replacement_digest

LAUNCHER = "venv/bin/python -m launcher"


@dataclass
class ClusterLauncherArgs:
    cluster: ClusterSettings
    region: str
    public_subnet_id: pulumi.Input[str]
    private_subnet_ids: pulumi.Input[Sequence[str]]
    scripts_base_uri: pulumi.Input[str]  # must stay the same across a bucket re-creation (head node Script)
    additional_policy_arns: pulumi.Input[Sequence[str]]
    home_storage_type: str
    home_storage_id: pulumi.Input[str]
    node_security_group_ids: pulumi.Input[Sequence[str]]
    # Everything a booting node needs: directory, DHCP association, join function URL and its
    # permissions, uploaded scripts, home mount targets. The cluster is created after them
    # and deleted before them.
    needs: Sequence[pulumi.Resource] = ()
    timeout_minutes: int = 90
    # join-domain.sh --computer-ou / --computer-prefix (DirectoryAdmin); None: not passed.
    join_computer_ou: str | None = None
    join_computer_prefix: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


def launcher_commands(cluster_name: str, region: str, pcluster_version: str) -> dict[str, str]:
    """The create/update/delete command lines. Only what must REPLACE the cluster when it
    changes (name, region, ParallelCluster version) is in `create`; the config travels on stdin
    and the time limit in the environment, so that changing them runs `update` instead."""
    target = f"--cluster-name {shlex.quote(cluster_name)} --region {shlex.quote(region)}"
    version = f"PCLUSTER_AD_PCLUSTER_VERSION={shlex.quote(pcluster_version)}"
    timeout = '--timeout "$PCLUSTER_AD_TIMEOUT_SECONDS"'
    return {
        "create": f"{version} {LAUNCHER} create {target} --config-file - {timeout}",
        "update": f"{version} {LAUNCHER} update {target} --config-file - {timeout}",
        "delete": f"{version} {LAUNCHER} delete {target} {timeout}",
    }


# Inputs that only ever reach fields ParallelCluster updates in place (IAM policies, queue subnets, security
# groups): the triggers are computed with this stand-in for them, so that one of them being unknown during a
# preview (a policy being replaced) does not make the whole digest unknown and the preview say "replace".
# tests/test_update_policy.py checks that they never reach the replacement view.
IN_PLACE_STAND_IN = "<updated-in-place>"


def replacement_triggers(config: dict) -> list[str]:
    """The Command's `triggers`: they change exactly when ParallelCluster refuses the change in place."""
    return [replacement_digest(config)]


def parse_launcher_result(stdout: str) -> dict:
    """The launcher's last stdout line (JSON). Before deployment (preview, offline plan) the
    output is not JSON: placeholders are returned instead."""
    for line in reversed((stdout or "").strip().splitlines()):
        try:
            result = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(result, dict):
            return result
    return {"clusterName": None, "status": None, "headNodePublicIp": None, "headNodePrivateIp": None,
            "loginNodesAddress": None, "headNodeInstanceId": None, "pclusterVersion": None, "clusterLogGroup": None}


class ClusterLauncher(pulumi.ComponentResource):
    config_yaml: pulumi.Output[str]
    cluster_name: pulumi.Output[str]
    status: pulumi.Output[str | None]
    head_node_public_ip: pulumi.Output[str | None]
    head_node_private_ip: pulumi.Output[str | None]
    login_nodes_address: pulumi.Output[str | None]  # the login pool's load balancer (DNS name), if any
    head_node_instance_id: pulumi.Output[str | None]  # for SSM Session Manager, the EC2 console, CloudWatch
    pcluster_version: pulumi.Output[str]  # the cluster's (describe-cluster); before deployment the configured one
    log_group: pulumi.Output[str | None]  # the cluster's CloudWatch log group, /aws/parallelcluster/<name>-<time>

    def __init__(self, name: str, args: ClusterLauncherArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("pcluster-ad:index:ClusterLauncher", name, None, opts)
        c = args.cluster

        def render_config(values: list) -> dict:
            public_subnet, private_subnets, scripts_uri, policies, home_id, node_sgs = values
            return render(ClusterConfigInputs(
                region=args.region,
                os=c.os,
                head_node_instance_type=c.head_node_instance_type,
                public_subnet_id=public_subnet,
                private_subnet_ids=list(private_subnets),
                queues=c.queues,
                scripts_base_uri=scripts_uri,
                additional_policy_arns=list(policies),
                home=HomeStorage(args.home_storage_type, home_id),
                node_security_group_ids=list(node_sgs),
                key_name=c.key_name,
                allowed_ssh_cidr=c.allowed_ssh_cidr,
                head_node_ssh_password_auth=c.ssh_password_auth,
                custom_ami=c.custom_ami,
                queue_update_strategy=c.queue_update_strategy,
                login_nodes=c.login_nodes,
                compute_restrict_imds=c.restrict_imds,
                join_computer_ou=args.join_computer_ou,
                join_computer_prefix=args.join_computer_prefix,
                tags=args.tags,
            ))

        config = pulumi.Output.all(
            args.public_subnet_id, args.private_subnet_ids, args.scripts_base_uri,
            args.additional_policy_arns, args.home_storage_id, args.node_security_group_ids,
        ).apply(render_config)
        self.config_yaml = config.apply(to_yaml)
        trigger_config = pulumi.Output.all(args.public_subnet_id, args.scripts_base_uri, args.home_storage_id).apply(
            lambda v: render_config([v[0], [IN_PLACE_STAND_IN], v[1], [IN_PLACE_STAND_IN], v[2], [IN_PLACE_STAND_IN]]))

        commands = launcher_commands(c.name, args.region, c.pcluster_version)
        timeout = f"{args.timeout_minutes}m"
        run = command.local.Command(
            f"{name}-pcluster",
            command.local.CommandArgs(
                create=commands["create"],
                update=commands["update"],
                delete=commands["delete"],
                stdin=self.config_yaml,
                triggers=trigger_config.apply(replacement_triggers),
                # The launcher gives up a minute inside Pulumi's own timeout, with a clear message.
                environment={"PCLUSTER_AD_TIMEOUT_SECONDS": str(args.timeout_minutes * 60 - 60),
                             "PYTHONUNBUFFERED": "1"},  # progress lines as they happen
            ),
            pulumi.ResourceOptions(
                parent=self,
                depends_on=list(args.needs),
                # A new name, region or ParallelCluster version, or a change ParallelCluster refuses
                # in place (triggers), is a new cluster; delete the old one first (an EBS home volume
                # attaches to one head node at a time). The homes are outside the cluster
                # (SharedStorage by FileSystemId/VolumeId, not owned by it): they survive.
                replace_on_changes=["create", "triggers"],
                delete_before_replace=True,
                custom_timeouts=pulumi.CustomTimeouts(create=timeout, update=timeout, delete=timeout),
            ),
        )
        result = run.stdout.apply(parse_launcher_result)
        self.cluster_name = pulumi.Output.from_input(c.name)
        self.status = result.apply(lambda r: r.get("status"))
        self.head_node_public_ip = result.apply(lambda r: r.get("headNodePublicIp"))
        self.head_node_private_ip = result.apply(lambda r: r.get("headNodePrivateIp"))
        self.login_nodes_address = result.apply(lambda r: r.get("loginNodesAddress"))
        self.head_node_instance_id = result.apply(lambda r: r.get("headNodeInstanceId"))
        self.pcluster_version = result.apply(lambda r: r.get("pclusterVersion") or c.pcluster_version)
        self.log_group = result.apply(lambda r: r.get("clusterLogGroup"))
        self.register_outputs({
            "clusterName": self.cluster_name,
            "status": self.status,
            "headNodePublicIp": self.head_node_public_ip,
            "headNodePrivateIp": self.head_node_private_ip,
            "loginNodesAddress": self.login_nodes_address,
            "headNodeInstanceId": self.head_node_instance_id,
            "pclusterVersion": self.pcluster_version,
            "clusterLogGroup": self.log_group,
        })
