"""The directory-admin function's decisions without a directory: names, security descriptors,
settings, and the termination / sweep handlers on moto's EC2 and DynamoDB. The LDAP side runs
against a real Samba DC in tests/adlab/test_directory_admin.py."""

from __future__ import annotations

import hashlib
import logging
import struct
import subprocess
from datetime import UTC, datetime, timedelta

import boto3
import pytest
from moto import mock_aws

from lambda_src import directory_admin as da

CLUSTER = "hpc"
TABLE = "hpc-join-windows"


# -- names -------------------------------------------------------------------------------------------

def test_computer_names_are_short_unique_and_match_the_shell():
    prefix = da.computer_prefix(CLUSTER)
    assert prefix.startswith("HPC") and len(prefix) == 5
    names = {da.computer_name(prefix, f"i-{n:017x}") for n in range(2000)}
    assert len(names) == 2000
    assert all(len(n) == 15 and n.startswith(prefix) and da.computer_name_pattern(prefix).fullmatch(n) for n in names)
    # Same as a shell can compute on the node (join-domain.sh): prefix + sha256 hex, cut to 15, upper case.
    iid = "i-0abc1234def567890"
    sh = subprocess.run(["bash", "-c", 'printf %s "$1" | sha256sum', "_", iid], capture_output=True, text=True,
                        check=True).stdout.split()[0]
    assert da.computer_name(prefix, iid) == (prefix + sh).upper()[:15]
    assert da.computer_name(prefix, iid) == (prefix + hashlib.sha256(iid.encode()).hexdigest()).upper()[:15]


def test_prefixes_differ_for_clusters_named_alike():
    assert da.computer_prefix("dev-a") != da.computer_prefix("dev-b")
    assert da.computer_prefix("9lives")[0].isalpha()
    assert da.computer_prefix("---")[0] == "C"
    with pytest.raises(ValueError, match="prefix"):
        da.computer_name("1AB", "i-0123456789abcdef0")


@pytest.mark.parametrize("name,problem", [
    ("alice", None), ("a" * 20, None), ("a" * 21, "at most 20"), ("bad/name", "contains"), ("x*y", "contains"),
    ("", "non-empty"), ("trail.", "end with"), ("a b", None), (" lead", "space"),
])
def test_sam_account_name_rules(name, problem):
    got = da.sam_problem(name)
    assert (got is None) if problem is None else (problem in got)


# -- security descriptors -------------------------------------------------------------------------------

SID = da.sid_bytes("S-1-5-21-1-2-3-1105")


def ace(t: int, flags: int, mask: int, sid: bytes) -> bytes:
    return struct.pack("<BBHI", t, flags, 8 + len(sid), mask) + sid


def sd_with(aces: list[bytes]) -> bytes:
    body = b"".join(aces)
    acl = struct.pack("<BBHHH", 4, 0, 8 + len(body), len(aces), 0) + body
    return struct.pack("<BBHIIII", 1, 0, 0x8004, 0, 0, 0, 20) + acl


def parse(sd: bytes) -> list[bytes]:
    dacl = struct.unpack_from("<I", sd, 16)[0]
    rev, _, size, count, _ = struct.unpack_from("<BBHHH", sd, dacl)
    assert rev == 4 and dacl + size == len(sd)
    return da._split_aces(sd[dacl:])


def test_join_aces_go_before_inherited_ones_once():
    explicit = ace(0, 0, 0x20094, da.sid_bytes("S-1-5-11"))
    inherited = ace(0, da.INHERITED_ACE, 0xF01FF, da.sid_bytes("S-1-5-18"))
    new = da.join_aces(SID)
    sd = da.dacl_with(sd_with([explicit, inherited]), new)
    assert parse(sd) == [explicit, *new, inherited]
    assert da.dacl_with(sd, new) is None  # already there: no write


def test_join_ace_layout():
    create_delete, full = da.join_aces(SID)
    t, flags, size, mask, oflags = struct.unpack_from("<BBHII", create_delete)
    assert (t, flags, mask, oflags, size) == (5, 0, 0x3, 1, len(create_delete))
    assert create_delete[12:28] == bytes.fromhex("867a96bfe60dd011a28500aa003049e2")  # computer class, LE GUID
    t, flags, size, mask, oflags = struct.unpack_from("<BBHII", full)
    assert (t, flags, mask, oflags) == (5, 0x0A, 0xF01FF, 2)  # container-inherit + inherit-only, on computers
    assert full[-len(SID):] == SID


# -- settings ----------------------------------------------------------------------------------------

