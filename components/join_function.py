"""JoinFunction: the Lambda behind an AWS_IAM function URL that, for a cluster node during its join window,
pre-creates the node's computer object in the directory and answers it a one-time password
(lambda_src/join_handler.py decides who is a node and keeps the windows in this component's DynamoDB table;
lambda_src/computer_account.py talks LDAP, sealed NTLM, to the domain controllers), plus the policy nodes attach.
It runs in the VPC's private subnets (the domain controllers have private IPs only), like DirectoryAdmin."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import pulumi_aws as aws

from pcluster_ad.components._vpc_lambda import LDAP_PORT, VPC_ACCESS_STATEMENT, package_files, security_group
from pcluster_ad.lambda_src.join_handler import JOINS_PER_DC, MAX_JOINS_LIMIT, TTL_ATTRIBUTE, WINDOW_KEY

HANDLER = "join_handler.handler"
RUNTIME = "python3.13"
# Pure Python + boto3 (the runtime's), no native wheels (package_files refuses any): Graviton (arm64) is the
# cheaper architecture at no risk.
ARCHITECTURE = "arm64"
MEMORY_MB = 256
_MAX_NAME = 64  # IAM role and Lambda function names
# Every lambda_src module the handler imports, side by side at the zip's root (join_handler's
# `import computer_account`). tests/test_join_components.py parses their imports against the zip.
MODULES = ("join_handler.py", "computer_account.py")
# msldap and ONLY its pure-Python dependencies, copied from the installed, pinned distributions
# (requirements.txt). Not packaged: cryptography, cffi, pycryptodomex (compiled; unicrypto then uses its pure
# backend) and prompt-toolkit, tabulate, wcwidth (msldap's console client only).
PACKAGED = {
    "msldap": "0.5.15", "asn1crypto": "1.5.1", "asyauth": "0.0.23", "asysocks": "0.2.18", "h11": "0.16.0",
    "minikerberos": "0.4.9", "oscrypto": "1.3.0", "six": "1.17.0", "tqdm": "4.70.1", "unicrypto": "0.0.12",
    "winacl": "0.1.9",
}


@dataclass
class JoinFunctionArgs:
    role_name: str  # also the function's name; the JoinSecrets key policy names this role
    cluster_name: str
    vpc_id: pulumi.Input[str]
    subnet_ids: pulumi.Input[Sequence[pulumi.Input[str]]]  # private subnets (NAT egress to AWS APIs)
    dc_ips: pulumi.Input[Sequence[pulumi.Input[str]]]  # the directory's DNS IPs: its domain controllers
    computer_ou: pulumi.Input[str]  # DN of the OU where node computer objects are created
    computer_prefix: str  # lambda_src/directory_admin.computer_prefix(cluster name)
    domain_parameter_name: pulumi.Input[str]
    join_user_parameter_name: pulumi.Input[str]
    join_password_parameter_name: pulumi.Input[str]
    parameter_arns: pulumi.Input[Sequence[pulumi.Input[str]]]
    key_arn: pulumi.Input[str]
    code_dir: str  # lambda_src: its join_handler.py is the package
    # Join window per instance: credentials only this long after launch, at most this many times.
    window_minutes: int = 30
    max_answers: int = 3
    log_retention_days: int = 30
    # Caps what a burst of nodes (or a caller hammering the URL) can take from the account's
    # concurrency and how fast anyone can probe. None = no reservation (new accounts whose whole
    # quota is 10 cannot reserve any).
    reserved_concurrency: int | None = 150  # stack_config.JOIN_RESERVED_CONCURRENCY (a component reads no config)
    timeout_seconds: int = 60  # the AWS calls, each retried up to 4 times under throttling, and the LDAP add
    # Admission control (issue 20): joins at once against the directory (join_handler MAX_JOINS_IN_PROGRESS); more
    # nodes wait (HTTP 429, their full-jitter backoff). The program passes max_joins_for(the directory's DC IPs).
    max_joins_in_progress: pulumi.Input[int] = JOINS_PER_DC
    ldap_port: int = LDAP_PORT
    tags: dict[str, str] = field(default_factory=dict)


def max_joins_for(dc_ips: pulumi.Input[Sequence[pulumi.Input[str]]]) -> pulumi.Output[int]:
    """JOINS_PER_DC per domain controller of the directory (its DNS IPs are its DCs), within the handler's bound."""
    return pulumi.Output.from_input(dc_ips).apply(lambda ips: max(1, min(MAX_JOINS_LIMIT, JOINS_PER_DC * len(ips))))


def _checked_max_joins(value: int) -> str:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_JOINS_LIMIT:
        raise ValueError(f"JoinFunction: max_joins_in_progress must be 0 (no cap) to {MAX_JOINS_LIMIT}, got {value!r}")
    return str(value)


