"""Run the real Pulumi program under Pulumi's own mocks and record the whole resource graph.

Used by the offline plan (tools/plan.py) and by the tests: one implementation of "what would
`pulumi up` declare", with no engine, no AWS credentials and no network.

Values that exist only after deployment (ids, ARNs, IPs, URLs) come back as clearly marked
placeholders: `<after-deploy:RESOURCE.PROPERTY>`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pulumi
from pulumi.runtime import rpc
from pulumi.runtime.mocks import MockCallArgs, MockMonitor, MockResourceArgs, Mocks

SECRET_MASK = "[secret]"
ACCOUNT_PLACEHOLDER = "<after-deploy:account-id>"


# An adopted VPC's way out as the plan's mocks answer it (PlanMocks.routes).
EXISTING_NAT, EXISTING_IGW, EXISTING_VPC_CIDR = "nat-0existing000000000", "igw-0existing000000000", "10.99.0.0/16"


def placeholder(resource: str, prop: str) -> str:
    return f"<after-deploy:{resource}.{prop}>"


# Outputs that AWS computes, per resource type: (property, example shape). `None` shape = a
# placeholder string; "list2" = two placeholder strings.
_COMPUTED: dict[str, dict[str, str | None]] = {
    "aws:directoryservice/directory:Directory": {"dnsIpAddresses": "list2", "securityGroupId": None,
                                                 "accessUrl": None},
    "aws:kms/key:Key": {"arn": None, "keyId": None},
    "aws:kms/alias:Alias": {"arn": None, "targetKeyArn": None},
    "aws:ssm/parameter:Parameter": {"arn": None},
    "aws:iam/role:Role": {"arn": None, "uniqueId": None},
    "aws:iam/policy:Policy": {"arn": None, "policyId": None},
    "aws:iam/instanceProfile:InstanceProfile": {"arn": None, "uniqueId": None},
    "aws:lambda/function:Function": {"arn": None, "invokeArn": None, "qualifiedArn": None, "version": None},
    "aws:lambda/functionUrl:FunctionUrl": {"functionUrl": None, "urlId": None},
    "aws:cloudwatch/logGroup:LogGroup": {"arn": None},
    "aws:dynamodb/table:Table": {"arn": None},
    "aws:s3/bucket:Bucket": {"arn": None, "bucket": None, "bucketRegionalDomainName": None},
    "aws:s3/bucketObjectv2:BucketObjectv2": {"versionId": None, "etag": None},
    "aws:efs/fileSystem:FileSystem": {"arn": None, "dnsName": None},
    "aws:ebs/volume:Volume": {"arn": None},
    "aws:ec2/vpc:Vpc": {"arn": None, "defaultSecurityGroupId": None, "mainRouteTableId": None},
    "aws:ec2/subnet:Subnet": {"arn": None},
    "aws:ec2/eip:Eip": {"publicIp": None, "allocationId": None},
    "aws:ec2/natGateway:NatGateway": {"publicIp": None, "privateIp": None},
    "aws:ec2/securityGroup:SecurityGroup": {"arn": None},
    "aws:route53/resolverEndpoint:ResolverEndpoint": {"arn": None, "hostVpcId": None},
    "aws:route53/resolverRule:ResolverRule": {"arn": None, "ownerId": None, "shareStatus": None},
    "aws:cloudwatch/eventRule:EventRule": {"arn": None, "name": None},
    "aws:lambda/invocation:Invocation": {"result": None},
    "random:index/randomPassword:RandomPassword": {"result": None, "bcryptHash": None},
    "random:index/randomId:RandomId": {"hex": None, "b64Std": None, "b64Url": None, "dec": None},
    "command:local:Command": {"stdout": None, "stderr": None},
}


class PlanMocks(Mocks):
    """Answers resource registrations and invokes with inputs plus marked placeholders."""

    def __init__(self, region: str = "eu-west-1", subnets: dict[str, dict[str, str]] | None = None,
                 azs: list[str] | None = None, vpcs: dict[str, dict[str, Any]] | None = None,
                 dhcp_options: dict[str, dict[str, Any]] | None = None,
                 route_tables: dict[str, list[dict[str, Any]]] | None = None,
                 nat_gateways: dict[str, dict[str, str]] | None = None, vpc_cidr: str = EXISTING_VPC_CIDR,
                 directories: dict[str, dict[str, Any]] | None = None):
        self.region = region
        self.subnets = subnets or {}  # id -> {availabilityZone, vpcId} for aws.ec2.get_subnet
        self.azs = azs
        # An adopted VPC's lookups (program._domain_dns). Not given: a VPC whose DHCP options set (id known only at
        # deploy) sends DNS to the Amazon-provided resolver, with DNS resolution on.
        self.vpcs = vpcs or {}  # id -> {dhcpOptionsId, enableDnsSupport}
        self.dhcp_options = dhcp_options or {}  # id -> {domainNameServers, tags}
        # An adopted VPC's routes (aws.ec2.get_route_table by subnet): subnet id -> routes. A subnet not listed: a
        # 0.0.0.0/0 route to EXISTING_NAT when it is a listed subnet without mapPublicIpOnLaunch (a private one),
        # else to EXISTING_IGW. NAT gateways (aws.ec2.get_nat_gateway): id -> {subnetId, connectivityType}.
        self.route_tables = route_tables or {}
        self.nat_gateways = nat_gateways or {EXISTING_NAT: {"subnetId": "subnet-0natpublic0000000",
                                                             "connectivityType": "public"}}
        self.vpc_cidr = vpc_cidr
        # Existing directories (aws.directoryservice.get_directory): id -> {name, dnsIpAddresses[, type,
        # connectSettings]}. An id not listed: the record the stack config describes (directory.domainName,
        # dnsIps), as the offline plan cannot ask Directory Service; the ids answered so go to assumed_directories.
        self.directories = directories or {}
        self.assumed_directories: list[str] = []
        self.assumed: dict[str, dict[str, Any]] = {}  # subnets from_config invented (no AWS to ask offline)

    def assumption_warning(self) -> str | None:
        """One line saying which existing subnets' AZs and routes the plan made up (from_config), or None."""
        if not self.assumed:
            return None
        private = [f"{s} in {a['availabilityZone']}" for s, a in self.assumed.items() if not a["mapPublicIpOnLaunch"]]
        public = [f"{s} in {a['availabilityZone']}" for s, a in self.assumed.items() if a["mapPublicIpOnLaunch"]]
        vpc = next(iter(self.assumed.values()))["vpcId"]
        return (f"pcluster-ad:network: the offline plan cannot look up {vpc}'s subnets; it ASSUMED privateSubnetIds "
                f"{', '.join(private) or '(none)'}, publicSubnetId {', '.join(public) or '(none)'}, all in {vpc}, the "
                "private ones routing out through a NAT gateway and the public one to an internet gateway. Not checked"
                " offline: the subnets' real AZs and VPC, that the two private subnets are in two different AZs, their"
                " route tables (and an EBS /home's AZ, the public subnet's); `pulumi preview` checks them against AWS.")

    def routes(self, subnet_id: str) -> list[dict[str, Any]]:
        if subnet_id in self.route_tables:
            return self.route_tables[subnet_id]
        subnet = self.subnets.get(subnet_id)
        if subnet is not None and not subnet.get("mapPublicIpOnLaunch"):
            return [{"cidrBlock": "0.0.0.0/0", "natGatewayId": EXISTING_NAT}]
        return [{"cidrBlock": "0.0.0.0/0", "gatewayId": EXISTING_IGW}]

    def network_facts(self) -> dict[str, Any]:
        """What the program reads of an adopted VPC, as tools.network_judge.Facts(**...) takes it."""
        subnets = {**{nat["subnetId"]: {} for nat in self.nat_gateways.values()}, **self.subnets}
        vpc = next((s["vpcId"] for s in self.subnets.values() if s.get("vpcId")), None)
        options = self.dhcp_options.get((self.vpcs.get(vpc) or {}).get("dhcpOptionsId"), {})
        return {"vpc_cidr": self.vpc_cidr, "subnets": subnets,
                "route_tables": {s: self.routes(s) for s in subnets},
                "nat_gateways": self.nat_gateways, "internet_gateways": [EXISTING_IGW],
                "dhcp_servers": list(options.get("domainNameServers") or ["AmazonProvidedDNS"])}

    @classmethod
    def from_config(cls, config: dict[str, str]) -> PlanMocks:
        """Mocks whose subnet lookups agree with an existing VPC named in the config: the private
        subnets in the region's first two AZs, the public one in the first, all in network.vpcId."""
        import json

        region = config.get("aws:region") or "eu-west-1"
        try:
            network = json.loads(config.get("pcluster-ad:network") or "{}")
        except ValueError:
            network = {}
        subnets: dict[str, dict[str, str]] = {}
        if isinstance(network, dict) and isinstance(network.get("vpcId"), str):
            vpc = network["vpcId"]
            private = network.get("privateSubnetIds") or []
            for i, subnet_id in enumerate(private if isinstance(private, list) else []):
                subnets[str(subnet_id)] = {"availabilityZone": f"{region}{'ab'[i % 2]}", "vpcId": vpc,
                                           "cidrBlock": f"10.99.{i}.0/24", "mapPublicIpOnLaunch": False}
            if isinstance(network.get("publicSubnetId"), str):
                subnets[network["publicSubnetId"]] = {"availabilityZone": f"{region}a", "vpcId": vpc,
                                                      "cidrBlock": "10.99.100.0/24", "mapPublicIpOnLaunch": True}
        mocks = cls(region=region, subnets=subnets)
        mocks.assumed = {k: dict(v) for k, v in subnets.items()}
        return mocks

    def new_resource(self, args: MockResourceArgs) -> tuple[str | None, dict]:
        state = dict(args.inputs)
        for prop, shape in _COMPUTED.get(args.typ, {}).items():
            if prop in state and prop not in ("arn",):
                continue
            if shape == "list2":
                state[prop] = [placeholder(args.name, f"{prop}[{i}]") for i in range(2)]
            else:
                state[prop] = placeholder(args.name, prop)
        if args.typ == "aws:iam/role:Role" and "name" not in state:
            state["name"] = placeholder(args.name, "name")
        if args.typ == "aws:lambda/function:Function" and "name" not in state:
            state["name"] = placeholder(args.name, "name")
        resource_id = placeholder(args.name, "id") if args.custom else None
        return resource_id, state

    def call(self, args: MockCallArgs) -> tuple[dict, list[tuple[str, str]] | None]:
        if args.token == "aws:index/getAvailabilityZones:getAvailabilityZones":
            names = self.azs or [f"{self.region}{s}" for s in "abc"]
            return {"names": names, "zoneIds": [f"zone-{n}" for n in names], "state": "available"}, []
        if args.token == "aws:ec2/getSubnet:getSubnet":
            subnet = self.subnets.get(args.args.get("id"), {})
            return {"id": args.args.get("id"), "availabilityZone": subnet.get("availabilityZone",
                    f"{self.region}a"), "vpcId": subnet.get("vpcId", "vpc-unknown")}, []
        if args.token == "aws:ec2/getVpc:getVpc":
            vpc_id = args.args.get("id")
            vpc = {"dhcpOptionsId": placeholder(str(vpc_id), "dhcpOptionsId"), "enableDnsSupport": True,
                   "enableDnsHostnames": True, **self.vpcs.get(vpc_id, {})}
            return {"id": vpc_id, **vpc}, []
        if args.token == "aws:ec2/getVpcDhcpOptions:getVpcDhcpOptions":
            options_id = args.args.get("dhcpOptionsId")
            options = {"domainNameServers": ["AmazonProvidedDNS"], "tags": {}, **self.dhcp_options.get(options_id, {})}
            return {"id": options_id, "dhcpOptionsId": options_id, **options}, []
        if args.token == "aws:ec2/getRouteTable:getRouteTable":
            subnet_id = args.args.get("subnetId")
            if subnet_id is None:  # the VPC's main table: the local route only
                return {"id": "rtb-main", "routeTableId": "rtb-main", "routes": []}, []
            return {"id": f"rtb-of-{subnet_id}", "routeTableId": f"rtb-of-{subnet_id}", "subnetId": subnet_id,
                    "routes": self.routes(subnet_id)}, []
        if args.token == "aws:ec2/getNatGateway:getNatGateway":
            nat = self.nat_gateways.get(args.args.get("id"))
            if nat is None:  # as the provider answers: the invoke fails, the program may catch it
                return {}, [("id", f"no matching EC2 NAT Gateway found: {args.args.get('id')}")]
            return {"id": args.args.get("id"), "connectivityType": "public", **nat}, []
        if args.token == "aws:directoryservice/getDirectory:getDirectory":
            directory_id = args.args.get("directoryId")
            record = self.directories.get(directory_id)
            if record is None:
                configured = pulumi.Config("pcluster-ad").get_object("directory") or {}
                record = {"name": configured.get("domainName"), "dnsIpAddresses": configured.get("dnsIps") or [],
                          "type": "MicrosoftAD"}
                self.assumed_directories.append(directory_id)
            return {"id": directory_id, "directoryId": directory_id, **record}, []
        if args.token == "aws:index/getCallerIdentity:getCallerIdentity":
            return {"accountId": ACCOUNT_PLACEHOLDER, "arn": "<after-deploy:caller-arn>",
                    "userId": "<after-deploy:caller-user-id>"}, []
        if args.token == "aws:index/getPartition:getPartition":
            return {"partition": "aws", "dnsSuffix": "amazonaws.com"}, []
        if args.token == "aws:index/getRegion:getRegion":
            return {"name": self.region, "region": self.region, "id": self.region}, []
        raise NotImplementedError(f"the offline plan has no answer for invoke {args.token}")


