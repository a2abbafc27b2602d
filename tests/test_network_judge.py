"""The network judge (tools/network_judge.py) on the real program's plans: every declared flow gets through on
every sample stack and on an adopted VPC; removing any one rule, route or association a flow needs makes it fail
naming the flow; the adopted VPC's route out is checked before anything is created (program.route_out_problems)."""

from __future__ import annotations

import copy

import pytest
from pulumi import RunError

from pcluster_ad.tools.mocks import EXISTING_IGW, EXISTING_NAT, PlanMocks, config_from_stack_file
from pcluster_ad.tools.network_judge import AMAZON_DNS, Facts, World, judge, mutations, ref
from tests.conftest import ROOT, stack_doc

EXISTING_NETWORK = {
    "vpcId": "vpc-0123456789abcdef0",
    "publicSubnetId": "subnet-0aaaaaaaaaaaaaaa1",
    "privateSubnetIds": ["subnet-0bbbbbbbbbbbbbbb1", "subnet-0bbbbbbbbbbbbbbb2"],
}
PRIVATE = EXISTING_NETWORK["privateSubnetIds"]


def _existing(c):
    c["pcluster-ad:network"] = dict(EXISTING_NETWORK)


def _existing_dhcp(c):
    c["pcluster-ad:network"] = {**EXISTING_NETWORK, "domainDns": "DhcpOptions"}


def _login(c):
    c["pcluster-ad:cluster"]["loginNodes"] = {"count": 1, "instanceType": "c5.large"}


def _existing_directory(c):
    c["pcluster-ad:directory"] = {"type": "Existing", "domainName": "corp.example.com", "shortName": "CORP",
                                  "dnsIps": ["10.0.0.10", "10.0.1.10"], "directoryId": "d-1234567890"}
    c["pcluster-ad:join"] = {"user": "svc-join"}
    c.pop("pcluster-ad:identity", None)  # rfc2307 (the sample's) needs admin credentials


# name -> (stack file, edit, secrets): the sample stacks, an adopted VPC, login nodes, an Existing directory.
STACKS = {
    "dev": ("dev", None, {}),
    "prod": ("prod", None, {}),
    "existing-vpc": ("dev", _existing, {}),  # network.domainDns unset: a Resolver rule (the VPC names AmazonDNS)
    "existing-vpc-dhcp-options": ("dev", _existing_dhcp, {}),
    "dev-login-nodes": ("dev", _login, {}),
    "existing-directory": ("dev", _existing_directory, {"pcluster-ad:joinPassword": "Sup3r-Secret-Passw0rd"}),
}
_PLANS: dict[str, tuple[list, Facts]] = {}


def plan(run_stack, name: str) -> tuple[list, Facts]:
    """The plan's resources (as resources.json holds them) and the adopted VPC's facts, run once per module."""
    if name not in _PLANS:
        stack, edit, secrets = STACKS[name]
        mocks = _mocks(edit) if edit in (_existing, _existing_dhcp) else None
        graph = run_stack(edit, stack=stack, secrets=secrets, mocks=mocks)
        graph.root = str(ROOT)
        _PLANS[name] = (graph.to_plan(), Facts(**mocks.network_facts()) if mocks else Facts())
    return _PLANS[name]


@pytest.mark.parametrize("name", list(STACKS))
def test_every_declared_flow_gets_through(run_stack, name):
    resources, facts = plan(run_stack, name)
    verdict = judge(resources, facts)
    assert verdict.ok, "\n".join(map(str, verdict.failures))
    # The flows were judged, not skipped: both functions and every node kind of the config.
    admin = [] if name == "existing-directory" else [
        "DirectoryAdmin DNS", "DirectoryAdmin LDAP", "DirectoryAdmin AWS APIs"]
    if not admin:  # an Existing directory without directory.adminUser: no DirectoryAdmin
        assert "DirectoryAdmin DNS" in verdict.skipped
    for flow in (*admin, "JoinFunction DNS",
                 "JoinFunction LDAP", "JoinFunction AWS APIs", "HeadNode DNS", "HeadNode Kerberos",
                 "ComputeNodes Global Catalog", "ComputeNodes NFS /home", "HeadNode HTTPS", "ComputeNodes HTTPS",
                 "ComputeNodes to HeadNode slurmctld"):
        assert flow in verdict.passed, (flow, verdict.skipped)
    if name == "dev-login-nodes":
        assert {"LoginNodes CLDAP", "LoginNodes NFS /home", "LoginNodes to HeadNode slurmctld"} <= set(verdict.passed)


