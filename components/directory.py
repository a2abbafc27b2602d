"""Directory: Simple AD or AWS Managed Microsoft AD (or an existing directory), and, unless told otherwise, the
VPC's DHCP options pointing at its DNS so that nodes resolve the domain (the directory's DNS forwards every other
name, EC2 host names included, to the VPC resolver). In an adopted VPC the stack leaves the DHCP options alone by
default (`manage_dhcp_options=False`; components/dns_forwarding.py forwards the domain instead)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws


@dataclass
class DirectoryArgs:
    type: str  # SimpleAD | MicrosoftAD | Existing
    domain_name: str
    short_name: str
    vpc_id: pulumi.Input[str]
    subnet_ids: pulumi.Input[Sequence[pulumi.Input[str]]]  # two private subnets, two AZs
    ec2_internal_domain: str  # <region>.compute.internal, or ec2.internal in us-east-1
    admin_password: pulumi.Input[str] | None = None  # secret; created directories only
    size: str | None = None  # SimpleAD: Small|Large; MicrosoftAD: Standard|Enterprise
    existing_dns_ips: Sequence[str] = ()
    existing_directory_id: str | None = None
    protect: bool = False
    tags: dict[str, str] = field(default_factory=dict)
    # False: no DHCP options, the VPC keeps its own (an adopted VPC with network.domainDns other than DhcpOptions).
    manage_dhcp_options: bool = True
    # An adopted VPC's set before this stack's (looked up at deploy): kept in a tag of the stack's set and in the
    # output, because the provider's delete of the association leaves the VPC with no options, not with this one.
    previous_dhcp_options_id: str | None = None


PREVIOUS_DHCP_OPTIONS_TAG = "pcluster-ad:previous-dhcp-options"


class Directory(pulumi.ComponentResource):
    directory_id: pulumi.Output[str | None]
    dns_ips: pulumi.Output[list[str]]
    domain_name: pulumi.Output[str]
    dhcp_options_id: pulumi.Output[str] | None  # None: the VPC's DHCP options are not the stack's
    # Nodes resolve the domain only once this association exists: the cluster depends on it.
    dhcp_association: aws.ec2.VpcDhcpOptionsAssociation | None

    def __init__(self, name: str, args: DirectoryArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("pcluster-ad:index:Directory", name, None, opts)
        if not args.ec2_internal_domain or any(ch.isspace() for ch in args.ec2_internal_domain):
            raise ValueError(
                f"ec2_internal_domain must be ONE domain name (DHCP option 15), got {args.ec2_internal_domain!r}: "
                "pass <region>.compute.internal, or ec2.internal in us-east-1")
        if args.type == "Existing":
            self.directory_id = pulumi.Output.from_input(args.existing_directory_id)
            self.dns_ips = pulumi.Output.from_input(list(args.existing_dns_ips))
        else:
            if args.admin_password is None:
                raise ValueError("a created directory needs admin_password")
            directory = aws.directoryservice.Directory(
                f"{name}-ad",
                aws.directoryservice.DirectoryArgs(
                    name=args.domain_name,
                    short_name=args.short_name,
                    password=pulumi.Output.secret(args.admin_password),
                    type=args.type,
                    size=args.size if args.type == "SimpleAD" else None,
                    edition=args.size if args.type == "MicrosoftAD" else None,
                    vpc_settings=aws.directoryservice.DirectoryVpcSettingsArgs(
                        vpc_id=args.vpc_id, subnet_ids=args.subnet_ids),
                    description=f"pcluster-ad: {args.domain_name}",
                    tags={**args.tags, "Name": f"{name}-ad"},
                ),
                pulumi.ResourceOptions(
                    parent=self,
                    # The provider replaces a directory when its password changes: a rotated
                    # secret must never silently destroy a directory full of users. Rotate the
                    # password in the directory itself (README: "Rotating the admin password").
                    ignore_changes=["password"],
                    protect=args.protect,
                ),
            )
            self.directory_id = directory.id
            self.dns_ips = directory.dns_ip_addresses

        self.domain_name = pulumi.Output.from_input(args.domain_name)
        self.dhcp_options_id = None
        self.dhcp_association = None
        if args.manage_dhcp_options:
            self._dhcp_options(name, args)
        self.register_outputs({
            "directoryId": self.directory_id,
            "dnsIps": self.dns_ips,
            "domainName": self.domain_name,
            "dhcpOptionsId": self.dhcp_options_id,
        })

    def _dhcp_options(self, name: str, args: DirectoryArgs) -> None:
        previous = {PREVIOUS_DHCP_OPTIONS_TAG: args.previous_dhcp_options_id} if args.previous_dhcp_options_id else {}
        dhcp = aws.ec2.VpcDhcpOptions(
            f"{name}-dhcp",
            aws.ec2.VpcDhcpOptionsArgs(
                # ONE domain: DHCP option 15 carries a single name, and systemd-networkd (Amazon
                # Linux 2023, Ubuntu) turns "a b" into the search domain "a\032b" that matches
                # nothing. The region's EC2 domain, as in a default VPC, keeps every node's EC2 host
                # name resolving by short name; the AD domain needs no search entry (realmd, adcli,
                # sssd and Kerberos look up its SRV records by the full name). docs/design.md.
                domain_name=args.ec2_internal_domain,
                domain_name_servers=self.dns_ips,
                tags={**args.tags, **previous, "Name": f"{name}-dhcp"},
            ),
            pulumi.ResourceOptions(parent=self),
        )
        self.dhcp_association = aws.ec2.VpcDhcpOptionsAssociation(
            f"{name}-dhcp-assoc",
            aws.ec2.VpcDhcpOptionsAssociationArgs(vpc_id=args.vpc_id, dhcp_options_id=dhcp.id),
            pulumi.ResourceOptions(parent=self),
        )
        self.dhcp_options_id = dhcp.id
