"""The network judge: does every flow a runtime piece needs get through, the way AWS evaluates it?

    venv/bin/python -m pcluster_ad.tools.plan dev --out plan-out/dev
    venv/bin/python -m pcluster_ad.tools.network_judge plan-out/dev [--facts facts.json]

Input: the plan's resources (tools/plan.py's resources.json, or tools.mocks.Graph.to_plan()), the cluster
config the plan hands ParallelCluster (the launcher Command's stdin), and for an adopted VPC the facts the
program read from AWS before creating anything (`Facts`: subnets, route tables, NAT gateways; the tests take
them from tools.mocks.PlanMocks). For each flow of FLOWS below and each network interface of its source
(a function in the VPC has one per subnet: Lambda may use any; a queue spans its subnets), it evaluates:

- security groups, stateful: the source's groups must allow the packet out (egress) and the destination's
  groups must allow it in (ingress); replies need no rule. Rules match by protocol (-1 = all) and port range,
  by CIDR (a `<placeholder>/32` matches exactly that address; a block matches what lies inside it) or by group
  reference (the peer carries the group). Groups the AWS provider creates have no default egress (it revokes
  it); ParallelCluster's managed node groups and the directory's controllers group are modelled from their
  owners' code and documentation (PCLUSTER_* and DIRECTORY_CONTROLLER_INGRESS).
- network ACLs where the plan declares any (stateless: the reply needs the ephemeral ports back).
- routes: inside the VPC the local route; to the internet (AWS APIs, the function URL, packages) the
  subnet's table (its association, else the VPC's main table, which a created VPC leaves with only the local
  route) must send 0.0.0.0/0 to a NAT gateway (public, with an EIP, in a subnet whose table sends 0.0.0.0/0 to
  the VPC's internet gateway) or, for an interface with a public IP, to the internet gateway itself. VPC
  endpoints are not credited (the AWS API flows span services, IAM among them, that no endpoint covers): a plan
  with endpoints still needs the NAT here, which errs on the safe side.
- DNS: a piece in the VPC resolves through the servers the VPC's DHCP options name (the plan's association,
  else the adopted VPC's). The Amazon-provided resolver is exempt from groups and ACLs; any other server
  (the directory's DNS) needs 53 UDP and TCP like any peer. Domain-joined nodes also need that server to be
  the directory's: realmd, adcli and sssd find the domain controllers through its SRV records.

A verdict lists each failing flow by name with the reason; `passed` is empty of failures when all get through.
"""

from __future__ import annotations

