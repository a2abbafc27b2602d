"""The Pulumi program: read and validate the stack config, then wire the components.

`pulumi_program()` is what `__main__.py` runs and what the Automation API (automation.py)
and the offline plan (tools/plan.py) use as an inline program.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pulumi
import pulumi_aws as aws
import pulumi_random as random

from pcluster_ad import stack_config
from pcluster_ad.cluster_config import JOIN_SCRIPT, SSH_SCRIPT
from pcluster_ad.components.bootstrap_scripts import BootstrapScripts, BootstrapScriptsArgs, bootstrap_bucket_name
from pcluster_ad.components.cluster_launcher import ClusterLauncher, ClusterLauncherArgs
from pcluster_ad.components.cluster_role import ClusterRole, ClusterRoleArgs
from pcluster_ad.components.directory import PREVIOUS_DHCP_OPTIONS_TAG, Directory, DirectoryArgs
from pcluster_ad.components.directory_admin import DirectoryAdmin, DirectoryAdminArgs, ou_name
from pcluster_ad.components.dns_forwarding import DomainForwarding, DomainForwardingArgs
from pcluster_ad.components.home_storage import HomeStorage, HomeStorageArgs
from pcluster_ad.components.join_function import JoinFunction, JoinFunctionArgs, max_joins_for
from pcluster_ad.components.join_secrets import JoinSecrets, JoinSecretsArgs
from pcluster_ad.components.network import Network, NetworkArgs
from pcluster_ad.lambda_src.directory_admin import access_group_names, computer_prefix
from pcluster_ad.stack_config import ConfigError, Problem, Settings

ROOT = Path(__file__).resolve().parent
REMAP_TOOL = "remap-home-owners.py"  # uploaded with the scripts; not run by ParallelCluster (README "Stable UIDs")


def pulumi_program() -> None:
    settings = _load_or_fail()
    for warning in settings.warnings:
        pulumi.log.warn(warning)
    _check_existing_directory(settings)  # before any resource: a directory that disagrees declares nothing
    azs = _availability_zones(settings)
    domain_dns = _domain_dns(settings)  # before any resource: an unusable VPC fails with nothing declared
    tags = {"pcluster-ad:stack": settings.stack, **settings.tags}

    network = Network("network", NetworkArgs(
        availability_zones=azs,
        cidr=settings.network.cidr,
        nat_gateways=settings.network.nat_gateways,
        existing_vpc_id=settings.network.vpc_id,
        existing_public_subnet_id=settings.network.public_subnet_id,
        existing_private_subnet_ids=settings.network.private_subnet_ids,
        tags=tags,
    ))

    admin_password = _admin_password(settings)
    directory = Directory("directory", DirectoryArgs(
        type=settings.directory.type,
        domain_name=settings.directory.domain_name,
        short_name=settings.directory.short_name,
        size=settings.directory.size,
        vpc_id=network.vpc_id,
        subnet_ids=network.private_subnet_ids,
        ec2_internal_domain=settings.ec2_internal_domain,
        admin_password=admin_password,
        existing_dns_ips=settings.directory.dns_ips,
        existing_directory_id=settings.directory.directory_id,
        protect=settings.directory.protect,
        tags=tags,
        manage_dhcp_options=domain_dns.mode == "DhcpOptions",
        previous_dhcp_options_id=domain_dns.previous_dhcp_options_id,
    ))
    # How the nodes and functions reach the domain's names: the stack's DHCP options (the Directory's association),
    # or, in an adopted VPC by default, a Resolver rule (the VPC's DHCP options untouched), or nothing (Unmanaged).
    domain_dns_ready: list[pulumi.Resource] = [directory.dhcp_association] if directory.dhcp_association else []
    if domain_dns.mode == "ResolverRule":
        forwarding = DomainForwarding("domain-dns", DomainForwardingArgs(
            stack=settings.stack,
            domain_name=settings.directory.domain_name,
            vpc_id=network.vpc_id,
            subnet_ids=[network.private_subnet_ids[i] for i in range(2)],
            dc_ips=directory.dns_ips,
            tags=tags,
        ))
        domain_dns_ready = [forwarding.association]

    # The join chain: credentials under a stack-owned KMS key, read only by the join function.
    # Account-wide IAM names carry the region; stack_config checked their lengths.
    names = stack_config.physical_names(settings.stack, settings.region)
    join_role_name = names["join_role"]
    admin_role_name = names["directory_admin_role"]
    secrets = JoinSecrets("join-secrets", JoinSecretsArgs(
        stack=settings.stack,
        domain_name=settings.directory.domain_name,
        join_user=settings.join.user,
        join_password=_join_password(settings, admin_password),
        reader_role_name=join_role_name,
        extra_reader_role_names=[admin_role_name] if settings.directory_admin else [],
        tags=tags,
    ))
    join_function = JoinFunction("join-function", JoinFunctionArgs(
        role_name=join_role_name,
        cluster_name=settings.cluster.name,
        vpc_id=network.vpc_id,
        # In the private subnets (as DirectoryAdmin): it adds each node's computer object over LDAP.
        subnet_ids=network.private_subnet_ids,
        dc_ips=directory.dns_ips,
        computer_ou=_join_computer_ou(settings),
        computer_prefix=computer_prefix(settings.cluster.name),
        domain_parameter_name=secrets.domain_parameter_name,
        join_user_parameter_name=secrets.join_user_parameter_name,
        join_password_parameter_name=secrets.join_password_parameter_name,
        parameter_arns=secrets.parameter_arns,
        key_arn=secrets.key_arn,
        code_dir=str(ROOT / "lambda_src"),
        reserved_concurrency=settings.join.reserved_concurrency,
        window_minutes=settings.join.window_minutes,
        max_answers=settings.join.max_answers,
        # Admission control (issue 20): JOINS_PER_DC joins at once per domain controller of the directory.
        max_joins_in_progress=max_joins_for(directory.dns_ips),
        tags=tags,
    ))

    # The stack's OU in the directory: the least-privilege join account, computer objects removed with
    # their nodes, users and groups as code. Needs admin credentials (created here, or Existing + adminUser).
    directory_admin = None
    if settings.directory_admin:
        assert admin_password is not None
        directory_admin = DirectoryAdmin("directory-admin", DirectoryAdminArgs(
            stack=settings.stack,
            role_name=admin_role_name,
            cluster_name=settings.cluster.name,
            directory_id=directory.directory_id,
            domain_name=settings.directory.domain_name,
            dns_ips=directory.dns_ips,
            vpc_id=network.vpc_id,
            subnet_ids=network.private_subnet_ids,
            network_path=network.egress,
            admin_user=settings.directory.admin_account,
            admin_password=admin_password,
            key_arn=secrets.key_arn,
            parent_dn=_parent_dn(settings),
            join_user=settings.join.user if settings.join.managed else None,
            join_password_parameter_name=secrets.join_password_parameter_name,
            join_password_parameter_arn=secrets.join_password_parameter_arn,
            join_password_version=secrets.join_password_version,
            window_table_name=join_function.window_table_name,
            window_table_arn=join_function.window_table_arn,
            groups=list(settings.groups),
            users=list(settings.users),
            allowed_groups=list(settings.access.allowed_groups),
            admin_groups=list(settings.access.admin_groups),
            id_range=(settings.identity.id_min, settings.identity.id_max),  # pins travel on users / groups
            code_dir=str(ROOT / "lambda_src"),
            tags=tags,
        ))

    # The cluster: scripts, node permissions, homes that outlive it, and the pcluster run.
    account_id = aws.get_caller_identity_output().account_id
    scripts = BootstrapScripts("bootstrap", BootstrapScriptsArgs(
        script_paths=[str(ROOT / "bootstrap" / JOIN_SCRIPT), str(ROOT / "bootstrap" / SSH_SCRIPT),
                      str(ROOT / "bootstrap" / REMAP_TOOL)],
        bucket_name=account_id.apply(lambda a: bootstrap_bucket_name(a, settings.region, settings.stack)),
        function_url=join_function.function_url,
        function_url_script=JOIN_SCRIPT,
        allowed_groups=settings.access.allowed_groups,
        admin_groups=settings.access.admin_groups,
        # ssh keys for MPI open an account only from inside the VPC. An adopted VPC's CIDR is not in the
        # stack config: not baked there (the nodes log that the keys are not limited).
        vpc_cidr=settings.network.cidr if settings.network.vpc_id is None else None,
        # With DirectoryAdmin: access is the membership of the stack's two groups (issue 18); without: the lists.
        stack_users_group_dn=directory_admin.access_users_group_dn if directory_admin else None,
        stack_admins_group=directory_admin.access_admins_group if directory_admin else None,
        id_mode=settings.identity.mode,  # how nodes find UIDs/GIDs (issue 18)
        tags=tags,
    ))
    role = ClusterRole("cluster-role", ClusterRoleArgs(
        join_invoke_policy_arn=join_function.invoke_policy_arn,
        bootstrap_bucket_arn=scripts.bucket_arn,
        bucket_account_id=account_id,  # nodes read the scripts from a bucket of this account only
        tags=tags,
    ))
    home = HomeStorage("home", HomeStorageArgs(
        vpc_id=network.vpc_id,
        mount_subnet_ids=[network.private_subnet_ids[i] for i in range(2)],
        type=settings.cluster.home_storage.type,
        deletion_policy=settings.cluster.home_storage.deletion_policy,
        size_gib=settings.cluster.home_storage.size_gib,
        ebs_availability_zone=_head_node_az(settings, azs) if settings.cluster.home_storage.type == "Ebs" else None,
        existing_id=settings.cluster.home_storage.existing_id,
        cluster_name=settings.cluster.name,  # the EFS file system policy admits this cluster's node roles only
        tags=tags,
    ))
    cluster = ClusterLauncher("cluster", ClusterLauncherArgs(
        cluster=settings.cluster,
        region=settings.region,
        public_subnet_id=network.public_subnet_ids[0],
        private_subnet_ids=network.private_subnet_ids,
        scripts_base_uri=scripts.scripts_base_uri,
        additional_policy_arns=role.additional_policy_arns,
        home_storage_type=settings.cluster.home_storage.type,
        home_storage_id=home.storage_id,
        node_security_group_ids=home.node_security_group_ids,
        needs=[network, directory, *domain_dns_ready, secrets, join_function, *scripts.objects,
               role, home, *home.ready, *(directory_admin.ready if directory_admin else [])],
        join_computer_ou=directory_admin.computer_ou if directory_admin else None,
        join_computer_prefix=computer_prefix(settings.cluster.name),
        tags=tags,
    ))

    pulumi.export("region", settings.region)
    pulumi.export("vpcId", network.vpc_id)
    pulumi.export("publicSubnetIds", network.public_subnet_ids)
    pulumi.export("privateSubnetIds", network.private_subnet_ids)
    pulumi.export("directoryId", directory.directory_id)
    pulumi.export("directoryDnsIps", directory.dns_ips)
    if admin_password is not None and settings.directory.created_here:
        # `pulumi stack output --show-secrets directoryAdminPassword`: the first user is created with it.
        pulumi.export("directoryAdminPassword", pulumi.Output.secret(admin_password))
    pulumi.export("domainName", directory.domain_name)
    pulumi.export("domainDns", domain_dns.mode)
    if settings.network.existing and domain_dns.mode == "DhcpOptions":
        # `pulumi destroy` leaves the VPC with no DHCP options: this is the set to re-associate afterwards.
        pulumi.export("previousDhcpOptionsId", domain_dns.previous_dhcp_options_id)
    pulumi.export("joinFunctionName", join_function.function_name)
    pulumi.export("joinFunctionUrl", join_function.function_url)
    pulumi.export("joinWindowTable", join_function.window_table_name)
    pulumi.export("joinKeyAlias", secrets.key_alias)
    pulumi.export("joinParameterPrefix", f"/pcluster-ad/{settings.stack}/")
    pulumi.export("bootstrapBucket", scripts.bucket_name)
    pulumi.export("joinUser", settings.join.user)
    if directory_admin is not None:
        pulumi.export("directoryAdminFunctionName", directory_admin.function_name)
        pulumi.export("computerOu", directory_admin.computer_ou)
        # `aws ssm get-parameter --with-decryption --name <...>`: each declared user's first password.
        pulumi.export("userInitialPasswordParameters", directory_admin.initial_password_parameters)
        # {name: {uid, gid}} the identity ledger gave the declared users and groups (issue 18, README "Stable UIDs")
        pulumi.export("identities", directory_admin.identities)
    pulumi.export("homeStorageId", home.storage_id)
    if home.file_system_policy is not None:
        # On the stack's own EFS already; for an adopted one (fileSystemId), apply it: README "Home storage".
        pulumi.export("homeFileSystemPolicy", home.file_system_policy)
    pulumi.export("clusterName", cluster.cluster_name)
    pulumi.export("clusterStatus", cluster.status)
    pulumi.export("headNodePublicIp", cluster.head_node_public_ip)
    pulumi.export("headNodePrivateIp", cluster.head_node_private_ip)
    pulumi.export("loginNodesAddress", cluster.login_nodes_address)
    # The second day: `aws ssm start-session --target <headNodeInstanceId>` (README "Stack outputs"), the version
    # the cluster runs (`pcluster` of that version only), its CloudWatch logs (`aws logs tail <clusterLogGroup>`).
    pulumi.export("headNodeInstanceId", cluster.head_node_instance_id)
    pulumi.export("pclusterVersion", cluster.pcluster_version)
    pulumi.export("clusterLogGroup", cluster.log_group)
    pulumi.export("sshCommand", pulumi.Output.all(cluster.head_node_public_ip, cluster.login_nodes_address).apply(
        lambda v: _ssh_command(settings, *v)))
    pulumi.export("loginAccess", _login_access(settings))
    pulumi.export("clusterConfig", cluster.config_yaml)


def _ssh_command(settings: Settings, head_ip: str | None, login_address: str | None) -> str:
    """Where users log in: the login nodes' load balancer when there are login nodes, else the head node."""
    if settings.cluster.login_nodes is not None and settings.cluster.login_nodes.count > 0:
        if login_address:
            return f"ssh <ad-user>@{login_address}"
        return "(after deployment) ssh <ad-user>@<loginNodesAddress>"
    return f"ssh <ad-user>@{head_ip}" if head_ip else "(after deployment) ssh <ad-user>@<headNodePublicIp>"