ENV = {"DIRECTORY_ID": "d-1234567890", "DOMAIN": "Test.Domain", "DNS_IPS": "10.0.1.5, 10.0.2.5",
       "OU_NAME": "pcluster-ad-dev", "ADMIN_USER": "Administrator", "ADMIN_PASSWORD_PARAMETER": "/p/admin",
       "CLUSTER_NAME": CLUSTER, "COMPUTER_PREFIX": da.computer_prefix(CLUSTER), "WINDOW_TABLE": TABLE}


def test_settings():
    s = da.load_settings(ENV)
    assert s.dns_ips == ["10.0.1.5", "10.0.2.5"] and s.domain == "test.domain"
    assert s.layout.computers_dn == "OU=Computers,OU=pcluster-ad-dev,DC=test,DC=domain"
    managed = da.Layout("corp.example.com", "pcad", "OU=CORP,DC=corp,DC=example,DC=com")
    assert managed.people_dn == "OU=Users,OU=pcad,OU=CORP,DC=corp,DC=example,DC=com"
    with pytest.raises(da.SettingsError, match="DNS_IPS, OU_NAME"):
        da.load_settings({k: v for k, v in ENV.items() if k not in ("DNS_IPS", "OU_NAME")})
    with pytest.raises(da.SettingsError, match="not IPv4"):
        da.load_settings({**ENV, "DNS_IPS": "dc1.example.com"})


def test_under():
    assert da.under("CN=X,OU=Users,OU=S,DC=a", "ou=users, ou=s,dc=a")
    assert not da.under("OU=Users,OU=S,DC=a", "OU=Users,OU=S,DC=a")
    assert not da.under("CN=X,OU=Users,OU=S2,DC=a", "OU=Users,OU=S,DC=a")


# -- termination and sweep on moto -----------------------------------------------------------------------

class RecordingDirectory:
    """Stands in for the LDAP side (tested in the lab): records what the handler asks it to delete."""

    def __init__(self, computers: list[dict] | None = None):
        self.computers = computers or []
        self.deleted: list[str] = []
        self.trees: list[str] = []

    def delete_computer(self, name: str) -> str:
        self.deleted.append(name)
        return "deleted"

    def list_computers(self) -> list[dict]:
        return self.computers

    def delete_tree(self, dn: str) -> bool:
        self.trees.append(dn)
        return True


@pytest.fixture
def aws():
    with mock_aws():
        ec2 = boto3.client("ec2", region_name="eu-west-1")
        dynamodb = boto3.client("dynamodb", region_name="eu-west-1")
        dynamodb.create_table(TableName=TABLE, BillingMode="PAY_PER_REQUEST",
                              KeySchema=[{"AttributeName": "instanceId", "KeyType": "HASH"}],
                              AttributeDefinitions=[{"AttributeName": "instanceId", "AttributeType": "S"}])
        image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]

        def launch(cluster: str | None = CLUSTER, count: int = 1) -> list[str]:
            spec = ([{"ResourceType": "instance", "Tags": [{"Key": da.CLUSTER_TAG, "Value": cluster}]}]
                    if cluster else [])
            res = ec2.run_instances(ImageId=image, MinCount=count, MaxCount=count, TagSpecifications=spec)
            return [i["InstanceId"] for i in res["Instances"]]

        yield ec2, dynamodb, launch


def event(iid: str, state: str = "terminated") -> dict:
    return {"source": "aws.ec2", "detail-type": "EC2 Instance State-change Notification",
            "detail": {"instance-id": iid, "state": state}}


def terminate(aws_, iid: str, recorded: str | None = None) -> dict:
    ec2, dynamodb, _ = aws_
    ec2.terminate_instances(InstanceIds=[iid])
    if recorded:
        dynamodb.put_item(TableName=TABLE, Item={"instanceId": {"S": iid}, "computerName": {"S": recorded}})
    d = RecordingDirectory()
    out = da.handle_termination(event(iid), settings=da.load_settings(ENV), ec2=ec2, dynamodb=dynamodb,
                                directory=lambda: d)
    return {"out": out, "deleted": d.deleted}


def test_termination_deletes_the_recorded_name(aws):
    (iid,) = aws[2]()
    got = terminate(aws, iid, recorded="HPCAB0123456789")
    assert got["deleted"] == ["HPCAB0123456789"] and got["out"]["result"] == "deleted"


def test_termination_falls_back_to_the_derived_name(aws):
    (iid,) = aws[2]()
    got = terminate(aws, iid)
    assert got["deleted"] == [da.computer_name(da.computer_prefix(CLUSTER), iid)]


