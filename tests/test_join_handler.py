"""Join function (lambda_src/join_handler.py) against moto's in-process AWS.

Every test runs with the root logger at DEBUG and the function's own logger captured; a
teardown check asserts that the adding account's password and every one-time password are in
no log record and in no non-200 body, and that the adding account's name and password are in no
answer at all; nor is any caller proof's token or signature, in a log or in any answer. The directory is a
recording stand-in for computer_account.create_computer (the real one talks LDAP and is proven in the AD lab,
tests/adlab); STS, which checks the caller proof, is `STS` (FakeSts) behind `verify_proof`, and
`sts_caller_identity` itself is tested with a stand-in `opener`. Time is the injected `now`, set relative to
moto's LaunchTime (the real time of run_instances).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import functools
import hashlib
import http.client
import io
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import boto3
import botocore.endpoint
import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError
from moto import mock_aws
from moto.dynamodb.models import DynamoDBBackend

from pcluster_ad.lambda_src import computer_account
from pcluster_ad.lambda_src import join_handler as jh

ACCOUNT = "123456789012"  # moto's default account
OTHER_ACCOUNT = "111122223333"
CLUSTER = "hpc1"
DOMAIN = "test.domain"
JOIN_USER = "svc-join"  # the computer-adding account: never leaves the function
PASSWORD = "Pw-7f3c9e1a!Join-S3cret"  # its password: never in a log or an answer
NODE_ROLE = "hpc1-node-role"
CLUSTER_PATH = f"/parallelcluster/{CLUSTER}/"  # where ParallelCluster creates the cluster's roles
TABLE = "pcluster-ad-test-join-fn-windows"
WINDOW_MINUTES = 30
MAX_ANSWERS = 3
DC_IPS = ("10.0.0.10", "10.0.0.11")
COMPUTER_OU = "OU=Computers,OU=hpc1,DC=test,DC=domain"
PREFIX = "HPC"
WINDOW_ENV = {"WINDOW_TABLE": TABLE, "WINDOW_MINUTES": str(WINDOW_MINUTES), "MAX_ANSWERS": str(MAX_ANSWERS)}
DIRECTORY_ENV = {"DC_IPS": ",".join(DC_IPS), "COMPUTER_OU": COMPUTER_OU, "COMPUTER_PREFIX": PREFIX}
PARAMS = {
    "DOMAIN_PARAMETER": "/pcluster-ad/test/domain",
    "JOIN_USER_PARAMETER": "/pcluster-ad/test/join-user",
    "JOIN_PASSWORD_PARAMETER": "/pcluster-ad/test/join-password",
}
NODE_ROLE_ID = "AROAEXAMPLENODEROLE01"  # offline tests only; moto makes its own ids
FORBIDDEN = {"error": "forbidden"}
# The 400 for a body without a caller proof: it names both bodies (JOIN_BODY, CLOSE_BODY).
NEEDS_PROOF = ('body must be {"proof": {...}} (join request) or {"joined": true, "computerName": "<NAME>",'
               ' "proof": {...}} (close request)')
PROOF_KEYS = "proof must hold exactly authorization, x-amz-date, x-amz-security-token (strings)"
INTERNAL = {"error": "internal error"}
TEST_LOG = logging.getLogger("test.join")
TEMPLATE_BUCKET = "pcluster-ad-test-templates"


@dataclass
class FakeSts:
    """Stands in for STS behind handle's `verify_proof(proof, now)`: it knows the proofs `issue` made (as STS
    knows the credentials that signed them) and answers their identity; any other proof, or one with a header
    changed, is refused as STS refuses a bad signature. Records every call; `failure` is raised by every call."""

    proofs: dict[str, tuple[dict[str, str], dict[str, str]]] = field(default_factory=dict)  # authorization ->
    calls: list[tuple[dict[str, str], float]] = field(default_factory=list)
    failure: Exception | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def issue(self, identity: dict[str, str], **headers: str) -> dict[str, str]:
        """The caller proof a session of `identity` makes (join-domain.sh's sts_proof): the three headers of a
        GetCallerIdentity request for STS in eu-west-1 that signs PROOF_SIGNED; `headers` replace some."""
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
        proof = {
            "authorization": f"AWS4-HMAC-SHA256 Credential=ASIA{digest[:16].upper()}/20261207/eu-west-1/sts/"
                             f"aws4_request, SignedHeaders={';'.join(SIGNED)}, Signature={digest}",
            "x-amz-date": "20261207T061237Z",
            "x-amz-security-token": f"IQoJb3JpZ2luX2VjE{digest[::-1]}SessionTokenOf{digest[:8]}",
            **{key.replace("_", "-"): value for key, value in headers.items()},
        }
        with self.lock:
            self.proofs[proof["authorization"]] = (dict(proof), dict(identity))
        return proof

    def __call__(self, proof: Any, now: float) -> dict[str, str]:
        with self.lock:
            self.calls.append((dict(proof), now))
        if self.failure is not None:
            raise self.failure
        issued, identity = self.proofs.get(proof.get("authorization"), (None, None))
        if issued != proof:
            raise jh._Refusal("STS refused the caller proof (HTTP 403)")
        return dict(identity)

    def secrets(self) -> list[str]:
        """What no log line and no answer may hold: every proof's token and signature."""
        return [proof[key] for proof, _ in self.proofs.values() for key in ("authorization", "x-amz-security-token")]


# The headers a caller proof must sign, written out (the handler's PROOF_SIGNED).
SIGNED = ("content-type", "host", "x-amz-date", "x-amz-security-token", "x-pcluster-ad-audience")
STS = FakeSts()  # emptied before each test (fake_sts)
ISSUED = object()  # node_event's default proof: STS.issue for the event's own identity


def node_identity(instance_id: str, role: str = NODE_ROLE, role_id: str = NODE_ROLE_ID,
                  account: str = ACCOUNT) -> dict[str, str]:
    """What STS (and Lambda's authorizer) say of a session of an instance role."""
    return {"userArn": f"arn:aws:sts::{account}:assumed-role/{role}/{instance_id}",
            "userId": f"{role_id}:{instance_id}", "accountId": account}


def proof_for(instance_id: str, role: str = NODE_ROLE, role_id: str = NODE_ROLE_ID,
              account: str = ACCOUNT) -> dict[str, str]:
    """The caller proof of that instance role session."""
    return STS.issue(node_identity(instance_id, role, role_id, account))


def identity_event(identity: dict[str, str], *, body: Any = None, proof: Any = ISSUED, **kwargs: Any
                   ) -> dict[str, Any]:
    """The event Lambda builds for a request signed as `identity`. A dict body (default: {}, the join request)
    gets the caller proof of the same identity merged in (`proof` instead, if given; None: no proof); any other
    body is sent as it is."""
    body = {} if body is None else body
    if isinstance(body, dict):
        proof = STS.issue(identity) if proof is ISSUED else proof
        body = json.dumps(body if proof is None else {**body, "proof": proof})
    return jh.function_url_event(user_arn=identity["userArn"], user_id=identity["userId"],
                                 account_id=identity["accountId"], request_id="req-1", body=body, **kwargs)


def node_event(
    instance_id: str, *, role: str = NODE_ROLE, role_id: str = NODE_ROLE_ID, account: str = ACCOUNT, **kwargs: Any
) -> dict[str, Any]:
    """The event Lambda builds for a request signed with an instance role's credentials, its body carrying the
    caller proof of the same session (see identity_event)."""
    return identity_event(node_identity(instance_id, role, role_id, account), **kwargs)


def close_body(name: str) -> dict[str, Any]:
    """A close request's body (node_event merges the caller proof in)."""
    return {"joined": True, "computerName": name}


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


@pytest.fixture(autouse=True)
def fake_sts(monkeypatch: pytest.MonkeyPatch) -> FakeSts:
    """STS knows no proof yet; and no test reaches the real STS (sts_caller_identity's default opener)."""
    STS.proofs.clear()
    STS.calls.clear()
    STS.failure = None

    def no_network(*_: Any, **__: Any) -> Any:
        raise AssertionError("a test sent a request to the real STS")  # handle() turns it into a 500

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    return STS


@pytest.fixture(autouse=True)
def fresh_template_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cluster's launch templates, instance profiles and the adding account's credentials are cached per
    container (module level): per test here."""
    monkeypatch.setattr(jh, "_templates", {"ids": frozenset(), "fetched": float("-inf")})
    monkeypatch.setattr(jh, "_profiles", {})
    monkeypatch.setattr(jh, "_credentials", {"values": None, "fetched": float("-inf")})


@dataclass
class FakeDirectory:
    """Stands in for computer_account.create_computer(directory, name, host_fqdn) -> (dn, password). Records
    every call; like a DC it refuses a second object of one name (AlreadyExists). `failures` are raised by the
    next calls, one each; `fail_always` by every call."""

    calls: list[tuple[computer_account.Directory, str, str]] = field(default_factory=list)
    created: dict[str, str] = field(default_factory=dict)  # name -> DN
    passwords: list[str] = field(default_factory=list)  # every one-time password handed out
    failures: list[Exception] = field(default_factory=list)
    fail_always: Exception | None = None
    during: Callable[[], None] | None = None  # runs inside the create (e.g. to look at the window item)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, directory: computer_account.Directory, name: str, host_fqdn: str) -> tuple[str, str]:
        with self.lock:
            self.calls.append((directory, name, host_fqdn))
            if self.during is not None:
                self.during()
            if self.fail_always is not None:
                raise self.fail_always
            if self.failures:
                raise self.failures.pop(0)
            dn = f"CN={name},{directory.computer_ou}"
            if name in self.created:
                raise computer_account.AlreadyExists(f"{dn} exists already: one computer object per instance")
            password = f"OneTime{len(self.passwords)}Pw{os.urandom(12).hex()}"
            self.created[name] = dn
            self.passwords.append(password)
            return dn, password


@pytest.fixture
def fake_dc() -> FakeDirectory:
    return FakeDirectory()


@pytest.fixture
def responses() -> list[dict[str, Any]]:
    return []


@pytest.fixture(autouse=True)
def no_secret_leaks(caplog: pytest.LogCaptureFixture, responses, fake_dc, fake_sts) -> Iterator[None]:
    """Capture every log record (root at DEBUG, and the function's own non-propagating
    logger); afterwards no password and no caller proof's token or signature may be in any of them, no
    password in any error body, and the adding account (name or password) and any caller proof's token or
    signature in no answer at all."""
    caplog.set_level(logging.DEBUG)
    jh.LOG.addHandler(caplog.handler)
    try:
        yield
    finally:
        jh.LOG.removeHandler(caplog.handler)
    check_no_leaks(caplog, responses, fake_dc)


def check_no_leaks(caplog: pytest.LogCaptureFixture, responses: list[dict[str, Any]], fake_dc: FakeDirectory
                   ) -> None:
    secrets = [PASSWORD, *fake_dc.passwords, *STS.secrets()]
    for record in caplog.get_records("setup") + caplog.get_records("call"):
        for secret in secrets:
            assert secret not in record.getMessage(), record.name
    for secret in secrets:
        assert secret not in caplog.text
    for response in responses:
        text = json.dumps(response)
        assert PASSWORD not in text  # not even in a 200 (issue 16)
        # The adding account's NAME only as the one service account a 200 names (nodes keep it from logging in).
        answer = json.loads(response["body"]) if response["statusCode"] == 200 else {}
        rest = {**response, "body": json.dumps({k: v for k, v in answer.items() if k != "serviceAccounts"})
                if answer else response["body"]}
        assert JOIN_USER not in json.dumps(rest)
        if "oneTimePassword" in answer:
            assert answer["serviceAccounts"] == [JOIN_USER]
        for secret in STS.secrets():  # the proof is the caller's; the function never answers it
            assert secret not in text and json.dumps(secret)[1:-1] not in text
        if response["statusCode"] != 200:
            for secret in fake_dc.passwords:
                assert secret not in text


def launch_template(**data: Any) -> dict[str, Any]:
    return {"Type": "AWS::EC2::LaunchTemplate",
            "Properties": {"LaunchTemplateData": {"InstanceType": "t3.micro", **data}}}


def create_cluster_stacks(cloudformation: Any, s3: Any) -> dict[str, str]:
    """What ParallelCluster's stack holds, as far as the function reads it: the cluster stack (stack name =
    cluster name) with a node launch template and a nested stack (a queue) with another; plus a stack of
    another cluster with its own. Returns the template ids by role."""
    s3.create_bucket(Bucket=TEMPLATE_BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    s3.put_object(Bucket=TEMPLATE_BUCKET, Key="queue.json",
                  Body=json.dumps({"Resources": {"QueueLaunchTemplate": launch_template()}}))
    cluster = {"Resources": {
        "NodeLaunchTemplate": launch_template(),
        "Queue1": {"Type": "AWS::CloudFormation::Stack",
                   "Properties": {"TemplateURL": f"https://{TEMPLATE_BUCKET}.s3.amazonaws.com/queue.json"}},
    }}
    cloudformation.create_stack(StackName=CLUSTER, TemplateBody=json.dumps(cluster))
    cloudformation.create_stack(StackName="other-cluster",
                                TemplateBody=json.dumps({"Resources": {"NodeLaunchTemplate": launch_template()}}))

    def resources(stack: str) -> dict[str, dict[str, str]]:
        return {r["LogicalResourceId"]: r for r in
                cloudformation.list_stack_resources(StackName=stack)["StackResourceSummaries"]}

    top = resources(CLUSTER)
    assert top["Queue1"]["ResourceType"] == "AWS::CloudFormation::Stack"  # moto nests it from S3
    return {
        "node": top["NodeLaunchTemplate"]["PhysicalResourceId"],
        "nested": resources(top["Queue1"]["PhysicalResourceId"])["QueueLaunchTemplate"]["PhysicalResourceId"],
        "other-stack": resources("other-cluster")["NodeLaunchTemplate"]["PhysicalResourceId"],
    }


@dataclass
class World:
    """A moto account with the cluster's VPC, roles, instance profiles, CloudFormation stacks and launch
    templates, SSM parameters and window table; the directory is `fake_dc`."""

    clients: dict[str, Any]
    settings: jh.Settings
    vpc_id: str
    subnet_id: str
    other_subnet_id: str
    image_id: str
    profile_arns: dict[str, str]  # by role name
    role_ids: dict[str, str]
    templates: dict[str, str]  # launch template id by role: node, nested, other-stack, hand
    responses: list[dict[str, Any]]
    fake_dc: FakeDirectory

    @property
    def node_profile_arn(self) -> str:
        return self.profile_arns[NODE_ROLE]

    @property
    def node_role_id(self) -> str:
        return self.role_ids[NODE_ROLE]

    @property
    def other_role_id(self) -> str:
        return self.role_ids["other-role"]

    def launch(
        self,
        tags: dict[str, str] | None = None,
        *,
        subnet_id: str | None = None,
        profile_arn: str | None = "node",
        template: str | None = "node",
    ) -> str:
        """Run an instance as ParallelCluster does: from the cluster stack's node launch template (EC2 then
        sets aws:ec2launchtemplate:id), with the cluster tag and the node instance profile."""
        tags = {jh.CLUSTER_TAG: CLUSTER} if tags is None else tags
        kwargs: dict[str, Any] = {}
        if profile_arn:
            arn = self.node_profile_arn if profile_arn == "node" else profile_arn
            kwargs["IamInstanceProfile"] = {"Arn": arn}
        if tags:
            tag_list = [{"Key": k, "Value": v} for k, v in tags.items()]
            kwargs["TagSpecifications"] = [{"ResourceType": "instance", "Tags": tag_list}]
        if template:
            kwargs["LaunchTemplate"] = {"LaunchTemplateId": self.templates.get(template, template)}
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

    def close_event(self, instance_id: str, **kwargs: Any) -> dict[str, Any]:
        """The close request naming the instance's own computer name."""
        return self.event(instance_id, body=close_body(self.name(instance_id)), **kwargs)

    def name(self, instance_id: str) -> str:
        return jh.computer_name(PREFIX, instance_id)

    def launch_time(self, instance_id: str) -> float:
        [reservation] = self.clients["ec2"].describe_instances(InstanceIds=[instance_id])["Reservations"]
        return reservation["Instances"][0]["LaunchTime"].timestamp()

    def minutes_after_launch(self, instance_id: str, minutes: float) -> Callable[[], float]:
        """A clock `minutes` after the instance's LaunchTime (moto: the real time of run_instances)."""
        launch = self.launch_time(instance_id)
        return lambda: launch + minutes * 60

    def call(self, event: Any, now: Callable[[], float] = time.time, **clients: Any) -> dict[str, Any]:
        clients.setdefault("create_computer", self.fake_dc)
        clients.setdefault("verify_proof", STS)
        response = jh.handle(event, settings=self.settings, logger=TEST_LOG, now=now, **{**self.clients, **clients})
        self.responses.append(response)
        return response

    def window(self, instance_id: str) -> dict[str, Any]:
        """The instance's window item, as plain values."""
        item = self.clients["dynamodb"].get_item(TableName=TABLE, Key={jh.WINDOW_KEY: {"S": instance_id}},
                                                 ConsistentRead=True).get("Item", {})
        return {k: next(iter(v.values())) for k, v in item.items()}


