"""Network and Directory under Pulumi's mocks: the recorded graph, its properties and secrets."""

from __future__ import annotations

import ipaddress

import pytest
from pulumi import RunError

from pcluster_ad.tools.mocks import PlanMocks, is_secret_value, mask_secrets, unwrap_secrets
from tests.conftest import dumps

SUBNET = "aws:ec2/subnet:Subnet"
NAT = "aws:ec2/natGateway:NatGateway"
DIRECTORY = "aws:directoryservice/directory:Directory"
PASSWORD = "Sup3r-Secret-Passw0rd"


def test_network_spreads_subnets_over_two_azs(run_stack):
    g = run_stack()
    subnets = g.of_type(SUBNET)
    assert sorted(s.name for s in subnets) == ["network-private-a", "network-private-b",
                                               "network-public-a", "network-public-b"]
    for kind in ("public", "private"):
        azs = {s.inputs["availabilityZone"] for s in subnets if f"-{kind}-" in s.name}
        assert azs == {"eu-west-1a", "eu-west-1b"}, kind
    blocks = [ipaddress.IPv4Network(s.inputs["cidrBlock"]) for s in subnets]
    vpc_block = ipaddress.IPv4Network(g.named("network-vpc").inputs["cidrBlock"])
    assert all(b.subnet_of(vpc_block) for b in blocks)
    assert not any(a.overlaps(b) for i, a in enumerate(blocks) for b in blocks[i + 1:])
    assert all(s.inputs["mapPublicIpOnLaunch"] is ("-public-" in s.name) for s in subnets)
    for s in subnets:
        assert g.parent_name(s) == "network"
        assert "network-vpc" in g.dependency_names(s)
    vpc = g.named("network-vpc").inputs
    assert vpc["enableDnsHostnames"] is True and vpc["enableDnsSupport"] is True


def test_routes_public_via_igw_private_via_nat(run_stack):
    g = run_stack()
    public_rt = g.named("network-public-rt")
    assert public_rt.inputs["routes"] == [{"cidrBlock": "0.0.0.0/0", "gatewayId": "<after-deploy:network-igw.id>"}]
    for suffix in "ab":
        rt = g.named(f"network-private-{suffix}-rt")
        assert rt.inputs["routes"][0]["natGatewayId"] == "<after-deploy:network-nat-a.id>"
        assoc = g.named(f"network-private-{suffix}-rta")
        assert set(g.dependency_names(assoc)) == {f"network-private-{suffix}", f"network-private-{suffix}-rt"}
    nat = g.named("network-nat-a")
    assert nat.inputs["subnetId"] == "<after-deploy:network-public-a.id>"
    # NAT needs the internet gateway attached first.
    assert "network-igw" in g.dependency_names(nat)


def test_nat_gateway_per_az(run_stack):
    g = run_stack(lambda c: c["pcluster-ad:network"].update(natGateways=2))
    nats = g.of_type(NAT)
    assert sorted(n.name for n in nats) == ["network-nat-a", "network-nat-b"]
    assert len(g.of_type("aws:ec2/eip:Eip")) == 2
    for suffix in "ab":
        route = g.named(f"network-private-{suffix}-rt").inputs["routes"][0]
        assert route["natGatewayId"] == f"<after-deploy:network-nat-{suffix}.id>"  # AZ-local egress


def test_configured_azs_and_cidr_are_used(run_stack):
    g = run_stack(lambda c: c["pcluster-ad:network"].update(cidr="172.20.0.0/20",
                                                            availabilityZones=["eu-west-1c", "eu-west-1b"]))
    azs = sorted(s.inputs["availabilityZone"] for s in g.of_type(SUBNET))
    assert azs == ["eu-west-1b", "eu-west-1b", "eu-west-1c", "eu-west-1c"]
    assert g.named("network-private-c").inputs["cidrBlock"] == "172.20.0.0/22"


