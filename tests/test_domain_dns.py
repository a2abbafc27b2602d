"""How an adopted VPC resolves the AD domain (network.domainDns), under Pulumi's mocks: by default a Route 53
Resolver rule and the VPC's DHCP options untouched; replacing them only when asked, with the set before named."""

from __future__ import annotations

import pytest
from pulumi import RunError

from pcluster_ad.stack_config import ConfigError, parse_settings
from pcluster_ad.tools.mocks import PlanMocks, values_from_stack_file
from tests.conftest import stack_doc

VPC = "vpc-0123456789abcdef0"
PUBLIC = "subnet-0cccccccccccccccc"
SUBNETS = {"subnet-0aaaaaaaaaaaaaaaa": {"availabilityZone": "eu-west-1a", "vpcId": VPC},
           "subnet-0bbbbbbbbbbbbbbbb": {"availabilityZone": "eu-west-1b", "vpcId": VPC}}
PREVIOUS = "dopt-0fedcba9876543210"
DC_IPS = ["10.0.0.10", "10.0.1.10"]
DHCP_OPTIONS = "aws:ec2/vpcDhcpOptions:VpcDhcpOptions"
DHCP_ASSOC = "aws:ec2/vpcDhcpOptionsAssociation:VpcDhcpOptionsAssociation"
ENDPOINT = "aws:route53/resolverEndpoint:ResolverEndpoint"
RULE = "aws:route53/resolverRule:ResolverRule"
RULE_ASSOC = "aws:route53/resolverRuleAssociation:ResolverRuleAssociation"
CREATED_DC = ["<after-deploy:directory-ad.dnsIpAddresses[0]>", "<after-deploy:directory-ad.dnsIpAddresses[1]>"]
# The stack's own DHCP options set of an earlier run names the created directory's DNS IPs (private addresses).
OWN_SET_DNS = ["10.99.0.10", "10.99.1.10"]


def adopt(domain_dns: str | None = None, directory: dict | None = None):
    def edit(c):
        c["pcluster-ad:network"] = {"vpcId": VPC, "publicSubnetId": PUBLIC, "privateSubnetIds": list(SUBNETS),
                                    **({"domainDns": domain_dns} if domain_dns else {})}
        if directory:
            c["pcluster-ad:directory"] = directory
            c["pcluster-ad:join"] = {"user": "svc-join"}
            if "adminUser" not in directory:  # rfc2307 (the sample's) needs admin credentials
                c.pop("pcluster-ad:identity", None)
    return edit


def mocks(servers: list[str] | None = None, tags: dict | None = None, current: str = PREVIOUS,
          dns_support: bool = True) -> PlanMocks:
    return PlanMocks(subnets=dict(SUBNETS), vpcs={VPC: {"dhcpOptionsId": current, "enableDnsSupport": dns_support}},
                     dhcp_options={current: {"domainNameServers": servers or ["AmazonProvidedDNS"],
                                             "tags": tags or {}}})


EXISTING_DIRECTORY = {"type": "Existing", "domainName": "corp.example.com", "shortName": "CORP", "dnsIps": DC_IPS}


