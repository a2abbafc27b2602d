"""AWS's side of the lab, emulated at the boundary only (runs inside the lab's switch namespace).

* a fake IMDSv2 on SERVICES_IP:IMDS_PORT that answers per source IP (one lab node per IP):
  token required (PUT /latest/api/token), instance id, region, instance identity document,
  iam/info and iam/security-credentials/<role> with per-node fake credentials;
* a stand-in for the join function's URL on SERVICES_IP:URL_PORT that VERIFIES the SigV4
  signature (botocore recomputation with the signing credential's secret; 403 like AWS when it
  does not match), builds the function-URL event (payload 2.0, requestContext.authorizer.iam from
  the credential that signed) and calls the product's REAL ``join_handler.handle(...)`` with
  boto3 clients on moto (in-process ``mock_aws``) holding the cluster's instances, instance
  profiles (roles under ParallelCluster's IAM path /parallelcluster/<cluster>/), the
  /pcluster-ad/<stack>/... SSM parameters under a KMS key, and the join-window table (DynamoDB).

The IMDS stand-in answers every process of a node alike, as EC2 does: only the node's own
iptables rules (join-domain.sh --restrict-imds) can narrow that down.

Control: one JSON object per line on stdin, one JSON answer per line on stdout. EOF on stdin
stops the process (so it never outlives the harness). Logs go to stderr.

Run: ip netns exec <switch-ns> venv/bin/python tests/adlab/labsvc.py CONFIG.json
"""

from __future__ import annotations

import base64
import datetime as dt
import importlib.util
import inspect
import json
import logging
import os
import secrets
import ssl
import string
import sys
import threading
import time
import traceback
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3

sys.path.insert(0, str(Path(__file__).resolve().parent))
from moto_service import MOCK, isolate_from_aws
from sigv4 import Secret, SignatureError, verify

log = logging.getLogger("labsvc")
ACCOUNT = "123456789012"
# The window table's schema (the handler module exports the same names; main() checks they agree).
WINDOW_KEY = "instanceId"
TTL_ATTRIBUTE = "expiresAt"
TEXT_TYPES = ("text/", "application/json", "application/javascript", "application/xml")


def _rand(alphabet: str, n: int) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(n))


def _load_handler(path: str, name: str = "join_handler"):
    # The Lambda package has the handler's modules side by side (computer_account).
    sys.path.insert(0, str(Path(path).resolve().parent))
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load the join handler from {path}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