def _login_access(settings: Settings) -> str:
    """Who may log in and who is admin, in words (the offline plan prints it)."""
    access = settings.access
    who = ("members of " + ", ".join(access.allowed_groups) + " (nested groups count)" if access.allowed_groups
           else "every domain user (pcluster-ad:access.allowedGroups is empty)")
    sudo = ", ".join(access.admin_groups) if access.admin_groups else "no AD group"
    if settings.directory_admin:
        # Issue 18: the stack's two groups carry the lists; the DC decides at each login.
        names = access_group_names(settings.stack)
        who += f", as members of the stack's group {names['users']}" if access.allowed_groups else ""
        sudo += f", as members of the stack's group {names['admins']}"
        state = "; disabled, expired, locked-out, computer and service accounts never"
    else:
        state = ("; computer and service accounts never" + ("" if not access.allowed_groups else
                 " (no DirectoryAdmin: the lists are rendered on each node at boot, account state is checked"
                 " by the KDC for password logins only)"))
    return f"login: {who}{state}; sudo: {sudo}"


def _load_or_fail() -> Settings:
    try:
        return stack_config.load_settings()
    except ConfigError as e:
        _fail(e.problems)


@dataclass(frozen=True)
class DomainDns:
    mode: str  # stack_config.DOMAIN_DNS_MODES
    previous_dhcp_options_id: str | None = None  # DhcpOptions in an adopted VPC: its set before the stack's


