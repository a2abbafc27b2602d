"""The one place that reads and validates stack configuration.

`parse_settings` is pure: it takes the raw config values (as Pulumi hands them to the
program) and returns typed `Settings`, or raises `ConfigError` listing EVERY problem at
once, each naming the key and the fix. Nothing is declared before it succeeds, so a bad
stack config costs a second, not a 20-minute failed deployment.

Secrets are validated here from their plaintext (to reject what AWS would reject later)
but never stored in `Settings`: the program reads them again as Pulumi secrets.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import re
import unicodedata
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROJECT = "pcluster-ad"
# The one place the ParallelCluster version is written (shell scripts read the same file).
DEFAULT_PCLUSTER_VERSION = Path(__file__).with_name("pcluster_version.txt").read_text(encoding="utf-8").strip()
# The join function's default reserved concurrency. Lambda serves a function at most 10 requests per second per unit
# of it, and the flood the function must absorb (1,000 signed requests/s from one node's credentials, issue 20)
# alone would use all of 100; 150 leaves room for the other nodes' joins (bench/join_scale.py, the reserved
# concurrency sweep in bench/RESULTS.md). AWS keeps 100 of an account's concurrency unreserved: the account needs a
# Lambda concurrency quota of 250 or more (the default is 1,000), else set join.reservedConcurrency lower or 0.
JOIN_RESERVED_CONCURRENCY = 150

# ParallelCluster 3.16 operating systems (Image.Os).
SUPPORTED_OS = ("alinux2023", "rhel8", "rhel9", "rocky8", "rocky9", "ubuntu2204", "ubuntu2404")
# Copy of pcluster.constants.PRIVATE_OSES (this module must not import pcluster; a test compares the two):
# no official ParallelCluster AMI, so Image.CustomAmi is required (OsCustomAmiValidator).
PRIVATE_OSES = ("rocky8", "rocky9")
# Scheduling.SlurmSettings.QueueUpdateStrategy: what a queue change does to running nodes.
QUEUE_UPDATE_STRATEGIES = ("DRAIN", "TERMINATE", "COMPUTE_FLEET_STOP")
DIRECTORY_TYPES = ("SimpleAD", "MicrosoftAD", "Existing")
DIRECTORY_SIZES = {"SimpleAD": ("Small", "Large"), "MicrosoftAD": ("Standard", "Enterprise")}
# The built-in administrator account of each directory type AWS creates.
DEFAULT_ADMIN_USER = {"SimpleAD": "Administrator", "MicrosoftAD": "Admin"}
HOME_STORAGE_TYPES = ("Efs", "Ebs")
DELETION_POLICIES = ("Retain", "Delete")
# network.domainDns, an adopted VPC only: how its instances and functions resolve the AD domain. ResolverRule: a
# Route 53 Resolver rule forwards the domain to the directory's DNS, the VPC's DHCP options stay as they are.
# DhcpOptions: the stack replaces the VPC's DHCP options (a VPC created here always gets them). Unmanaged: the VPC
# resolves the domain already (its DNS servers forward it, or a rule shared with it does); the stack adds nothing.
DOMAIN_DNS_MODES = ("ResolverRule", "DhcpOptions", "Unmanaged")

_REGION_RE = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]*)?-[a-z]+-\d+$")
_CLUSTER_NAME_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9-]+$")  # pcluster's own rule
_QUEUE_NAME_RE = re.compile(r"^[a-z][a-z0-9-]*$")  # Slurm queue names in ParallelCluster 3
# pcluster.constants: MAX_COMPUTE_RESOURCES_PER_QUEUE = MAX_NUMBER_OF_COMPUTE_RESOURCES_PER_CLUSTER = 50.
MAX_COMPUTE_RESOURCES = 50
MAX_LOGIN_NODES = 100  # one pool; a sanity bound, not a ParallelCluster limit
_DOMAIN_LABEL_RE = re.compile(r"^[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?$")
_NETBIOS_FORBIDDEN = set('\\/:*?"<>|. ')
_INSTANCE_TYPE_RE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9]+$")
_VPC_ID_RE = re.compile(r"^vpc-[0-9a-f]{8,17}$")
_SUBNET_ID_RE = re.compile(r"^subnet-[0-9a-f]{8,17}$")
_DIRECTORY_ID_RE = re.compile(r"^d-[0-9a-f]{10}$")
# Where a directory's DNS servers (its domain controllers) can be: RFC 1918 and RFC 6598's 100.64.0.0/10, the ranges
# a VPC's subnets (Simple AD, Managed AD) and networks reached over VPN, Direct Connect or peering use. An address
# outside them is reached through the NAT, over the internet: DirectoryAdmin would send the admin password there.
PRIVATE_DNS_NETWORKS = tuple(ipaddress.IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
                                                                "100.64.0.0/10"))


def private_ipv4(value: str) -> bool:
    """`value` is an IPv4 address in PRIVATE_DNS_NETWORKS."""
    try:
        ip = ipaddress.IPv4Address(value)
    except ValueError:
        return False
    return any(ip in net for net in PRIVATE_DNS_NETWORKS)
_STACK_RE = re.compile(r"^[A-Za-z0-9_-]{1,45}$")
_AZ_RE = re.compile(r"^[a-z]{2}(-gov)?-[a-z]+-\d+[a-z]$")
_AMI_ID_RE = re.compile(r"^ami-[0-9a-z]{8}$|^ami-[0-9a-z]{17}$")  # pcluster's PCLUSTER_AMI_ID_REGEX


@dataclass(frozen=True)
class Problem:
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


class ConfigError(Exception):
    """Every problem found in a stack config, reported together."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"stack configuration has {len(problems)} problem(s):\n{lines}")


@dataclass(frozen=True)
class NetworkSettings:
    cidr: str = "10.0.0.0/16"
    nat_gateways: int = 1  # 1, or one per AZ (2)
    availability_zones: tuple[str, ...] = ()  # empty: the region's first two
    vpc_id: str | None = None  # set: adopt this VPC instead of creating one
    public_subnet_id: str | None = None
    private_subnet_ids: tuple[str, ...] = ()
    # DOMAIN_DNS_MODES; None on an adopted VPC when not configured: the program decides from the VPC's DHCP options
    # (program._domain_dns). A VPC created here: DhcpOptions.
    domain_dns: str | None = "DhcpOptions"

    @property
    def existing(self) -> bool:
        return self.vpc_id is not None


@dataclass(frozen=True)
class DirectorySettings:
    type: str
    domain_name: str
    short_name: str
    size: str | None  # SimpleAD size or MicrosoftAD edition; None for Existing
    dns_ips: tuple[str, ...] = ()  # Existing only
    directory_id: str | None = None  # Existing only, informational
    protect: bool = False
    # Existing only: an account the stack may administer the directory with (with pcluster-ad:adminPassword),
    # and the OU under which the stack's own OU goes (Managed AD: OU=<NetBIOS name>,DC=...).
    admin_user: str | None = None
    parent_ou: str | None = None

    @property
    def administered(self) -> bool:
        """The stack knows admin credentials: it manages its own OU, join account, users and groups."""
        return self.created_here or self.admin_user is not None

    @property
    def admin_account(self) -> str | None:
        return self.admin_user or DEFAULT_ADMIN_USER.get(self.type)

    @property
    def created_here(self) -> bool:
        return self.type != "Existing"

    @property
    def realm(self) -> str:
        return self.domain_name.upper()


@dataclass(frozen=True)
class JoinSettings:
    user: str
    # Whether the join password is its own config secret (else: the admin password).
    has_own_password: bool
    # The join function's reserved concurrency; None = unreserved (accounts whose whole Lambda
    # quota is 10 cannot reserve any). JOIN_RESERVED_CONCURRENCY by default.
    reserved_concurrency: int | None = 150
    # Join window per instance: the function answers only this long after launch, this many times.
    window_minutes: int = 30
    max_answers: int = 3
    # The stack creates this account (DirectoryAdmin) with a random password of its own and the right to
    # create/delete computer objects in the cluster's OU only. False: an account the stack does not manage
    # (an Existing directory's, or the directory admin written out explicitly).
    managed: bool = False


@dataclass(frozen=True)
class GroupSettings:
    name: str
    description: str = ""
    gid: int | None = None  # pinned gidNumber (pcluster-ad:groups[].gid); None: the ledger allocates one


# POSIX identities (issue 18): the ledger's default range sits above local/system users and below sssd's
# ID-mapping range (which starts at 200000), so allocated and ID-mapped numbers never meet.
IDENTITY_MODES = ("idmap", "rfc2307")
DEFAULT_ID_RANGE = (100000, 199999)
MIN_POSIX_ID = 2000  # below: the AMIs' local accounts (the default user 1000, ParallelCluster's system users); nodes
# ignore directory numbers below it (sssd min_id, join-domain.sh), so none can shadow a local account (attack finding 1)
MAX_POSIX_ID = 2**31 - 1


@dataclass(frozen=True)
class IdentitySettings:
    """pcluster-ad:identity: how nodes get UIDs/GIDs. `rfc2307`: from uidNumber/gidNumber in the directory
    (stable across re-declaration and a new directory); `idmap`: derived from SIDs (sssd ID mapping). Either way
    DirectoryAdmin writes ledger numbers on what the stack declares (so switching later changes no owner)."""
    mode: str = "idmap"
    id_min: int = DEFAULT_ID_RANGE[0]
    id_max: int = DEFAULT_ID_RANGE[1]
    # Pinned numbers from pcluster-ad:users[].uid / groups[].gid: {name: number}
    uid_pins: Mapping[str, int] = field(default_factory=dict)
    gid_pins: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class UserSettings:
    name: str
    groups: tuple[str, ...] = ()
    display_name: str = ""
    email: str = ""
    uid: int | None = None  # pinned uidNumber (pcluster-ad:users[].uid); None: the ledger allocates one


@dataclass(frozen=True)
class ComputeResourceSettings:
    name: str  # ParallelCluster ComputeResource name: unique in its queue
    instance_type: str
    min_count: int
    max_count: int


@dataclass(frozen=True)
class QueueSettings:
    name: str
    compute_resources: tuple[ComputeResourceSettings, ...]
    ssh_password_auth: bool = False


@dataclass(frozen=True)
class LoginNodesSettings:
    count: int
    instance_type: str


@dataclass(frozen=True)
class AccessSettings:
    """Who may log in (empty: every domain user) and who gets sudo, on every node."""
    allowed_groups: tuple[str, ...] = ()
    admin_groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class HomeStorageSettings:
    type: str = "Efs"
    size_gib: int = 100  # Ebs only
    deletion_policy: str = "Retain"
    existing_id: str | None = None  # a retained EFS file system (fs-...) or EBS volume (vol-...) to reuse