import argparse
import copy
import ipaddress
import json
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# ---------------------------------------------------------------------------------------------------------
# The flows: data, one place. source: a Lambda function resource of the plan ("function:<resource name>") or
# the nodes of the cluster config ("nodes:head", "nodes:compute", "nodes:login"). target: "resolver" (the
# VPC's DNS servers), "domain-controllers" (the directory's DNS IPs: they are its DCs), "internet" (AWS API
# endpoints and the function URL: no fixed IPs), "home" (the /home EFS mount target of the node's AZ), or
# nodes. ports: (protocol, port); a string port names the function's environment variable holding it.
# ---------------------------------------------------------------------------------------------------------
FLOWS: list[dict[str, Any]] = [
    # DirectoryAdmin (components/directory_admin.py, lambda_src/directory_admin.py): every invocation first
    # resolves the AWS endpoints (SSM, KMS via SSM, DS, EC2, DynamoDB) through the VPC's DHCP options' servers.
    {"name": "DirectoryAdmin DNS", "source": "function:directory-admin-fn", "target": "resolver",
     "ports": [("udp", 53), ("tcp", 53)], "why": "resolve the AWS endpoints (finding 1 of issue 17)"},
    {"name": "DirectoryAdmin LDAP", "source": "function:directory-admin-fn", "target": "domain-controllers",
     "ports": [("tcp", "LDAP_PORT")], "why": "create the OU, the accounts, users and groups; remove computers"},
    {"name": "DirectoryAdmin AWS APIs", "source": "function:directory-admin-fn", "target": "internet",
     "ports": [("tcp", 443)], "why": "SSM parameters, ds:ResetUserPassword, EC2 (sweep), DynamoDB, via the NAT"},
    # JoinFunction (components/join_function.py, lambda_src/join_handler.py): called by booting nodes.
    {"name": "JoinFunction DNS", "source": "function:join-function-fn", "target": "resolver",
     "ports": [("udp", 53), ("tcp", 53)], "why": "resolve STS, EC2, IAM, SSM, DynamoDB, CloudFormation"},
    {"name": "JoinFunction LDAP", "source": "function:join-function-fn", "target": "domain-controllers",
     "ports": [("tcp", "LDAP_PORT")], "why": "pre-create each node's computer object with its password"},
    {"name": "JoinFunction AWS APIs", "source": "function:join-function-fn", "target": "internet",
     "ports": [("tcp", 443)], "why": "STS proof, EC2/IAM/CloudFormation checks, SSM, DynamoDB, via the NAT"},
]
# Every node (head, compute queues, login pools) joins the domain at boot (bootstrap/join-domain.sh: adcli
# join) and runs sssd's AD provider (ad_enable_gc defaults to true) afterwards.
NODE_FLOWS: list[dict[str, Any]] = [
    {"name": "DNS", "target": "resolver", "ports": [("udp", 53), ("tcp", 53)], "domain": True,
     "why": "adcli, realmd, sssd and Kerberos find the DCs through the domain's SRV records"},
    {"name": "Kerberos", "target": "domain-controllers", "ports": [("udp", 88), ("tcp", 88)],
     "why": "adcli join, sssd's machine ticket, every user's ticket at login"},
    {"name": "LDAP", "target": "domain-controllers", "ports": [("tcp", 389)],
     "why": "adcli join (GSSAPI-sealed), sssd identity lookups"},
    {"name": "CLDAP", "target": "domain-controllers", "ports": [("udp", 389)],
     "why": "adcli's domain discovery and sssd's netlogon ping (site, DC selection) may use LDAP over UDP; "
            "not seen in the lab with one DC (tests/adlab/test_node_flows.py), kept as AWS's group allows it"},
    {"name": "kpasswd", "target": "domain-controllers", "ports": [("tcp", 464), ("udp", 464)],
     "why": "adcli sets the machine password; sssd renews it (ad_maximum_machine_account_password_age)"},
    {"name": "Global Catalog", "target": "domain-controllers", "ports": [("tcp", 3268)],
     "why": "sssd's AD provider looks users and group memberships up in the GC first (ad_enable_gc)"},
    {"name": "SMB (GPO)", "target": "domain-controllers", "ports": [("tcp", 445)],
     "why": "sssd's ad_gpo_access_control (default enforcing) reads the GPOs from SYSVOL over SMB at each login; "
            "found by tests/adlab/test_node_flows.py"},
    {"name": "HTTPS", "target": "internet", "ports": [("tcp", 443)],
     "why": "the join function URL, STS/IMDS-signed calls, S3 scripts, OS packages"},
    {"name": "NFS /home", "target": "home", "ports": [("tcp", 2049)], "efs": True,
     "why": "mount /home from the stack's EFS (EncryptionInTransit: efs-utils' stunnel to 2049)"},
]
NODE_KINDS = {"head": "HeadNode", "compute": "ComputeNodes", "login": "LoginNodes"}
# Between the cluster's own nodes (ParallelCluster's own groups allow them; declared so that a custom group
# set that breaks them is caught). Ports: pcluster.constants SLURM_PORTS_RANGE (slurmctld), slurmd 6818.
CLUSTER_FLOWS: list[dict[str, Any]] = [
    {"name": "ComputeNodes to HeadNode slurmctld", "source": "nodes:compute", "target": "nodes:head",
     "ports": [("tcp", 6820)], "why": "slurmd registers and reports to slurmctld"},
    {"name": "ComputeNodes to HeadNode NFS", "source": "nodes:compute", "target": "nodes:head",
     "ports": [("tcp", 2049)], "why": "/opt/slurm and /opt/parallelcluster/shared are NFS exports of the head"},
    {"name": "HeadNode to ComputeNodes slurmd", "source": "nodes:head", "target": "nodes:compute",
     "ports": [("tcp", 6818)], "why": "slurmctld launches jobs and pings slurmd"},
    {"name": "LoginNodes to HeadNode slurmctld", "source": "nodes:login", "target": "nodes:head",
     "ports": [("tcp", 6820)], "why": "sbatch, squeue from the login nodes"},
    {"name": "LoginNodes to HeadNode NFS", "source": "nodes:login", "target": "nodes:head",
     "ports": [("tcp", 2049)], "why": "/opt/slurm is an NFS export of the head node"},
]

# The directory's controllers group, created by AWS Directory Service (Simple AD and Managed AD, "What gets
# created"; AddIpRoutes' UpdateSecurityGroupForDirectoryControllers lists the same inbound set): inbound from
# the directory VPC's CIDR, outbound all. An Existing directory's group is its owner's: assumed the same.
DIRECTORY_CONTROLLER_INGRESS = [("tcp", 53, 53), ("udp", 53, 53), ("tcp", 88, 88), ("udp", 88, 88),
                                ("udp", 123, 123), ("tcp", 135, 135), ("udp", 138, 138), ("tcp", 389, 389),
                                ("udp", 389, 389), ("tcp", 445, 445), ("udp", 445, 445), ("tcp", 464, 464),
                                ("udp", 464, 464), ("tcp", 636, 636), ("tcp", 1024, 65535)]
AMAZON_DNS = "AmazonProvidedDNS"
# The reply's destination port is the client's ephemeral port: Lambda and the Linux nodes may use any of
# 1024-65535 (AWS's ACL guide), so a stateless ACL must let all of them back; these samples stand for the range.
EPHEMERAL = (1024, 32768, 60999, 65535)
SG = "aws:ec2/securityGroup:SecurityGroup"
PLACEHOLDER_ID = re.compile(r"^<after-deploy:([^<>]+)\.id>$")


@dataclass
class Facts:
    """What exists already (an adopted VPC), as the program's invokes read it; keys as the AWS provider's."""
    vpc_cidr: str | None = None
    subnets: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> cidrBlock, availabilityZone, ...
    route_tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # subnet id -> routes
    nat_gateways: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> subnetId, connectivityType
    internet_gateways: list[str] = field(default_factory=list)  # attached to the VPC
    dhcp_servers: list[str] | None = None  # the adopted VPC's DHCP options when the plan associates none
    domain_resolves: bool = False  # network.domainDns Unmanaged: the owner says the VPC resolves the domain


@dataclass(frozen=True)
class Failure:
    flow: str
    detail: str

    def __str__(self) -> str:
        return f"{self.flow}: {self.detail}"