class Aws:
    """The emulated AWS account: moto clients plus the lab's view of the nodes."""

    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.region = cfg["region"]
        self.stack = cfg["stack"]
        self.cluster = cfg["cluster_name"]
        kw = {"region_name": self.region}
        self.ec2 = boto3.client("ec2", **kw)
        self.iam = boto3.client("iam", **kw)
        self.ssm = boto3.client("ssm", **kw)
        self.kms = boto3.client("kms", **kw)
        self.dynamodb = boto3.client("dynamodb", **kw)
        self.cfn = boto3.client("cloudformation", **kw)
        self.lock = threading.RLock()
        self.nodes: dict[str, dict] = {}  # by lab IP
        self.secrets: dict[str, Secret] = {}  # by access key id
        self.creds_owner: dict[str, dict] = {}  # access key id -> node
        self.requests: list[dict] = []
        self.one_time_passwords: list[str] = []
        self.sts_refusals: list[str] = []
        self.imds_requests = 0
        self._setup()

    def _setup(self) -> None:
        vpc = self.ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        other = self.ec2.create_vpc(CidrBlock="10.1.0.0/16")["Vpc"]["VpcId"]
        az = f"{self.region}a"
        self.subnets = {
            "cluster": self.ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.0.0/20", AvailabilityZone=az)["Subnet"][
                "SubnetId"
            ],
            "other": self.ec2.create_subnet(VpcId=other, CidrBlock="10.1.0.0/20", AvailabilityZone=az)["Subnet"][
                "SubnetId"
            ],
        }
        self.vpc_id = vpc
        trust = json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}
                ],
            }
        )
        self.roles: dict[str, dict] = {}
        self.profiles: dict[str, str] = {}
        # ParallelCluster's node role and profile live under /parallelcluster/<cluster>/ (the join
        # function requires it); the impostor's role is anybody's, at the root path.
        pc_path = f"/parallelcluster/{self.cluster}/"
        for key, name, path in (("node", f"{self.cluster}-RoleComputeNode-LAB", pc_path),
                                ("other", f"{self.cluster}-other-role", "/")):
            role = self.iam.create_role(RoleName=name, Path=path, AssumeRolePolicyDocument=trust)["Role"]
            prof = self.iam.create_instance_profile(InstanceProfileName=f"{name}-profile", Path=path)[
                "InstanceProfile"
            ]
            self.iam.add_role_to_instance_profile(InstanceProfileName=prof["InstanceProfileName"], RoleName=name)
            self.roles[key] = role
            self.profiles[key] = prof["Arn"]
        key_id = self.kms.create_key(Description=f"pcluster-ad {self.stack} join secrets")["KeyMetadata"]["KeyId"]
        self.kms.create_alias(AliasName=f"alias/pcluster-ad-{self.stack}-join", TargetKeyId=key_id)
        prefix = f"/pcluster-ad/{self.stack}"
        self.params = {
            "domain": f"{prefix}/domain",
            "join-user": f"{prefix}/join-user",
            "join-password": f"{prefix}/join-password",
        }
        self.ssm.put_parameter(Name=self.params["domain"], Type="String", Value=self.cfg["domain"])
        self.ssm.put_parameter(
            Name=self.params["join-user"],
            Type="SecureString",
            KeyId=f"alias/pcluster-ad-{self.stack}-join",
            Value=self.cfg["join_user"],
        )
        self.ssm.put_parameter(
            Name=self.params["join-password"],
            Type="SecureString",
            KeyId=f"alias/pcluster-ad-{self.stack}-join",
            Value=self.cfg["join_password"],
        )
        # Older handlers (path_handlers) hand their node a password for `realm join`: the lab's classic join
        # account (delegation on CN=Computers), not the adding account, which may only create objects in the OU.
        if self.cfg.get("classic_join_user"):
            classic = (("user", self.cfg["classic_join_user"]), ("password", self.cfg["classic_join_password"]))
            for key, value in classic:
                self.params[f"classic-join-{key}"] = f"{prefix}/classic-join-{key}"
                self.ssm.put_parameter(Name=self.params[f"classic-join-{key}"], Type="SecureString",
                                       KeyId=f"alias/pcluster-ad-{self.stack}-join", Value=value)
        # The join-window table as the JoinFunction component creates it (key instanceId, TTL expiresAt).
        self.window_table = f"pcluster-ad-{self.stack}-join-window"
        self.dynamodb.create_table(
            TableName=self.window_table,
            AttributeDefinitions=[{"AttributeName": WINDOW_KEY, "AttributeType": "S"}],
            KeySchema=[{"AttributeName": WINDOW_KEY, "KeyType": "HASH"}],
            BillingMode="PAY_PER_REQUEST",
        )
        self.dynamodb.update_time_to_live(
            TableName=self.window_table, TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE}
        )
        # The JoinFunction component's environment (design.md).
        self.function_env = {
            "CLUSTER_NAME": self.cluster,
            "VPC_ID": self.vpc_id,
            "DOMAIN_PARAMETER": self.params["domain"],
            "JOIN_USER_PARAMETER": self.params["join-user"],
            "JOIN_PASSWORD_PARAMETER": self.params["join-password"],
            "WINDOW_TABLE": self.window_table,
            "WINDOW_MINUTES": str(self.cfg.get("window_minutes", 30)),
            "MAX_ANSWERS": str(self.cfg.get("max_answers", 3)),
            "DC_IPS": self.cfg["dc_ip"],
            "COMPUTER_OU": self.cfg["computer_ou"],
            "COMPUTER_PREFIX": self.cfg["computer_prefix"],
        }
        if "max_joins_in_progress" in self.cfg:
            self.function_env["MAX_JOINS_IN_PROGRESS"] = str(self.cfg["max_joins_in_progress"])
        # ParallelCluster's stack (stack name = cluster name) with the nodes' launch template, and one launch
        # template made by hand with the same name pattern: an instance from it is no node of the cluster.
        template = {"Resources": {"ComputeLt": {"Type": "AWS::EC2::LaunchTemplate", "Properties": {
            "LaunchTemplateName": f"{self.cluster}-queue1-cr1",
            "LaunchTemplateData": {"ImageId": "ami-12c6146b", "InstanceType": "c5.large"}}}}}
        self.cfn.create_stack(StackName=self.cluster, TemplateBody=json.dumps(template))
        res = self.cfn.describe_stack_resource(StackName=self.cluster, LogicalResourceId="ComputeLt")
        self.templates = {
            "cluster": res["StackResourceDetail"]["PhysicalResourceId"],
            "foreign": self.ec2.create_launch_template(
                LaunchTemplateName=f"{self.cluster}-by-hand",
                LaunchTemplateData={"ImageId": "ami-12c6146b", "InstanceType": "c5.large"},
            )["LaunchTemplate"]["LaunchTemplateId"],
        }

    def window(self, instance_id: str) -> dict:
        """The instance's join-window item, attribute values unwrapped ({} when there is none)."""
        item = self.dynamodb.get_item(
            TableName=self.window_table, Key={WINDOW_KEY: {"S": instance_id}}, ConsistentRead=True
        ).get("Item", {})
        return {k: next(iter(v.values())) for k, v in item.items()}

    # -- nodes -----------------------------------------------------------------------------
    def add_node(self, req: dict) -> dict:
        """Create the EC2 instance for a lab node and the credentials its IMDS hands out."""
        with self.lock:
            ip = req["ip"]
            tags = [{"Key": "Name", "Value": req["name"]}]
            if req.get("tagged", True):
                tags.append({"Key": "parallelcluster:cluster-name", "Value": self.cluster})
                tags.append({"Key": "parallelcluster:node-type", "Value": req.get("node_type", "Compute")})
            profile_key = req.get("profile", "node")
            # ParallelCluster launches every node from a launch template of the cluster's stack; a test may
            # start one by hand ("none") or from a template outside the stack ("foreign").
            launch = req.get("launch_template", "cluster")
            extra = {} if launch == "none" else {"LaunchTemplate": {"LaunchTemplateId": self.templates[launch]}}
            inst = self.ec2.run_instances(
                ImageId="ami-12c6146b",
                MinCount=1,
                MaxCount=1,
                InstanceType="c5.large",
                SubnetId=self.subnets[req.get("vpc", "cluster")],
                IamInstanceProfile={"Arn": self.profiles[profile_key]},
                TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
                **extra,
            )["Instances"][0]
            iid = inst["InstanceId"]
            if req.get("state") == "stopped":
                self.ec2.stop_instances(InstanceIds=[iid])
            # Credentials: normally the instance profile's role with the instance id as session
            # name; a test may ask for another role / session name to play an impostor.
            role = self.roles[req.get("creds_role", profile_key)]
            session = req.get("session_name") or iid
            ak = "ASIA" + _rand(string.ascii_uppercase + string.digits, 16)
            sk = _rand(string.ascii_letters + string.digits + "+/", 40)
            token = base64.b64encode(secrets.token_bytes(96)).decode()
            self.secrets[ak] = Secret(ak, sk, token)
            node = {
                "name": req["name"],
                "ip": ip,
                "instance_id": iid,
                "role_name": role["RoleName"],
                "role_id": role["RoleId"],
                "session": session,
                "access_key": ak,
                "secret_key": sk,
                "token": token,
                "profile_arn": self.profiles[profile_key],
                "tokens": {},
            }
            self.nodes[ip] = node
            self.creds_owner[ak] = node
            return {
                k: node[k]
                for k in ("name", "ip", "instance_id", "role_name", "session", "access_key", "secret_key", "token")
            }

    def lookup_secret(self, ak: str) -> Secret | None:
        return self.secrets.get(ak)

    def sts_proof(self, ip: str) -> dict:
        """A caller proof signed with the lab node's credentials, as join-domain.sh makes it (botocore's signer)."""
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        mod = FunctionUrlHandler.handler_mod
        node = self.nodes[ip]
        headers = {"Content-Type": mod.PROOF_CONTENT_TYPE, mod.PROOF_AUDIENCE_HEADER: mod.PROOF_AUDIENCE}
        req = AWSRequest(method="POST", url=f"https://sts.{self.region}.amazonaws.com/", data=mod.PROOF_BODY,
                         headers=headers)
        SigV4Auth(Credentials(node["access_key"], node["secret_key"], node["token"]), "sts", self.region).add_auth(req)
        return {"authorization": req.headers["Authorization"], "x-amz-date": req.headers["X-Amz-Date"],
                "x-amz-security-token": req.headers["X-Amz-Security-Token"]}

    def invoke_direct(self, req: dict) -> dict:
        """What `aws lambda invoke` does for anyone in the account allowed lambda:InvokeFunction: the event is
        theirs to write. `as_ip`: the node whose identity the forged event claims; `proof_ip`: whose credentials
        sign the proof (None: no proof)."""
        mod = FunctionUrlHandler.handler_mod
        victim = self.nodes[req["as_ip"]]
        body = {} if req.get("proof_ip") is None else {"proof": self.sts_proof(req["proof_ip"])}
        event = mod.function_url_event(
            user_arn=f"arn:aws:sts::{ACCOUNT}:assumed-role/{victim['role_name']}/{victim['session']}",
            user_id=f"{victim['role_id']}:{victim['session']}", account_id=ACCOUNT, body=json.dumps(body))
        with self.lock:
            return mod.handle(event, settings=FunctionUrlHandler.settings, ec2=self.ec2, iam=self.iam, ssm=self.ssm,
                              dynamodb=self.dynamodb, cloudformation=self.cfn,
                              logger=logging.getLogger("join_handler"), verify_proof=self.sts_caller_identity)

    def sts_caller_identity(self, proof: dict, now: float) -> dict:
        """STS's GetCallerIdentity at the boundary: the node's signed request is verified exactly as STS does
        (SigV4 recomputed with the signing credential's secret, token and time checked), and STS's answer for
        that credential is returned. A refusal is what the handler gets from STS: its own refusal class."""
        mod = FunctionUrlHandler.handler_mod
        headers = [("Content-Type", mod.PROOF_CONTENT_TYPE), ("Host", f"sts.{self.region}.amazonaws.com"),
                   (mod.PROOF_AUDIENCE_HEADER, mod.PROOF_AUDIENCE), ("X-Amz-Date", proof["x-amz-date"]),
                   ("X-Amz-Security-Token", proof["x-amz-security-token"]), ("Authorization", proof["authorization"])]
        match = mod.PROOF_AUTH.fullmatch(proof["authorization"])
        if not match or match["region"] != self.region or match["service"] != "sts":
            raise mod._Refusal("the caller proof is not a SigV4 signature for STS in this region")
        if not set(mod.PROOF_SIGNED) <= set(match["signed"].split(";")):
            raise mod._Refusal(f"the caller proof must sign {';'.join(mod.PROOF_SIGNED)}")
        try:
            secret = verify(method="POST", url=f"https://sts.{self.region}.amazonaws.com/", headers=headers,
                            body=mod.PROOF_BODY.encode(), lookup=self.lookup_secret, region=self.region,
                            service="sts")
        except SignatureError as exc:
            self.sts_refusals.append(str(exc))
            raise mod._Refusal("STS refused the caller proof (HTTP 403)") from None
        node = self.creds_owner[secret.access_key]
        return {"userArn": f"arn:aws:sts::{ACCOUNT}:assumed-role/{node['role_name']}/{node['session']}",
                "userId": f"{node['role_id']}:{node['session']}", "accountId": ACCOUNT}


