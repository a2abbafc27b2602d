"""The directory-admin function's AWS side, for the AD lab (runs in the lab's switch namespace, where
the DC's LDAP port is reachable, with the project venv's python: ldap3 + moto).

It calls the product's REAL ``lambda_src/directory_admin.handle(...)``: real ldap3 against the lab's
Samba DC; EC2, SSM and DynamoDB on moto (in-process); ``ds:ResetUserPassword`` by a stand-in that
sets the password on the DC (samba's SamDB.setpassword run by the DC's python3 through nsenter),
as Directory Service does on Simple AD.

Control: one JSON object per line on stdin, one JSON answer per line on stdout; EOF stops it.
    {"op": "config", "settings": {...env...}, "parameters": {name: value}, "table": NAME, "dc_argv": [...]}
    {"op": "instances", "count": N, "tagged": bool}      -> {"ids": [...]}
    {"op": "terminate", "ids": [...]}
    {"op": "delete_cluster"}                              -> terminates every live instance of the cluster
    {"op": "put_item", "item": {...}}                     (window table item, DynamoDB JSON)
    {"op": "handle", "event": {...}, "now": ISO?}         -> {"result": ...} or {"ok": false, "error"}
    {"op": "name", "instance_id": ...}                    -> {"name": computer name}
    {"op": "resets"}                                      -> {"users": [user names whose password was reset]}
    {"op": "ldap", "server", "user", "password", "ops": [...]} -> what another account may do (test probes)
    {"op": "allocate", "names": [[kind, name], ...]}    -> {"numbers": [...]}: Directory.identity for each name on
                                                          one connection of this function's settings (issue 18 races)
    {"op": "guarded", "dn", "guard", "add": [...], "remove": [...]}
                                                       -> {"written": bool}: Directory.guarded_member_change on one
                                                          connection of this function's settings (issue 18: the
                                                          every-account mode's guard against a real DC)
    {"op": "aws_reachable", "value": bool}               false: the function's way to the AWS APIs is gone (the
                                                          NAT, its routes): every EC2/SSM/DynamoDB call fails
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import secrets
import subprocess
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

import boto3

sys.path.insert(0, str(Path(__file__).resolve().parent))
from moto_service import isolate_from_aws

REPO = Path(__file__).resolve().parents[2]
REGION = "eu-west-1"

# Run by the DC's python3: set one user's password (from stdin) as ResetUserPassword does.
SETPW = r"""
import sys
from samba.auth import system_session
from samba.param import LoadParm
from samba.samdb import SamDB
import ldb
user = sys.argv[1]
pw = sys.stdin.read()
lp = LoadParm(); lp.load_default()
db = SamDB(url=lp.samdb_url(), session_info=system_session(), lp=lp)
db.setpassword("(&(objectClass=user)(sAMAccountName=%s))" % ldb.binary_encode(user), pw)
"""


def load_product():
    spec = importlib.util.spec_from_file_location("directory_admin", REPO / "lambda_src" / "directory_admin.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["directory_admin"] = mod
    spec.loader.exec_module(mod)
    return mod


class FakeDs:
    """ds client stand-in: reset_user_password sets the password on the lab DC."""

    def __init__(self, dc_argv: list[str], directory_id: str):
        self.dc_argv = dc_argv
        self.directory_id = directory_id
        self.resets: list[str] = []

    def reset_user_password(self, *, DirectoryId: str, UserName: str, NewPassword: str) -> dict:
        if DirectoryId != self.directory_id:
            raise RuntimeError(f"ResetUserPassword on another directory: {DirectoryId}")
        res = subprocess.run([*self.dc_argv, "/usr/bin/python3", "-c", SETPW, UserName], input=NewPassword,
                             capture_output=True, text=True, timeout=60)
        if res.returncode != 0:
            raise RuntimeError(f"ResetUserPassword stand-in failed for {UserName}: {res.stderr[-500:]}")
        self.resets.append(UserName)
        return {}


def ldap_ops(req: dict) -> list[dict]:
    """Test-side LDAP operations as some account (to probe what it may do); results by name."""
    from ldap3 import MODIFY_ADD, SIMPLE, Connection, Server

    conn = Connection(Server(req["server"], port=389, connect_timeout=5), user=req["user"], password=req["password"],
                      authentication=SIMPLE, raise_exceptions=False)
    if not conn.bind():
        raise RuntimeError(f"bind as {req['user']} refused: {conn.result}")
    results = []
    for o in req["ops"]:
        if o["op"] == "add":
            ok = conn.add(o["dn"], o["classes"], o.get("attrs", {}))
        elif o["op"] == "delete":
            ok = conn.delete(o["dn"])
        elif o["op"] == "add_member":
            ok = conn.modify(o["dn"], {"member": [(MODIFY_ADD, [o["member"]])]})
        else:
            raise ValueError(o["op"])
        results.append({"op": o["op"], "dn": o["dn"], "ok": bool(ok), "result": conn.result.get("description")})
    conn.unbind()
    return results


def resolve_deployment(event: dict, deployment: str) -> dict:
    """An input taken from the offline plan names the deployment as the mock's placeholder
    (<after-deploy:...-deployment.hex>): at deploy time it is this deployment's RandomId, the function's
    DEPLOYMENT_ID."""
    def fix(d: dict) -> dict:
        value = d.get("deployment")
        if isinstance(value, str) and value.startswith("<after-deploy:") and value.endswith("-deployment.hex>"):
            return {**d, "deployment": deployment}
        return d

    out = fix(event)
    if isinstance(out.get("tf"), dict) and isinstance(out["tf"].get("prev_input"), dict):
        out = {**out, "tf": {**out["tf"], "prev_input": fix(out["tf"]["prev_input"])}}
    return out


@contextlib.contextmanager
def own_directory(da, settings, ssm):
    """A Directory (of the product module `da`) on its own connection, bound as the function binds (the admin's
    password from SSM)."""
    conn = da.ldap_connect(settings, ssm.get_parameter(Name=settings.admin_password_parameter,
                                                       WithDecryption=True)["Parameter"]["Value"])
    try:
        yield da.Directory(conn, settings.layout, lambda u, p: None)
    finally:
        conn.unbind()


def main() -> None:
    isolate_from_aws()
    logging.basicConfig(stream=sys.stderr, level=logging.INFO)
    da = load_product()
    ec2 = boto3.client("ec2", region_name=REGION)
    ssm = boto3.client("ssm", region_name=REGION)
    kms = boto3.client("kms", region_name=REGION)
    dynamodb = boto3.client("dynamodb", region_name=REGION)
    cut = {"aws": False}

    def no_route(request, **_kw):  # what a call meets once the private subnets' route out is deleted
        if cut["aws"]:
            from botocore.exceptions import EndpointConnectionError

            raise EndpointConnectionError(endpoint_url=request.url)

    for client in (ec2, ssm, dynamodb):
        client.meta.events.register("before-send", no_route)
    key_meta = kms.create_key()["KeyMetadata"]
    key, key_arn = key_meta["KeyId"], key_meta["Arn"]
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.0.0/20", AvailabilityZone=f"{REGION}a")["Subnet"]["SubnetId"]
    image = "ami-12c6146b"  # moto does not check the AMI; its defaults may be off (MOTO_EC2_LOAD_DEFAULT_AMIS)
    state: dict = {}
    deployment = secrets.token_hex(16)
    print(json.dumps({"ok": True}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        op = req.get("op")
        try:
            if op == "config":
                # The stack key: the parameters below are under it (KMS_KEY_ARN, as the component sets it).
                # One deployment per dirsvc (DEPLOYMENT_ID, components/directory_admin.py's RandomId) unless given.
                state["settings"] = da.load_settings({"KMS_KEY_ARN": key_arn, "DEPLOYMENT_ID": deployment,
                                                      **req["settings"]})
                for name, value in req.get("parameters", {}).items():
                    ssm.put_parameter(Name=name, Value=value, Type="SecureString", KeyId=key, Overwrite=True)
                if req.get("table"):
                    dynamodb.create_table(TableName=req["table"], BillingMode="PAY_PER_REQUEST",
                                          KeySchema=[{"AttributeName": da.WINDOW_KEY, "KeyType": "HASH"}],
                                          AttributeDefinitions=[{"AttributeName": da.WINDOW_KEY, "AttributeType": "S"}])
                state["ds"] = FakeDs(req["dc_argv"], state["settings"].directory_id)
                out = {"deployment": state["settings"].deployment_id}
            elif op == "instances":
                tags = [{"Key": da.CLUSTER_TAG, "Value": req.get("cluster", state["settings"].cluster_name)}]
                spec = [{"ResourceType": "instance", "Tags": tags}] if req.get("tagged", True) else []
                res = ec2.run_instances(ImageId=image, MinCount=req["count"], MaxCount=req["count"], SubnetId=subnet,
                                        TagSpecifications=spec)
                out = {"ids": [i["InstanceId"] for i in res["Instances"]]}
            elif op == "terminate":
                ec2.terminate_instances(InstanceIds=req["ids"])
                out = {}
            elif op == "delete_cluster":  # what `pcluster delete-cluster` leaves: no live instance
                ids = [i["InstanceId"] for r in ec2.describe_instances(Filters=[
                    {"Name": f"tag:{da.CLUSTER_TAG}", "Values": [state["settings"].cluster_name]},
                    {"Name": "instance-state-name", "Values": da.LIVE_STATES}])["Reservations"]
                    for i in r["Instances"]]
                if ids:
                    ec2.terminate_instances(InstanceIds=ids)
                out = {"terminated": ids}
            elif op == "put_item":
                dynamodb.put_item(TableName=state["settings"].window_table, Item=req["item"])
                out = {}
            elif op == "name":
                out = {"name": da.computer_name(state["settings"].computer_prefix, req["instance_id"])}
            elif op == "aws_reachable":
                cut["aws"] = not req["value"]
                out = {}
            elif op == "resets":
                out = {"users": state["ds"].resets}
            elif op == "ldap":
                out = {"results": ldap_ops(req)}
            elif op == "allocate":
                with own_directory(da, state["settings"], ssm) as d:
                    started = time.monotonic()
                    out = {"numbers": [d.identity(kind, name, id_range=state["settings"].id_range)["number"]
                                       for kind, name in req["names"]],
                           "started": started, "ended": time.monotonic()}
            elif op == "guarded":
                with own_directory(da, state["settings"], ssm) as d:
                    out = {"written": d.guarded_member_change(req["dn"], req["guard"], req.get("add", []),
                                                              req.get("remove", []))}
            elif op == "handle":
                now = datetime.fromisoformat(req["now"]) if req.get("now") else datetime.now(UTC)
                event = resolve_deployment(req["event"], state["settings"].deployment_id)
                result = da.handle(event, settings=state["settings"], ec2=ec2, ssm=ssm, ds=state["ds"],
                                   dynamodb=dynamodb, now=lambda n=now: n)
                out = {"result": json.loads(json.dumps(result, default=str))}
            else:
                raise ValueError(f"unknown op {op!r}")
            answer = {"ok": True, **out}
        except Exception as exc:  # noqa: BLE001 - reported to the test, which asserts on it
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-3000:]}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