def test_simple_ad_in_private_subnets_with_secret_password(run_stack):
    g = run_stack(secrets={"pcluster-ad:adminPassword": PASSWORD})
    ad = g.named("directory-ad")
    assert ad.inputs["type"] == "SimpleAD" and ad.inputs["size"] == "Small"
    assert ad.inputs["name"] == "test.domain" and ad.inputs["shortName"] == "TEST"
    assert ad.inputs["vpcSettings"]["subnetIds"] == ["<after-deploy:network-private-a.id>",
                                                      "<after-deploy:network-private-b.id>"]
    assert is_secret_value(ad.inputs["password"])
    assert unwrap_secrets(ad.inputs["password"]) == PASSWORD
    # The plaintext is nowhere else in the graph, and nowhere in the plan's view.
    # Outside secret wrappers (the directory's own input, and the join credential parameter
    # that defaults to it), the plaintext appears nowhere in the graph.
    assert PASSWORD not in dumps([mask_secrets(r.inputs) for r in g.resources])
    assert PASSWORD not in dumps(g.to_plan())
    assert PASSWORD not in dumps(g.outputs)
    assert g.parent_name(ad) == "directory"


def test_password_change_cannot_replace_the_directory(run_stack):
    ad = run_stack().named("directory-ad")
    assert ad.options["ignoreChanges"] == ["password"]
    assert ad.options["protect"] is False
    protected = run_stack(lambda c: c["pcluster-ad:directory"].update(protect=True)).named("directory-ad")
    assert protected.options["protect"] is True


def test_generated_password_when_none_configured(run_stack):
    g = run_stack()
    pw = g.named("directory-admin-password")
    assert pw.type == "random:index/randomPassword:RandomPassword"
    assert pw.inputs["length"] >= 16 and pw.inputs["special"] is True
    assert all(pw.inputs[k] >= 1 for k in ("minLower", "minUpper", "minNumeric", "minSpecial"))
    ad = g.named("directory-ad")
    assert is_secret_value(ad.inputs["password"])
    assert "directory-admin-password" in g.dependency_names(ad)


def test_managed_ad_uses_edition(run_stack):
    ad = run_stack(lambda c: c.__setitem__("pcluster-ad:directory", {
        "type": "MicrosoftAD", "domainName": "corp.example.com", "shortName": "CORP", "size": "Enterprise"})
    ).named("directory-ad")
    assert ad.inputs["type"] == "MicrosoftAD" and ad.inputs["edition"] == "Enterprise"
    assert "size" not in ad.inputs


@pytest.mark.parametrize("region,domain", [("eu-west-1", "eu-west-1.compute.internal"),
                                           ("us-west-2", "us-west-2.compute.internal"),
                                           ("us-east-1", "ec2.internal")])
def test_dhcp_options_point_at_directory_dns(run_stack, region, domain):
    g = run_stack(lambda c: c.__setitem__("aws:region", region))
    dhcp = g.named("directory-dhcp")
    # Exactly ONE domain (DHCP option 15): a space-separated list becomes "a\032b" under
    # systemd-networkd (Amazon Linux 2023, Ubuntu). The region's EC2 domain, as a default VPC has.
    assert dhcp.inputs["domainName"] == domain
    assert not any(ch.isspace() for ch in dhcp.inputs["domainName"])
    assert "test.domain" not in dhcp.inputs["domainName"]
    assert dhcp.inputs["domainNameServers"] == ["<after-deploy:directory-ad.dnsIpAddresses[0]>",
                                                "<after-deploy:directory-ad.dnsIpAddresses[1]>"]
    assert g.dependency_names(dhcp) == ["directory-ad"]
    assoc = g.named("directory-dhcp-assoc")
    assert set(g.dependency_names(assoc)) == {"directory-dhcp", "network-vpc"}
    assert g.outputs["domainName"] == "test.domain"