def _redundant(world: World, what: str, resource: str) -> str | None:
    """Why removing this does not break a flow, or None (then it must). Derived from the plan, not listed."""
    hosts = set()  # subnets where something of the stack runs, NAT gateways included
    for r in world.of("aws:lambda/function:Function"):
        hosts.update((r["inputs"].get("vpcConfig") or {}).get("subnetIds") or [])
    for kind in ("head", "compute", "login"):
        hosts.update(i.subnet for i in world.node_interfaces(kind))
    hosts.update(r["inputs"].get("subnetId") for r in world.of("aws:ec2/natGateway:NatGateway"))
    r = world.res[resource]
    if r["type"] == "aws:ec2/routeTableAssociation:RouteTableAssociation" and r["inputs"]["subnetId"] not in hosts:
        return "a subnet that hosts nothing of the stack (no node, function or NAT gateway)"
    nodes = {i.subnet for kind in ("head", "compute", "login") for i in world.node_interfaces(kind)}
    if r["type"] == "aws:ec2/subnet:Subnet" and f"<after-deploy:{resource}.id>" not in nodes:
        return "no node runs there (a NAT gateway has its Elastic IP, a function never has a public IP)"
    function_groups = {g for f in world.of("aws:lambda/function:Function")
                       for g in (f["inputs"].get("vpcConfig") or {}).get("securityGroupIds") or []}
    if f"<after-deploy:{resource}.id>" in function_groups and "(DNS (" in what and world.resolvers()[0] == [AMAZON_DNS]:
        return "the VPC resolves through the Amazon-provided resolver (exempt); the domain goes by a Resolver rule"
    own = f"<after-deploy:{resource}.id>"
    answering = {g for mt in world.of("aws:efs/mountTarget:MountTarget")
                 for g in mt["inputs"].get("securityGroups") or []}
    if own in answering and " egress[" in what:
        return "the mount targets only answer: stateful groups let replies out without egress rules"
    node_groups = {g for kind in ("head", "compute", "login") for i in world.node_interfaces(kind) for g in i.groups
                   if any(p.startswith("pcluster:") for p in i.groups)}
    if r["type"] == "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule" and \
            ref(r["inputs"]["securityGroupId"]) in node_groups:
        return "the nodes also carry ParallelCluster's groups, which allow all egress"
    return None


@pytest.mark.parametrize("name", list(STACKS))
def test_removing_any_one_thing_a_flow_needs_fails_that_flow(run_stack, name):
    resources, facts = plan(run_stack, name)
    world = World(resources, facts)
    tried = failed = 0
    spare = []
    for m in mutations(resources):
        tried += 1
        verdict = judge(m.resources, facts)
        reason = _redundant(world, m.what, m.resource)
        if reason is None:
            assert not verdict.ok, f"{name}: {m.what}: no flow failed"
            failed += 1
            assert all(f.flow for f in verdict.failures)
            if " egress[" in m.what or " ingress[" in m.what or " route " in m.what:
                # The failure points at what was removed: the group or the route table.
                assert any(m.resource in f.detail for f in verdict.failures), (m.what, verdict.failures)
        else:
            assert verdict.ok, f"{name}: {m.what} ({reason}) broke {verdict.failures}"
            spare.append(m.what)
    assert tried >= 20 and failed >= 15, (tried, failed)
    # Every spare was explained by _redundant; everything else broke a named flow.
    assert failed + len(spare) == tried