def create_window_table(dynamodb: Any) -> None:
    """The table JoinFunction creates, with the handler's own schema constants."""
    dynamodb.create_table(
        TableName=TABLE,
        BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": jh.WINDOW_KEY, "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": jh.WINDOW_KEY, "AttributeType": "S"}],
    )
    dynamodb.update_time_to_live(
        TableName=TABLE, TimeToLiveSpecification={"Enabled": True, "AttributeName": jh.TTL_ATTRIBUTE}
    )
    # The admission item as the first join of a deployment leaves it (no lease held), so that every request's
    # DynamoDB calls are the steady state's; the first join into an empty table is tests/test_join_admission.py's.
    dynamodb.put_item(TableName=TABLE, Item={jh.WINDOW_KEY: {"S": jh.ADMISSION_KEY}, "leases": {"M": {}}})


# Role name -> IAM path. ParallelCluster puts the cluster's node roles under /parallelcluster/<cluster>/.
ROLE_PATHS = {
    NODE_ROLE: CLUSTER_PATH,
    "other-role": CLUSTER_PATH,
    "unscoped-role": "/",  # made by anyone allowed to create roles
    "parallelcluster-role": "/parallelcluster/",  # ParallelCluster's own prefix, but no cluster
    "other-cluster-role": "/parallelcluster/other/",
    "prefix-cluster-role": f"/parallelcluster/{CLUSTER}x/",  # a cluster whose name starts like ours
}


@pytest.fixture
def world(responses, fake_dc) -> Iterator[World]:
    with moto_world(responses, fake_dc) as w:
        yield w


@contextlib.contextmanager
def moto_world(responses: list[dict[str, Any]], fake_dc: FakeDirectory) -> Iterator[World]:
    """The `world` fixture's account, for callers outside pytest too (bench/join_scale.py counts the handlers'
    calls in it); the caller provides what the autouse fixtures do (fake credentials, a fresh STS and caches)."""
    with mock_aws():  # entered before any client exists
        clients = jh.make_clients()  # the production retry/timeout config
        iam, ec2, ssm, kms = clients["iam"], clients["ec2"], clients["ssm"], boto3.client("kms")
        create_window_table(clients["dynamodb"])
        trust = json.dumps({"Version": "2012-10-17", "Statement": []})
        role_ids, profile_arns = {}, {}
        for role, path in ROLE_PATHS.items():
            role_ids[role] = iam.create_role(RoleName=role, Path=path, AssumeRolePolicyDocument=trust)["Role"]["RoleId"]
            profile = iam.create_instance_profile(InstanceProfileName=f"{role}-profile", Path=path)["InstanceProfile"]
            iam.add_role_to_instance_profile(InstanceProfileName=profile["InstanceProfileName"], RoleName=role)
            profile_arns[role] = profile["Arn"]
        templates = create_cluster_stacks(clients["cloudformation"], boto3.client("s3"))
        # Made by hand by someone who may create templates, tagged like the cluster's own: not the stack's.
        templates["hand"] = ec2.create_launch_template(
            LaunchTemplateName=f"{CLUSTER}-NodeLaunchTemplate",
            LaunchTemplateData={"InstanceType": "t3.micro", "IamInstanceProfile": {"Arn": profile_arns[NODE_ROLE]}},
            TagSpecifications=[{"ResourceType": "launch-template",
                                "Tags": [{"Key": jh.CLUSTER_TAG, "Value": CLUSTER}]}],
        )["LaunchTemplate"]["LaunchTemplateId"]
        vpc_id = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        other_vpc_id = ec2.create_vpc(CidrBlock="10.1.0.0/16")["Vpc"]["VpcId"]
        subnet = ec2.create_subnet(VpcId=vpc_id, CidrBlock="10.0.1.0/24")
        other = ec2.create_subnet(VpcId=other_vpc_id, CidrBlock="10.1.1.0/24")
        key_id = kms.create_key(Description="join")["KeyMetadata"]["KeyId"]
        kms.create_alias(AliasName="alias/pcluster-ad-test-join", TargetKeyId=key_id)
        ssm.put_parameter(Name=PARAMS["DOMAIN_PARAMETER"], Value=DOMAIN, Type="String")
        for name, value in (("JOIN_USER_PARAMETER", JOIN_USER), ("JOIN_PASSWORD_PARAMETER", PASSWORD)):
            ssm.put_parameter(Name=PARAMS[name], Value=value, Type="SecureString", KeyId="alias/pcluster-ad-test-join")
        env = {"CLUSTER_NAME": CLUSTER, "VPC_ID": vpc_id, **PARAMS, **WINDOW_ENV, **DIRECTORY_ENV}
        yield World(
            clients=clients,
            settings=jh.load_settings(env),
            vpc_id=vpc_id,
            subnet_id=subnet["Subnet"]["SubnetId"],
            other_subnet_id=other["Subnet"]["SubnetId"],
            image_id="ami-12c6146b",  # moto does not check that the AMI exists
            profile_arns=profile_arns,
            role_ids=role_ids,
            templates=templates,
            responses=responses,
            fake_dc=fake_dc,
        )


class NoAws:
    """A client for requests that must be refused before any AWS call."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"unexpected AWS call {name}")  # handle() turns it into a 500


def no_directory(*_: Any) -> Any:
    raise AssertionError("unexpected create_computer")  # handle() turns it into a 500


# For requests refused before anything is read or written: every AWS call and the directory fail the request.
NOTHING_REACHED = {"ec2": NoAws(), "iam": NoAws(), "ssm": NoAws(), "dynamodb": NoAws(), "cloudformation": NoAws(),
                   "create_computer": no_directory}
ALL_BUT_SSM = {k: v for k, v in NOTHING_REACHED.items() if k != "ssm"}  # for refused(), which sets ssm itself
# For requests the pre-check (one read of the claimed record, jh._refuse_finished) or STS refuses: no EC2, IAM,
# CloudFormation or directory call; dynamodb is a WindowReads.
NOT_ASKED = {k: v for k, v in ALL_BUT_SSM.items() if k != "dynamodb"}


def precheck_read(instance_id: str) -> dict[str, Any]:
    """The pre-check's one GetItem: the window record of the instance the event claims, eventually consistent."""
    return {"TableName": TABLE, "Key": {jh.WINDOW_KEY: {"S": instance_id}}}


class WindowReads:
    """dynamodb that answers GetItem only (from `real`, else as an absent record) and records every call; any
    other call (a write) fails the request with a 500. For requests that may cost the pre-check's read only."""

    def __init__(self, real: Any = None) -> None:
        self.real, self.calls = real, []

    def get_item(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        return self.real.get_item(**kwargs) if self.real is not None else {}

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"unexpected AWS call {name}")  # handle() turns it into a 500


class StalePreCheck:
    """dynamodb whose eventually consistent GetItem (the pre-check's) still answers the record as it was
    (`stale`, a raw item; None: not there yet), as DynamoDB may right after a write; consistent reads and writes
    go to `real`. The full path decides, with the record as it is."""

    def __init__(self, real: Any, stale: dict[str, Any] | None = None) -> None:
        self.real, self.stale, self.stale_reads = real, stale, []

    def get_item(self, **kwargs: Any) -> Any:
        if kwargs.get("ConsistentRead"):
            return self.real.get_item(**kwargs)
        self.stale_reads.append(kwargs)
        return {} if self.stale is None else {"Item": self.stale}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


@pytest.fixture
def offline(responses) -> Callable[[Any], dict[str, Any]]:
    settings = jh.load_settings(full_env())

    def call(event: Any, dynamodb: Any = None) -> dict[str, Any]:
        """No AWS call at all; `dynamodb` (a WindowReads) where the pre-check's one read is allowed."""
        response = jh.handle(
            event, settings=settings, ec2=NoAws(), iam=NoAws(), ssm=NoAws(), dynamodb=dynamodb or NoAws(),
            cloudformation=NoAws(), create_computer=no_directory, logger=TEST_LOG, verify_proof=STS,
        )
        responses.append(response)
        return response

    return call


def body(response: dict[str, Any]) -> Any:
    return json.loads(response["body"])


def decisions(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """The function's log lines, each parsed as one JSON object."""
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "test.join"]


# --- allowed ----------------------------------------------------------------------------


def test_live_cluster_node_gets_its_own_computer_object_and_one_time_password(world: World, caplog) -> None:
    instance_id = world.launch()
    response = world.call(world.event(instance_id))
    assert response["statusCode"] == 200
    assert response["headers"]["content-type"] == "application/json"
    assert response["headers"]["cache-control"] == "no-store"
    name = world.name(instance_id)
    [one_time] = world.fake_dc.passwords
    assert body(response) == {
        "domain": DOMAIN,
        "realm": "TEST.DOMAIN",
        "computerName": name,
        "hostFqdn": f"{name.lower()}.{DOMAIN}",
        "oneTimePassword": one_time,
        "serviceAccounts": [JOIN_USER],
    }
    # The directory got the adding account from SSM and the object's name from the instance id only.
    [(directory, created, host_fqdn)] = world.fake_dc.calls
    assert (created, host_fqdn) == (name, f"{name.lower()}.test.domain")
    assert directory == computer_account.Directory(
        dc_ips=DC_IPS, domain=DOMAIN, computer_ou=COMPUTER_OU, user=JOIN_USER, password=PASSWORD, port=389
    )
    [log] = decisions(caplog)
    assert log["decision"] == "allow" and log["status"] == 200
    assert log["instance_id"] == instance_id and log["caller_role"] == NODE_ROLE
    assert log["request_id"] == "req-1" and log["caller_account"] == ACCOUNT
    assert log["computer_name"] == name and log["computer_dn"] == f"CN={name},{COMPUTER_OU}"


def test_computer_name_is_the_prefix_and_the_instance_ids_hash() -> None:
    instance_id = "i-0123456789abcdef0"
    expected = (PREFIX + hashlib.sha256(instance_id.encode()).hexdigest()).upper()[:15]
    assert jh.computer_name(PREFIX, instance_id) == expected and len(expected) == 15
    assert jh.computer_name("ABCDEF", instance_id).startswith("ABCDEF")
    assert jh.computer_name(PREFIX, "i-0123456789abcdef1") != expected
    # The directory-admin function deletes the object under the same name.
    from pcluster_ad.lambda_src import directory_admin

    assert directory_admin.computer_name(PREFIX, instance_id) == expected


@pytest.mark.parametrize(
    ("domain", "user"),
    [(DOMAIN, "TEST\\svc-join"), (DOMAIN, f"{JOIN_USER}@TEST.DOMAIN"), (" Test.Domain ", f" {JOIN_USER} ")],
)
def test_directory_gets_the_bare_account_name_and_the_lower_case_domain(world: World, domain, user) -> None:
    ssm = world.clients["ssm"]
    ssm.put_parameter(Name=PARAMS["DOMAIN_PARAMETER"], Value=domain, Type="String", Overwrite=True)
    ssm.put_parameter(Name=PARAMS["JOIN_USER_PARAMETER"], Value=user, Type="SecureString", Overwrite=True,
                      KeyId="alias/pcluster-ad-test-join")
    instance_id = world.launch()
    answer = body(world.call(world.event(instance_id)))
    [(directory, _, host_fqdn)] = world.fake_dc.calls
    assert (directory.user, directory.domain, directory.password) == (JOIN_USER, DOMAIN, PASSWORD)
    assert (answer["domain"], answer["realm"]) == (DOMAIN, "TEST.DOMAIN")
    assert answer["hostFqdn"] == host_fqdn == f"{world.name(instance_id).lower()}.{DOMAIN}"


