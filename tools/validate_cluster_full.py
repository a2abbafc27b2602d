#!/usr/bin/env python3
"""ParallelCluster's FULL create-time validation of a stack's rendered cluster config, against a moto world.

Run it with the ParallelCluster venv's interpreter (tools/pcluster_venv.sh --with-moto), never the project venv:

    venv/bin/python -m pcluster_ad.tools.plan dev --out plan-out/dev
    .venv-pcluster/bin/python tools/validate_cluster_full.py plan-out/dev --cluster-name hpc-dev [--json]

It builds, in an in-process moto (no network, dummy credentials), the AWS world the plan declares
(resources.json): VPC, subnets in their AZs, internet/NAT gateways and routes, security groups WITH their
rules (and without AWS's default allow-all egress, which the AWS provider revokes on groups it creates),
EFS file systems and their mount targets in their subnets and groups, the bootstrap bucket and its scripts,
IAM policies; plus what the stack expects to exist already: the key pair (HeadNode.Ssh.KeyName, RSA), an
official-looking ParallelCluster AMI per OS that has one (not for pcluster.constants.PRIVATE_OSES, as on
AWS), and the Image.CustomAmi when one is set. The config's `<after-deploy:RESOURCE.PROPERTY>` placeholders
are replaced by the moto ids. Then it runs exactly what `pcluster create-cluster --dryrun true` runs:
`pcluster.models.cluster.Cluster(name, config).validate_create_request(...)`, i.e. the schema load and every
semantic validator (`ClusterConfig.validate()`), with the validators listed in SUPPRESSED suppressed.

Exit codes: 0 no ERROR-level failure (prints "OK" and any warnings), 1 ERROR failures (one line each),
2 usage or internal error (e.g. a placeholder that names no resource of the plan).
With --json, stdout is one JSON object per plan dir:
{"ok": bool, "failures": [{"level", "type", "message"}], "seconds": float, "ids": {placeholder: value},
"not_checked": [what an adopted VPC leaves unchecked offline]}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ACCOUNT = "123456789012"  # moto's default account
MANAGED_POLICIES = "MOTO_IAM_LOAD_MANAGED_POLICIES"  # moto reads it whenever it builds an IAM backend
PLACEHOLDER_RE = re.compile(r"<after-deploy:([^<>]+)>")  # RESOURCE.PROPERTY, or account-id
_VPC_ID_RE, _SUBNET_ID_RE = re.compile(r"vpc-[0-9a-f]{8,17}"), re.compile(r"subnet-[0-9a-f]{8,17}")  # real ids

# Validators moto cannot answer, suppressed by name (as `--suppress-validators type:NAME` would):
SUPPRESSED = (
    # Both call run_instances(DryRun=True) with the head node's / first compute resource's full launch
    # parameters and expect AWS's DryRunOperation answer. moto refuses those parameters instead ("The request
    # must contain the parameter ebs": it wants Ebs in every block device mapping, AWS takes the NoDevice /
    # ephemeral mappings ParallelCluster sends), so the verdict would be moto's, not AWS's (checked: both fail
    # with that message when not suppressed).
    "HeadNodeLaunchTemplateValidator",
    "ComputeResourceLaunchTemplateValidator",
)

# ParallelCluster's official AMI name parts (pcluster.constants.OS_TO_IMAGE_NAME_PART_MAP), read at run time.


class WorldError(RuntimeError):
    """The plan names something this tool cannot build: a usage error, not a validation failure."""


def _env_for_moto(tmp: Path, region: str, custom_amis: list[tuple[str, str]]) -> None:
    """Environment moto and pcluster read at import / first use (so: before importing either)."""
    from pcluster.constants import OS_TO_IMAGE_NAME_PART_MAP, PRIVATE_OSES
    from pcluster.utils import get_installed_version

    version = get_installed_version()
    amis = []
    n = 0
    for os_name, part in sorted(OS_TO_IMAGE_NAME_PART_MAP.items()):
        if os_name in PRIVATE_OSES:  # AWS publishes none: OsCustomAmiValidator must see that
            continue
        for arch in ("x86_64", "arm64"):
            n += 1
            amis.append(_ami(f"ami-{n:017x}", f"aws-parallelcluster-{version}-{part}-{arch}-202609010000 2026-09-01",
                             arch, public=True))
    for ami_id, os_name in custom_amis:
        amis.append(_ami(ami_id, f"pcluster-ad-custom-{os_name}-x86_64", "x86_64", public=False))
    path = tmp / "amis.json"
    path.write_text(json.dumps(amis))
    os.environ.update({
        "MOTO_AMIS_PATH": str(path),
        # ParallelCluster checks its own managed policies (e.g. for the instance role) exist.
        MANAGED_POLICIES: "true",
        "AWS_DEFAULT_REGION": region,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",  # moto's dummy credentials, no real account
        "AWS_SESSION_TOKEN": "testing",
        "AWS_EC2_METADATA_DISABLED": "true",
    })
    for var in ("AWS_PROFILE", "AWS_ENDPOINT_URL"):
        os.environ.pop(var, None)


def _ami(ami_id: str, name: str, arch: str, public: bool) -> dict[str, Any]:
    return {
        "ami_id": ami_id, "state": "available", "public": public,
        "owner_id": "247102896272" if public else ACCOUNT,  # an Amazon-owned id for the official ones
        "image_location": f"amazon/{name}" if public else name, "root_device_type": "ebs",
        "root_device_name": "/dev/xvda", "description": name, "image_type": "machine", "architecture": arch,
        "name": name, "virtualization_type": "hvm", "hypervisor": "xen", "sriov": "simple",
        "creation_date": "2026-09-01T00:00:00.000Z",
    }


class World:
    """Creates the plan's resources in moto, in dependency order, and remembers their ids."""

    def __init__(self, resources: list[dict[str, Any]], region: str):
        import boto3

        self.region = region
        self.by_name = {r["name"]: r for r in resources}
        self.values: dict[str, dict[str, str]] = {}  # resource name -> {property: value}
        self.ec2 = boto3.client("ec2", region_name=region)
        self.efs = boto3.client("efs", region_name=region)
        self.s3 = boto3.client("s3", region_name=region)
        self.iam = boto3.client("iam", region_name=region)
        self._done: set[str] = set()

    # ------------------------------------------------------------------ placeholders

    def resolve(self, value: Any) -> Any:
        """Inputs with every placeholder replaced (building the resources they name first)."""
        if isinstance(value, str):
            return PLACEHOLDER_RE.sub(lambda m: self.placeholder(m[1]), value)
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        if isinstance(value, dict):
            return {k: self.resolve(v) for k, v in value.items()}
        return value

    def placeholder(self, token: str) -> str:
        """The moto value of `<after-deploy:TOKEN>`."""
        if token == "account-id":
            return ACCOUNT
        name, dot, prop = token.rpartition(".")
        if not dot:
            raise WorldError(f"placeholder <after-deploy:{token}> is not RESOURCE.PROPERTY")
        return self.value_of(name, prop)

    def value_of(self, name: str, prop: str) -> str:
        if name not in self.by_name:
            raise WorldError(f"placeholder <after-deploy:{name}.{prop}> names no resource of the plan")
        self.build(name)
        values = self.values.setdefault(name, {})
        if prop not in values:
            values[prop] = self._stand_in(name, prop)
        return values[prop]

    def _stand_in(self, name: str, prop: str) -> str:
        """Values of resources this world does not need to build (the validators never look them up)."""
        typ = self.by_name[name]["type"]
        short = re.sub(r"[^a-z0-9]", "", name.lower())[:20] or "x"
        if prop == "functionUrl":
            return f"https://{short}{'0' * (32 - len(short))}.lambda-url.{self.region}.on.aws/"
        if prop == "arn":
            service = typ.split(":")[1].split("/")[0]
            return f"arn:aws:{service}:{self.region}:{ACCOUNT}:{short}"
        if prop in ("id", "name"):
            return f"{short}-0123456789abcdef0"
        m = re.fullmatch(r"dnsIpAddresses\[(\d+)\]", prop)
        if m:  # a directory's DNS servers (the directory-admin function's egress rules name them)
            return f"10.255.{int(m[1])}.10"
        raise WorldError(f"no stand-in for <after-deploy:{name}.{prop}> ({typ})")

    # ------------------------------------------------------------------ an adopted VPC

    def adopt_network(self, configs: list[dict[str, Any]]) -> list[str]:
        """An existing VPC (pcluster-ad:network.vpcId): the plan names it and its subnets by id, and builds neither.
        Creates them in moto under those ids, with the AZs, CIDRs and routes the offline plan assumed
        (tools/mocks.py PlanMocks.from_config: private subnets in the region's AZs a and b, routing out through a
        NAT gateway; the public one in a, routing to an internet gateway). Returns what that leaves unchecked."""
        from unittest import mock

        vpcs = sorted({r["inputs"]["vpcId"] for r in self.by_name.values()
                       if isinstance(r["inputs"].get("vpcId"), str) and _VPC_ID_RE.fullmatch(r["inputs"]["vpcId"])})
        if not vpcs:
            return []
        private: list[str] = []
        public: list[str] = []
        for config in configs:  # queues in the private subnets, head node (and login nodes) in the public one
            for queue in (config.get("Scheduling") or {}).get("SlurmQueues") or []:
                private += [s for s in (queue.get("Networking") or {}).get("SubnetIds") or [] if s not in private]
            pools = ((config.get("LoginNodes") or {}).get("Pools") or [])
            for networking in [(config.get("HeadNode") or {}).get("Networking") or {}] + [
                    p.get("Networking") or {} for p in pools]:
                ids = [networking["SubnetId"]] if networking.get("SubnetId") else networking.get("SubnetIds") or []
                public += [s for s in ids if s not in private + public]
        private = [s for s in private if isinstance(s, str) and _SUBNET_ID_RE.fullmatch(s)]
        public = [s for s in public if isinstance(s, str) and _SUBNET_ID_RE.fullmatch(s)]
        vpc = vpcs[0]
        with mock.patch("moto.ec2.models.vpcs.random_vpc_id", return_value=vpc):
            self.ec2.create_vpc(CidrBlock="10.99.0.0/16")  # tools/mocks.py EXISTING_VPC_CIDR
        for attr in ("EnableDnsSupport", "EnableDnsHostnames"):
            self.ec2.modify_vpc_attribute(VpcId=vpc, **{attr: {"Value": True}})
        zones: dict[str, str] = {}
        for n, subnet in enumerate(private + public):
            is_public = subnet in public
            zones[subnet] = f"{self.region}{'a' if is_public else 'ab'[n % 2]}"
            cidr = f"10.99.{100 + n - len(private) if is_public else n}.0/24"
            with mock.patch("moto.ec2.models.subnets.random_subnet_id", return_value=subnet):
                self.ec2.create_subnet(VpcId=vpc, CidrBlock=cidr, AvailabilityZone=zones[subnet])
            if is_public:
                self.ec2.modify_subnet_attribute(SubnetId=subnet, MapPublicIpOnLaunch={"Value": True})
        igw = self.ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
        self.ec2.attach_internet_gateway(InternetGatewayId=igw, VpcId=vpc)
        tables = {}
        for kind, subnets in (("public", public), ("private", private)):
            if not subnets:
                continue
            tables[kind] = self.ec2.create_route_table(VpcId=vpc)["RouteTable"]["RouteTableId"]
            if kind == "public":
                target = {"GatewayId": igw}
            else:
                nat_subnet = public[0] if public else subnets[0]
                allocation = self.ec2.allocate_address(Domain="vpc")["AllocationId"]
                target = {"NatGatewayId": self.ec2.create_nat_gateway(
                    SubnetId=nat_subnet, AllocationId=allocation)["NatGateway"]["NatGatewayId"]}
            self.ec2.create_route(RouteTableId=tables[kind], DestinationCidrBlock="0.0.0.0/0", **target)
            for subnet in subnets:
                self.ec2.associate_route_table(RouteTableId=tables[kind], SubnetId=subnet)
        named = ", ".join(f"{s} in {zones[s]}" for s in private + public)
        return [f"existing VPC {vpc}: built offline from the ids the stack names, with the subnets' AZs, CIDRs and "
                f"routes ASSUMED as the offline plan assumes them ({named}; private subnets routing out through a NAT "
                "gateway, the public one to an internet gateway, DNS support and hostnames on). Not checked: the real "
                "subnets' AZs and VPC, their route tables and way out, the VPC's DNS attributes and CIDR, network ACLs "
                "and endpoints; `pulumi preview` and ParallelCluster's own validation at deploy check them on AWS."]

    # ------------------------------------------------------------------ building

    def build_all(self) -> None:
        for name in self.by_name:
            self.build(name)

    def build(self, name: str) -> None:
        if name in self._done:
            return
        self._done.add(name)
        r = self.by_name[name]
        builder = getattr(self, "_" + re.sub(r"\W", "_", r["type"]), None)
        if builder is not None:
            builder(name, self.resolve(r["inputs"]))

    def _set(self, resource: str, **values: str) -> None:
        self.values.setdefault(resource, {}).update(values)

    def _aws_ec2_vpc_Vpc(self, name: str, i: dict[str, Any]) -> None:
        vpc_id = self.ec2.create_vpc(CidrBlock=i["cidrBlock"])["Vpc"]["VpcId"]
        for attr in ("enableDnsSupport", "enableDnsHostnames"):
            if i.get(attr) is not None:
                self.ec2.modify_vpc_attribute(VpcId=vpc_id, **{attr[0].upper() + attr[1:]: {"Value": i[attr]}})
        self._set(name, id=vpc_id)

    def _aws_ec2_subnet_Subnet(self, name: str, i: dict[str, Any]) -> None:
        subnet_id = self.ec2.create_subnet(VpcId=i["vpcId"], CidrBlock=i["cidrBlock"],
                                           AvailabilityZone=i["availabilityZone"])["Subnet"]["SubnetId"]
        if i.get("mapPublicIpOnLaunch"):
            self.ec2.modify_subnet_attribute(SubnetId=subnet_id, MapPublicIpOnLaunch={"Value": True})
        self._set(name, id=subnet_id)

    def _aws_ec2_internetGateway_InternetGateway(self, name: str, i: dict[str, Any]) -> None:
        igw_id = self.ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
        if i.get("vpcId"):
            self.ec2.attach_internet_gateway(InternetGatewayId=igw_id, VpcId=i["vpcId"])
        self._set(name, id=igw_id)

    def _aws_ec2_eip_Eip(self, name: str, i: dict[str, Any]) -> None:
        alloc = self.ec2.allocate_address(Domain="vpc")
        self._set(name, id=alloc["AllocationId"], allocationId=alloc["AllocationId"], publicIp=alloc["PublicIp"])

    def _aws_ec2_natGateway_NatGateway(self, name: str, i: dict[str, Any]) -> None:
        nat = self.ec2.create_nat_gateway(SubnetId=i["subnetId"], AllocationId=i["allocationId"])["NatGateway"]
        self._set(name, id=nat["NatGatewayId"])

    def _aws_ec2_routeTable_RouteTable(self, name: str, i: dict[str, Any]) -> None:
        rt_id = self.ec2.create_route_table(VpcId=i["vpcId"])["RouteTable"]["RouteTableId"]
        for route in i.get("routes") or []:
            target = {k: route[src] for src, k in (("gatewayId", "GatewayId"), ("natGatewayId", "NatGatewayId"))
                      if route.get(src)}
            self.ec2.create_route(RouteTableId=rt_id, DestinationCidrBlock=route["cidrBlock"], **target)
        self._set(name, id=rt_id)

    def _aws_ec2_routeTableAssociation_RouteTableAssociation(self, name: str, i: dict[str, Any]) -> None:
        assoc = self.ec2.associate_route_table(RouteTableId=i["routeTableId"], SubnetId=i["subnetId"])
        self._set(name, id=assoc["AssociationId"])

    def _aws_ec2_securityGroup_SecurityGroup(self, name: str, i: dict[str, Any]) -> None:
        sg_id = self.ec2.create_security_group(GroupName=i.get("name") or name, Description=i["description"],
                                               VpcId=i["vpcId"])["GroupId"]
        # What the AWS provider does to every group it creates: revoke AWS's default allow-all egress,
        # so only the rules written in the program remain.
        self.ec2.revoke_security_group_egress(GroupId=sg_id, IpPermissions=[
            {"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
        self._set(name, id=sg_id)
        for key, call in (("ingress", self.ec2.authorize_security_group_ingress),
                          ("egress", self.ec2.authorize_security_group_egress)):
            for rule in i.get(key) or []:
                call(GroupId=sg_id, IpPermissions=[_permission(rule["protocol"], rule.get("fromPort"),
                                                               rule.get("toPort"), rule.get("cidrBlocks"),
                                                               rule.get("securityGroups"), sg_id if rule.get("self")
                                                               else None)])

    def _aws_vpc_securityGroupIngressRule_SecurityGroupIngressRule(self, name: str, i: dict[str, Any]) -> None:
        self._vpc_rule(name, i, self.ec2.authorize_security_group_ingress)

    def _aws_vpc_securityGroupEgressRule_SecurityGroupEgressRule(self, name: str, i: dict[str, Any]) -> None:
        self._vpc_rule(name, i, self.ec2.authorize_security_group_egress)

    def _vpc_rule(self, name: str, i: dict[str, Any], call: Any) -> None:
        cidrs = [i["cidrIpv4"]] if i.get("cidrIpv4") else None
        groups = [i["referencedSecurityGroupId"]] if i.get("referencedSecurityGroupId") else None
        call(GroupId=i["securityGroupId"],
             IpPermissions=[_permission(i["ipProtocol"], i.get("fromPort"), i.get("toPort"), cidrs, groups)])
        self._set(name, id=f"sgr-{len(self.values):017x}")

    def _aws_ec2_securityGroupRule_SecurityGroupRule(self, name: str, i: dict[str, Any]) -> None:
        call = (self.ec2.authorize_security_group_ingress if i["type"] == "ingress"
                else self.ec2.authorize_security_group_egress)
        groups = [i["sourceSecurityGroupId"]] if i.get("sourceSecurityGroupId") else None
        call(GroupId=i["securityGroupId"], IpPermissions=[_permission(
            i["protocol"], i.get("fromPort"), i.get("toPort"), i.get("cidrBlocks"), groups,
            i["securityGroupId"] if i.get("self") else None)])
        self._set(name, id=f"sgr-{len(self.values):017x}")

    def _aws_ebs_volume_Volume(self, name: str, i: dict[str, Any]) -> None:  # an EBS /home (SharedEbsVolumeId...)
        args: dict[str, Any] = {"AvailabilityZone": i["availabilityZone"], "Size": int(i.get("size") or 8),
                                "VolumeType": i.get("type") or "gp3", "Encrypted": bool(i.get("encrypted"))}
        self._set(name, id=self.ec2.create_volume(**args)["VolumeId"])

    def _aws_efs_fileSystem_FileSystem(self, name: str, i: dict[str, Any]) -> None:
        args: dict[str, Any] = {"CreationToken": name, "Encrypted": bool(i.get("encrypted"))}
        if i.get("performanceMode"):
            args["PerformanceMode"] = i["performanceMode"]
        if i.get("availabilityZoneName"):  # One Zone storage
            args["AvailabilityZoneName"] = i["availabilityZoneName"]
        fs = self.efs.create_file_system(**args)
        self._set(name, id=fs["FileSystemId"], arn=fs["FileSystemArn"])

    def _aws_efs_mountTarget_MountTarget(self, name: str, i: dict[str, Any]) -> None:
        mt = self.efs.create_mount_target(FileSystemId=i["fileSystemId"], SubnetId=i["subnetId"],
                                          SecurityGroups=list(i.get("securityGroups") or []))
        self._set(name, id=mt["MountTargetId"])

    def _aws_s3_bucket_Bucket(self, name: str, i: dict[str, Any]) -> None:
        bucket = i.get("bucket") or f"{i.get('bucketPrefix') or 'bucket-'}{len(self.values):012d}"
        args: dict[str, Any] = {"Bucket": bucket}
        if self.region != "us-east-1":
            args["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        self.s3.create_bucket(**args)
        self._set(name, id=bucket, bucket=bucket, arn=f"arn:aws:s3:::{bucket}")

    def _aws_s3_bucketObjectv2_BucketObjectv2(self, name: str, i: dict[str, Any]) -> None:
        source = i.get("source") or {}
        body = (ROOT / source["fileAsset"]).read_bytes() if "fileAsset" in source else (i.get("content") or "")
        self.s3.put_object(Bucket=i["bucket"], Key=i["key"], Body=body)
        self._set(name, id=i["key"])

    def _aws_iam_policy_Policy(self, name: str, i: dict[str, Any]) -> None:
        policy_name = i.get("name") or f"{i.get('namePrefix') or name}-{len(self.values)}"
        arn = self.iam.create_policy(PolicyName=policy_name, PolicyDocument=i["policy"])["Policy"]["Arn"]
        self._set(name, id=arn, arn=arn, name=policy_name)


def _permission(protocol: str, from_port: Any, to_port: Any, cidrs: Any = None, groups: Any = None,
                self_group: str | None = None) -> dict[str, Any]:
    protocol = str(protocol)
    perm: dict[str, Any] = {"IpProtocol": "-1" if protocol in ("-1", "all") else protocol}
    if perm["IpProtocol"] != "-1":
        perm["FromPort"], perm["ToPort"] = int(from_port), int(to_port)
    if cidrs:
        perm["IpRanges"] = [{"CidrIp": c} for c in cidrs]
    pairs = [{"GroupId": g} for g in (groups or [])] + ([{"GroupId": self_group}] if self_group else [])
    if pairs:
        perm["UserIdGroupPairs"] = pairs
    return perm


def validate_plan(plan_dir: Path, cluster_name: str) -> dict[str, Any]:
    """Build the plan's world in a fresh moto and run ParallelCluster's create validation on its config."""
    import yaml

    started = time.perf_counter()
    resources = json.loads((plan_dir / "resources.json").read_text())
    # Without comment lines: tools.plan's header explains the placeholders with one.
    text = "".join(line for line in (plan_dir / "cluster-config.yaml").read_text().splitlines(keepends=True)
                   if not line.lstrip().startswith("#"))
    skeleton = yaml.safe_load(text)
    region = skeleton["Region"]
    image = skeleton.get("Image") or {}
    custom = [(image["CustomAmi"], image.get("Os", "linux"))] if image.get("CustomAmi") else []

    with tempfile.TemporaryDirectory(prefix="pcluster-ad-world-") as tmp:
        _env_for_moto(Path(tmp), region, custom)
        from botocore.handlers import BUILTIN_HANDLERS

        hook = ("before-call.cloudformation.DescribeStacks", _no_such_stack)
        if hook not in BUILTIN_HANDLERS:  # read by every client created from here on
            BUILTIN_HANDLERS.append(hook)

        _offline_supported_regions()
        managed_policies_parsed_once()
        with _NetworkGuard() as guard, moto_world():
            from pcluster.aws.aws_api import AWSApi
            from pcluster.aws.common import Cache

            AWSApi.reset()  # fresh clients (and caches) inside this moto world
            Cache.clear_all()
            world = World(resources, region)
            not_checked = world.adopt_network([skeleton])
            world.build_all()
            ids: dict[str, str] = {}

            def substitute(m: re.Match[str]) -> str:
                ids[m[0]] = world.placeholder(m[1])
                return ids[m[0]]

            concrete = PLACEHOLDER_RE.sub(substitute, text)
            key_name = ((skeleton.get("HeadNode") or {}).get("Ssh") or {}).get("KeyName")
            if key_name:  # brought by the user: RSA, except ed25519 where the OS refuses RSA (Ubuntu)
                key_type = "ed25519" if str(image.get("Os", "")).startswith("ubuntu") else "rsa"
                world.ec2.create_key_pair(KeyName=key_name, KeyType=key_type)
            failures = _dry_run(cluster_name, concrete)
    return {"ok": not any(f["level"] == "ERROR" for f in failures) and not guard.blocked, "failures": failures,
            "seconds": round(time.perf_counter() - started, 2), "ids": ids, "blocked_network": guard.blocked,
            "not_checked": not_checked}


def managed_policies_parsed_once() -> None:
    """moto builds IAM's ~1300 AWS managed policies (MOTO_IAM_LOAD_MANAGED_POLICIES, which ParallelCluster's checks
    need) for each of 6 partitions, each time parsing the same JSON: about 3 s of every world. Parse it once per
    process; each backend still gets its own policy objects (same fields as moto's AWSManagedPolicy.from_data)."""
    from datetime import datetime

    from moto.iam import models

    if getattr(models.IAMBackend._init_aws_policies, "parsed_once", False):
        return
    parsed = [(name, d.get("DefaultVersionId"), d.get("Path"), json.dumps(d.get("Document")),
               datetime.fromisoformat(d["CreateDate"]), datetime.fromisoformat(d["UpdateDate"]))
              for name, d in json.loads(models.aws_managed_policies_data).items()]

    def init(self: Any) -> list[Any]:
        if not models.load_iam_aws_managed_policies():
            return []
        return [models.AWSManagedPolicy(name, account_id=self.account_id, region=self.region_name,
                                        default_version_id=version, path=path, document=document,
                                        create_date=created, update_date=updated)
                for name, version, path, document, created, updated in parsed]

    init.parsed_once = True  # type: ignore[attr-defined]
    models.IAMBackend._init_aws_policies = init


@contextlib.contextmanager
def moto_world() -> Iterator[None]:
    """`mock_aws()`, whose end does not build IAM's managed policies again: stopping moto resets every backend (each
    IAM one re-creating its ~1300 policies, 2-3 s) and then drops them all, so the policies are off while it does."""
    from moto import mock_aws

    mock = mock_aws()
    mock.start()
    try:
        yield
    finally:
        before = os.environ.get(MANAGED_POLICIES)
        os.environ[MANAGED_POLICIES] = "false"
        try:
            mock.stop()
        finally:
            if before is None:
                os.environ.pop(MANAGED_POLICIES, None)
            else:
                os.environ[MANAGED_POLICIES] = before


class _NetworkGuard:
    """Refuses every connection that is not to loopback while the world exists, and remembers it:
    this validation must not touch AWS or anything else outside this machine."""

    def __init__(self) -> None:
        import socket

        self.blocked: list[str] = []
        self._socket = socket
        self._orig = socket.getaddrinfo

    def __enter__(self) -> _NetworkGuard:
        def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
            if host not in (None, "localhost", "127.0.0.1", "::1"):
                self.blocked.append(str(host))
                raise self._socket.gaierror(f"validate_cluster_full: no outside network ({host})")
            return self._orig(host, *args, **kwargs)

        self._socket.getaddrinfo = getaddrinfo
        return self

    def __exit__(self, *exc: Any) -> None:
        self._socket.getaddrinfo = self._orig


def _offline_supported_regions() -> None:
    """RegionValidator reads ParallelCluster's supported-regions list from its public S3 bucket over HTTPS
    (pcluster.utils.retrieve_supported_regions) and falls back to the copy inside the package: use that copy."""
    from importlib.resources import files

    from pcluster import utils

    text = (files("pcluster") / "resources" / "supported-regions").read_text(encoding="utf-8")
    utils.retrieve_supported_regions.cache = text.split("\n")


class _HttpStatus:
    def __init__(self, status_code: int):
        self.status_code = status_code
        self.headers: dict[str, str] = {}


def _no_such_stack(params: dict[str, Any], **_: Any) -> tuple[_HttpStatus, dict[str, Any]]:
    """CloudFormation DescribeStacks as a fresh account answers it. moto's CloudFormation backend needs
    moto[cloudformation] (cfn-lint, pydantic, sympy, docker, ...), which this venv does without: the only
    CloudFormation call of a create validation is `_validate_no_existing_stack`."""
    message = f"Stack with id {params.get('StackName')} does not exist"
    return _HttpStatus(400), {"Error": {"Code": "ValidationError", "Message": message},
                              "ResponseMetadata": {"HTTPStatusCode": 400}}


def _dry_run(cluster_name: str, config_text: str) -> list[dict[str, str]]:
    """What `pcluster create-cluster --dryrun true` runs, in process: every failure, ERROR and below."""
    from pcluster.api.controllers.common import get_validator_suppressors
    from pcluster.models.cluster import Cluster, ConfigValidationError
    from pcluster.validators.common import FailureLevel

    suppressors = get_validator_suppressors([f"type:{name}" for name in SUPPRESSED])
    cluster = Cluster(cluster_name, config_text)
    loaded: list[Any] = []
    load = cluster._load_config

    def keep_loaded(data: dict) -> Any:  # a spy: the config object is what it was, only remembered
        loaded.append(load(data))
        return loaded[-1]

    cluster._load_config = keep_loaded
    try:
        failures = cluster.validate_create_request(suppressors, FailureLevel.ERROR)
    except ConfigValidationError as exc:
        failures = exc.validation_failures or []
        if not failures:
            # A validator's setup raised (e.g. "Cannot find official ParallelCluster AMI" for an OS without
            # one): that message is all the CLI prints. Add what the validators had found before it.
            found = list(getattr(loaded[-1], "_validation_failures", []) if loaded else [])
            return [{"level": "ERROR", "type": "ConfigValidationError", "message": str(exc)}] + _as_dicts(found)
    return _as_dicts(failures)


def _as_dicts(failures: list[Any]) -> list[dict[str, str]]:
    return [{"level": f.level.name, "type": f.validator_type, "message": f.message} for f in failures]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("plan_dir", type=Path,
                        help="a `tools.plan --out` directory (resources.json, cluster-config.yaml)")
    parser.add_argument("--cluster-name", required=True)
    parser.add_argument("--json", action="store_true", help="print {ok, failures, seconds, ids} as JSON")
    args = parser.parse_args(argv)
    try:
        result = validate_plan(args.plan_dir, args.cluster_name)
    except ImportError as exc:
        print(f"validate_cluster_full: {exc}; run this with the ParallelCluster venv's python, with moto"
              " (bash tools/pcluster_venv.sh --with-moto)", file=sys.stderr)
        return 2
    except (OSError, KeyError, ValueError, WorldError) as exc:
        print(f"validate_cluster_full: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
    else:
        for f in result["failures"]:
            print(f"{f['level']}: {f['type']}: {f['message']}")
        for host in result["blocked_network"]:
            print(f"ERROR: the validation tried to reach {host} (refused: it must stay offline)")
        for note in result["not_checked"]:
            print(f"NOT CHECKED: {note}")
        print(f"{'OK' if result['ok'] else 'INVALID'} ({result['seconds']} s)")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