# Directory("directory")'s own set carries this Name tag (and pcluster-ad:stack): how a later run recognises it.
OWN_DHCP_OPTIONS_NAME = "directory-dhcp"
AMAZON_DNS = ["AmazonProvidedDNS"]


def _domain_dns(settings: Settings) -> DomainDns:
    """How the VPC resolves the AD domain. A VPC created here: the stack's DHCP options. An adopted VPC: what
    network.domainDns says, else what its DHCP options allow: ResolverRule when they send DNS to the Amazon-provided
    resolver (the only one a Resolver rule applies to), Unmanaged when they already name exactly the directory's DNS,
    DhcpOptions when they are this stack's own set (an earlier version made it: an upgrade changes nothing); any
    other DNS servers: the operator must choose."""
    net = settings.network
    if not net.existing:
        return DomainDns("DhcpOptions")
    key = f"{stack_config.PROJECT}:network.domainDns"
    vpc = aws.ec2.get_vpc(id=net.vpc_id)
    current = vpc.dhcp_options_id or "default"  # "default": no options set, the Amazon-provided resolver
    options = None if current == "default" else aws.ec2.get_vpc_dhcp_options(dhcp_options_id=current)
    servers = list(options.domain_name_servers or []) if options else AMAZON_DNS
    found_tags = dict(options.tags or {}) if options else {}
    directory_dns = set(settings.directory.dns_ips)  # known for an Existing directory only
    tagged = found_tags.get("Name") == OWN_DHCP_OPTIONS_NAME and found_tags.get("pcluster-ad:stack") == settings.stack
    # Tags are anyone's with ec2:CreateTags: the set is the stack's own only if it also names the directory's DNS,
    # as the stack's set always does (a directory created here: its DCs' IPs, unknown before deployment, are
    # private addresses in the VPC; never AmazonProvidedDNS).
    own = tagged and (set(servers) == directory_dns if directory_dns else
                      bool(servers) and all(stack_config.private_ipv4(s) for s in servers))
    if tagged and not own:
        pulumi.log.warn(f"{key}: {net.vpc_id}'s DHCP options ({current}) carry this stack's tags but name"
                        f" {', '.join(servers)}, not the directory's DNS: not the stack's own set, treated as any"
                        " other (tags can be written by anyone allowed ec2:CreateTags)")
    previous = found_tags.get(PREVIOUS_DHCP_OPTIONS_TAG) if own else current
    mode = net.domain_dns
    if mode is None:
        if own:
            mode = "DhcpOptions"
            pulumi.log.warn(f"{key}: {net.vpc_id} uses this stack's own DHCP options ({current}), made by an earlier"
                            " version of pcluster-ad: kept (DhcpOptions). Set network.domainDns to DhcpOptions to"
                            " say so, or to ResolverRule to leave the VPC's DHCP options to it (README, 'Existing"
                            " VPC: DNS').")
        elif servers == AMAZON_DNS:
            mode = "ResolverRule"
        elif directory_dns and set(servers) == directory_dns:
            mode = "Unmanaged"
            pulumi.log.info(f"{key}: {net.vpc_id}'s DHCP options ({current}) already name the directory's DNS"
                            f" servers {', '.join(servers)}: the stack leaves them alone (Unmanaged)")
        else:
            _fail([Problem(key, _custom_dns_problem(settings, current, servers) + " Choose one and set it.")])
    if mode == "ResolverRule":
        problems = []
        if not vpc.enable_dns_support:
            problems.append(Problem(f"{stack_config.PROJECT}:network.vpcId",
                                    f"{net.vpc_id} has DNS resolution (enableDnsSupport) off: the Amazon-provided"
                                    " resolver, which the Resolver rule extends, does not answer there. Turn it on:"
                                    f" `aws ec2 modify-vpc-attribute --vpc-id {net.vpc_id} --enable-dns-support`"))
        if servers != AMAZON_DNS and not own:
            problems.append(Problem(key, "ResolverRule: " + _custom_dns_problem(settings, current, servers)))
        if problems:
            _fail(problems)
    if own and mode != "DhcpOptions":
        pulumi.log.warn(f"{key} {mode}: this update removes the stack's DHCP options ({current}) from {net.vpc_id};"
                        " AWS then leaves the VPC with NO DHCP options (the Amazon-provided resolver), not with the"
                        f" set it had before the stack ({previous or 'not recorded by the earlier version'}).")
    if mode == "DhcpOptions":
        pulumi.log.warn(f"{key} DhcpOptions: {net.vpc_id}'s DHCP options before this stack's are "
                        f"{previous or 'not known (an earlier version of the stack did not record them)'}; `pulumi"
                        " destroy` does not bring them back (output previousDhcpOptionsId): `aws ec2"
                        f" associate-dhcp-options --vpc-id {net.vpc_id} --dhcp-options-id {previous or '<id>'}`")
        return DomainDns(mode, previous)
    return DomainDns(mode)