def test_directory_settings_reach_the_directory(world: World) -> None:
    world.settings = dataclasses.replace(world.settings, dc_ips=("10.9.9.9",), ldap_port=3268,
                                         computer_ou="OU=Nodes,DC=test,DC=domain")
    assert world.call(world.event(world.launch()))["statusCode"] == 200
    [(directory, _, _)] = world.fake_dc.calls
    assert (tuple(directory.dc_ips), directory.port, directory.computer_ou) == (
        ("10.9.9.9",), 3268, "OU=Nodes,DC=test,DC=domain")


@pytest.mark.parametrize("encoding", ["compact", "spaced", "base64"])
def test_a_join_body_with_the_caller_proof_is_accepted(world: World, encoding) -> None:
    instance_id = world.launch()
    proof = proof_for(instance_id, role_id=world.node_role_id)
    raw = json.dumps({"proof": proof}, separators=(",", ":"))
    event = world.event(instance_id)
    if encoding == "spaced":
        event.update(body=" \n" + json.dumps({"proof": proof}, indent=2) + "\n ")
    else:
        encoded = encoding == "base64"
        event.update(body=base64.b64encode(raw.encode()).decode() if encoded else raw, isBase64Encoded=encoded)
    assert world.call(event)["statusCode"] == 200
    assert [p for p, _ in STS.calls] == [proof]  # the proof STS was asked about is the body's


@pytest.mark.parametrize(
    ("raw", "encoded"),
    [(None, False), ("", False), ("{}", False), (" { } ", False), (base64.b64encode(b"{}").decode(), True)],
)
def test_the_former_empty_join_bodies_are_refused_without_a_proof(world: World, caplog, raw, encoded) -> None:
    instance_id = world.launch()
    event = world.event(instance_id)
    event.update(body=raw, isBase64Encoded=encoded)
    response = world.call(event, **NOTHING_REACHED)
    assert response["statusCode"] == 400 and NEEDS_PROOF in body(response)["error"]
    assert STS.calls == [] and world.window(instance_id) == {}


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


def test_make_clients_includes_cloudformation_with_the_retry_config() -> None:
    clients = jh.make_clients()
    assert set(clients) == {"ec2", "iam", "ssm", "dynamodb", "cloudformation"}
    for client in clients.values():
        assert client.meta.config.retries["total_max_attempts"] == jh.MAX_ATTEMPTS


# --- forbidden (403, reason only in the log) --------------------------------------------


def assert_denied(call: Callable[[Any], dict[str, Any]], caplog, event: dict[str, Any], reason: str) -> None:
    response = call(event)
    assert response["statusCode"] == 403
    assert body(response) == FORBIDDEN
    [log] = decisions(caplog)
    assert log["decision"] == "deny" and log["status"] == 403
    assert reason in log["reason"], log["reason"]
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
    identity = {**node_identity("i-0123456789abcdef0"), "accountId": OTHER_ACCOUNT}  # as STS says it
    reads = WindowReads()  # the claimed instance has no record: the pre-check's one read, then the full checks
    assert_denied(functools.partial(offline, dynamodb=reads), caplog, identity_event(identity),
                  "userArn account differs")
    assert reads.calls == [precheck_read("i-0123456789abcdef0")] and len(STS.calls) == 1


def test_older_role_with_the_same_name_is_denied(world: World, caplog) -> None:
    instance_id = world.launch()
    event = world.event(instance_id, role_id="AROAOLDROLE000000001")
    assert_denied(world.call, caplog, event, "role id")


def test_user_id_for_another_session_is_denied(offline, caplog) -> None:
    identity = {**node_identity("i-0123456789abcdef0"), "userId": f"{NODE_ROLE_ID}:i-0123456789abcdef1"}
    reads = WindowReads()  # only the pre-check's read, of the session name's record (not the userId's)
    assert_denied(functools.partial(offline, dynamodb=reads), caplog, identity_event(identity),
                  "userId does not match")
    assert reads.calls == [precheck_read("i-0123456789abcdef0")] and len(STS.calls) == 1


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
    event = identity_event({"userArn": user_arn, "userId": user_id, "accountId": ACCOUNT})
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


# --- the launch template: one of the cluster stack's own --------------------------------


def test_instance_not_launched_from_a_launch_template_is_denied(world: World, caplog) -> None:
    # Started by hand with the cluster's tag, VPC and instance profile: everything else holds.
    instance_id = world.launch(template=None)
    tags = world.clients["ec2"].describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    assert jh.LAUNCH_TEMPLATE_TAG not in {t["Key"] for t in tags.get("Tags", [])}
    assert_denied(world.call, caplog, world.event(instance_id), "not launched from a launch template")


@pytest.mark.parametrize("template", ["other-stack", "hand"])
def test_a_launch_template_outside_the_cluster_stack_is_denied(world: World, caplog, template) -> None:
    # "hand": created by hand, named and tagged like the cluster's, with the cluster's instance profile.
    instance_id = world.launch(template=template)
    assert_denied(world.call, caplog, world.event(instance_id),
                  f"launch template {world.templates[template]} is not one of cluster {CLUSTER}'s")


@pytest.mark.parametrize("template", ["node", "nested"])
def test_launch_templates_of_the_cluster_stack_and_its_nested_stacks_are_accepted(world: World, template) -> None:
    instance_id = world.launch(template=template)
    tags = world.clients["ec2"].describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    assert {"Key": jh.LAUNCH_TEMPLATE_TAG, "Value": world.templates[template]} in tags["Tags"]
    assert world.call(world.event(instance_id))["statusCode"] == 200


def test_without_the_cluster_stack_no_template_is_the_clusters(world: World, caplog) -> None:
    instance_id = world.launch()
    cloudformation = world.clients["cloudformation"]
    cloudformation.delete_stack(StackName=CLUSTER)
    with pytest.raises(cloudformation.exceptions.ClientError, match="does not exist"):
        cloudformation.list_stack_resources(StackName=CLUSTER)
    assert_denied(world.call, caplog, world.event(instance_id), "is not one of cluster")


def test_a_cloudformation_error_is_no_refusal(world: World, caplog, sleeps) -> None:
    # Only "stack does not exist" means "no templates"; anything else is an error, not a silent deny.
    instance_id = world.launch()
    denied = (b"<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code><Message>not authorized to"
              b" perform cloudformation:ListStackResources</Message></Error><RequestId>r1</RequestId></ErrorResponse>")
    calls = fail_first(world, "cloudformation", times=None, answer=(403, denied))
    response = world.call(world.event(instance_id))
    assert response["statusCode"] == 500 and body(response) == INTERNAL and len(calls) == 1
    [log] = decisions(caplog)
    assert (log["error_code"], log["operation"]) == ("AccessDenied", "ListStackResources")
    assert world.window(instance_id) == {}


class StubCloudFormation:
    """ListStackResources over stacks that a test changes (a cluster update adding a queue); records the
    stacks listed."""

    def __init__(self, stacks: dict[str, list[tuple[str, str]]]) -> None:
        self.stacks, self.listed = stacks, []

    def get_paginator(self, operation: str) -> Any:
        assert operation == "list_stack_resources"
        stub = self

        class Paginator:
            def paginate(self, *, StackName: str) -> list[dict[str, Any]]:
                stub.listed.append(StackName)
                resources = [{"ResourceType": kind, "PhysicalResourceId": physical}
                             for kind, physical in stub.stacks[StackName]]
                return [{"StackResourceSummaries": resources[:1]}, {"StackResourceSummaries": resources[1:]}]

        return Paginator()


def lt(template_id: str) -> tuple[str, str]:
    return ("AWS::EC2::LaunchTemplate", template_id)


def test_the_clusters_templates_are_cached_per_container(world: World) -> None:
    node, added = world.templates["node"], world.templates["hand"]
    cloudformation = StubCloudFormation({CLUSTER: [lt(node)]})
    nodes = [world.launch() for _ in range(4)]
    new_queue_node = world.launch(template="hand")  # from a template the stack gains later
    t0 = world.launch_time(nodes[0]) + 60

    def status(instance_id: str, seconds: float) -> int:
        return world.call(world.event(instance_id), now=lambda: t0 + seconds,
                          cloudformation=cloudformation)["statusCode"]

    assert status(nodes[0], 0) == 200 and cloudformation.listed == [CLUSTER]
    assert status(nodes[1], jh.TEMPLATE_CACHE_SECONDS - 1) == 200 and cloudformation.listed == [CLUSTER]
    # A template missing from the cache is looked up again, but not more often than every 30 s.
    cloudformation.stacks[CLUSTER].append(lt(added))
    miss = jh.TEMPLATE_MISS_REFRESH_SECONDS
    assert status(new_queue_node, 0) == 403 and cloudformation.listed == [CLUSTER]
    assert status(new_queue_node, miss - 1) == 403 and cloudformation.listed == [CLUSTER]
    assert status(new_queue_node, miss) == 200 and cloudformation.listed == [CLUSTER] * 2
    # A known template: served from the cache for TEMPLATE_CACHE_SECONDS after the last look-up, then read again.
    cloudformation.stacks[CLUSTER].remove(lt(node))
    assert status(nodes[2], miss + jh.TEMPLATE_CACHE_SECONDS - 1) == 200 and len(cloudformation.listed) == 2
    assert status(nodes[3], miss + jh.TEMPLATE_CACHE_SECONDS) == 403 and len(cloudformation.listed) == 3


def test_every_stack_nested_in_the_cluster_stack_is_read(world: World) -> None:
    queue = f"arn:aws:cloudformation:eu-west-1:{ACCOUNT}:stack/{CLUSTER}-Queue1-X/uuid"
    login = f"arn:aws:cloudformation:eu-west-1:{ACCOUNT}:stack/{CLUSTER}-Login-Y/uuid"
    cloudformation = StubCloudFormation({
        CLUSTER: [("AWS::CloudFormation::Stack", queue), ("AWS::IAM::Role", "r"), lt("lt-0000000000000000a")],
        queue: [("AWS::CloudFormation::Stack", login)],
        login: [lt(world.templates["hand"])],
    })
    response = world.call(world.event(world.launch(template="hand")), cloudformation=cloudformation)
    assert response["statusCode"] == 200
    assert sorted(cloudformation.listed) == sorted([CLUSTER, queue, login])


# --- join window (per instance, one object ever, closed for good) -------------------------


def refused(world: World, caplog, event: dict[str, Any], reason: str, **call: Any) -> dict[str, Any]:
    """Refused with a bare 403 at WARNING; the adding account was not even read (ssm would fail the
    call with a 500) and no object created; returns the decision's log line."""
    caplog.clear()
    creates = len(world.fake_dc.calls)
    response = world.call(event, ssm=NoAws(), **call)
    assert response["statusCode"] == 403 and body(response) == FORBIDDEN
    assert len(world.fake_dc.calls) == creates
    [record] = [r for r in caplog.records if r.name == "test.join"]
    assert record.levelno == logging.WARNING
    log = json.loads(record.getMessage())
    assert log["decision"] == "deny" and reason in log["reason"], log
    return log


def prechecked(world: World, caplog, event: dict[str, Any], reason: str, **call: Any) -> dict[str, Any]:
    """Refused (see refused) by the pre-check: one eventually consistent read of the record of the instance the
    event claims and nothing else; STS got no call, EC2, IAM and CloudFormation none either (they would fail the
    call with a 500), nothing was written. Returns the decision's log line."""
    claimed = event["requestContext"]["authorizer"]["iam"]["userArn"].rsplit("/", 1)[-1]
    sts_calls, reads = len(STS.calls), WindowReads(world.clients["dynamodb"])
    before = world.window(claimed)
    log = refused(world, caplog, event, reason, **{**NOT_ASKED, "dynamodb": reads, **call})
    assert len(STS.calls) == sts_calls and reads.calls == [precheck_read(claimed)]
    assert world.window(claimed) == before
    assert log["instance_id"] == claimed and "caller_arn" not in log and "computer_name" not in log
    return log


UNAVAILABLE = "no domain controller accepted the sealed LDAP bind: 10.0.0.10: TimeoutError"


def test_the_request_is_counted_before_the_object_is_created_and_then_the_record_has_no_ttl(
        world: World, caplog) -> None:
    instance_id = world.launch()
    now = world.minutes_after_launch(instance_id, 2)
    launch = now() - 120
    during_create: dict[str, Any] = {}
    world.fake_dc.during = lambda: during_create.update(world.window(instance_id))
    assert world.call(world.event(instance_id), now=now)["statusCode"] == 200
    assert during_create == {
        "instanceId": instance_id,
        "answers": "1",
        "launchTime": jh._iso(launch),
        jh.TTL_ATTRIBUTE: str(int(launch + WINDOW_MINUTES * 60 + 24 * 3600)),  # launch + window + 1 day
    }
    assert during_create["launchTime"].endswith("Z") and "T" in during_create["launchTime"]
    # Once the object exists the record lives as long as the instance: no TTL.
    assert world.window(instance_id) == {
        "instanceId": instance_id,
        "answers": "1",
        "launchTime": jh._iso(launch),
        "issuedAt": jh._iso(now()),
        "computerName": world.name(instance_id),
        "issuedRoleId": world.node_role_id,  # the close's fast path: the same role session closes
    }
    [log] = decisions(caplog)
    assert log["decision"] == "allow"
    assert (log["answers"], log["max_answers"], log["window_closed"], log["launched_minutes_ago"]) == (1, 3, False, 2)


