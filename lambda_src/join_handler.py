"""Join function: for a live node of this cluster, during its join window only, create that node's
computer object with a one-time password and answer that password; nothing else, to nothing else.

A node so holds a credential for its own computer object and nothing else (issue 16): the account
that adds computer objects (SSM JOIN_USER_PARAMETER / JOIN_PASSWORD_PARAMETER, only "create computer
objects" on the cluster's OU) never leaves this function, and the object is created with a security
descriptor that leaves that account no right on it (computer_account.py).

Transport: a Lambda function URL with AWS_IAM auth (payload format 2.0). The caller identity
is what STS answers for the caller proof in the body (the headers of a GetCallerIdentity
request the node signed with its credentials, which the function sends to STS): the event's
identity is only compared with it, since anyone allowed lambda:InvokeFunction can invoke the
function directly and write any event. Instance-role credentials carry the instance id as their session name, but anyone
allowed to assume *some* role can choose that session name. So the caller is accepted only
if its role is the role of that very instance's instance profile, in the same account,
that role was created by ParallelCluster for this cluster (IAM path
``/parallelcluster/<CLUSTER_NAME>/``: no cluster user can create roles, while anyone with
ec2:CreateTags can set the cluster tag), the instance is a pending/running node of this
cluster (tag) in this VPC, and EC2 launched it from one of the launch templates of the
cluster's own CloudFormation stack (system tag ``aws:ec2launchtemplate:id``, which no one
can set): an instance started by hand with the cluster's instance profile gets nothing.

Join window: every process on a node can read the node role's credentials from IMDS, so a
valid signature does not mean "the boot-time join asks". An object is created only while
the instance's window is open: launched less than WINDOW_MINUTES ago, fewer than MAX_ANSWERS
attempts (retries after a transient DC error), no object created for the instance before
(ONE one-time password per instance, ever; the directory refuses a second object of the
name as well), and the record not made for another launch of the instance. The node's
join script confirms its join with a close; later requests are refused and logged at
WARNING. The state lives in a DynamoDB table (one item per instance, key ``instanceId``);
every attempt is counted by ONE conditional UpdateItem BEFORE anything is read or created.

Event fields read; a local HTTP endpoint (the real-AD lab) may build just these with
``function_url_event`` after authenticating the caller itself:
    version                               "2.0"
    requestContext.requestId              optional, only logged
    requestContext.http.method            "POST"
    requestContext.authorizer.iam.userArn
        arn:<partition>:sts::<account>:assumed-role/<role-name>/<instance-id>
    requestContext.authorizer.iam.userId  <role-id>:<instance-id>
    requestContext.authorizer.iam.accountId
    body, isBase64Encoded                 the body selects the request, and carries the proof:
        {"proof": {...}}                                          join request
        {"joined": true, "computerName": "<NAME>", "proof": {...}} close request (after the join)

Responses (JSON): 200 {"domain", "realm", "computerName", "hostFqdn", "oneTimePassword", "serviceAccounts"}
(join request) or 200 {"closed": true} (close request); 400 {"error": <why>} for malformed
requests; 403 {"error": "forbidden"}; 429 {"error": "join function busy: ...", "retryAfter": N} with header
Retry-After: N when MAX_JOINS_IN_PROGRESS joins are in progress (admission control, _Lease: decided after the
authorization, before any SSM or LDAP call, no answer counted); 500 or 503 {"error": "internal error"} (503: AWS
throttled or unreachable, or no domain controller reachable: worth retrying). Each request
logs one JSON line (request id, caller, instance id, computer name, decision, reason,
window state), never a password.

AWS calls: ec2:DescribeInstances, iam:GetInstanceProfile, cloudformation:ListStackResources
on the cluster's stacks, dynamodb:UpdateItem and dynamodb:GetItem on the window table,
ssm:GetParameters with decryption (so kms:Decrypt on the parameters' key); LDAP (389, NTLM,
sealed) to DC_IPS. Per request (issue 20, docs/design.md): a request the window record already
refuses costs one GetItem; a join at most one (filtered) DescribeInstances, instance profiles
and the adding account's credentials are cached per container; a close by the role session the
object was issued to is decided from the record alone; the admission lease costs one UpdateItem per join and one
per close. A 429 records the authorization (one more UpdateItem): the node's retries within AUTHORIZED_SECONDS, and
its join after them, are decided from the record (a retry: the pre-check's GetItem and the lease's UpdateItem). An
instance that is no node of the cluster (VPC, tag, launch template) is recorded as such: its next requests cost the
pre-check's GetItem alone.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import os
import re
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple, NoReturn

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

try:  # the Lambda package: the modules side by side at the zip's root
    import computer_account
except ImportError:  # the checkout (tests, the AD lab)
    from pcluster_ad.lambda_src import computer_account

CLUSTER_TAG = "parallelcluster:cluster-name"
# EC2 sets it on every instance launched from a launch template; no one can set an aws: tag.
LAUNCH_TEMPLATE_TAG = "aws:ec2launchtemplate:id"
# The cluster's launch templates, read from its CloudFormation stacks, are cached this long; a template
# missing from the cache is looked up again at most this often (a flood cannot multiply the calls).
TEMPLATE_CACHE_SECONDS = 300
TEMPLATE_MISS_REFRESH_SECONDS = 30
# Instance profiles (IAM GetInstanceProfile) are cached this long per profile ARN: IAM's request rates are
# unpublished and cannot be raised, and every node of a queue shares one profile (issue 20). An answer that no
# longer matches the caller is fetched again at most this often (then the fresh answer decides).
PROFILE_CACHE_SECONDS = 300
PROFILE_MISS_REFRESH_SECONDS = 30
PROFILE_CACHE_MAX = 64  # profiles per container (a cluster has one per queue and the head node)
# The adding account's credentials (SSM GetParameters, 40/s by default per account and region) are kept this long
# in the container; a rotation reaches new joins within it.
CREDENTIAL_CACHE_SECONDS = 60
# ParallelCluster creates node roles and instance profiles under this path
# (pcluster/templates/cdk_builder_utils.py `_cluster_scoped_iam_path`; stack name = cluster name).
ROLE_PATH = "/parallelcluster/{cluster}/"
# The window table's schema (JoinFunction creates it; tests create the same one in moto).
WINDOW_KEY = "instanceId"
TTL_ATTRIBUTE = "expiresAt"
# TTL while no object was created: launch + window + this. Once an object exists for the instance the record
# has no TTL: it must hold as long as the instance lives (one one-time password per instance, ever).
OPEN_TTL_SLACK_SECONDS = 24 * 3600
# Admission control (issue 20): at most MAX_JOINS_IN_PROGRESS joins at once against the directory. A join holds a
# lease from its credential request until its close; the leases are one map in ONE item of the window table (key
# ADMISSION_KEY, which no instance id matches), changed only by conditional UpdateItems, so the cap holds however many
# function instances run. An overloaded DC pushes `realm join` past its cap and the retries make it worse: waiting
# (HTTP 429, the node's full-jitter backoff) is cheaper than a collapse.
ADMISSION_KEY = "admission"
# A lease lasts a node's whole join, ~1.6 s, of which the DC spends 0.10-0.14 CPU s (lab): 16 at once pass ~10
# joins/s, one DC's capacity (7-10/s); 8 passed ~5/s and made 1,000 nodes on 2 DCs wait (bench/join_scale.py).
JOINS_PER_DC = 16
MAX_JOINS_LIMIT = 500
# A lease outlives the function's timeout (60 s) and one `realm join` attempt (join-domain.sh caps it at 120 s): a
# node that dies after its answer (no close) frees its slot after this, never holds it for good.
LEASE_SECONDS = 180
RETRY_AFTER_SECONDS = 2  # a join takes seconds: the node's full-jitter backoff spreads the retries beyond this floor
EXPIRED_DROP_MAX = 50  # expired leases dropped per UpdateItem (the expression stays far below 4 KB)
# A join answered 429 records in its window record that EC2, IAM and CloudFormation authorized this role session of
# this launch; the node's retries are decided from the record this long after EC2's answer (no EC2 call per retry),
# then EC2 is asked again: a node terminated meanwhile is not trusted for long on a stale answer.
AUTHORIZED_SECONDS = 120
# An instance refused for what only the instance decides (VPC, cluster tag, launch template, terminated) is recorded
# as "not a node" for this long, for the role id that asked: its further requests with that role are refused from
# DynamoDB alone (no EC2, IAM or CloudFormation call). Keyed on the role id STS vouched for, so a session of another
# role named after a real node marks that role only, never the node's own (attack review 3 of issue 20, finding 2).
NOT_A_NODE_SECONDS = 24 * 3600
NOT_A_NODE_ATTRIBUTE = "notNodeUntil_{role_id}"  # one attribute per role id: a short marker never shortens a long one
# A launch template missing from the cluster stack marks the instance only when the stack was read this long after
# the instance's launch: a queue added by a cluster update may launch nodes before a cached list shows its template.
TEMPLATE_SETTLE_SECONDS = 300
LIVE_STATES = frozenset({"pending", "running"})
GONE_STATES = frozenset({"shutting-down", "terminated"})  # for good: instance ids are never reused
THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestLimitExceeded",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",  # DynamoDB, on-demand tables too
    }
)
# Backoff retries for throttling and transient faults; short timeouts keep the worst
# case (4 calls x 4 attempts) near the function timeout.
MAX_ATTEMPTS = 4
BOTO_CONFIG = Config(
    retries={"mode": "standard", "total_max_attempts": MAX_ATTEMPTS}, connect_timeout=3, read_timeout=5
)

INSTANCE_ID = re.compile(r"i-(?:[0-9a-f]{8}|[0-9a-f]{17})")
ASSUMED_ROLE_ARN = re.compile(r"arn:aws[a-z-]*:sts::(\d{12}):assumed-role/([\w+=,.@-]+)/([\w+=,.@-]+)")
# A NetBIOS computer name as the join script sends it: what realm join registered.
COMPUTER_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,13}[A-Za-z0-9])?")
CLOSE_BODY = '{"joined": true, "computerName": "<NAME>", "proof": {...}}'
JOIN_BODY = '{"proof": {...}}'
# The caller proof: the headers of an STS GetCallerIdentity request the node signed with its instance role's
# credentials (what Vault's AWS auth does). The function sends it to STS itself: the identity STS answers cannot be
# forged by anyone without those credentials, unlike the event, which anyone allowed lambda:InvokeFunction writes.
PROOF_HEADERS = ("authorization", "x-amz-date", "x-amz-security-token")
PROOF_BODY = "Action=GetCallerIdentity&Version=2011-06-15"
PROOF_CONTENT_TYPE = "application/x-www-form-urlencoded; charset=utf-8"
# Signed by the node: a GetCallerIdentity signature made for anything else is no proof here.
PROOF_AUDIENCE_HEADER, PROOF_AUDIENCE = "X-Pcluster-Ad-Audience", "pcluster-ad-join-function"
PROOF_SIGNED = ("content-type", "host", "x-amz-date", "x-amz-security-token", "x-pcluster-ad-audience")
PROOF_AUTH = re.compile(r"AWS4-HMAC-SHA256 Credential=[A-Z0-9]{16,128}/\d{8}/(?P<region>[a-z0-9-]+)"
                        r"/(?P<service>[a-z0-9]+)/aws4_request, ?SignedHeaders=(?P<signed>[a-z0-9;-]+),"
                        r" ?Signature=[0-9a-f]{64}")
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
    window_table: str
    window_minutes: int
    max_answers: int
    dc_ips: tuple[str, ...]
    computer_ou: str
    computer_prefix: str
    ldap_port: int = 389
    max_joins_in_progress: int = JOINS_PER_DC  # 0: no admission control


_PARAMETER = (re.compile(r"[A-Za-z0-9_.\-/]{1,2048}"), "an SSM parameter name")
_SETTINGS_RULES = {
    "CLUSTER_NAME": (re.compile(r"[A-Za-z][A-Za-z0-9-]{0,59}"), "a cluster name"),
    "VPC_ID": (re.compile(r"vpc-(?:[0-9a-f]{8}|[0-9a-f]{17})"), "a VPC id"),
    "DOMAIN_PARAMETER": _PARAMETER,
    "JOIN_USER_PARAMETER": _PARAMETER,
    "JOIN_PASSWORD_PARAMETER": _PARAMETER,
    "WINDOW_TABLE": (re.compile(r"[A-Za-z0-9_.-]{3,255}"), "a DynamoDB table name"),
    "DC_IPS": (re.compile(r"\d{1,3}(?:\.\d{1,3}){3}(?:,\d{1,3}(?:\.\d{1,3}){3})*"),
               "comma-separated IPv4 addresses of the domain controllers"),
    "COMPUTER_OU": (re.compile(r"(?:OU|CN)=[^,]+(?:,(?:OU|CN|DC)=[^,]+)*", re.IGNORECASE),
                    "an OU's distinguished name"),
    "COMPUTER_PREFIX": (re.compile(r"[A-Z][A-Z0-9]{0,5}"), "a computer name prefix (1-6 upper-case letters/digits)"),
}
# Whole numbers and their bounds: the window must outlast the join script's own deadline (10 min).
_INT_RULES = {"WINDOW_MINUTES": (10, 1440), "MAX_ANSWERS": (1, 10)}


def load_settings(environ: Mapping[str, str] = os.environ) -> Settings:
    values: dict[str, Any] = {}
    problems = []
    for variable, (pattern, meaning) in _SETTINGS_RULES.items():
        value = values[variable.lower()] = environ.get(variable, "").strip()
        if not value:
            problems.append(f"{variable} is not set")
        elif not pattern.fullmatch(value):
            problems.append(f"{variable}={value[:80]!r} is not {meaning}")
    for variable, (low, high) in _INT_RULES.items():
        value = environ.get(variable, "").strip()
        if not value:
            problems.append(f"{variable} is not set")
        elif not re.fullmatch(r"\d{1,5}", value) or not low <= int(value) <= high:
            problems.append(f"{variable}={value[:80]!r} is not a whole number from {low} to {high}")
        else:
            values[variable.lower()] = int(value)
    port = environ.get("LDAP_PORT", "389").strip() or "389"
    if not re.fullmatch(r"\d{1,5}", port) or not 1 <= int(port) <= 65535:
        problems.append(f"LDAP_PORT={port[:80]!r} is not a TCP port")
    else:
        values["ldap_port"] = int(port)
    joins = environ.get("MAX_JOINS_IN_PROGRESS", "").strip() or str(JOINS_PER_DC)
    if not re.fullmatch(r"\d{1,5}", joins) or int(joins) > MAX_JOINS_LIMIT:
        problems.append(f"MAX_JOINS_IN_PROGRESS={joins[:80]!r} is not a whole number from 0 to {MAX_JOINS_LIMIT}"
                        f" (joins at once against the directory, {JOINS_PER_DC} per domain controller; 0: no cap)")
    else:
        values["max_joins_in_progress"] = int(joins)
    if problems:
        raise SettingsError("join function environment: " + "; ".join(problems))
    values["dc_ips"] = tuple(values["dc_ips"].split(","))
    if any(int(octet) > 255 for ip in values["dc_ips"] for octet in ip.split(".")):
        raise SettingsError(f"join function environment: DC_IPS={','.join(values['dc_ips'])[:80]!r} is not"
                            " comma-separated IPv4 addresses of the domain controllers")
    return Settings(**values)


def make_clients() -> dict[str, Any]:
    """Clients for `handle`; region and endpoints come from the usual AWS_* variables."""
    return {name: boto3.client(name, config=BOTO_CONFIG)
            for name in ("ec2", "iam", "ssm", "dynamodb", "cloudformation")}


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


class _NotANode(_Refusal):
    """Refused for what depends on the instance alone (EC2 sets it at launch, or it is gone); handle records it for
    `seconds` (NOT_A_NODE_SECONDS unless the answer may change sooner)."""

    def __init__(self, reason: str, seconds: int = NOT_A_NODE_SECONDS) -> None:
        super().__init__(reason)
        self.seconds = seconds


class _NotFound(_Refusal):
    """EC2 does not know the instance (a made-up id, one too new for EC2's eventual consistency, or one terminated
    long ago)."""


class _ProofUnavailable(_Refusal):
    """STS could not be asked: worth retrying."""

    status, decision, public = 503, "error", "internal error"


class _Busy(_Refusal):
    """The joins in progress are at the cap: come back after `retry_after` seconds. Nothing was counted."""

    status, decision = 429, "busy"

    def __init__(self, reason: str, retry_after: int = RETRY_AFTER_SECONDS) -> None:
        super().__init__(reason)
        self.retry_after = retry_after
        self.public = "join function busy: the joins in progress against the directory are at their cap; retry later"


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
    dynamodb: Any,
    cloudformation: Any,
    logger: logging.Logger = LOG,
    now: Callable[[], float] = time.time,
    create_computer: Callable[..., tuple[str, str]] = computer_account.create_computer,
    verify_proof: Callable[[Mapping[str, Any], float], dict[str, str]] | None = None,
) -> dict[str, Any]:
    """Authorize the caller; create its computer object and answer the one-time password, or close its window
    (see module doc). `create_computer(directory, name, host_fqdn)` -> (DN, password): computer_account's."""
    fields: dict[str, Any] = {"request_id": _dig(event, "requestContext", "requestId")}
    internal_error = {"error": "internal error"}
    headers = {"content-type": "application/json", "cache-control": "no-store"}
    lease: _Lease | None = None
    try:
        # closing: the computer name of a close request; None for a credential request
        url_identity, closing, proof = _parse_request(event)
        # A node whose object exists (or whose window closed) is refused at the cost of one read, before STS, EC2
        # or IAM are asked: a process repeating requests with a joined node's credentials costs little. Keyed on the
        # event's claim, so it can only refuse, never admit.
        recorded = _refuse_finished(settings, dynamodb, url_identity, closing, fields, now())
        # Who asks is what STS says of the caller's signed GetCallerIdentity request, not what the event says:
        # anyone in the account allowed lambda:InvokeFunction could write any event (attack review, issue 16).
        identity = (verify_proof or sts_caller_identity)(proof, now())
        fields.update(caller_arn=identity["userArn"], caller_account=identity["accountId"])
        if url_identity["userArn"] != identity["userArn"]:
            raise _Refusal("the caller proof names another identity than the request's signature")
        fields.update(request="credentials" if closing is None else "close")
        caller = _instance_caller(identity)
        fields.update(caller_role=caller.role_name, instance_id=caller.instance_id)
        name = computer_name(settings.computer_prefix, caller.instance_id)
        if closing is not None and closing != name:  # before EC2: a wrong name costs no call (attack review 4, F1)
            raise _BadRequest(f"computerName must be this instance's computer name {name}")
        if closing is None:
            # A node answered 429 before has its authorization in its record: its retries cost no EC2 call.
            recorded_launch = _authorized_launch(recorded, caller, settings, now())
        else:
            # A close after the object was issued to this very role session needs no EC2 or IAM call: its only
            # effect is bookkeeping (a second password is refused anyway), and only EC2 mints sessions of the
            # instance role named after the instance.
            recorded_launch = _issued_launch(recorded, caller, closing, settings, now()) if closing == name else None
        launch = recorded_launch or _authorize_or_mark(caller, settings, ec2, iam, cloudformation, dynamodb, now(),
                                                       fields, recorded=recorded)
        window = _Window(settings, dynamodb, caller.instance_id, launch, now(), fields)
        if closing is None and settings.max_joins_in_progress:
            # Admission (issue 20), AFTER the authorization (attack review 2 of issue 20, finding 1): only a node
            # takes a slot, so instances started outside the cluster's templates cannot hold the slots while EC2 is
            # asked. BEFORE any SSM or LDAP call: a 429 counts no answer of the window. Keyed on the instance id STS
            # and EC2 vouch for: a node holds one slot however many requests it sends.
            if recorded_launch is not None:
                # A retry after a 429 takes its turn in its own record first (conditional: one of any requests in
                # flight at once wins, the others are answered 429 without touching the admission item; attack
                # review 4 of issue 20, finding 4). The turn sets the next retry time, should the lease refuse.
                window.take_turn(caller.role_id)
            lease = _Lease(settings, dynamodb, caller.instance_id, fields)
            try:
                lease.acquire(now())
            except _Busy as busy:
                if recorded_launch is None:  # EC2 just authorized it: its retries are decided from the record,
                    # and the record says when the next try may come (the pre-check answers earlier ones)
                    window.busy(caller.role_id, retry_after=busy.retry_after)
                raise
        fields.update(computer_name=name)
        if closing is None:
            # Before the adding account is read (cached: _join_credentials); decided from the record: only while the
            # record still shows this role's authorization (not re-created after the node's termination removed it).
            window.count_answer(authorized_as=caller.role_id if recorded_launch else None)
            try:
                body = _new_computer(settings, _join_credentials(settings, ssm, now()), create_computer, name)
            except computer_account.ComputerAccountError:
                # A rotated password fails the bind like an unreachable DC: the node's retry reads SSM again
                # instead of spending its whole window on the old password (attack review of issue 20, finding 4).
                _credentials.update(values=None, fetched=float("-inf"))
                raise
            fields.update(computer_dn=body.pop("dn"))
            try:
                # _Busy (not caught here) when the authorization it was decided from was withdrawn meanwhile
                window.issued(name, caller.role_id, authorized_as=caller.role_id if recorded_launch else None)
            except (ClientError, BotoCoreError) as exc:
                # The object exists and only this answer carries its password: answer. The directory refuses a
                # second object of the name, so one password per instance holds without the record.
                fields.update(record_error=type(exc).__name__)
            status, decision, reason = 200, "allow", "live node of the cluster within its join window"
        else:
            window.close(closing, issued_to=caller.role_id if recorded_launch else None)
            if settings.max_joins_in_progress:  # the join is over: its slot goes to the next node
                _Lease(settings, dynamodb, caller.instance_id, fields).release()
            body = {"closed": True}
            status, decision, reason = 200, "close", "the node closed its join window after its join"
    except _Busy as busy:
        status, decision, reason = busy.status, busy.decision, busy.reason
        body = {"error": busy.public, "retryAfter": busy.retry_after}
        headers["retry-after"] = str(busy.retry_after)
    except _Refusal as refusal:
        status, decision, reason = refusal.status, refusal.decision, refusal.reason
        body = {"error": refusal.public}
    except computer_account.DirectoryUnavailable as exc:
        fields.update(error=str(exc))
        status, body, decision, reason = 503, internal_error, "error", "directory unreachable"
    except computer_account.ComputerAccountError as exc:
        fields.update(error=str(exc))
        status, body, decision, reason = 500, internal_error, "error", "computer object not created"
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

    if lease is not None and lease.taken and status != 200:
        lease.release()  # refused or failed: no join goes on (a 200 keeps it until the close, or its expiry)
    # A 429 is flow control, not a warning.
    level = {2: logging.INFO, 4: logging.WARNING}.get(status // 100, logging.ERROR) if status != 429 else logging.INFO
    record = {**fields, "status": status, "decision": decision, "reason": reason}
    logger.log(level, json.dumps(record, default=str, sort_keys=True))
    return {"statusCode": status, "headers": headers, "body": json.dumps(body)}


def _dig(value: Any, *keys: str) -> Any:
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _parse_request(event: Any) -> tuple[dict[str, str], str | None, dict[str, str]]:
    """Check the request's shape; return requestContext.authorizer.iam, for a close request the computer name,
    and the caller proof."""
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
    return (identity, *_parse_body(body))


def _parse_body(body: str) -> tuple[str | None, dict[str, str]]:
    """The computer name of a close request (None for a join request) and the caller proof."""
    try:
        parsed = json.loads(body or "null")
    except ValueError:
        raise _BadRequest("body is not valid JSON") from None
    if not isinstance(parsed, dict) or not isinstance(parsed.get("proof"), dict):
        raise _BadRequest(f"body must be {JOIN_BODY} (join request) or {CLOSE_BODY} (close request): the proof is"
                          " the caller's signed STS GetCallerIdentity headers")
    proof = parsed.pop("proof")
    # HTTP header values: printable ASCII only (anything else could not even be sent on to STS).
    bad = sorted(k for k, v in proof.items() if k not in PROOF_HEADERS or not isinstance(v, str) or not v
                 or len(v) > 4096 or not (v.isascii() and v.isprintable()))
    if bad or set(proof) != set(PROOF_HEADERS):
        raise _BadRequest(f"proof must hold exactly {', '.join(PROOF_HEADERS)} (strings)")
    if parsed == {}:
        return None, proof
    if set(parsed) != {"joined", "computerName"} or parsed["joined"] is not True:
        raise _BadRequest(f"a close request body must be exactly {CLOSE_BODY}")
    name = parsed["computerName"]
    if not isinstance(name, str) or not COMPUTER_NAME.fullmatch(name):
        raise _BadRequest("computerName must be 1-15 letters, digits or '-', not starting or ending with '-'")
    return name, proof


def sts_caller_identity(proof: Mapping[str, str], now: float, *, region: str | None = None,
                        opener: Callable[..., Any] | None = None) -> dict[str, str]:
    """Send the caller's signed GetCallerIdentity request to STS (this region's endpoint) and return who STS says
    signed it, as {"userArn", "userId", "accountId"}. Only a request signed for this function (the audience
    header, signed) and for this region is sent on; STS checks signature, time and token."""
    import urllib.error
    import urllib.request
    import xml.etree.ElementTree as ElementTree

    region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or ""
    match = PROOF_AUTH.fullmatch(proof["authorization"])
    if not match or match["region"] != region or match["service"] != "sts":
        raise _Refusal("the caller proof is not a SigV4 signature for STS in this region")
    if not set(PROOF_SIGNED) <= set(match["signed"].split(";")):
        raise _Refusal(f"the caller proof must sign {';'.join(PROOF_SIGNED)}")
    request = urllib.request.Request(
        f"https://sts.{region}.amazonaws.com/", data=PROOF_BODY.encode(), method="POST",
        headers={"Content-Type": PROOF_CONTENT_TYPE, PROOF_AUDIENCE_HEADER: PROOF_AUDIENCE,
                 "X-Amz-Date": proof["x-amz-date"], "X-Amz-Security-Token": proof["x-amz-security-token"],
                 "Authorization": proof["authorization"]})
    try:
        with (opener or urllib.request.urlopen)(request, timeout=5) as answer:
            text = answer.read(65536)
    except urllib.error.HTTPError as exc:
        if 400 <= exc.code < 500 and exc.code != 429:
            raise _Refusal(f"STS refused the caller proof (HTTP {exc.code})") from None
        raise _ProofUnavailable(f"STS answered HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise _ProofUnavailable(f"STS unreachable ({type(exc).__name__})") from None
    ns = {"s": "https://sts.amazonaws.com/doc/2011-06-15/"}
    try:
        result = ElementTree.fromstring(text).find("s:GetCallerIdentityResult", ns)
    except ElementTree.ParseError:
        raise _ProofUnavailable("STS's answer is not XML") from None
    values = {key: (result.findtext(f"s:{tag}", default="", namespaces=ns) if result is not None else "")
              for key, tag in (("userArn", "Arn"), ("userId", "UserId"), ("accountId", "Account"))}
    if not all(values.values()):
        raise _Refusal("STS's answer to the caller proof names no caller")
    return values


def _refuse_finished(settings: Settings, dynamodb: Any, claimed: Mapping[str, str], closing: str | None,
                     fields: dict[str, Any], now: float) -> dict[str, Any]:
    """The claimed instance's window record (an eventually consistent read), after refusing a request that it
    already decides: closed, issued, exhausted, or made for a launch whose window is over. {} when there is none or
    it cannot be read."""
    match = ASSUMED_ROLE_ARN.fullmatch(claimed["userArn"])
    if not match or not INSTANCE_ID.fullmatch(match.group(3)):
        return {}  # the full checks refuse it with their reason
    try:
        item = dynamodb.get_item(TableName=settings.window_table, Key={WINDOW_KEY: {"S": match.group(3)}}).get(
            "Item") or {}
    except (ClientError, BotoCoreError):
        return {}  # the full path decides (and reports a real outage)
    claimed_role_id = claimed["userId"].partition(":")[0]
    marker = NOT_A_NODE_ATTRIBUTE.format(role_id=claimed_role_id)
    if float(_dig(item, marker, "N") or 0) > now:  # TTL deletion lags: the record's own deadline decides
        fields.update(instance_id=match.group(3), not_a_node=True)
        raise _Refusal(f"not a node of the cluster (recorded: {_dig(item, 'notNodeReason', 'S')}); no EC2 call")
    if _dig(item, "terminatedAt", "S") is not None:  # written by the termination handler after EC2 said so
        fields.update(instance_id=match.group(3), terminated_at=_dig(item, "terminatedAt", "S"))
        raise _Refusal("instance terminated (its record says so); no EC2 call")
    if _dig(item, "closedAt", "S") is not None:
        fields.update(instance_id=match.group(3), window_closed=True)
        raise _Refusal("join window closed: a second close request for this node" if closing is not None else
                       "join window closed: a process on this node asked for the join secret after the join")
    if closing is None and _dig(item, "issuedAt", "S") is not None:
        fields.update(instance_id=match.group(3), issued_at=_dig(item, "issuedAt", "S"))
        raise _Refusal("computer object already created for this instance: a process on this node asked for a"
                       " second one-time password")
    answers = int(_dig(item, "answers", "N") or 0)
    if closing is None and answers >= settings.max_answers:
        fields.update(instance_id=match.group(3), answers=answers, window_closed=False)
        raise _Refusal(f"join window exhausted: {answers} of {settings.max_answers} answers given")
    # The window of the launch the record was made for is over: refused whatever EC2 says (the same launch: expired;
    # a later one, after a stop and start: the record is another launch's), so EC2 is not asked and no lease taken,
    # however often a node whose join failed asks (attack review 2 of issue 20, finding 2).
    recorded_launch = _dig(item, "launchTime", "S")
    if recorded_launch is not None:
        try:
            launched = _launch_time(recorded_launch).timestamp()
        except _Refusal:
            return item  # unreadable: the full path decides
        if now - launched >= settings.window_minutes * 60:
            fields.update(instance_id=match.group(3), answers=answers, window_closed=False)
            raise _Refusal(f"join window expired: the record was made for the launch at {recorded_launch},"
                           f" {round((now - launched) / 60, 1)} minutes ago; the window is {settings.window_minutes}"
                           " minutes (a later launch gets no new object either)")
    # A join answered 429 comes back no sooner than its Retry-After: earlier retries (root on a waiting node flooding)
    # are answered 429 from this read, so they never write the one admission item (attack review 3, finding 5).
    # Keyed on the claim (instance and role id): it can only make the claimant wait.
    retry_not_before = float(_dig(item, "retryNotBefore", "N") or 0)
    if closing is None and retry_not_before > now and _dig(item, "authorizedRoleId", "S") == claimed_role_id:
        fields.update(instance_id=match.group(3), retry_not_before=retry_not_before)
        raise _Busy("a retry before the Retry-After of this node's last 429",
                    retry_after=max(1, math.ceil(retry_not_before - now)))
    return item


def _recorded_launch_time(item: Mapping[str, Any]) -> datetime | None:
    """The launch time the record holds; None when it holds none or an unreadable one."""
    try:
        return _launch_time(_dig(item, "launchTime", "S"))
    except _Refusal:
        return None


def _recorded_launch(item: Mapping[str, Any], settings: Settings, now: float) -> datetime | None:
    """The launch time the record holds, if the window it opened is still open; None otherwise."""
    launch = _recorded_launch_time(item)
    return launch if launch is not None and now - launch.timestamp() < settings.window_minutes * 60 else None


def _issued_launch(item: Mapping[str, Any], caller: Caller, closing: str | None, settings: Settings,
                   now: float) -> datetime | None:
    """The launch time the record holds when it shows the object issued to this role session for this computer
    name, within the window (the close's fast path); None: the full checks decide (and a late close then learns
    from EC2 whether the instance was restarted)."""
    if (_dig(item, "issuedAt", "S") is None or _dig(item, "issuedRoleId", "S") != caller.role_id
            or _dig(item, "computerName", "S") != closing or _dig(item, "instanceId", "S") != caller.instance_id):
        return None
    return _recorded_launch(item, settings, now)


def _authorized_launch(item: Mapping[str, Any], caller: Caller, settings: Settings, now: float) -> datetime | None:
    """The launch time the record holds when it shows this role session's authorization (a join answered 429, within
    AUTHORIZED_SECONDS of EC2's answer) within the window; None: the full checks decide. Only the role id STS
    vouches for matches: a session of another role named after the instance gets nothing from it."""
    if (_dig(item, "authorizedRoleId", "S") != caller.role_id or _dig(item, "instanceId", "S") != caller.instance_id
            or float(_dig(item, "authorizedUntil", "N") or 0) <= now):
        return None
    return _recorded_launch(item, settings, now)


def _authorize_or_mark(caller: Caller, settings: Settings, ec2: Any, iam: Any, cloudformation: Any, dynamodb: Any,
                       now: float, fields: dict[str, Any], *, recorded: Mapping[str, Any]) -> datetime:
    """_authorize; an instance it finds no node of the cluster (_NotANode) is recorded as such for
    NOT_A_NODE_SECONDS, so the pre-check refuses its further requests from DynamoDB alone. Never over a record of an
    object issued or a window closed; best effort. `recorded`: the pre-check's read of the instance's record."""
    try:
        try:
            return _authorize(caller, settings, ec2, iam, cloudformation, now)
        except _NotFound as refusal:
            # EC2 forgets a terminated instance after about an hour; its credentials last longer. An instance this
            # function recorded, launched long enough ago that EC2's eventual consistency is no reason, is gone:
            # recorded too (attack review 4, finding 2). An id never recorded writes nothing (no item per made-up id).
            launched = _recorded_launch_time(recorded)
            if launched is None or now - launched.timestamp() < TEMPLATE_SETTLE_SECONDS:
                raise
            raise _NotANode(f"{refusal.reason} (recorded for its launch at {_iso(launched.timestamp())})") from None
    except _NotANode as refusal:
        until = str(int(now) + refusal.seconds)
        try:
            # The record's own TTL stays (a window's record outlives a short marker); a new record ends with it.
            dynamodb.update_item(
                TableName=settings.window_table, Key={WINDOW_KEY: {"S": caller.instance_id}},
                UpdateExpression=f"SET notNodeReason = :why, #until = :until,"
                f" {TTL_ATTRIBUTE} = if_not_exists({TTL_ATTRIBUTE}, :until)",
                ConditionExpression="attribute_not_exists(issuedAt) AND attribute_not_exists(closedAt)"
                " AND (attribute_not_exists(#until) OR #until < :until)",
                ExpressionAttributeNames={"#until": NOT_A_NODE_ATTRIBUTE.format(role_id=caller.role_id)},
                ExpressionAttributeValues={":why": {"S": refusal.reason[:300]}, ":until": {"N": until}})
            fields.update(not_a_node_recorded=True, not_a_node_seconds=refusal.seconds)
        except ClientError as exc:
            fields.update(not_a_node_record_error=_error_code(exc))
        except BotoCoreError as exc:
            fields.update(not_a_node_record_error=type(exc).__name__)
        raise


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


def _authorize(caller: Caller, settings: Settings, ec2: Any, iam: Any, cloudformation: Any, now: float) -> datetime:
    """Deny unless the instance is a live cluster node, launched from one of the launch templates of the
    cluster's own CloudFormation stack, whose profile role is the caller's and was made by ParallelCluster for
    this cluster; return the instance's launch time."""
    # The id AND a filter: EC2 may count a call without a filter in its small "unfiltered" bucket, which
    # ParallelCluster's own DescribeInstances shares (issue 20); a filter with a page size instead of the id could
    # answer an empty page and a NextToken (attack finding 2 of issue 20). An unknown id: InvalidInstanceID.
    try:
        answer = ec2.describe_instances(InstanceIds=[caller.instance_id],
                                        Filters=[{"Name": "instance-id", "Values": [caller.instance_id]}])
    except ClientError as exc:
        if _error_code(exc).startswith("InvalidInstanceID."):
            raise _NotFound("instance not found") from None
        raise
    found = [(r, i) for r in answer["Reservations"] for i in r.get("Instances", [])]
    if len(found) != 1 or found[0][1].get("InstanceId") != caller.instance_id:
        raise _NotFound("instance not found")
    reservation, instance = found[0]

    if reservation.get("OwnerId", caller.account) != caller.account:
        raise _Refusal("instance owner account differs from caller account")
    state = _dig(instance, "State", "Name")
    if state in GONE_STATES:  # its credentials outlive it (hours): recorded, so they cost no EC2 call per request
        raise _NotANode(f"instance state is {state}")
    if state not in LIVE_STATES:  # stopping, stopped: a later start is another launch (the window decides)
        raise _Refusal(f"instance state is {state}")
    # _NotANode: what EC2 fixed at the launch (the VPC, the aws: tag) or what only the cluster's owner sets (its tag).
    if instance.get("VpcId") != settings.vpc_id:
        raise _NotANode(f"instance is in VPC {instance.get('VpcId')}")
    tags = {t.get("Key"): t.get("Value") for t in instance.get("Tags", [])}
    tag = tags.get(CLUSTER_TAG)
    if tag != settings.cluster_name:
        raise _NotANode(f"instance tag {CLUSTER_TAG} is {tag!r}")

    # The role attached to the instance now: a session name alone is spoofable.
    profile_arn = _dig(instance, "IamInstanceProfile", "Arn") or ""
    match = PROFILE_ARN.fullmatch(profile_arn)
    if not match:
        raise _Refusal("instance has no instance profile")
    if match.group(1) != caller.account:
        raise _Refusal("instance profile account differs from caller account")
    profile, fetched = _instance_profile(iam, match.group(2), profile_arn, now)
    roles = profile.get("Roles", [])
    stale = [r for r in roles if (r.get("RoleName"), r.get("RoleId")) != (caller.role_name, caller.role_id)]
    if (stale or len(roles) != 1) and now - fetched >= PROFILE_MISS_REFRESH_SECONDS:  # a cached answer only
        profile, fetched = _instance_profile(iam, match.group(2), profile_arn, now, fresh=True)
        roles = profile.get("Roles", [])
    if profile.get("Arn") != profile_arn or len(roles) != 1:
        raise _Refusal("instance profile is not the instance's or has no single role")
    if roles[0].get("RoleName") != caller.role_name:
        raise _Refusal(f"caller role is not the instance role {roles[0].get('RoleName')}")
    # Role ids are never reused: this rejects a session of an older same-named role.
    if roles[0].get("RoleId") != caller.role_id:
        raise _Refusal("caller role id is not the instance role's id")
    # What only ParallelCluster sets: no cluster user can create a role (unlike the tag).
    path, expected = roles[0].get("Path"), ROLE_PATH.format(cluster=settings.cluster_name)
    if path != expected:
        raise _Refusal(f"instance role path is {path!r}, not {expected!r} (not a ParallelCluster role of the cluster)")
    # What no one can set by hand: the template EC2 launched it from, one of the cluster stack's own. An instance
    # started by hand with the cluster's profile, outside those templates, gets nothing.
    template = tags.get(LAUNCH_TEMPLATE_TAG)
    if not template:
        raise _NotANode("instance was not launched from a launch template (ParallelCluster launches every node from"
                        " one of the cluster's)")
    launch = _launch_time(instance.get("LaunchTime"))
    if template not in _cluster_templates(cloudformation, settings.cluster_name, now, want=template):
        # For good only when the stack was read well after the launch: a queue a cluster update adds launches nodes
        # from a template a cached list may not show yet (it is read again after TEMPLATE_MISS_REFRESH_SECONDS).
        # Unsettled, it is recorded until the list may be read again, so an instance started by hand with the
        # cluster's profile costs one EC2 call per TEMPLATE_MISS_REFRESH_SECONDS, not per request (finding 4).
        settled = _templates["fetched"] - launch.timestamp() >= TEMPLATE_SETTLE_SECONDS
        raise _NotANode(f"launch template {template} is not one of cluster {settings.cluster_name}'s CloudFormation"
                        " stack", seconds=NOT_A_NODE_SECONDS if settled else TEMPLATE_MISS_REFRESH_SECONDS)
    return launch


_templates: dict[str, Any] = {"ids": frozenset(), "fetched": float("-inf")}
_profiles: dict[str, tuple[float, dict[str, Any]]] = {}
_credentials: dict[str, Any] = {"values": None, "fetched": float("-inf")}


def _instance_profile(iam: Any, name: str, arn: str, now: float, *,
                      fresh: bool = False) -> tuple[dict[str, Any], float]:
    """(the instance profile, when it was fetched), cached per ARN for PROFILE_CACHE_SECONDS."""
    cached = _profiles.get(arn)
    if cached and not fresh and now - cached[0] < PROFILE_CACHE_SECONDS:
        return cached[1], cached[0]
    try:
        profile = iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]
    except ClientError as exc:
        if _error_code(exc) == "NoSuchEntity":
            _profiles.pop(arn, None)
            raise _Refusal("instance profile not found") from None
        raise
    if len(_profiles) >= PROFILE_CACHE_MAX:
        _profiles.clear()
    _profiles[arn] = (now, profile)
    return profile, now


def _join_credentials(settings: Settings, ssm: Any, now: float) -> tuple[str, str, str]:
    """(domain, account name, password) of the computer-adding account, from SSM, cached per container for
    CREDENTIAL_CACHE_SECONDS (never logged, never returned to a node)."""
    if _credentials["values"] is not None and now - _credentials["fetched"] < CREDENTIAL_CACHE_SECONDS:
        return _credentials["values"]
    names = [settings.domain_parameter, settings.join_user_parameter, settings.join_password_parameter]
    answer = ssm.get_parameters(Names=sorted(set(names)), WithDecryption=True)
    values = {p["Name"]: p.get("Value") for p in answer.get("Parameters", [])}
    missing = sorted({n for n in names if not (values.get(n) or "").strip()})
    if missing:  # names only: the values may be secret
        raise _ConfigError("configuration error: SSM parameters missing or empty: " + ", ".join(missing))
    domain, user, password = (values[n] for n in names)
    # The account's bare name ('DOMAIN\\user' and 'user@realm' name the same account).
    found = (domain.strip().lower(), user.strip().rsplit("\\", 1)[-1].split("@", 1)[0], password)
    _credentials.update(values=found, fetched=now)
    return found


def _cluster_templates(cloudformation: Any, cluster: str, now: float, *, want: str) -> frozenset[str]:
    """The launch template ids of the cluster's stack (ParallelCluster's stack name = cluster name) and of the
    stacks nested in it (queues, login pools), cached per container."""
    age = now - _templates["fetched"]
    if age < TEMPLATE_CACHE_SECONDS and (want in _templates["ids"] or age < TEMPLATE_MISS_REFRESH_SECONDS):
        return _templates["ids"]
    ids: set[str] = set()
    stacks, seen = [cluster], set()
    while stacks:
        stack = stacks.pop()
        if stack in seen or len(seen) >= 20:  # ParallelCluster nests one level; a bound all the same
            continue
        seen.add(stack)
        try:
            pages = cloudformation.get_paginator("list_stack_resources").paginate(StackName=stack)
            for page in pages:
                for res in page.get("StackResourceSummaries", []):
                    kind, physical = res.get("ResourceType"), res.get("PhysicalResourceId")
                    if kind == "AWS::EC2::LaunchTemplate" and physical:
                        ids.add(physical)
                    elif kind == "AWS::CloudFormation::Stack" and physical:
                        stacks.append(physical)
        except ClientError as exc:
            if _error_code(exc) != "ValidationError":  # "Stack ... does not exist"
                raise
    _templates.update(ids=frozenset(ids), fetched=now)
    return _templates["ids"]


def computer_name(prefix: str, instance_id: str) -> str:
    """The node's computer (NetBIOS) name, from its instance id only: prefix + sha256 hex, upper case, 15
    characters (lambda_src/directory_admin.computer_name, which deletes it again, computes the same)."""
    import hashlib

    return (prefix + hashlib.sha256(instance_id.encode()).hexdigest()).upper()[:15]


def _launch_time(value: Any) -> datetime:
    """EC2's LaunchTime (boto3 parses it; a stand-in may hand the ISO string) as aware UTC."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            value = None
    if not isinstance(value, datetime):
        raise _Refusal("instance has no launch time")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _Window:
    """One instance's join window in the DynamoDB table. Every change is one conditional
    UpdateItem, so the limit holds however many requests run at once. The window state
    goes into the request's log line (`fields`)."""

    def __init__(self, settings: Settings, dynamodb: Any, instance_id: str, launch: datetime, now: float,
                 fields: dict[str, Any]) -> None:
        self.settings, self.dynamodb, self.now, self.fields = settings, dynamodb, now, fields
        self.key = {WINDOW_KEY: {"S": instance_id}}
        self.launch_epoch = launch.timestamp()
        self.launch_iso = _iso(self.launch_epoch)
        self.age_minutes = round((now - self.launch_epoch) / 60, 1)
        fields.update(launched_minutes_ago=self.age_minutes, max_answers=settings.max_answers)

    def count_answer(self, *, authorized_as: str | None = None) -> None:
        """Count one attempt, or deny; called BEFORE any secret is read or any object created. Refused once a
        computer object was created for the instance (one one-time password per instance, ever), once closed,
        and when the record was made for another launch of the instance (stop/start). `authorized_as`: the join was
        decided from the record's authorization (no EC2 call), so the write requires the record to still show it
        for that role id (a record deleted meanwhile, with the node's termination, is not re-created)."""
        self._refuse_if_expired(close=False)
        values = {":zero": {"N": "0"}, ":one": {"N": "1"}, ":lt": {"S": self.launch_iso},
                  ":exp": {"N": str(int(self._open_until()))}, ":max": {"N": str(self.settings.max_answers)}}
        condition = ("attribute_not_exists(closedAt) AND attribute_not_exists(issuedAt)"
                     " AND (attribute_not_exists(launchTime) OR launchTime = :lt)"
                     " AND (attribute_not_exists(answers) OR answers < :max)")
        if authorized_as is not None:
            condition += " AND authorizedRoleId = :role"
            values[":role"] = {"S": authorized_as}
        self._update(
            close=False, role=authorized_as,
            expression=f"SET answers = if_not_exists(answers, :zero) + :one, launchTime = :lt, {TTL_ATTRIBUTE} = :exp",
            condition=condition, values=values,
        )

    def busy(self, role_id: str, *, retry_after: int) -> None:
        """Record that EC2, IAM and CloudFormation authorized this role id for this launch just now (a 429 follows),
        and when this node may try again (retryNotBefore: the pre-check answers 429 to earlier tries from this
        record, without a write of the admission item): the node's retries within AUTHORIZED_SECONDS are decided
        from the record (_authorized_launch), not EC2 (never extended by a retry decided from it). Only on a record
        of this launch with no object and no close; best effort (a retry without it asks EC2 again)."""
        values = {":lt": {"S": self.launch_iso}, ":exp": {"N": str(int(self._open_until()))},
                  ":retry": {"N": f"{self.now + retry_after:.3f}"}, ":role": {"S": role_id},
                  ":until": {"N": str(int(self.now) + AUTHORIZED_SECONDS)}}
        expression = (f"SET retryNotBefore = :retry, launchTime = :lt, authorizedRoleId = :role,"
                      f" authorizedUntil = :until, {TTL_ATTRIBUTE} = if_not_exists({TTL_ATTRIBUTE}, :exp)")
        try:
            self.dynamodb.update_item(
                TableName=self.settings.window_table, Key=self.key, UpdateExpression=expression,
                ConditionExpression="attribute_not_exists(closedAt) AND attribute_not_exists(issuedAt)"
                " AND (attribute_not_exists(launchTime) OR launchTime = :lt)",
                ExpressionAttributeValues=values)
            self.fields.update(retry_recorded=True, authorization_recorded=True)
        except ClientError as exc:
            self.fields.update(authorization_record_error=_error_code(exc))
        except BotoCoreError as exc:
            self.fields.update(authorization_record_error=type(exc).__name__)

    def take_turn(self, role_id: str) -> None:
        """A retry decided from the record takes its turn: ONE conditional write sets the next retry time (now +
        RETRY_AFTER_SECONDS) if it has passed and the record still shows this role's authorization. A request that
        loses (another retry of the node in flight, or the authorization withdrawn) is answered 429 without a write
        of the admission item."""
        try:
            self.dynamodb.update_item(
                TableName=self.settings.window_table, Key=self.key, UpdateExpression="SET retryNotBefore = :next",
                ConditionExpression="authorizedRoleId = :role AND (attribute_not_exists(retryNotBefore)"
                " OR retryNotBefore <= :now)",
                ExpressionAttributeValues={":role": {"S": role_id}, ":now": {"N": f"{self.now:.3f}"},
                                           ":next": {"N": f"{self.now + RETRY_AFTER_SECONDS:.3f}"}})
        except ClientError as exc:
            if _error_code(exc) != "ConditionalCheckFailedException":
                raise
            self.fields.update(turn_taken=False)
            raise _Busy("another request of this node took the turn, or its authorization was withdrawn",
                        retry_after=1) from None
        self.fields.update(turn_taken=True)

    def _open_until(self) -> float:
        return self.launch_epoch + self.settings.window_minutes * 60 + OPEN_TTL_SLACK_SECONDS

    def issued(self, computer_name: str, role_id: str, *, authorized_as: str | None = None) -> None:
        """Record the created object and the role it went to (the close's fast path checks it). No TTL from now
        on: the record holds while the instance lives (the directory-admin function gives it a TTL with the
        instance's termination). `authorized_as`: the join was decided from the record, so the record must still
        show that role's authorization: withdrawn meanwhile (the node terminated while its object was made), no
        password is answered (_Busy; the object is left to the sweep; attack review 4 of issue 20, finding 6)."""
        values = {":now": {"S": _iso(self.now)}, ":name": {"S": computer_name}, ":role": {"S": role_id}}
        extra = {}
        if authorized_as is not None:
            values[":authorized"] = {"S": authorized_as}
            extra = {"ConditionExpression": "authorizedRoleId = :authorized"}
        try:
            self.dynamodb.update_item(
                TableName=self.settings.window_table, Key=self.key,
                UpdateExpression=f"SET issuedAt = :now, computerName = :name, issuedRoleId = :role"
                f" REMOVE {TTL_ATTRIBUTE}", ExpressionAttributeValues=values, **extra)
        except ClientError as exc:
            if authorized_as is None or _error_code(exc) != "ConditionalCheckFailedException":
                raise
            self.fields.update(object_left_for_the_sweep=True)
            raise _Busy("the authorization was withdrawn while the object was made (the node terminated): no"
                        " password answered", retry_after=1) from None

    def close(self, computer_name: str, *, issued_to: str | None = None) -> None:
        """Close the window for good (a confirmation: the record keeps no TTL). `issued_to`: the close was decided
        from the record (no EC2 call), so the write itself requires the record to show the object issued to that
        role id: a record deleted meanwhile (the node terminated) is not re-created (attack finding 3, issue 20)."""
        self._refuse_if_expired(close=True)
        values = {":now": {"S": _iso(self.now)}, ":name": {"S": computer_name}, ":lt": {"S": self.launch_iso},
                  ":zero": {"N": "0"}}
        condition = "attribute_not_exists(closedAt) AND (attribute_not_exists(launchTime) OR launchTime = :lt)"
        if issued_to is not None:
            condition += " AND issuedRoleId = :role"
            values[":role"] = {"S": issued_to}
        self._update(
            close=True, role=issued_to,
            expression=f"SET closedAt = :now, computerName = :name, launchTime = :lt, "
            f"answers = if_not_exists(answers, :zero) REMOVE {TTL_ATTRIBUTE}",
            condition=condition, values=values,
        )

    def _update(self, *, close: bool, expression: str, condition: str, values: dict[str, Any],
                role: str | None = None) -> None:
        try:
            answer = self.dynamodb.update_item(
                TableName=self.settings.window_table, Key=self.key, UpdateExpression=expression,
                ConditionExpression=condition, ExpressionAttributeValues=values,
                ReturnValues="ALL_NEW", ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if _error_code(exc) != "ConditionalCheckFailedException":
                raise
            old = exc.response.get("Item")
            self._refuse(old if old is not None else self._read(), close=close, expired=False, role=role)
        self._note(answer.get("Attributes") or {})

    def _refuse_if_expired(self, *, close: bool) -> None:
        if self.age_minutes >= self.settings.window_minutes:
            # Read it only to tell a process asking after the join (closed) from a node that never joined.
            self._refuse(self._read(), close=close, expired=True)

    def _read(self) -> dict[str, Any]:
        answer = self.dynamodb.get_item(TableName=self.settings.window_table, Key=self.key, ConsistentRead=True)
        return answer.get("Item") or {}

    def _note(self, item: Mapping[str, Any]) -> tuple[int, bool]:
        answers = int(_dig(item, "answers", "N") or 0)
        closed_at = _dig(item, "closedAt", "S")
        issued_at = _dig(item, "issuedAt", "S")
        self.fields.update(answers=answers, window_closed=closed_at is not None)
        if closed_at is not None:
            self.fields.update(closed_at=closed_at)
        if issued_at is not None:
            self.fields.update(issued_at=issued_at)
        return answers, closed_at is not None

    def _refuse(self, item: Mapping[str, Any], *, close: bool, expired: bool, role: str | None = None) -> NoReturn:
        """`role`: the role id the record had to name (issuedRoleId for a close, authorizedRoleId for a join)."""
        answers, closed = self._note(item)
        recorded_launch = _dig(item, "launchTime", "S")
        if recorded_launch not in (None, self.launch_iso):
            raise _Refusal(f"the record of this instance was made for its launch at {recorded_launch}, not"
                           f" {self.launch_iso} (stopped and started): no new computer object")
        if closed and close:
            raise _Refusal("join window closed: a second close request for this node")
        if close and role is not None and _dig(item, "issuedRoleId", "S") != role:
            raise _Refusal("no record of a computer object issued to this session any more (the node's record was"
                           " removed, e.g. with its termination): nothing to close")
        if closed:
            raise _Refusal("join window closed: a process on this node asked for the join secret after the join")
        if _dig(item, "issuedAt", "S") is not None and not close:
            raise _Refusal("computer object already created for this instance: a process on this node asked for a"
                           " second one-time password")
        if role is not None and not close and _dig(item, "authorizedRoleId", "S") != role:
            # 429, not 403: the node retries, and the retry asks EC2 (a terminated node is then refused; a live
            # node whose authorization a forged termination event withdrew joins: attack review 4, finding 3).
            raise _Busy("the record no longer shows this session's authorization (withdrawn with the node's"
                        " termination, or its record removed): retry through EC2", retry_after=1)
        if expired:
            raise _Refusal(f"join window expired: launched {self.age_minutes} minutes ago,"
                           f" the window is {self.settings.window_minutes} minutes")
        raise _Refusal(f"join window exhausted: {answers} of {self.settings.max_answers} answers given")


class _Lease:
    """An instance's slot among the joins in progress (Settings.max_joins_in_progress): one entry
    ``leases.<instance id> = <expiry epoch>`` in the ADMISSION_KEY item. Taking it is one conditional UpdateItem
    (the instance's own entry is refreshed, a new one needs fewer entries than the cap); expired entries are dropped
    only when they would refuse someone, by a conditional UpdateItem that fails if any of them changed."""

    def __init__(self, settings: Settings, dynamodb: Any, instance_id: str, fields: dict[str, Any]) -> None:
        self.settings, self.dynamodb, self.instance_id, self.fields = settings, dynamodb, instance_id, fields
        self.key = {WINDOW_KEY: {"S": ADMISSION_KEY}}
        # held: this request took or refreshed the slot; taken: it took it (no live entry of the instance before).
        # Only a slot taken goes back on a refusal: a refreshed one belongs to an answer of the same instance whose
        # join is in progress (attack review 2 of issue 20, finding 3).
        self.held = self.taken = False

    def acquire(self, now: float) -> None:
        """Take (or refresh) the slot, else raise _Busy. Bounded: a few rounds, then busy (lost races mean others
        got slots)."""
        cap = self.settings.max_joins_in_progress
        for _ in range(4):
            try:
                answer = self.dynamodb.update_item(
                    TableName=self.settings.window_table, Key=self.key,
                    UpdateExpression="SET leases.#i = :exp",
                    ConditionExpression="attribute_exists(leases.#i)"
                    " OR (attribute_exists(leases) AND size(leases) < :cap)",
                    ExpressionAttributeNames={"#i": self.instance_id},
                    ExpressionAttributeValues={":exp": {"N": str(int(now) + LEASE_SECONDS)}, ":cap": {"N": str(cap)}},
                    ReturnValues="ALL_OLD", ReturnValuesOnConditionCheckFailure="ALL_OLD",
                )
            except ClientError as exc:
                code = _error_code(exc)
                if code == "ValidationException" and "document path" in str(exc):
                    self._create()  # no map yet (first join of the table): a SET of leases.<id> needs one
                    continue
                if code != "ConditionalCheckFailedException":
                    raise
                item = exc.response.get("Item")
                if item is None or _dig(item, "leases", "M") is None:
                    self._create()
                    continue
                leases = item["leases"]["M"]
                expired = {i: v for i, v in leases.items() if float(_dig(v, "N") or 0) <= now}
                self.fields.update(joins_in_progress=len(leases) - len(expired), max_joins_in_progress=cap)
                if not expired:
                    raise _Busy(f"{len(leases)} joins in progress, the cap is {cap}") from None
                self._drop(expired)
                continue
            before = _dig(answer, "Attributes", "leases", "M") or {}
            self.held, self.taken = True, float(_dig(before, self.instance_id, "N") or 0) <= now
            self.fields.update(joins_in_progress=len(before) + (self.instance_id not in before),
                               max_joins_in_progress=cap)
            return
        raise _Busy(f"no slot after 4 rounds of concurrent changes (cap {cap})")

    def release(self) -> None:
        """Give the slot back; an error is logged and left to the lease's expiry (the answer stands)."""
        try:
            self.dynamodb.update_item(
                TableName=self.settings.window_table, Key=self.key, UpdateExpression="REMOVE leases.#i",
                ConditionExpression="attribute_exists(leases.#i)", ExpressionAttributeNames={"#i": self.instance_id})
            self.fields.update(lease_released=True)
        except ClientError as exc:
            if _error_code(exc) != "ConditionalCheckFailedException":  # none held: nothing to give back
                self.fields.update(lease_release_error=_error_code(exc))
        except BotoCoreError as exc:
            self.fields.update(lease_release_error=type(exc).__name__)
        self.held = self.taken = False

    def _create(self) -> None:
        self.dynamodb.update_item(
            TableName=self.settings.window_table, Key=self.key,
            UpdateExpression="SET leases = if_not_exists(leases, :empty)",
            ExpressionAttributeValues={":empty": {"M": {}}})

    def _drop(self, expired: Mapping[str, Any]) -> None:
        """Remove leases that expired (nodes that died after their answer, or whose close never came), each only
        if it is still the entry that was read."""
        chosen = sorted(expired)[:EXPIRED_DROP_MAX]
        names = {f"#e{n}": i for n, i in enumerate(chosen)}
        values = {f":e{n}": expired[i] for n, i in enumerate(chosen)}
        try:
            self.dynamodb.update_item(
                TableName=self.settings.window_table, Key=self.key,
                UpdateExpression="REMOVE " + ", ".join(f"leases.#e{n}" for n in range(len(chosen))),
                ConditionExpression=" AND ".join(f"leases.#e{n} = :e{n}" for n in range(len(chosen))),
                ExpressionAttributeNames=names, ExpressionAttributeValues=values)
        except ClientError as exc:
            if _error_code(exc) != "ConditionalCheckFailedException":  # refreshed or dropped meanwhile: read again
                raise
        self.fields.update(expired_leases_dropped=len(chosen))


def _error_code(exc: ClientError) -> str:
    return exc.response.get("Error", {}).get("Code") or ""


def _new_computer(settings: Settings, credentials: tuple[str, str, str],
                  create_computer: Callable[..., tuple[str, str]], name: str) -> dict[str, str]:
    """Create the instance's computer object with a one-time password (the adding account's `credentials`
    (_join_credentials); they never leave the function) and the node's answer (plus "dn", for the log only)."""
    domain, user, password = credentials
    # Never the instance's own DNS name: an IP address comes back with a new instance while the old object may
    # still hold its SPNs; this name is as unique as the instance id.
    host_fqdn = f"{name.lower()}.{domain}"
    directory = computer_account.Directory(dc_ips=settings.dc_ips, domain=domain, computer_ou=settings.computer_ou,
                                           user=user, password=password, port=settings.ldap_port)
    try:
        dn, one_time = create_computer(directory, name, host_fqdn)
    except computer_account.AlreadyExists:
        raise _Refusal(f"computer object {name} exists already: an instance gets one one-time password, ever")\
            from None
    # serviceAccounts: the adding account's name (never its password), which nodes keep from logging in.
    return {"domain": domain, "realm": domain.upper(), "computerName": name, "hostFqdn": host_fqdn,
            "oneTimePassword": one_time, "serviceAccounts": [user], "dn": dn}


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