def test_each_function_rule_is_needed_by_its_own_flow(run_stack):
    resources, facts = plan(run_stack, "dev")
    seen = set()
    for m in mutations(resources):
        if m.resource in ("directory-admin-sg", "join-function-sg") and " egress[" in m.what:
            owner = "DirectoryAdmin" if m.resource == "directory-admin-sg" else "JoinFunction"
            kind = "DNS" if "DNS" in m.what else "LDAP" if "LDAP" in m.what else "AWS APIs"
            assert judge(m.resources, facts).failed_flows() == {f"{owner} {kind}"}, m.what
            seen.add((owner, kind))
    assert len(seen) == 6


def test_directory_admin_without_dns_fails_directory_admin_dns(run_stack, monkeypatch):
    """Finding 1 of issue 17: today's main built DirectoryAdmin's group with dns=False."""
    from pcluster_ad.components import _vpc_lambda as vpc_lambda
    from pcluster_ad.components import directory_admin as directory_admin

    original = vpc_lambda.security_group

    def without_dns(*args, **kwargs):
        return original(*args, **{**kwargs, "dns": False})

    monkeypatch.setattr(directory_admin, "security_group", without_dns)
    graph = run_stack()
    graph.root = str(ROOT)
    verdict = judge(graph.to_plan())
    assert verdict.failed_flows() == {"DirectoryAdmin DNS"}
    assert any("udp/53" in f.detail for f in verdict.failures)
    assert any("tcp/53" in f.detail for f in verdict.failures)


def test_nodes_need_the_directory_as_their_resolver(run_stack):
    resources, facts = plan(run_stack, "dev")
    resources = copy.deepcopy(resources)
    for r in resources:
        if r["type"] == "aws:ec2/vpcDhcpOptions:VpcDhcpOptions":
            r["inputs"]["domainNameServers"] = [AMAZON_DNS]
    verdict = judge(resources, facts)
    # The functions resolve AWS names through the Amazon-provided resolver (exempt); the nodes cannot find the DCs.
    assert verdict.failed_flows() == {"HeadNode DNS", "ComputeNodes DNS"}


# -------------------------------------------------------------------------- the adopted VPC's route out
def _run_existing(run_stack, mocks: PlanMocks):
    return run_stack(_existing, mocks=mocks)


def _mocks(edit=_existing, **kw) -> PlanMocks:
    doc = stack_doc("dev")
    edit(doc["config"])
    config, _ = config_from_stack_file(doc)
    base = PlanMocks.from_config(config)
    for k, v in kw.items():
        setattr(base, k, v)
    return base


@pytest.mark.parametrize("routes, expected", [
    ([], "has no 0.0.0.0/0 route"),
    ([{"cidrBlock": "0.0.0.0/0", "gatewayId": EXISTING_IGW}], "only a NAT"),
    ([{"cidrBlock": "10.0.0.0/8", "natGatewayId": EXISTING_NAT}], "has no 0.0.0.0/0 route"),
])
def test_private_subnet_without_a_route_out_fails_before_anything_is_created(run_stack, caplog, routes, expected):
    mocks = _mocks(route_tables={PRIVATE[1]: routes})
    with pytest.raises(RunError, match="nothing was created"):
        _run_existing(run_stack, mocks)
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    key = "pcluster-ad:network.privateSubnetIds"
    assert any(key in e and PRIVATE[1] in e and expected in e for e in errors), errors
    # The judge, given the same routes, fails the same flows for the functions and the compute nodes there.
    resources, _ = plan(run_stack, "existing-vpc")
    verdict = judge(resources, Facts(**mocks.network_facts()))
    assert {"DirectoryAdmin AWS APIs", "JoinFunction AWS APIs", "ComputeNodes HTTPS"} <= verdict.failed_flows()


def test_nat_gateway_without_internet_route_fails(run_stack, caplog):
    nat_subnet = "subnet-0natpublic0000000"
    mocks = _mocks(route_tables={nat_subnet: [{"cidrBlock": "0.0.0.0/0", "natGatewayId": EXISTING_NAT}]})
    with pytest.raises(RunError, match="nothing was created"):
        _run_existing(run_stack, mocks)
    errors = " ".join(r.getMessage() for r in caplog.records if r.levelname == "ERROR")
    assert "pcluster-ad:network.privateSubnetIds" in errors and "no 0.0.0.0/0 route to an internet gateway" in errors