def test_adopted_vpc_keeps_its_dhcp_options_and_forwards_the_domain(run_stack):
    g = run_stack(adopt(), mocks=mocks())
    assert not g.of_type(DHCP_OPTIONS) and not g.of_type(DHCP_ASSOC)
    assert g.outputs["domainDns"] == "ResolverRule" and "previousDhcpOptionsId" not in g.outputs

    forwarding = g.named("domain-dns")
    assert forwarding.type == "pcluster-ad:index:DomainForwarding"
    sg = g.named("domain-dns-sg")
    assert g.parent_name(sg) == "domain-dns" and sg.inputs["vpcId"] == VPC and sg.inputs["ingress"] == []
    # DNS to each domain controller, both protocols, nothing else: an outbound endpoint needs egress only.
    assert sorted((e["protocol"], e["fromPort"], e["toPort"], *e["cidrBlocks"]) for e in sg.inputs["egress"]) == \
        sorted((proto, 53, 53, f"{ip}/32") for ip in CREATED_DC for proto in ("tcp", "udp"))

    endpoint = g.named("domain-dns-endpoint").inputs
    assert endpoint["direction"] == "OUTBOUND" and endpoint["protocols"] == ["Do53"]
    assert endpoint["resolverEndpointType"] == "IPV4"
    assert endpoint["securityGroupIds"] == ["<after-deploy:domain-dns-sg.id>"]
    assert endpoint["ipAddresses"] == [{"subnetId": s} for s in SUBNETS]  # the private subnets, two AZs
    assert endpoint["name"] == "pcluster-ad-dev"

    rule = g.named("domain-dns-rule")
    assert rule.inputs["ruleType"] == "FORWARD" and rule.inputs["domainName"] == "test.domain"
    assert rule.inputs["resolverEndpointId"] == "<after-deploy:domain-dns-endpoint.id>"
    assert rule.inputs["targetIps"] == [{"ip": ip, "port": 53} for ip in CREATED_DC]
    assert {"directory-ad", "domain-dns-endpoint"} <= set(g.dependency_names(rule))

    assoc = g.named("domain-dns-rule-assoc")
    assert assoc.type == RULE_ASSOC
    assert assoc.inputs["vpcId"] == VPC and assoc.inputs["resolverRuleId"] == "<after-deploy:domain-dns-rule.id>"
    # The cluster's nodes find the domain only once the rule is associated.
    assert "domain-dns-rule-assoc" in g.dependency_names(g.named("cluster-pcluster"))


def test_existing_directory_is_forwarded_to_its_dns_ips(run_stack):
    g = run_stack(adopt(directory=EXISTING_DIRECTORY), mocks=mocks(),
                  secrets={"pcluster-ad:joinPassword": "Sup3r-Secret-Passw0rd"})
    assert g.named("domain-dns-rule").inputs["targetIps"] == [{"ip": ip, "port": 53} for ip in DC_IPS]
    assert g.named("domain-dns-rule").inputs["domainName"] == "corp.example.com"
    assert not g.of_type(DHCP_ASSOC)


def test_vpc_without_dhcp_options_is_forwarded(run_stack):
    """A VPC with no DHCP options ("default") uses the Amazon-provided resolver: the rule applies."""
    g = run_stack(adopt(), mocks=PlanMocks(subnets=dict(SUBNETS), vpcs={VPC: {"dhcpOptionsId": "default"}}))
    assert g.outputs["domainDns"] == "ResolverRule" and g.of_type(RULE_ASSOC) and not g.of_type(DHCP_ASSOC)


def test_dhcp_options_opt_in_replaces_them_and_names_the_set_before(run_stack, caplog):
    g = run_stack(adopt("DhcpOptions"), mocks=mocks())
    assert not g.of_type(ENDPOINT) and not g.of_type(RULE)
    dhcp = g.named("directory-dhcp")
    assert dhcp.inputs["domainNameServers"] == CREATED_DC
    assert dhcp.inputs["tags"]["pcluster-ad:previous-dhcp-options"] == PREVIOUS  # remembered for later runs
    assert g.named("directory-dhcp-assoc").inputs["vpcId"] == VPC
    assert "directory-dhcp-assoc" in g.dependency_names(g.named("cluster-pcluster"))
    assert g.outputs["domainDns"] == "DhcpOptions" and g.outputs["previousDhcpOptionsId"] == PREVIOUS
    err = caplog.text
    assert f"associate-dhcp-options --vpc-id {VPC} --dhcp-options-id {PREVIOUS}" in err
    assert "pulumi destroy" in err


def test_a_later_run_finds_the_set_before_in_the_stacks_own_set(run_stack):
    """After the first `up` the VPC uses the stack's set: the set before comes from its tag, not the lookup."""
    own = {"Name": "directory-dhcp", "pcluster-ad:stack": "dev", "pcluster-ad:previous-dhcp-options": PREVIOUS}
    g = run_stack(adopt("DhcpOptions"), mocks=mocks(servers=OWN_SET_DNS, tags=own, current="dopt-0000000000000own"))
    assert g.outputs["previousDhcpOptionsId"] == PREVIOUS
    assert g.named("directory-dhcp").inputs["tags"]["pcluster-ad:previous-dhcp-options"] == PREVIOUS


