"""JoinSecrets and JoinFunction under Pulumi's mocks: names, secrets, key and IAM policies, graph.

program.py does not wire them yet, so a small local program builds both with fixed inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pulumi
import pulumi_aws as aws
import pytest

from components.join_function import JoinFunction, JoinFunctionArgs
from components.join_secrets import JoinSecrets, JoinSecretsArgs, principal_arn_patterns
from lambda_src import join_handler as jh
from tests.conftest import ROOT, dumps
from tools.mocks import (
    ACCOUNT_PLACEHOLDER,
    Graph,
    PlanMocks,
    is_secret_value,
    mask_secrets,
    run_program,
    unwrap_secrets,
)

PASSWORD = "J0in-Secret-Passw0rd!"
USER = "svc-join"
CLUSTER = "hpc"
VPC = "vpc-0123456789abcdef0"
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
                 max_answers: int = 2):
    def program() -> None:
        stack = pulumi.get_stack()
        tags = {"pcluster-ad:stack": stack}
        reader_role = role_name or f"pcluster-ad-{stack}-join-fn"
        secrets = JoinSecrets("join-secrets", JoinSecretsArgs(
            stack=stack, domain_name="test.domain", join_user=USER,
            join_password=pulumi.Output.secret(PASSWORD), reader_role_name=reader_role,
            deployer_principal_arns=deployer_principal_arns, tags=tags))
        fn = JoinFunction("join-function", JoinFunctionArgs(
            role_name=reader_role, cluster_name=CLUSTER, vpc_id=VPC,
            domain_parameter_name=secrets.domain_parameter_name,
            join_user_parameter_name=secrets.join_user_parameter_name,
            join_password_parameter_name=secrets.join_password_parameter_name,
            parameter_arns=secrets.parameter_arns, key_arn=secrets.key_arn, code_dir=code_dir,
            reserved_concurrency=reserved_concurrency, window_minutes=window_minutes, max_answers=max_answers,
            tags=tags))
        # Stands in for the cluster launcher: it takes `ready` as an input.
        aws.ssm.Parameter("launcher-stand-in", aws.ssm.ParameterArgs(type="String", insecure_value=fn.ready))
        pulumi.export("keyAlias", secrets.key_alias)
        pulumi.export("parameterArns", secrets.parameter_arns)
        pulumi.export("joinFunctionUrl", fn.function_url)
        pulumi.export("joinFunctionReady", fn.ready)
        pulumi.export("joinFunctionRoleArn", fn.role_arn)
        pulumi.export("joinInvokePolicyArn", fn.invoke_policy_arn)
        pulumi.export("joinWindowTable", fn.window_table_name)

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


ALLOWED_ROLE_ACTIONS = {"ssm:GetParameters", "ssm:GetParameter", "kms:Decrypt", "ec2:DescribeInstances",
                        "ec2:DescribeIamInstanceProfileAssociations", "iam:GetInstanceProfile",
                        "logs:CreateLogStream", "logs:PutLogEvents", "dynamodb:UpdateItem", "dynamodb:GetItem"}


def test_role_policy_is_least_privilege(g):
    doc = policy(g, "join-function-role-policy")
    for s in doc["Statement"]:
        actions, resources = as_list(s["Action"]), as_list(s["Resource"])
        assert s["Effect"] == "Allow" and set(actions) <= ALLOWED_ROLE_ACTIONS, s
        if "*" in resources:
            assert resources == ["*"] and set(actions) <= {"ec2:DescribeInstances",
                                                           "ec2:DescribeIamInstanceProfileAssociations"}, s
    by_sid = statements(doc)
    assert by_sid["ReadJoinParameters"]["Resource"] == PARAMETER_ARNS
    decrypt = by_sid["DecryptJoinParameters"]
    assert decrypt["Resource"] == [KEY_ARN]
    assert decrypt["Condition"] == {"StringEquals": {"kms:ViaService": "ssm.eu-west-1.amazonaws.com"}}
    assert by_sid["ReadInstanceProfiles"]["Resource"] == [f"arn:aws:iam::{ACCOUNT_PLACEHOLDER}:instance-profile/*"]
    assert by_sid["WriteOwnLogs"]["Resource"] == [f"{LOG_GROUP_ARN}:*"]
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
    assert fn["timeout"] == 60 and fn["reservedConcurrentExecutions"] == 10
    assert fn["role"] == "<after-deploy:join-function-role.arn>"
    assert fn["environment"]["variables"] == {
        "CLUSTER_NAME": CLUSTER, "VPC_ID": VPC,
        "DOMAIN_PARAMETER": "/pcluster-ad/dev/domain",
        "JOIN_USER_PARAMETER": "/pcluster-ad/dev/join-user",
        "JOIN_PASSWORD_PARAMETER": "/pcluster-ad/dev/join-password",
        "WINDOW_TABLE": f"{ROLE_NAME}-windows", "WINDOW_MINUTES": "45", "MAX_ANSWERS": "2",
    }
    assert fn["loggingConfig"] == {"logFormat": "Text", "logGroup": f"/aws/lambda/{ROLE_NAME}"}
    assert isinstance(fn["code"], pulumi.AssetArchive)
    assert sorted(fn["code"].assets) == ["join_handler.py"]  # not the directory-admin code beside it
    assert g.named("join-function-logs").inputs["retentionInDays"] == 30


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