@dataclass
class RecordedResource:
    type: str
    name: str
    urn: str
    parent_urn: str
    dependency_urns: list[str]
    custom: bool
    inputs: dict[str, Any]  # secrets still wrapped (see is_secret_value)
    options: dict[str, Any] = field(default_factory=dict)


class RecordingMonitor(MockMonitor):
    """A MockMonitor that also records what Mocks never see: parents, dependencies, options."""

    def __init__(self, mocks: Mocks):
        super().__init__(mocks)
        self.recorded: list[RecordedResource] = []

    def RegisterResource(self, request):
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            deps = set(request.dependencies)
            for prop_deps in request.propertyDependencies.values():
                deps.update(prop_deps.urns)
            self.recorded.append(RecordedResource(
                type=request.type,
                name=request.name,
                urn=response.urn,
                parent_urn=request.parent,
                dependency_urns=sorted(deps),
                custom=bool(request.custom),
                inputs=rpc.deserialize_properties(request.object, keep_unknowns=True),
                options={
                    "protect": bool(request.protect),
                    "ignoreChanges": list(request.ignoreChanges),
                    "additionalSecretOutputs": list(request.additionalSecretOutputs),
                    "retainOnDelete": bool(request.retainOnDelete),
                    "deleteBeforeReplace": bool(request.deleteBeforeReplace),
                    "replaceOnChanges": list(request.replaceOnChanges),
                    "customTimeouts": {
                        "create": request.customTimeouts.create,
                        "update": request.customTimeouts.update,
                        "delete": request.customTimeouts.delete,
                    },
                },
            ))
        return response