class ImdsHandler(BaseHTTPRequestHandler):
    """IMDSv2 for the lab node whose IP the request comes from."""

    protocol_version = "HTTP/1.1"
    server_version = "EC2ws"
    sys_version = ""
    aws: Aws

    def log_message(self, fmt, *args):
        log.debug("imds %s " + fmt, self.client_address[0], *args)

    def _send(self, code: int, body: str, ctype: str = "text/plain") -> None:
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _node(self):
        return self.aws.nodes.get(self.client_address[0])

    def do_PUT(self):
        self.aws.imds_requests += 1
        node = self._node()
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        if node is None:
            return self._send(403, "Forbidden")
        if self.headers.get("X-Forwarded-For"):
            return self._send(403, "Forbidden")
        if self._path() != "/latest/api/token":
            return self._send(404, "Not Found")
        try:
            ttl = int(self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", ""))
        except ValueError:
            return self._send(400, "Bad Request")
        if not 1 <= ttl <= 21600:
            return self._send(400, "Bad Request")
        token = base64.urlsafe_b64encode(secrets.token_bytes(42)).decode()
        node["tokens"][token] = time.time() + ttl
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("X-aws-ec2-metadata-token-ttl-seconds", str(ttl))
        self.send_header("Content-Length", str(len(token)))
        self.end_headers()
        self.wfile.write(token.encode())

    def _path(self) -> str:
        path = self.path.split("?", 1)[0]
        while "//" in path:
            path = path.replace("//", "/")
        return path

    def do_GET(self):
        self.aws.imds_requests += 1
        node = self._node()
        if node is None:
            return self._send(403, "Forbidden")
        token = self.headers.get("X-aws-ec2-metadata-token")
        if not token or node["tokens"].get(token, 0) < time.time():
            return self._send(401, "Unauthorized")
        aws = self.aws
        path = self._path()
        md = "/latest/meta-data/"
        role = node["role_name"]
        now = dt.datetime.now(dt.UTC)
        doc = {
            "accountId": ACCOUNT,
            "architecture": "x86_64",
            "availabilityZone": f"{aws.region}a",
            "imageId": "ami-12c6146b",
            "instanceId": node["instance_id"],
            "instanceType": "c5.large",
            "pendingTime": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "privateIp": node["ip"],
            "region": aws.region,
            "version": "2017-09-30",
        }
        answers = {
            md + "instance-id": node["instance_id"],
            md + "local-ipv4": node["ip"],
            md + "hostname": node["name"],
            md + "local-hostname": node["name"],
            md + "placement/region": aws.region,
            md + "placement/availability-zone": f"{aws.region}a",
            md + "iam/security-credentials": role,
            md + "iam/security-credentials/": role,
            md + "iam/info": json.dumps(
                {
                    "Code": "Success",
                    "LastUpdated": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "InstanceProfileArn": node["profile_arn"],
                    "InstanceProfileId": "AIPA" + node["instance_id"][2:].upper()[:17],
                },
                indent=2,
            ),
            md + f"iam/security-credentials/{role}": json.dumps(
                {
                    "Code": "Success",
                    "LastUpdated": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "Type": "AWS-HMAC",
                    "AccessKeyId": node["access_key"],
                    "SecretAccessKey": node["secret_key"],
                    "Token": node["token"],
                    "Expiration": (now + dt.timedelta(hours=6)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                },
                indent=2,
            ),
            "/latest/dynamic/instance-identity/document": json.dumps(doc, indent=2),
        }
        if path in answers:
            return self._send(200, answers[path])
        return self._send(404, "Not Found")


class FunctionUrlHandler(BaseHTTPRequestHandler):
    """The join function's URL: SigV4 (AWS_IAM) check, payload 2.0 event, real handler."""

    protocol_version = "HTTP/1.1"
    server_version = "lab-function-url"
    sys_version = ""
    aws: Aws
    handler_mod = None
    settings = None
    # bench --compare-with: an older join handler served under its own URL path (prefix -> (module, settings)), so
    # that an older join-domain.sh talks to the function of its own time in the same lab, against the same DC.
    path_handlers: dict = {}
    scheme = "http"
    handler_log: logging.Logger

    def log_message(self, fmt, *args):
        log.debug("url %s " + fmt, self.client_address[0], *args)

    def _reply(self, code: int, body: str, headers: dict | None = None) -> None:
        data = body.encode()
        self.send_response(code)
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        for k, v in hdrs.items():
            if k.lower() not in ("content-length", "connection", "transfer-encoding"):
                self.send_header(k, str(v))
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self):
        aws = self.aws
        t0 = time.monotonic()
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        record = {"ts": time.time(), "source_ip": self.client_address[0], "method": self.command, "path": self.path}
        host = self.headers.get("Host", "")
        try:
            secret = verify(
                method=self.command,
                url=f"{self.scheme}://{host}{self.path}",
                headers=list(self.headers.items()),
                body=body,
                lookup=aws.lookup_secret,
                region=aws.region,
            )
        except SignatureError as exc:
            record.update(status=403, error=f"sigv4: {exc}", ms=round((time.monotonic() - t0) * 1000, 1))
            aws.requests.append(record)
            log.info("function url: 403 from %s: %s", self.client_address[0], exc)
            return self._reply(403, json.dumps({"Message": "Forbidden" if "Missing" in str(exc) else str(exc)}))
        mod, settings = self.handler_mod, self.settings
        for prefix, (alt_mod, alt_settings) in self.path_handlers.items():
            if self.path.startswith(prefix):
                mod, settings = alt_mod, alt_settings
        if mod is None:
            record.update(status=502, error="join handler not loadable")
            aws.requests.append(record)
            return self._reply(502, json.dumps({"Message": "Internal Server Error"}))
        node = aws.creds_owner[secret.access_key]
        try:
            doc = json.loads(body or b"null")
        except ValueError:
            doc = None
        kind = "close" if isinstance(doc, dict) and "joined" in doc else "credentials"
        record.update(signer_instance=node["session"], access_key=secret.access_key, kind=kind)
        event = self._event(body, node, secret)
        try:
            clients = {"ec2": aws.ec2, "iam": aws.iam, "ssm": aws.ssm}
            params = inspect.signature(mod.handle).parameters
            if "dynamodb" in params:
                clients["dynamodb"] = aws.dynamodb
            if "cloudformation" in params:  # bench --compare-with runs older handlers too
                clients["cloudformation"] = aws.cfn
            if "verify_proof" in params:
                clients["verify_proof"] = aws.sts_caller_identity
            with aws.lock:
                result = mod.handle(event, settings=settings, logger=self.handler_log, **clients)
        except Exception:  # noqa: BLE001 - Lambda: an unhandled error is a 502 at the function URL
            record.update(status=502, error="handler raised: " + traceback.format_exc(limit=3)[-600:])
            record["ms"] = round((time.monotonic() - t0) * 1000, 1)
            aws.requests.append(record)
            log.error("handler raised:\n%s", traceback.format_exc())
            return self._reply(502, json.dumps({"Message": "Internal Server Error"}))
        code, rbody, rheaders = self._translate(result)
        if code == 200 and "oneTimePassword" in rbody:  # the lab checks that no node keeps it anywhere
            aws.one_time_passwords.append(json.loads(rbody)["oneTimePassword"])
        record.update(status=code, ms=round((time.monotonic() - t0) * 1000, 1))
        if code != 200:
            record["body"] = rbody[:300]  # errors carry no secret; 200 bodies are never recorded
        aws.requests.append(record)
        return self._reply(code, rbody, rheaders)

    def do_POST(self):
        self._handle()

    do_GET = do_PUT = do_DELETE = do_PATCH = do_POST

    @staticmethod
    def _translate(result) -> tuple[int, str, dict]:
        # Function URL response mapping (payload 2.0): a dict with statusCode is taken as is,
        # anything else valid JSON becomes a 200 application/json body.
        if isinstance(result, dict) and "statusCode" in result:
            body = result.get("body", "")
            if result.get("isBase64Encoded"):
                body = base64.b64decode(body).decode("utf-8", "replace")
            elif not isinstance(body, str):
                body = json.dumps(body)
            return int(result["statusCode"]), body, dict(result.get("headers") or {})
        return 200, json.dumps(result), {}

    def _event(self, body: bytes, node: dict, secret: Secret) -> dict:
        aws = self.aws
        path, _, query = self.path.partition("?")
        headers: dict[str, str] = {}
        for k, v in self.headers.items():
            k = k.lower()
            headers[k] = f"{headers[k]},{v}" if k in headers else v
        now = dt.datetime.now(dt.UTC)
        url_id = aws.cfg["url_id"]
        event = {
            "version": "2.0",
            "routeKey": "$default",
            "rawPath": path,
            "rawQueryString": query,
            "headers": headers,
            "requestContext": {
                "accountId": ACCOUNT,
                "apiId": url_id,
                "authorizer": {
                    "iam": {
                        "accessKey": secret.access_key,
                        "accountId": ACCOUNT,
                        "callerId": f"{node['role_id']}:{node['session']}",
                        "cognitoIdentity": None,
                        "principalOrgId": None,
                        "userArn": f"arn:aws:sts::{ACCOUNT}:assumed-role/{node['role_name']}/{node['session']}",
                        "userId": f"{node['role_id']}:{node['session']}",
                    }
                },
                "domainName": f"{url_id}.lambda-url.{aws.region}.on.aws",
                "domainPrefix": url_id,
                "http": {
                    "method": self.command,
                    "path": path,
                    "protocol": "HTTP/1.1",
                    "sourceIp": self.client_address[0],
                    "userAgent": self.headers.get("User-Agent", ""),
                },
                "requestId": str(uuid.uuid4()),
                "routeKey": "$default",
                "stage": "$default",
                "time": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
                "timeEpoch": int(now.timestamp() * 1000),
            },
            "isBase64Encoded": False,
        }
        if query:
            qs: dict[str, str] = {}
            for pair in query.split("&"):
                k, _, v = pair.partition("=")
                qs[k] = f"{qs[k]},{v}" if k in qs else v
            event["queryStringParameters"] = qs
        if body:
            ctype = headers.get("content-type", "").lower()
            if ctype.startswith(TEXT_TYPES) or ctype.split(";")[0].endswith("+json"):
                event["body"] = body.decode("utf-8", "replace")
            else:
                event["body"] = base64.b64encode(body).decode()
                event["isBase64Encoded"] = True
        return event


def _make_settings(mod, env: dict):
    """The handler's settings from the JoinFunction environment, as its handler() builds them."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return mod.load_settings(env)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def main() -> int:
    isolate_from_aws()
    cfg = json.loads(Path(sys.argv[1]).read_text())
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s labsvc %(levelname)s %(message)s")
    aws = Aws(cfg)
    # The real handler, loaded from the product tree, with the JoinFunction environment.
    os.environ.update(aws.function_env)
    handler_error = None
    handler_mod = settings = None
    try:
        handler_mod = _load_handler(cfg["handler_path"])
        schema = (getattr(handler_mod, "WINDOW_KEY", WINDOW_KEY), getattr(handler_mod, "TTL_ATTRIBUTE", TTL_ATTRIBUTE))
        if schema != (WINDOW_KEY, TTL_ATTRIBUTE):
            raise RuntimeError(f"the handler's window table schema {schema} differs from the lab's table")
        settings = _make_settings(handler_mod, aws.function_env)
    except Exception:  # noqa: BLE001 - reported to the harness; the URL answers 502 like a broken function
        handler_error = traceback.format_exc(limit=5)
        log.error("cannot load the join handler:\n%s", handler_error)
    hlog = logging.getLogger("join_handler")
    hlog.setLevel(logging.INFO)
    fh = logging.FileHandler(cfg["handler_log"])
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    hlog.addHandler(fh)
    hlog.propagate = False
    FunctionUrlHandler.aws = ImdsHandler.aws = aws
    FunctionUrlHandler.handler_mod = handler_mod
    FunctionUrlHandler.settings = settings
    for i, (prefix, path) in enumerate(sorted(cfg.get("path_handlers", {}).items())):
        alt = _load_handler(path, f"join_handler_alt{i}")
        env = dict(aws.function_env)
        # A handler that names COMPUTER_OU creates the objects itself (issue 16 on): it keeps the adding account.
        if "classic-join-user" in aws.params and "COMPUTER_OU" not in Path(path).read_text():
            env.update(JOIN_USER_PARAMETER=aws.params["classic-join-user"],
                       JOIN_PASSWORD_PARAMETER=aws.params["classic-join-password"])
        FunctionUrlHandler.path_handlers[prefix] = (alt, _make_settings(alt, env))
    FunctionUrlHandler.handler_log = hlog

    servers = []
    for handler, port in ((ImdsHandler, cfg["imds_port"]), (FunctionUrlHandler, cfg["url_port"])):
        srv = ThreadingHTTPServer((cfg["services_ip"], port), handler)
        srv.daemon_threads = True
        if handler is FunctionUrlHandler and cfg.get("tls_cert"):
            FunctionUrlHandler.scheme = "https"
            # Function URLs are https: serve TLS with the lab CA's certificate (handshake in the
            # per-connection thread, so one slow client cannot stall the others).
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(cfg["tls_cert"], cfg["tls_key"])
            srv.socket = ctx.wrap_socket(srv.socket, server_side=True, do_handshake_on_connect=False)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
    ready = {
        "ok": True,
        "ready": True,
        "vpc_id": aws.vpc_id,
        "function_env": aws.function_env,
        "handler_error": handler_error,
    }
    print(json.dumps(ready), flush=True)

    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            req = json.loads(line)
            op = req.get("op")
            if op == "add_node":
                out = {"ok": True, "node": aws.add_node(req)}
            elif op == "requests":
                out = {"ok": True, "requests": list(aws.requests), "imds_requests": aws.imds_requests}
            elif op == "window":
                with aws.lock:
                    out = {"ok": True, "window": aws.window(req["instance_id"])}
            elif op == "invoke_direct":
                out = {"ok": True, "response": aws.invoke_direct(req)}
            elif op == "one_time_passwords":
                out = {"ok": True, "passwords": list(aws.one_time_passwords)}
            elif op == "ping":
                out = {"ok": True}
            elif op == "quit":
                print(json.dumps({"ok": True}), flush=True)
                break
            else:
                out = {"ok": False, "error": f"unknown op {op!r}"}
        except Exception as exc:  # noqa: BLE001 - report, keep serving
            out = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(out), flush=True)
    for srv in servers:
        srv.shutdown()
    MOCK.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