def _custom_dns_problem(settings: Settings, current: str, servers: list[str]) -> str:
    return (f"{settings.network.vpc_id}'s DHCP options ({current}) send DNS queries to {', '.join(servers)}, not"
            " to the Amazon-provided resolver, so a Route 53 Resolver rule would not apply to them. Unmanaged: those"
            f" servers resolve {settings.directory.domain_name} (they forward it to the directory's DNS); the stack"
            " adds nothing. DhcpOptions: the stack replaces the VPC's DHCP options with the directory's DNS (DNS"
            " changes for every instance in the VPC).")


def _check_existing_directory(settings: Settings) -> None:
    """An Existing directory with `directoryId`: its record in Directory Service must agree with the config's
    `domainName` and `dnsIps` (DirectoryAdmin simple-binds with the admin password to each dnsIps entry; the
    Resolver rule or DHCP options send the domain's DNS there). Each dnsIps entry must be one of the directory's
    DNS IPs (an AD Connector's: its customer DNS IPs too); a subset is fine (a directory may have more DCs)."""
    d = settings.directory
    if d.type != "Existing" or d.directory_id is None:
        return
    record = aws.directoryservice.get_directory(directory_id=d.directory_id)
    known = set(record.dns_ip_addresses or [])
    for connect in record.connect_settings or []:
        known.update(connect.customer_dns_ips or [])
    problems = []
    if (record.name or "").lower() != d.domain_name.lower():
        problems.append(Problem(f"{stack_config.PROJECT}:directory.domainName",
                                f"{d.domain_name!r} is not directory {d.directory_id}'s domain ({record.name!r}):"
                                " give that domain, or the id of the directory of this domain"))
    unknown = [ip for ip in d.dns_ips if ip not in known]
    if unknown:
        problems.append(Problem(f"{stack_config.PROJECT}:directory.dnsIps",
                                f"{', '.join(unknown)} not among directory {d.directory_id}'s DNS IPs"
                                f" ({', '.join(sorted(known)) or 'none'}): the stack would send directory passwords and"
                                " the domain's DNS queries there; give the directory's own (`aws ds"
                                f" describe-directories --directory-ids {d.directory_id}`, DnsIpAddrs)"))
    if problems:
        _fail(problems)