def test_upgrade_keeps_the_dhcp_options_an_earlier_version_made(run_stack, caplog):
    """A stack deployed before domainDns existed replaced the VPC's options: without the key, nothing flips."""
    own = {"Name": "directory-dhcp", "pcluster-ad:stack": "dev"}
    g = run_stack(adopt(), mocks=mocks(servers=OWN_SET_DNS, tags=own, current="dopt-0000000000000own"))
    assert g.outputs["domainDns"] == "DhcpOptions" and g.of_type(DHCP_ASSOC) and not g.of_type(ENDPOINT)
    assert g.outputs["previousDhcpOptionsId"] is None  # the earlier version did not record it
    assert "made by an earlier version" in caplog.text
    # Another stack's set is not this stack's: its DNS servers are custom ones, the operator chooses.
    with pytest.raises(RunError, match="invalid stack configuration"):
        run_stack(adopt(), mocks=mocks(servers=OWN_SET_DNS, tags={**own, "pcluster-ad:stack": "other"}))


def test_custom_dns_servers_make_the_operator_choose(run_stack, caplog):
    counting = mocks(servers=["192.168.0.2"])
    declared: list[str] = []
    counting.new_resource = lambda args, new=counting.new_resource: (declared.append(args.name), new(args))[1]
    with pytest.raises(RunError, match="nothing was created"):
        run_stack(adopt(), mocks=counting)
    err = caplog.text
    assert "pcluster-ad:network.domainDns" in err and "192.168.0.2" in err
    assert "Unmanaged" in err and "DhcpOptions" in err
    assert declared == []
    caplog.clear()
    # ResolverRule asked for explicitly: the same refusal (the rule would never see the queries).
    with pytest.raises(RunError):
        run_stack(adopt("ResolverRule"), mocks=mocks(servers=["192.168.0.2"]))
    assert "pcluster-ad:network.domainDns: ResolverRule" in caplog.text
    caplog.clear()
    # Unmanaged: the operator says those servers resolve the domain; the stack adds nothing.
    g = run_stack(adopt("Unmanaged"), mocks=mocks(servers=["192.168.0.2"]))
    assert not g.of_type(DHCP_OPTIONS) and not g.of_type(ENDPOINT) and not g.of_type(RULE_ASSOC)
    assert g.outputs["domainDns"] == "Unmanaged"


def test_dhcp_options_that_already_name_the_directory_are_left_alone(run_stack):
    g = run_stack(adopt(directory=EXISTING_DIRECTORY), mocks=mocks(servers=list(reversed(DC_IPS))),
                  secrets={"pcluster-ad:joinPassword": "Sup3r-Secret-Passw0rd"})
    assert g.outputs["domainDns"] == "Unmanaged"
    assert not g.of_type(DHCP_OPTIONS) and not g.of_type(ENDPOINT)


def test_resolver_rule_needs_dns_resolution_on(run_stack, caplog):
    with pytest.raises(RunError):
        run_stack(adopt(), mocks=mocks(dns_support=False))
    assert "pcluster-ad:network.vpcId" in caplog.text


def test_created_vpc_keeps_the_directory_dhcp_options(run_stack):
    g = run_stack()
    assert g.named("directory-dhcp-assoc").inputs["dhcpOptionsId"] == "<after-deploy:directory-dhcp.id>"
    assert "pcluster-ad:previous-dhcp-options" not in g.named("directory-dhcp").inputs["tags"]
    assert not g.of_type(ENDPOINT) and not g.of_type(RULE) and g.outputs["domainDns"] == "DhcpOptions"
    assert "previousDhcpOptionsId" not in g.outputs