@dataclass(frozen=True)
class ClusterSettings:
    name: str
    os: str
    key_name: str | None
    head_node_instance_type: str
    queues: tuple[QueueSettings, ...]
    ssh_password_auth: bool
    home_storage: HomeStorageSettings
    pcluster_version: str
    allowed_ssh_cidr: str = "0.0.0.0/0"
    custom_ami: str | None = None  # Image.CustomAmi; required for PRIVATE_OSES
    queue_update_strategy: str = "DRAIN"
    login_nodes: LoginNodesSettings | None = None  # LoginNodes.Pools (one pool); None: users log in on the head node
    restrict_imds: bool = False  # compute nodes: IMDS for root only after the join (join-domain.sh --restrict-imds)


@dataclass(frozen=True)
class Settings:
    project: str
    stack: str
    region: str
    network: NetworkSettings
    directory: DirectorySettings
    join: JoinSettings
    cluster: ClusterSettings
    # Whether the admin password comes from config (else pulumi-random generates one).
    has_admin_password: bool
    tags: Mapping[str, str] = field(default_factory=dict)
    access: AccessSettings = field(default_factory=AccessSettings)
    # Users and groups the stack creates, updates and removes in its own OU (DirectoryAdmin).
    groups: tuple[GroupSettings, ...] = ()
    users: tuple[UserSettings, ...] = ()
    identity: IdentitySettings = field(default_factory=IdentitySettings)
    # Accepted but worth a second look; the program logs them and the offline plan prints them.
    warnings: tuple[str, ...] = ()

    @property
    def directory_admin(self) -> bool:
        """Whether the stack manages its part of the directory (it knows the admin credentials)."""
        return self.directory.administered

    @property
    def ec2_internal_domain(self) -> str:
        return ec2_internal_domain(self.region)


def ec2_internal_domain(region: str) -> str:
    """The region's EC2 private DNS domain (us-east-1 is the historical exception)."""
    return "ec2.internal" if region == "us-east-1" else f"{region}.compute.internal"


ADMIN_PASSWORD_KEY = f"{PROJECT}:adminPassword"
JOIN_PASSWORD_KEY = f"{PROJECT}:joinPassword"
SECRET_KEYS = (ADMIN_PASSWORD_KEY, JOIN_PASSWORD_KEY)

# Config keys the AWS provider reads (pulumi_aws/config/vars.py; tests/test_newcomer.py keeps this
# list equal to the installed package's). Any other `aws:` key is a typo the provider would ignore.
AWS_PROVIDER_KEYS = frozenset({
    "accessKey", "allowedAccountIds", "assumeRoleWithWebIdentity", "assumeRoles", "customCaBundle", "defaultTags",
    "ec2MetadataServiceEndpoint", "ec2MetadataServiceEndpointMode", "endpoints", "forbiddenAccountIds", "httpProxy",
    "httpsProxy", "ignoreTags", "insecure", "maxRetries", "noProxy", "profile", "region", "retryMode",
    "s3UsEast1RegionalEndpoint", "s3UsePathStyle", "secretKey", "sharedConfigFiles", "sharedCredentialsFiles",
    "skipCredentialsValidation", "skipMetadataApiCheck", "skipRegionValidation", "skipRequestingAccountId",
    "stsRegion", "tagPolicyCompliance", "token", "tokenBucketRateLimiterCapacity", "useDualstackEndpoint",
    "useFipsEndpoint", "userAgents",
})
# `pulumi:` keys belong to the engine (e.g. pulumi:tags); nothing else may appear in a stack's config.
KNOWN_NAMESPACES = (PROJECT, "aws", "pulumi")

# ParallelCluster's own config keys (its cluster configuration file, as its docs show them) and this program's key
# for each (README "Configuration reference"): a stack file pasted from ParallelCluster's docs gets a map, not a bare
# "unknown key". None: no key here (the stack writes that part of ParallelCluster's config itself). List items are
# walked through ("Scheduling.SlurmQueues.Name" is SlurmQueues[].Name).
_JOIN_INSTEAD = ("none: nodes join the domain themselves (README \"The join account\"): the account is"
                 f" {PROJECT}:join.user, its password the secret {PROJECT}:joinPassword")
PCLUSTER_KEY_MAP: dict[str, str | None] = {
    "Region": "aws:region",
    "Image": f"{PROJECT}:cluster.os",
    "Image.Os": f"{PROJECT}:cluster.os",
    "Image.CustomAmi": f"{PROJECT}:cluster.customAmi",
    "HeadNode": f"{PROJECT}:cluster.headNode",
    "HeadNode.InstanceType": f"{PROJECT}:cluster.headNode.instanceType",
    "HeadNode.Ssh.KeyName": f"{PROJECT}:cluster.keyName",
    "HeadNode.Ssh.AllowedIps": f"{PROJECT}:cluster.allowedSshCidr",
    "HeadNode.Networking.SubnetId": f"{PROJECT}:network.publicSubnetId",
    "Scheduling": f"{PROJECT}:cluster.queues",
    "Scheduling.SlurmQueues": f"{PROJECT}:cluster.queues",
    "Scheduling.SlurmQueues.Name": f"{PROJECT}:cluster.queues[].name",
    "Scheduling.SlurmQueues.ComputeResources": f"{PROJECT}:cluster.queues[].computeResources",
    "Scheduling.SlurmQueues.ComputeResources.Name": f"{PROJECT}:cluster.queues[].computeResources[].name",
    "Scheduling.SlurmQueues.ComputeResources.InstanceType": f"{PROJECT}:cluster.queues[].instanceType",
    "Scheduling.SlurmQueues.ComputeResources.MinCount": f"{PROJECT}:cluster.queues[].minCount",
    "Scheduling.SlurmQueues.ComputeResources.MaxCount": f"{PROJECT}:cluster.queues[].maxCount",
    "Scheduling.SlurmQueues.Networking.SubnetIds": f"{PROJECT}:network.privateSubnetIds",
    "Scheduling.SlurmSettings.QueueUpdateStrategy": f"{PROJECT}:cluster.queueUpdateStrategy",
    "DirectoryService": f"{PROJECT}:directory",
    "DirectoryService.DomainName": f"{PROJECT}:directory.domainName (with type: Existing)",
    "DirectoryService.DomainAddr": f"{PROJECT}:directory.dnsIps (the domain controllers' IP addresses)",
    "DirectoryService.DomainReadOnlyUser": _JOIN_INSTEAD,
    "DirectoryService.PasswordSecretArn": _JOIN_INSTEAD,
    "SharedStorage": f"{PROJECT}:cluster.homeStorage (the shared /home)",
    "LoginNodes": f"{PROJECT}:cluster.loginNodes",
    "LoginNodes.Pools.InstanceType": f"{PROJECT}:cluster.loginNodes.instanceType",
    "LoginNodes.Pools.Count": f"{PROJECT}:cluster.loginNodes.count",
    "Tags": f"{PROJECT}:tags",
    "Imds": f"{PROJECT}:cluster.restrictImds",
    "Iam": None, "Monitoring": None, "AdditionalPackages": None, "CustomS3Bucket": None, "DeploymentSettings": None,
    "DevSettings": None,
}
PCLUSTER_KEYS = frozenset(k for k in PCLUSTER_KEY_MAP if "." not in k)  # its top-level sections


def pcluster_key_hint(section: str, value: Any) -> str:
    """The message for a ParallelCluster section pasted into the stack config: where each of its keys goes."""
    found: list[str] = []

    def walk(path: str, v: Any) -> None:
        if isinstance(v, list):
            for item in v:
                walk(path, item)
        elif isinstance(v, Mapping):
            for k, sub in v.items():
                if f"{path}.{k}" in PCLUSTER_KEY_MAP and f"{path}.{k}" not in found:
                    found.append(f"{path}.{k}")
                walk(f"{path}.{k}", sub)

    walk(section, value)
    leaves = [p for p in found if not any(q.startswith(p + ".") for q in found)] or [section]
    targets: dict[str, list[str]] = {}  # one entry per destination: two keys with one answer are said once
    for p in leaves:
        targets.setdefault(PCLUSTER_KEY_MAP[p] or "none: the stack writes it", []).append(p)
    where = "; ".join(f"{', '.join(paths)} -> {target}" for target, paths in targets.items())
    return (f"is a key of ParallelCluster's own config file, not of this program (which writes that file): {where}"
            " (README \"Configuration reference\")")

# Physical names that must be unique per account (IAM) or per region (Lambda, KMS alias, SSM), and
# their limits. One function builds them; validation checks the same strings (so a name that is too
# long is a config error naming the stack, never a ValueError halfway through a deployment).
NAME_LIMITS = {"join_role": 64, "join_invoke_policy": 128, "join_function": 64, "directory_admin_role": 64}
# sAMAccountName of the computer-adding account the stack creates (pcluster-ad:join.user's default): the
# join function uses it to pre-create each node's computer object; its only right is "create computer
# objects" in the cluster's OU=Computers. "pcad-add-<stack>", cut to AD's 20 characters. It was
# "pcad-join-<stack>" (an account with full control of every node's computer object, whose password every
# node saw): the new name makes the first `pulumi up` create a fresh account and delete that one
# (lambda_src/directory_admin.py ensure_adding_account). Do not change it back.
JOIN_USER_PREFIX = "pcad-add-"
SAM_MAX = 20


def physical_names(stack: str, region: str) -> dict[str, str]:
    """IAM names are account-wide: the region is part of them, so one stack name can be used in two
    regions of one account, but not on one directory: the stack's OU and adding account carry the stack name only,
    and DirectoryAdmin refuses an OU another deployment marked (attack finding 1 of issue 17). Lambda function names
    are regional; it shares the role's name."""
    role = f"pcad-{stack}-{region}-join"
    return {"join_role": role, "join_invoke_policy": f"{role}-invoke", "join_function": role,
            "directory_admin_role": f"pcad-{stack}-{region}-dir"}


def default_join_user(stack: str) -> str:
    return (JOIN_USER_PREFIX + stack)[:SAM_MAX]


_PHYSICAL_NAME_KINDS = {"join_role": "iam_role", "join_invoke_policy": "iam_policy",
                        "join_function": "lambda_function", "directory_admin_role": "iam_role"}


def _check_names(problems: list[Problem], stack: str, region: str) -> None:
    """One problem per cause: several names carry the stack name, and one fix (a shorter or plainer stack name)
    mends them all."""
    names = physical_names(stack, region)
    refused = [(kind, why) for kind, aws_kind in _PHYSICAL_NAME_KINDS.items()
               # lengths: the check below says it once, with the fix
               if (why := aws_name_problem(aws_kind, names[kind])) and not why.startswith("has ")]
    by_rule: dict[str, list[str]] = {}
    for kind, why in refused:
        by_rule.setdefault(why, []).append(kind)
    for why, kinds in by_rule.items():
        what = " and ".join(k.replace("_", " ") for k in kinds)
        shown = ", ".join(repr(names[k]) for k in kinds)
        problems.append(Problem("stack name", f"{stack!r}: the {what} name{'s' if len(kinds) > 1 else ''} ({shown})"
                                f" {why.replace('is refused', 'are refused') if len(kinds) > 1 else why}: use"
                                " letters, digits, '-' or '_'"))
    too_long = [(len(names[kind]) - limit, kind, limit) for kind, limit in NAME_LIMITS.items()
                if len(names[kind]) > limit]
    if too_long:
        excess, worst, limit = max(too_long)
        kinds = list(dict.fromkeys(kind.replace("_", " ") for _, kind, _ in too_long))
        what = " and ".join(filter(None, [", ".join(kinds[:-1]), kinds[-1]]))
        problems.append(Problem("stack name", f"{stack!r} is too long for region {region}: use a stack name of at"
                                f" most {len(stack) - excess} characters (it is part of the {what} name"
                                f"{'s' if len(kinds) > 1 else ''}; {names[worst]!r} would have"
                                f" {len(names[worst])} characters, limit {limit})"))