@dataclass
class Verdict:
    failures: list[Failure]
    passed: list[str]  # flow names that got through
    skipped: list[str]  # flows whose piece is not in this plan

    @property
    def ok(self) -> bool:
        return not self.failures

    def failed_flows(self) -> set[str]:
        return {f.flow for f in self.failures}


@dataclass
class Interface:
    """One network interface of a piece: where it is, which groups it carries."""
    piece: str
    subnet: str
    groups: list[str]
    public_ip: bool
    address: str | None = None  # a concrete or placeholder IP (domain controllers)


# ------------------------------------------------------------------------------------------------- the world
def ref(value: Any) -> str:
    """A resource reference as the plan holds it: `<after-deploy:NAME.id>` -> NAME; literal ids stay."""
    m = PLACEHOLDER_ID.match(str(value))
    return m.group(1) if m else str(value)


def _proto(p: Any) -> str:
    p = str(p).lower()
    return {"-1": "all", "6": "tcp", "17": "udp"}.get(p, p)


@dataclass
class Rule:
    origin: str  # what to remove to lose it ("sg NAME egress[2]", "resource NAME")
    group: str
    direction: str  # ingress | egress
    proto: str
    from_port: int
    to_port: int
    cidrs: list[str]
    groups: list[str]

    def admits(self, proto: str, port: int) -> bool:
        return self.proto == "all" or (self.proto == proto and self.from_port <= port <= self.to_port)