def test_after_the_object_was_created_no_second_one_time_password_ever(world: World, caplog) -> None:
    instance_id = world.launch()
    assert world.call(world.event(instance_id), now=world.minutes_after_launch(instance_id, 2))["statusCode"] == 200
    item = world.window(instance_id)
    # A job on the node signs with the node role: refused, at WARNING, naming the instance; within the window,
    # after it, a month later.
    reason = ("computer object already created for this instance: a process on this node asked for a second"
              " one-time password")
    for minutes in (2, 3, WINDOW_MINUTES - 0.5, WINDOW_MINUTES + 1, 60 * 24 * 30):
        now = world.minutes_after_launch(instance_id, minutes)
        # The pre-check refuses it at the cost of one read: STS, EC2 and IAM are not asked.
        log = prechecked(world, caplog, world.event(instance_id), reason, now=now)
        assert log["issued_at"] == item["issuedAt"]
        # Where the pre-check's eventually consistent read does not see the record yet, the full path refuses it.
        stale = StalePreCheck(world.clients["dynamodb"])
        log = refused(world, caplog, world.event(instance_id), reason, now=now, dynamodb=stale)
        assert stale.stale_reads == [precheck_read(instance_id)]
        assert log["instance_id"] == instance_id and log["issued_at"] == item["issuedAt"]
        assert log["computer_name"] == world.name(instance_id) and log["answers"] == 1
    assert len(world.fake_dc.calls) == 1 and world.window(instance_id) == item  # a refusal counts nothing
    # The node that joined with it closes its window.
    response = world.call(world.close_event(instance_id), now=world.minutes_after_launch(instance_id, 3))
    assert response["statusCode"] == 200 and body(response) == {"closed": True}


def test_failed_attempts_are_retried_up_to_the_limit_then_refused(world: World, caplog) -> None:
    world.fake_dc.fail_always = computer_account.DirectoryUnavailable(UNAVAILABLE)
    instance_id = world.launch()
    now = world.minutes_after_launch(instance_id, 5)
    for answers in range(1, MAX_ANSWERS + 1):
        response = world.call(world.event(instance_id), now=now)
        assert response["statusCode"] == 503 and body(response) == INTERNAL
        item = world.window(instance_id)
        assert item["answers"] == str(answers) and "issuedAt" not in item and jh.TTL_ATTRIBUTE in item
    log = refused(world, caplog, world.event(instance_id), "join window exhausted: 3 of 3 answers given", now=now)
    assert (log["answers"], log["window_closed"], log["instance_id"]) == (3, False, instance_id)
    assert world.window(instance_id)["answers"] == "3" and len(world.fake_dc.calls) == MAX_ANSWERS
    # The node still closes its window (e.g. it joined otherwise); the close removes the TTL.
    response = world.call(world.close_event(instance_id), now=now)
    assert response["statusCode"] == 200 and body(response) == {"closed": True}
    assert jh.TTL_ATTRIBUTE not in world.window(instance_id)


def test_a_retry_after_a_directory_failure_gets_the_object(world: World) -> None:
    world.fake_dc.failures = [computer_account.DirectoryUnavailable(UNAVAILABLE)]
    instance_id = world.launch()
    assert world.call(world.event(instance_id))["statusCode"] == 503
    response = world.call(world.event(instance_id))
    assert response["statusCode"] == 200 and body(response)["oneTimePassword"] == world.fake_dc.passwords[0]
    item = world.window(instance_id)
    assert item["answers"] == "2" and "issuedAt" in item and jh.TTL_ATTRIBUTE not in item


def test_after_close_every_request_is_refused_forever(world: World, caplog) -> None:
    instance_id = world.launch()
    name = world.name(instance_id)
    joined_at = world.minutes_after_launch(instance_id, 3)
    assert world.call(world.event(instance_id), now=joined_at)["statusCode"] == 200
    caplog.clear()
    response = world.call(world.close_event(instance_id), now=joined_at)
    assert response["statusCode"] == 200 and body(response) == {"closed": True}
    [log] = decisions(caplog)
    assert log["decision"] == "close" and log["request"] == "close" and log["window_closed"] is True
    assert log["computer_name"] == name
    item = world.window(instance_id)
    assert item["closedAt"] == jh._iso(joined_at()) and item["computerName"] == name
    assert jh.TTL_ATTRIBUTE not in item  # kept while the instance lives (was 400 days)
    assert item["answers"] == "1" and "issuedAt" in item

    reason = "join window closed: a process on this node asked for the join secret after the join"
    for minutes in (3, 4, WINDOW_MINUTES - 0.5, WINDOW_MINUTES + 1, 60 * 24 * 30):
        now = world.minutes_after_launch(instance_id, minutes)
        # The pre-check refuses it at the cost of one read: STS, EC2 and IAM are not asked.
        log = prechecked(world, caplog, world.event(instance_id), reason, now=now)
        assert log["window_closed"] is True
        # Where the pre-check's eventually consistent read does not see the close yet, the full path refuses it.
        stale = StalePreCheck(world.clients["dynamodb"])
        log = refused(world, caplog, world.event(instance_id), reason, now=now, dynamodb=stale)
        assert stale.stale_reads == [precheck_read(instance_id)]
        assert log["instance_id"] == instance_id and log["window_closed"] is True
        assert log["closed_at"] == item["closedAt"] and log["computer_name"] == name
    # A second close changes nothing: refused by the pre-check, and by the full path where the read is stale.
    second = "join window closed: a second close request"
    assert prechecked(world, caplog, world.close_event(instance_id), second, now=joined_at)["window_closed"] is True
    log = refused(world, caplog, world.close_event(instance_id), second, now=joined_at,
                  dynamodb=StalePreCheck(world.clients["dynamodb"]))
    assert log["closed_at"] == item["closedAt"] and log["computer_name"] == name
    assert world.window(instance_id) == item and len(world.fake_dc.calls) == 1


def test_close_before_any_answer_closes_the_window(world: World, caplog) -> None:
    instance_id = world.launch()
    assert world.call(world.close_event(instance_id))["statusCode"] == 200
    item = world.window(instance_id)
    assert item["answers"] == "0" and item["computerName"] == world.name(instance_id)
    assert jh.TTL_ATTRIBUTE not in item and "issuedAt" not in item
    refused(world, caplog, world.event(instance_id), "join window closed")
    assert world.fake_dc.calls == []


@pytest.mark.parametrize("answered", [False, True])
@pytest.mark.parametrize("other", ["HPC1-NODE-01", "another instance's", "WRONG"])
def test_a_close_must_name_the_instances_own_computer_name(world: World, caplog, answered, other) -> None:
    instance_id = world.launch()
    if other == "another instance's":
        other = world.name("i-0123456789abcdef0")
    if answered:
        assert world.call(world.event(instance_id))["statusCode"] == 200
    before = world.window(instance_id)
    caplog.clear()
    response = world.call(world.event(instance_id, body=close_body(other)))
    assert response["statusCode"] == 400
    assert body(response) == {"error": f"computerName must be this instance's computer name {world.name(instance_id)}"}
    [log] = decisions(caplog)
    assert log["decision"] == "bad-request" and log["instance_id"] == instance_id
    assert world.window(instance_id) == before  # nothing closed, nothing written
    assert world.call(world.close_event(instance_id))["statusCode"] == 200


@pytest.mark.parametrize(("minutes", "status"), [(-1, 200), (0, 200), (29.9, 200), (30, 403), (600, 403)])
def test_a_launch_older_than_the_window_is_refused(world: World, caplog, minutes, status) -> None:
    instance_id = world.launch()
    now = world.minutes_after_launch(instance_id, minutes)
    if status == 200:
        assert world.call(world.event(instance_id), now=now)["statusCode"] == 200
        return
    log = refused(world, caplog, world.event(instance_id), "join window expired", now=now)
    assert log["launched_minutes_ago"] == minutes and log["answers"] == 0
    refused(world, caplog, world.close_event(instance_id), "join window expired", now=now)
    assert world.window(instance_id) == {}  # nothing written for a stale instance


def test_the_window_length_and_limit_come_from_the_settings(world: World, caplog) -> None:
    world.settings = dataclasses.replace(world.settings, window_minutes=10, max_answers=1)
    world.fake_dc.fail_always = computer_account.DirectoryUnavailable(UNAVAILABLE)
    instance_id = world.launch()
    assert world.call(world.event(instance_id), now=world.minutes_after_launch(instance_id, 9))["statusCode"] == 503
    refused(world, caplog, world.event(instance_id), "exhausted: 1 of 1")
    late = world.launch()
    refused(world, caplog, world.event(late), "window is 10 minutes", now=world.minutes_after_launch(late, 10))


class Restarted:
    """ec2 as after a stop and start: the instance's LaunchTime is `minutes` later (moto keeps the first)."""

    def __init__(self, ec2: Any, minutes: float) -> None:
        self.ec2, self.minutes = ec2, minutes

    def describe_instances(self, **kwargs: Any) -> dict[str, Any]:
        answer = self.ec2.describe_instances(**kwargs)
        for reservation in answer["Reservations"]:
            for instance in reservation["Instances"]:
                instance["LaunchTime"] += timedelta(minutes=self.minutes)
        return answer


@pytest.mark.parametrize("before", ["failed attempt", "object created", "closed"])
def test_a_record_of_another_launch_refuses_the_restarted_instance(world: World, caplog, before) -> None:
    instance_id = world.launch()
    if before == "failed attempt":
        world.fake_dc.failures = [computer_account.DirectoryUnavailable(UNAVAILABLE)]
        assert world.call(world.event(instance_id))["statusCode"] == 503
    elif before == "object created":
        assert world.call(world.event(instance_id))["statusCode"] == 200
    else:
        assert world.call(world.close_event(instance_id))["statusCode"] == 200
    item = world.window(instance_id)
    # Stopped and started an hour later; asking 2 minutes after the new launch, well within its window.
    restarted, now = Restarted(world.clients["ec2"], 60), world.minutes_after_launch(instance_id, 62)
    reason = f"the record of this instance was made for its launch at {item['launchTime']}"
    # The full path (the pre-check's eventually consistent read not seeing the record yet) names the launch.
    for event in (world.event(instance_id), world.close_event(instance_id)):
        stale = StalePreCheck(world.clients["dynamodb"])
        log = refused(world, caplog, event, reason, now=now, ec2=restarted, dynamodb=stale)
        assert log["launched_minutes_ago"] == 2 and stale.stale_reads == [precheck_read(instance_id)]
    # With the record seen, the pre-check refuses what the record alone refuses (an object created: a second
    # one-time password; closed: anything; the window of the record's launch is over: anything, attack review 2 of
    # issue 20), before STS, EC2 and IAM.
    precheck = {
        ("object created", "join"): "computer object already created for this instance",
        ("closed", "join"): "join window closed: a process on this node asked for the join secret after the join",
        ("closed", "close"): "join window closed: a second close request",
    }
    over = f"join window expired: the record was made for the launch at {item['launchTime']}"
    for kind, event in (("join", world.event(instance_id)), ("close", world.close_event(instance_id))):
        prechecked(world, caplog, event, precheck.get((before, kind), over), now=now)
    assert world.window(instance_id) == item and len(world.fake_dc.calls) == (before != "closed")


@pytest.fixture
def atomic_moto_updates(monkeypatch: pytest.MonkeyPatch) -> None:
    """DynamoDB applies a conditional update to an item atomically; in-process moto checks and
    writes without a lock, so threads could interleave inside it. Give it DynamoDB's guarantee."""
    lock = threading.Lock()
    original = DynamoDBBackend.update_item

    def update_item(self: Any, *args: Any, **kwargs: Any) -> Any:
        with lock:
            return original(self, *args, **kwargs)

    monkeypatch.setattr(DynamoDBBackend, "update_item", update_item)


def run_concurrently(world: World, instance_id: str, threads: int = 8, per_thread: int = 3) -> list[int]:
    start = threading.Barrier(threads)
    statuses: list[int] = []
    failures: list[BaseException] = []

    def run() -> None:
        try:
            start.wait(timeout=60)
            for _ in range(per_thread):
                statuses.append(world.call(world.event(instance_id))["statusCode"])
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert not failures and not any(w.is_alive() for w in workers)
    assert len(statuses) == threads * per_thread
    return statuses


@pytest.mark.parametrize("max_answers", [1, MAX_ANSWERS])
def test_concurrent_requests_never_exceed_the_limit(world: World, atomic_moto_updates, max_answers) -> None:
    world.settings = dataclasses.replace(world.settings, max_answers=max_answers)
    world.fake_dc.fail_always = computer_account.DirectoryUnavailable(UNAVAILABLE)  # every attempt counts, none ends
    instance_id = world.launch()
    statuses = run_concurrently(world, instance_id)
    assert statuses.count(503) == max_answers == len(world.fake_dc.calls)
    assert statuses.count(403) == len(statuses) - max_answers
    assert world.window(instance_id)["answers"] == str(max_answers)
    print(f"{len(statuses)} requests, limit {max_answers}: {statuses.count(503)} attempts")


@pytest.mark.parametrize("max_answers", [1, MAX_ANSWERS])
def test_concurrent_requests_get_one_object_and_one_password(world: World, atomic_moto_updates, max_answers) -> None:
    world.settings = dataclasses.replace(world.settings, max_answers=max_answers)
    instance_id = world.launch()
    statuses = run_concurrently(world, instance_id)
    assert statuses.count(200) == 1 and statuses.count(403) == len(statuses) - 1
    assert len(world.fake_dc.passwords) == 1 and list(world.fake_dc.created) == [world.name(instance_id)]
    assert 1 <= len(world.fake_dc.calls) <= max_answers
    assert world.window(instance_id)["answers"] == str(len(world.fake_dc.calls))


FOREIGN = {
    "other cluster tag": ({"tags": {jh.CLUSTER_TAG: "other-cluster"}}, {}, "'other-cluster'"),
    "untagged": ({"tags": {}}, {}, "tag"),
    "other VPC": ({"subnet_id": "other"}, {}, "VPC"),
    "another role's session": ({}, {"role": "other-role", "role_id": "other-role"}, "not the instance role"),
    "role outside the cluster path": ({"profile_arn": "unscoped-role"}, {"role": "unscoped-role",
                                                                          "role_id": "unscoped-role"}, "role path"),
    "no launch template": ({"template": None}, {}, "not launched from a launch template"),
    "hand-made launch template": ({"template": "hand"}, {}, "is not one of cluster"),
    "another stack's launch template": ({"template": "other-stack"}, {}, "is not one of cluster"),
}


NOT_NODES = {"other cluster tag", "untagged", "other VPC", "no launch template"}
# The stack is read right after the launch (a queue a cluster update adds may not show yet): marked until it may be
# read again.
NOT_NODES_YET = {"hand-made launch template", "another stack's launch template"}


