"""Join function (lambda_src/join_handler.py) against moto's in-process AWS.

Every test runs with the root logger at DEBUG and the function's own logger captured; a
teardown check asserts that the join password is in no log record and in no non-200 body.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import botocore.endpoint
import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ReadTimeoutError
from moto import mock_aws

from lambda_src import join_handler as jh

ACCOUNT = "123456789012"  # moto's default account
OTHER_ACCOUNT = "111122223333"
CLUSTER = "hpc1"
DOMAIN = "test.domain"
JOIN_USER = "svc-join"
PASSWORD = "Pw-7f3c9e1a!Join-S3cret"  # must never show up outside a 200 body
NODE_ROLE = "hpc1-node-role"
PARAMS = {
    "DOMAIN_PARAMETER": "/pcluster-ad/test/domain",
    "JOIN_USER_PARAMETER": "/pcluster-ad/test/join-user",
    "JOIN_PASSWORD_PARAMETER": "/pcluster-ad/test/join-password",
}
NODE_ROLE_ID = "AROAEXAMPLENODEROLE01"  # offline tests only; moto makes its own ids
FORBIDDEN = {"error": "forbidden"}
INTERNAL = {"error": "internal error"}
TEST_LOG = logging.getLogger("test.join")


def node_event(
    instance_id: str, *, role: str = NODE_ROLE, role_id: str = NODE_ROLE_ID, account: str = ACCOUNT, **kwargs: Any
) -> dict[str, Any]:
    """The event Lambda builds for a request signed with an instance role's credentials."""
    return jh.function_url_event(
        user_arn=f"arn:aws:sts::{account}:assumed-role/{role}/{instance_id}",
        user_id=f"{role_id}:{instance_id}",
        account_id=account,
        request_id="req-1",
        **kwargs,
    )


# --- fixtures -------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def fake_aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """Fake credentials only; no profile, endpoint override or instance metadata."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")  # ~1 s per mock otherwise
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))


@pytest.fixture
def responses() -> list[dict[str, Any]]:
    return []


@pytest.fixture(autouse=True)
def no_secret_leaks(caplog: pytest.LogCaptureFixture, responses) -> Iterator[None]:
    """Capture every log record (root at DEBUG, and the function's own non-propagating
    logger); afterwards the password must be in none of them nor in any error body."""
    caplog.set_level(logging.DEBUG)
    jh.LOG.addHandler(caplog.handler)
    try:
        yield
    finally:
        jh.LOG.removeHandler(caplog.handler)
    for record in caplog.get_records("setup") + caplog.get_records("call"):
        assert PASSWORD not in record.getMessage(), record.name
    assert PASSWORD not in caplog.text
    for response in responses:
        if response["statusCode"] != 200:
            assert PASSWORD not in json.dumps(response)
            assert JOIN_USER not in json.dumps(response)


@dataclass
class World:
    """A moto account with the cluster's VPC, roles, instance profiles and SSM parameters."""

    clients: dict[str, Any]
    settings: jh.Settings
    vpc_id: str
    subnet_id: str
    other_subnet_id: str
    image_id: str
    node_profile_arn: str
    node_role_id: str
    other_role_id: str
    responses: list[dict[str, Any]]

    def launch(
        self, tags: dict[str, str] | None = None, *, subnet_id: str | None = None, profile_arn: str | None = "node"
    ) -> str:
        tags = {jh.CLUSTER_TAG: CLUSTER} if tags is None else tags
        kwargs: dict[str, Any] = {}
        if profile_arn:
            arn = self.node_profile_arn if profile_arn == "node" else profile_arn
            kwargs["IamInstanceProfile"] = {"Arn": arn}
        if tags:
            tag_list = [{"Key": k, "Value": v} for k, v in tags.items()]
            kwargs["TagSpecifications"] = [{"ResourceType": "instance", "Tags": tag_list}]
        reservation = self.clients["ec2"].run_instances(
            ImageId=self.image_id,
            MinCount=1,
            MaxCount=1,
            InstanceType="t3.micro",
            SubnetId=subnet_id or self.subnet_id,
            **kwargs,
        )
        return reservation["Instances"][0]["InstanceId"]

    def event(self, instance_id: str, **kwargs: Any) -> dict[str, Any]:
        return node_event(instance_id, **{"role_id": self.node_role_id, **kwargs})

    def call(self, event: Any, **clients: Any) -> dict[str, Any]:
        response = jh.handle(event, settings=self.settings, logger=TEST_LOG, **{**self.clients, **clients})
        self.responses.append(response)
        return response