def is_secret_value(value: Any) -> bool:
    return rpc.is_rpc_secret(value)


def mask_secrets(value: Any) -> Any:
    """The inputs with every secret replaced by "[secret]" (the plan's view)."""
    if rpc.is_rpc_secret(value):
        return SECRET_MASK
    if isinstance(value, dict):
        return {k: mask_secrets(v) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_secrets(v) for v in value]
    return value


def describe_assets(value: Any, root: str | None = None) -> Any:
    """Assets and archives (Lambda code, S3 objects) as JSON: their kind and source path."""
    def rel(path: str) -> str:
        return path[len(root) + 1:] if root and path.startswith(root + "/") else path

    if isinstance(value, pulumi.FileAsset):
        return {"fileAsset": rel(str(value.path))}
    if isinstance(value, pulumi.StringAsset):
        return {"stringAsset": f"{len(value.text)} characters"}
    if isinstance(value, pulumi.FileArchive):
        return {"fileArchive": rel(str(value.path))}
    if isinstance(value, pulumi.AssetArchive):
        return {"assetArchive": {k: describe_assets(v, root) for k, v in value.assets.items()}}
    if isinstance(value, dict):
        return {k: describe_assets(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [describe_assets(v, root) for v in value]
    return value


def unwrap_secrets(value: Any) -> Any:
    """The inputs with secret wrappers removed (tests only: to assert on real values)."""
    if rpc.is_rpc_secret(value):
        return unwrap_secrets(rpc.unwrap_rpc_secret(value))
    if isinstance(value, dict):
        return {k: unwrap_secrets(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap_secrets(v) for v in value]
    return value


@dataclass
class Graph:
    resources: list[RecordedResource]
    outputs: dict[str, Any]
    root: str | None = None  # paths of assets are shown relative to it

    def by_urn(self) -> dict[str, RecordedResource]:
        return {r.urn: r for r in self.resources}

    def named(self, name: str) -> RecordedResource:
        matches = [r for r in self.resources if r.name == name]
        if len(matches) != 1:
            raise KeyError(f"{len(matches)} resources named {name!r}; have {sorted(r.name for r in self.resources)}")
        return matches[0]

    def of_type(self, typ: str) -> list[RecordedResource]:
        return [r for r in self.resources if r.type == typ]

    def parent_name(self, r: RecordedResource) -> str | None:
        parent = self.by_urn().get(r.parent_urn)
        return parent.name if parent else None

    def dependency_names(self, r: RecordedResource) -> list[str]:
        urns = self.by_urn()
        return sorted({urns[u].name for u in r.dependency_urns if u in urns})

    def to_plan(self) -> list[dict[str, Any]]:
        return [{
            "type": r.type,
            "name": r.name,
            "parent": self.parent_name(r),
            "dependencies": self.dependency_names(r),
            "inputs": describe_assets(mask_secrets(r.inputs), self.root),
            **({"options": _non_default(r.options)} if _non_default(r.options) else {}),
        } for r in self.resources]


def _non_default(options: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in options.items() if v and k != "customTimeouts"}
    timeouts = {k: v for k, v in options.get("customTimeouts", {}).items() if v}
    if timeouts:
        out["customTimeouts"] = timeouts
    return out


def values_from_stack_file(doc: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A loaded Pulumi.<stack>.yaml -> (the values the program reads, secret keys), through the engine's reading
    (tools/stack_file.py). Encrypted values (`{secure: ...}`) cannot be decrypted offline: they become a marked
    placeholder that still satisfies the password rules, and stay secret."""
    from pcluster_ad.stack_config import program_values

    config, secret_keys = config_from_stack_file(doc)
    return program_values(config), secret_keys


def config_from_stack_file(doc: dict[str, Any]) -> tuple[dict[str, str], list[str]]:
    """A loaded Pulumi.<stack>.yaml -> (the config map the engine hands the program, secret keys)."""
    from pcluster_ad.tools.stack_file import engine_config

    read = engine_config(doc)
    return read.config, read.secret_keys


def run_program(program: Callable[[], None], *, config: dict[str, str], secret_keys: list[str] | None = None,
                stack: str = "dev", project: str = "pcluster-ad", mocks: PlanMocks | None = None) -> Graph:
    """Run `program` under mocks with this config and return the recorded graph and outputs."""
    import pulumi.runtime.settings as runtime_settings
    from pulumi.runtime.stack import run_pulumi_func
    from pulumi.runtime.sync_await import _sync_await

    mocks = mocks or PlanMocks.from_config(config)
    monitor = RecordingMonitor(mocks)
    pulumi.runtime.set_all_config(config, secret_keys or [])
    runtime_settings.ROOT.set(None)  # a fresh Stack per run: outputs must not leak between runs
    pulumi.runtime.set_mocks(mocks, project=project, stack=stack, preview=False, monitor=monitor)
    runtime_settings.SETTINGS.rpc_manager.clear()
    runtime_settings.SETTINGS.outputs.clear()

    _sync_await(run_pulumi_func(program))

    outputs: dict[str, Any] = {}
    root = pulumi.runtime.get_root_resource()
    for key, out in (getattr(root, "outputs", None) or {}).items():
        out = pulumi.Output.from_input(out)
        outputs[key] = SECRET_MASK if _sync_await(out.is_secret()) else _sync_await(out.future())
    return Graph(resources=monitor.recorded, outputs=outputs)