class World:
    def __init__(self, resources: Sequence[dict[str, Any]], facts: Facts | None = None):
        self.facts = facts or Facts()
        self.res = {r["name"]: r for r in resources}
        self.by_type: dict[str, list[dict[str, Any]]] = {}
        for r in resources:
            self.by_type.setdefault(r["type"], []).append(r)
        self.rules: list[Rule] = []
        for r in self.of("aws:ec2/securityGroup:SecurityGroup"):
            for direction in ("ingress", "egress"):
                for i, rule in enumerate(r["inputs"].get(direction) or []):
                    self.rules.append(Rule(
                        f"{r['name']} {direction}[{i}] ({rule.get('description', '')})", r["name"], direction,
                        _proto(rule.get("protocol")), int(rule.get("fromPort", 0)), int(rule.get("toPort", 0)),
                        list(rule.get("cidrBlocks") or []),
                        [ref(g) for g in rule.get("securityGroups") or []] + ([r["name"]] if rule.get("self") else [])))
        for typ, direction in (("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule", "ingress"),
                               ("aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule", "egress")):
            for r in self.of(typ):
                i = r["inputs"]
                self.rules.append(Rule(
                    r["name"], ref(i["securityGroupId"]), direction, _proto(i.get("ipProtocol")),
                    int(i.get("fromPort", 0)), int(i.get("toPort", 0)),
                    [i["cidrIpv4"]] if i.get("cidrIpv4") else [],
                    [ref(i["referencedSecurityGroupId"])] if i.get("referencedSecurityGroupId") else []))
        for r in self.of("aws:ec2/securityGroupRule:SecurityGroupRule"):
            i = r["inputs"]
            peers = [ref(i["sourceSecurityGroupId"])] if i.get("sourceSecurityGroupId") else []
            self.rules.append(Rule(r["name"], ref(i["securityGroupId"]), i["type"], _proto(i.get("protocol")),
                                   int(i.get("fromPort", 0)), int(i.get("toPort", 0)), list(i.get("cidrBlocks") or []),
                                   peers + ([ref(i["securityGroupId"])] if i.get("self") else [])))
        self.cluster = self._cluster_config()
        self.rules += self._pcluster_rules()
        self.rules += self._directory_rules()

    def of(self, typ: str) -> list[dict[str, Any]]:
        return self.by_type.get(typ, [])

    # ---- VPC, subnets
    def vpc_cidr(self) -> str | None:
        vpcs = self.of("aws:ec2/vpc:Vpc")
        return vpcs[0]["inputs"].get("cidrBlock") if vpcs else self.facts.vpc_cidr

    def subnet(self, subnet_id: str) -> dict[str, Any]:
        r = self.res.get(ref(subnet_id))
        if r is not None and r["type"] == "aws:ec2/subnet:Subnet":
            return r["inputs"]
        return self.facts.subnets.get(subnet_id, {})

    def subnet_cidr(self, subnet_id: str) -> str | None:
        return self.subnet(subnet_id).get("cidrBlock")

    # ---- the cluster config the launcher hands ParallelCluster
    def _cluster_config(self) -> dict[str, Any]:
        for r in self.of("command:local:Command"):
            stdin = r["inputs"].get("stdin")
            if isinstance(stdin, str) and "HeadNode:" in stdin:
                return yaml.safe_load(stdin) or {}
        return {}

    def node_interfaces(self, kind: str) -> list[Interface]:
        c = self.cluster
        out = []
        if kind == "head" and c.get("HeadNode"):
            net = c["HeadNode"].get("Networking") or {}
            groups = list(map(ref, net.get("SecurityGroups") or ["pcluster:HeadNodeSecurityGroup"]))
            elastic = str(net.get("ElasticIp", "false")).lower() not in ("false", "none")
            subnet = net["SubnetId"]
            extra = [ref(g) for g in net.get("AdditionalSecurityGroups") or []]
            out.append(Interface("HeadNode", subnet, groups + extra,
                                 elastic or bool(self.subnet(subnet).get("mapPublicIpOnLaunch"))))
        if kind == "compute":
            for q in (c.get("Scheduling") or {}).get("SlurmQueues") or []:
                net = q.get("Networking") or {}
                groups = list(map(ref, net.get("SecurityGroups") or ["pcluster:ComputeSecurityGroup"]))
                for subnet in net.get("SubnetIds") or []:
                    out.append(Interface(f"ComputeNodes ({q['Name']})", subnet,
                                         groups + [ref(g) for g in net.get("AdditionalSecurityGroups") or []],
                                         bool(net.get("AssignPublicIp", False))))
        if kind == "login":
            for pool in (c.get("LoginNodes") or {}).get("Pools") or []:
                net = pool.get("Networking") or {}
                managed = f"pcluster:LoginNodesSecurityGroup:{pool['Name']}"
                groups = list(map(ref, net.get("SecurityGroups") or [managed]))
                for subnet in net.get("SubnetIds") or []:
                    out.append(Interface(f"LoginNodes ({pool['Name']})", subnet,
                                         groups + [ref(g) for g in net.get("AdditionalSecurityGroups") or []],
                                         bool(self.subnet(subnet).get("mapPublicIpOnLaunch"))))
        return out

    def _pcluster_rules(self) -> list[Rule]:
        """ParallelCluster's managed node groups (pcluster/templates/cluster_stack.py of the pinned version:
        _add_head_security_group, _add_compute_security_group, _add_login_nodes_security_group,
        _add_inbounds_to_managed_*). They
        are CloudFormation groups with no inline egress: AWS's default allow-all egress stays."""
        if not self.cluster:
            return []
        head = [g for i in self.node_interfaces("head") for g in i.groups if g.startswith("pcluster:")]
        compute = sorted({g for i in self.node_interfaces("compute") for g in i.groups if g.startswith("pcluster:")})
        login = sorted({g for i in self.node_interfaces("login") for g in i.groups if g.startswith("pcluster:")})
        rules = []

        def rule(group: str, direction: str, proto: str, ports: tuple[int, int], cidrs=(), groups=()):
            rules.append(Rule(f"ParallelCluster {group} {direction}", group, direction, proto, *ports,
                              list(cidrs), list(groups)))

        for g in head + compute + login:
            rule(g, "egress", "all", (0, 65535), cidrs=["0.0.0.0/0"])
        for g in head:
            for src in compute:
                rule(g, "ingress", "all", (0, 65535), groups=[src])
            for src in login:
                rule(g, "ingress", "tcp", (6819, 6829), groups=[src])
                rule(g, "ingress", "tcp", (2049, 2049), groups=[src])
        for g in compute:
            rule(g, "ingress", "all", (0, 65535), groups=[*head, *login, g])
        for g in login:
            rule(g, "ingress", "all", (0, 65535), groups=[*head, *compute])
        return rules

    # ---- the directory
    def dc_addresses(self) -> list[str]:
        for r in self.of("aws:directoryservice/directory:Directory"):
            return [f"<after-deploy:{r['name']}.dnsIpAddresses[{i}]>" for i in range(2)]
        for r in self.of("aws:lambda/function:Function"):  # an Existing directory: its IPs, as the functions have
            env = ((r["inputs"].get("environment") or {}).get("variables") or {})
            ips = env.get("DC_IPS") or env.get("DNS_IPS")
            if ips:
                return ips.split(",")
        return []

    def dc_subnets(self) -> list[str]:
        for r in self.of("aws:directoryservice/directory:Directory"):
            return list((r["inputs"].get("vpcSettings") or {}).get("subnetIds") or [])
        return []

    def dc_interfaces(self) -> list[Interface]:
        subnets = self.dc_subnets()
        return [Interface("domain controller", subnets[i] if i < len(subnets) else "", ["aws:directory-controllers"],
                          False, address) for i, address in enumerate(self.dc_addresses())]

    def _directory_rules(self) -> list[Rule]:
        cidr = self.vpc_cidr()
        rules = [Rule("AWS directory controllers group", "aws:directory-controllers", "egress", "all", 0, 65535,
                      ["0.0.0.0/0"], [])]
        for proto, low, high in DIRECTORY_CONTROLLER_INGRESS:
            rules.append(Rule("AWS directory controllers group", "aws:directory-controllers", "ingress", proto, low,
                              high, [cidr] if cidr else [], []))
        return rules

    def resolvers(self) -> tuple[list[str], str]:
        for assoc in self.of("aws:ec2/vpcDhcpOptionsAssociation:VpcDhcpOptionsAssociation"):
            options = self.res.get(ref(assoc["inputs"].get("dhcpOptionsId")))
            if options is None:
                return [AMAZON_DNS], f"{assoc['name']} names DHCP options not in the plan"
            return list(options["inputs"].get("domainNameServers") or [AMAZON_DNS]), options["name"]
        if self.facts.dhcp_servers is not None:
            return list(self.facts.dhcp_servers), "the adopted VPC's DHCP options"
        return [AMAZON_DNS], "the VPC's default DHCP options (no association in the plan)"

    def domain_forwarding(self) -> tuple[list[Interface], list[Interface], str | None] | None:
        """A Route 53 Resolver FORWARD rule for the domain associated with the VPC: (the outbound endpoint's
        interfaces, the rule's targets, why it cannot work or None); None without such a rule."""
        for assoc in self.of("aws:route53/resolverRuleAssociation:ResolverRuleAssociation"):
            rule = self.res.get(ref(assoc["inputs"].get("resolverRuleId")))
            if rule is None or rule["inputs"].get("ruleType") != "FORWARD":
                continue
            endpoint = self.res.get(ref(rule["inputs"].get("resolverEndpointId")))
            dcs = {d.address: d for d in self.dc_interfaces()}
            targets = [dcs.get(t.get("ip")) or Interface(f"DNS server {t.get('ip')}", "", [], False, t.get("ip"))
                       for t in rule["inputs"].get("targetIps") or []]
            if endpoint is None:
                return [], targets, f"resolver rule {rule['name']} names an outbound endpoint not in the plan"
            groups = [ref(g) for g in endpoint["inputs"].get("securityGroupIds") or []]
            interfaces = [Interface(f"resolver endpoint {endpoint['name']}", a.get("subnetId", ""), groups, False)
                          for a in endpoint["inputs"].get("ipAddresses") or []]
            return interfaces, targets, None if targets else f"resolver rule {rule['name']} has no target"
        return None

    # ---- matching
    def within(self, iface: Interface) -> list[str]:
        """CIDR blocks that certainly contain the interface's address."""
        if iface.subnet:
            cidr = self.subnet_cidr(iface.subnet)
            if cidr:
                return [cidr]
        if iface.piece == "domain controller":
            cidrs = [self.subnet_cidr(s) for s in self.dc_subnets()]
            if cidrs and all(cidrs):
                return cidrs
            return [self.vpc_cidr()] if self.vpc_cidr() else []
        return []

    def cidr_matches(self, block: str, peer: Interface | None) -> bool:
        """Does `block` certainly contain `peer`'s address? peer None = an address on the internet."""
        if block in ("0.0.0.0/0",):
            return True
        if peer is None:
            return False
        if peer.address and block == f"{peer.address}/32":
            return True
        try:
            net = ipaddress.ip_network(block, strict=False)
        except ValueError:
            return False
        if peer.address:
            try:
                return ipaddress.ip_address(peer.address) in net
            except ValueError:
                pass
        inside = self.within(peer)
        return bool(inside) and all(ipaddress.ip_network(c, strict=False).subnet_of(net) for c in inside)

    def allowed(self, iface: Interface, direction: str, proto: str, port: int, peer: Interface | None) -> list[Rule]:
        return [r for r in self.rules if r.group in iface.groups and r.direction == direction
                and r.admits(proto, port)
                and (any(self.cidr_matches(c, peer) for c in r.cidrs)
                     or (peer is not None and any(g in peer.groups for g in r.groups)))]

    # ---- network ACLs (stateless)
    def nacl_problems(self, subnet: str, direction: str, proto: str, ports: Sequence[int],
                      peer: Interface | None) -> list[str]:
        """Network ACLs of the subnet (stateless): the lowest-numbered entry that may match decides. An allow
        counts only when its block certainly holds the peer; a deny whenever it may (conservative both ways)."""
        acls = [a for a in self.of("aws:ec2/networkAcl:NetworkAcl") if subnet in (a["inputs"].get("subnetIds") or [])]
        acls += [self.res[ref(a["inputs"]["networkAclId"])] for a in
                 self.of("aws:ec2/networkAclAssociation:NetworkAclAssociation")
                 if a["inputs"].get("subnetId") == subnet and ref(a["inputs"]["networkAclId"]) in self.res]
        problems = []
        for acl in acls:
            entries = [dict(e, origin=f"{acl['name']} {direction}[{i}]")
                       for i, e in enumerate(acl["inputs"].get(direction) or [])]
            entries += [dict(r["inputs"], ruleNo=r["inputs"].get("ruleNumber"), action=r["inputs"].get("ruleAction"),
                             origin=r["name"])
                        for r in self.of("aws:ec2/networkAclRule:NetworkAclRule")
                        if ref(r["inputs"].get("networkAclId")) == acl["name"]
                        and bool(r["inputs"].get("egress")) == (direction == "egress")]
            for port in ports:
                decision = "deny (no entry matches: the implicit deny)"
                for e in sorted(entries, key=lambda e: int(e.get("ruleNo", 32767))):
                    p = _proto(e.get("protocol"))
                    low, high = int(e.get("fromPort", 0)), int(e.get("toPort", 0))
                    if not (p == "all" or (p == proto and low <= port <= high)):
                        continue
                    action = str(e.get("action", "deny")).lower()
                    block = e.get("cidrBlock") or ""
                    if action == "allow" and self.cidr_matches(block, peer):
                        decision = "allow"
                        break
                    if action != "allow" and self.cidr_may_match(block, peer):
                        decision = f"deny ({e['origin']})"
                        break
                if decision != "allow":
                    problems.append(f"network ACL {acl['name']} of {ref(subnet)}: {direction} {proto}/{port}: "
                                    f"{decision}")
                    break
        return problems

    def cidr_may_match(self, block: str, peer: Interface | None) -> bool:
        if block == "0.0.0.0/0" or peer is None or self.cidr_matches(block, peer):
            return True
        try:
            net = ipaddress.ip_network(block, strict=False)
            if peer.address:
                return ipaddress.ip_address(peer.address) in net
        except ValueError:
            pass
        inside = self.within(peer)
        return not inside or any(ipaddress.ip_network(c, strict=False).overlaps(net) for c in inside)

    # ---- routes
    def route_table(self, subnet: str) -> tuple[str | None, list[dict[str, Any]]]:
        for assoc in self.of("aws:ec2/routeTableAssociation:RouteTableAssociation"):
            if assoc["inputs"].get("subnetId") == subnet:
                rt = self.res.get(ref(assoc["inputs"].get("routeTableId")))
                if rt is None:
                    return assoc["name"], []
                routes = list(rt["inputs"].get("routes") or [])
                routes += [{"cidrBlock": r["inputs"].get("destinationCidrBlock"), **r["inputs"]}
                           for r in self.of("aws:ec2/route:Route")
                           if ref(r["inputs"].get("routeTableId")) == rt["name"]]
                return rt["name"], routes
        if subnet in self.facts.route_tables:
            return f"route table of {subnet}", list(self.facts.route_tables[subnet])
        if ref(subnet) in self.res:
            return None, []  # a created subnet without association: the VPC's main table (local route only)
        return None, []

    def default_route(self, subnet: str) -> tuple[str | None, dict[str, Any] | None]:
        name, routes = self.route_table(subnet)
        for r in routes:
            if r.get("cidrBlock") == "0.0.0.0/0":
                return name, r
        return name, None

    def igw_attached(self, igw: str) -> bool:
        r = self.res.get(ref(igw))
        if r is not None:
            return r["type"] == "aws:ec2/internetGateway:InternetGateway" and bool(r["inputs"].get("vpcId"))
        return igw in self.facts.internet_gateways

    def internet_path(self, iface: Interface) -> str | None:
        """None when the interface reaches the internet, else why not."""
        table, route = self.default_route(iface.subnet)
        where = f"subnet {ref(iface.subnet)} (route table {table or 'main: local route only'})"
        if route is None:
            return f"{where} has no 0.0.0.0/0 route"
        if route.get("gatewayId") and route["gatewayId"] != "local":
            if not self.igw_attached(route["gatewayId"]):
                return f"{where} routes to internet gateway {ref(route['gatewayId'])}, which does not exist"
            if not iface.public_ip:
                return f"{where} routes to the internet gateway but the interface has no public IP"
            return None
        if route.get("natGatewayId"):
            nat_id = route["natGatewayId"]
            nat = self.res.get(ref(nat_id))
            if nat is not None and nat["type"] == "aws:ec2/natGateway:NatGateway":
                nat_subnet, kind = nat["inputs"].get("subnetId"), nat["inputs"].get("connectivityType", "public")
                eip = nat["inputs"].get("allocationId")
                if kind == "public" and (not eip or (str(eip).startswith("<after-deploy:")
                                                     and ref(eip) not in self.res)):
                    return f"NAT gateway {nat['name']} has no Elastic IP"
            elif nat_id in self.facts.nat_gateways:
                nat_subnet = self.facts.nat_gateways[nat_id].get("subnetId")
                kind = self.facts.nat_gateways[nat_id].get("connectivityType", "public")
            else:
                return f"{where} routes to NAT gateway {ref(nat_id)}, which does not exist"
            if kind != "public":
                return f"NAT gateway {ref(nat_id)} is a private NAT gateway: no way to the internet"
            nat_iface = Interface(f"NAT gateway {ref(nat_id)}", nat_subnet, [], True)
            why = self.internet_path(nat_iface)
            return f"{where} -> NAT gateway {ref(nat_id)}: {why}" if why else None
        if route.get("transitGatewayId") or route.get("networkInterfaceId"):
            return None  # the way on is another VPC's or an appliance's: not judged here
        return f"{where}: its 0.0.0.0/0 route goes to {route} (no way to the internet)"