def test_private_nat_gateway_fails(run_stack, caplog):
    mocks = _mocks(nat_gateways={EXISTING_NAT: {"subnetId": "subnet-0natpublic0000000",
                                                "connectivityType": "private"}})
    with pytest.raises(RunError, match="nothing was created"):
        _run_existing(run_stack, mocks)
    assert "private NAT gateway" in " ".join(r.getMessage() for r in caplog.records)


def test_public_subnet_without_internet_gateway_fails(run_stack, caplog):
    mocks = _mocks(route_tables={EXISTING_NETWORK["publicSubnetId"]: [
        {"cidrBlock": "0.0.0.0/0", "natGatewayId": EXISTING_NAT}]})
    with pytest.raises(RunError, match="nothing was created"):
        _run_existing(run_stack, mocks)
    assert "pcluster-ad:network.publicSubnetId" in " ".join(r.getMessage() for r in caplog.records)


def test_transit_gateway_route_out_is_accepted(run_stack):
    tgw = [{"cidrBlock": "0.0.0.0/0", "transitGatewayId": "tgw-0123456789abcdef0"}]
    graph = _run_existing(run_stack, _mocks(route_tables={s: tgw for s in PRIVATE}))
    assert graph.outputs["privateSubnetIds"] == PRIVATE


def test_subnet_on_the_main_route_table_is_looked_up_there(run_stack):
    """get_route_table(subnet_id=...) finds explicit associations only; the main table is asked for next."""
    class MainTableMocks(PlanMocks):
        asked = []

        def call(self, args):
            if args.token == "aws:ec2/getRouteTable:getRouteTable":
                self.asked.append(dict(args.args))
                if args.args.get("subnetId") == PRIVATE[0]:  # as the provider answers: the invoke fails
                    return {}, [("subnetId", "no matching Route Table found")]
                if args.args.get("vpcId"):
                    return {"id": "rtb-main", "routeTableId": "rtb-main",
                            "routes": [{"cidrBlock": "0.0.0.0/0", "natGatewayId": EXISTING_NAT}]}, []
            return super().call(args)

    base = _mocks()
    mocks = MainTableMocks(subnets=base.subnets)
    graph = _run_existing(run_stack, mocks)
    assert graph.outputs["privateSubnetIds"] == PRIVATE
    main = [a for a in mocks.asked if a.get("vpcId")]
    assert main and main[0]["filters"] == [{"name": "association.main", "values": ["true"]}]


# -------------------------------------------------------------------------- the judge's own rules, on edited plans
def _edited(run_stack, edit) -> list:
    resources, _ = plan(run_stack, "dev")
    resources = copy.deepcopy(resources)
    edit({r["name"]: r for r in resources}, resources)
    return resources


def test_cidr_blocks_and_all_protocols_match_as_aws_does(run_stack):
    def vpc_wide(by_name, _):
        by_name["directory-admin-sg"]["inputs"]["egress"] = [
            # The DCs' addresses are inside the VPC's block: a rule to the block reaches them.
            {"protocol": "tcp", "fromPort": 1, "toPort": 1000, "cidrBlocks": ["10.0.0.0/16"]},
            {"protocol": "udp", "fromPort": 53, "toPort": 53, "cidrBlocks": ["10.0.0.0/16"]}]

    verdict = judge(_edited(run_stack, vpc_wide))
    # 443 to the internet is not inside 10.0.0.0/16.
    assert verdict.failed_flows() == {"DirectoryAdmin AWS APIs"}

    def everything(by_name, _):
        by_name["directory-admin-sg"]["inputs"]["egress"] = [
            {"protocol": "-1", "fromPort": 0, "toPort": 0, "cidrBlocks": ["0.0.0.0/0"]}]

    assert judge(_edited(run_stack, everything)).ok

    def other_block(by_name, _):
        by_name["directory-admin-sg"]["inputs"]["egress"][0]["cidrBlocks"] = ["10.0.0.0/24"]

    # A block that may or may not hold a DC is not a rule that certainly reaches it.
    assert "DirectoryAdmin LDAP" in judge(_edited(run_stack, other_block)).failed_flows()


