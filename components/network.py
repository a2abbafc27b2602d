"""Network: a VPC with public and private subnets in two AZs, or an adopted existing VPC."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws


@dataclass
class NetworkArgs:
    """Either `cidr` + `availability_zones` (create), or `existing_vpc_id` + subnets (adopt)."""

    availability_zones: Sequence[str] = ()
    cidr: str = "10.0.0.0/16"
    nat_gateways: int = 1  # 1 shared, or one per AZ
    existing_vpc_id: pulumi.Input[str] | None = None
    existing_public_subnet_id: pulumi.Input[str] | None = None
    existing_private_subnet_ids: Sequence[pulumi.Input[str]] = ()
    tags: dict[str, str] = field(default_factory=dict)


def subnet_cidrs(cidr: str) -> tuple[list[str], list[str]]:
    """Split the VPC block into quarters: two private subnets (compute, directory), two public."""
    quarters = [str(s) for s in ipaddress.IPv4Network(cidr).subnets(prefixlen_diff=2)]
    return quarters[:2], quarters[2:]


class Network(pulumi.ComponentResource):
    vpc_id: pulumi.Output[str]
    public_subnet_ids: pulumi.Output[list[str]]
    private_subnet_ids: pulumi.Output[list[str]]
    # The private subnets' way out, as resources of this stack: their route tables and associations, the NAT
    # gateways, their EIPs, and the NAT subnets' route to the internet gateway (empty for an adopted VPC). Code
    # that calls AWS from the private subnets during a delete depends on it (tools/lifecycle_judge.py).
    egress: list[pulumi.Resource]

    def __init__(self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("pcluster-ad:index:Network", name, None, opts)
        self.egress = []
        if args.existing_vpc_id is not None:
            self.vpc_id = pulumi.Output.from_input(args.existing_vpc_id)
            self.public_subnet_ids = pulumi.Output.all(args.existing_public_subnet_id)
            self.private_subnet_ids = pulumi.Output.all(*args.existing_private_subnet_ids)
        else:
            self._create(name, args)
        self.register_outputs({
            "vpcId": self.vpc_id,
            "publicSubnetIds": self.public_subnet_ids,
            "privateSubnetIds": self.private_subnet_ids,
        })

    def _create(self, name: str, args: NetworkArgs) -> None:
        if len(args.availability_zones) != 2:
            raise ValueError("Network needs exactly two availability zones")
        child = pulumi.ResourceOptions(parent=self)

        def tags(part: str) -> dict[str, str]:
            return {**args.tags, "Name": f"{name}-{part}"}

        vpc = aws.ec2.Vpc(f"{name}-vpc", aws.ec2.VpcArgs(
            cidr_block=args.cidr,
            # Both are required for the directory's DNS and ParallelCluster's node names.
            enable_dns_support=True,
            enable_dns_hostnames=True,
            tags=tags("vpc"),
        ), child)
        igw = aws.ec2.InternetGateway(f"{name}-igw", aws.ec2.InternetGatewayArgs(
            vpc_id=vpc.id, tags=tags("igw")), child)

        private_cidrs, public_cidrs = subnet_cidrs(args.cidr)
        public_rt = aws.ec2.RouteTable(f"{name}-public-rt", aws.ec2.RouteTableArgs(
            vpc_id=vpc.id,
            routes=[aws.ec2.RouteTableRouteArgs(cidr_block="0.0.0.0/0", gateway_id=igw.id)],
            tags=tags("public-rt"),
        ), child)

        public_subnets, private_subnets, nat_gateways = [], [], []
        for i, az in enumerate(args.availability_zones):
            suffix = az[-1]  # the AZ letter: stable names across regions
            pub = aws.ec2.Subnet(f"{name}-public-{suffix}", aws.ec2.SubnetArgs(
                vpc_id=vpc.id, cidr_block=public_cidrs[i], availability_zone=az,
                map_public_ip_on_launch=True, tags=tags(f"public-{suffix}"),
            ), child)
            public_rta = aws.ec2.RouteTableAssociation(f"{name}-public-{suffix}-rta", aws.ec2.RouteTableAssociationArgs(
                subnet_id=pub.id, route_table_id=public_rt.id), child)
            public_subnets.append(pub)
            if i < args.nat_gateways:
                eip = aws.ec2.Eip(f"{name}-nat-{suffix}-eip", aws.ec2.EipArgs(
                    domain="vpc", tags=tags(f"nat-{suffix}-eip")), child)
                nat_gateways.append(aws.ec2.NatGateway(f"{name}-nat-{suffix}", aws.ec2.NatGatewayArgs(
                    allocation_id=eip.id, subnet_id=pub.id, tags=tags(f"nat-{suffix}"),
                ), pulumi.ResourceOptions(parent=self, depends_on=[igw])))
                self.egress += [eip, nat_gateways[-1], public_rta]

        for i, az in enumerate(args.availability_zones):
            suffix = az[-1]
            # With one NAT gateway both AZs share it; with two, each AZ keeps its own (AZ-independent egress).
            nat = nat_gateways[min(i, len(nat_gateways) - 1)]
            priv = aws.ec2.Subnet(f"{name}-private-{suffix}", aws.ec2.SubnetArgs(
                vpc_id=vpc.id, cidr_block=private_cidrs[i], availability_zone=az,
                map_public_ip_on_launch=False, tags=tags(f"private-{suffix}"),
            ), child)
            rt = aws.ec2.RouteTable(f"{name}-private-{suffix}-rt", aws.ec2.RouteTableArgs(
                vpc_id=vpc.id,
                routes=[aws.ec2.RouteTableRouteArgs(cidr_block="0.0.0.0/0", nat_gateway_id=nat.id)],
                tags=tags(f"private-{suffix}-rt"),
            ), child)
            private_rta = aws.ec2.RouteTableAssociation(f"{name}-private-{suffix}-rta",
                                                        aws.ec2.RouteTableAssociationArgs(
                                                            subnet_id=priv.id, route_table_id=rt.id), child)
            self.egress += [rt, private_rta]
            private_subnets.append(priv)

        self.egress += [igw, public_rt]
        self.vpc_id = vpc.id
        self.public_subnet_ids = pulumi.Output.all(*[s.id for s in public_subnets])
        self.private_subnet_ids = pulumi.Output.all(*[s.id for s in private_subnets])