@pytest.mark.parametrize("request_kind", ["close", "credentials"])
@pytest.mark.parametrize("case", FOREIGN)
def test_foreign_instances_are_refused_and_leave_no_window(world: World, caplog, case, request_kind) -> None:
    launch, caller, reason = FOREIGN[case]
    launch = dict(launch)
    if launch.get("subnet_id") == "other":
        launch["subnet_id"] = world.other_subnet_id
    if "profile_arn" in launch:
        launch["profile_arn"] = world.profile_arns[launch["profile_arn"]]
    caller = dict(caller)
    if "role_id" in caller:
        caller["role_id"] = world.role_ids[caller["role_id"]]
    instance_id = world.launch(**launch)
    event = world.close_event(instance_id, **caller) if request_kind == "close" else world.event(instance_id, **caller)
    before = int(time.time())
    log = refused(world, caplog, event, reason)
    after = int(time.time())
    assert "answers" not in log  # refused before the window is counted
    window = world.window(instance_id)
    if case in NOT_NODES | NOT_NODES_YET:  # what the instance decides: recorded for the role that asked
        marker = jh.NOT_A_NODE_ATTRIBUTE.format(role_id=world.node_role_id)
        assert set(window) == {jh.WINDOW_KEY, "notNodeReason", marker, jh.TTL_ATTRIBUTE}, window
        assert reason in window["notNodeReason"]
        seconds = jh.NOT_A_NODE_SECONDS if case in NOT_NODES else jh.TEMPLATE_MISS_REFRESH_SECONDS
        assert before + seconds <= int(window[marker]) <= after + seconds, (window, seconds)
    else:  # the caller's role: says nothing of the instance, nothing written
        assert window == {}


@pytest.mark.parametrize("action", ["stop_instances", "terminate_instances"])
def test_close_of_a_stopped_or_terminated_instance_without_an_object_is_refused(world: World, caplog,
                                                                                action) -> None:
    world.fake_dc.fail_always = computer_account.DirectoryUnavailable(UNAVAILABLE)
    instance_id = world.launch()
    assert world.call(world.event(instance_id))["statusCode"] == 503  # counted, no object
    getattr(world.clients["ec2"], action)(InstanceIds=[instance_id])
    refused(world, caplog, world.close_event(instance_id), "instance state is")
    assert "closedAt" not in world.window(instance_id)


@pytest.mark.parametrize("action", ["stop_instances", "terminate_instances"])
def test_a_close_after_the_object_was_issued_costs_no_ec2_or_iam_call(world: World, action) -> None:
    """Issue 20: the close of the role session the object went to is decided from the record (its only effect is
    bookkeeping: a second password is refused anyway); even a stopped node's stolen credentials gain nothing."""
    instance_id = world.launch()
    assert world.call(world.event(instance_id))["statusCode"] == 200
    getattr(world.clients["ec2"], action)(InstanceIds=[instance_id])
    response = world.call(world.close_event(instance_id), ec2=NoAws(), iam=NoAws(), cloudformation=NoAws())
    assert response["statusCode"] == 200 and "closedAt" in world.window(instance_id)


def test_a_close_by_another_role_session_takes_the_full_checks(world: World, caplog) -> None:
    """A session of another role (even one named after the instance) is not the one the object went to: EC2 and
    IAM decide, and refuse it."""
    instance_id = world.launch()
    assert world.call(world.event(instance_id))["statusCode"] == 200
    event = world.event(instance_id, body=close_body(world.name(instance_id)), role="other-role",
                        role_id=world.other_role_id)
    refused(world, caplog, event, "caller role is not the instance role")
    assert "closedAt" not in world.window(instance_id)


@pytest.mark.parametrize("role", [r for r, path in ROLE_PATHS.items() if path != CLUSTER_PATH])
def test_a_role_outside_the_clusters_iam_path_is_refused(world: World, caplog, role) -> None:
    # Anyone with ec2:CreateTags, RunInstances and PassRole can tag an instance into the cluster;
    # only ParallelCluster creates its roles under /parallelcluster/<cluster>/.
    instance_id = world.launch(profile_arn=world.profile_arns[role])
    event = world.event(instance_id, role=role, role_id=world.role_ids[role])
    log = refused(world, caplog, event, f"instance role path is {ROLE_PATHS[role]!r}")
    assert CLUSTER_PATH in log["reason"]


def test_old_item_is_read_back_when_the_failure_does_not_carry_it(world: World, caplog) -> None:
    # ReturnValuesOnConditionCheckFailure=ALL_OLD is what a current DynamoDB does; without the
    # item in the error the handler reads it, so the log still tells a closed window apart.
    real = world.clients["dynamodb"]

    class NoOldItem:
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        reads: list[dict[str, Any]] = []

        def get_item(self, **kwargs: Any) -> Any:
            self.reads.append(kwargs)
            # The pre-check's eventually consistent read does not see the close yet: the full path decides.
            return real.get_item(**kwargs) if kwargs.get("ConsistentRead") else {}

        def update_item(self, **kwargs: Any) -> Any:
            try:
                return real.update_item(**kwargs)
            except real.exceptions.ConditionalCheckFailedException as exc:
                assert "Item" in exc.response
                del exc.response["Item"]
                raise

    instance_id = world.launch()
    assert world.call(world.close_event(instance_id))["statusCode"] == 200
    dynamodb = NoOldItem()
    log = refused(world, caplog, world.event(instance_id), "join window closed", dynamodb=dynamodb)
    assert log["closed_at"] == world.window(instance_id)["closedAt"] and log["computer_name"] == world.name(instance_id)
    # The pre-check's read, then the read back after the refused update.
    assert dynamodb.reads == [precheck_read(instance_id), {**precheck_read(instance_id), "ConsistentRead": True}]


def test_the_attempt_is_counted_before_the_adding_account_is_read(world: World, caplog) -> None:
    instance_id = world.launch()
    world.clients["ssm"].delete_parameter(Name=PARAMS["JOIN_PASSWORD_PARAMETER"])
    assert world.call(world.event(instance_id))["statusCode"] == 500
    assert world.window(instance_id)["answers"] == "1" and world.fake_dc.calls == []


# --- the directory's answers ------------------------------------------------------------

DIRECTORY_ERRORS = {
    "object exists": (computer_account.AlreadyExists(f"CN=X,{COMPUTER_OU} exists already: one computer object"
                                                     " per instance"), 403, FORBIDDEN, "deny", "exists already"),
    "no DC reachable": (computer_account.DirectoryUnavailable(UNAVAILABLE), 503, INTERNAL, "error",
                        "directory unreachable"),
    "add refused": (computer_account.ComputerAccountError(f"cannot create CN=X,{COMPUTER_OU}: constraintViolation"),
                    500, INTERNAL, "error", "computer object not created"),
}


@pytest.mark.parametrize("case", DIRECTORY_ERRORS)
def test_directory_errors_are_answered_without_a_password(world: World, caplog, case) -> None:
    error, status, answer, decision, reason = DIRECTORY_ERRORS[case]
    world.fake_dc.failures = [error]
    instance_id = world.launch()
    response = world.call(world.event(instance_id))
    assert response["statusCode"] == status and body(response) == answer
    [record] = [r for r in caplog.records if r.name == "test.join"]
    assert record.levelno == (logging.WARNING if status == 403 else logging.ERROR)
    log = json.loads(record.getMessage())
    assert log["decision"] == decision and reason in log["reason"]
    assert log["computer_name"] == world.name(instance_id)
    if status == 403:
        assert world.name(instance_id) in log["reason"]
    else:
        assert log["error"] == str(error)
    item = world.window(instance_id)
    assert item["answers"] == "1" and "issuedAt" not in item and jh.TTL_ATTRIBUTE in item


def test_an_unexpected_directory_error_is_a_500_and_its_message_is_not_logged(world: World, caplog) -> None:
    world.fake_dc.failures = [RuntimeError(f"bug that quotes a value: {PASSWORD}")]
    response = world.call(world.event(world.launch()))
    assert response["statusCode"] == 500 and body(response) == INTERNAL
    [log] = decisions(caplog)
    assert log["error_type"] == "RuntimeError" and log["reason"] == "unexpected error"
    assert "_new_computer" in "".join(log["where"])


@pytest.mark.parametrize("failure", ["ThrottlingException", "ReadTimeoutError"])
def test_a_failed_record_after_the_create_still_answers_the_password(world: World, caplog, sleeps, failure) -> None:
    # The count passes, the object is created, recording it is throttled: the object exists and only this answer
    # carries its password, so it is answered (the failure logged); the directory refuses a second object of the
    # name, so a retry gets nothing.
    instance_id = world.launch()
    timeout = ReadTimeoutError(endpoint_url="https://dynamodb.eu-west-1.amazonaws.com/")
    answer = timeout if failure == "ReadTimeoutError" else None
    # The admission lease's UpdateItem and the count pass; the issued record's fails.
    calls = fail_first(world, "dynamodb", times=jh.MAX_ATTEMPTS, skip=2, answer=answer)
    response = world.call(world.event(instance_id))
    assert len(calls) == 2 + jh.MAX_ATTEMPTS
    assert response["statusCode"] == 200
    assert body(response)["oneTimePassword"] == world.fake_dc.passwords[0]
    assert list(world.fake_dc.created) == [world.name(instance_id)]
    [log] = decisions(caplog)
    assert log["decision"] == "allow" and log["record_error"] == failure
    assert log["computer_dn"] == world.fake_dc.created[world.name(instance_id)]
    assert "issuedAt" not in world.window(instance_id)
    caplog.clear()
    response = world.call(world.event(instance_id))
    assert response["statusCode"] == 403
    assert "exists already" in decisions(caplog)[0]["reason"] and len(world.fake_dc.passwords) == 1


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
    "JSON list": (_event_with(lambda e: e.update(body="[]")), NEEDS_PROOF),
    # The seed trusted an instance id in the body; here the body carries nothing but the caller proof.
    "instance in body": (
        _event_with(lambda e: e.update(body='{"instance": "i-0123456789abcdef0"}')),
        NEEDS_PROOF,
    ),
    "instance in body, with the proof": (
        lambda: node_event("i-0123456789abcdef0", body={"instance": "i-0123456789abcdef0"}),
        'exactly {"joined": true, "computerName": "<NAME>", "proof": {...}}',
    ),
    "bad base64": (_event_with(lambda e: e.update(body="@@@", isBase64Encoded=True)), "base64"),
    "other object": (_event_with(lambda e: e.update(body='{"a": 1}')), NEEDS_PROOF),
    "other object, with the proof": (lambda: node_event("i-0123456789abcdef0", body={"a": 1}),
                                     '{"joined": true, "computerName": "<NAME>", "proof": {...}}'),
    "JSON string": (_event_with(lambda e: e.update(body='"joined"')), "close request"),
    "body not a str": (_event_with(lambda e: e.update(body={"a": 1})), "body must be a string"),
}


def _close_body(body: str) -> Callable[[], Any]:
    """A malformed close body, with a valid caller proof merged in: the test is about the close fields."""
    return lambda: node_event("i-0123456789abcdef0", body=json.loads(body))


EXACT_CLOSE = 'exactly {"joined": true, "computerName": "<NAME>", "proof": {...}}'
BAD_NAME = "computerName must be 1-15 letters, digits or '-'"
MALFORMED.update({
    "close, joined false": (_close_body('{"joined": false, "computerName": "NODE1"}'), EXACT_CLOSE),
    "close, joined a string": (_close_body('{"joined": "true", "computerName": "NODE1"}'), EXACT_CLOSE),
    "close, joined 1": (_close_body('{"joined": 1, "computerName": "NODE1"}'), EXACT_CLOSE),
    "close, no name": (_close_body('{"joined": true}'), EXACT_CLOSE),
    "close, name only": (_close_body('{"computerName": "NODE1"}'), EXACT_CLOSE),
    "close, extra key": (_close_body('{"joined": true, "computerName": "NODE1", "instance": "i-1"}'), EXACT_CLOSE),
    "close, empty name": (_close_body('{"joined": true, "computerName": ""}'), BAD_NAME),
    "close, 16 chars": (_close_body('{"joined": true, "computerName": "ABCDEFGHIJKLMNOP"}'), BAD_NAME),
    "close, leading -": (_close_body('{"joined": true, "computerName": "-NODE1"}'), BAD_NAME),
    "close, trailing -": (_close_body('{"joined": true, "computerName": "NODE1-"}'), BAD_NAME),
    "close, underscore": (_close_body('{"joined": true, "computerName": "NODE_1"}'), BAD_NAME),
    "close, dot": (_close_body('{"joined": true, "computerName": "node1.test.domain"}'), BAD_NAME),
    "close, number": (_close_body('{"joined": true, "computerName": 12}'), BAD_NAME),
    "close, newline": (_close_body('{"joined": true, "computerName": "NODE1\\n"}'), BAD_NAME),
})


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_request_is_a_400_with_a_clear_message(offline, caplog, case) -> None:
    make, message = MALFORMED[case]
    response = offline(make())
    assert response["statusCode"] == 400
    assert message in body(response)["error"]
    [log] = decisions(caplog)
    assert log["decision"] == "bad-request" and message in log["reason"]
    assert STS.calls == []  # refused before the proof is even sent to STS


# --- configuration and AWS errors (5xx, nothing internal answered) ----------------------


@pytest.mark.parametrize("missing", list(PARAMS))
def test_missing_parameter_is_a_logged_configuration_error(world: World, caplog, missing) -> None:
    instance_id = world.launch()
    world.clients["ssm"].delete_parameter(Name=PARAMS[missing])
    response = world.call(world.event(instance_id))
    assert response["statusCode"] == 500 and body(response) == INTERNAL
    [log] = decisions(caplog)
    assert log["decision"] == "error"
    assert log["reason"].startswith("configuration error") and PARAMS[missing] in log["reason"]
    assert JOIN_USER not in caplog.text and world.fake_dc.calls == []


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
    "cloudformation": (
        "ListStackResources",
        400,
        "text/xml",
        b"<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate"
        b" exceeded</Message></Error><RequestId>r1</RequestId></ErrorResponse>",
    ),
    "dynamodb": (
        "UpdateItem",
        400,
        "application/x-amz-json-1.0",
        b'{"__type":"com.amazonaws.dynamodb.v20120810#ThrottlingException","message":"Rate exceeded"}',
    ),
    "ssm": (
        "GetParameters",
        400,
        "application/x-amz-json-1.1",
        b'{"__type":"ThrottlingException","message":"Rate exceeded"}',
    ),
}
# Further requests of the operation in one allowed request: the record of the created object (UpdateItem),
# the nested stack's resources (ListStackResources).
# The calls of the throttled operation after the throttled one: UpdateItem is first the admission lease's (issue 20),
# then the window's count, then the issued record.
LATER_CALLS = {"dynamodb": 2, "cloudformation": 1}


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """botocore's retry backoff delays, recorded instead of slept."""
    slept: list[float] = []
    monkeypatch.setattr(botocore.endpoint.time, "sleep", slept.append)
    return slept