def _availability_zones(settings: Settings) -> list[str]:
    if settings.network.existing:
        _check_existing_subnets(settings)
        return []
    if settings.network.availability_zones:
        return list(settings.network.availability_zones)
    names = aws.get_availability_zones(state="available").names
    if len(names) < 2:
        _fail([Problem("aws:region", f"{settings.region} has fewer than two available AZs; the directory needs two")])
    return sorted(names)[:2]


def _check_existing_subnets(settings: Settings) -> None:
    """The directory needs its two subnets in two distinct AZs, inside the given VPC."""
    net = settings.network
    problems = []
    azs = []
    for subnet_id in net.private_subnet_ids:
        subnet = aws.ec2.get_subnet(id=subnet_id)
        azs.append(subnet.availability_zone)
        if subnet.vpc_id != net.vpc_id:
            problems.append(Problem("pcluster-ad:network.privateSubnetIds",
                                    f"{subnet_id} is in {subnet.vpc_id}, not in network.vpcId {net.vpc_id}"))
    if len(set(azs)) != 2:
        problems.append(Problem("pcluster-ad:network.privateSubnetIds",
                                f"both subnets are in {azs[0]}: pick two subnets in two different AZs"))
    problems += route_out_problems(net.vpc_id, net.private_subnet_ids, net.public_subnet_id)
    if problems:
        _fail(problems)