@pytest.fixture
def world(responses) -> Iterator[World]:
    with mock_aws():  # entered before any client exists
        clients = jh.make_clients()  # the production retry/timeout config
        iam, ec2, ssm, kms = clients["iam"], clients["ec2"], clients["ssm"], boto3.client("kms")
        trust = json.dumps({"Version": "2012-10-17", "Statement": []})
        role_ids, profile_arns = {}, {}
        for role in (NODE_ROLE, "other-role"):
            role_ids[role] = iam.create_role(RoleName=role, Path="/parallelcluster/", AssumeRolePolicyDocument=trust)[
                "Role"
            ]["RoleId"]
            profile = iam.create_instance_profile(InstanceProfileName=f"{role}-profile", Path="/parallelcluster/")[
                "InstanceProfile"
            ]
            iam.add_role_to_instance_profile(InstanceProfileName=profile["InstanceProfileName"], RoleName=role)
            profile_arns[role] = profile["Arn"]
        vpc_id = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        other_vpc_id = ec2.create_vpc(CidrBlock="10.1.0.0/16")["Vpc"]["VpcId"]
        subnet = ec2.create_subnet(VpcId=vpc_id, CidrBlock="10.0.1.0/24")
        other = ec2.create_subnet(VpcId=other_vpc_id, CidrBlock="10.1.1.0/24")
        key_id = kms.create_key(Description="join")["KeyMetadata"]["KeyId"]
        kms.create_alias(AliasName="alias/pcluster-ad-test-join", TargetKeyId=key_id)
        ssm.put_parameter(Name=PARAMS["DOMAIN_PARAMETER"], Value=DOMAIN, Type="String")
        for name, value in (("JOIN_USER_PARAMETER", JOIN_USER), ("JOIN_PASSWORD_PARAMETER", PASSWORD)):
            ssm.put_parameter(Name=PARAMS[name], Value=value, Type="SecureString", KeyId="alias/pcluster-ad-test-join")
        env = {"CLUSTER_NAME": CLUSTER, "VPC_ID": vpc_id, **PARAMS}
        yield World(
            clients=clients,
            settings=jh.load_settings(env),
            vpc_id=vpc_id,
            subnet_id=subnet["Subnet"]["SubnetId"],
            other_subnet_id=other["Subnet"]["SubnetId"],
            image_id="ami-12c6146b",  # moto does not check that the AMI exists
            node_profile_arn=profile_arns[NODE_ROLE],
            node_role_id=role_ids[NODE_ROLE],
            other_role_id=role_ids["other-role"],
            responses=responses,
        )


class NoAws:
    """A client for requests that must be refused before any AWS call."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"unexpected AWS call {name}")  # handle() turns it into a 500


@pytest.fixture
def offline(responses) -> Callable[[Any], dict[str, Any]]:
    settings = jh.load_settings(full_env())

    def call(event: Any) -> dict[str, Any]:
        response = jh.handle(event, settings=settings, ec2=NoAws(), iam=NoAws(), ssm=NoAws(), logger=TEST_LOG)
        responses.append(response)
        return response

    return call


def body(response: dict[str, Any]) -> Any:
    return json.loads(response["body"])


def decisions(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """The function's log lines, each parsed as one JSON object."""
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "test.join"]


