"""Shared by the two functions that run in the VPC's private subnets and talk LDAP to the directory
(DirectoryAdmin, JoinFunction): their egress-only security group, the role statement Lambda needs to attach
them to the VPC, and packaging pure-Python distributions from the installed, pinned ones. Helpers only: each
component stays in its own file."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from importlib import metadata
from typing import Any

import pulumi
import pulumi_aws as aws

LDAP_PORT, LDAPS_PORT, DNS_PORT, HTTPS_PORT = 389, 636, 53, 443
# Lambda releases a deleted function's (hyperplane) network interfaces in its own time, often 20 minutes and
# more; until then they hold the security group. The provider retries the delete (and removes detached Lambda
# interfaces) within this timeout instead of its default 15 minutes.
SECURITY_GROUP_DELETE_TIMEOUT = "45m"
# Compiled files: a package that has one is not pure Python and must not ride in an arm64/python3.13 zip.
COMPILED_SUFFIXES = (".so", ".pyd", ".dylib", ".dll")

# `*`: what Lambda needs to attach a function to the VPC (the actions of AWSLambdaVPCAccessExecutionRole). It
# creates the network interfaces when the function is created or its VPC config changes, not at invocation;
# these EC2 network-interface actions take no narrower resource for this use.
VPC_ACCESS_STATEMENT: dict[str, Any] = {
    "Sid": "AttachToVpc", "Effect": "Allow",
    "Action": ["ec2:CreateNetworkInterface", "ec2:DescribeNetworkInterfaces", "ec2:DescribeSubnets",
               "ec2:DeleteNetworkInterface", "ec2:AssignPrivateIpAddresses", "ec2:UnassignPrivateIpAddresses"],
    "Resource": "*",
}


def egress_rules(dc_ips: pulumi.Input[Sequence[pulumi.Input[str]]], *, ldap_ports: Sequence[int],
                 dns: bool) -> pulumi.Output[list[dict[str, Any]]]:
    """LDAP (and with `dns` DNS, TCP and UDP) to each directory DNS IP /32 (they are the domain controllers),
    HTTPS to 0.0.0.0/0. A function in the VPC resolves names through the VPC's DHCP options, which name only
    the directory's DNS IPs (the Directory component sets them): without 53 to them it cannot even resolve the
    AWS endpoints (security groups exempt only the Amazon-provided resolver)."""
    def rules(ips: Sequence[str]) -> list[dict[str, Any]]:
        out = []
        for ip in ips:
            out += [{"protocol": "tcp", "from_port": p, "to_port": p, "cidr_blocks": [f"{ip}/32"],
                     "description": f"LDAP{'S' if p == LDAPS_PORT else ''} to domain controller {ip}"}
                    for p in ldap_ports]
            if dns:
                out += [{"protocol": proto, "from_port": DNS_PORT, "to_port": DNS_PORT, "cidr_blocks": [f"{ip}/32"],
                         "description": f"DNS ({proto.upper()}) to directory DNS server {ip}"}
                        for proto in ("udp", "tcp")]
        # 0.0.0.0/0: AWS API endpoints (SSM, EC2, IAM, DynamoDB, ...) have no fixed IPs; they are reached
        # through the private subnets' NAT.
        return out + [{"protocol": "tcp", "from_port": HTTPS_PORT, "to_port": HTTPS_PORT,
                       "cidr_blocks": ["0.0.0.0/0"], "description": "HTTPS to AWS APIs"}]

    return pulumi.Output.from_input(dc_ips).apply(rules)


def security_group(resource_name: str, *, vpc_id: pulumi.Input[str], description: str,
                   dc_ips: pulumi.Input[Sequence[pulumi.Input[str]]], ldap_ports: Sequence[int], dns: bool,
                   tags: Mapping[str, str], parent: pulumi.Resource) -> aws.ec2.SecurityGroup:
    """The function's own group: no ingress (nothing connects to a function), egress as `egress_rules`."""
    return aws.ec2.SecurityGroup(resource_name, aws.ec2.SecurityGroupArgs(
        vpc_id=vpc_id, description=description, ingress=[],
        egress=egress_rules(dc_ips, ldap_ports=ldap_ports, dns=dns), tags=dict(tags),
    ), pulumi.ResourceOptions(parent=parent, custom_timeouts=pulumi.CustomTimeouts(
        delete=SECURITY_GROUP_DELETE_TIMEOUT)))


def package_files(dist: str, version: str, *, owner: str) -> dict[str, pulumi.Asset]:
    """The installed distribution's importable *.py files, by their path in the zip (no caches: same bytes, same
    archive hash). Refuses another installed version than the pinned one and any compiled file."""
    try:
        installed = metadata.version(dist)
    except metadata.PackageNotFoundError:
        installed = "none"
    if installed != version:
        raise ValueError(f"{owner}: {dist} {installed} is installed, the function is built with {version}: "
                         "run `venv/bin/pip install --require-hashes -r requirements.lock`")
    distribution = metadata.distribution(dist)
    tops = set((distribution.read_text("top_level.txt") or "").split()) or {dist}
    out = {}
    for f in distribution.files or []:
        path = str(f)
        first = path.split("/")[0]
        if first not in tops and first.split(".")[0] not in tops:
            continue  # *.dist-info, bin/, ../ (a top-level module is `name.py` or `name.<abi>.so`)
        if path.endswith(COMPILED_SUFFIXES):
            raise ValueError(f"{owner}: {dist} {version} has a compiled file ({path}): it is not pure Python")
        if path.endswith(".py"):
            out[path] = pulumi.FileAsset(str(f.locate()))
    if not out:
        raise ValueError(f"{owner}: no files of {dist} found to package")
    return out