def test_internet_gateway_route_does_not_serve_interfaces_without_public_ip(run_stack):
    def igw(by_name, _):
        for s in "ab":
            by_name[f"network-private-{s}-rt"]["inputs"]["routes"] = [
                {"cidrBlock": "0.0.0.0/0", "gatewayId": "<after-deploy:network-igw.id>"}]

    verdict = judge(_edited(run_stack, igw))
    assert verdict.failed_flows() == {"DirectoryAdmin AWS APIs", "JoinFunction AWS APIs", "ComputeNodes HTTPS"}
    assert all("no public IP" in f.detail for f in verdict.failures)


def _acl(ingress, egress):
    def edit(by_name, resources):
        resources.append({"type": "aws:ec2/networkAcl:NetworkAcl", "name": "private-acl", "parent": None,
                          "dependencies": [], "inputs": {
                              "vpcId": "<after-deploy:network-vpc.id>", "ingress": ingress, "egress": egress,
                              "subnetIds": ["<after-deploy:network-private-a.id>",
                                            "<after-deploy:network-private-b.id>"]}})
    return edit


ALLOW_ALL = {"ruleNo": 100, "action": "allow", "protocol": "-1", "fromPort": 0, "toPort": 0, "cidrBlock": "0.0.0.0/0"}


def test_network_acls_are_stateless(run_stack):
    assert judge(_edited(run_stack, _acl([ALLOW_ALL], [ALLOW_ALL]))).ok
    # Requests in, but no ephemeral ports back: every reply to the private subnets is dropped.
    well_known = {"ruleNo": 100, "action": "allow", "protocol": "-1", "fromPort": 0, "toPort": 0,
                  "cidrBlock": "10.0.0.0/16"}
    verdict = judge(_edited(run_stack, _acl([well_known], [ALLOW_ALL])))
    assert {"DirectoryAdmin AWS APIs", "JoinFunction AWS APIs", "ComputeNodes HTTPS"} <= verdict.failed_flows()
    assert any("(the reply)" in f.detail for f in verdict.failures)
    assert "HeadNode HTTPS" not in verdict.failed_flows()  # the head node's public subnet has no ACL


def test_network_acl_deny_entry_comes_first(run_stack):
    deny_dns = {"ruleNo": 50, "action": "deny", "protocol": "udp", "fromPort": 53, "toPort": 53,
                "cidrBlock": "0.0.0.0/0"}
    verdict = judge(_edited(run_stack, _acl([deny_dns, ALLOW_ALL], [ALLOW_ALL])))
    # DNS to a DC in the other private subnet (or from the public one) crosses the ACL; nothing else is denied.
    assert verdict.failed_flows() == {"DirectoryAdmin DNS", "JoinFunction DNS", "HeadNode DNS", "ComputeNodes DNS"}


def test_command_line(run_stack, tmp_path, capsys):
    import json

    from pcluster_ad.tools.network_judge import main

    resources, facts = plan(run_stack, "existing-vpc")
    (tmp_path / "resources.json").write_text(json.dumps(resources))
    (tmp_path / "facts.json").write_text(json.dumps(facts.__dict__))
    assert main([str(tmp_path), "--facts", str(tmp_path / "facts.json")]) == 0
    assert "pass  ComputeNodes NFS /home" in capsys.readouterr().out
    broken = copy.deepcopy(resources)
    for r in broken:
        if r["name"] == "domain-dns-sg":
            r["inputs"]["egress"] = []
    (tmp_path / "resources.json").write_text(json.dumps(broken))
    assert main([str(tmp_path), "--facts", str(tmp_path / "facts.json")]) == 1
    assert "FAIL  HeadNode DNS: no egress rule of resolver endpoint" in capsys.readouterr().out