# --- allowed ----------------------------------------------------------------------------


def test_live_cluster_node_gets_exactly_the_join_credentials(world: World, caplog) -> None:
    instance_id = world.launch()
    response = world.call(world.event(instance_id))
    assert response["statusCode"] == 200
    assert response["headers"]["content-type"] == "application/json"
    assert response["headers"]["cache-control"] == "no-store"
    assert body(response) == {
        "domain": DOMAIN,
        "realm": "TEST.DOMAIN",
        "user": JOIN_USER,
        "password": PASSWORD,
    }
    [log] = decisions(caplog)
    assert log["decision"] == "allow" and log["status"] == 200
    assert log["instance_id"] == instance_id and log["caller_role"] == NODE_ROLE
    assert log["request_id"] == "req-1" and log["caller_account"] == ACCOUNT


@pytest.mark.parametrize(
    ("raw", "encoded"),
    [(None, False), ("", False), ("{}", False), (" { } ", False), (base64.b64encode(b"{}").decode(), True)],
)
def test_empty_or_empty_object_bodies_are_accepted(world: World, raw, encoded) -> None:
    event = world.event(world.launch())
    event.update(body=raw, isBase64Encoded=encoded)
    assert world.call(event)["statusCode"] == 200


def test_pending_instance_is_allowed(world: World) -> None:
    # moto reports new instances as running at once; relabel its real answer as pending.
    real_ec2 = world.clients["ec2"]

    class PendingEc2:
        def describe_instances(self, **kwargs: Any) -> dict[str, Any]:
            answer = real_ec2.describe_instances(**kwargs)
            answer["Reservations"][0]["Instances"][0]["State"] = {"Code": 0, "Name": "pending"}
            return answer

    response = world.call(world.event(world.launch()), ec2=PendingEc2())
    assert response["statusCode"] == 200


# --- forbidden (403, reason only in the log) --------------------------------------------


def assert_denied(call: Callable[[Any], dict[str, Any]], caplog, event: dict[str, Any], reason: str) -> None:
    response = call(event)
    assert response["statusCode"] == 403
    assert body(response) == FORBIDDEN
    [log] = decisions(caplog)
    assert log["decision"] == "deny" and log["status"] == 403
    assert reason in log["reason"]
    assert log["request_id"] == "req-1"


def test_untagged_instance_is_denied(world: World, caplog) -> None:
    assert_denied(world.call, caplog, world.event(world.launch(tags={})), "tag")


def test_instance_of_another_cluster_is_denied(world: World, caplog) -> None:
    instance_id = world.launch({jh.CLUSTER_TAG: "other-cluster"})
    assert_denied(world.call, caplog, world.event(instance_id), "'other-cluster'")


def test_instance_in_another_vpc_is_denied(world: World, caplog) -> None:
    instance_id = world.launch(subnet_id=world.other_subnet_id)
    assert_denied(world.call, caplog, world.event(instance_id), "VPC")


@pytest.mark.parametrize("action", ["stop_instances", "terminate_instances"])
def test_stopped_or_terminated_instance_is_denied(world: World, caplog, action) -> None:
    instance_id = world.launch()
    getattr(world.clients["ec2"], action)(InstanceIds=[instance_id])
    assert_denied(world.call, caplog, world.event(instance_id), "instance state is")


def test_spoofed_session_name_with_another_role_is_denied(world: World, caplog) -> None:
    # Anyone who may assume "other-role" can name the session after a node's instance id.
    instance_id = world.launch()
    event = world.event(instance_id, role="other-role", role_id=world.other_role_id)
    assert_denied(world.call, caplog, event, "not the instance role")


def test_other_account_role_with_the_same_name_is_denied(world: World, caplog) -> None:
    # Same role name and session name, but a role in the attacker's account.
    instance_id = world.launch()
    event = world.event(instance_id, account=OTHER_ACCOUNT, role_id="AROAOTHERACCOUNT0001")
    assert_denied(world.call, caplog, event, "account differs")