def _settings(network: dict):
    values, secret_keys = values_from_stack_file(stack_doc("dev"))
    values["pcluster-ad:network"] = network
    return parse_settings(values, stack="dev", secret_keys=secret_keys)


def test_config_domain_dns_is_validated_and_the_opt_in_warns():
    adopted = {"vpcId": VPC, "publicSubnetId": PUBLIC, "privateSubnetIds": list(SUBNETS)}
    assert _settings(adopted).network.domain_dns is None  # decided from the VPC's DHCP options
    assert _settings({}).network.domain_dns == "DhcpOptions"
    with pytest.raises(ConfigError) as e:
        _settings({**adopted, "domainDns": "resolverRule"})
    assert [p.key for p in e.value.problems] == ["pcluster-ad:network.domainDns"]
    assert "ResolverRule, DhcpOptions, Unmanaged" in e.value.problems[0].message
    with pytest.raises(ConfigError) as e:
        _settings({"domainDns": "ResolverRule"})
    assert [p.key for p in e.value.problems] == ["pcluster-ad:network.domainDns"]
    assert "only to an existing VPC" in e.value.problems[0].message
    settings = _settings({**adopted, "domainDns": "DhcpOptions"})
    [warning] = [w for w in settings.warnings if "domainDns" in w]
    assert "EVERY instance" in warning and "pulumi destroy" in warning and "previousDhcpOptionsId" in warning
    assert not [w for w in _settings({**adopted, "domainDns": "ResolverRule"}).warnings if "domainDns" in w]


def test_forwarding_component_needs_two_subnets():
    from pcluster_ad.components.dns_forwarding import DomainForwarding, DomainForwardingArgs

    args = DomainForwardingArgs(stack="dev", domain_name="test.domain", vpc_id=VPC, subnet_ids=["subnet-1"],
                                dc_ips=DC_IPS)
    with pytest.raises(ValueError, match="subnet_ids"):
        DomainForwarding.__init__(object.__new__(DomainForwarding), "domain-dns", args)


@pytest.mark.parametrize("servers,directory", [
    (["203.0.113.53"], None),  # a public resolver: never a created directory's DCs
    (["10.0.0.10", "10.0.9.9"], EXISTING_DIRECTORY),  # private, but not the Existing directory's dnsIps
])
def test_the_stacks_tags_alone_do_not_make_a_set_its_own(run_stack, caplog, servers, directory):
    """Issue 17 attack finding 5: the stack's own set is recognised by its tags AND the directory's DNS in it (the
    tags are anyone's with ec2:CreateTags). Tagged but naming other servers: a warning, then treated as any other
    set: custom DNS servers, so the operator must choose (nothing is switched, no forged previous set is named)."""
    forged = {"Name": "directory-dhcp", "pcluster-ad:stack": "dev",
              "pcluster-ad:previous-dhcp-options": "dopt-0badbadbadbadbad0"}
    cut = mocks(servers=servers, tags=forged, current="dopt-0aaaaaaaaaaaaaaa0")
    with pytest.raises(RunError, match="nothing was created"):
        run_stack(adopt(directory=directory), mocks=cut, secrets={"pcluster-ad:joinPassword": "Sup3r-Secret-Passw0rd"})
    assert "carry this stack's tags but name" in caplog.text
    assert "pcluster-ad:network.domainDns" in caplog.text and "Choose one and set it" in caplog.text
    assert "dopt-0badbadbadbadbad0" not in caplog.text


def test_the_stacks_own_set_of_an_existing_directory_names_its_dns_ips(run_stack):
    own = {"Name": "directory-dhcp", "pcluster-ad:stack": "dev", "pcluster-ad:previous-dhcp-options": PREVIOUS}
    g = run_stack(adopt(directory=EXISTING_DIRECTORY), mocks=mocks(servers=DC_IPS, tags=own, current="dopt-0own"),
                  secrets={"pcluster-ad:joinPassword": "Sup3r-Secret-Passw0rd"})
    assert g.outputs["domainDns"] == "DhcpOptions" and g.outputs["previousDhcpOptionsId"] == PREVIOUS
