"""The Pulumi program: read and validate the stack config, then wire the components.

`pulumi_program()` is what `__main__.py` runs and what the Automation API (automation.py)
and the offline plan (tools/plan.py) use as an inline program.
"""

from __future__ import annotations

import pulumi
import pulumi_aws as aws
import pulumi_random as random

import stack_config
from components.directory import Directory, DirectoryArgs
from components.network import Network, NetworkArgs
from stack_config import ConfigError, Problem, Settings


def pulumi_program() -> None:
    settings = _load_or_fail()
    azs = _availability_zones(settings)
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
    ))

    # Seams for the join chain and the cluster (issues 3 and 4): JoinSecrets, JoinFunction,
    # ClusterRole and ClusterLauncher are wired here from `settings`, `network` and `directory`.

    pulumi.export("region", settings.region)
    pulumi.export("vpcId", network.vpc_id)
    pulumi.export("publicSubnetIds", network.public_subnet_ids)
    pulumi.export("privateSubnetIds", network.private_subnet_ids)
    pulumi.export("directoryId", directory.directory_id)
    pulumi.export("directoryDnsIps", directory.dns_ips)
    pulumi.export("domainName", directory.domain_name)


def _load_or_fail() -> Settings:
    try:
        return stack_config.load_settings()
    except ConfigError as e:
        for problem in e.problems:
            pulumi.log.error(str(problem))
        raise pulumi.RunError(f"invalid stack configuration: {len(e.problems)} problem(s), listed above;"
                              " nothing was created or changed") from None


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
    if problems:
        _fail(problems)


def _fail(problems: list[Problem]) -> None:
    for problem in problems:
        pulumi.log.error(str(problem))
    raise pulumi.RunError("invalid stack configuration (listed above); nothing was created or changed")


def _admin_password(settings: Settings) -> pulumi.Output[str] | None:
    if not settings.directory.created_here:
        return None
    configured = pulumi.Config(stack_config.PROJECT).get_secret("adminPassword")
    if configured is not None:
        return configured
    # Meets AWS Directory Service's rule (3 of 4 classes) with characters every shell and
    # LDAP tool takes as they are.
    generated = random.RandomPassword("directory-admin-password", random.RandomPasswordArgs(
        length=32, special=True, override_special="!#%+-=_", min_lower=2, min_upper=2,
        min_numeric=2, min_special=2,
    ))
    return generated.result