def _route_table(vpc_id: str, subnet_id: str):
    """The subnet's route table: its explicit association, else the VPC's main table (the data source finds only
    explicit associations and fails otherwise)."""
    try:
        return aws.ec2.get_route_table(subnet_id=subnet_id)
    except Exception as e:  # the SDK raises a plain Exception for a failed invoke
        if "no matching" not in str(e):
            raise
        return aws.ec2.get_route_table(vpc_id=vpc_id, filters=[
            aws.ec2.GetRouteTableFilterArgs(name="association.main", values=["true"])])


def _default_route(vpc_id: str, subnet_id: str):
    table = _route_table(vpc_id, subnet_id)
    return table.id, next((r for r in table.routes if r.cidr_block == "0.0.0.0/0"), None)


def route_out_problems(vpc_id: str, private_subnet_ids: list[str], public_subnet_id: str) -> list[Problem]:
    """An adopted VPC, before anything is created: the functions (DirectoryAdmin, JoinFunction) and the compute
    nodes in the private subnets reach AWS's APIs, the join function URL and the OS packages only through a
    0.0.0.0/0 route to a NAT (a public NAT gateway whose subnet routes to an internet gateway), a transit gateway
    or a network appliance; an internet gateway route does not serve them (Lambda's interfaces never get a public
    IP). The head node's public subnet needs 0.0.0.0/0 to an internet gateway."""
    key = "pcluster-ad:network.privateSubnetIds"
    fix = ("add a 0.0.0.0/0 route to a NAT gateway (in a public subnet) to its route table, or list private "
           "subnets that have one")
    problems = []
    for subnet_id in private_subnet_ids:
        table, route = _default_route(vpc_id, subnet_id)
        if route is None:
            problems.append(Problem(key, f"{subnet_id} (route table {table}) has no 0.0.0.0/0 route: the functions and"
                                         f" the nodes there cannot reach AWS's APIs or the join function URL; {fix}"))
        elif route.nat_gateway_id:
            nat = aws.ec2.get_nat_gateway(id=route.nat_gateway_id)
            if nat.connectivity_type == "private":
                problems.append(Problem(key, f"{subnet_id} routes 0.0.0.0/0 to {nat.id}, a private NAT gateway (no "
                                             f"way to the internet); {fix}"))
                continue
            nat_table, nat_route = _default_route(vpc_id, nat.subnet_id)
            if nat_route is None or not (nat_route.gateway_id or "").startswith("igw-"):
                problems.append(Problem(key, f"{subnet_id} routes 0.0.0.0/0 to {nat.id}, but that NAT gateway's "
                                             f"subnet {nat.subnet_id} (route table {nat_table}) has no 0.0.0.0/0 route "
                                             "to an internet gateway: give it one"))
        elif not (route.transit_gateway_id or route.network_interface_id):
            target = route.gateway_id or route.vpc_peering_connection_id or route.vpc_endpoint_id or "nowhere"
            problems.append(Problem(key, f"{subnet_id} routes 0.0.0.0/0 to {target}: functions and nodes there have "
                                         f"no public IP, so only a NAT (or a transit gateway) takes them out; {fix}"))
    table, route = _default_route(vpc_id, public_subnet_id)
    if route is None or not (route.gateway_id or "").startswith("igw-"):
        problems.append(Problem("pcluster-ad:network.publicSubnetId",
                                f"{public_subnet_id} (route table {table}) has no 0.0.0.0/0 route to an internet "
                                "gateway: the head node there cannot be reached or reach the internet; pick a "
                                "public subnet"))
    return problems


