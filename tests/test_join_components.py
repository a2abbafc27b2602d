"""JoinSecrets and JoinFunction under Pulumi's mocks: names, secrets, key and IAM policies, graph; the join
function in the VPC (security group, ENI permissions) and its package (msldap, pure Python, every module the
handler imports). A small local program builds both with fixed inputs; the last tests run the real program."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pulumi
import pulumi_aws as aws
import pytest

from pcluster_ad.components import _vpc_lambda
from pcluster_ad.components import join_function as jf
from pcluster_ad.components.join_function import JoinFunction, JoinFunctionArgs
from pcluster_ad.components.join_secrets import JoinSecrets, JoinSecretsArgs, principal_arn_patterns
from pcluster_ad.lambda_src import join_handler as jh
from pcluster_ad.tools.mocks import (
    ACCOUNT_PLACEHOLDER,
    Graph,
    PlanMocks,
    is_secret_value,
    mask_secrets,
    run_program,
    unwrap_secrets,
)
from tests.conftest import ROOT, dumps

PASSWORD = "J0in-Secret-Passw0rd!"
USER = "svc-join"
CLUSTER = "hpc"
VPC = "vpc-0123456789abcdef0"
SUBNETS = ["subnet-0aaaaaaaaaaaaaaaa", "subnet-0bbbbbbbbbbbbbbbb"]
DC_IPS = ["10.0.1.10", "10.0.2.10"]
COMPUTER_OU = "OU=Computers,OU=pcluster-ad-dev,DC=test,DC=domain"
PREFIX = "HPC4A"
KEY = "join-secrets-key"
ROLE_NAME = "pcluster-ad-dev-join-fn"
FN_ARN = "<after-deploy:join-function-fn.arn>"
KEY_ARN = f"<after-deploy:{KEY}.arn>"
PARAMETER_ARNS = [f"<after-deploy:join-secrets-{p}.arn>" for p in ("domain", "join-user", "join-password")]
LOG_GROUP_ARN = "<after-deploy:join-function-logs.arn>"
TABLE_ARN = "<after-deploy:join-function-windows.arn>"
ROOT_ARN = f"arn:aws:iam::{ACCOUNT_PLACEHOLDER}:root"
DEPLOYER_SESSION = "arn:aws:sts::111122223333:assumed-role/AWSReservedSSO_Admin_0123/alice@example.com"


class CallerMocks(PlanMocks):
    """A realistic GetCallerIdentity ARN (an SSO role session), so the deployer patterns are real."""

    def call(self, args):
        result, failures = super().call(args)
        if args.token == "aws:index/getCallerIdentity:getCallerIdentity":
            result = {**result, "arn": DEPLOYER_SESSION}
        return result, failures


def join_program(*, code_dir: str = str(ROOT / "lambda_src"), reserved_concurrency: int | None = 10,
                 deployer_principal_arns=None, role_name: str | None = None, window_minutes: int = 45,
                 max_answers: int = 2, ldap_port: int = 389, max_joins_in_progress=None):
    def program() -> None:
        stack = pulumi.get_stack()
        tags = {"pcluster-ad:stack": stack}
        reader_role = role_name or f"pcluster-ad-{stack}-join-fn"
        secrets = JoinSecrets("join-secrets", JoinSecretsArgs(
            stack=stack, domain_name="test.domain", join_user=USER,
            join_password=pulumi.Output.secret(PASSWORD), reader_role_name=reader_role,
            deployer_principal_arns=deployer_principal_arns, tags=tags))
        fn = JoinFunction("join-function", JoinFunctionArgs(
            role_name=reader_role, cluster_name=CLUSTER, vpc_id=VPC, subnet_ids=SUBNETS, dc_ips=DC_IPS,
            computer_ou=COMPUTER_OU, computer_prefix=PREFIX,
            domain_parameter_name=secrets.domain_parameter_name,
            join_user_parameter_name=secrets.join_user_parameter_name,
            join_password_parameter_name=secrets.join_password_parameter_name,
            parameter_arns=secrets.parameter_arns, key_arn=secrets.key_arn, code_dir=code_dir,
            reserved_concurrency=reserved_concurrency, window_minutes=window_minutes, max_answers=max_answers,
            ldap_port=ldap_port, tags=tags,
            **({} if max_joins_in_progress is None else {"max_joins_in_progress": max_joins_in_progress})))
        # Stands in for the cluster launcher: it takes `ready` as an input.
        aws.ssm.Parameter("launcher-stand-in", aws.ssm.ParameterArgs(type="String", insecure_value=fn.ready))
        pulumi.export("keyAlias", secrets.key_alias)
        pulumi.export("parameterArns", secrets.parameter_arns)
        pulumi.export("joinFunctionUrl", fn.function_url)
        pulumi.export("joinFunctionReady", fn.ready)
        pulumi.export("joinFunctionRoleArn", fn.role_arn)
        pulumi.export("joinInvokePolicyArn", fn.invoke_policy_arn)
        pulumi.export("joinWindowTable", fn.window_table_name)
        pulumi.export("joinFunctionSecurityGroupId", fn.security_group_id)

    return program


def run(stack: str = "dev", mocks: PlanMocks | None = None, **kwargs) -> Graph:
    return run_program(join_program(**kwargs), config={"aws:region": "eu-west-1"}, stack=stack,
                       mocks=mocks or PlanMocks(region="eu-west-1"))


@pytest.fixture(scope="module")
def g() -> Graph:
    return run(mocks=CallerMocks(region="eu-west-1"))


def policy(g: Graph, name: str, prop: str = "policy") -> dict:
    return json.loads(g.named(name).inputs[prop])


def statements(doc: dict) -> dict[str, dict]:
    return {s["Sid"]: s for s in doc["Statement"]}


def as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def test_names_are_per_stack():
    def names(g: Graph) -> dict[str, str]:
        return {
            "params": sorted(p.inputs["name"] for p in g.of_type("aws:ssm/parameter:Parameter")
                             if p.name.startswith("join-secrets-")),
            "alias": g.named("join-secrets-key-alias").inputs["name"],
            "role": g.named("join-function-role").inputs["name"],
            "function": g.named("join-function-fn").inputs["name"],
            "logs": g.named("join-function-logs").inputs["name"],
            "invoke": g.named("join-function-invoke-policy").inputs["name"],
            "table": g.named("join-function-windows").inputs["name"],
        }

    dev, prod = names(run("dev")), names(run("prod"))
    assert dev["params"] == ["/pcluster-ad/dev/domain", "/pcluster-ad/dev/join-password", "/pcluster-ad/dev/join-user"]
    assert dev["alias"] == "alias/pcluster-ad-dev-join"
    assert dev["role"] == dev["function"] == ROLE_NAME
    assert dev["logs"] == f"/aws/lambda/{ROLE_NAME}"
    assert dev["table"] == f"{ROLE_NAME}-windows"
    assert prod["params"] == [p.replace("/dev/", "/prod/") for p in dev["params"]]
    for key in dev:
        assert set(as_list(dev[key])).isdisjoint(as_list(prod[key])), key


def test_parameters_are_typed_and_under_the_stack_key(g):
    domain = g.named("join-secrets-domain").inputs
    assert domain["type"] == "String" and domain["insecureValue"] == "test.domain"
    assert "keyId" not in domain
    for part, plaintext in (("join-user", USER), ("join-password", PASSWORD)):
        p = g.named(f"join-secrets-{part}").inputs
        assert p["type"] == "SecureString"
        assert p["keyId"] == KEY_ARN
        assert is_secret_value(p["value"]) and unwrap_secrets(p["value"]) == plaintext
        assert KEY in g.dependency_names(g.named(f"join-secrets-{part}"))
    key = g.named(KEY).inputs
    assert key["enableKeyRotation"] is True and key["deletionWindowInDays"] == 30
    assert "dev" in key["description"]
    assert g.named("join-secrets-key-alias").inputs["targetKeyId"] == f"<after-deploy:{KEY}.keyId>"
    assert g.outputs["parameterArns"] == PARAMETER_ARNS


def test_password_is_secret_everywhere(g):
    found = [r.name for r in g.resources if PASSWORD in dumps(unwrap_secrets(r.inputs))]
    assert found == ["join-secrets-join-password"]
    assert is_secret_value(g.named("join-secrets-join-password").inputs["value"])
    assert PASSWORD not in dumps([mask_secrets(r.inputs) for r in g.resources])
    assert PASSWORD not in dumps(g.to_plan())
    assert PASSWORD not in dumps(g.outputs)
    env = g.named("join-function-fn").inputs["environment"]["variables"]
    assert PASSWORD not in dumps(unwrap_secrets(env)) and USER not in dumps(unwrap_secrets(env))


def test_key_policy_only_reader_role_and_deployer_decrypt_via_ssm(g):
    doc = policy(g, KEY)
    by_sid = statements(doc)
    via = {"kms:ViaService": "ssm.eu-west-1.amazonaws.com"}
    for s in doc["Statement"]:
        assert s["Effect"] == "Allow" and s["Principal"] == {"AWS": ROOT_ARN} and s["Resource"] == "*"
        actions = as_list(s["Action"])
        assert not any(a.startswith("kms:ReEncrypt") or a in ("kms:*", "kms:CreateGrant") for a in actions)
        assert not any("*" in a for a in actions)
        if "kms:Decrypt" in actions:
            # Never unconditional: only a named principal ARN, only through SSM.
            assert actions == ["kms:Decrypt"]
            assert s["Condition"]["StringEquals"] == via
            assert {"ArnEquals", "ArnLike"} & set(s["Condition"])
    admin = by_sid["AccountAdministersKey"]
    assert "Condition" not in admin and {"kms:PutKeyPolicy", "kms:ScheduleKeyDeletion"} <= set(admin["Action"])
    assert by_sid["AccountEncryptsViaSsm"]["Action"] == ["kms:Encrypt", "kms:GenerateDataKey"]
    reader = by_sid["ReaderRoleDecryptsViaSsm"]["Condition"]
    # The role the join function really gets: the condition names it, no Principal does.
    role_arn = f"arn:aws:iam::{ACCOUNT_PLACEHOLDER}:role/{g.named('join-function-role').inputs['name']}"
    assert reader == {"ArnEquals": {"aws:PrincipalArn": role_arn}, "StringEquals": via}
    deployer = by_sid["DeployerReadsBackViaSsm"]["Condition"]["ArnLike"]["aws:PrincipalArn"]
    assert deployer == ["arn:aws:iam::111122223333:role/AWSReservedSSO_Admin_0123",
                        "arn:aws:iam::111122223333:role/*/AWSReservedSSO_Admin_0123"]
    decrypting = [s["Sid"] for s in doc["Statement"] if "kms:Decrypt" in as_list(s["Action"])]
    assert decrypting == ["ReaderRoleDecryptsViaSsm", "DeployerReadsBackViaSsm"]
    # No creation cycle: the key does not depend on the role or its policy.
    assert not {"join-function-role", "join-function-role-policy"} & set(g.dependency_names(g.named(KEY)))


def test_explicit_deployers_replace_the_caller():
    g = run(deployer_principal_arns=["arn:aws:iam::111122223333:role/ci-deployer"])
    cond = statements(policy(g, KEY))["DeployerReadsBackViaSsm"]["Condition"]["ArnLike"]
    assert cond == {"aws:PrincipalArn": ["arn:aws:iam::111122223333:role/ci-deployer"]}


@pytest.mark.parametrize("caller,expected", [
    ("arn:aws:sts::111122223333:assumed-role/Deploy/i-0abc", ["arn:aws:iam::111122223333:role/Deploy",
                                                             "arn:aws:iam::111122223333:role/*/Deploy"]),
    ("arn:aws-cn:sts::111122223333:assumed-role/R/s", ["arn:aws-cn:iam::111122223333:role/R",
                                                      "arn:aws-cn:iam::111122223333:role/*/R"]),
    ("arn:aws:iam::111122223333:user/ops/bob", ["arn:aws:iam::111122223333:user/ops/bob"]),
    ("<after-deploy:caller-arn>", ["<after-deploy:caller-arn>"]),
])
def test_principal_arn_patterns(caller, expected):
    assert principal_arn_patterns(caller) == expected


ENI_ACTIONS = {"ec2:CreateNetworkInterface", "ec2:DescribeNetworkInterfaces", "ec2:DescribeSubnets",
               "ec2:DeleteNetworkInterface", "ec2:AssignPrivateIpAddresses", "ec2:UnassignPrivateIpAddresses"}
ALLOWED_ROLE_ACTIONS = {"ssm:GetParameters", "ssm:GetParameter", "kms:Decrypt", "ec2:DescribeInstances",
                        "ec2:DescribeIamInstanceProfileAssociations", "iam:GetInstanceProfile",
                        "logs:CreateLogStream", "logs:PutLogEvents", "dynamodb:UpdateItem", "dynamodb:GetItem",
                        "cloudformation:ListStackResources", *ENI_ACTIONS}


def test_role_policy_is_least_privilege(g):
    doc = policy(g, "join-function-role-policy")
    for s in doc["Statement"]:
        actions, resources = as_list(s["Action"]), as_list(s["Resource"])
        assert s["Effect"] == "Allow" and set(actions) <= ALLOWED_ROLE_ACTIONS, s
        if "*" in resources:
            assert resources == ["*"] and set(actions) <= {"ec2:DescribeInstances",
                                                           "ec2:DescribeIamInstanceProfileAssociations",
                                                           *ENI_ACTIONS}, s
    by_sid = statements(doc)
    assert by_sid["ReadJoinParameters"]["Resource"] == PARAMETER_ARNS
    decrypt = by_sid["DecryptJoinParameters"]
    assert decrypt["Resource"] == [KEY_ARN]
    assert decrypt["Condition"] == {"StringEquals": {"kms:ViaService": "ssm.eu-west-1.amazonaws.com"}}
    assert by_sid["ReadInstanceProfiles"]["Resource"] == [f"arn:aws:iam::{ACCOUNT_PLACEHOLDER}:instance-profile/*"]
    assert by_sid["WriteOwnLogs"]["Resource"] == [f"{LOG_GROUP_ARN}:*"]
    # Lambda attaches the function to the VPC with these (the same statement as DirectoryAdmin's).
    assert by_sid["AttachToVpc"] == _vpc_lambda.VPC_ACCESS_STATEMENT
    assert set(by_sid["AttachToVpc"]["Action"]) == ENI_ACTIONS and by_sid["AttachToVpc"]["Resource"] == "*"
    # The cluster's stack and its nested ones (queues, login pools), read-only: their launch templates.
    assert by_sid["ReadClusterStacks"]["Action"] == ["cloudformation:ListStackResources"]
    assert by_sid["ReadClusterStacks"]["Resource"] == [
        f"arn:aws:cloudformation:eu-west-1:{ACCOUNT_PLACEHOLDER}:stack/{CLUSTER}/*",
        f"arn:aws:cloudformation:eu-west-1:{ACCOUNT_PLACEHOLDER}:stack/{CLUSTER}-*/*"]
    assert sorted(s["Sid"] for s in doc["Statement"] if s["Resource"] == "*") == [
        "AttachToVpc", "DescribeCallerInstance"]
    # The window table, and only it: no other statement names a DynamoDB action.
    assert by_sid["CountJoinWindows"]["Action"] == ["dynamodb:UpdateItem", "dynamodb:GetItem"]
    assert by_sid["CountJoinWindows"]["Resource"] == [TABLE_ARN]
    assert [s["Sid"] for s in doc["Statement"] if any(a.startswith("dynamodb:") for a in as_list(s["Action"]))] == [
        "CountJoinWindows"]
    assert g.named("join-function-role-policy").inputs["role"] == ROLE_NAME

    trust = policy(g, "join-function-role", "assumeRolePolicy")["Statement"]
    assert trust == [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole",
                      "Condition": {"StringEquals": {"aws:SourceAccount": ACCOUNT_PLACEHOLDER}}}]
    assert not [r for r in g.resources if r.type == "aws:iam/rolePolicyAttachment:RolePolicyAttachment"]


def test_function_configuration(g):
    fn = g.named("join-function-fn").inputs
    assert fn["runtime"] == "python3.13" and fn["handler"] == "join_handler.handler"
    assert fn["architectures"] == ["arm64"] and fn["memorySize"] == 256
    assert fn["timeout"] == 60 and fn["reservedConcurrentExecutions"] == 10  # join_program passes 10
    assert fn["role"] == "<after-deploy:join-function-role.arn>"
    assert fn["environment"]["variables"] == {
        "CLUSTER_NAME": CLUSTER, "VPC_ID": VPC,
        "DOMAIN_PARAMETER": "/pcluster-ad/dev/domain",
        "JOIN_USER_PARAMETER": "/pcluster-ad/dev/join-user",
        "JOIN_PASSWORD_PARAMETER": "/pcluster-ad/dev/join-password",
        "WINDOW_TABLE": f"{ROLE_NAME}-windows", "WINDOW_MINUTES": "45", "MAX_ANSWERS": "2",
        "DC_IPS": ",".join(DC_IPS), "COMPUTER_OU": COMPUTER_OU, "COMPUTER_PREFIX": PREFIX, "LDAP_PORT": "389",
        "MAX_JOINS_IN_PROGRESS": "16",  # admission control (issue 20): the default, one domain controller's
    }
    assert fn["loggingConfig"] == {"logFormat": "Text", "logGroup": f"/aws/lambda/{ROLE_NAME}"}
    assert isinstance(fn["code"], pulumi.AssetArchive)
    modules = sorted(name for name in fn["code"].assets if "/" not in name and name != "six.py")
    assert modules == ["computer_account.py", "join_handler.py"]  # not the directory-admin code beside them
    assert g.named("join-function-logs").inputs["retentionInDays"] == 30
    # The handler takes this environment as it is.
    settings = jh.load_settings(fn["environment"]["variables"])
    assert (settings.dc_ips, settings.computer_ou, settings.computer_prefix, settings.ldap_port) == (
        tuple(DC_IPS), COMPUTER_OU, PREFIX, 389)


def test_function_in_the_private_subnets_behind_an_egress_only_group(g):
    fn = g.named("join-function-fn").inputs
    assert fn["vpcConfig"] == {"subnetIds": SUBNETS, "securityGroupIds": ["<after-deploy:join-function-sg.id>"]}
    sg = g.named("join-function-sg")
    assert sg.type == "aws:ec2/securityGroup:SecurityGroup" and g.parent_name(sg) == "join-function"
    assert sg.inputs["vpcId"] == VPC and sg.inputs["ingress"] == []
    rules = sorted((e["protocol"], e["fromPort"], e["toPort"], *e["cidrBlocks"]) for e in sg.inputs["egress"])
    # LDAP and DNS (both protocols: the VPC's DHCP options name only the directory's DNS) to each domain
    # controller, nothing else there; HTTPS to the AWS APIs through the NAT.
    assert rules == sorted([(proto, port, port, f"{ip}/32") for ip in DC_IPS
                            for proto, port in (("tcp", 389), ("tcp", 53), ("udp", 53))]
                           + [("tcp", 443, 443, "0.0.0.0/0")])
    assert all(len(e["cidrBlocks"]) == 1 and not e.get("ipv6CidrBlocks") and not e.get("securityGroups")
               for e in sg.inputs["egress"])
    assert all(e["description"] for e in sg.inputs["egress"])
    assert sg.inputs["tags"] == {"pcluster-ad:stack": "dev", "Name": "join-function-sg"}
    # Lambda's network interfaces hold the group for a while after the function is gone.
    assert sg.options["customTimeouts"]["delete"] == _vpc_lambda.SECURITY_GROUP_DELETE_TIMEOUT
    assert "join-function-sg" in g.dependency_names(g.named("join-function-fn"))
    assert g.outputs["joinFunctionSecurityGroupId"] == "<after-deploy:join-function-sg.id>"


def test_a_non_default_ldap_port_opens_that_port():
    g = run(ldap_port=3268)
    ports = {(e["protocol"], e["fromPort"]) for e in g.named("join-function-sg").inputs["egress"]}
    assert ports == {("tcp", 3268), ("tcp", 53), ("udp", 53), ("tcp", 443)}
    assert g.named("join-function-fn").inputs["environment"]["variables"]["LDAP_PORT"] == "3268"


def test_window_table(g):
    table = g.named("join-function-windows")
    assert table.type == "aws:dynamodb/table:Table" and g.parent_name(table) == "join-function"
    inputs = table.inputs
    assert inputs["billingMode"] == "PAY_PER_REQUEST"
    assert inputs["hashKey"] == jh.WINDOW_KEY == "instanceId" and "rangeKey" not in inputs
    assert inputs["attributes"] == [{"name": "instanceId", "type": "S"}]
    assert inputs["ttl"] == {"attributeName": jh.TTL_ATTRIBUTE, "enabled": True}
    assert inputs["serverSideEncryption"] == {"enabled": True}
    assert inputs["pointInTimeRecovery"] == {"enabled": False}
    assert inputs["tags"] == {"pcluster-ad:stack": "dev", "Name": "join-function-windows"}
    env = g.named("join-function-fn").inputs["environment"]["variables"]
    assert env["WINDOW_TABLE"] == inputs["name"]
    # The function's environment is valid for the handler itself.
    settings = jh.load_settings({**env, "VPC_ID": VPC})
    assert (settings.window_table, settings.window_minutes, settings.max_answers) == (inputs["name"], 45, 2)
    assert g.outputs["joinWindowTable"] == inputs["name"]
    assert "join-function-windows" in g.dependency_names(g.named("join-function-role-policy"))


def test_function_url_and_permissions(g):
    url = g.named("join-function-url").inputs
    assert url == {"authorizationType": "AWS_IAM", "functionName": ROLE_NAME}
    url_perm = g.named("join-function-url-permission").inputs
    assert url_perm["action"] == "lambda:InvokeFunctionUrl" and url_perm["functionUrlAuthType"] == "AWS_IAM"
    invoke_perm = g.named("join-function-invoke-permission").inputs
    assert invoke_perm["action"] == "lambda:InvokeFunction" and invoke_perm["invokedViaFunctionUrl"] is True
    for perm in (url_perm, invoke_perm):
        assert perm["principal"] == ACCOUNT_PLACEHOLDER and perm["function"] == ROLE_NAME
    assert len(g.of_type("aws:lambda/permission:Permission")) == 2

    doc = policy(g, "join-function-invoke-policy")
    assert [(s["Action"], s["Resource"], s["Condition"]) for s in doc["Statement"]] == [
        (["lambda:InvokeFunctionUrl"], [FN_ARN], {"StringEquals": {"lambda:FunctionUrlAuthType": "AWS_IAM"}}),
        (["lambda:InvokeFunction"], [FN_ARN], {"Bool": {"lambda:InvokedViaFunctionUrl": "true"}}),
    ]
    assert g.outputs["joinFunctionUrl"] == "<after-deploy:join-function-url.functionUrl>"
    assert g.outputs["joinInvokePolicyArn"] == "<after-deploy:join-function-invoke-policy.arn>"


def test_parents_and_dependencies(g):
    for r in g.resources:
        if r.name.startswith("join-secrets-"):
            assert g.parent_name(r) == "join-secrets", r.name
        elif r.name.startswith("join-function-"):
            assert g.parent_name(r) == "join-function", r.name
    assert {r.type for r in g.resources if r.name in ("join-secrets", "join-function")} == {
        "pcluster-ad:index:JoinSecrets", "pcluster-ad:index:JoinFunction"}
    fn_deps = set(g.dependency_names(g.named("join-function-fn")))
    assert {"join-function-logs", "join-function-role", "join-function-role-policy",
            "join-secrets-domain", "join-secrets-join-user", "join-secrets-join-password"} <= fn_deps
    assert set(g.dependency_names(g.named("join-function-role-policy"))) >= {
        "join-function-role", "join-function-logs", KEY, "join-secrets-join-password"}
    for name in ("join-function-url", "join-function-url-permission", "join-function-invoke-permission",
                 "join-function-invoke-policy"):
        assert "join-function-fn" in g.dependency_names(g.named(name)), name
    # Whatever takes `ready` waits for the URL and both permissions.
    assert set(g.dependency_names(g.named("launcher-stand-in"))) == {
        "join-function-url", "join-function-url-permission", "join-function-invoke-permission"}
    assert g.outputs["joinFunctionReady"] == g.outputs["joinFunctionUrl"]


def test_unreserved_concurrency_is_omitted():
    fn = run(reserved_concurrency=None).named("join-function-fn").inputs
    assert "reservedConcurrentExecutions" not in fn


def test_plan_is_json_with_placeholders(g):
    plan = json.loads(json.dumps(g.to_plan(), default=str))
    assert {r["name"] for r in plan} >= {"join-secrets", "join-function", KEY, "join-function-fn"}


@pytest.mark.parametrize("kwargs,message", [
    ({"role_name": "x" * 65}, "longer than 64"),
    ({"code_dir": str(Path(__file__).parent / "adlab" / "no-such-dir")}, "join_handler.py is missing"),
    ({"window_minutes": 9}, "window_minutes must be 10 to 1440, got 9"),
    ({"window_minutes": 1441}, "window_minutes must be 10 to 1440"),
    ({"max_answers": 0}, "max_answers must be 1 to 10, got 0"),
    ({"max_answers": 11}, "max_answers must be 1 to 10"),
    ({"ldap_port": 0}, "ldap_port must be a TCP port, got 0"),
    ({"max_joins_in_progress": 501}, "max_joins_in_progress must be 0 \\(no cap\\) to 500, got 501"),
    ({"max_joins_in_progress": -1}, "max_joins_in_progress must be 0"),
])
def test_bad_inputs_fail_clearly(kwargs, message):
    with pytest.raises(Exception, match=message):
        run(**kwargs)


def test_program_wires_the_join_window_config(run_stack):
    """The real program: stack config -> JoinFunction environment -> handler settings; table exported."""
    g = run_stack(lambda c: c.setdefault("pcluster-ad:join", {}).update(windowMinutes=20, maxAnswers=5))
    env = g.named("join-function-fn").inputs["environment"]["variables"]
    table = g.named("join-function-windows").inputs["name"]
    assert table == g.named("join-function-fn").inputs["name"] + "-windows"
    assert g.outputs["joinWindowTable"] == table
    assert (env["WINDOW_TABLE"], env["WINDOW_MINUTES"], env["MAX_ANSWERS"]) == (table, "20", "5")
    defaults = run_stack().named("join-function-fn").inputs["environment"]["variables"]
    assert (defaults["WINDOW_MINUTES"], defaults["MAX_ANSWERS"]) == ("30", "3")


def test_program_sizes_the_joins_in_progress_from_the_directorys_domain_controllers(run_stack):
    """Admission control (issue 20): JOINS_PER_DC per DC of the directory (its DNS IPs), no stack config."""
    from pcluster_ad.components.join_function import max_joins_for

    for stack in ("dev", "prod"):
        g = run_stack(stack=stack)
        env = g.named("join-function-fn").inputs["environment"]["variables"]
        assert env["MAX_JOINS_IN_PROGRESS"] == str(jh.JOINS_PER_DC * len(g.outputs["directoryDnsIps"]))
    assert run(max_joins_in_progress=max_joins_for(["10.0.0.1"] * 4)).named("join-function-fn").inputs[
        "environment"]["variables"]["MAX_JOINS_IN_PROGRESS"] == str(4 * jh.JOINS_PER_DC)
    assert run(max_joins_in_progress=0).named("join-function-fn").inputs["environment"]["variables"][
        "MAX_JOINS_IN_PROGRESS"] == "0"


# --- the package: what the zip holds, and that it is enough -------------------------------------------------------

# The python3.13 Lambda runtime's own packages (boto3 and what it needs): never packaged, always there.
RUNTIME_PROVIDED = {"boto3", "botocore"}
RUNTIME_DISTRIBUTIONS = ("boto3", "botocore", "jmespath", "python-dateutil", "s3transfer", "urllib3", "six")
COMPILED = re.compile(r"\.(so|pyd|dylib|dll|pyc)$|\.so\.")


def code_zip(tmp_path: Path) -> Path:
    """The archive as Pulumi uploads it: every asset at its name, deflated."""
    archive = jf.code_archive(str(ROOT / "lambda_src"))
    out = tmp_path / "join-function.zip"
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name, asset in archive.assets.items():
            z.write(asset.path, name)
    return out


def imported_names(source: str) -> tuple[set[str], set[str]]:
    """(lambda_src modules, other top-level modules) that a module imports, anywhere in it (also inside functions
    and try/except: `import computer_account` / `from pcluster_ad.lambda_src import computer_account` are the same
    module)."""
    local_files = {p.stem for p in (ROOT / "lambda_src").glob("*.py")}
    local, other = set(), set()
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # from . import x / from .x import y
                names = [node.module] if node.module else [a.name for a in node.names]
                local.update(n.split(".")[0] for n in names)
                continue
            module = node.module.removeprefix("pcluster_ad.")  # the checkout's fallback: the same module
            names = [f"{module}.{a.name}" for a in node.names] if module == "lambda_src" else [module]
        for name in names:
            parts = name.removeprefix("pcluster_ad.").split(".")
            if parts[0] == "lambda_src":
                local.add(parts[1])
            elif parts[0] in local_files:
                local.add(parts[0])
            elif parts[0] != "__future__":
                other.add(parts[0])
    return local, other


def test_zip_holds_the_modules_msldap_and_nothing_compiled(tmp_path):
    path = code_zip(tmp_path)
    names = zipfile.ZipFile(path).namelist()
    assert names == sorted(names) and len(names) == len(set(names))
    assert [n for n in names if COMPILED.search(n)] == []
    assert all(n.endswith(".py") for n in names)
    assert [n for n in names if "/" not in n] == ["computer_account.py", "join_handler.py", "six.py"]
    tops = {n.split("/")[0] for n in names if "/" in n}
    assert tops == {"msldap", "asn1crypto", "asyauth", "asysocks", "h11", "minikerberos", "oscrypto", "tqdm",
                    "unicrypto", "winacl"}
    assert "msldap/connection.py" in names and "winacl/dtyp/security_descriptor.py" in names
    # Not the compiled declared dependencies, not msldap's console-client ones, not the runtime's boto3.
    for absent in ("cryptography", "cffi", "_cffi_backend", "Cryptodome", "prompt_toolkit", "tabulate", "wcwidth",
                   "boto3", "botocore", "directory_admin.py", "ldap3"):
        assert not any(n == absent or n.startswith(absent + "/") for n in names), absent
    # The pins of requirements.txt are what the component packages (it refuses other installed versions).
    from tests.test_pins import pins

    assert {k: pins("requirements.txt")[k] for k in jf.PACKAGED} == jf.PACKAGED
    assert path.stat().st_size < 5 * 1024 * 1024, path.stat().st_size
    # The same checkout gives the same archive.
    assert names == sorted(jf.code_archive(str(ROOT / "lambda_src")).assets)


def test_every_module_the_handler_imports_is_in_the_zip(tmp_path):
    """A lambda_src module the handler (or a module it imports) starts importing is caught here, not at the first
    node's boot: each is in MODULES, and each third-party import is packaged or the runtime's own."""
    names = set(zipfile.ZipFile(code_zip(tmp_path)).namelist())
    tops = {n.split("/")[0].removesuffix(".py") for n in names}
    todo, seen = ["join_handler"], set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        assert f"{module}.py" in jf.MODULES and f"{module}.py" in names, f"{module}.py is not packaged (MODULES)"
        local, other = imported_names((ROOT / "lambda_src" / f"{module}.py").read_text())
        todo += sorted(local)
        missing = sorted(n for n in other if n not in sys.stdlib_module_names and n not in RUNTIME_PROVIDED
                         and n not in tops)
        assert missing == [], f"{module}.py imports {missing}: neither packaged nor in the Lambda runtime"
    assert seen >= {"join_handler", "computer_account"}
    assert {m.removesuffix(".py") for m in jf.MODULES} <= seen, "MODULES lists a module the handler never imports"


def test_imports_parse_every_form():
    local, other = imported_names(
        "import os, json\nfrom pcluster_ad.lambda_src import computer_account\n"
        "from lambda_src.directory_admin import x\n"
        "from . import join_handler\ndef f():\n    import msldap.connection\n    from winacl.dtyp import ace\n")
    assert local == {"computer_account", "directory_admin", "join_handler"}
    assert other == {"os", "json", "msldap", "winacl"}


def test_the_zip_imports_with_the_runtimes_packages_only(tmp_path):
    """The unpacked zip plus boto3 (the runtime's): the handler, the LDAP client and the crypto it seals with import
    and work without cryptography, cffi or pycryptodomex (unicrypto's pure-Python backend)."""
    from importlib import metadata

    code = tmp_path / "task"
    zipfile.ZipFile(code_zip(tmp_path)).extractall(code)
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    for dist in RUNTIME_DISTRIBUTIONS:
        d = metadata.distribution(dist)
        for top in {str(f).split("/")[0] for f in d.files or []}:
            source = Path(d.locate_file(top))
            if top.endswith(".dist-info") or top in ("..", "__pycache__") or (runtime / top).exists():
                continue
            if source.is_dir() or top.endswith(".py"):
                (runtime / top).symlink_to(source)
    # The lazy imports of computer_account, run as they are.
    lazy = [ast.unparse(n) for f in ast.walk(ast.parse((ROOT / "lambda_src" / "computer_account.py").read_text()))
            if isinstance(f, ast.FunctionDef) for n in f.body if isinstance(n, ast.Import | ast.ImportFrom)]
    assert lazy, "computer_account.py imports msldap inside its functions"
    script = "\n".join([
        "import sys",
        "import join_handler, computer_account",
        *lazy,
        "from unicrypto import hashlib, hmac",
        "from unicrypto.symmetric import RC4",
        "assert hashlib.md4(b'abc').hexdigest() == 'a448017aaf21d8525fc10ae87aa6729d'",
        "assert RC4(b'k' * 16).encrypt(b'hello') == bytes.fromhex('0787cc3da8')",
        "compiled = sorted({m.split('.')[0] for m in sys.modules} & {'cryptography', 'cffi', '_cffi_backend',"
        " 'Cryptodome', 'Crypto', 'prompt_toolkit', 'tabulate', 'wcwidth'})",
        "assert not compiled, compiled",
        # Nothing came from the venv's site-packages (the compiled packages are installed there).
        f"site = {str(Path(pulumi.__file__).parents[1])!r}",
        "assert not [n for n, m in list(sys.modules.items()) if (getattr(m, '__file__', None) or '').startswith(site)]",
        "print('ok')",
    ])
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": f"{code}:{runtime}", "PYTHONNOUSERSITE": "1",
           "AWS_DEFAULT_REGION": "eu-west-1"}
    res = subprocess.run([sys.executable, "-S", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-3000:]


def test_every_aws_call_of_the_handler_is_allowed(g):
    """The role allows each boto3 call join_handler.py makes (client.method(...) and paginators), by name."""
    services = {"ec2", "iam", "ssm", "dynamodb", "cloudformation"}
    calls = set()
    for node in ast.walk(ast.parse((ROOT / "lambda_src" / "join_handler.py").read_text())):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        receiver = node.func.value
        service = receiver.id if isinstance(receiver, ast.Name) else getattr(receiver, "attr", None)
        if service not in services:
            continue
        method = node.func.attr
        if method == "get_paginator":
            method = node.args[0].value
        calls.add(f"{service}:{''.join(p.capitalize() for p in method.split('_'))}")
    assert {"ec2:DescribeInstances", "iam:GetInstanceProfile", "ssm:GetParameters", "dynamodb:UpdateItem",
            "cloudformation:ListStackResources"} <= calls
    allowed = {a for s in policy(g, "join-function-role-policy")["Statement"] for a in as_list(s["Action"])}
    assert sorted(calls - allowed) == []


def test_every_star_resource_says_why():
    """The project's rule: each `*` resource in a role policy has a comment saying why, right above it."""
    for path in (ROOT / "components" / "join_function.py", ROOT / "components" / "_vpc_lambda.py"):
        lines = path.read_text().splitlines()
        stars = [i for i, line in enumerate(lines) if re.search(r'"Resource": "\*"', line)]
        assert stars, path
        for i in stars:
            above = lines[max(0, i - 8):i]
            assert any("# `*`:" in line for line in above), f"{path.name}:{i + 1}: a `*` without its reason"


def test_program_puts_the_function_in_the_private_subnets_with_the_directory(run_stack):
    """The real program: subnets, DC IPs, computer OU (DirectoryAdmin's), prefix (the launcher's)."""
    from pcluster_ad.lambda_src.directory_admin import computer_prefix

    g = run_stack()
    fn = g.named("join-function-fn").inputs
    env = fn["environment"]["variables"]
    assert fn["vpcConfig"]["subnetIds"] == g.outputs["privateSubnetIds"]
    assert fn["vpcConfig"]["securityGroupIds"] == ["<after-deploy:join-function-sg.id>"]
    assert env["DC_IPS"] == ",".join(g.outputs["directoryDnsIps"])
    assert env["COMPUTER_OU"] == g.outputs["computerOu"] == "OU=Computers,OU=pcluster-ad-dev,DC=test,DC=domain"
    assert env["COMPUTER_PREFIX"] == computer_prefix(g.outputs["clusterName"]) and env["LDAP_PORT"] == "389"
    sg = g.named("join-function-sg").inputs
    assert sg["vpcId"] == g.outputs["vpcId"] and sg["ingress"] == []
    assert {e["cidrBlocks"][0] for e in sg["egress"]} == {f"{ip}/32" for ip in g.outputs["directoryDnsIps"]} | {
        "0.0.0.0/0"}
    assert {"directory-ad", "network-vpc", "join-function-sg"} <= set(g.dependency_names(g.named("join-function-fn")))
    # Managed AD: the stack's OU under the delegated OU, as DirectoryAdmin has it.
    prod = run_stack(stack="prod")
    assert prod.named("join-function-fn").inputs["environment"]["variables"]["COMPUTER_OU"] == prod.outputs[
        "computerOu"] == "OU=Computers,OU=pcluster-ad-prod,OU=CORP,DC=corp,DC=example,DC=com"


def test_program_existing_directory_without_admin_uses_the_default_computers_container(run_stack):
    g = run_stack(lambda c: (c.__setitem__("pcluster-ad:directory", {
        "type": "Existing", "domainName": "corp.example.com", "shortName": "CORP",
        "dnsIps": ["10.0.0.10", "10.0.1.10"], "directoryId": "d-1234567890"}),
        c.__setitem__("pcluster-ad:join", {"user": "svc-join"}),
        c.pop("pcluster-ad:identity", None)),  # rfc2307 (the sample's) needs admin credentials
        secrets={"pcluster-ad:joinPassword": PASSWORD})
    env = g.named("join-function-fn").inputs["environment"]["variables"]
    assert "computerOu" not in g.outputs
    assert env["COMPUTER_OU"] == "CN=Computers,DC=corp,DC=example,DC=com"
    assert env["DC_IPS"] == "10.0.0.10,10.0.1.10"
    assert jh.load_settings({**env, "VPC_ID": VPC}).computer_ou == env["COMPUTER_OU"]  # VPC_ID: a placeholder