def test_termination_ignores_others(aws, caplog):
    ec2, dynamodb, launch = aws
    (other,) = launch("another-cluster")
    (untagged,) = launch(None)
    caplog.set_level(logging.INFO, logger="directory_admin")
    for iid, reason in ((other, "not a node of this cluster"), (untagged, "not a node of this cluster"),
                        ("i-0123456789abcdef0", "unknown instance")):
        got = terminate(aws, iid) if iid != "i-0123456789abcdef0" else {
            "out": da.handle_termination(event(iid), settings=da.load_settings(ENV), ec2=ec2, dynamodb=dynamodb,
                                         directory=lambda: pytest.fail("no directory call for an ignored event")),
            "deleted": []}
        assert got["out"]["result"] == "ignored" and got["out"]["reason"] == reason and got["deleted"] == []
    assert caplog.text.count('"decision": "ignored"') == 3
    running = da.handle_termination(event("i-0123456789abcdef0", "running"), settings=da.load_settings(ENV),
                                    ec2=ec2, dynamodb=dynamodb, directory=lambda: pytest.fail("no call"))
    assert running["result"] == "ignored"


def test_sweep_deletes_only_old_pattern_orphans(aws):
    ec2, _dynamodb, launch = aws
    s = da.load_settings({**ENV, "SWEEP_GRACE_MINUTES": "60"})
    live, stopped, gone = launch(count=3)
    ec2.stop_instances(InstanceIds=[stopped])
    ec2.terminate_instances(InstanceIds=[gone])
    (other_cluster,) = launch("another-cluster")
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    old, young = now - timedelta(hours=3), now - timedelta(minutes=10)
    name = lambda i: da.computer_name(s.computer_prefix, i)  # noqa: E731
    never = s.computer_prefix + "0" * (15 - len(s.computer_prefix))
    comps = [
        {"name": name(live), "dn": "CN=live", "created": old},
        {"name": name(stopped), "dn": "CN=stopped", "created": old},
        {"name": name(gone), "dn": "CN=gone", "created": old},
        {"name": never, "dn": "CN=never", "created": old},
        {"name": never[:-1] + "1", "dn": "CN=young", "created": young},
        {"name": name(other_cluster), "dn": "CN=othercluster", "created": old},  # its prefix is ours: orphan here
        {"name": "WIN-HANDMADE", "dn": "CN=handmade", "created": old},
    ]
    d = RecordingDirectory(comps)
    out = da.sweep(settings=s, ec2=ec2, directory=d, now=now)
    assert sorted(d.trees) == ["CN=gone", "CN=never", "CN=othercluster"]
    assert out["foreign"] == ["WIN-HANDMADE"]
    assert sorted(out["kept"]) == sorted([name(live), name(stopped), never[:-1] + "1"])


def test_resource_rename_deletes_the_old_object_first():
    calls = []

    class D:
        def delete_user(self, n):
            calls.append(("delete", n))
            return "deleted"

        def upsert_user(self, n, **kw):
            calls.append(("upsert", n, tuple(kw["groups"])))
            return {"created": True, "added": [], "removed": []}

    ev = {"resource": "user", "name": "bob2", "groups": ["hpc"], "initialPasswordParameter": "/p/u/bob2",
          "tf": {"action": "update", "prev_input": {"resource": "user", "name": "bob"}}}
    out = da.handle_resource(ev, settings=da.load_settings(ENV), directory=D(), ssm=None)
    assert calls == [("delete", "bob"), ("upsert", "bob2", ("hpc",))] and out["created"] is True
    with pytest.raises(da.DirectoryError, match="bad resource event"):
        da.handle_resource({**ev, "name": "x" * 21}, settings=da.load_settings(ENV), directory=D(), ssm=None)


def test_the_ou_is_never_deleted_while_the_cluster_has_nodes(aws):
    ec2, _dynamodb, launch = aws

    class D:
        deleted = False

        def delete_stack_ou(self):
            D.deleted = True
            return True

    ev = {"resource": "directory", "tf": {"action": "delete", "prev_input": {}}}
    (iid,) = launch()
    with pytest.raises(da.DirectoryError, match="still has 1 instance"):
        da.handle_resource(ev, settings=da.load_settings(ENV), directory=D(), ssm=None, ec2=ec2)
    assert not D.deleted
    ec2.terminate_instances(InstanceIds=[iid])
    assert da.handle_resource(ev, settings=da.load_settings(ENV), directory=D(), ssm=None, ec2=ec2)["deleted"]
    assert D.deleted
