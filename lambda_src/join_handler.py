"""Join function: hand the AD join credentials to a live node of this cluster, and to
nothing else.

Transport: a Lambda function URL with AWS_IAM auth (payload format 2.0). Lambda has
verified the SigV4 signature, so the caller identity in the event is trusted; the body
is not (it must be empty or ``{}``). Instance-role credentials carry the instance id as
their session name, but anyone allowed to assume *some* role can choose that session
name. So the caller is accepted only if its role is the role of that very instance's
instance profile, in the same account, and the instance is a pending/running node of
this cluster (tag) in this VPC.

Event fields read; a local HTTP endpoint (the real-AD lab) may build just these with
``function_url_event`` after authenticating the caller itself:
    version                               "2.0"
    requestContext.requestId              optional, only logged
    requestContext.http.method            "POST"
    requestContext.authorizer.iam.userArn
        arn:<partition>:sts::<account>:assumed-role/<role-name>/<instance-id>
    requestContext.authorizer.iam.userId  <role-id>:<instance-id>
    requestContext.authorizer.iam.accountId
    body, isBase64Encoded                 optional; the body must be empty or "{}"

Responses (JSON): 200 {"domain", "realm", "user", "password"}; 400 {"error": <why>} for
malformed requests; 403 {"error": "forbidden"}; 500 or 503 {"error": "internal error"}
(503: AWS throttled or unreachable, worth retrying). Each request logs one JSON line
(request id, caller, instance id, decision, reason), never the secret.

AWS calls: ec2:DescribeInstances, iam:GetInstanceProfile, ssm:GetParameters with
decryption (so kms:Decrypt on the parameters' key).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import sys
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

CLUSTER_TAG = "parallelcluster:cluster-name"
LIVE_STATES = frozenset({"pending", "running"})
THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestLimitExceeded",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
    }
)
# Backoff retries for throttling and transient faults; short timeouts keep the worst
# case (3 calls x 4 attempts) inside the function timeout.
MAX_ATTEMPTS = 4
BOTO_CONFIG = Config(
    retries={"mode": "standard", "total_max_attempts": MAX_ATTEMPTS}, connect_timeout=3, read_timeout=5
)

INSTANCE_ID = re.compile(r"i-(?:[0-9a-f]{8}|[0-9a-f]{17})")
ASSUMED_ROLE_ARN = re.compile(r"arn:aws[a-z-]*:sts::(\d{12}):assumed-role/([\w+=,.@-]+)/([\w+=,.@-]+)")
PROFILE_ARN = re.compile(r"arn:aws[a-z-]*:iam::(\d{12}):instance-profile/(?:[\w+=,.@/-]*/)?([\w+=,.@-]+)")

LOG = logging.getLogger("pcluster_ad.join")
if not LOG.handlers:
    # Bare JSON lines: the Lambda runtime's root handler would prefix them with text.
    _stdout = logging.StreamHandler(sys.stdout)
    _stdout.setFormatter(logging.Formatter("%(message)s"))
    LOG.addHandler(_stdout)
    LOG.setLevel(logging.INFO)
    LOG.propagate = False
# botocore logs whole response bodies at DEBUG: that would include the decrypted secret.
# Pin its own level (not inherited), so a DEBUG root logger (AWS_LAMBDA_LOG_LEVEL) can't.
if logging.getLogger("botocore").level < logging.INFO:  # NOTSET (0) counts as below
    logging.getLogger("botocore").setLevel(logging.INFO)


class SettingsError(ValueError):
    """The function's environment is wrong; the message names every bad variable."""


@dataclass(frozen=True)
class Settings:  # field = lower-cased environment variable name
    cluster_name: str
    vpc_id: str
    domain_parameter: str
    join_user_parameter: str
    join_password_parameter: str


_PARAMETER = (re.compile(r"[A-Za-z0-9_.\-/]{1,2048}"), "an SSM parameter name")
_SETTINGS_RULES = {
    "CLUSTER_NAME": (re.compile(r"[A-Za-z][A-Za-z0-9-]{0,59}"), "a cluster name"),
    "VPC_ID": (re.compile(r"vpc-(?:[0-9a-f]{8}|[0-9a-f]{17})"), "a VPC id"),
    "DOMAIN_PARAMETER": _PARAMETER,
    "JOIN_USER_PARAMETER": _PARAMETER,
    "JOIN_PASSWORD_PARAMETER": _PARAMETER,
}


def load_settings(environ: Mapping[str, str] = os.environ) -> Settings:
    values, problems = {}, []
    for variable, (pattern, meaning) in _SETTINGS_RULES.items():
        value = values[variable.lower()] = environ.get(variable, "").strip()
        if not value:
            problems.append(f"{variable} is not set")
        elif not pattern.fullmatch(value):
            problems.append(f"{variable}={value[:80]!r} is not {meaning}")
    if problems:
        raise SettingsError("join function environment: " + "; ".join(problems))
    return Settings(**values)