# AWS names built from config values are checked against the target service's OWN rule, read at run time from
# botocore's service model of the operation that takes the name (not re-typed here): moto accepts names the
# services refuse (tests/test_config_service_names.py), so only this check stops them before anything exists.
# (service, operation, input member) for each kind of name the stack builds.
AWS_NAME_OPERATIONS = {
    "ssm_parameter": ("ssm", "PutParameter", "Name"),
    "iam_role": ("iam", "CreateRole", "RoleName"),
    "iam_policy": ("iam", "CreatePolicy", "PolicyName"),
    "lambda_function": ("lambda", "CreateFunction", "FunctionName"),
}
# SSM's model gives PSParameterName no pattern: the character rule is in the member's documentation
# ("Parameter names can include only the following symbols and letters: <code>a-zA-Z0-9_.-</code>"), and '/'
# separates the hierarchy's levels.
_SSM_CHARSET_DOC = re.compile(r"can include only the following symbols and letters:\s*<code>([^<]+)</code>")


@dataclass(frozen=True)
class AwsNameRule:
    where: str  # e.g. "ssm PutParameter.Name": where the rule was read
    max_len: int | None
    pattern: str | None  # full-match, ASCII semantics (the services' Java regexes: \w is [A-Za-z0-9_])
    allowed: str  # for messages


@functools.cache
def aws_name_rule(kind: str) -> AwsNameRule:
    """The rule of one kind of AWS name (AWS_NAME_OPERATIONS) as botocore's installed service model states it."""
    import botocore.session

    service, operation, member = AWS_NAME_OPERATIONS[kind]
    shape = botocore.session.get_session().get_service_model(service).operation_model(operation) \
        .input_shape.members[member]
    where = f"{service} {operation}.{member} ({shape.name})"
    pattern = shape.metadata.get("pattern")
    allowed = pattern or ""
    if kind == "ssm_parameter" and pattern is None:
        m = _SSM_CHARSET_DOC.search(shape.documentation or "")
        if not m or not re.fullmatch(r"[A-Za-z0-9_.-]+", m.group(1)):
            raise RuntimeError(f"botocore's model of {where} no longer states the characters of a parameter name:"
                               " update stack_config.aws_name_rule")
        # '/' first and the documented set as it stands: its trailing '-' stays a literal in the class.
        allowed = m.group(1) + " and /"
        pattern = f"[/{m.group(1)}]+"
    return AwsNameRule(where=where, max_len=shape.metadata.get("max"), pattern=pattern, allowed=allowed)


def aws_name_problem(kind: str, name: str) -> str | None:
    """Why the service refuses `name` as a `kind` name (its botocore model's length and pattern), or None."""
    rule = aws_name_rule(kind)
    if rule.max_len is not None and len(name) > rule.max_len:
        return f"has {len(name)} characters, more than the {rule.max_len} of {rule.where}"
    if rule.pattern and not re.fullmatch(rule.pattern, name, re.ASCII):
        bad = sorted({c for c in name if not re.fullmatch(rule.pattern, c, re.ASCII)})
        shown = " ".join(repr(c) for c in bad) if bad else "its form"
        return f"is refused by {rule.where}: {shown} (allowed: {rule.allowed})"
    return None


# Instance types: EC2's own list, read at run time from botocore's EC2 model (shape InstanceType, the enum of
# RunInstances' InstanceType): every type EC2 has had, current, previous-generation and retired, in any region.
# ParallelCluster ships no list of its own (its validators ask DescribeInstanceTypes); which types a REGION offers
# is checked by its full validation (tools/full_validation.py, moto's offerings per region). A type launched after
# the pinned botocore is refused too: that validation's moto data is older still, so a warning here would only
# move the refusal one step later, with a less clear message (tests/test_instance_types.py measures both lists).
_INSTANCE_TYPE_PINS = "botocore (requirements.txt) and moto (tools/pcluster_venv.sh)"


@functools.cache
def ec2_instance_types() -> frozenset[str]:
    """Every instance type name EC2's API knows, as the installed botocore's EC2 model states it."""
    import botocore.session

    shape = botocore.session.get_session().get_service_model("ec2").shape_for("InstanceType")
    if not shape.enum or "c5.large" not in shape.enum:
        raise RuntimeError("botocore's EC2 model no longer lists instance types in shape InstanceType: update"
                           " stack_config.ec2_instance_types")
    return frozenset(shape.enum)


def instance_type_problem(value: str) -> str | None:
    """Why `value` names no EC2 instance type in any region, with the closest real ones; None when it is one."""
    import difflib

    import botocore

    known = ec2_instance_types()
    if value in known:
        return None
    family, _, size = value.strip().lower().partition(".")
    sizes = sorted({t.partition(".")[2] for t in known if t.partition(".")[0] == family})
    if f"{family}.{size}" in known:
        close = [f"{family}.{size}"]  # case or white space
    elif sizes:
        close = [f"{family}.{s}" for s in difflib.get_close_matches(size, sizes, n=2, cutoff=0.6)]
    else:
        close = difflib.get_close_matches(f"{family}.{size}", sorted(known), n=3, cutoff=0.8)
    hint = f": did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    if not _INSTANCE_TYPE_RE.match(value):
        return f"{value!r} is not an EC2 instance type such as c5.large{hint}"
    if sizes:
        why = f"{family} has no size {size!r}" + (hint or f" (its sizes: {', '.join(sizes)})")
    else:
        why = f"there is no instance family {family!r}{hint}"
    return (f"{value!r} is not an EC2 instance type in any region: {why} (EC2's list as botocore"
            f" {botocore.__version__} has it; a type launched since needs newer pins of {_INSTANCE_TYPE_PINS},"
            " then bash tools/lock.sh)")


def posix_name_problems(name: str) -> list[str]:
    """Why nodes (sssd, POSIX tools) or the identity ledger cannot carry a user/group name: rules no AWS model has."""
    out = []
    if "@" in name:
        out.append("'@' is sssd's name@domain separator (the name would be read as a user of another domain)")
    if not name.isascii():
        out.append("the identity ledger numbers ASCII names only (a look-alike could share a number)")
    if name.startswith("-"):
        out.append("a leading '-' makes tools (id, chown, useradd) read it as an option")
    if name.isdigit():
        out.append("an all-digit name is read as a uid/gid number by chown, id and getent")
    return out


def _name_suggestion(name: str) -> str | None:
    """A name that passes both rule sets, close to `name` (jürgen -> jurgen, john smith -> john.smith)."""
    s = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().split("@")[0]
    s = re.sub(r"[^A-Za-z0-9_.-]", "", re.sub(r"\s+", ".", s.strip())).lstrip("-").rstrip(".")
    return s if s and s != name and not s.isdigit() else None


# The keys the program reads as objects (pulumi.Config.get_object); every other key as the string it is.
OBJECT_KEYS = ("network", "directory", "join", "cluster", "tags", "access", "groups", "users", "identity")
_NOT_A_STRING = (" (in YAML an unquoted number, true/false, null or date is not a string: quote the value as you"
                 " wrote it)")
# time.Time.String(), what the engine makes of an unquoted YAML timestamp (tools/stack_file.py)
_GO_TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)? [+-]\d{4} \S+")


def object_value(text: str | None) -> Any:
    """What the program reads from one of OBJECT_KEYS, given the string the engine handed over: its JSON, else the
    text itself (the validator then names the key). "" (the engine's value for a key with nothing under it, or ~)
    is not set, like a missing key."""
    if text is None or text == "":
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def program_values(config: Mapping[str, str]) -> dict[str, Any]:
    """The engine's config map (full key -> string, tools/stack_file.py) -> the values load_settings reads: this
    project's keys as objects (unknown ones too, for the hints), the secrets and other namespaces as strings."""
    return {k: object_value(v) if k.startswith(f"{PROJECT}:") and k not in SECRET_KEYS else v
            for k, v in config.items()}


def settings_from_values(values: Mapping[str, Any], *, stack: str,
                         secret_keys: Collection[str] | None = None) -> Settings:
    """Validate a whole config map (full keys, Python values, secrets in plaintext), as the offline
    plan and the Automation API hold it. `secret_keys`: the keys stored as secrets (None: unknown,
    not checked). Raises ConfigError with every problem."""
    raw = {k: v for k, v in values.items() if k not in SECRET_KEYS}
    return parse_settings(raw, stack=stack, admin_password=values.get(ADMIN_PASSWORD_KEY),
                          join_password=values.get(JOIN_PASSWORD_KEY), secret_keys=secret_keys)


# --------------------------------------------------------------------------- parsing


class _Reader:
    """Typed access to one nested config object that records problems instead of raising."""

    def __init__(self, problems: list[Problem], key: str, value: Any):
        self.problems = problems
        self.key = key
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            self.fail(key, f"must be an object, got {type(value).__name__}")
            value = {}
        self.value = value
        self.refused: set[str] = set()  # keys whose value was refused: checks that depend on them are skipped

    def fail(self, key: str, message: str) -> None:
        self.problems.append(Problem(key, message))

    def sub(self, name: str) -> str:
        return f"{self.key}.{name}"

    def unknown_keys(self, known: set[str]) -> None:
        for name in sorted(set(self.value) - known, key=str):
            if name in PCLUSTER_KEYS:  # pasted from ParallelCluster's docs
                self.fail(self.sub(name), pcluster_key_hint(name, self.value[name]))
                continue
            hint = _closest(name, known)
            extra = f" (did you mean '{hint}'?)" if hint else f" (known keys: {', '.join(sorted(known))})"
            self.fail(self.sub(name), f"unknown key{extra}")

    def str(self, name: str, default: str | None = None, required: bool = False) -> str | None:
        value = self.value.get(name)
        if value is None or value == "":
            if required:
                self.fail(self.sub(name), "is required")
            return default
        if not isinstance(value, str):
            self.fail(self.sub(name), f"must be a string, got {value!r}{_NOT_A_STRING}")
            self.refused.add(name)
            return default
        return value

    def int(self, name: str, default: int | None = None, required: bool = False) -> int | None:
        value = self.value.get(name)
        if value is None:
            if required:
                self.fail(self.sub(name), "is required")
            return default
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            self.fail(self.sub(name), f"must be a whole number, got {value!r}")
            return default
        try:
            return int(value)
        except ValueError:
            self.fail(self.sub(name), f"must be a whole number, got {value!r}")
            return default

    def bool(self, name: str, default: bool) -> bool:
        value = self.value.get(name)
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        yaml11 = isinstance(value, str) and value.lower() in ("yes", "no", "on", "off", "y", "n")
        self.fail(self.sub(name), f"must be true or false, got {value!r}" + (
            " (YAML 1.1's yes/no/on/off are plain strings to Pulumi, which reads YAML 1.2: write true or false)"
            if yaml11 else ""))
        return default

    def str_list(self, name: str) -> tuple[str, ...]:
        value = self.value.get(name)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.fail(self.sub(name), f"must be a list of strings, got {value!r}")
            return ()
        return tuple(value)

    def choice(self, name: str, choices: tuple[str, ...], default: str | None = None,
               required: bool = False) -> str | None:
        value = self.str(name, default=default, required=required)
        if value is not None and value not in choices:
            same = [c for c in choices if c.lower() == value.lower()]
            hint = f" (did you mean {same[0]!r}? the values are case-sensitive)" if same else ""
            self.fail(self.sub(name), f"must be one of {', '.join(choices)}, got {value!r}{hint}")
            self.refused.add(name)
            return default
        return value