def code_archive(code_dir: str) -> pulumi.AssetArchive:
    """The handler's modules (MODULES, listed: lambda_src also holds other functions' code, directory_admin.py,
    which must neither ride along nor redeploy this function when it changes) and the `*.py` files of PACKAGED,
    sorted, no caches: the same checkout gives the same archive, and nothing is downloaded at deploy time."""
    assets: dict[str, Any] = {}
    for module in MODULES:
        path = Path(code_dir) / module
        if not path.is_file():
            raise ValueError(f"JoinFunction: {path} is missing")
        assets[module] = pulumi.FileAsset(str(path))
    for dist, version in PACKAGED.items():
        assets.update(package_files(dist, version, owner="JoinFunction"))
    return pulumi.AssetArchive(dict(sorted(assets.items())))


class JoinFunction(pulumi.ComponentResource):
    function_name: pulumi.Output[str]
    function_arn: pulumi.Output[str]
    function_url: pulumi.Output[str]
    role_arn: pulumi.Output[str]
    security_group_id: pulumi.Output[str]
    window_table_name: pulumi.Output[str]
    window_table_arn: pulumi.Output[str]
    invoke_policy_arn: pulumi.Output[str]
    # The URL, resolved only once the URL config and both invoke permissions exist: take it as the
    # cluster launcher's input (or depend on `ready_resources`) so no node calls a URL that 403s.
    ready: pulumi.Output[str]
    ready_resources: list[pulumi.Resource]

    def __init__(self, name: str, args: JoinFunctionArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("pcluster-ad:index:JoinFunction", name, None, opts)
        if len(args.role_name) > _MAX_NAME:
            raise ValueError(f"JoinFunction: role/function name {args.role_name!r} is longer than {_MAX_NAME}")
        # The handler's own bounds (load_settings): caught at preview, not at the first boot.
        if not 10 <= args.window_minutes <= 1440:
            raise ValueError(f"JoinFunction: window_minutes must be 10 to 1440, got {args.window_minutes}")
        if not 1 <= args.max_answers <= 10:
            raise ValueError(f"JoinFunction: max_answers must be 1 to 10, got {args.max_answers}")
        if not 1 <= args.ldap_port <= 65535:
            raise ValueError(f"JoinFunction: ldap_port must be a TCP port, got {args.ldap_port}")
        child = pulumi.ResourceOptions(parent=self)
        invoke = pulumi.InvokeOutputOptions(parent=self)
        account = aws.get_caller_identity_output(opts=invoke).account_id
        partition_result = aws.get_partition_output(opts=invoke)
        partition = partition_result.partition
        region = aws.get_region_output(opts=invoke).region
        function_name = args.role_name

        def tags(part: str) -> dict[str, str]:
            return {**args.tags, "Name": f"{name}-{part}"}

        # Created before the function and named after it, so Lambda never creates (and leaves
        # behind) an unmanaged group with no retention.
        log_group = aws.cloudwatch.LogGroup(f"{name}-logs", aws.cloudwatch.LogGroupArgs(
            name=f"/aws/lambda/{function_name}",
            retention_in_days=args.log_retention_days,
            tags=tags("logs"),
        ), child)

        # One item per instance (join_handler.WINDOW_KEY); TTL removes it once the node cannot use it.
        # The items are no secret (instance ids, counts, computer names): the AWS managed key will do.
        windows = aws.dynamodb.Table(f"{name}-windows", aws.dynamodb.TableArgs(
            name=f"{function_name}-windows",
            billing_mode="PAY_PER_REQUEST",
            hash_key=WINDOW_KEY,
            attributes=[aws.dynamodb.TableAttributeArgs(name=WINDOW_KEY, type="S")],
            ttl=aws.dynamodb.TableTtlArgs(attribute_name=TTL_ATTRIBUTE, enabled=True),
            server_side_encryption=aws.dynamodb.TableServerSideEncryptionArgs(enabled=True),
            # Short-lived state; a restore could only reopen windows.
            point_in_time_recovery=aws.dynamodb.TablePointInTimeRecoveryArgs(enabled=False),
            tags=tags("windows"),
        ), child)

        # Egress only: LDAP and DNS (TCP and UDP 53: the VPC's DHCP options name only the directory's DNS IPs,
        # so every name, the AWS endpoints' too, is resolved there) to each directory DNS IP /32, HTTPS to the
        # AWS APIs through the NAT. No ingress: nothing connects to the function (the URL is Lambda's own).
        sg = security_group(
            f"{name}-sg", vpc_id=args.vpc_id, dc_ips=args.dc_ips, ldap_ports=[args.ldap_port], dns=True,
            description=f"pcluster-ad {args.cluster_name}: join function (egress only)", tags=tags("sg"), parent=self)

        role = aws.iam.Role(f"{name}-role", aws.iam.RoleArgs(
            name=args.role_name,  # no path: JoinSecrets' key policy matches role/<name> exactly
            description=f"pcluster-ad join function for cluster {args.cluster_name}",
            assume_role_policy=pulumi.Output.json_dumps({
                "Version": "2012-10-17",
                "Statement": [{
                    "Effect": "Allow",
                    "Principal": {"Service": "lambda.amazonaws.com"},
                    "Action": "sts:AssumeRole",
                    "Condition": {"StringEquals": {"aws:SourceAccount": account}},
                }],
            }),
            tags=tags("role"),
        ), child)
        role_policy = aws.iam.RolePolicy(f"{name}-role-policy", aws.iam.RolePolicyArgs(
            role=role.name,
            policy=pulumi.Output.json_dumps(_role_policy(
                account=account, partition=partition,
                via_ssm=pulumi.Output.concat("ssm.", region, ".", partition_result.dns_suffix),
                parameter_arns=args.parameter_arns, key_arn=args.key_arn, log_group_arn=log_group.arn,
                window_table_arn=windows.arn,
                # ParallelCluster's stack is named after the cluster; its nested stacks (queues, login pools)
                # `<cluster>-<logical id>-<suffix>`.
                cluster_stack_arns=[pulumi.Output.concat("arn:", partition, ":cloudformation:", region, ":", account,
                                                         ":stack/", args.cluster_name, suffix)
                                    for suffix in ("/*", "-*/*")],
            )),
        ), child)

        function = aws.lambda_.Function(f"{name}-fn", aws.lambda_.FunctionArgs(
            name=function_name,
            description=f"pcluster-ad: AD join credentials for nodes of {args.cluster_name}",
            role=role.arn,
            runtime=RUNTIME,
            handler=HANDLER,
            code=code_archive(args.code_dir),
            architectures=[ARCHITECTURE],
            memory_size=MEMORY_MB,
            timeout=args.timeout_seconds,
            reserved_concurrent_executions=args.reserved_concurrency,
            # In the private subnets: the domain controllers have private IPs only. Destroy order: Pulumi deletes
            # dependents first, so subnets, NAT and routes outlive the function only where it depends on them;
            # this function runs no code at delete (no Invocation, nothing reads the directory then), so it needs
            # no network path at its delete and declares none beyond its subnets and security group.
            vpc_config=aws.lambda_.FunctionVpcConfigArgs(subnet_ids=args.subnet_ids, security_group_ids=[sg.id]),
            # Names only: the function reads the secret values itself, at request time.
            environment=aws.lambda_.FunctionEnvironmentArgs(variables={
                "CLUSTER_NAME": args.cluster_name,
                "VPC_ID": args.vpc_id,
                "DOMAIN_PARAMETER": args.domain_parameter_name,
                "JOIN_USER_PARAMETER": args.join_user_parameter_name,
                "JOIN_PASSWORD_PARAMETER": args.join_password_parameter_name,
                "WINDOW_TABLE": windows.name,
                "WINDOW_MINUTES": str(args.window_minutes),
                "MAX_ANSWERS": str(args.max_answers),
                "DC_IPS": pulumi.Output.from_input(args.dc_ips).apply(",".join),
                "COMPUTER_OU": args.computer_ou,
                "COMPUTER_PREFIX": args.computer_prefix,
                "LDAP_PORT": str(args.ldap_port),
                "MAX_JOINS_IN_PROGRESS": pulumi.Output.from_input(args.max_joins_in_progress).apply(_checked_max_joins),
            }),
            logging_config=aws.lambda_.FunctionLoggingConfigArgs(log_format="Text", log_group=log_group.name),
            tags=tags("fn"),
        ), pulumi.ResourceOptions(parent=self, depends_on=[log_group, role_policy]))

        url = aws.lambda_.FunctionUrl(f"{name}-url", aws.lambda_.FunctionUrlArgs(
            function_name=function.name, authorization_type="AWS_IAM"), child)
        # Resource policy: principal = this account delegates to IAM; the identity policy below
        # (attached to node roles) is what grants. Since October 2025 a function URL caller needs
        # both InvokeFunctionUrl and InvokeFunction (the latter only via the URL).
        url_permission = aws.lambda_.Permission(f"{name}-url-permission", aws.lambda_.PermissionArgs(
            function=function.name, statement_id="AccountInvokeFunctionUrl", action="lambda:InvokeFunctionUrl",
            principal=account, function_url_auth_type="AWS_IAM"), child)
        invoke_permission = aws.lambda_.Permission(f"{name}-invoke-permission", aws.lambda_.PermissionArgs(
            function=function.name, statement_id="AccountInvokeViaFunctionUrl", action="lambda:InvokeFunction",
            principal=account, invoked_via_function_url=True), child)

        invoke_policy = aws.iam.Policy(f"{name}-invoke-policy", aws.iam.PolicyArgs(
            name=f"{args.role_name}-invoke",
            description=f"Call the pcluster-ad join function URL of {args.cluster_name} (attach to node roles)",
            policy=pulumi.Output.json_dumps(_invoke_policy(function.arn)),
            tags=tags("invoke-policy"),
        ), child)

        self.function_name = function.name
        self.function_arn = function.arn
        self.function_url = url.function_url
        self.role_arn = role.arn
        self.security_group_id = sg.id
        self.window_table_name = windows.name
        self.window_table_arn = windows.arn
        self.invoke_policy_arn = invoke_policy.arn
        self.ready_resources = [url, url_permission, invoke_permission]
        self.ready = pulumi.Output.all(url.function_url, url_permission.id, invoke_permission.id).apply(
            lambda values: values[0])
        self.register_outputs({
            "functionName": self.function_name,
            "functionArn": self.function_arn,
            "functionUrl": self.function_url,
            "roleArn": self.role_arn,
            "securityGroupId": self.security_group_id,
            "windowTableName": self.window_table_name,
            "invokePolicyArn": self.invoke_policy_arn,
            "ready": self.ready,
        })


def _role_policy(*, account: pulumi.Input[str], partition: pulumi.Input[str], via_ssm: pulumi.Input[str],
                 parameter_arns: pulumi.Input[Sequence[pulumi.Input[str]]], key_arn: pulumi.Input[str],
                 log_group_arn: pulumi.Input[str], window_table_arn: pulumi.Input[str],
                 cluster_stack_arns: Sequence[pulumi.Input[str]]) -> dict[str, Any]:
    return {
        "Version": "2012-10-17",
        "Statement": [
            # The handler reads all three in one GetParameters call.
            {"Sid": "ReadJoinParameters", "Effect": "Allow", "Action": ["ssm:GetParameters"],
             "Resource": parameter_arns},
            {"Sid": "DecryptJoinParameters", "Effect": "Allow", "Action": ["kms:Decrypt"], "Resource": [key_arn],
             "Condition": {"StringEquals": {"kms:ViaService": via_ssm}}},
            # `*`: EC2 Describe* actions do not support resource-level permissions.
            {"Sid": "DescribeCallerInstance", "Effect": "Allow", "Action": ["ec2:DescribeInstances"],
             "Resource": "*"},
            # One conditional UpdateItem per answer or close, and per admission lease taken or released (the
            # table's "admission" item); GetItem to log a refused window's state.
            {"Sid": "CountJoinWindows", "Effect": "Allow", "Action": ["dynamodb:UpdateItem", "dynamodb:GetItem"],
             "Resource": [window_table_arn]},
            # instance-profile/*: ParallelCluster creates the node profiles with generated names (and
            # paths); this is read-only. The answer carries the role's path, which the handler checks.
            {"Sid": "ReadInstanceProfiles", "Effect": "Allow", "Action": ["iam:GetInstanceProfile"],
             "Resource": [pulumi.Output.concat("arn:", partition, ":iam::", account, ":instance-profile/*")]},
            # The launch templates of the cluster's stack and its nested stacks: a node must have been launched
            # from one of them (EC2's aws:ec2launchtemplate:id tag). Read-only, those stacks only.
            {"Sid": "ReadClusterStacks", "Effect": "Allow", "Action": ["cloudformation:ListStackResources"],
             "Resource": list(cluster_stack_arns)},
            {"Sid": "WriteOwnLogs", "Effect": "Allow", "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
             "Resource": [pulumi.Output.concat(log_group_arn, ":*")]},
            VPC_ACCESS_STATEMENT,
        ],
    }


def _invoke_policy(function_arn: pulumi.Input[str]) -> dict[str, Any]:
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "InvokeJoinFunctionUrl", "Effect": "Allow", "Action": ["lambda:InvokeFunctionUrl"],
             "Resource": [function_arn],
             "Condition": {"StringEquals": {"lambda:FunctionUrlAuthType": "AWS_IAM"}}},
            # Required for function URLs created since October 2025; only through the URL, never a
            # direct Invoke API call.
            {"Sid": "InvokeJoinFunctionViaUrl", "Effect": "Allow", "Action": ["lambda:InvokeFunction"],
             "Resource": [function_arn],
             "Condition": {"Bool": {"lambda:InvokedViaFunctionUrl": "true"}}},
        ],
    }