# ------------------------------------------------------------------------------------------------- judging
def _port(piece_env: dict[str, str], port: int | str) -> int:
    return int(piece_env.get(port, 0)) if isinstance(port, str) else port


def _function(world: World, name: str) -> tuple[list[Interface], dict[str, str]] | None:
    r = world.res.get(name)
    if r is None or r["type"] != "aws:lambda/function:Function":
        return None
    vpc = r["inputs"].get("vpcConfig") or {}
    groups = [ref(g) for g in vpc.get("securityGroupIds") or []]
    env = (r["inputs"].get("environment") or {}).get("variables") or {}
    # A function in the VPC never has a public IP: its way out is the NAT (or endpoints).
    return [Interface(name, s, groups, False) for s in vpc.get("subnetIds") or []], env


def _targets(world: World, target: str, source: Interface) -> tuple[list[Interface | None], str | None]:
    """The destination interfaces (None = the internet), or why there is none."""
    if target == "internet":
        return [None], None
    if target == "domain-controllers":
        dcs = world.dc_interfaces()
        return (dcs, None) if dcs else ([], "no domain controller address in the plan")
    if target == "home":
        az = world.subnet(source.subnet).get("availabilityZone")
        targets = []
        for mt in world.of("aws:efs/mountTarget:MountTarget"):
            if world.subnet(mt["inputs"]["subnetId"]).get("availabilityZone") == az:
                targets.append(Interface(f"mount target {mt['name']}", mt["inputs"]["subnetId"],
                                         [ref(g) for g in mt["inputs"].get("securityGroups") or []], False))
        return (targets, None) if targets else ([], f"no /home mount target in {source.piece}'s AZ {az}")
    if target.startswith("nodes:"):
        found = world.node_interfaces(target.split(":", 1)[1])
        return (found, None) if found else ([], f"no {target} in the cluster config")
    raise ValueError(f"unknown flow target {target}")