def _fail(problems: list[Problem]) -> NoReturn:
    for problem in problems:
        pulumi.log.error(str(problem))
    raise pulumi.RunError(f"invalid stack configuration: {len(problems)} problem(s), listed above;"
                          " nothing was created or changed") from None


def _admin_password(settings: Settings) -> pulumi.Output[str] | None:
    configured = pulumi.Config(stack_config.PROJECT).get_secret("adminPassword")
    if not settings.directory.created_here:
        # An Existing directory: its admin credentials only with directory.adminUser (DirectoryAdmin).
        return configured if settings.directory.administered else None
    if configured is not None:
        return configured
    # Meets AWS Directory Service's rule (3 of 4 classes) with characters every shell and
    # LDAP tool takes as they are.
    generated = random.RandomPassword("directory-admin-password", random.RandomPasswordArgs(
        length=32, special=True, override_special="!#%+-=_", min_lower=2, min_upper=2,
        min_numeric=2, min_special=2,
    ))
    return generated.result


def _join_password(settings: Settings, admin_password: pulumi.Output[str] | None) -> pulumi.Output[str]:
    configured = pulumi.Config(stack_config.PROJECT).get_secret("joinPassword")
    if configured is not None:
        return configured
    if settings.join.managed:
        # The stack's own computer-adding account: a password of its own, never the admin's. The logical
        # name changed with issue 16 ("join-password" before): existing stacks get a NEW password, so the
        # one every node of the old design saw opens nothing (the old account is deleted as well).
        return random.RandomPassword("adding-account-password", random.RandomPasswordArgs(
            length=32, special=True, override_special="!#%+-=_", min_lower=2, min_upper=2,
            min_numeric=2, min_special=2,
        )).result
    assert admin_password is not None  # stack_config requires joinPassword for an Existing directory
    return admin_password


