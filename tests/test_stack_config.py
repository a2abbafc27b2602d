"""Every validation rule of stack_config, each with a config that breaks it."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from pcluster_ad.stack_config import ConfigError, ec2_internal_domain, parse_settings
from tests.conftest import stack_doc

GOOD_PASSWORD = "Corr3ct-Horse-Battery"


def dev_raw() -> dict[str, Any]:
    return copy.deepcopy(stack_doc("dev")["config"])


def problems_of(edit: Callable[[dict[str, Any]], None], **secrets: str) -> list[str]:
    raw = dev_raw()
    edit(raw)
    with pytest.raises(ConfigError) as err:
        parse_settings(raw, stack="dev", **secrets)
    return [str(p) for p in err.value.problems]


def test_dev_sample_is_valid_and_typed():
    s = parse_settings(dev_raw(), stack="dev")
    assert s.region == "eu-west-1"
    assert s.directory.type == "SimpleAD" and s.directory.domain_name == "test.domain"
    assert s.directory.short_name == "TEST" and s.directory.realm == "TEST.DOMAIN"
    assert s.join.user == "pcad-add-dev" and s.join.managed and not s.join.has_own_password
    assert (s.join.window_minutes, s.join.max_answers) == (30, 3)  # defaults
    (cr,) = s.cluster.queues[0].compute_resources
    assert (cr.name, cr.instance_type, cr.min_count, cr.max_count) == ("c5-large", "c5.large", 2, 10)
    assert s.cluster.home_storage.deletion_policy == "Retain"
    assert s.cluster.pcluster_version == "3.16.1"
    assert not s.has_admin_password


def test_defaults_fill_what_is_left_out():
    raw = dev_raw()
    del raw["pcluster-ad:network"]
    raw.pop("pcluster-ad:join", None)
    raw["pcluster-ad:directory"] = {"type": "MicrosoftAD", "domainName": "Corp.Example.com"}
    s = parse_settings(raw, stack="dev")
    assert s.network.cidr == "10.0.0.0/16" and s.network.nat_gateways == 1
    assert s.directory.short_name == "CORP" and s.directory.size == "Standard"
    assert s.directory.domain_name == "corp.example.com"
    assert s.join.user == "pcad-add-dev" and s.join.managed  # the stack's own computer-adding account


def set_path(raw: dict[str, Any], key: str, path: list[Any], value: Any) -> None:
    node = raw.setdefault(key, {})
    for p in path[:-1]:
        node = node[p]
    if value is DELETE:
        node.pop(path[-1], None)
    else:
        node[path[-1]] = value


DELETE = object()
NET, DIR, CL, JOIN = "pcluster-ad:network", "pcluster-ad:directory", "pcluster-ad:cluster", "pcluster-ad:join"
IDENTITY = "pcluster-ad:identity"

# (id, key, path, value, expected key in the message, expected words)
RULES = [
    ("region-missing", "aws:region", None, DELETE, "aws:region", "is required"),
    ("region-bad", "aws:region", None, "europe", "aws:region", "not an AWS region"),
    ("cidr-invalid", NET, ["cidr"], "10.0.0.300/16", "network.cidr", "not a valid IPv4 CIDR"),
    ("cidr-host-bits", NET, ["cidr"], "10.0.0.1/16", "network.cidr", "not a valid IPv4 CIDR"),
    ("cidr-too-small", NET, ["cidr"], "10.0.0.0/26", "network.cidr", "between /16 and /24"),
    ("cidr-too-big", NET, ["cidr"], "10.0.0.0/8", "network.cidr", "between /16 and /24"),
    ("cidr-public", NET, ["cidr"], "8.8.0.0/16", "network.cidr", "not a private range"),
    ("nat-count", NET, ["natGateways"], 3, "network.natGateways", "must be 1"),
    ("nat-not-number", NET, ["natGateways"], "many", "network.natGateways", "whole number"),
    ("azs-same", NET, ["availabilityZones"], ["eu-west-1a", "eu-west-1a"], "network.availabilityZones", "must differ"),
    ("azs-count", NET, ["availabilityZones"], ["eu-west-1a"], "network.availabilityZones", "exactly two"),
    ("azs-other-region", NET, ["availabilityZones"], ["us-east-1a", "us-east-1b"], "network.availabilityZones",
     "not an availability zone of eu-west-1"),
    ("net-unknown-key", NET, ["cdir"], "10.0.0.0/16", "network.cdir", "did you mean 'cidr'"),
    ("subnets-without-vpc", NET, ["privateSubnetIds"], ["subnet-0123456789abcdef0"], "network.privateSubnetIds",
     "set network.vpcId"),
    ("dir-type", DIR, ["type"], "OpenLDAP", "directory.type", "one of SimpleAD, MicrosoftAD, Existing"),
    ("dir-type-missing", DIR, ["type"], DELETE, "directory.type", "is required"),
    ("domain-missing", DIR, ["domainName"], DELETE, "directory.domainName", "is required"),
    ("domain-single-label", DIR, ["domainName"], "corp", "directory.domainName", "fully qualified"),
    ("domain-bad-chars", DIR, ["domainName"], "corp_ad.example.com", "directory.domainName", "fully qualified"),
    ("netbios-long", DIR, ["shortName"], "ABCDEFGHIJKLMNOP", "directory.shortName", "at most 15"),
    ("netbios-chars", DIR, ["shortName"], "TE.ST", "directory.shortName", "not allowed in a NetBIOS"),
    ("size-wrong-type", DIR, ["size"], "Enterprise", "directory.size", "not a size of SimpleAD"),
    ("existing-no-dns", DIR, ["type"], "Existing", "directory.dnsIps", "is required for an Existing"),
    ("dns-ips-on-created", DIR, ["dnsIps"], ["10.0.0.2"], "directory.dnsIps", "only to type Existing"),
    ("join-user-domain", JOIN, ["user"], "Administrator@test.domain", "join.user", "bare account name"),
    ("join-concurrency", JOIN, ["reservedConcurrency"], -1, "join.reservedConcurrency", "0 (unreserved) to 1000"),
    ("join-window-short", JOIN, ["windowMinutes"], 9, "join.windowMinutes", "10 (the join script's own deadline)"),
    ("join-window-long", JOIN, ["windowMinutes"], 1441, "join.windowMinutes", "to 1440 minutes, got 1441"),
    ("join-window-type", JOIN, ["windowMinutes"], "half an hour", "join.windowMinutes", "whole number"),
    ("join-answers-zero", JOIN, ["maxAnswers"], 0, "join.maxAnswers", "must be 1 to 10"),
    ("join-answers-many", JOIN, ["maxAnswers"], 11, "join.maxAnswers", "got 11"),
    ("join-window-typo", JOIN, ["windowMinute"], 30, "join.windowMinute", "did you mean 'windowMinutes'"),
    ("cluster-name-missing", CL, ["name"], DELETE, "cluster.name", "is required"),
    ("cluster-name-digit", CL, ["name"], "1cluster", "cluster.name", "start with a letter"),
    ("cluster-name-underscore", CL, ["name"], "hpc_dev", "cluster.name", "hyphens"),
    ("cluster-name-long", CL, ["name"], "a" * 61, "cluster.name", "2-60 characters"),
    ("os", CL, ["os"], "centos7", "cluster.os", "one of alinux2023"),
    ("head-type", CL, ["headNode", "instanceType"], "large", "cluster.headNode.instanceType", "not an EC2 instance"),
    ("queues-missing", CL, ["queues"], DELETE, "cluster.queues", "is required"),
    ("queues-empty", CL, ["queues"], [], "cluster.queues", "non-empty list"),
    ("queue-name-upper", CL, ["queues", 0, "name"], "Compute", "cluster.queues[0].name", "lower-case"),
    ("queue-name-long", CL, ["queues", 0, "name"], "q" * 26, "cluster.queues[0].name", "at most 25"),
    ("queue-min-gt-max", CL, ["queues", 0, "minCount"], 11, "cluster.queues[0].minCount", "more than maxCount"),
    ("queue-negative", CL, ["queues", 0, "minCount"], -1, "cluster.queues[0].minCount", "0 or more"),
    ("queue-max-zero", CL, ["queues", 0, "maxCount"], 0, "cluster.queues[0].maxCount", "1 or more"),
    ("queue-type", CL, ["queues", 0, "instanceType"], "c5", "cluster.queues[0].instanceType", "instance type"),
    ("queue-typo", CL, ["queues", 0, "maxcount"], 5, "cluster.queues[0].maxcount", "did you mean 'maxCount'"),
    ("ssh-bool", CL, ["sshPasswordAuth"], "yes", "cluster.sshPasswordAuth", "true or false"),
    ("home-type", CL, ["homeStorage", "type"], "Fsx", "cluster.homeStorage.type", "one of Efs, Ebs"),
    ("home-policy", CL, ["homeStorage", "deletionPolicy"], "Keep", "cluster.homeStorage.deletionPolicy",
     "one of Retain, Delete"),
    ("home-efs-size", CL, ["homeStorage", "sizeGiB"], 50, "cluster.homeStorage.sizeGiB", "only to type Ebs"),
    ("home-fs-id", CL, ["homeStorage", "fileSystemId"], "efs-123", "cluster.homeStorage.fileSystemId",
     "not an EFS file system id"),
    ("home-volume-on-efs", CL, ["homeStorage", "volumeId"], "vol-0123456789abcdef0", "cluster.homeStorage.volumeId",
     "applies to type Ebs"),
    ("pcluster-old", CL, ["pclusterVersion"], "3.9.1", "cluster.pclusterVersion", "too old"),
    ("pcluster-bad", CL, ["pclusterVersion"], "latest", "cluster.pclusterVersion", "not a version"),
    ("ssh-cidr", CL, ["allowedSshCidr"], "anywhere", "cluster.allowedSshCidr", "not an IPv4 CIDR"),
    ("ssh-cidr-missing-with-passwords", CL, ["allowedSshCidr"], DELETE, "cluster.allowedSshCidr",
     "is required while sshPasswordAuth is true"),
    ("rocky-without-ami", CL, ["os"], "rocky9", "cluster.customAmi", "is required with os rocky9"),
    ("custom-ami-bad", CL, ["customAmi"], "ami-xyz", "cluster.customAmi", "not an AMI id"),
    ("queue-strategy", CL, ["queueUpdateStrategy"], "drain", "cluster.queueUpdateStrategy",
     "one of DRAIN, TERMINATE, COMPUTE_FLEET_STOP"),
    ("restrict-imds", CL, ["restrictImds"], "yes", "cluster.restrictImds", "must be true or false"),
]


@pytest.mark.parametrize("rule", RULES, ids=[r[0] for r in RULES])
def test_each_rule_rejects_a_bad_config_naming_the_key(rule):
    _, key, path, value, expected_key, words = rule

    def edit(raw):
        if path is None:
            if value is DELETE:
                raw.pop(key, None)
            else:
                raw[key] = value
        else:
            set_path(raw, key, path, value)

    found = problems_of(edit)
    assert any(expected_key in p and words in p for p in found), found


def test_queue_names_must_be_unique():
    def edit(raw):
        raw[CL]["queues"].append(dict(raw[CL]["queues"][0]))

    assert any("must be unique" in p for p in problems_of(edit))


def test_unknown_top_level_key_is_named_with_a_hint():
    assert any("pcluster-ad:clusterr" in p and "did you mean 'pcluster-ad:cluster'" in p
               for p in problems_of(lambda raw: raw.__setitem__("pcluster-ad:clusterr", {})))


def test_non_object_section_is_rejected():
    assert any("pcluster-ad:cluster: must be an object" in p
               for p in problems_of(lambda raw: raw.__setitem__(CL, "hpc")))


def test_existing_vpc_rules():
    found = problems_of(lambda raw: raw.__setitem__(NET, {
        "vpcId": "vpc-12", "privateSubnetIds": ["subnet-0123456789abcdef0"], "cidr": "10.0.0.0/16"}))
    joined = "\n".join(found)
    assert "network.vpcId: 'vpc-12' is not a VPC id" in joined
    assert "network.publicSubnetId: is required" in joined
    assert "network.privateSubnetIds: give exactly two" in joined
    assert "network.cidr: applies only to a VPC created here" in joined


def test_existing_directory_needs_join_user_and_password():
    def edit(raw):
        raw[DIR] = {"type": "Existing", "domainName": "corp.example.com", "dnsIps": ["10.1.0.10", "not-an-ip"]}
        raw.pop(JOIN, None)
        raw.pop(IDENTITY, None)

    joined = "\n".join(problems_of(edit))
    assert "join.user: is required for an Existing directory" in joined
    assert "'not-an-ip' is not an IPv4 address" in joined
    assert "pcluster-ad:joinPassword: is required for an Existing directory" in joined


@pytest.mark.parametrize("ip,private", [
    ("10.0.0.10", True), ("172.16.0.1", True), ("172.31.255.254", True), ("192.168.1.2", True),
    ("100.64.0.1", True), ("100.127.255.254", True),  # RFC 6598 (VPC CIDRs may use it)
    ("203.0.113.10", False), ("172.32.0.1", False), ("100.128.0.1", False), ("8.8.8.8", False),
    ("11.0.0.10", False)])
def test_existing_directory_dns_ips_must_be_private(ip, private):
    """Issue 17 attack finding 2: a mistyped (public) dnsIps entry would get the admin password by simple bind
    and the domain's DNS queries, through the NAT. Only RFC 1918 and 100.64.0.0/10 addresses are taken."""
    raw = dev_raw()
    raw[DIR] = {"type": "Existing", "domainName": "corp.example.com", "dnsIps": ["10.1.0.10", ip]}
    raw[JOIN] = {"user": "svc-join"}
    raw.pop(IDENTITY, None)  # rfc2307 (the sample's) needs admin credentials
    if private:
        assert parse_settings(raw, stack="dev", join_password=GOOD_PASSWORD).directory.dns_ips[1] == ip
        return
    with pytest.raises(ConfigError) as err:
        parse_settings(raw, stack="dev", join_password=GOOD_PASSWORD)
    (problem,) = [str(p) for p in err.value.problems]
    assert problem.startswith("pcluster-ad:directory.dnsIps: ") and f"{ip!r} is not a private address" in problem