def _closest(name: str, known: set[str]) -> str | None:
    import difflib

    for k in sorted(known):  # ParallelCluster's InstanceType for this program's instanceType
        if k.lower() == str(name).lower():
            return k
    matches = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return matches[0] if matches else None


def _key(name: str) -> str:
    return f"{PROJECT}:{name}"


def parse_settings(
    raw: Mapping[str, Any],
    *,
    stack: str,
    admin_password: str | None = None,
    join_password: str | None = None,
    secret_keys: Collection[str] | None = None,
) -> Settings:
    """Validate the raw stack config (full keys such as 'pcluster-ad:network') into Settings.

    `admin_password` / `join_password` are the plaintext secrets, used only for checks;
    `secret_keys` the keys stored as secrets (None: not known, not checked).
    Raises ConfigError with every problem found.
    """
    problems: list[Problem] = []
    known_top = {"network", "directory", "adminPassword", "join", "joinPassword", "cluster", "tags", "access",
                 "groups", "users", "identity"}
    for full_key in sorted(raw):
        ns, _, name = full_key.partition(":")
        if ns == PROJECT:
            known = known_top
        elif ns == "aws":
            known = AWS_PROVIDER_KEYS
        elif ns == "pulumi":
            continue
        else:
            hint = _closest(ns, set(KNOWN_NAMESPACES))
            fix = f"did you mean '{hint}:{name}'?" if hint else f"this project reads {PROJECT}: and aws: keys"
            problems.append(Problem(full_key, f"unknown namespace '{ns}' ({fix}): the key would be ignored"))
            continue
        if ns == PROJECT and name in PCLUSTER_KEYS:  # pasted from ParallelCluster's docs
            problems.append(Problem(full_key, pcluster_key_hint(name, raw[full_key])))
        elif name not in known:
            hint = _closest(name, set(known))
            problems.append(Problem(full_key, "unknown key" + (f" (did you mean '{ns}:{hint}'?)" if hint else "")))
    # Stack files are committed: a password written there in plaintext is a leaked password.
    for key, value in ((ADMIN_PASSWORD_KEY, admin_password), (JOIN_PASSWORD_KEY, join_password)):
        if value is not None and secret_keys is not None and key not in secret_keys:
            problems.append(Problem(key, "is stored in plaintext in the stack configuration: remove it and run"
                                    f" `pulumi config set --secret {key}` (stack files get committed)"))

    # The stack name is part of IAM role, Lambda, KMS alias and SSM parameter names.
    if not _STACK_RE.match(stack):
        problems.append(Problem("stack name", f"{stack!r}: use 1-45 letters, digits, '-' or '_' (it becomes part"
                                " of IAM, Lambda, KMS alias and SSM parameter names)"))
    region = raw.get("aws:region")
    if not region:
        problems.append(Problem("aws:region",
                                "is required: run `pulumi config set aws:region eu-west-1` (or your region)"))
        region = ""
    elif not isinstance(region, str) or not _REGION_RE.match(region):
        problems.append(Problem("aws:region", f"{region!r} is not an AWS region name such as eu-west-1"))
        region = ""

    if region and _STACK_RE.match(stack):
        _check_names(problems, stack, region)
    warnings: list[str] = []
    network = _parse_network(problems, raw.get(_key("network")), region, warnings)
    directory = _parse_directory(problems, raw.get(_key("directory")))
    join = _parse_join(problems, raw.get(_key("join")), directory, admin_password, join_password,
                       stack=stack, warnings=warnings)
    groups, users = _parse_directory_objects(problems, raw.get(_key("groups")), raw.get(_key("users")), directory,
                                             # a bad stack name is reported once, above; "stack" stands in for it
                                             stack if _STACK_RE.match(stack) else "stack")
    cluster = _parse_cluster(problems, raw.get(_key("cluster")), network)

    if admin_password is not None and (directory is None or directory.created_here):
        _check_password(problems, _key("adminPassword"), admin_password, directory)
    tags = _parse_tags(problems, raw.get(_key("tags")), warnings)
    access = _parse_access(problems, raw.get(_key("access")))
    _access_warnings(access, users, warnings)
    identity = _parse_identity(problems, raw.get(_key("identity")), directory, groups, users, warnings)
    if directory is not None and join is not None and cluster is not None:
        _directory_sizing(problems, warnings, directory_footprint(directory, join, cluster, groups, users),
                          directory)

    if problems:
        raise ConfigError(problems)
    assert directory is not None and join is not None and cluster is not None
    return Settings(
        project=PROJECT,
        stack=stack,
        region=region,
        network=network,
        directory=directory,
        join=join,
        cluster=cluster,
        has_admin_password=admin_password is not None,
        tags=tags,
        access=access,
        groups=groups,
        users=users,
        identity=identity,
        warnings=tuple(warnings),
    )


def _parse_network(problems: list[Problem], value: Any, region: str,
                   warnings: list[str] | None = None) -> NetworkSettings:
    r = _Reader(problems, _key("network"), value)
    r.unknown_keys({"cidr", "natGateways", "availabilityZones", "vpcId", "publicSubnetId", "privateSubnetIds",
                    "domainDns"})
    vpc_id = r.str("vpcId")
    azs = r.str_list("availabilityZones")
    if vpc_id is not None:
        if not _VPC_ID_RE.match(vpc_id):
            r.fail(r.sub("vpcId"), f"{vpc_id!r} is not a VPC id such as vpc-0123456789abcdef0")
        public = r.str("publicSubnetId", required=True)
        if public is not None and not _SUBNET_ID_RE.match(public):
            r.fail(r.sub("publicSubnetId"), f"{public!r} is not a subnet id such as subnet-0123456789abcdef0")
        private = r.str_list("privateSubnetIds")
        if len(private) != 2:
            r.fail(r.sub("privateSubnetIds"), "give exactly two private subnet ids, in two different availability zones"
                   " (the directory needs two AZs)")
        elif private[0] == private[1]:
            r.fail(r.sub("privateSubnetIds"), "the two private subnets must be different subnets in two different AZs")
        for s in private:
            if not _SUBNET_ID_RE.match(s):
                r.fail(r.sub("privateSubnetIds"), f"{s!r} is not a subnet id such as subnet-0123456789abcdef0")
        for k in ("cidr", "natGateways", "availabilityZones"):
            if k in r.value:
                r.fail(r.sub(k), "applies only to a VPC created here: remove it, or remove vpcId")
        domain_dns = r.choice("domainDns", DOMAIN_DNS_MODES)
        if domain_dns == "DhcpOptions" and warnings is not None:
            warnings.append(
                f"{r.sub('domainDns')} DhcpOptions: the stack replaces {vpc_id}'s DHCP options, so DNS changes for"
                " EVERY instance in that VPC, and `pulumi destroy` leaves the VPC with no DHCP options (AWS's"
                " 'default': AmazonProvidedDNS), not with the set it had before. The set before is the stack output"
                " previousDhcpOptionsId: after a destroy, restore it with `aws ec2 associate-dhcp-options"
                f" --vpc-id {vpc_id} --dhcp-options-id <previousDhcpOptionsId>`. ResolverRule (the default) leaves"
                " the VPC's DHCP options alone.")
        return NetworkSettings(vpc_id=vpc_id, public_subnet_id=public, private_subnet_ids=private,
                               domain_dns=domain_dns)

    for k in ("publicSubnetId", "privateSubnetIds"):
        if k in r.value:
            r.fail(r.sub(k), "applies only to an existing VPC: set network.vpcId too, or remove it")
    if "domainDns" in r.value:
        r.fail(r.sub("domainDns"), "applies only to an existing VPC (network.vpcId): a VPC created here always gets"
               " DHCP options naming the directory's DNS servers; remove it")
    cidr = r.str("cidr", default="10.0.0.0/16") or "10.0.0.0/16"
    try:
        net = ipaddress.IPv4Network(cidr, strict=True)
        if not 16 <= net.prefixlen <= 24:
            r.fail(r.sub("cidr"), f"{cidr} must be between /16 and /24 (AWS allows /16../28 per VPC, and it is"
                   " split into four subnets, two of them for compute nodes)")
        elif not net.is_private:
            r.fail(r.sub("cidr"), f"{cidr} is not a private range: use one inside 10.0.0.0/8, 172.16.0.0/12"
                   " or 192.168.0.0/16")
    except ValueError as e:
        r.fail(r.sub("cidr"), f"{cidr!r} is not a valid IPv4 CIDR block such as 10.0.0.0/16 ({e})")
    nat = r.int("natGateways", default=1)
    if nat not in (1, 2):
        r.fail(r.sub("natGateways"), f"must be 1 (one shared NAT gateway) or 2 (one per AZ), got {nat}")
        nat = 1
    if azs:
        if len(azs) != 2:
            r.fail(r.sub("availabilityZones"), f"give exactly two availability zones, got {len(azs)}")
        elif azs[0] == azs[1]:
            r.fail(r.sub("availabilityZones"), "the two availability zones must differ (Simple AD and Managed AD"
                   " need subnets in two distinct AZs)")
        for az in azs:
            if not _AZ_RE.match(az) or (region and not az.startswith(region)):
                r.fail(r.sub("availabilityZones"), f"{az!r} is not an availability zone of {region or 'the region'}"
                       f" (such as {region or 'eu-west-1'}a)")
    return NetworkSettings(cidr=cidr, nat_gateways=nat or 1, availability_zones=azs)