def make_clients() -> dict[str, Any]:
    """Clients for `handle`; region and endpoints come from the usual AWS_* variables."""
    return {name: boto3.client(name, config=BOTO_CONFIG) for name in ("ec2", "iam", "ssm")}


_settings: Settings | None = None
_clients: dict[str, Any] | None = None


def handler(event: Any, context: Any) -> dict[str, Any]:
    """Lambda entry point; settings and clients are made once per container."""
    global _settings, _clients
    if _settings is None:
        # A SettingsError fails the invocation loudly, naming the variable.
        _settings = load_settings()
    if _clients is None:
        _clients = make_clients()
    return handle(event, settings=_settings, **_clients)


class _Refusal(Exception):
    """An answer without the secret; `reason` is logged, `public` is answered."""

    status, decision, public = 403, "deny", "forbidden"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _BadRequest(_Refusal):
    status, decision = 400, "bad-request"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.public = reason  # the caller needs to know what to fix


class _ConfigError(_Refusal):
    status, decision, public = 500, "error", "internal error"


class Caller(NamedTuple):
    account: str
    role_name: str
    role_id: str
    instance_id: str


def handle(
    event: Any,
    *,
    settings: Settings,
    ec2: Any,
    iam: Any,
    ssm: Any,
    logger: logging.Logger = LOG,
) -> dict[str, Any]:
    """Authorize the caller and answer with the join credentials (see module doc)."""
    fields: dict[str, Any] = {"request_id": _dig(event, "requestContext", "requestId")}
    internal_error = {"error": "internal error"}
    try:
        identity = _parse_request(event)
        fields.update(caller_arn=identity["userArn"], caller_account=identity["accountId"])
        caller = _instance_caller(identity)
        fields.update(caller_role=caller.role_name, instance_id=caller.instance_id)
        _authorize(caller, settings, ec2, iam)
        body = _join_credentials(settings, ssm)
        status, decision, reason = 200, "allow", "live node of the cluster"
    except _Refusal as refusal:
        status, decision, reason = refusal.status, refusal.decision, refusal.reason
        body = {"error": refusal.public}
    except ClientError as exc:
        code = _error_code(exc)
        fields.update(error_code=code, operation=exc.operation_name)
        status = 503 if code in THROTTLING_CODES else 500
        body, decision, reason = internal_error, "error", "AWS API error"
    except BotoCoreError as exc:
        fields.update(error_type=type(exc).__name__)
        transient = isinstance(exc, (BotoConnectionError, HTTPClientError))
        status = 503 if transient else 500
        body, decision, reason = internal_error, "error", "AWS client error"
    except Exception as exc:  # noqa: BLE001 - a bug; its message could carry values
        fields.update(error_type=type(exc).__name__, where=traceback.format_tb(exc.__traceback__))
        status, body = 500, internal_error
        decision, reason = "error", "unexpected error"

    level = {2: logging.INFO, 4: logging.WARNING}.get(status // 100, logging.ERROR)
    record = {**fields, "status": status, "decision": decision, "reason": reason}
    logger.log(level, json.dumps(record, default=str, sort_keys=True))
    return {
        "statusCode": status,
        "headers": {"content-type": "application/json", "cache-control": "no-store"},
        "body": json.dumps(body),
    }


def _dig(value: Any, *keys: str) -> Any:
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _parse_request(event: Any) -> dict[str, str]:
    """Check the request's shape; return requestContext.authorizer.iam."""
    if not isinstance(event, dict) or event.get("version") != "2.0":
        raise _BadRequest("not a Lambda function URL event (payload format 2.0)")
    if not isinstance(event.get("requestContext"), dict):
        raise _BadRequest("event has no requestContext")
    if _dig(event, "requestContext", "http", "method") != "POST":
        raise _BadRequest("method must be POST")
    identity = _dig(event, "requestContext", "authorizer", "iam")
    if not isinstance(identity, dict):
        raise _BadRequest("no IAM caller identity (the function URL must use AWS_IAM)")
    for key in ("userArn", "userId", "accountId"):
        if not isinstance(identity.get(key), str) or not identity[key]:
            raise _BadRequest(f"caller identity lacks {key}")
    if not re.fullmatch(r"\d{12}", identity["accountId"]):
        raise _BadRequest("caller identity has a malformed accountId")

    body = event.get("body") or ""
    if not isinstance(body, str):
        raise _BadRequest("body must be a string")
    if event.get("isBase64Encoded") and body:
        try:
            body = base64.b64decode(body, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise _BadRequest("body is not valid base64-encoded UTF-8") from None
    if body.strip():
        try:
            parsed = json.loads(body)
        except ValueError:
            raise _BadRequest("body is not valid JSON") from None
        # Nothing is taken from the body: who asks is known only from the signature.
        if parsed != {}:
            raise _BadRequest("body must be empty or {}")
    return identity


def _instance_caller(identity: Mapping[str, str]) -> Caller:
    """The instance and role an instance-role session claims to be, else deny."""
    match = ASSUMED_ROLE_ARN.fullmatch(identity["userArn"])
    if not match:
        raise _Refusal("caller is not an assumed-role session")
    arn_account, role_name, session = match.groups()
    if arn_account != identity["accountId"]:
        raise _Refusal("userArn account differs from accountId")
    if not INSTANCE_ID.fullmatch(session):
        raise _Refusal("session name is not an instance id")
    role_id, _, user_session = identity["userId"].partition(":")
    if user_session != session or not role_id.startswith("AROA"):
        raise _Refusal("userId does not match userArn")
    return Caller(arn_account, role_name, role_id, session)


def _authorize(caller: Caller, settings: Settings, ec2: Any, iam: Any) -> None:
    """Deny unless the instance is a live cluster node whose profile role is the caller's."""
    try:
        answer = ec2.describe_instances(InstanceIds=[caller.instance_id])
    except ClientError as exc:
        if _error_code(exc).startswith("InvalidInstanceID."):
            raise _Refusal("instance not found") from None
        raise
    found = [(r, i) for r in answer["Reservations"] for i in r.get("Instances", [])]
    if len(found) != 1 or found[0][1].get("InstanceId") != caller.instance_id:
        raise _Refusal("instance not found")
    reservation, instance = found[0]

    if reservation.get("OwnerId", caller.account) != caller.account:
        raise _Refusal("instance owner account differs from caller account")
    state = _dig(instance, "State", "Name")
    if state not in LIVE_STATES:
        raise _Refusal(f"instance state is {state}")
    if instance.get("VpcId") != settings.vpc_id:
        raise _Refusal(f"instance is in VPC {instance.get('VpcId')}")
    tags = {t.get("Key"): t.get("Value") for t in instance.get("Tags", [])}
    tag = tags.get(CLUSTER_TAG)
    if tag != settings.cluster_name:
        raise _Refusal(f"instance tag {CLUSTER_TAG} is {tag!r}")

    # The role attached to the instance now: a session name alone is spoofable.
    profile_arn = _dig(instance, "IamInstanceProfile", "Arn") or ""
    match = PROFILE_ARN.fullmatch(profile_arn)
    if not match:
        raise _Refusal("instance has no instance profile")
    if match.group(1) != caller.account:
        raise _Refusal("instance profile account differs from caller account")
    try:
        profile = iam.get_instance_profile(InstanceProfileName=match.group(2))
    except ClientError as exc:
        if _error_code(exc) == "NoSuchEntity":
            raise _Refusal("instance profile not found") from None
        raise
    profile = profile["InstanceProfile"]
    roles = profile.get("Roles", [])
    if profile.get("Arn") != profile_arn or len(roles) != 1:
        raise _Refusal("instance profile is not the instance's or has no single role")
    if roles[0].get("RoleName") != caller.role_name:
        raise _Refusal(f"caller role is not the instance role {roles[0].get('RoleName')}")
    # Role ids are never reused: this rejects a session of an older same-named role.
    if roles[0].get("RoleId") != caller.role_id:
        raise _Refusal("caller role id is not the instance role's id")


def _error_code(exc: ClientError) -> str:
    return exc.response.get("Error", {}).get("Code") or ""


def _join_credentials(settings: Settings, ssm: Any) -> dict[str, str]:
    names = [
        settings.domain_parameter,
        settings.join_user_parameter,
        settings.join_password_parameter,
    ]
    answer = ssm.get_parameters(Names=sorted(set(names)), WithDecryption=True)
    values = {p["Name"]: p.get("Value") for p in answer.get("Parameters", [])}
    missing = sorted({name for name in names if not (values.get(name) or "").strip()})
    if missing:  # names only: the values may be secret
        raise _ConfigError("configuration error: SSM parameters missing or empty: " + ", ".join(missing))
    domain, user, password = (values[name] for name in names)
    domain = domain.strip()
    return {
        "domain": domain,
        "realm": domain.upper(),
        "user": user,
        "password": password,
    }


def function_url_event(
    *,
    user_arn: str,
    user_id: str,
    account_id: str,
    method: str = "POST",
    body: str = "",
    request_id: str | None = None,
) -> dict[str, Any]:
    """The minimal function-URL event `handle` reads, for a local endpoint that has
    itself verified the caller identity it passes here."""
    identity = {"userArn": user_arn, "userId": user_id, "accountId": account_id}
    return {
        "version": "2.0",
        "requestContext": {
            "requestId": request_id,
            "http": {"method": method},
            "authorizer": {"iam": identity},
        },
        "body": body,
        "isBase64Encoded": False,
    }