def test_user_arn_account_must_match_account_id(offline, caplog) -> None:
    event = node_event("i-0123456789abcdef0")
    event["requestContext"]["authorizer"]["iam"]["accountId"] = OTHER_ACCOUNT
    assert_denied(offline, caplog, event, "userArn account differs")


def test_older_role_with_the_same_name_is_denied(world: World, caplog) -> None:
    instance_id = world.launch()
    event = world.event(instance_id, role_id="AROAOLDROLE000000001")
    assert_denied(world.call, caplog, event, "role id")


def test_user_id_for_another_session_is_denied(offline, caplog) -> None:
    event = node_event("i-0123456789abcdef0")
    event["requestContext"]["authorizer"]["iam"]["userId"] = f"{NODE_ROLE_ID}:i-0123456789abcdef1"
    assert_denied(offline, caplog, event, "userId does not match")


@pytest.mark.parametrize("instance_id", ["i-0123456789abcdef0", "i-12345678"])
def test_nonexistent_instance_is_denied(world: World, caplog, instance_id) -> None:
    world.launch()
    assert_denied(world.call, caplog, world.event(instance_id), "instance not found")


@pytest.mark.parametrize("session", ["alice", "i-XYZ", "i-0123", "botocore-session-1"])
def test_session_name_that_is_no_instance_id_is_denied(offline, caplog, session) -> None:
    assert_denied(offline, caplog, node_event(session), "session name is not an instance id")


@pytest.mark.parametrize(
    ("user_arn", "user_id"),
    [
        (f"arn:aws:iam::{ACCOUNT}:user/alice", "AIDAEXAMPLEUSER00001"),
        (f"arn:aws:iam::{ACCOUNT}:root", ACCOUNT),
        (f"arn:aws:sts::{ACCOUNT}:federated-user/bob", f"{ACCOUNT}:bob"),
        ("not-an-arn", "x"),
    ],
)
def test_callers_that_are_no_assumed_role_session_are_denied(offline, caplog, user_arn, user_id) -> None:
    event = jh.function_url_event(user_arn=user_arn, user_id=user_id, account_id=ACCOUNT, request_id="req-1")
    assert_denied(offline, caplog, event, "not an assumed-role session")


def test_instance_without_instance_profile_is_denied(world: World, caplog) -> None:
    instance_id = world.launch(profile_arn=None)
    assert_denied(world.call, caplog, world.event(instance_id), "no instance profile")


def test_instance_profile_without_role_is_denied(world: World, caplog) -> None:
    instance_id = world.launch()
    world.clients["iam"].remove_role_from_instance_profile(
        InstanceProfileName=f"{NODE_ROLE}-profile", RoleName=NODE_ROLE
    )
    assert_denied(world.call, caplog, world.event(instance_id), "no single role")


def test_deleted_instance_profile_is_denied(world: World, caplog) -> None:
    instance_id = world.launch()
    iam = world.clients["iam"]
    iam.remove_role_from_instance_profile(InstanceProfileName=f"{NODE_ROLE}-profile", RoleName=NODE_ROLE)
    iam.delete_instance_profile(InstanceProfileName=f"{NODE_ROLE}-profile")
    assert_denied(world.call, caplog, world.event(instance_id), "instance profile not found")


# --- malformed requests (400 with a clear message) --------------------------------------


def _event_without(*path: str) -> Callable[[], Any]:
    def make() -> Any:
        event = node_event("i-0123456789abcdef0")
        target = event
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]
        return event

    return make


def _event_with(change: Callable[[dict[str, Any]], None]) -> Callable[[], Any]:
    def make() -> Any:
        event = node_event("i-0123456789abcdef0")
        change(event)
        return event

    return make