def fail_first(
    world: World, service: str, times: int | None, answer: Exception | tuple[int, bytes] | None = None, skip: int = 0
) -> list[int]:
    """Answer `times` (None: all) HTTP requests of one operation, after the first `skip`, before moto
    sees them: raise `answer`, or send it as (status, body); default: throttling."""
    operation, status, content_type, payload = THROTTLED[service]
    if isinstance(answer, tuple):
        status, payload = answer
    calls: list[int] = []

    def hook(request: Any, **_: Any) -> Any:
        calls.append(1)
        if len(calls) <= skip or (times is not None and len(calls) > skip + times):
            return None
        if isinstance(answer, Exception):
            raise answer
        url = request.url
        # botocore calls every before-send handler and takes the first answer: without this, moto would
        # carry the request out as well (a "throttled" UpdateItem would still count).
        request.url = "https://answered-by-the-test.invalid/"
        return AWSResponse(url, status, {"content-type": content_type}, _Raw(payload))

    world.clients[service].meta.events.register_first(f"before-send.{service}.{operation}", hook)
    return calls


@pytest.mark.parametrize("service", THROTTLED)
def test_throttling_is_retried_with_backoff(world: World, sleeps, service) -> None:
    instance_id = world.launch()
    calls = fail_first(world, service, times=2)
    assert world.call(world.event(instance_id))["statusCode"] == 200
    assert len(calls) == 3 + LATER_CALLS.get(service, 0) and len(sleeps) == 2
    assert world.window(instance_id)["answers"] == "1"  # the throttled attempts were not carried out


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


def test_leak_check_would_catch_a_one_time_password_in_a_log(world: World, caplog) -> None:
    """The teardown check knows the fake directory's passwords: a log line with the answer would fail it."""
    answer = body(world.call(world.event(world.launch())))
    TEST_LOG.info(json.dumps(answer))
    assert world.fake_dc.passwords == [answer["oneTimePassword"]]
    assert answer["oneTimePassword"] in caplog.text
    caplog.clear()


@pytest.fixture
def default_directory(monkeypatch: pytest.MonkeyPatch, world: World) -> None:
    """`handler` calls `handle` with its default create_computer (the LDAP one): the fake instead."""
    monkeypatch.setitem(jh.handle.__kwdefaults__, "create_computer", world.fake_dc)
    monkeypatch.setitem(jh.handle.__kwdefaults__, "verify_proof", STS)


def test_handler_logs_one_json_object_per_line(world: World, monkeypatch, default_directory) -> None:
    out = io.StringIO()
    monkeypatch.setattr(jh.LOG.handlers[0], "stream", out)
    monkeypatch.setattr(jh, "_settings", world.settings)
    monkeypatch.setattr(jh, "_clients", world.clients)
    good, bad = world.launch(), world.launch(tags={})
    for event in (world.event(good), world.event(bad), {"version": "1.0"}):
        world.responses.append(jh.handler(event, None))
    lines = out.getvalue().splitlines()
    assert PASSWORD not in out.getvalue() and world.fake_dc.passwords[0] not in out.getvalue()
    records = [json.loads(line) for line in lines]
    assert [r["decision"] for r in records] == ["allow", "deny", "bad-request"]
    for record in records[:2]:
        assert {"request_id", "instance_id", "caller_role", "decision", "reason"} <= set(record)
    # The window state and the object of an allowed request
    assert {"answers", "max_answers", "window_closed", "launched_minutes_ago", "computer_name",
            "computer_dn"} <= set(records[0])


# --- settings and the Lambda entry point ------------------------------------------------


ALL_VARIABLES = ["CLUSTER_NAME", "VPC_ID", *PARAMS, *WINDOW_ENV, *DIRECTORY_ENV]
NAMED_VARIABLES = [*ALL_VARIABLES, "LDAP_PORT"]


def full_env(**overrides: str) -> dict[str, str]:
    env = {"CLUSTER_NAME": CLUSTER, "VPC_ID": "vpc-0123456789abcdef0", **PARAMS, **WINDOW_ENV, **DIRECTORY_ENV}
    return {**env, **overrides}


def test_settings_from_a_valid_environment() -> None:
    settings = jh.load_settings(full_env())
    assert settings == jh.Settings(CLUSTER, "vpc-0123456789abcdef0", *PARAMS.values(), TABLE, 30, 3, DC_IPS,
                                   COMPUTER_OU, PREFIX, 389)
    assert jh.load_settings(full_env(DC_IPS="10.0.0.10")).dc_ips == ("10.0.0.10",)
    assert jh.load_settings(full_env(COMPUTER_PREFIX="A1B2C3")).computer_prefix == "A1B2C3"


@pytest.mark.parametrize(("value", "port"), [("636", 636), ("3268", 3268), (" 389 ", 389), ("", 389)])
def test_ldap_port_is_optional(value: str, port: int) -> None:
    assert jh.load_settings(full_env(LDAP_PORT=value)).ldap_port == port


@pytest.mark.parametrize("variable", ALL_VARIABLES)
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
        ("WINDOW_TABLE", "a"),
        ("WINDOW_TABLE", "has space"),
        ("WINDOW_MINUTES", "9"),  # shorter than the join script's own 10-minute deadline
        ("WINDOW_MINUTES", "1441"),
        ("WINDOW_MINUTES", "thirty"),
        ("MAX_ANSWERS", "0"),
        ("MAX_ANSWERS", "11"),
        ("MAX_ANSWERS", "-1"),
        ("DC_IPS", "dc1.test.domain"),
        ("DC_IPS", "10.0.0.10;10.0.0.11"),
        ("DC_IPS", "10.0.0.10,"),
        ("DC_IPS", "10.0.0"),
        ("DC_IPS", "fd00::10"),
        ("DC_IPS", "256.0.0.10"),
        ("DC_IPS", "10.0.0.10,999.1.1.1"),
        ("COMPUTER_OU", "Computers"),
        ("COMPUTER_OU", "DC=test,DC=domain"),
        ("COMPUTER_OU", "OU=,DC=test,DC=domain"),
        ("COMPUTER_PREFIX", "1AB"),
        ("COMPUTER_PREFIX", "ABCDEFG"),
        ("COMPUTER_PREFIX", "hpc"),
        ("COMPUTER_PREFIX", "H-P"),
        ("LDAP_PORT", "0"),
        ("LDAP_PORT", "65536"),
        ("LDAP_PORT", "ldap"),
    ],
)
def test_each_invalid_setting_is_named(variable: str, value: str) -> None:
    with pytest.raises(jh.SettingsError, match=rf"\b{variable}=") as error:
        jh.load_settings(full_env(**{variable: value}))
    assert [v for v in NAMED_VARIABLES if v in str(error.value)] == [variable]


def test_all_missing_settings_are_named_at_once() -> None:
    with pytest.raises(jh.SettingsError) as error:
        jh.load_settings({})
    for variable in ALL_VARIABLES:
        assert variable in str(error.value)
    assert "LDAP_PORT" not in str(error.value)  # optional


def test_handler_validates_settings_before_doing_anything(monkeypatch) -> None:
    monkeypatch.setattr(jh, "_settings", None)
    monkeypatch.setattr(jh, "_clients", None)
    for variable, value in full_env(VPC_ID="nope").items():
        monkeypatch.setenv(variable, value)
    monkeypatch.setattr(jh, "make_clients", lambda: pytest.fail("clients before settings"))
    with pytest.raises(jh.SettingsError, match="VPC_ID"):
        jh.handler({}, None)


def test_handler_builds_settings_and_clients_once(world: World, monkeypatch, default_directory) -> None:
    monkeypatch.setattr(jh, "_settings", None)
    monkeypatch.setattr(jh, "_clients", None)
    env = {"CLUSTER_NAME": CLUSTER, "VPC_ID": world.vpc_id, **PARAMS, **WINDOW_ENV, **DIRECTORY_ENV}
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    monkeypatch.delenv("LDAP_PORT", raising=False)
    made: list[int] = []

    def make_clients() -> dict[str, Any]:
        made.append(1)
        return world.clients

    monkeypatch.setattr(jh, "make_clients", make_clients)
    instance_id = world.launch()
    statuses = []
    for _ in range(2):
        response = jh.handler(world.event(instance_id), None)
        world.responses.append(response)
        statuses.append(response["statusCode"])
    assert statuses == [200, 403]  # one object per instance, also through the entry point
    assert made == [1] and jh._settings == world.settings


# --- the caller proof: who asks is what STS says, not what the event says ----------------

FORGED = {
    # Anyone allowed lambda:InvokeFunction writes the event naming instance A; the proof is of what they hold.
    "another live node's proof": lambda world, a, b: proof_for(b, role_id=world.node_role_id),
    "another role's session named after A": lambda world, a, b: proof_for(a, role="other-role",
                                                                          role_id=world.other_role_id),
    "the node role's name in another account": lambda world, a, b: proof_for(a, account=OTHER_ACCOUNT,
                                                                             role_id="AROAOTHERACCOUNT0001"),
    "an IAM user": lambda world, a, b: STS.issue({"userArn": f"arn:aws:iam::{ACCOUNT}:user/mallory",
                                                  "userId": "AIDAEXAMPLEMALLORY01", "accountId": ACCOUNT}),
}


@pytest.mark.parametrize("request_kind", ["credentials", "close"])
@pytest.mark.parametrize("case", FORGED)
def test_a_forged_event_naming_a_fresh_node_gets_nothing(world: World, caplog, case, request_kind) -> None:
    a, b = world.launch(), world.launch()  # both live, fresh nodes of the cluster
    proof = FORGED[case](world, a, b)
    fields = {} if request_kind == "credentials" else close_body(world.name(a))
    event = world.event(a, body=fields, proof=proof)
    reads = WindowReads(world.clients["dynamodb"])  # the pre-check's one read of A's record, nothing else
    log = refused(world, caplog, event, "the caller proof names another identity than the request's signature",
                  **NOT_ASKED, dynamodb=reads)
    assert reads.calls == [precheck_read(a)]
    [(asked, _)] = STS.calls
    assert asked == proof
    # The log names who really asked (STS's identity), and no instance: nothing was looked up.
    assert log["caller_arn"] == STS.proofs[proof["authorization"]][1]["userArn"] != event["requestContext"][
        "authorizer"]["iam"]["userArn"]
    assert "instance_id" not in log and "answers" not in log
    assert world.fake_dc.calls == [] and world.window(a) == {} and world.window(b) == {}
    # A's own request, with its own proof, still gets A's object; the forged one spent nothing of A's window.
    response = world.call(world.event(a))
    assert response["statusCode"] == 200 and body(response)["computerName"] == world.name(a)
    assert world.window(a)["answers"] == "1"
    assert world.call(world.event(b))["statusCode"] == 200


def test_every_check_uses_the_proofs_identity_not_the_events(world: World, caplog) -> None:
    # The event's userId is not what is checked: one naming an older role's id does not refuse the node...
    a = world.launch()
    event = world.event(a)
    event["requestContext"]["authorizer"]["iam"]["userId"] = f"AROAOLDROLE000000001:{a}"
    assert world.call(event)["statusCode"] == 200
    # ...while a proof STS says is a session of an older role of the same name is refused, whatever the event says.
    b = world.launch()
    stale = STS.issue(node_identity(b, role_id="AROAOLDROLE000000001"))
    event = world.event(b, proof=stale)
    assert event["requestContext"]["authorizer"]["iam"]["userId"] == f"{world.node_role_id}:{b}"
    refused(world, caplog, event, "role id")
    assert world.window(b) == {}


def test_the_proof_is_checked_at_the_requests_time(world: World) -> None:
    a = world.launch()
    now = world.minutes_after_launch(a, 2)
    assert world.call(world.event(a), now=now)["statusCode"] == 200
    [(_, when)] = STS.calls
    assert when == now()


# Each: what becomes of the valid proof (DROP: no "proof" key), and the 400's message.
DROP = object()


def _without(key: str) -> Callable[[dict[str, str]], Any]:
    return lambda proof: {k: v for k, v in proof.items() if k != key}


def _with(key: str, value: Any) -> Callable[[dict[str, str]], Any]:
    return lambda proof: {**proof, key: value(proof[key]) if callable(value) else value}


BAD_PROOFS: dict[str, tuple[Callable[[dict[str, str]], Any], str]] = {
    "no proof": (lambda _: DROP, NEEDS_PROOF),
    "proof null": (lambda _: None, NEEDS_PROOF),
    "proof a string": (lambda proof: proof["authorization"], NEEDS_PROOF),
    "proof a list": (lambda proof: list(proof.values()), NEEDS_PROOF),
    "proof empty": (lambda _: {}, PROOF_KEYS),
    "no authorization": (_without("authorization"), PROOF_KEYS),
    "no x-amz-date": (_without("x-amz-date"), PROOF_KEYS),
    "no x-amz-security-token": (_without("x-amz-security-token"), PROOF_KEYS),
    "extra key": (_with("x-amz-content-sha256", "UNSIGNED-PAYLOAD"), PROOF_KEYS),
    "extra key: the audience": (_with("x-pcluster-ad-audience", "pcluster-ad-join-function"), PROOF_KEYS),
    "key in upper case": (lambda proof: {**_without("authorization")(proof), "Authorization": proof["authorization"]},
                          PROOF_KEYS),
    "authorization a number": (_with("authorization", 4), PROOF_KEYS),
    "token null": (_with("x-amz-security-token", None), PROOF_KEYS),
    "date a list": (_with("x-amz-date", lambda v: [v]), PROOF_KEYS),
    "token an object": (_with("x-amz-security-token", lambda v: {"token": v}), PROOF_KEYS),
    "empty token": (_with("x-amz-security-token", ""), PROOF_KEYS),
    "newline in the token": (_with("x-amz-security-token", lambda v: v + "\nX-Injected: 1"), PROOF_KEYS),
    "CR LF in the authorization": (_with("authorization", lambda v: v + "\r\nHost: evil.example"), PROOF_KEYS),
    "NUL in the authorization": (_with("authorization", lambda v: v + "\x00"), PROOF_KEYS),
    "tab in the date": (_with("x-amz-date", lambda v: "\t" + v), PROOF_KEYS),
    "unit separator in the token": (_with("x-amz-security-token", lambda v: v[:10] + "\x1f" + v[10:]), PROOF_KEYS),
    "token of 4097 characters": (_with("x-amz-security-token", lambda v: (v * 100)[:4097]), PROOF_KEYS),
}