def _parent_dn(settings: Settings) -> str:
    """Where the stack's OU goes: Managed AD lets its admin create objects only under the delegated
    OU named after the NetBIOS name; Simple AD: the domain root; Existing: directory.parentOu or the root."""
    if settings.directory.type == "Existing":
        return settings.directory.parent_ou or ""
    if settings.directory.type != "MicrosoftAD":
        return ""
    base = ",".join(f"DC={label}" for label in settings.directory.domain_name.split("."))
    return f"OU={settings.directory.short_name},{base}"


def _join_computer_ou(settings: Settings) -> str:
    """Where the join function creates the nodes' computer objects: the stack's own OU=Computers when the stack
    administers the directory (DirectoryAdmin's `computer_ou`, built the same way; the tests check they agree),
    else the domain's default computers container, where README's delegated join account may create them."""
    base = ",".join(f"DC={label}" for label in settings.directory.domain_name.split("."))
    if settings.directory_admin:
        return f"OU=Computers,OU={ou_name(settings.stack)},{_parent_dn(settings) or base}"
    return f"CN=Computers,{base}"


def _head_node_az(settings: Settings, azs: list[str]) -> str:
    """The head node runs in the first public subnet; an EBS home volume must be in its AZ."""
    if settings.network.existing:
        return aws.ec2.get_subnet(id=settings.network.public_subnet_id).availability_zone
    return azs[0]