def _judge_packet(world: World, src: Interface, dst: Interface | None, proto: str, port: int) -> list[str]:
    problems = []
    if not world.allowed(src, "egress", proto, port, dst):
        problems.append(f"no egress rule of {src.piece}'s groups {sorted(src.groups)} allows {proto}/{port} to "
                        f"{dst.address or dst.piece if dst else 'the internet'} (from {ref(src.subnet)})")
    problems += world.nacl_problems(src.subnet, "egress", proto, [port], dst)
    problems += [p + " (the reply)" for p in world.nacl_problems(src.subnet, "ingress", proto, EPHEMERAL, dst)]
    if dst is None:
        why = world.internet_path(src)
        if why:
            problems.append(why)
        return problems
    if not world.allowed(dst, "ingress", proto, port, src):
        problems.append(f"no ingress rule of {dst.piece}'s groups {sorted(dst.groups)} admits {proto}/{port} from "
                        f"{src.piece} in {ref(src.subnet)}")
    if dst.subnet and dst.subnet != src.subnet:
        problems += world.nacl_problems(dst.subnet, "ingress", proto, [port], src)
        problems += [p + " (the reply)" for p in world.nacl_problems(dst.subnet, "egress", proto, EPHEMERAL, src)]
    return problems


def _judge_flow(world: World, name: str, sources: list[Interface], env: dict[str, str], flow: dict[str, Any]) \
        -> list[Failure]:
    failures: list[Failure] = []
    for src in sources:
        if flow["target"] == "resolver":
            servers, origin = world.resolvers()
            dc_addresses = world.dc_addresses()
            if flow.get("domain") and servers != [AMAZON_DNS] and any(s not in dc_addresses for s in servers):
                failures.append(Failure(name, f"the VPC's DHCP options ({origin}) name {servers}, not the "
                                              f"directory's DNS {dc_addresses}: the AD domain's SRV records "
                                              "do not resolve"))
                continue
            forwarding = world.domain_forwarding() if flow.get("domain") and servers == [AMAZON_DNS] else None
            unresolved = servers == [AMAZON_DNS] and forwarding is None and not world.facts.domain_resolves
            if flow.get("domain") and unresolved:
                failures.append(Failure(name, f"the VPC resolves through the Amazon-provided DNS ({origin}) and no "
                                              "Route 53 Resolver rule forwards the AD domain to the directory"))
                continue
            if forwarding is not None:
                # The Amazon-provided resolver (exempt) hands the domain's names to the outbound endpoint's
                # interfaces, which need their own way to each directory DNS server.
                endpoints, targets, why = forwarding
                if why:
                    failures.append(Failure(name, why))
                for proto, port in flow["ports"]:
                    for ep in endpoints:
                        for dst in targets:
                            failures += [Failure(name, p) for p in _judge_packet(world, ep, dst, proto, port)]
                continue
            dsts: list[Interface | None] = []
            for server in servers:
                if server == AMAZON_DNS:
                    continue  # the Amazon-provided resolver: exempt from security groups and ACLs
                dcs = [d for d in world.dc_interfaces() if d.address == server]
                dsts.append(dcs[0] if dcs else Interface(f"DNS server {server}", "", [], False, server))
        else:
            dsts, why = _targets(world, flow["target"], src)
            if why:
                failures.append(Failure(name, why))
                continue
        for proto, port in flow["ports"]:
            number = _port(env, port)
            if not number:
                failures.append(Failure(name, f"{src.piece} has no {port} in its environment"))
                continue
            for dst in dsts:
                for problem in _judge_packet(world, src, dst, proto, number):
                    failures.append(Failure(name, problem))
    return failures