def test_admin_password_rules_and_secret_not_echoed():
    found = problems_of(lambda raw: None, admin_password="short")
    assert any("pcluster-ad:adminPassword" in p and "8-64 characters" in p for p in found)
    assert not any("short" in p.split(":", 1)[1].replace("8-64", "") and "'short'" in p for p in found)

    def managed(raw):
        raw[DIR] = {"type": "MicrosoftAD", "domainName": "corp.example.com"}

    found = problems_of(managed, admin_password="MyAdmin-Passw0rd")
    assert any("must not contain the word 'admin'" in p for p in found)


def test_admin_password_on_existing_directory_is_rejected():
    def edit(raw):
        raw[DIR] = {"type": "Existing", "domainName": "corp.example.com", "dnsIps": ["10.1.0.10"]}
        raw.pop(IDENTITY, None)

    found = problems_of(edit, admin_password=GOOD_PASSWORD, join_password=GOOD_PASSWORD)
    assert any("adminPassword: applies only to a directory created here" in p for p in found)


def test_every_problem_is_reported_at_once():
    def edit(raw):
        raw["aws:region"] = "nowhere"
        raw[NET]["cidr"] = "banana"
        raw[DIR]["shortName"] = "X" * 20
        raw[CL]["name"] = "_bad"
        raw[CL]["queues"][0]["minCount"] = 50

    found = problems_of(edit)
    for key in ("aws:region", "network.cidr", "directory.shortName", "cluster.name", "queues[0].minCount"):
        assert any(key in p for p in found), (key, found)
    assert len(found) >= 5