def _set_identity(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda e: e["requestContext"]["authorizer"]["iam"].__setitem__(key, value)


MALFORMED = {
    "not a dict": (lambda: ["version", "2.0"], "not a Lambda function URL event"),
    "None": (lambda: None, "not a Lambda function URL event"),
    "no version": (_event_without("version"), "payload format 2.0"),
    "no requestContext": (_event_without("requestContext"), "requestContext"),
    "no authorizer": (_event_without("requestContext", "authorizer"), "AWS_IAM"),
    "no iam": (_event_without("requestContext", "authorizer", "iam"), "AWS_IAM"),
    "no userArn": (_event_without("requestContext", "authorizer", "iam", "userArn"), "userArn"),
    "userId not a str": (_event_with(_set_identity("userId", 7)), "userId"),
    "bad accountId": (_event_with(_set_identity("accountId", "12345")), "accountId"),
    "GET": (_event_with(lambda e: e["requestContext"]["http"].update(method="GET")), "POST"),
    "no method": (_event_without("requestContext", "http"), "POST"),
    "invalid JSON": (_event_with(lambda e: e.update(body="{nope")), "not valid JSON"),
    "JSON list": (_event_with(lambda e: e.update(body="[]")), "empty or {}"),
    # The seed trusted an instance id in the body; here the body carries nothing.
    "instance in body": (
        _event_with(lambda e: e.update(body='{"instance": "i-0123456789abcdef0"}')),
        "empty or {}",
    ),
    "bad base64": (_event_with(lambda e: e.update(body="@@@", isBase64Encoded=True)), "base64"),
    "body not a str": (_event_with(lambda e: e.update(body={"a": 1})), "body must be a string"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_request_is_a_400_with_a_clear_message(offline, caplog, case) -> None:
    make, message = MALFORMED[case]
    response = offline(make())
    assert response["statusCode"] == 400
    assert message in body(response)["error"]
    [log] = decisions(caplog)
    assert log["decision"] == "bad-request" and message in log["reason"]


# --- configuration and AWS errors (5xx, nothing internal answered) ----------------------


@pytest.mark.parametrize("missing", ["JOIN_PASSWORD_PARAMETER", "DOMAIN_PARAMETER"])
def test_missing_parameter_is_a_logged_configuration_error(world: World, caplog, missing) -> None:
    instance_id = world.launch()
    world.clients["ssm"].delete_parameter(Name=PARAMS[missing])
    response = world.call(world.event(instance_id))
    assert response["statusCode"] == 500 and body(response) == INTERNAL
    [log] = decisions(caplog)
    assert log["decision"] == "error"
    assert log["reason"].startswith("configuration error") and PARAMS[missing] in log["reason"]
    assert JOIN_USER not in caplog.text


class _Raw:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.data


# (client, operation, status, content type, body) of a real throttling answer per protocol
THROTTLED = {
    "ec2": (
        "DescribeInstances",
        503,
        "text/xml",
        b"<Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>Request limit"
        b" exceeded.</Message></Error></Errors><RequestID>r1</RequestID></Response>",
    ),
    "iam": (
        "GetInstanceProfile",
        400,
        "text/xml",
        b"<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate"
        b" exceeded</Message></Error><RequestId>r1</RequestId></ErrorResponse>",
    ),
    "ssm": (
        "GetParameters",
        400,
        "application/x-amz-json-1.1",
        b'{"__type":"ThrottlingException","message":"Rate exceeded"}',
    ),
}


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """botocore's retry backoff delays, recorded instead of slept."""
    slept: list[float] = []
    monkeypatch.setattr(botocore.endpoint.time, "sleep", slept.append)
    return slept


def fail_first(
    world: World, service: str, times: int | None, answer: Exception | tuple[int, bytes] | None = None
) -> list[int]:
    """Answer the first `times` (None: all) HTTP requests of one operation before moto
    sees them: raise `answer`, or send it as (status, body); default: throttling."""
    operation, status, content_type, payload = THROTTLED[service]
    if isinstance(answer, tuple):
        status, payload = answer
    calls: list[int] = []

    def hook(request: Any, **_: Any) -> Any:
        calls.append(1)
        if times is not None and len(calls) > times:
            return None
        if isinstance(answer, Exception):
            raise answer
        return AWSResponse(request.url, status, {"content-type": content_type}, _Raw(payload))

    world.clients[service].meta.events.register_first(f"before-send.{service}.{operation}", hook)
    return calls


@pytest.mark.parametrize("service", THROTTLED)
def test_throttling_is_retried_with_backoff(world: World, sleeps, service) -> None:
    instance_id = world.launch()
    calls = fail_first(world, service, times=2)
    assert world.call(world.event(instance_id))["statusCode"] == 200
    assert len(calls) == 3 and len(sleeps) == 2


@pytest.mark.parametrize("service", THROTTLED)
def test_persistent_throttling_is_a_503(world: World, caplog, sleeps, service) -> None:
    instance_id = world.launch()
    calls = fail_first(world, service, times=None)
    response = world.call(world.event(instance_id))
    assert response["statusCode"] == 503 and body(response) == INTERNAL
    assert len(calls) == jh.MAX_ATTEMPTS
    [log] = decisions(caplog)
    assert log["decision"] == "error" and log["operation"] == THROTTLED[service][0]


def test_access_denied_is_a_500_without_internals(world: World, caplog, sleeps) -> None:
    instance_id = world.launch()
    denied = b'{"__type":"AccessDeniedException","message":"fn is not authorized"}'
    calls = fail_first(world, "ssm", times=None, answer=(400, denied))
    response = world.call(world.event(instance_id))
    assert response["statusCode"] == 500 and body(response) == INTERNAL
    assert len(calls) == 1  # not retried
    [log] = decisions(caplog)
    assert log["error_code"] == "AccessDeniedException" and "not authorized" not in caplog.text


def test_aws_unreachable_is_a_503(world: World, caplog, sleeps) -> None:
    instance_id = world.launch()
    timeout = ReadTimeoutError(endpoint_url="https://ec2.eu-west-1.amazonaws.com/")
    calls = fail_first(world, "ec2", times=None, answer=timeout)
    response = world.call(world.event(instance_id))
    assert response["statusCode"] == 503 and body(response) == INTERNAL
    assert len(calls) == jh.MAX_ATTEMPTS
    assert decisions(caplog)[0]["error_type"] == "ReadTimeoutError"


def test_unexpected_error_is_a_500_and_its_message_is_not_logged(world: World, caplog) -> None:
    class BrokenEc2:
        def describe_instances(self, **_: Any) -> Any:
            raise RuntimeError(f"bug that quotes a value: {PASSWORD}")

    response = world.call(world.event(world.launch()), ec2=BrokenEc2())
    assert response["statusCode"] == 500 and body(response) == INTERNAL
    [log] = decisions(caplog)
    assert log["error_type"] == "RuntimeError" and log["reason"] == "unexpected error"
    assert "describe_instances" in "".join(log["where"])  # where, not what


# --- logging ----------------------------------------------------------------------------


def test_botocore_wire_logging_is_held_above_debug() -> None:
    # Without this, botocore.parsers logs "Response body: ..." with the decrypted password.
    assert logging.getLogger("botocore.parsers").getEffectiveLevel() >= logging.INFO


def test_leak_check_would_catch_botocore_debug_bodies(world: World, caplog) -> None:
    """The guard above is what keeps the secret out: lift it and the body is logged."""
    botocore_log = logging.getLogger("botocore")
    previous = botocore_log.level
    botocore_log.setLevel(logging.DEBUG)
    try:
        world.call(world.event(world.launch()))
    finally:
        botocore_log.setLevel(previous)
    assert PASSWORD in caplog.text
    caplog.clear()  # keep the teardown leak check about the function itself


def test_handler_logs_one_json_object_per_line(world: World, monkeypatch) -> None:
    out = io.StringIO()
    monkeypatch.setattr(jh.LOG.handlers[0], "stream", out)
    monkeypatch.setattr(jh, "_settings", world.settings)
    monkeypatch.setattr(jh, "_clients", world.clients)
    good, bad = world.launch(), world.launch(tags={})
    for event in (world.event(good), world.event(bad), {"version": "1.0"}):
        world.responses.append(jh.handler(event, None))
    lines = out.getvalue().splitlines()
    assert PASSWORD not in out.getvalue()
    records = [json.loads(line) for line in lines]
    assert [r["decision"] for r in records] == ["allow", "deny", "bad-request"]
    for record in records[:2]:
        assert {"request_id", "instance_id", "caller_role", "decision", "reason"} <= set(record)


# --- settings and the Lambda entry point ------------------------------------------------


def full_env(**overrides: str) -> dict[str, str]:
    env = {"CLUSTER_NAME": CLUSTER, "VPC_ID": "vpc-0123456789abcdef0", **PARAMS}
    return {**env, **overrides}


def test_settings_from_a_valid_environment() -> None:
    settings = jh.load_settings(full_env())
    assert settings == jh.Settings(CLUSTER, "vpc-0123456789abcdef0", *PARAMS.values())


@pytest.mark.parametrize("variable", ["CLUSTER_NAME", "VPC_ID", *PARAMS])
def test_each_missing_setting_is_named(variable: str) -> None:
    env = full_env()
    del env[variable]
    with pytest.raises(jh.SettingsError, match=rf"\b{variable} is not set"):
        jh.load_settings(env)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("VPC_ID", "subnet-0123"),
        ("CLUSTER_NAME", "9-starts-with-digit"),
        ("CLUSTER_NAME", "under_score"),
        ("JOIN_PASSWORD_PARAMETER", "has space"),
    ],
)
def test_each_invalid_setting_is_named(variable: str, value: str) -> None:
    with pytest.raises(jh.SettingsError, match=rf"\b{variable}=") as error:
        jh.load_settings(full_env(**{variable: value}))
    assert [v for v in ["CLUSTER_NAME", "VPC_ID", *PARAMS] if v in str(error.value)] == [variable]


def test_all_missing_settings_are_named_at_once() -> None:
    with pytest.raises(jh.SettingsError) as error:
        jh.load_settings({})
    for variable in ["CLUSTER_NAME", "VPC_ID", *PARAMS]:
        assert variable in str(error.value)


def test_handler_validates_settings_before_doing_anything(monkeypatch) -> None:
    monkeypatch.setattr(jh, "_settings", None)
    monkeypatch.setattr(jh, "_clients", None)
    for variable, value in full_env(VPC_ID="nope").items():
        monkeypatch.setenv(variable, value)
    monkeypatch.setattr(jh, "make_clients", lambda: pytest.fail("clients before settings"))
    with pytest.raises(jh.SettingsError, match="VPC_ID"):
        jh.handler({}, None)


def test_handler_builds_settings_and_clients_once(world: World, monkeypatch) -> None:
    monkeypatch.setattr(jh, "_settings", None)
    monkeypatch.setattr(jh, "_clients", None)
    env = {"CLUSTER_NAME": CLUSTER, "VPC_ID": world.vpc_id, **PARAMS}
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    made: list[int] = []

    def make_clients() -> dict[str, Any]:
        made.append(1)
        return world.clients

    monkeypatch.setattr(jh, "make_clients", make_clients)
    instance_id = world.launch()
    for _ in range(2):
        response = jh.handler(world.event(instance_id), None)
        world.responses.append(response)
        assert response["statusCode"] == 200
    assert made == [1] and jh._settings == world.settings