def test_existing_vpc_is_adopted_not_created(run_stack):
    subnets = {"subnet-0aaaaaaaaaaaaaaaa": {"availabilityZone": "eu-west-1a", "vpcId": "vpc-0123456789abcdef0"},
               "subnet-0bbbbbbbbbbbbbbbb": {"availabilityZone": "eu-west-1b", "vpcId": "vpc-0123456789abcdef0"}}
    g = run_stack(lambda c: c.__setitem__("pcluster-ad:network", {
        "vpcId": "vpc-0123456789abcdef0", "publicSubnetId": "subnet-0cccccccccccccccc",
        "privateSubnetIds": list(subnets)}), mocks=PlanMocks(subnets=subnets))
    network_types = ("vpc:Vpc", "subnet:Subnet", "internetGateway", "natGateway", "eip:Eip", "routeTable")
    assert not [r.name for r in g.resources if any(t in r.type for t in network_types)]
    assert g.outputs["vpcId"] == "vpc-0123456789abcdef0"
    assert g.outputs["privateSubnetIds"] == list(subnets)
    assert g.named("directory-ad").inputs["vpcSettings"]["subnetIds"] == list(subnets)
    # The adopted VPC's DHCP options stay as they are: a Resolver rule forwards the domain (tests/test_domain_dns.py).
    assert not g.of_type("aws:ec2/vpcDhcpOptionsAssociation:VpcDhcpOptionsAssociation")
    assert g.named("domain-dns-rule-assoc").inputs["vpcId"] == "vpc-0123456789abcdef0"


def test_existing_subnets_in_one_az_fail_before_anything_is_declared(run_stack, caplog):
    subnets = {"subnet-0aaaaaaaaaaaaaaaa": {"availabilityZone": "eu-west-1a", "vpcId": "vpc-0123456789abcdef0"},
               "subnet-0bbbbbbbbbbbbbbbb": {"availabilityZone": "eu-west-1a", "vpcId": "vpc-0fffffffffffffff0"}}
    with pytest.raises(RunError, match="nothing was created"):
        run_stack(lambda c: c.__setitem__("pcluster-ad:network", {
            "vpcId": "vpc-0123456789abcdef0", "publicSubnetId": "subnet-0cccccccccccccccc",
            "privateSubnetIds": list(subnets)}), mocks=PlanMocks(subnets=subnets))


def test_existing_directory_only_gets_dhcp_options(run_stack):
    g = run_stack(lambda c: (c.__setitem__("pcluster-ad:directory", {
        "type": "Existing", "domainName": "corp.example.com", "shortName": "CORP",
        "dnsIps": ["10.0.0.10", "10.0.1.10"], "directoryId": "d-1234567890"}),
        c.__setitem__("pcluster-ad:join", {"user": "svc-join"}),
        c.pop("pcluster-ad:identity", None)),  # rfc2307 (the sample's) needs admin credentials
        secrets={"pcluster-ad:joinPassword": PASSWORD})
    assert not g.of_type(DIRECTORY)
    assert not g.of_type("random:index/randomPassword:RandomPassword")
    assert g.named("directory-dhcp").inputs["domainNameServers"] == ["10.0.0.10", "10.0.1.10"]
    assert g.outputs["directoryId"] == "d-1234567890"
    assert PASSWORD not in dumps(g.to_plan())


class CountingMocks(PlanMocks):
    def __init__(self):
        super().__init__()
        self.declared = []

    def new_resource(self, args):
        self.declared.append(args.name)
        return super().new_resource(args)


def test_invalid_config_declares_nothing(run_stack):
    mocks = CountingMocks()
    with pytest.raises(RunError, match="invalid stack configuration"):
        run_stack(lambda c: c["pcluster-ad:cluster"].update(name="9lives"), mocks=mocks)
    assert mocks.declared == []
    # The same mocks do see resources for a valid config, so the check above can fail.
    run_stack(mocks=mocks)
    assert "directory-ad" in mocks.declared


@pytest.mark.parametrize("bad", ["test.domain eu-west-1.compute.internal", "", "eu-west-1.compute.internal\t"])
def test_directory_refuses_more_than_one_dhcp_domain(bad):
    """The component itself refuses a list (or nothing) as the DHCP domain, naming the argument."""
    from pcluster_ad.components.directory import Directory, DirectoryArgs

    args = DirectoryArgs(type="Existing", domain_name="test.domain", short_name="TEST", vpc_id="vpc-1",
                         subnet_ids=[], ec2_internal_domain=bad, existing_dns_ips=["10.0.0.10"])
    with pytest.raises(ValueError, match="ec2_internal_domain must be ONE domain name"):
        Directory.__init__(object.__new__(Directory), "directory", args)