@pytest.mark.parametrize("region,expected", [("us-east-1", "ec2.internal"), ("eu-west-1", "eu-west-1.compute.internal"),
                                             ("us-west-2", "us-west-2.compute.internal")])
def test_ec2_internal_domain(region, expected):
    assert ec2_internal_domain(region) == expected


@pytest.mark.parametrize("stack", ["x" * 46, "my.stack", ""])
def test_stack_name_must_fit_the_resource_names_built_from_it(stack):
    with pytest.raises(ConfigError) as err:
        parse_settings(dev_raw(), stack=stack)
    assert [p.key for p in err.value.problems] == ["stack name"]


def test_password_ssh_without_a_cidr_is_refused_and_says_how_to_set_it():
    (problem,) = problems_of(lambda raw: raw[CL].pop("allowedSshCidr"))
    assert problem.startswith("pcluster-ad:cluster.allowedSshCidr: is required while sshPasswordAuth is true")
    assert "allowedSshCidr: 203.0.113.0/24" in problem and "0.0.0.0/0" in problem
    assert "sshPasswordAuth: false" in problem


def test_open_ssh_only_when_written_out_or_key_only():
    raw = dev_raw()
    raw[CL]["allowedSshCidr"] = "0.0.0.0/0"
    assert parse_settings(raw, stack="dev").cluster.allowed_ssh_cidr == "0.0.0.0/0"
    raw[CL].pop("allowedSshCidr")
    raw[CL]["sshPasswordAuth"] = False  # key-only logins: ParallelCluster's own default applies
    assert parse_settings(raw, stack="dev").cluster.allowed_ssh_cidr == "0.0.0.0/0"