def _parse_directory(problems: list[Problem], value: Any) -> DirectorySettings | None:
    r = _Reader(problems, _key("directory"), value)
    r.unknown_keys({"type", "domainName", "shortName", "size", "dnsIps", "directoryId", "protect", "adminUser",
                    "parentOu"})
    dtype = r.choice("type", DIRECTORY_TYPES, required=True)
    domain = r.str("domainName", required=True)
    short = r.str("shortName")
    if domain is not None:
        labels = domain.split(".")
        if len(labels) < 2 or not all(_DOMAIN_LABEL_RE.match(label) and len(label) <= 63 for label in labels) \
                or len(domain) > 255:
            r.fail(r.sub("domainName"), f"{domain!r} is not a fully qualified domain name such as corp.example.com")
        elif domain.lower().endswith(".local") and dtype == "MicrosoftAD":
            pass  # allowed by AWS, merely discouraged
        if short is None:
            short = labels[0].upper()
    if short is not None:
        if len(short) > 15:
            r.fail(r.sub("shortName"), f"{short!r} is {len(short)} characters: NetBIOS names have at most 15")
        bad = sorted(set(short) & _NETBIOS_FORBIDDEN)
        if bad:
            r.fail(r.sub("shortName"), f"{short!r} contains {''.join(bad)!r}, not allowed in a NetBIOS name")
    size = r.str("size")
    if dtype in DIRECTORY_SIZES:
        allowed = DIRECTORY_SIZES[dtype]
        if size is None:
            size = allowed[0]
        elif size not in allowed:
            r.fail(r.sub("size"), f"{size!r} is not a size of {dtype}: use one of {', '.join(allowed)}")
    elif dtype == "Existing" and size is not None:
        r.fail(r.sub("size"), "applies only to a directory created here (SimpleAD or MicrosoftAD): remove it")
    dns_ips = r.str_list("dnsIps")
    directory_id = r.str("directoryId")
    if dtype == "Existing":
        if not dns_ips:
            r.fail(r.sub("dnsIps"), "is required for an Existing directory: the directory's DNS server IPs")
        for ip in dns_ips:
            try:
                ipaddress.IPv4Address(ip)
            except ValueError:
                r.fail(r.sub("dnsIps"), f"{ip!r} is not an IPv4 address")
                continue
            if not private_ipv4(ip):
                r.fail(r.sub("dnsIps"), f"{ip!r} is not a private address (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16,"
                       " 100.64.0.0/10): a domain controller's DNS IP is one (a mistyped address? see `aws ds"
                       " describe-directories` DnsIpAddrs); the stack's functions would send directory passwords"
                       " and the domain's DNS queries there")
        if directory_id is not None and not _DIRECTORY_ID_RE.match(directory_id):
            r.fail(r.sub("directoryId"), f"{directory_id!r} is not a directory id such as d-1234567890")
        admin_user = r.str("adminUser")
        parent_ou = r.str("parentOu")
        if admin_user is not None:
            if "@" in admin_user or "\\" in admin_user:
                r.fail(r.sub("adminUser"), f"{admin_user!r}: give the bare account name (no domain part)")
            if directory_id is None:
                r.fail(r.sub("directoryId"), "is required with directory.adminUser: the stack sets passwords"
                       " with ds:ResetUserPassword on this directory")
        root = ",".join(f"DC={label}" for label in (domain or "corp.example.com").split("."))
        example = f"OU={short or 'CORP'},{root}"
        if parent_ou is None and admin_user is not None:
            # Not guessed: the config cannot tell Managed AD (whose Admin may write only below its delegated OU,
            # and whose ds:ResetUserPassword sets passwords only there) from a directory whose root is writable.
            r.fail(r.sub("parentOu"), "is required with directory.adminUser: the DN under which the stack creates"
                   f" its OU. AWS Managed Microsoft AD: its delegated OU, named after the NetBIOS name, e.g. {example};"
                   f" Simple AD or a directory whose root the admin may write: the domain itself, {root}")
        elif parent_ou is not None and parent_ou.lower() == root.lower():
            parent_ou = ""  # the domain root, written out
        elif parent_ou is not None and not re.fullmatch(r"(OU=[^,=]+,)+(DC=[A-Za-z0-9-]+,)*DC=[A-Za-z0-9-]+",
                                                        parent_ou):
            r.fail(r.sub("parentOu"), f"{parent_ou!r} is not an OU's DN such as {example} (or the domain {root})")
        elif parent_ou is not None and not parent_ou.lower().endswith("," + root.lower()):
            r.fail(r.sub("parentOu"), f"{parent_ou!r} is not inside the domain {domain} ({root}): give an OU such as"
                   f" {example}")
    else:
        admin_user = parent_ou = None
        for k in ("dnsIps", "directoryId", "adminUser", "parentOu"):
            if k in r.value and dtype is not None:  # a refused or missing type: which keys apply is not known
                r.fail(r.sub(k), "applies only to type Existing: remove it (a created directory has its own)")
    protect = r.bool("protect", default=False)
    if dtype is None or domain is None or short is None:
        return None
    return DirectorySettings(type=dtype, domain_name=domain.lower(), short_name=short, size=size,
                             dns_ips=dns_ips, directory_id=directory_id, protect=protect, admin_user=admin_user,
                             parent_ou=parent_ou)