def declared_flows(world: World) -> list[tuple[str, str, dict[str, Any]]]:
    """(flow name, source, flow) for every flow: the function flows, and each node flow for each node kind."""
    out = [(f["name"], f["source"], f) for f in FLOWS]
    efs = any(s.get("StorageType") == "Efs" for s in world.cluster.get("SharedStorage") or [])
    for kind, label in NODE_KINDS.items():
        for f in NODE_FLOWS:
            if f.get("efs") and not efs:
                continue
            out.append((f"{label} {f['name']}", f"nodes:{kind}", f))
    out += [(f["name"], f["source"], f) for f in CLUSTER_FLOWS]
    return out


def judge(resources: Sequence[dict[str, Any]], facts: Facts | None = None) -> Verdict:
    world = World(resources, facts)
    failures: list[Failure] = []
    passed, skipped = [], []
    for name, source, flow in declared_flows(world):
        if source.startswith("function:"):
            found = _function(world, source.split(":", 1)[1])
            sources, env = found if found else ([], {})
        else:
            sources, env = world.node_interfaces(source.split(":", 1)[1]), {}
        if not sources:
            skipped.append(name)
            continue
        found_failures = list(dict.fromkeys(_judge_flow(world, name, sources, env, flow)))
        failures += found_failures
        if not found_failures:
            passed.append(name)
    return Verdict(failures=failures, passed=passed, skipped=skipped)


# ------------------------------------------------------------------------------------------------- mutations
@dataclass
class Mutation:
    """One rule, route, association or resource of the plan removed."""
    what: str
    resource: str
    resources: list[dict[str, Any]]