def test_samples_restrict_ssh():
    for stack in ("dev", "prod"):
        cidr = stack_doc(stack)["config"][CL]["allowedSshCidr"]
        assert cidr != "0.0.0.0/0", stack


def test_private_os_needs_a_custom_ami_and_names_the_fix():
    (problem,) = problems_of(lambda raw: raw[CL].update(os="rocky8"))
    assert problem.startswith("pcluster-ad:cluster.customAmi: is required with os rocky8")
    assert "pcluster build-image" in problem and "alinux2023" in problem and "rocky9" not in problem
    raw = dev_raw()
    raw[CL].update(os="rocky9", customAmi="ami-0123456789abcdef0")
    cluster = parse_settings(raw, stack="dev").cluster
    assert cluster.os == "rocky9" and cluster.custom_ami == "ami-0123456789abcdef0"


def test_restrict_imds_defaults_to_false():
    raw = dev_raw()
    raw[CL].pop("restrictImds", None)
    assert parse_settings(raw, stack="dev").cluster.restrict_imds is False
    raw[CL]["restrictImds"] = True
    assert parse_settings(raw, stack="dev").cluster.restrict_imds is True
    raw[CL]["restrictImds"] = "false"  # Pulumi config strings
    assert parse_settings(raw, stack="dev").cluster.restrict_imds is False