@pytest.mark.parametrize("request_kind", ["credentials", "close"])
@pytest.mark.parametrize("case", BAD_PROOFS)
def test_a_body_without_a_valid_caller_proof_is_a_400_before_anything_is_read(world: World, caplog, case,
                                                                             request_kind) -> None:
    instance_id = world.launch()  # live and fresh: with its proof, it would be answered
    change, message = BAD_PROOFS[case]
    proof = change(dict(proof_for(instance_id, role_id=world.node_role_id)))
    fields = {} if request_kind == "credentials" else close_body(world.name(instance_id))
    raw = json.dumps(fields if proof is DROP else {**fields, "proof": proof})
    response = world.call(world.event(instance_id, body=raw), **NOTHING_REACHED)
    assert response["statusCode"] == 400 and message in body(response)["error"], body(response)
    [log] = decisions(caplog)
    assert log["decision"] == "bad-request" and message in log["reason"]
    assert "instance_id" not in log and "caller_arn" not in log
    # Nothing sent to STS, read or written; the node's own request is answered afterwards.
    assert STS.calls == [] and world.fake_dc.calls == [] and world.window(instance_id) == {}
    if request_kind == "credentials":
        assert world.call(world.event(instance_id))["statusCode"] == 200
    else:
        assert world.call(world.close_event(instance_id))["statusCode"] == 200


def test_a_proof_value_of_4096_characters_is_accepted(world: World) -> None:
    instance_id = world.launch()
    identity = node_identity(instance_id, role_id=world.node_role_id)
    proof = STS.issue(identity, x_amz_security_token="T" * 4096)
    assert world.call(world.event(instance_id, proof=proof))["statusCode"] == 200
    assert STS.calls[0][0]["x-amz-security-token"] == "T" * 4096


STS_FAILURES = {
    "refused": (jh._Refusal("STS refused the caller proof (HTTP 403)"), 403, FORBIDDEN, "deny", logging.WARNING),
    "unavailable": (jh._ProofUnavailable("STS answered HTTP 503"), 503, INTERNAL, "error", logging.ERROR),
}


@pytest.mark.parametrize("case", STS_FAILURES)
def test_sts_refusing_or_unreachable_answers_nothing_and_counts_nothing(world: World, caplog, case) -> None:
    failure, status, answer, decision, level = STS_FAILURES[case]
    instance_id = world.launch()
    STS.failure = failure
    reads = WindowReads(world.clients["dynamodb"])  # the pre-check's one read, nothing else
    response = world.call(world.event(instance_id), **{**NOTHING_REACHED, "dynamodb": reads})
    assert response["statusCode"] == status and body(response) == answer
    assert reads.calls == [precheck_read(instance_id)]
    [record] = [r for r in caplog.records if r.name == "test.join"]
    log = json.loads(record.getMessage())
    assert record.levelno == level and log["decision"] == decision and log["reason"] == failure.reason
    assert "instance_id" not in log and len(STS.calls) == 1
    assert world.fake_dc.calls == [] and world.window(instance_id) == {}
    # STS answers again: the node's retry gets its object, its first attempt counted nothing.
    STS.failure = None
    assert world.call(world.event(instance_id))["statusCode"] == 200
    assert world.window(instance_id)["answers"] == "1"


@pytest.mark.parametrize("change", ["signature", "token", "date"])
def test_a_proof_sts_does_not_recognise_is_refused(world: World, caplog, change) -> None:
    # Made up, or a real one altered: STS refuses the signature (here: the fake knows no such proof).
    instance_id = world.launch()
    proof = proof_for(instance_id, role_id=world.node_role_id)
    key = {"signature": "authorization", "token": "x-amz-security-token", "date": "x-amz-date"}[change]
    forged = {**proof, key: proof[key][:-1] + ("0" if proof[key][-1] != "0" else "1")}
    reads = WindowReads(world.clients["dynamodb"])  # the pre-check's one read, nothing else
    refused(world, caplog, world.event(instance_id, proof=forged), "STS refused the caller proof",
            **NOT_ASKED, dynamodb=reads)
    assert reads.calls == [precheck_read(instance_id)]
    assert world.window(instance_id) == {} and world.fake_dc.calls == []


# --- the pre-check: a finished node is refused at the cost of one read -------------------------


@pytest.mark.parametrize("finished", ["object created", "closed"])
def test_the_pre_check_refuses_a_joined_nodes_repeat_without_sts_ec2_or_iam(world: World, caplog, finished) -> None:
    instance_id = world.launch()
    now = world.minutes_after_launch(instance_id, 3)
    assert world.call(world.event(instance_id), now=now)["statusCode"] == 200
    if finished == "closed":
        assert world.call(world.close_event(instance_id), now=now)["statusCode"] == 200
    item, sts_calls = world.window(instance_id), len(STS.calls)
    # A process on the node repeats the request with the node's credentials (its proof is valid), many times.
    repeats = {"join": (world.event(instance_id),
                        "computer object already created for this instance" if finished == "object created"
                        else "join window closed: a process on this node asked for the join secret after the join")}
    if finished == "closed":
        repeats["close"] = (world.close_event(instance_id), "join window closed: a second close request")
    for event, reason in repeats.values():
        for _ in range(3):
            # prechecked: EC2, IAM, CloudFormation, SSM, the directory fail the call if asked; one read, no write.
            prechecked(world, caplog, event, reason, now=now)
    assert len(STS.calls) == sts_calls  # the fake STS got no call for any repeat
    assert world.window(instance_id) == item and len(world.fake_dc.calls) == 1


class FailingPreCheck:
    """dynamodb whose eventually consistent GetItem (the pre-check's) fails with `error`; everything else goes to
    `real`."""

    def __init__(self, real: Any, error: Exception) -> None:
        self.real, self.error, self.failed = real, error, []

    def get_item(self, **kwargs: Any) -> Any:
        if kwargs.get("ConsistentRead"):
            return self.real.get_item(**kwargs)
        self.failed.append(kwargs)
        raise self.error

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


