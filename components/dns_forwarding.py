"""DomainForwarding: the AD domain resolved through the VPC's own resolver in an adopted VPC, leaving its DHCP
options alone. A Route 53 Resolver outbound endpoint in the private subnets and a FORWARD rule for the domain to
the directory's DNS IPs, associated with the VPC: instances and functions keep asking the Amazon-provided resolver
(exempt from security groups), which sends the domain's names (its SRV records included: _ldap._tcp.<domain>,
_kerberos._tcp.<domain>, every name under it) to the directory and everything else where it sent it before."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_aws as aws

DNS_PORT = 53


@dataclass
class DomainForwardingArgs:
    stack: str  # names the endpoint, rule and association (Route 53 names: letters, digits, '-', '_', 64 at most)
    domain_name: str
    vpc_id: pulumi.Input[str]
    # Where the endpoint's network interfaces go, one per subnet: the two private subnets, two AZs (Route 53
    # requires two addresses and recommends two AZs).
    subnet_ids: Sequence[pulumi.Input[str]]
    dc_ips: pulumi.Input[Sequence[pulumi.Input[str]]]  # the directory's DNS servers: the rule's targets
    tags: dict[str, str] = field(default_factory=dict)


def egress_rules(dc_ips: pulumi.Input[Sequence[pulumi.Input[str]]]) -> pulumi.Output[list[dict[str, Any]]]:
    """DNS, UDP and TCP, to each directory DNS IP /32 and nowhere else: the endpoint's only traffic (an outbound
    endpoint needs outbound rules only; the answers come back on the stateful connection)."""
    return pulumi.Output.from_input(dc_ips).apply(lambda ips: [
        {"protocol": proto, "from_port": DNS_PORT, "to_port": DNS_PORT, "cidr_blocks": [f"{ip}/32"],
         "description": f"DNS ({proto.upper()}) to directory DNS server {ip}"}
        for ip in ips for proto in ("udp", "tcp")])


def target_ips(dc_ips: pulumi.Input[Sequence[pulumi.Input[str]]]) -> pulumi.Output[list[dict[str, Any]]]:
    return pulumi.Output.from_input(dc_ips).apply(lambda ips: [{"ip": ip, "port": DNS_PORT} for ip in ips])


class DomainForwarding(pulumi.ComponentResource):
    endpoint_id: pulumi.Output[str]
    rule_id: pulumi.Output[str]
    security_group_id: pulumi.Output[str]
    # The VPC resolves the domain only once the rule is associated: the cluster depends on it.
    association: aws.route53.ResolverRuleAssociation

    def __init__(self, name: str, args: DomainForwardingArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("pcluster-ad:index:DomainForwarding", name, None, opts)
        if not args.domain_name or args.domain_name != args.domain_name.strip().strip("."):
            raise ValueError(f"domain_name must be a domain name without surrounding dots, got {args.domain_name!r}")
        if len(args.subnet_ids) < 2:
            raise ValueError("subnet_ids: a Resolver endpoint needs at least two subnets (two AZs)")
        label = f"pcluster-ad-{args.stack}"
        child = pulumi.ResourceOptions(parent=self)

        def tags(part: str) -> Mapping[str, str]:
            return {**args.tags, "Name": f"{name}-{part}"}

        sg = aws.ec2.SecurityGroup(f"{name}-sg", aws.ec2.SecurityGroupArgs(
            vpc_id=args.vpc_id,
            description=f"pcluster-ad: Route 53 Resolver endpoint forwarding {args.domain_name} (egress only)",
            ingress=[], egress=egress_rules(args.dc_ips), tags=tags("sg"),
        ), child)
        endpoint = aws.route53.ResolverEndpoint(f"{name}-endpoint", aws.route53.ResolverEndpointArgs(
            name=label,
            direction="OUTBOUND",
            resolver_endpoint_type="IPV4",
            protocols=["Do53"],
            security_group_ids=[sg.id],
            # One address per private subnet, chosen by AWS from the subnet.
            ip_addresses=[aws.route53.ResolverEndpointIpAddressArgs(subnet_id=s) for s in args.subnet_ids],
            tags=tags("endpoint"),
        ), child)
        rule = aws.route53.ResolverRule(f"{name}-rule", aws.route53.ResolverRuleArgs(
            name=label,
            domain_name=args.domain_name,
            rule_type="FORWARD",
            resolver_endpoint_id=endpoint.id,
            target_ips=target_ips(args.dc_ips),
            tags=tags("rule"),
        ), child)
        self.association = aws.route53.ResolverRuleAssociation(
            f"{name}-rule-assoc",
            aws.route53.ResolverRuleAssociationArgs(resolver_rule_id=rule.id, vpc_id=args.vpc_id,
                                                    name=label),
            child)
        self.endpoint_id = endpoint.id
        self.rule_id = rule.id
        self.security_group_id = sg.id
        self.register_outputs({"resolverEndpointId": self.endpoint_id, "resolverRuleId": self.rule_id,
                               "securityGroupId": self.security_group_id})