def test_queue_update_strategy_defaults_to_drain():
    raw = dev_raw()
    raw[CL].pop("queueUpdateStrategy", None)
    assert parse_settings(raw, stack="dev").cluster.queue_update_strategy == "DRAIN"
    raw[CL]["queueUpdateStrategy"] = "TERMINATE"
    assert parse_settings(raw, stack="dev").cluster.queue_update_strategy == "TERMINATE"


def test_join_window_settings_and_their_bounds():
    from pcluster_ad.cluster_config import JOIN_TIMEOUT_SECONDS

    raw = dev_raw()
    raw.setdefault(JOIN, {}).update(windowMinutes=JOIN_TIMEOUT_SECONDS // 60, maxAnswers=1)
    join = parse_settings(raw, stack="dev").join
    assert (join.window_minutes, join.max_answers) == (10, 1)
    raw[JOIN].update(windowMinutes="1440", maxAnswers="10")  # strings, as `pulumi config set` stores them
    join = parse_settings(raw, stack="dev").join
    assert (join.window_minutes, join.max_answers) == (1440, 10)


EXISTING_ADMINISTERED = {"type": "Existing", "domainName": "corp.example.com", "shortName": "CORP",
                         "dnsIps": ["10.1.0.10", "10.1.1.10"], "directoryId": "d-1234567890", "adminUser": "Admin"}


def _existing(directory: dict[str, Any]) -> dict[str, Any]:
    raw = dev_raw()
    raw[DIR] = directory
    raw[JOIN] = {"user": "pcad-add-dev"}
    if "adminUser" not in directory:  # rfc2307 (the sample's) needs admin credentials
        raw.pop(IDENTITY, None)
    return raw


def test_existing_administered_directory_without_parent_ou_is_refused_with_both_answers():
    """Issue 17, finding 6: an Existing AWS Managed Microsoft AD without parentOu put the stack's OU at the
    domain root, where Managed AD's Admin cannot write (and ds:ResetUserPassword cannot reach). The config
    cannot tell Managed AD from a directory whose root is writable, so the key is required, never guessed."""
    with pytest.raises(ConfigError) as err:
        parse_settings(_existing(dict(EXISTING_ADMINISTERED)), stack="dev", admin_password=GOOD_PASSWORD)
    (p,) = [str(p) for p in err.value.problems if "parentOu" in str(p)]
    assert p.startswith("pcluster-ad:directory.parentOu: is required with directory.adminUser")
    assert "OU=CORP,DC=corp,DC=example,DC=com" in p  # Managed AD's delegated OU, from the NetBIOS name
    assert "the domain itself, DC=corp,DC=example,DC=com" in p


@pytest.mark.parametrize("parent,expected", [
    ("OU=CORP,DC=corp,DC=example,DC=com", "OU=CORP,DC=corp,DC=example,DC=com"),
    ("OU=HPC,OU=CORP,DC=corp,DC=example,DC=com", "OU=HPC,OU=CORP,DC=corp,DC=example,DC=com"),
    ("DC=Corp,DC=example,DC=com", ""),  # the domain root, written out: the OU goes where it always went
])
def test_existing_administered_directory_parent_ou_accepted(parent, expected):
    s = parse_settings(_existing({**EXISTING_ADMINISTERED, "parentOu": parent}), stack="dev",
                       admin_password=GOOD_PASSWORD)
    assert s.directory.parent_ou == expected and s.directory_admin


@pytest.mark.parametrize("parent,words", [
    ("OU=CORP,DC=other,DC=com", "is not inside the domain corp.example.com (DC=corp,DC=example,DC=com)"),
    ("DC=example,DC=com", "is not an OU's DN such as OU=CORP,DC=corp,DC=example,DC=com"),
    ("CN=Users,DC=corp,DC=example,DC=com", "is not an OU's DN"),
])
def test_existing_directory_parent_ou_must_be_an_ou_of_the_domain(parent, words):
    with pytest.raises(ConfigError) as err:
        parse_settings(_existing({**EXISTING_ADMINISTERED, "parentOu": parent}), stack="dev",
                       admin_password=GOOD_PASSWORD)
    found = [str(p) for p in err.value.problems]
    assert any(p.startswith("pcluster-ad:directory.parentOu:") and words in p for p in found), found


def test_existing_directory_without_admin_user_needs_no_parent_ou():
    """Without directory.adminUser the stack creates no OU: parentOu stays optional."""
    d = {k: v for k, v in EXISTING_ADMINISTERED.items() if k != "adminUser"}
    s = parse_settings(_existing(d), stack="dev", join_password=GOOD_PASSWORD)
    assert s.directory.parent_ou is None and not s.directory_admin


def test_created_managed_ad_puts_the_ou_under_its_delegated_ou():
    """The stack-created Managed AD path already derives the delegated OU (program._parent_dn)."""
    from pcluster_ad.program import _parent_dn

    raw = dev_raw()
    raw[DIR] = {"type": "MicrosoftAD", "domainName": "corp.example.com", "shortName": "HPCCORP"}
    assert _parent_dn(parse_settings(raw, stack="dev")) == "OU=HPCCORP,DC=corp,DC=example,DC=com"