PRE_CHECK_ERRORS = {
    "throttled": lambda: ClientError({"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "slow"}},
                                     "GetItem"),
    "access denied": lambda: ClientError({"Error": {"Code": "AccessDeniedException", "Message": "no"}}, "GetItem"),
    "unreachable": lambda: EndpointConnectionError(endpoint_url="https://dynamodb.eu-west-1.amazonaws.com/"),
    "read timeout": lambda: ReadTimeoutError(endpoint_url="https://dynamodb.eu-west-1.amazonaws.com/"),
}


@pytest.mark.parametrize("case", PRE_CHECK_ERRORS)
def test_a_dynamodb_error_in_the_pre_check_falls_through_to_the_full_path(world: World, caplog, case) -> None:
    instance_id = world.launch()
    now = world.minutes_after_launch(instance_id, 2)
    failing = FailingPreCheck(world.clients["dynamodb"], PRE_CHECK_ERRORS[case]())
    # A fresh node: the full path answers it as ever.
    caplog.clear()
    response = world.call(world.event(instance_id), now=now, dynamodb=failing)
    assert response["statusCode"] == 200 and failing.failed == [precheck_read(instance_id)]
    answer = body(response)
    assert answer["computerName"] == world.name(instance_id) and answer["oneTimePassword"] == world.fake_dc.passwords[0]
    [log] = decisions(caplog)
    assert log["decision"] == "allow" and "error_code" not in log and "error_type" not in log
    item = world.window(instance_id)
    assert item["answers"] == "1" and "issuedAt" in item and len(STS.calls) == 1
    # The joined node's repeat: the full path refuses it (STS and EC2 asked), with the record's reason.
    failing.failed.clear()
    log = refused(world, caplog, world.event(instance_id), "computer object already created for this instance",
                  now=now, dynamodb=failing)
    assert failing.failed == [precheck_read(instance_id)] and len(STS.calls) == 2
    assert log["computer_name"] == world.name(instance_id) and log["answers"] == 1
    # Its close is the full path's too, and closes.
    response = world.call(world.close_event(instance_id), now=now, dynamodb=failing)
    assert response["statusCode"] == 200 and body(response) == {"closed": True}
    assert "closedAt" in world.window(instance_id) and len(world.fake_dc.calls) == 1


@pytest.mark.parametrize("request_kind", ["credentials", "close"])
@pytest.mark.parametrize("finished", ["object created", "closed"])
@pytest.mark.parametrize("case", FORGED)
def test_a_forged_event_claiming_a_finished_node_is_only_refused(world: World, caplog, case, finished,
                                                                 request_kind) -> None:
    a, b = world.launch(), world.launch()  # A joined (and maybe closed); B live and fresh
    assert world.call(world.event(a))["statusCode"] == 200
    if finished == "closed":
        assert world.call(world.close_event(a))["statusCode"] == 200
    item_a, sts_calls = world.window(a), len(STS.calls)
    proof = FORGED[case](world, a, b)
    fields = {} if request_kind == "credentials" else close_body(world.name(a))
    event = world.event(a, body=fields, proof=proof)
    if (finished, request_kind) == ("object created", "close"):
        # The record alone does not refuse a close: the full path does, on the proof.
        reads = WindowReads(world.clients["dynamodb"])
        log = refused(world, caplog, event, "the caller proof names another identity than the request's signature",
                      **NOT_ASKED, dynamodb=reads)
        assert reads.calls == [precheck_read(a)] and len(STS.calls) == sts_calls + 1
    else:
        reason = {"object created": "computer object already created for this instance",
                  "closed": "join window closed"}[finished]
        log = prechecked(world, caplog, event, reason)  # no STS call, one read of A's record
    assert log["decision"] == "deny"
    # Only refused: nothing of A's record or B's changed, no object created; B's own request is answered after.
    assert world.window(a) == item_a and world.window(b) == {} and len(world.fake_dc.calls) == 1
    response = world.call(world.event(b))
    assert response["statusCode"] == 200 and body(response)["computerName"] == world.name(b)
    assert world.window(b)["answers"] == "1"


@pytest.mark.parametrize("request_kind", ["credentials", "close"])
def test_a_finished_nodes_proof_naming_a_fresh_node_gets_nothing(world: World, caplog, request_kind) -> None:
    # The pre-check reads the claimed (fresh) node's record: it admits nothing, STS's identity decides.
    a, b = world.launch(), world.launch()
    assert world.call(world.event(a))["statusCode"] == 200
    assert world.call(world.close_event(a))["statusCode"] == 200
    item_a = world.window(a)
    fields = {} if request_kind == "credentials" else close_body(world.name(b))
    event = world.event(b, body=fields, proof=proof_for(a, role_id=world.node_role_id))
    reads = WindowReads(world.clients["dynamodb"])
    log = refused(world, caplog, event, "the caller proof names another identity than the request's signature",
                  **NOT_ASKED, dynamodb=reads)
    assert reads.calls == [precheck_read(b)] and log["caller_arn"].endswith(f"/{a}") and "instance_id" not in log
    assert world.window(a) == item_a and world.window(b) == {} and len(world.fake_dc.calls) == 1
    assert world.call(world.event(b))["statusCode"] == 200


def test_the_pre_check_reads_only_an_instance_sessions_record(offline, caplog) -> None:
    # A session name that is no instance id, or no assumed-role session: no read at all, the full checks refuse.
    for identity, reason in (
        (node_identity("alice"), "session name is not an instance id"),
        ({"userArn": f"arn:aws:iam::{ACCOUNT}:user/i-0123456789abcdef0", "userId": "AIDAEXAMPLEUSER00001",
          "accountId": ACCOUNT}, "not an assumed-role session"),
    ):
        caplog.clear()
        reads = WindowReads()
        assert_denied(functools.partial(offline, dynamodb=reads), caplog, identity_event(identity), reason)
        assert reads.calls == []


def test_leak_check_would_catch_a_caller_proof_in_a_log_or_an_answer(world: World, caplog) -> None:
    """The teardown check knows every proof's token and signature: a log line or an answer with one fails it."""
    proof = proof_for("i-0123456789abcdef0")
    for key in ("x-amz-security-token", "authorization"):
        TEST_LOG.debug("proof header %s", proof[key])
        with pytest.raises(AssertionError):
            check_no_leaks(caplog, [], world.fake_dc)
        caplog.clear()
        answer = {"statusCode": 200, "body": json.dumps({"echo": proof[key]})}
        with pytest.raises(AssertionError):
            check_no_leaks(caplog, [answer], world.fake_dc)
    check_no_leaks(caplog, [], world.fake_dc)


@pytest.mark.parametrize("case", ["join", "close", "forged", "malformed", "refused", "unavailable", "error"])
def test_the_caller_proof_is_in_no_log_line_and_no_answer(world: World, caplog, case) -> None:
    # The teardown check (no_secret_leaks) asserts it for every test; here for each kind of outcome, at DEBUG.
    instance_id = world.launch()
    proof = proof_for(instance_id, role_id=world.node_role_id)
    if case == "join":
        assert world.call(world.event(instance_id))["statusCode"] == 200
    elif case == "close":
        assert world.call(world.close_event(instance_id))["statusCode"] == 200
    elif case == "forged":
        other = world.launch()
        assert world.call(world.event(other, proof=proof))["statusCode"] == 403
    elif case == "malformed":
        bad = {**proof, "x-amz-security-token": proof["x-amz-security-token"] + "\n"}
        assert world.call(world.event(instance_id, proof=bad))["statusCode"] == 400
    elif case == "error":
        class BrokenEc2:
            def describe_instances(self, **_: Any) -> Any:
                raise RuntimeError(f"bug that quotes the proof: {proof}")

        assert world.call(world.event(instance_id), ec2=BrokenEc2())["statusCode"] == 500
    else:
        STS.failure = STS_FAILURES[case][0]
        assert world.call(world.event(instance_id))["statusCode"] in (403, 503)
    assert len(world.responses) >= 1 and STS.secrets()
    check_no_leaks(caplog, world.responses, world.fake_dc)


# --- sts_caller_identity: the proof sent to STS, STS's answer read ------------------------

STS_ANSWER = b"""<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <GetCallerIdentityResult>
    <Arn>arn:aws:sts::123456789012:assumed-role/hpc1-node-role/i-0123456789abcdef0</Arn>
    <UserId>AROAEXAMPLENODEROLE01:i-0123456789abcdef0</UserId>
    <Account>123456789012</Account>
  </GetCallerIdentityResult>
  <ResponseMetadata>
    <RequestId>01234567-89ab-cdef-0123-456789abcdef</RequestId>
  </ResponseMetadata>
</GetCallerIdentityResponse>
"""
STS_IDENTITY = {"userArn": "arn:aws:sts::123456789012:assumed-role/hpc1-node-role/i-0123456789abcdef0",
                "userId": "AROAEXAMPLENODEROLE01:i-0123456789abcdef0", "accountId": "123456789012"}


class FakeOpener:
    """Stands in for urllib.request.urlopen(request, timeout=): records the requests; answers `answer` (bytes,
    read from a context manager) or raises it."""

    def __init__(self, answer: bytes | BaseException = STS_ANSWER) -> None:
        self.answer, self.requests = answer, []

    def __call__(self, request: urllib.request.Request, timeout: float) -> Any:
        self.requests.append((request, timeout))
        if isinstance(self.answer, BaseException):
            raise self.answer
        return io.BytesIO(self.answer)


def sts_answer(identity: dict[str, str]) -> bytes:
    return (STS_ANSWER.replace(STS_IDENTITY["userArn"].encode(), identity["userArn"].encode())
            .replace(STS_IDENTITY["userId"].encode(), identity["userId"].encode())
            .replace(STS_IDENTITY["accountId"].encode(), identity["accountId"].encode()))


def http_error(code: int) -> urllib.error.HTTPError:
    error = (b'<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type>'
             b"<Code>SignatureDoesNotMatch</Code><Message>no</Message></Error></ErrorResponse>")
    return urllib.error.HTTPError("https://sts.eu-west-1.amazonaws.com/", code, "error", http.client.HTTPMessage(),
                                  io.BytesIO(error))


def test_sts_caller_identity_sends_exactly_the_proof_to_this_regions_sts() -> None:
    proof = proof_for("i-0123456789abcdef0")
    opener = FakeOpener()
    assert jh.sts_caller_identity(proof, time.time(), region="eu-west-1", opener=opener) == STS_IDENTITY
    [(request, timeout)] = opener.requests
    assert request.full_url == "https://sts.eu-west-1.amazonaws.com/" and request.get_method() == "POST"
    assert request.data == jh.PROOF_BODY.encode() == b"Action=GetCallerIdentity&Version=2011-06-15"
    assert {k.lower(): v for k, v in request.header_items()} == {
        "content-type": jh.PROOF_CONTENT_TYPE,
        "x-pcluster-ad-audience": "pcluster-ad-join-function",
        "authorization": proof["authorization"],
        "x-amz-date": proof["x-amz-date"],
        "x-amz-security-token": proof["x-amz-security-token"],
    }
    assert jh.PROOF_CONTENT_TYPE == "application/x-www-form-urlencoded; charset=utf-8"
    assert 0 < timeout <= 10  # well inside the function's timeout


def test_sts_caller_identity_answers_what_sts_says() -> None:
    identity = node_identity("i-0fedcba9876543210", role="hpc1-login-role", role_id="AROAEXAMPLELOGIN0001",
                             account=OTHER_ACCOUNT)
    answer = jh.sts_caller_identity(proof_for("i-0123456789abcdef0"), 0.0, region="eu-west-1",
                                    opener=FakeOpener(sts_answer(identity)))
    assert answer == identity  # STS's answer, not anything of the proof's


@pytest.mark.parametrize(("environment", "sent"), [({"AWS_REGION": "eu-west-1"}, True),
                                                   ({"AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "eu-west-1"},
                                                    False)])
def test_sts_caller_identity_takes_the_functions_region_from_aws_region(monkeypatch, environment, sent) -> None:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    opener = FakeOpener()
    if sent:
        assert jh.sts_caller_identity(proof_for("i-0123456789abcdef0"), 0.0, opener=opener) == STS_IDENTITY
        assert opener.requests[0][0].full_url == "https://sts.eu-west-1.amazonaws.com/"
    else:
        with pytest.raises(jh._Refusal, match="not a SigV4 signature for STS in this region"):
            jh.sts_caller_identity(proof_for("i-0123456789abcdef0"), 0.0, opener=opener)
        assert opener.requests == []


def _authorization(change: Callable[[str], str]) -> Callable[[dict[str, str]], str]:
    return lambda proof: change(proof["authorization"])


def _signing(headers: list[str]) -> Callable[[dict[str, str]], str]:
    signed = f"SignedHeaders={';'.join(SIGNED)}"
    return _authorization(lambda a: a.replace(signed, f"SignedHeaders={';'.join(headers)}"))


NOT_FOR_US = {
    "another region": (_authorization(lambda a: a.replace("/eu-west-1/", "/us-east-1/")), "in this region"),
    "a region that starts like this one": (_authorization(lambda a: a.replace("/eu-west-1/", "/eu-west-12/")),
                                           "in this region"),
    "another service": (_authorization(lambda a: a.replace("/sts/", "/lambda/")), "in this region"),
    "the function URL's signature": (_authorization(lambda a: a.replace("/sts/", "/execute-api/")), "SigV4"),
    "not SigV4": (lambda proof: "Bearer " + proof["x-amz-security-token"], "SigV4"),
    "a short signature": (_authorization(lambda a: a[:-1]), "SigV4"),
    "the audience not signed": (_signing([h for h in SIGNED if h != "x-pcluster-ad-audience"]), "must sign"),
    "a look-alike audience signed": (_signing([*SIGNED[:4], "x-pcluster-ad-audience-x"]), "must sign"),
    "the token not signed": (_signing([h for h in SIGNED if h != "x-amz-security-token"]), "must sign"),
    "the host not signed": (_signing([h for h in SIGNED if h != "host"]), "must sign"),
    "the content type not signed": (_signing([h for h in SIGNED if h != "content-type"]), "must sign"),
    "the date not signed": (_signing([h for h in SIGNED if h != "x-amz-date"]), "must sign"),
}


@pytest.mark.parametrize("case", NOT_FOR_US)
def test_sts_caller_identity_refuses_a_proof_not_made_for_this_function_before_sending_it(case) -> None:
    change, message = NOT_FOR_US[case]
    proof = proof_for("i-0123456789abcdef0")
    opener = FakeOpener()
    assert jh.sts_caller_identity(proof, 0.0, region="eu-west-1", opener=FakeOpener()) == STS_IDENTITY  # as made
    with pytest.raises(jh._Refusal, match=message) as refusal:
        jh.sts_caller_identity({**proof, "authorization": change(proof)}, 0.0, region="eu-west-1", opener=opener)
    assert type(refusal.value) is jh._Refusal and refusal.value.status == 403
    assert opener.requests == []  # not sent on: STS would have answered for it


def test_sts_caller_identity_accepts_more_signed_headers() -> None:
    # STS checks what else was signed; the function only needs its own headers among them.
    proof = proof_for("i-0123456789abcdef0")
    more = _signing(["content-length", *SIGNED])(proof)
    opener = FakeOpener()
    assert jh.sts_caller_identity({**proof, "authorization": more}, 0.0, region="eu-west-1",
                                  opener=opener) == STS_IDENTITY
    assert len(opener.requests) == 1


@pytest.mark.parametrize(("failure", "refusal"), [
    (http_error(400), jh._Refusal),
    (http_error(403), jh._Refusal),  # SignatureDoesNotMatch, expired token or request
    (http_error(429), jh._ProofUnavailable),
    (http_error(500), jh._ProofUnavailable),
    (http_error(503), jh._ProofUnavailable),
    (urllib.error.URLError(OSError("Name or service not known")), jh._ProofUnavailable),
    (TimeoutError("timed out"), jh._ProofUnavailable),
    (ConnectionResetError("reset"), jh._ProofUnavailable),
], ids=["400", "403", "429", "500", "503", "URLError", "timeout", "reset"])
def test_sts_caller_identity_maps_sts_failures(failure, refusal) -> None:
    opener = FakeOpener(failure)
    with pytest.raises(jh._Refusal) as raised:
        jh.sts_caller_identity(proof_for("i-0123456789abcdef0"), 0.0, region="eu-west-1", opener=opener)
    assert type(raised.value) is refusal and len(opener.requests) == 1
    assert raised.value.status == (403 if refusal is jh._Refusal else 503)
    if isinstance(failure, urllib.error.HTTPError):
        assert str(failure.code) in raised.value.reason
        if refusal is jh._Refusal:
            assert "STS refused the caller proof" in raised.value.reason


@pytest.mark.parametrize("answer", [
    STS_ANSWER.replace(b"<Arn>arn:aws:sts::123456789012:assumed-role/hpc1-node-role/i-0123456789abcdef0</Arn>",
                       b""),
    STS_ANSWER.replace(b"<Account>123456789012</Account>", b"<Account></Account>"),
    STS_ANSWER.replace(b"<UserId>AROAEXAMPLENODEROLE01:i-0123456789abcdef0</UserId>", b""),
    STS_ANSWER.replace(b' xmlns="https://sts.amazonaws.com/doc/2011-06-15/"', b""),  # not STS's document
    STS_ANSWER.replace(b"GetCallerIdentityResult>", b"AssumeRoleResult>"),
    b'<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"/>',
], ids=["no Arn", "empty Account", "no UserId", "no namespace", "another result", "empty"])
def test_sts_caller_identity_refuses_an_answer_naming_no_caller(answer) -> None:
    with pytest.raises(jh._Refusal, match="names no caller") as raised:
        jh.sts_caller_identity(proof_for("i-0123456789abcdef0"), 0.0, region="eu-west-1", opener=FakeOpener(answer))
    assert type(raised.value) is jh._Refusal


def _sts_via(opener: Any) -> Callable[..., dict[str, str]]:
    return functools.partial(jh.sts_caller_identity, region="eu-west-1", opener=opener)


@pytest.mark.parametrize("sts_says", ["the node", "another node", "HTTP 403", "HTTP 503", "unreachable"])
def test_handle_with_sts_caller_identity(world: World, caplog, sts_says) -> None:
    # The real verifier behind handle; only the wire is a stand-in.
    instance_id, other = world.launch(), world.launch()
    answer: bytes | BaseException = {
        "the node": sts_answer(node_identity(instance_id, role_id=world.node_role_id)),
        "another node": sts_answer(node_identity(other, role_id=world.node_role_id)),
        "HTTP 403": http_error(403), "HTTP 503": http_error(503),
        "unreachable": urllib.error.URLError(OSError("Network is unreachable")),
    }[sts_says]
    opener = FakeOpener(answer)
    response = world.call(world.event(instance_id), verify_proof=_sts_via(opener))
    [(request, _)] = opener.requests
    assert request.get_header("X-amz-security-token") == STS.proofs[request.get_header("Authorization")][0][
        "x-amz-security-token"]
    status = {"the node": 200, "another node": 403, "HTTP 403": 403, "HTTP 503": 503, "unreachable": 503}[sts_says]
    assert response["statusCode"] == status
    [log] = decisions(caplog)
    if status == 200:
        assert body(response)["computerName"] == world.name(instance_id)
    elif status == 403:
        assert body(response) == FORBIDDEN and world.fake_dc.calls == [] and world.window(instance_id) == {}
        assert ("another identity" if sts_says == "another node" else "STS refused the caller proof") in log["reason"]
    else:
        assert body(response) == INTERNAL and world.window(instance_id) == {} and log["decision"] == "error"


class _NoConnection(http.client.HTTPSConnection):
    def connect(self) -> None:
        raise ConnectionRefusedError("no network in the tests")


class _NoNetworkHttps(urllib.request.HTTPSHandler):
    """urllib's own HTTPS handling (headers encoded by http.client) up to the connection, which fails."""

    def https_open(self, req: urllib.request.Request) -> Any:
        return self.do_open(_NoConnection, req)


def test_with_urllib_itself_an_unreachable_sts_is_a_503(world: World) -> None:
    opener = urllib.request.build_opener(_NoNetworkHttps).open
    response = world.call(world.event(world.launch()), verify_proof=_sts_via(opener))
    assert response["statusCode"] == 503 and body(response) == INTERNAL


@pytest.mark.parametrize(("key", "char"), [("x-amz-security-token", "\u2028"), ("x-amz-date", "\u0100"),
                                           ("authorization", "\x7f"), ("x-amz-security-token", "\x85")])
def test_a_proof_value_outside_latin_1_is_a_malformed_request(world: World, caplog, key, char) -> None:
    instance_id = world.launch()
    proof = proof_for(instance_id, role_id=world.node_role_id)
    bad = {**proof, key: proof[key] + char}
    opener = urllib.request.build_opener(_NoNetworkHttps).open
    response = world.call(world.event(instance_id, proof=bad), verify_proof=_sts_via(opener))
    [log] = decisions(caplog)
    assert log["decision"] != "error", log
    assert response["statusCode"] == 400 and "proof" in body(response)["error"]


def test_an_sts_answer_that_is_not_xml_is_worth_a_retry(world: World) -> None:
    """STS answering 200 with something that is not XML (a proxy's page): 503, never a 500 'unexpected error'."""
    class Answer:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self, n=-1):
            return b"<html>proxy error"

    response = world.call(world.event(world.launch()), verify_proof=_sts_via(lambda request, timeout: Answer()))
    assert response["statusCode"] == 503 and body(response) == INTERNAL