def _parse_join(problems: list[Problem], value: Any, directory: DirectorySettings | None,
                admin_password: str | None, join_password: str | None, *, stack: str = "",
                warnings: list[str] | None = None) -> JoinSettings | None:
    r = _Reader(problems, _key("join"), value)
    r.unknown_keys({"user", "reservedConcurrency", "windowMinutes", "maxAnswers"})
    # A directory created here: a least-privilege join account the stack creates (DirectoryAdmin).
    default_user = default_join_user(stack) if directory and directory.administered else None
    user = r.str("user", default=default_user)
    concurrency = r.int("reservedConcurrency", default=JOIN_RESERVED_CONCURRENCY)
    if concurrency is not None and not 0 <= concurrency <= 1000:
        r.fail(r.sub("reservedConcurrency"), f"must be 0 (unreserved) to 1000, got {concurrency}")
        concurrency = JOIN_RESERVED_CONCURRENCY
    # Late import: cluster_config imports this module. The window must outlast the join script's
    # own deadline, or a slow first join would be refused its retries.
    from pcluster_ad.cluster_config import JOIN_TIMEOUT_SECONDS

    min_window = -(-JOIN_TIMEOUT_SECONDS // 60)
    window = r.int("windowMinutes", default=30)
    if window is not None and not min_window <= window <= 1440:
        r.fail(r.sub("windowMinutes"), f"must be {min_window} (the join script's own deadline) to 1440 minutes,"
                                       f" got {window}")
        window = 30
    max_answers = r.int("maxAnswers", default=3)
    if max_answers is not None and not 1 <= max_answers <= 10:
        r.fail(r.sub("maxAnswers"), f"must be 1 to 10 answers per node (1 leaves no retry), got {max_answers}")
        max_answers = 3
    if directory is None:
        return None
    if user is None:
        r.fail(r.sub("user"), "is required for an Existing directory: a user allowed to join computers to the domain")
    elif "@" in user or "\\" in user:
        r.fail(r.sub("user"), f"{user!r}: give the bare account name (no domain part); realm adds the realm")
    if not directory.administered and join_password is None:
        problems.append(Problem(_key("joinPassword"), "is required for an Existing directory: run"
                                " `pulumi config set --secret pcluster-ad:joinPassword`"))
    if not directory.administered and admin_password is not None:
        problems.append(Problem(_key("adminPassword"), "applies only to a directory created here (or to an"
                                " Existing one with directory.adminUser): remove it (set pcluster-ad:joinPassword"
                                " instead)"))
    if directory.admin_user is not None and admin_password is None:
        problems.append(Problem(_key("adminPassword"), f"is required with directory.adminUser: the password of"
                                f" {directory.admin_user!r}; run"
                                " `pulumi config set --secret pcluster-ad:adminPassword`"))
    if join_password is not None and join_password.strip() == "":
        problems.append(Problem(_key("joinPassword"), "must not be empty"))
    if user is None:
        return None
    admin = directory.admin_account or ""
    is_admin = user.lower() == admin.lower()
    if directory.administered and not is_admin:
        from pcluster_ad.lambda_src.directory_admin import sam_problem

        why = sam_problem(user)
        if why:
            r.fail(r.sub("user"), f"{user!r} {why} (an AD account name, sAMAccountName)")
    if is_admin and warnings is not None:
        warnings.append(f"{_key('join.user')} is the directory administrator {user!r}: the join function holds the"
                        " admin password and adds every node's computer object with it (nodes never get it, but a"
                        " flaw in that internet-facing function would expose the whole directory). Remove the key"
                        " to let the stack create an account that may only add computers to the cluster's OU"
                        f" (default {default_join_user(stack)!r}).")
    return JoinSettings(user=user, has_own_password=join_password is not None,
                        reserved_concurrency=concurrency or None, window_minutes=window or 30,
                        max_answers=max_answers or 3, managed=directory.administered and not is_admin)


_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def _parse_directory_objects(problems: list[Problem], groups_value: Any, users_value: Any,
                             directory: DirectorySettings | None, stack: str) -> tuple[tuple[GroupSettings, ...],
                                                                                       tuple[UserSettings, ...]]:
    """pcluster-ad:groups and pcluster-ad:users: names by AD's sAMAccountName rules (unique across users
    and groups, ignoring case), groups that exist in the list, nothing twice."""
    from pcluster_ad.lambda_src.directory_admin import initial_password_parameter_name, sam_problem

    if groups_value is None and users_value is None:
        return (), ()
    if directory is not None and not directory.administered:
        for key, value in ((_key("groups"), groups_value), (_key("users"), users_value)):
            if value is not None:
                problems.append(Problem(key, "applies only to a directory created here or an Existing one with"
                                        " directory.adminUser (the stack needs admin credentials): remove it"
                                        " and use the directory's own tools"))
        return (), ()
    names: dict[str, str] = {}  # folded name -> key that declared it

    def items(key: str, value: Any) -> list[tuple[str, _Reader]]:
        if value is None:
            return []
        if not isinstance(value, list):
            problems.append(Problem(key, f"must be a list of objects, got {type(value).__name__}"))
            return []
        return [(f"{key}[{i}]", _Reader(problems, f"{key}[{i}]", v)) for i, v in enumerate(value)]

    def name_of(r: _Reader, what: str) -> str | None:
        name = r.str("name", required=True)
        if name is None:
            return None
        why = sam_problem(name)
        if why:
            r.fail(r.sub("name"), f"{name!r} {why} (AD account names, sAMAccountName)")
            return None
        folded = name.casefold()
        if folded in names:
            r.fail(r.sub("name"), f"{name!r} is declared twice (also at {names[folded]}; AD names ignore case and"
                   " users and groups share one namespace): remove or rename one")
            return None
        names[folded] = r.key
        # Before anything is created: names that become part of AWS names (a user's initial-password parameter)
        # or that nodes and the identity ledger cannot carry. One problem per name, every cause in it.
        causes = posix_name_problems(name)
        if what == "user":
            parameter = initial_password_parameter_name(stack, name)
            why_ssm = aws_name_problem("ssm_parameter", parameter)
            if why_ssm:
                causes.insert(0, f"it becomes part of the SSM parameter name {parameter!r}, which {why_ssm}")
        if causes:
            hint = _name_suggestion(name)
            rule = "ASCII letters, digits and _ . -" if what == "user" else "ASCII, no '@'"
            r.fail(r.sub("name"), f"{name!r} cannot be a {what} name: {'; '.join(causes)}. Fix: rename it"
                   + (f", e.g. {hint!r}" if hint else "") + f" ({rule}; not all digits, no leading '-')")
            return None
        return name

    groups: list[GroupSettings] = []
    for _key_i, r in items(_key("groups"), groups_value):
        r.unknown_keys({"name", "description", "gid"})
        name = name_of(r, "group")
        description = r.str("description", default="") or ""
        if len(description) > 1024:
            r.fail(r.sub("description"), f"has {len(description)} characters: at most 1024")
        gid = _pin(r, "gid")
        if name:
            groups.append(GroupSettings(name=name, description=description, gid=gid))
    declared = {g.name.casefold() for g in groups}
    users: list[UserSettings] = []
    for _key_i, r in items(_key("users"), users_value):
        r.unknown_keys({"name", "groups", "displayName", "email", "uid"})
        name = name_of(r, "user")
        member_of = r.str_list("groups")
        for j, g in enumerate(member_of):
            if g.casefold() not in declared:
                r.fail(f"{r.sub('groups')}[{j}]", f"{g!r} is not declared in {_key('groups')}: add"
                       f" {{name: {g}}} there, or remove it here (the stack manages only its own groups)")
        if len({g.casefold() for g in member_of}) != len(member_of):
            r.fail(r.sub("groups"), "lists a group twice: remove one")
        display = r.str("displayName", default="") or ""
        email = r.str("email", default="") or ""
        if len(display) > 256:
            r.fail(r.sub("displayName"), f"has {len(display)} characters: at most 256")
        if email and not _EMAIL_RE.match(email):
            r.fail(r.sub("email"), f"{email!r} is not an e-mail address")
        uid = _pin(r, "uid")
        if name:
            users.append(UserSettings(name=name, groups=member_of, display_name=display, email=email, uid=uid))
    return tuple(groups), tuple(users)


def _pin(r: _Reader, name: str) -> int | None:
    """A pinned uid/gid: a whole number from MIN_POSIX_ID to MAX_POSIX_ID (inside or outside identity.idRange)."""
    if r.value.get(name) is None:
        return None
    value = r.int(name)
    if value is None:
        return None
    if not MIN_POSIX_ID <= value <= MAX_POSIX_ID:
        r.fail(r.sub(name), f"{value} is outside {MIN_POSIX_ID}..{MAX_POSIX_ID} (below {MIN_POSIX_ID}: the nodes'"
               " local accounts, which rfc2307 nodes keep for themselves): use the number the homes are owned by, or"
               " remove it to have one allocated")
        return None
    return value


_IDENTITY_WARNING = ("pcluster-ad:identity.mode is idmap and pcluster-ad:users are declared: UIDs derive from SIDs:"
                     " a re-declared user or a new directory changes owners; set pcluster-ad:identity.mode: rfc2307,"
                     " README 'Stable UIDs'")


def _parse_identity(problems: list[Problem], value: Any, directory: DirectorySettings | None,
                    groups: tuple[GroupSettings, ...], users: tuple[UserSettings, ...],
                    warnings: list[str]) -> IdentitySettings:
    """pcluster-ad:identity (mode, idRange) and the pins of users[].uid / groups[].gid (unique: one number space)."""
    r = _Reader(problems, _key("identity"), value)
    r.unknown_keys({"mode", "idRange"})
    mode = r.choice("mode", IDENTITY_MODES, default="idmap") or "idmap"
    lo, hi = DEFAULT_ID_RANGE
    if r.value.get("idRange") is not None:
        rr = _Reader(problems, r.sub("idRange"), r.value.get("idRange"))
        rr.unknown_keys({"min", "max"})
        lo = rr.int("min", default=lo)
        hi = rr.int("max", default=hi)
        lo, hi = (DEFAULT_ID_RANGE[0] if lo is None else lo), (DEFAULT_ID_RANGE[1] if hi is None else hi)
        if lo < MIN_POSIX_ID:
            rr.fail(rr.sub("min"), f"{lo} is below {MIN_POSIX_ID} (the nodes' local accounts): use {MIN_POSIX_ID} or"
                    f" more, e.g. the default {DEFAULT_ID_RANGE[0]}")
        if hi > MAX_POSIX_ID:
            rr.fail(rr.sub("max"), f"{hi} is above {MAX_POSIX_ID} (2^31-1, the largest ID every tool takes): lower it")
        if lo >= hi:
            rr.fail(rr.key, f"min {lo} must be below max {hi}: swap them or widen the range")
    if mode == "rfc2307" and directory is not None and not directory.administered:
        r.fail(r.sub("mode"), "rfc2307 needs the stack to allocate uidNumber/gidNumber, which it does only with admin"
               " credentials (a directory created here, or directory.adminUser on an Existing one): set those, or"
               " use mode idmap")
    uid_pins = {u.name: u.uid for u in users if u.uid is not None}
    gid_pins = {g.name: g.gid for g in groups if g.gid is not None}
    seen: dict[int, str] = {}
    for key, pins in ((_key("users"), uid_pins), (_key("groups"), gid_pins)):
        for name, number in pins.items():
            field_name = "uid" if key.endswith("users") else "gid"
            where = f"{key}[{name}].{field_name}"
            if number in seen:
                problems.append(Problem(where, f"{number} is also pinned at {seen[number]} (users and groups share"
                                        " one number space): give each its own number"))
            seen.setdefault(number, where)
    if mode == "idmap" and users:
        warnings.append(_IDENTITY_WARNING)
    return IdentitySettings(mode=mode, id_min=lo, id_max=hi, uid_pins=uid_pins, gid_pins=gid_pins)


def _check_password(problems: list[Problem], key: str, password: str, directory: DirectorySettings | None) -> None:
    """AWS Directory Service's admin password rules, checked before AWS rejects them."""
    classes = sum(bool(re.search(p, password)) for p in (r"[a-z]", r"[A-Z]", r"[0-9]", r"[^a-zA-Z0-9]"))
    if not 8 <= len(password) <= 64 or classes < 3:
        problems.append(Problem(key, "must be 8-64 characters with at least three of: lower case, upper case,"
                                " digits, symbols (AWS Directory Service's rule); or unset it to generate one"))
    if directory and directory.type == "MicrosoftAD" and "admin" in password.lower():
        problems.append(Problem(key, "must not contain the word 'admin' (Managed AD rule)"))


def _parse_cluster(problems: list[Problem], value: Any, network: NetworkSettings) -> ClusterSettings | None:
    r = _Reader(problems, _key("cluster"), value)
    r.unknown_keys({"name", "os", "keyName", "headNode", "queues", "sshPasswordAuth", "homeStorage",
                    "pclusterVersion", "allowedSshCidr", "customAmi", "queueUpdateStrategy", "loginNodes",
                    "restrictImds"})
    name = r.str("name", required=True)
    if name is not None and (not _CLUSTER_NAME_RE.match(name) or len(name) > 60):
        r.fail(r.sub("name"), f"{name!r}: cluster names start with a letter, hold only letters, digits and"
               " hyphens, and have 2-60 characters (ParallelCluster's rule)")
    os_name = r.choice("os", SUPPORTED_OS, default="alinux2023")
    custom_ami = r.str("customAmi")
    if custom_ami is not None and not _AMI_ID_RE.match(custom_ami):
        r.fail(r.sub("customAmi"), f"{custom_ami!r} is not an AMI id such as ami-0123456789abcdef0")
    if os_name in PRIVATE_OSES and custom_ami is None:
        r.fail(r.sub("customAmi"), f"is required with os {os_name}: ParallelCluster publishes no official AMI for it."
               f" Build one with `pcluster build-image` (or use yours) and set pcluster-ad:cluster.customAmi to its"
               f" id, or pick an OS with an official AMI: "
               f"{', '.join(o for o in SUPPORTED_OS if o not in PRIVATE_OSES)}")
    queue_strategy = r.choice("queueUpdateStrategy", QUEUE_UPDATE_STRATEGIES, default="DRAIN") or "DRAIN"
    # Compute nodes only: ParallelCluster already locks IMDS on its head and login nodes.
    restrict_imds = r.bool("restrictImds", default=False)
    key_name = r.str("keyName")
    head = _Reader(problems, r.sub("headNode"), r.value.get("headNode"))
    head.unknown_keys({"instanceType"})
    head_type = head.str("instanceType", default="c5.large") or "c5.large"
    why = instance_type_problem(head_type)
    if why:
        head.fail(head.sub("instanceType"), why)

    queues: list[QueueSettings] = []
    raw_queues = r.value.get("queues")
    if raw_queues is None:
        r.fail(r.sub("queues"), "is required: a list of queues such as [{name: compute, instanceType: c5.large,"
               " minCount: 0, maxCount: 10}]")
    elif not isinstance(raw_queues, list) or not raw_queues:
        r.fail(r.sub("queues"), "must be a non-empty list of queues")
    else:
        if len(raw_queues) > 50:
            r.fail(r.sub("queues"), f"ParallelCluster allows at most 50 Slurm queues, got {len(raw_queues)}")
        seen: set[str] = set()
        total_resources = 0
        for i, raw_q in enumerate(raw_queues):
            q = _Reader(problems, f"{r.sub('queues')}[{i}]", raw_q)
            q.unknown_keys({"name", "instanceType", "minCount", "maxCount", "sshPasswordAuth", "computeResources"})
            qname = q.str("name", required=True)
            if qname is not None:
                if not _QUEUE_NAME_RE.match(qname) or len(qname) > 25:
                    q.fail(q.sub("name"), f"{qname!r}: queue names start with a lower-case letter, hold only"
                           " lower-case letters, digits and hyphens, and have at most 25 characters")
                if qname in seen:
                    q.fail(q.sub("name"), f"{qname!r} is used by two queues: queue names must be unique")
                seen.add(qname)
            resources = _parse_compute_resources(q)
            total_resources += len(resources)
            ssh = q.bool("sshPasswordAuth", default=False)
            if qname and resources:
                queues.append(QueueSettings(qname, resources, ssh))
        if total_resources > MAX_COMPUTE_RESOURCES:
            r.fail(r.sub("queues"), f"ParallelCluster allows at most {MAX_COMPUTE_RESOURCES} compute resources"
                   f" (instance types) in a cluster, got {total_resources}")

    ssh_auth = r.bool("sshPasswordAuth", default=True)
    hs = _Reader(problems, r.sub("homeStorage"), r.value.get("homeStorage"))
    hs.unknown_keys({"type", "sizeGiB", "deletionPolicy", "fileSystemId", "volumeId"})
    hs_type = hs.choice("type", HOME_STORAGE_TYPES, default="Efs") or "Efs"
    chosen = None if "type" in hs.refused else hs_type  # a refused type: no check may assume the default
    existing_home = _existing_home(hs, chosen)
    size = hs.int("sizeGiB", default=100) or 100
    if chosen == "Ebs" and not 1 <= size <= 16384:
        hs.fail(hs.sub("sizeGiB"), f"must be 1-16384 GiB for an EBS volume, got {size}")
    if chosen == "Efs" and "sizeGiB" in hs.value:
        hs.fail(hs.sub("sizeGiB"), "applies only to type Ebs (EFS grows by itself): remove it")
    policy = hs.choice("deletionPolicy", DELETION_POLICIES, default="Retain") or "Retain"
    version = r.str("pclusterVersion", default=DEFAULT_PCLUSTER_VERSION) or DEFAULT_PCLUSTER_VERSION
    m = re.match(r"^(\d+)\.(\d+)\.(\d+)$", version)
    if not m:
        r.fail(r.sub("pclusterVersion"), f"{version!r} is not a version such as {DEFAULT_PCLUSTER_VERSION}")
    elif (int(m[1]), int(m[2])) < (3, 14):
        r.fail(r.sub("pclusterVersion"), f"{version} is too old: ParallelCluster below 3.14.0 cannot create"
               " clusters since Lambda dropped Python 3.9; use 3.14.0 or newer")
    ssh_cidr = r.str("allowedSshCidr")
    if ssh_cidr is None:
        if ssh_auth:
            # Password logins open to the internet invite brute force and AD account lockouts.
            r.fail(r.sub("allowedSshCidr"), "is required while sshPasswordAuth is true (the default): give the"
                   " range allowed to reach the head node's SSH port, e.g. `allowedSshCidr: 203.0.113.0/24` (your"
                   " office/VPN range) under pcluster-ad:cluster; write 0.0.0.0/0 to open it to everyone on purpose,"
                   " or set sshPasswordAuth: false for key-only logins")
        ssh_cidr = "0.0.0.0/0"  # key-only logins: ParallelCluster's own default
    try:
        ipaddress.IPv4Network(ssh_cidr, strict=True)
    except ValueError:
        r.fail(r.sub("allowedSshCidr"), f"{ssh_cidr!r} is not an IPv4 CIDR block such as 203.0.113.0/24")
    login_nodes = _parse_login_nodes(r)
    if name is None or not queues:
        return None
    return ClusterSettings(
        name=name, os=os_name or "alinux2023", key_name=key_name, head_node_instance_type=head_type,
        queues=tuple(queues), ssh_password_auth=ssh_auth,
        home_storage=HomeStorageSettings(type=hs_type, size_gib=size, deletion_policy=policy,
                                         existing_id=existing_home),
        pcluster_version=version, allowed_ssh_cidr=ssh_cidr,
        custom_ami=custom_ami, queue_update_strategy=queue_strategy, login_nodes=login_nodes,
        restrict_imds=bool(restrict_imds),
    )


def _parse_compute_resources(q: _Reader) -> tuple[ComputeResourceSettings, ...]:
    """A queue's instance types: the one-type form (instanceType, minCount, maxCount on the queue) or
    computeResources: [{name?, instanceType, minCount, maxCount}], one ParallelCluster ComputeResource each."""
    from pcluster_ad.cluster_config import compute_resource_name  # late: cluster_config imports this module

    raw = q.value.get("computeResources")
    if raw is None:
        items = [q]
    else:
        flat = [k for k in ("instanceType", "minCount", "maxCount") if k in q.value]
        for k in flat:
            q.fail(q.sub(k), "cannot be combined with computeResources: move it into each computeResources entry")
        if not isinstance(raw, list) or not raw:
            q.fail(q.sub("computeResources"), "must be a non-empty list such as [{instanceType: c5.large,"
                   " maxCount: 10}, {instanceType: c5.2xlarge, maxCount: 4}]")
            return ()
        if len(raw) > MAX_COMPUTE_RESOURCES:
            q.fail(q.sub("computeResources"), f"ParallelCluster allows at most {MAX_COMPUTE_RESOURCES} compute"
                   f" resources per queue, got {len(raw)}")
        items = []
        for j, raw_cr in enumerate(raw):
            cr = _Reader(q.problems, f"{q.sub('computeResources')}[{j}]", raw_cr)
            cr.unknown_keys({"name", "instanceType", "minCount", "maxCount"})
            items.append(cr)
    resources: list[ComputeResourceSettings] = []
    names: dict[str, str] = {}
    ok = True
    for reader in items:
        itype = reader.str("instanceType", required=True)
        why = instance_type_problem(itype) if itype is not None else None
        if why:
            reader.fail(reader.sub("instanceType"), why)
            itype = None
        min_count = reader.int("minCount", default=0)
        max_count = reader.int("maxCount", default=10)
        if min_count is not None and min_count < 0:
            reader.fail(reader.sub("minCount"), f"must be 0 or more, got {min_count}")
        if max_count is not None and max_count < 1:
            reader.fail(reader.sub("maxCount"), f"must be 1 or more, got {max_count}")
        if min_count is not None and max_count is not None and min_count > max_count:
            reader.fail(reader.sub("minCount"), f"{min_count} is more than maxCount {max_count}: lower minCount"
                        " or raise maxCount")
        name = reader.str("name") if reader is not q else None
        if name is not None:
            # ParallelCluster's NameValidator: NAME_REGEX, at most 25 characters, not "default".
            if not _QUEUE_NAME_RE.match(name) or len(name) > 25 or name == "default":
                reader.fail(reader.sub("name"), f"{name!r}: compute resource names start with a lower-case"
                            " letter, hold only lower-case letters, digits and hyphens, have at most 25 characters"
                            " and are not 'default'")
                name = None
                ok = False
        elif itype is not None:
            name = compute_resource_name(itype)
            if len(name) > 25:
                reader.fail(reader.sub("name"), f"is required here: the name derived from {itype!r} ({name!r})"
                            " is longer than ParallelCluster's 25 characters")
                name = None
                ok = False
        if name is not None:
            if name in names:
                reader.fail(reader.sub("name"), f"{name!r} is already the name of {names[name]} in this queue:"
                            " compute resource names must be unique in a queue; give each entry its own name")
                ok = False
            names[name] = reader.key
        if itype is None or min_count is None or max_count is None or name is None:
            ok = False
            continue
        resources.append(ComputeResourceSettings(name, itype, min_count, max_count))
    return tuple(resources) if ok else ()


def _parse_login_nodes(r: _Reader) -> LoginNodesSettings | None:
    if r.value.get("loginNodes") is None:
        return None
    ln = _Reader(r.problems, r.sub("loginNodes"), r.value.get("loginNodes"))
    ln.unknown_keys({"count", "instanceType"})
    count = ln.int("count", default=1)
    if count is not None and not 0 <= count <= MAX_LOGIN_NODES:
        ln.fail(ln.sub("count"), f"must be 0 (pool stopped) to {MAX_LOGIN_NODES} login nodes, got {count}")
        count = None
    itype = ln.str("instanceType", default="c5.large") or "c5.large"
    why = instance_type_problem(itype)
    if why:
        ln.fail(ln.sub("instanceType"), why)
        return None
    return None if count is None else LoginNodesSettings(count=count, instance_type=itype)


def _existing_home(hs: _Reader, hs_type: str | None) -> str | None:
    """homeStorage.fileSystemId (Efs) / volumeId (Ebs): reattach homes kept by an earlier stack. hs_type None: the
    type was refused, which of the two applies is not known."""
    fs_id, vol_id = hs.str("fileSystemId"), hs.str("volumeId")
    if fs_id is not None:
        if hs_type == "Ebs":
            hs.fail(hs.sub("fileSystemId"), "applies to type Efs: use volumeId for an EBS volume")
        elif not re.match(r"^fs-[0-9a-f]{8,17}$", fs_id):
            hs.fail(hs.sub("fileSystemId"), f"{fs_id!r} is not an EFS file system id such as fs-0123456789abcdef0")
        return fs_id
    if vol_id is not None:
        if hs_type == "Efs":
            hs.fail(hs.sub("volumeId"), "applies to type Ebs: use fileSystemId for an EFS file system")
        elif not re.match(r"^vol-[0-9a-f]{8,17}$", vol_id):
            hs.fail(hs.sub("volumeId"), f"{vol_id!r} is not an EBS volume id such as vol-0123456789abcdef0")
        return vol_id
    return None


# Characters an AD group's sAMAccountName cannot hold (Microsoft, "Naming conventions in Active Directory"),
# plus control characters; '@' would also make sssd read the name as name@domain.
_AD_GROUP_FORBIDDEN = set('"/\\[]:;|=,+*?<>@')
AD_GROUP_NAME_MAX = 256  # sAMAccountName's upper range


def ad_group_name_problem(name: str) -> str | None:
    """Why AD cannot hold this group name (sAMAccountName), or None."""
    if not name or not name.strip():
        return "is empty"
    if len(name) > AD_GROUP_NAME_MAX:
        return f"has {len(name)} characters: AD group names (sAMAccountName) have at most {AD_GROUP_NAME_MAX}"
    bad = sorted({c for c in name if c in _AD_GROUP_FORBIDDEN or ord(c) < 32 or ord(c) == 127})
    if bad:
        shown = " ".join(repr(c) for c in bad)
        return f"contains {shown}: AD group names cannot hold \" / \\ [ ] : ; | = , + * ? < > @ or control characters"
    if name != name.strip():
        return "starts or ends with white space (AD and sssd drop it): remove it"
    if set(name) <= {".", " "}:
        return "consists of periods and spaces only, which AD refuses"
    if name.endswith("."):
        return "ends with a period, which AD refuses"
    return None


def _parse_access(problems: list[Problem], value: Any) -> AccessSettings:
    r = _Reader(problems, _key("access"), value)
    r.unknown_keys({"allowedGroups", "adminGroups"})
    lists = {}
    for name in ("allowedGroups", "adminGroups"):
        groups = r.str_list(name)
        seen: dict[str, int] = {}
        for i, group in enumerate(groups):
            why = ad_group_name_problem(group)
            if why:
                r.fail(f"{r.sub(name)}[{i}]", f"{group!r} {why}")
            folded = group.strip().casefold()  # AD compares names without regard to case
            if folded in seen:
                r.fail(f"{r.sub(name)}[{i}]", f"{group!r} is listed twice (also at [{seen[folded]}];"
                       " AD group names ignore case): remove one")
            seen.setdefault(folded, i)
        lists[name] = groups
    return AccessSettings(allowed_groups=lists["allowedGroups"], admin_groups=lists["adminGroups"])


def _access_warnings(access: AccessSettings, users: tuple[UserSettings, ...], warnings: list[str]) -> None:
    """Who gets sudo or an account but cannot log in, as far as the stack file tells (the directory decides nested
    membership at each login: a group inside an allowed group counts there, which the plan cannot see)."""
    if not access.allowed_groups:
        return  # every domain user may log in
    allowed = {g.strip().casefold() for g in access.allowed_groups}
    for i, group in enumerate(access.admin_groups):
        if group.strip().casefold() not in allowed:
            warnings.append(
                f"{_key('access.adminGroups')}[{i}] {group!r} is not in {_key('access.allowedGroups')}: its members"
                " get sudo only where they may log in, i.e. when they are also (nested) members of an allowed group;"
                f" add {group!r} to allowedGroups, or make sure its members are in one")
    for user in users:
        if not any(g.casefold() in allowed for g in user.groups):
            warnings.append(
                f"{_key('users')} {user.name!r} is in none of {_key('access.allowedGroups')} "
                f"({', '.join(access.allowed_groups)}) through the groups the stack gives it: it cannot log in unless"
                " the directory makes it a member of one; add one of them to its groups, or declare it there")


# What each directory AWS creates is documented to hold: (objects, users); "objects" counts users, groups and
# computers together, so every node's computer object takes room (issue 20, "Directory sizing").
# Simple AD: AWS Directory Service Administration Guide, "Simple Active Directory"
#   https://docs.aws.amazon.com/directoryservice/latest/admin-guide/directory_simple_ad.html
#   Small "Supports up to 500 users (approximately 2,000 objects including users, groups, and computers)",
#   Large "up to 5,000 users (approximately 20,000 objects ...)".
# AWS Managed Microsoft AD: AWS Prescriptive Guidance, "AWS Managed Microsoft AD"
#   https://docs.aws.amazon.com/prescriptive-guidance/latest/optimize-costs-microsoft-workloads/active-directory-aws-managed.html
#   "Enterprise Edition supports up to 500,000 Active Directory objects", "Standard Edition supports up to 30,000".
DIRECTORY_CAPACITY: dict[tuple[str, str], tuple[int, int | None]] = {
    ("SimpleAD", "Small"): (2_000, 500),
    ("SimpleAD", "Large"): (20_000, 5_000),
    ("MicrosoftAD", "Standard"): (30_000, None),
    ("MicrosoftAD", "Enterprise"): (500_000, None),
}
# Above this share of an edition's objects the plan warns: the rest is shared with the directory's own objects (a
# freshly provisioned Samba 4 domain, what Simple AD runs, holds 267 in its domain partition: 3 users, 38 groups, the
# DC, containers; measured with samba-tool domain provision), users made outside the stack, and computer objects of
# nodes whose termination event was missed, until the sweep removes them (docs/design.md "Computer objects").
SIZING_WARN_SHARE = 0.8
# The stack's own objects in a directory it administers: its OU with OU=Computers and OU=Users, the identity ledger
# (lambda_src/directory_admin.py: a container, shared with stacks under the same parent) and its two access groups.
STACK_OUS = 3
ACCESS_GROUPS = 2


@dataclass(frozen=True)
class DirectoryFootprint:
    """What the stack puts in the directory with every node up (the cluster's maximum)."""
    head_nodes: int
    login_nodes: int
    compute_nodes: int  # the sum of every queue's compute resources' maxCount
    users: int  # declared users and the stack's computer-adding account
    groups: int  # declared groups and the stack's access groups
    other: int  # OUs, the identity ledger and its entries (one per numbered user and group)

    @property
    def computers(self) -> int:
        return self.head_nodes + self.login_nodes + self.compute_nodes

    @property
    def total(self) -> int:
        return self.computers + self.users + self.groups + self.other

    def describe(self) -> str:
        login = f", {_count(self.login_nodes, 'login node')}" if self.login_nodes else ""
        nodes = f"{_count(self.computers, 'computer object')} (head node{login}, the queues' maxCount" \
                f" {self.compute_nodes:,})"
        if not self.users and not self.groups and not self.other:
            return nodes
        return f"{nodes}, {_count(self.users, 'user')}, {_count(self.groups, 'group')}, {self.other:,} OUs and" \
               " identity-ledger entries"


def _count(n: int, what: str) -> str:
    return f"{n:,} {what}{'' if n == 1 else 's'}"


def directory_footprint(directory: DirectorySettings, join: JoinSettings, cluster: ClusterSettings,
                        groups: tuple[GroupSettings, ...], users: tuple[UserSettings, ...]) -> DirectoryFootprint:
    """Nodes get one computer object each (the join function creates it, the termination handler deletes it);
    only a directory the stack administers gets its users, groups and OUs too."""
    compute = sum(cr.max_count for q in cluster.queues for cr in q.compute_resources)
    login = cluster.login_nodes.count if cluster.login_nodes else 0
    if not directory.administered:
        return DirectoryFootprint(1, login, compute, 0, 0, 0)
    numbered = len(users) + len(groups) + ACCESS_GROUPS
    return DirectoryFootprint(1, login, compute, users=len(users) + (1 if join.managed else 0),
                              groups=len(groups) + ACCESS_GROUPS, other=STACK_OUS + 1 + numbered)


def _edition_name(edition: tuple[str, str]) -> str:
    return f"{'Simple AD' if edition[0] == 'SimpleAD' else 'Managed Microsoft AD'} {edition[1]}"


def _sizing_fix(edition: tuple[str, str], total: int) -> str:
    """The smallest larger edition that holds `total` below the warning share, and the other way out."""
    order = list(DIRECTORY_CAPACITY)
    for bigger in order[order.index(edition) + 1:]:
        if total <= DIRECTORY_CAPACITY[bigger][0] * SIZING_WARN_SHARE:
            how = (f"set {_key('directory.size')}: {bigger[1]}" if bigger[0] == edition[0]
                   else f"use {_key('directory.type')}: {bigger[0]} with size: {bigger[1]}")
            return f"{how} (about {DIRECTORY_CAPACITY[bigger][0]:,} objects), or lower the queues' maxCount"
    return "lower the queues' maxCount (or the login nodes' count)"


def _directory_sizing(problems: list[Problem], warnings: list[str], footprint: DirectoryFootprint,
                      directory: DirectorySettings) -> None:
    """Refuse a cluster whose maximum cannot fit the directory edition created here; warn when it leaves little
    room; for an Existing directory, say what was not checked."""
    total = footprint.total
    if not directory.created_here:
        warnings.append(
            f"{_key('directory.type')} Existing: not checked whether the directory can hold what this stack adds (its"
            f" edition and the objects already in it are unknown here): with every node up, {total:,} objects:"
            f" {footprint.describe()}. AWS documents Simple AD Small at about 2,000 objects (users, groups and"
            " computers), Large 20,000, Managed Microsoft AD Standard 30,000, Enterprise 500,000")
        return
    edition = (directory.type, directory.size or DIRECTORY_SIZES[directory.type][0])
    if edition not in DIRECTORY_CAPACITY:
        return  # a refused size: reported once, above
    objects, max_users = DIRECTORY_CAPACITY[edition]
    name = _edition_name(edition)
    if total > objects:
        problems.append(Problem(_key("directory.size"), f"{name} holds about {objects:,} objects (users,"
                                f" groups and computers), but with every node up this stack puts {total:,} there:"
                                f" {footprint.describe()}; {_sizing_fix(edition, total)}"))
    elif total > objects * SIZING_WARN_SHARE:
        warnings.append(
            f"{_key('directory.size')} {edition[1]}: with every node up this stack puts {total:,} of the about"
            f" {objects:,} objects {name} holds there ({footprint.describe()}), leaving {objects - total:,} for the"
            " directory's own objects, users made outside the stack and computer objects of missed terminations"
            f" until the sweep removes them; {_sizing_fix(edition, total)}")
    if max_users is not None and footprint.users > max_users:
        bigger = (f"set {_key('directory.size')}: Large" if edition[1] == "Small"
                  else f"use {_key('directory.type')}: MicrosoftAD")
        problems.append(Problem(_key("users"), f"{_count(footprint.users, 'user')} with the stack's computer-adding"
                                f" account: {name} supports up to {max_users:,} users; {bigger}, or declare fewer"))


_TAG_CHARS = re.compile(r"^[\w .:/=+\-@]*$")  # what every AWS service takes in tags


def _parse_tags(problems: list[Problem], value: Any, warnings: list[str] | None = None) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        problems.append(Problem(_key("tags"), f"must be an object of tag names to string values, got {value!r}"))
        return {}
    tags: dict[str, str] = {}
    for k, v in value.items():
        key = _key(f"tags.{k}")
        if not isinstance(v, str):
            problems.append(Problem(key, f"value must be a string, got {v!r}{_NOT_A_STRING}"))
            continue
        if _GO_TIME.fullmatch(v) and warnings is not None:
            warnings.append(f"{key}: {v!r} is how Pulumi passes an unquoted YAML date or time: quote the value in the"
                            " stack file to keep it as you wrote it")
        if not 1 <= len(str(k)) <= 128:
            problems.append(Problem(key, f"tag names have 1-128 characters, this one has {len(str(k))}"))
        elif str(k).lower().startswith("aws:"):
            problems.append(Problem(key, "tag keys starting with 'aws:' are reserved by AWS"))
        elif not _TAG_CHARS.match(str(k)):
            problems.append(Problem(key, "tag names may hold letters, digits, spaces and _ . : / = + - @ only"))
        if len(v) > 256:
            problems.append(Problem(key, f"tag values have at most 256 characters, this one has {len(v)}"))
        elif not _TAG_CHARS.match(v):
            problems.append(Problem(key, "tag values may hold letters, digits, spaces and _ . : / = + - @ only"))
        tags[str(k)] = v
    return tags


# ------------------------------------------------------------------- Pulumi-side loader


def load_settings() -> Settings:
    """Read the current stack's config through Pulumi and validate it (raises ConfigError)."""
    import pulumi

    cfg = pulumi.Config(PROJECT)
    raw: dict[str, Any] = {"aws:region": pulumi.Config("aws").get("region")}
    for name in OBJECT_KEYS:
        raw[_key(name)] = object_value(cfg.get(name))
    # Unknown keys and namespaces are reported too (typos would otherwise be ignored).
    for full_key in _all_config_keys():
        if full_key not in raw and full_key not in SECRET_KEYS:
            ns, _, name = full_key.partition(":")
            raw[full_key] = object_value(cfg.get(name)) if ns == PROJECT else "(set)"  # read for the hints
    return parse_settings(
        raw,
        stack=pulumi.get_stack(),
        admin_password=cfg.get("adminPassword"),  # plaintext only for the checks above
        join_password=cfg.get("joinPassword"),
        secret_keys=_secret_keys(),
    )


def _secret_keys() -> set[str] | None:
    """Which of our secret keys the engine handed over as secrets; None when that is not known."""
    import os

    from pulumi.runtime import config as runtime_config

    # set_all_config (tests, inline programs) or the CLI's language host (environment) said which.
    if runtime_config.CONFIG.get() or "PULUMI_CONFIG_SECRET_KEYS" in os.environ:
        return {k for k in SECRET_KEYS if runtime_config.is_config_secret(k)} | {
            k for k in runtime_config.get_config_secret_keys_env() if k in SECRET_KEYS}
    return None


def _all_config_keys() -> set[str]:
    """Every config key the engine handed the program: the SDK's store (tests, Automation API)
    and the PULUMI_CONFIG environment variable (the CLI's language host)."""
    from pulumi.runtime import config as runtime_config

    return set(runtime_config.CONFIG.get()) | set(runtime_config.get_config_env())