def mutations(resources: Sequence[dict[str, Any]]) -> Iterable[Mutation]:
    """Every single removal of something a flow may need, generated from the plan: each inline rule of each
    security group, each rule resource, each route, each route table association, NAT gateway, Elastic IP,
    internet gateway, mount target, DHCP options association, each group of a function, of a mount target and
    of the cluster config's AdditionalSecurityGroups, and each public subnet's public IP mapping."""
    base = [copy.deepcopy(r) for r in resources]

    def edited(index: int, edit) -> list[dict[str, Any]]:
        out = [copy.deepcopy(r) for r in base]
        edit(out[index])
        return out

    def without(index: int) -> list[dict[str, Any]]:
        return [r for i, r in enumerate(base) if i != index]

    removable = {"aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule",
                 "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule",
                 "aws:ec2/securityGroupRule:SecurityGroupRule",
                 "aws:route53/resolverRuleAssociation:ResolverRuleAssociation",
                 "aws:ec2/route:Route", "aws:ec2/routeTableAssociation:RouteTableAssociation",
                 "aws:ec2/natGateway:NatGateway", "aws:ec2/eip:Eip", "aws:ec2/internetGateway:InternetGateway",
                 "aws:efs/mountTarget:MountTarget", "aws:ec2/vpcDhcpOptionsAssociation:VpcDhcpOptionsAssociation",
                 "aws:ec2/networkAclRule:NetworkAclRule"}
    for index, r in enumerate(base):
        name, typ, inputs = r["name"], r["type"], r["inputs"]
        if typ in removable:
            yield Mutation(f"{typ.split(':')[-1]} {name} removed", name, without(index))
        if typ == SG:
            for direction in ("ingress", "egress"):
                for i, rule in enumerate(inputs.get(direction) or []):
                    yield Mutation(f"{name} {direction}[{i}] ({rule.get('description', '')}) removed", name,
                                   edited(index, lambda r, d=direction, i=i: r["inputs"][d].pop(i)))
        if typ == "aws:ec2/routeTable:RouteTable":
            for i, route in enumerate(inputs.get("routes") or []):
                yield Mutation(f"{name} route {route.get('cidrBlock')} removed", name,
                               edited(index, lambda r, i=i: r["inputs"]["routes"].pop(i)))
        if typ == "aws:lambda/function:Function":
            for i, g in enumerate((inputs.get("vpcConfig") or {}).get("securityGroupIds") or []):
                yield Mutation(f"{name} security group {ref(g)} removed", name,
                               edited(index, lambda r, i=i: r["inputs"]["vpcConfig"]["securityGroupIds"].pop(i)))
        if typ == "aws:route53/resolverEndpoint:ResolverEndpoint":
            for i, g in enumerate(inputs.get("securityGroupIds") or []):
                yield Mutation(f"{name} security group {ref(g)} removed", name,
                               edited(index, lambda r, i=i: r["inputs"]["securityGroupIds"].pop(i)))
        if typ == "aws:efs/mountTarget:MountTarget":
            for i, g in enumerate(inputs.get("securityGroups") or []):
                yield Mutation(f"{name} security group {ref(g)} removed", name,
                               edited(index, lambda r, i=i: r["inputs"]["securityGroups"].pop(i)))
        if typ == "aws:ec2/subnet:Subnet" and inputs.get("mapPublicIpOnLaunch"):
            yield Mutation(f"{name} mapPublicIpOnLaunch off", name,
                           edited(index, lambda r: r["inputs"].__setitem__("mapPublicIpOnLaunch", False)))
        if typ == "command:local:Command" and "HeadNode:" in str(inputs.get("stdin", "")):
            config = yaml.safe_load(inputs["stdin"])
            for path, net in _networkings(config):
                for i, g in enumerate(net.get("AdditionalSecurityGroups") or []):
                    def drop(r, path=path, i=i):
                        c = yaml.safe_load(r["inputs"]["stdin"])
                        dict(_networkings(c))[path]["AdditionalSecurityGroups"].pop(i)
                        r["inputs"]["stdin"] = yaml.safe_dump(c, sort_keys=False)
                    yield Mutation(f"cluster config {path}.AdditionalSecurityGroups[{i}] ({ref(g)}) removed", name,
                                   edited(index, drop))


def _networkings(config: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    out = [("HeadNode.Networking", (config.get("HeadNode") or {}).get("Networking") or {})]
    for q in (config.get("Scheduling") or {}).get("SlurmQueues") or []:
        out.append((f"SlurmQueues[{q['Name']}].Networking", q.get("Networking") or {}))
    for p in (config.get("LoginNodes") or {}).get("Pools") or []:
        out.append((f"LoginNodes[{p['Name']}].Networking", p.get("Networking") or {}))
    return out


# ------------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pcluster_ad.tools.network_judge",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("plan_dir", type=Path, help="a directory with the plan's resources.json")
    parser.add_argument("--facts", type=Path, help="JSON of Facts for an adopted VPC (subnets, route tables, ...)")
    args = parser.parse_args(argv)
    resources = json.loads((args.plan_dir / "resources.json").read_text())
    facts = Facts(**json.loads(args.facts.read_text())) if args.facts else None
    verdict = judge(resources, facts)
    for name in verdict.passed:
        print(f"pass  {name}")
    for name in verdict.skipped:
        print(f"skip  {name} (not in this plan)")
    for failure in verdict.failures:
        print(f"FAIL  {failure}")
    return 0 if verdict.ok else 1


if __name__ == "__main__":
    sys.exit(main())
