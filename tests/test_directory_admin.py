"""The directory-admin function's decisions without a directory: names, security descriptors,
settings, and the termination / sweep handlers on moto's EC2 and DynamoDB. The LDAP side runs
against a real Samba DC in tests/adlab/test_directory_admin.py."""

from __future__ import annotations

import hashlib
import logging
import struct
import subprocess
import time
from datetime import UTC, datetime, timedelta

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from moto import mock_aws

from pcluster_ad.lambda_src import directory_admin as da

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


COMPUTER_GUID_LE = bytes.fromhex("867a96bfe60dd011a28500aa003049e2")  # bf967a86-... as stored (little endian)


def test_the_adding_account_gets_one_create_computer_ace():
    ace_ = da.add_computer_ace(SID)
    t, flags, size, mask, oflags = struct.unpack_from("<BBHII", ace_)
    # ACCESS_ALLOWED_OBJECT, not inherited/inheritable, create-child only, object type = computer class.
    assert (t, flags, size, mask, oflags) == (5, 0, len(ace_), 0x1, 1)
    assert ace_[12:28] == COMPUTER_GUID_LE and ace_[28:] == SID
    assert da.ace_sid(ace_) == SID


def test_ace_sid_reads_plain_and_object_aces():
    plain = ace(0, 0, 0x20094, da.sid_bytes("S-1-5-11"))
    create_delete, full = da.legacy_join_aces(SID)
    assert da.ace_sid(plain) == da.sid_bytes("S-1-5-11")
    assert da.ace_sid(create_delete) == SID and da.ace_sid(full) == SID  # one GUID, inherited-object GUID
    assert da.sid_string(SID) == "S-1-5-21-1-2-3-1105"


def test_legacy_join_aces_are_the_old_shape():
    create_delete, full = da.legacy_join_aces(SID)
    t, flags, size, mask, oflags = struct.unpack_from("<BBHII", create_delete)
    assert (t, flags, mask, oflags, size) == (5, 0, 0x3, 1, len(create_delete))
    t, flags, size, mask, oflags = struct.unpack_from("<BBHII", full)
    assert (t, flags, mask, oflags) == (5, 0x0A, 0xF01FF, 2)  # container-inherit + inherit-only, on computers
    assert full[12:28] == COMPUTER_GUID_LE


def test_dacl_edit_drops_explicit_aces_adds_before_inherited_and_is_idempotent():
    explicit = ace(0, 0, 0x20094, da.sid_bytes("S-1-5-11"))
    inherited_old = ace(0, da.INHERITED_ACE, 0xF01FF, SID)  # inherited: never dropped (the DC recomputes it)
    old = da.legacy_join_aces(SID)
    new = da.add_computer_ace(OTHER)
    sd = da.dacl_edit(sd_with([explicit, *old, inherited_old]), add=[new], drop=lambda a: da.ace_sid(a) == SID)
    assert parse(sd) == [explicit, new, inherited_old]
    assert da.dacl_edit(sd, add=[new], drop=lambda a: da.ace_sid(a) == SID) is None  # nothing to do: no write
    assert da.dacl_with(sd, [new]) is None
    assert parse(da.dacl_edit(sd, drop=lambda a: a == new)) == [explicit, inherited_old]


OTHER = da.sid_bytes("S-1-5-21-1-2-3-1200")


# -- the computer-adding account and the migration from the old join account -----------------------------

OU = "OU=pcluster-ad-dev,DC=test,DC=domain"
COMPUTERS = f"OU=Computers,{OU}"
OLD_SID = da.sid_bytes("S-1-5-21-1-2-3-1105")
FOREIGN_SID = da.sid_bytes("S-1-5-21-1-2-3-1300")  # a delegation someone made outside the stack: not ours
DEAD_SID = da.sid_bytes("S-1-5-21-1-2-3-1400")  # an old join account deleted by hand
NEW_SID = da.sid_bytes("S-1-5-21-1-2-3-1500")
WORLD = ace(0, 0, 0x20094, da.sid_bytes("S-1-5-11"))
INHERITED = ace(0, da.INHERITED_ACE, 0xF01FF, da.sid_bytes("S-1-5-21-1-2-3-512"))


class FakeDirectory(da.Directory):
    """The LDAP primitives of Directory on a dict: accounts by sAMAccountName, the Computers OU's DACL.
    ensure_adding_account's own logic (what it writes, deletes, refuses, in which order) is the real one."""

    def __init__(self, accounts: dict[str, dict], aces: list[bytes]):
        super().__init__(conn=None, layout=da.Layout("test.domain", "pcluster-ad-dev"), set_password=self._set_pw)
        self.accounts = accounts  # name -> {"dn", "sid", "description"}
        self.sd = sd_with(aces)
        self.writes: list[tuple] = []
        self.next_sid = NEW_SID

    def _set_pw(self, name: str, password: str) -> None:
        self.writes.append(("password", name, password))

    def find_account(self, sam, object_class):
        a = self.accounts.get(sam)
        return {"dn": a["dn"], "attributes": {"description": [a["description"]]}} if a else None

    def add(self, dn, classes, attrs):
        self.writes.append(("add", dn))
        self.accounts[attrs["sAMAccountName"]] = {"dn": dn, "sid": self.next_sid, "description": attrs["description"]}

    def replace(self, dn, changes):
        self.writes.append(("replace", dn, tuple(sorted(changes))))
        for a in self.accounts.values():
            if a["dn"] == dn and "description" in changes:
                a["description"] = changes["description"]

    def search(self, base, flt, attrs=(), *, scope="SUBTREE", controls=None):
        hits = [a for a in self.accounts.values() if a["dn"] == base]
        return [{"dn": a["dn"], "raw_attributes": {"objectSid": [a["sid"]]}} for a in hits]

    def stack_accounts(self):
        return [{"dn": a["dn"], "name": n, "sid": a["sid"], "managed": a["description"].startswith("pcluster-ad ")}
                for n, a in self.accounts.items() if a["dn"].endswith("," + OU)]

    def sid_exists(self, sid):
        return sid != DEAD_SID and (sid == FOREIGN_SID or any(a["sid"] == sid for a in self.accounts.values()))

    def security_descriptor(self, dn):
        assert dn == COMPUTERS
        return self.sd

    def write_dacl(self, dn, sd):
        assert dn == COMPUTERS
        self.writes.append(("dacl", dn))
        self.sd = sd

    def delete_tree(self, dn):
        self.writes.append(("delete", dn))
        self.accounts = {n: a for n, a in self.accounts.items() if a["dn"] != dn}
        return True

    def explicit_aces(self):
        return [a for a in parse(self.sd) if not a[1] & da.INHERITED_ACE]


def old_layout(**extra: dict) -> FakeDirectory:
    """An OU as the code before issue 16 left it: pcad-join-dev with its two ACEs."""
    accounts = {"pcad-join-dev": {"dn": f"CN=pcad-join-dev,{OU}", "sid": OLD_SID,
                                  "description": "pcluster-ad join account: creates/deletes computer objects"},
                "someone": {"dn": "CN=someone,CN=Users,DC=test,DC=domain", "sid": FOREIGN_SID, "description": "x"},
                **extra}
    return FakeDirectory(accounts, [WORLD, *da.legacy_join_aces(OLD_SID), *da.legacy_join_aces(FOREIGN_SID),
                                    *da.legacy_join_aces(DEAD_SID), INHERITED])


def test_upgrade_replaces_the_old_join_account_by_the_adding_account():
    d = old_layout()
    out = d.ensure_adding_account("pcad-add-dev", lambda: "N3w-Passw0rd!")
    new_dn = f"CN=pcad-add-dev,{OU}"
    assert out["account"] == {"dn": new_dn, "created": True}
    assert out["removedAccounts"] == [f"CN=pcad-join-dev,{OU}"] and "pcad-join-dev" not in d.accounts
    # Exactly one ACE for the new account; the old account's ACEs and the dead SID's legacy ACEs are gone;
    # another delegation (a live account outside the stack OU) and everything else stay.
    assert d.explicit_aces() == [WORLD, *da.legacy_join_aces(FOREIGN_SID), da.add_computer_ace(NEW_SID)]
    assert parse(d.sd)[-1] == INHERITED
    assert out["granted"] and out["removedAces"] == 4
    # Order: account and password first, then ONE DACL write, then the old account is deleted.
    kinds = [w[0] for w in d.writes]
    assert kinds == ["add", "password", "replace", "dacl", "delete"], d.writes
    assert d.writes[1] == ("password", "pcad-add-dev", "N3w-Passw0rd!")
    # Idempotent: a second run only sets the password again.
    d.writes.clear()
    again = d.ensure_adding_account("pcad-add-dev", lambda: "N3w-Passw0rd!")
    assert again == {"account": {"dn": new_dn, "created": False}, "granted": False, "removedAces": 0,
                     "removedAccounts": []}
    assert [w[0] for w in d.writes] == ["password", "replace"]


def test_a_kept_name_loses_every_right_but_the_one():
    """join.user written out (same name before and after): the account stays, gets the new password and
    description, and its old ACEs are replaced by the one."""
    d = old_layout()
    out = d.ensure_adding_account("pcad-join-dev", lambda: "pw")
    assert out["account"]["created"] is False and out["removedAccounts"] == []
    assert d.explicit_aces() == [WORLD, *da.legacy_join_aces(FOREIGN_SID), da.add_computer_ace(OLD_SID)]
    assert d.accounts["pcad-join-dev"]["description"] == da.ADDING_ACCOUNT_DESCRIPTION
    assert ("password", "pcad-join-dev", "pw") in d.writes


def test_no_adding_account_still_removes_the_old_one():
    """join.user is the admin now: the stack manages no account, the old one and its ACEs still go."""
    d = old_layout()
    out = d.ensure_adding_account(None, lambda: pytest.fail("no password is read"))
    assert out["account"] is None and out["removedAccounts"] == [f"CN=pcad-join-dev,{OU}"]
    assert d.explicit_aces() == [WORLD, *da.legacy_join_aces(FOREIGN_SID)]


def test_an_unmarked_account_in_the_ou_is_kept_but_loses_legacy_aces():
    hand = {"dn": f"CN=handmade,{OU}", "sid": OTHER, "description": "made by an operator"}
    d = old_layout(handmade=hand)
    d.sd = sd_with([*da.legacy_join_aces(OTHER), ace(0, 0, 0x20094, OTHER)])
    d.ensure_adding_account("pcad-add-dev", lambda: "pw")
    assert "handmade" in d.accounts
    assert d.explicit_aces() == [ace(0, 0, 0x20094, OTHER), da.add_computer_ace(NEW_SID)]


def test_an_account_outside_the_ou_is_refused_before_any_write():
    d = old_layout()
    d.accounts["pcad-add-dev"] = {"dn": "CN=pcad-add-dev,CN=Users,DC=test,DC=domain", "sid": OTHER,
                                  "description": "x"}
    with pytest.raises(da.NotOurs, match="outside the stack's OU"):
        d.ensure_adding_account("pcad-add-dev", lambda: "pw")
    assert d.writes == []
    for dn in ("CN=x,CN=Users,DC=test,DC=domain", f"CN=x,OU=Users,{OU}", OU):
        with pytest.raises(da.NotOurs, match="not an account in the stack's OU"):
            d.remove_stack_account(dn)
    assert d.writes == []


def test_a_refused_password_parameter_writes_nothing():
    d = old_layout()

    def refuse() -> str:
        raise da.DirectoryError("parameter x is a String")

    with pytest.raises(da.DirectoryError, match="is a String"):
        d.ensure_adding_account("pcad-add-dev", refuse)
    assert d.writes == []


# -- settings ----------------------------------------------------------------------------------------

ENV = {"DIRECTORY_ID": "d-1234567890", "DOMAIN": "Test.Domain", "DNS_IPS": "10.0.1.5, 10.0.2.5",
       "OU_NAME": "pcluster-ad-dev", "ADMIN_USER": "Administrator", "ADMIN_PASSWORD_PARAMETER": "/p/admin",
       "CLUSTER_NAME": CLUSTER, "COMPUTER_PREFIX": da.computer_prefix(CLUSTER), "WINDOW_TABLE": TABLE,
       "STACK": "dev", "KMS_KEY_ARN": "arn:aws:kms:eu-west-1:123456789012:key/11111111-2222-3333-4444-555555555555",
       "DEPLOYMENT_ID": "0123456789abcdef0123456789abcdef"}
OWN_OU = da.owner_value("directory-admin-setup@pcad-dev-eu-west-1-dir", ENV["DEPLOYMENT_ID"])  # the OU's mark


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
    with pytest.raises(da.SettingsError, match="STACK, KMS_KEY_ARN"):
        da.load_settings({k: v for k, v in ENV.items() if k not in ("STACK", "KMS_KEY_ARN")})
    with pytest.raises(da.SettingsError, match="needs JOIN_PASSWORD_PARAMETER"):
        da.load_settings({**ENV, "JOIN_USER": "pcad-add-dev"})
    with pytest.raises(da.SettingsError, match="at most 20"):
        da.load_settings({**ENV, "JOIN_USER": "x" * 21, "JOIN_PASSWORD_PARAMETER": "/p"})
    with pytest.raises(da.SettingsError, match="STACK"):
        da.load_settings({**ENV, "STACK": "dev/../other"})
    joined = da.load_settings({**ENV, "JOIN_USER": "pcad-add-dev", "JOIN_PASSWORD_PARAMETER": "/p/j"})
    assert (joined.join_user, joined.join_password_parameter, joined.stack) == ("pcad-add-dev", "/p/j", "dev")


def test_under():
    assert da.under("CN=X,OU=Users,OU=S,DC=a", "ou=users, ou=s,dc=a")
    assert not da.under("OU=Users,OU=S,DC=a", "OU=Users,OU=S,DC=a")
    assert not da.under("CN=X,OU=Users,OU=S2,DC=a", "OU=Users,OU=S,DC=a")


# -- termination and sweep on moto -----------------------------------------------------------------------

class RecordingDirectory:
    """Stands in for the LDAP side (tested in the lab): records what the handler asks it to delete."""

    def __init__(self, computers: list[dict] | None = None, ou_mark: str | None = OWN_OU):
        self.computers = computers or []
        self.deleted: list[str] = []
        self.trees: list[str] = []
        self.ou_mark = ou_mark  # the stack OU's OWNER_ATTRIBUTE (DEPLOYMENT_KEY): this deployment's by default
        self.layout = da.Layout("test.domain", "pcluster-ad-dev")

    def owner_value_of(self, kind: str, name: str | None = None) -> str | None:
        assert kind == "directory"
        return self.ou_mark

    def exists(self, dn: str) -> bool:
        return True

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
        # moto does not check that the AMI exists; its default AMIs may be off (MOTO_EC2_LOAD_DEFAULT_AMIS, set by
        # earlier tests and the bench's call counting in this process).
        image = "ami-12c6146b"

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


def test_termination_leaves_a_tombstone_record_for_a_day(aws):
    """The join function's record of a node keeps no TTL once an object was made: the termination makes it a
    tombstone (terminatedAt, TTL one day, no role ids) that the join function's pre-check refuses, since the node's
    credentials outlive it (attack review 4 of issue 20, finding 2)."""
    (iid,) = aws[2]()
    before = int(time.time())
    terminate(aws, iid, recorded="HPCAB0123456789")
    after = int(time.time())
    item = aws[1].get_item(TableName=TABLE, Key={"instanceId": {"S": iid}})["Item"]
    assert "terminatedAt" in item and not {"issuedRoleId", "authorizedRoleId", "retryNotBefore"} & set(item), item
    ttl = int(item["expiresAt"]["N"])
    assert before + da.TERMINATED_RECORD_SECONDS <= ttl <= after + da.TERMINATED_RECORD_SECONDS


class CountingEc2:
    """The moto EC2 client, with its DescribeInstances calls counted and their parameters kept."""

    def __init__(self, ec2):
        self.ec2, self.calls = ec2, []

    def describe_instances(self, **kwargs):
        self.calls.append(kwargs)
        return self.ec2.describe_instances(**kwargs)


def test_termination_asks_ec2_only_about_its_own_nodes_with_a_filtered_call(aws):
    """Issue 20: ours is what the join function recorded; EC2 is asked once, filtered, and only about a recorded node
    (its state: a forged event for a live node is refused, attack finding 1 of issue 20); any other termination of
    the account and region costs no EC2 call."""
    ec2, dynamodb, launch = aws
    (ours,) = launch()
    (other,) = launch("another-cluster")
    ec2.terminate_instances(InstanceIds=[ours, other])
    dynamodb.put_item(TableName=TABLE, Item={"instanceId": {"S": ours}, "computerName": {"S": "HPCAB0123456789"}})
    counting = CountingEc2(ec2)
    d = RecordingDirectory()
    out = da.handle_termination(event(other), settings=da.load_settings(ENV), ec2=counting, dynamodb=dynamodb,
                                directory=lambda: pytest.fail("no directory call"))
    assert out["result"] == "ignored" and counting.calls == []
    out = da.handle_termination(event(ours), settings=da.load_settings(ENV), ec2=counting, dynamodb=dynamodb,
                                directory=lambda: d)
    assert out["result"] == "deleted" and d.deleted == ["HPCAB0123456789"]
    assert counting.calls == [{"InstanceIds": [ours], "Filters": [{"Name": "instance-id", "Values": [ours]}]}]


def test_forged_termination_of_a_live_node_is_ignored(aws):
    """A "terminated" event for a recorded instance that EC2 reports running (someone allowed to invoke the function
    sends it for the head node): its computer object and record stay."""
    ec2, dynamodb, launch = aws
    (iid,) = launch()
    dynamodb.put_item(TableName=TABLE, Item={"instanceId": {"S": iid}, "computerName": {"S": "HPCAB0123456789"}})
    out = da.handle_termination(event(iid), settings=da.load_settings(ENV), ec2=ec2, dynamodb=dynamodb,
                                directory=lambda: pytest.fail("no directory call for a live instance"))
    assert out["result"] == "ignored" and out["reason"] == "instance is running, not terminated"
    assert "Item" in dynamodb.get_item(TableName=TABLE, Key={"instanceId": {"S": iid}})


def test_termination_without_a_join_record_is_left_to_the_sweep(aws, caplog):
    """Any other instance of the account and region (another cluster's, an untagged one, one whose record could not
    be written): ignored, no EC2 call (ec2=None) and no directory call; the daily sweep removes objects of ours that
    were missed."""
    _ec2, dynamodb, launch = aws
    (other,) = launch("another-cluster")
    (ours,) = launch()
    caplog.set_level(logging.INFO, logger="directory_admin")
    for iid in (other, ours, "i-0123456789abcdef0"):
        out = da.handle_termination(event(iid), settings=da.load_settings(ENV), ec2=None, dynamodb=dynamodb,
                                    directory=lambda: pytest.fail("no directory call for an ignored event"))
        assert out["result"] == "ignored" and out["reason"].startswith("no join record"), out
    assert caplog.text.count('"decision": "ignored"') == 3
    running = da.handle_termination(event("i-0123456789abcdef0", "running"), settings=da.load_settings(ENV),
                                    ec2=None, dynamodb=dynamodb, directory=lambda: pytest.fail("no call"))
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


@pytest.fixture
def ssm_env():
    """moto SSM + KMS: the stack's key, the settings that name it, and a writer for parameters."""
    with mock_aws():
        kms = boto3.client("kms", region_name="eu-west-1")
        ssm = boto3.client("ssm", region_name="eu-west-1")
        key = kms.create_key()["KeyMetadata"]
        other = kms.create_key()["KeyMetadata"]
        settings = da.load_settings({**ENV, "KMS_KEY_ARN": key["Arn"], "JOIN_USER": "pcad-add-dev",
                                     "JOIN_PASSWORD_PARAMETER": "/pcluster-ad/dev/join-password"})

        def put(name: str, value: str = "S3cret-value!", kind: str = "SecureString", key_id: str | None = None):
            kw = {"KeyId": key_id} if key_id else {}
            ssm.put_parameter(Name=name, Value=value, Type=kind, Overwrite=True, **kw)

        yield ssm, settings, put, key, other


def test_only_the_stacks_own_securestrings_are_read(ssm_env):
    ssm, settings, put, key, other = ssm_env
    put("/pcluster-ad/dev/a", "by-arn", key_id=key["Arn"])
    put("/pcluster-ad/dev/b", "by-id", key_id=key["KeyId"])
    assert da.read_own_secret(ssm, settings, "/pcluster-ad/dev/a") == "by-arn"
    assert da.read_own_secret(ssm, settings, "/pcluster-ad/dev/b") == "by-id"
    put("/pcluster-ad/dev/c", key_id=other["Arn"])
    put("/pcluster-ad/dev/d")  # the account's default key alias/aws/ssm
    put("/pcluster-ad/dev/e", kind="String")
    for name, why in (("c", "under key 'arn:"), ("d", "under key 'alias/aws/ssm'"), ("e", "is a String")):
        with pytest.raises(da.DirectoryError, match=why) as err:
            da.read_own_secret(ssm, settings, f"/pcluster-ad/dev/{name}")
        assert "not a SecureString under the stack's key" in str(err.value) and "S3cret" not in str(err.value)
    with pytest.raises(da.DirectoryError, match="does not exist"):
        da.read_own_secret(ssm, settings, "/pcluster-ad/dev/missing")
    assert not da.same_key("alias/pcluster-ad-dev-join", key["Arn"]) and da.same_key(key["KeyId"], key["Arn"])


class AnySecureString:
    """SSM as the directory-admin function sees it when every parameter it asks for is a SecureString under the
    stack's key (`key_arn`): the key check itself is tested above (test_only_the_stacks_own_securestrings_are_read)."""

    def __init__(self, key_arn: str):
        self.key_arn = key_arn

    def describe_parameters(self, ParameterFilters):
        name = ParameterFilters[0]["Values"][0]
        return {"Parameters": [{"Name": name, "Type": "SecureString", "KeyId": self.key_arn}]}

    def get_parameter(self, Name, WithDecryption):
        return {"Parameter": {"Name": Name, "Type": "SecureString", "Value": "In1tial-Pw!"}}


class NumbersStub:
    """The identity ledger as a stand-in (the real one: tests/test_identity_ledger.py): one number per name."""

    def identity(self, kind, name, **kw):
        ledger = self.__dict__.setdefault("_ids", {})
        return {"number": ledger.setdefault(name.lower(), 100000 + len(ledger)), "source": "allocated"}

    def set_numbers(self, dn, found, numbers):
        return dict(numbers)

    def number_group(self, name, number):
        return {"gidNumber": number}


class RecordingUsers(NumbersStub):
    """Directory stand-in for the resource handler: the stack has groups hpc and gpu."""

    def __init__(self):
        self.calls: list[tuple] = []

    def stack_groups(self, groups):
        ours = {"hpc": "CN=hpc", "gpu": "CN=gpu"}
        unknown = [g for g in groups if g.lower() not in ours]
        if unknown:
            raise da.DirectoryError(f"group(s) {unknown!r} not one of the stack's groups: nothing changed")
        return {"ours": ours, "want": {ours[g.lower()]: g for g in groups}}

    layout = da.Layout("test.domain", "pcluster-ad-dev")

    def owner_value_of(self, kind, name=None):  # no owner recorded: a delete acts (replace-safety, OWNER_KEY)
        return OWN_OU if kind == "directory" else None  # the stack's OU: this deployment's

    def claim(self, kind, name, owner, deployment=""):
        self.calls.append(("claim", kind, name, owner, deployment))
        return True

    def own_account(self, n, object_class):  # a rename's new name: free
        return None

    def delete_user(self, n):
        self.calls.append(("delete", n))
        return "deleted"

    def upsert_user(self, n, **kw):
        self.calls.append(("upsert", n, tuple(kw["groups"]["want"].values()), kw["initial_password"]()))
        return {"created": True, "added": [], "removed": []}

    def ensure_adding_account(self, name, password, deployment="", mark=""):
        self.calls.append(("account", name, password(), deployment))
        return {"account": {"dn": f"CN={name}"}}


def test_user_parameter_is_derived_and_event_names_are_ignored(ssm_env):
    ssm, settings, put, key, _other = ssm_env
    put("/pcluster-ad/dev/users/bob2/initial-password", "Bob2-initial!", key_id=key["Arn"])
    put("/pcluster-ad/dev/admin-password", "Adm1n!", key_id=key["Arn"])
    ev = {"resource": "user", "name": "bob2", "groups": ["hpc"],
          "initialPasswordParameter": "/pcluster-ad/dev/admin-password",  # an old payload's key: ignored
          "tf": {"action": "update", "prev_input": {"resource": "user", "name": "bob"}}}
    d = RecordingUsers()
    out = da.handle_resource(ev, settings=settings, directory=d, ssm=ssm)
    assert d.calls == [("delete", "bob"), ("upsert", "bob2", ("hpc",), "Bob2-initial!")] and out["created"] is True
    with pytest.raises(da.DirectoryError, match="bad resource event"):
        da.handle_resource({**ev, "name": "x" * 21}, settings=settings, directory=d, ssm=ssm)


def test_a_bad_user_event_is_refused_before_any_write(ssm_env):
    ssm, settings, put, key, other = ssm_env
    ev = {"resource": "user", "name": "carol", "groups": ["hpc", "nope"],
          "tf": {"action": "update", "prev_input": {"name": "caro"}}}
    d = RecordingUsers()
    with pytest.raises(da.DirectoryError, match=r"\['nope'\] not one of the stack's groups"):
        da.handle_resource(ev, settings=settings, directory=d, ssm=ssm)
    # Declared groups, but the initial password is not the stack's own SecureString: the rename's delete
    # does not happen either.
    put("/pcluster-ad/dev/users/carol/initial-password", key_id=other["Arn"])
    with pytest.raises(da.DirectoryError, match="not a SecureString under the stack's key"):
        da.handle_resource({**ev, "groups": ["hpc"]}, settings=settings, directory=d, ssm=ssm)
    with pytest.raises(da.DirectoryError, match="bad resource event"):
        da.handle_resource({**ev, "groups": "hpc"}, settings=settings, directory=d, ssm=ssm)
    assert d.calls == []


def test_directory_setup_takes_the_account_from_its_environment(ssm_env, caplog, monkeypatch):
    ssm, settings, put, key, _other = ssm_env
    put("/pcluster-ad/dev/join-password", "Add1ng-pw!", key_id=key["Arn"])
    put("/pcluster-ad/dev/admin-password", "Adm1n!", key_id=key["Arn"])
    put(settings.admin_password_parameter, "Adm1n!", key_id=key["Arn"])

    class D(RecordingUsers):
        conn = None

        def ensure_layout(self, mark=""):
            return []

    d = D()
    old_payload = {"resource": "directory", "joinUser": "Administrator",
                   "joinPasswordParameter": "/pcluster-ad/dev/admin-password", "tf": {"action": "update"}}
    caplog.set_level(logging.INFO, logger="directory_admin")
    def directory(conn, layout, set_password):
        d.conn = conn
        return d

    monkeypatch.setattr(da, "Directory", directory)
    out = da.handle(old_payload, settings=settings, ec2=None, ssm=ssm, ds=None, dynamodb=None,
                    connect=lambda s, pw: FakeConn())
    # The account and its password come from the function's environment, not from the payload.
    assert d.calls == [("account", "pcad-add-dev", "Add1ng-pw!", ENV["DEPLOYMENT_ID"]),
                       ("claim", "directory", None, "", ENV["DEPLOYMENT_ID"])] and FakeConn.unbound
    assert out["addingAccount"]["account"] == {"dn": "CN=pcad-add-dev"}
    assert '"decision": "ignored keys", "keys": ["joinPasswordParameter", "joinUser"]' in caplog.text
    assert "Add1ng-pw!" not in caplog.text and "Adm1n!" not in caplog.text
    # A parameter that is not the stack's own SecureString is not read: the setup refuses.
    put("/pcluster-ad/dev/join-password", "Add1ng-pw!", kind="String")
    with pytest.raises(da.DirectoryError, match="is a String"):
        da.handle_resource(old_payload, settings=settings, directory=D(), ssm=ssm)


class FakeConn:
    """The connection handle() opens (its Directory is replaced by a stand-in): only the unbind matters."""

    unbound = False

    def unbind(self):
        FakeConn.unbound = True


def test_the_ou_is_never_deleted_while_the_cluster_has_nodes(aws):
    ec2, _dynamodb, launch = aws

    class D:
        deleted = False
        layout = da.Layout("test.domain", "pcluster-ad-dev")

        def owner_value_of(self, kind, name=None):  # this deployment's OU, no owner: the delete acts
            return da.owner_value(None, ENV["DEPLOYMENT_ID"])

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


# -- replication between domain controllers (issue 17, finding 3) -------------------------------------------

NOT_THERE_YET = {"result": 53, "description": "unwillingToPerform",
                 "message": "0000052D: SvcErr: DSID-031A124C, problem 5003 (WILL_NOT_PERFORM), data 0\n"}


class ConnOnDict:
    """An ldap3 connection stand-in for the DC the function bound to: add/modify/modify_dn on a dict of
    entries; the enable (userAccountControl without the disabled bit) is refused `refuse_enable` times as a
    Windows DC refuses it before the password set on another controller has replicated to it."""

    def __init__(self, refuse_enable: int = 0, refuse_with: dict | None = None):
        self.entries: dict[str, dict] = {}
        self.refuse_enable, self.refuse_with = refuse_enable, refuse_with or NOT_THERE_YET
        self.result: dict = {}
        self.log: list[tuple] = []

    def add(self, dn, classes, attrs):
        self.entries[dn] = {k: [v] for k, v in attrs.items()}
        self.log.append(("add", dn))
        self.result = {"result": 0, "description": "success"}
        return True

    def modify(self, dn, mods, controls=None):
        values = {k: v[0][1] for k, v in mods.items()}
        if values.get("userAccountControl") and not int(values["userAccountControl"][0]) & da.UF_ACCOUNTDISABLE \
                and self.refuse_enable:
            self.refuse_enable -= 1
            self.log.append(("refused", dn))
            self.result = dict(self.refuse_with)
            return False
        self.entries[dn].update(values)
        self.log.append(("modify", dn, tuple(sorted(values))))
        self.result = {"result": 0, "description": "success"}
        return True

    def modify_dn(self, dn, rdn):
        new = f"{rdn},{dn.split(',', 1)[1]}"
        self.entries[new] = self.entries.pop(dn)
        self.log.append(("modify_dn", dn, new))
        self.result = {"result": 0, "description": "success"}
        return True


class UsersOnConn(NumbersStub, da.Directory):
    """Directory's real upsert_user / ensure_adding_account on ConnOnDict; lookups by case-insensitive name
    (as AD matches sAMAccountName), no groups."""

    def find_account(self, sam, object_class):
        for dn, e in self.conn.entries.items():
            if e.get("sAMAccountName", [""])[0].lower() == sam.lower():
                return {"dn": dn, "attributes": e}
        return None

    def stack_groups(self, groups):
        return {"ours": {}, "want": {}}

    def sync_groups(self, user_dn, groups):
        return {"added": [], "removed": []}


def stubbed_ds(errors: int, code: str = "UserDoesNotExistException"):
    ds = boto3.client("ds", region_name="eu-west-1", aws_access_key_id="x", aws_secret_access_key="x")
    stub = Stubber(ds)
    expected = {"DirectoryId": "d-1234567890", "UserName": "alice", "NewPassword": "In1tial-pw!"}
    for _ in range(errors):
        stub.add_client_error("reset_user_password", service_error_code=code, service_message="User does not exist.",
                              http_status_code=400, expected_params=expected)
    stub.add_response("reset_user_password", {}, expected)
    stub.activate()
    return ds, stub


def users_dir(conn: ConnOnDict, ds, slept: list[float]) -> UsersOnConn:
    return UsersOnConn(conn, da.Layout("test.domain", "pcluster-ad-dev"), da.ds_password_setter(ds, "d-1234567890"),
                       da.ReplicationWait(sleep=slept.append))


def test_reset_and_enable_wait_for_replication_then_succeed(caplog):
    """The account was added on the function's DC; Directory Service answers from another one: the reset
    meets UserDoesNotExistException 3 times, the enable (back on the first DC) is refused twice until the
    password has replicated. Both are retried with growing waits, each logged; no wall clock is waited."""
    ds, stub = stubbed_ds(3)
    conn, slept = ConnOnDict(refuse_enable=2), []
    caplog.set_level(logging.INFO, logger="directory_admin")
    out = users_dir(conn, ds, slept).upsert_user("alice", initial_password=lambda: "In1tial-pw!")
    stub.assert_no_pending_responses()
    dn = "CN=alice,OU=Users,OU=pcluster-ad-dev,DC=test,DC=domain"
    assert out["created"] and conn.entries[dn]["userAccountControl"] == [str(da.UF_NORMAL_ACCOUNT)]
    assert conn.entries[dn]["pwdLastSet"] == ["0"]
    assert slept == [1.0, 2.0, 4.0, 1.0, 2.0]  # each step starts its own backoff; the budget is shared
    waits = [r.getMessage() for r in caplog.records if "replication wait" in r.getMessage()]
    assert len(waits) == 5 and '"error": "UserDoesNotExistException"' in waits[0]
    assert '"error": "unwillingToPerform 0000052D"' in waits[-1] and f'"step": "enable {dn}"' in waits[-1]
    assert "In1tial-pw!" not in caplog.text


def test_replication_wait_gives_up_within_its_budget_with_a_clear_error():
    ds, stub = stubbed_ds(8)  # more than the budget allows
    conn, slept = ConnOnDict(), []
    with pytest.raises(da.DirectoryError) as err:
        users_dir(conn, ds, slept).upsert_user("alice", initial_password=lambda: "In1tial-pw!")
    assert sum(slept) == da.REPLICATION_BUDGET_S and len(slept) == 7
    assert da.REPLICATION_BUDGET_S <= 60  # well under the function's 120 s timeout
    msg = str(err.value)
    assert msg.startswith("ds:ResetUserPassword of 'alice': still UserDoesNotExistException after 8 attempts and 50 s")
    assert "run `pulumi up` again" in msg and "In1tial-pw!" not in msg
    # Nothing was enabled: the account stays disabled until a later run sets its password.
    (entry,) = conn.entries.values()
    assert int(entry["userAccountControl"][0]) & da.UF_ACCOUNTDISABLE
    # The budget is the event's, not the step's: a later step of the same event gets no wait at all.
    wait = da.ReplicationWait(sleep=slept.append, budget_s=3)
    with pytest.raises(da.DirectoryError, match="after 3 attempts and 3 s"):
        wait.run("x", lambda: (_ for _ in ()).throw(da.LdapError("x", NOT_THERE_YET)))
    with pytest.raises(da.DirectoryError, match="after 1 attempts and 3 s"):
        wait.run("y", lambda: (_ for _ in ()).throw(da.LdapError("y", NOT_THERE_YET)))


@pytest.mark.parametrize("ds_error,enable_refusal", [
    ("InvalidPasswordException", None),
    ("AccessDeniedException", None),
    (None, {"result": 50, "description": "insufficientAccessRights", "message": "00002098: SecErr"}),
    (None, {"result": 53, "description": "unwillingToPerform", "message": "00002077: SvcErr"}),
])
def test_other_errors_are_not_retried(ds_error, enable_refusal):
    ds, _stub = stubbed_ds(1 if ds_error else 0, ds_error or "UserDoesNotExistException")
    conn, slept = ConnOnDict(refuse_enable=1 if enable_refusal else 0, refuse_with=enable_refusal), []
    with pytest.raises(ClientError if ds_error else da.LdapError):
        users_dir(conn, ds, slept).upsert_user("alice", initial_password=lambda: "In1tial-pw!")
    assert slept == []


def test_the_adding_account_waits_for_replication_too():
    d = old_layout()
    failures = [1]

    def set_pw(name, password):
        if failures and failures.pop():
            raise ClientError({"Error": {"Code": "UserDoesNotExistException", "Message": "no"}}, "ResetUserPassword")
        d.writes.append(("password", name, password))

    slept: list[float] = []
    d.set_password, d.replication = set_pw, da.ReplicationWait(sleep=slept.append)
    out = d.ensure_adding_account("pcad-add-dev", lambda: "Add1ng-pw!")
    assert slept == [1.0] and ("password", "pcad-add-dev", "Add1ng-pw!") in d.writes
    assert out["account"]["created"] and out["granted"]


# -- a case-only rename keeps the account (issue 17, finding 7) ----------------------------------------------

PEOPLE = "OU=Users,OU=pcluster-ad-dev,DC=test,DC=domain"


def test_a_case_only_rename_event_does_not_delete_the_user(ssm_env):
    """pcluster-ad:users alice -> Alice: the Invocation's update (prev_input alice). AD matches sAMAccountName
    without case, so deleting 'alice' deleted the very account that 'Alice' then re-created (new SID, new UID)."""
    ssm, settings, put, key, _other = ssm_env
    put("/pcluster-ad/dev/users/Alice/initial-password", "Al1ce-initial!", key_id=key["Arn"])
    ev = {"resource": "user", "name": "Alice", "groups": ["hpc"],
          "tf": {"action": "update", "prev_input": {"resource": "user", "name": "alice", "groups": ["hpc"]}}}
    d = RecordingUsers()
    da.handle_resource(ev, settings=settings, directory=d, ssm=ssm)
    assert [c[:2] for c in d.calls] == [("upsert", "Alice")]
    # A group too: HPC -> hpc is the same group.
    class G(NumbersStub):
        calls: list = []

        def own_account(self, n, object_class):
            return None

        def delete_group(self, n):
            G.calls.append(("delete", n))

        def upsert_group(self, n, description):
            G.calls.append(("upsert", n))
            return "renamed"

    out = da.handle_resource({"resource": "group", "name": "hpc", "tf": {"action": "update",
                              "prev_input": {"name": "HPC"}}}, settings=settings, directory=G(), ssm=ssm)
    assert G.calls == [("upsert", "hpc")] and out["result"] == "renamed"


def alice_on_the_dc() -> ConnOnDict:
    conn = ConnOnDict()
    conn.entries[f"CN=alice,{PEOPLE}"] = {
        "sAMAccountName": ["alice"], "userPrincipalName": ["alice@test.domain"], "objectSid": ["S-1-5-21-1-2-3-1601"],
        "userAccountControl": [str(da.UF_NORMAL_ACCOUNT)], "pwdLastSet": ["134000000000000000"],
        "displayName": ["Alice A"]}
    conn.entries[f"CN=hpc,{PEOPLE}"] = {"sAMAccountName": ["hpc"], "objectSid": ["S-1-5-21-1-2-3-1602"]}
    return conn


def test_upsert_renames_the_account_in_place_keeping_its_sid():
    conn, slept = alice_on_the_dc(), []
    entry = conn.entries[f"CN=alice,{PEOPLE}"]
    d = users_dir(conn, boto3.client("ds", region_name="eu-west-1"), slept)
    out = d.upsert_user("Alice", display_name="Alice A", initial_password=lambda: pytest.fail("no password needed"))
    assert out["renamed"] and not out["created"] and out["dn"] == f"CN=Alice,{PEOPLE}"
    assert conn.entries[f"CN=Alice,{PEOPLE}"] is entry and entry["objectSid"] == ["S-1-5-21-1-2-3-1601"]
    assert entry["sAMAccountName"] == ["Alice"] and entry["userPrincipalName"] == ["Alice@test.domain"]
    assert [op[0] for op in conn.log] == ["modify", "modify_dn"]  # nothing added, nothing deleted
    # Run again (the Invocation retried): nothing to do.
    conn.log.clear()
    again = d.upsert_user("Alice", display_name="Alice A", initial_password=lambda: pytest.fail("no"))
    assert not again["renamed"] and conn.log == []
    # A group: same.
    assert d.upsert_group("HPC") == "renamed" and f"CN=HPC,{PEOPLE}" in conn.entries
    assert conn.entries[f"CN=HPC,{PEOPLE}"]["objectSid"] == ["S-1-5-21-1-2-3-1602"]
    assert d.upsert_group("HPC") == "unchanged"


def test_a_cn_someone_else_chose_is_kept_on_a_case_rename():
    conn = alice_on_the_dc()
    conn.entries[f"CN=Alice Anders,{PEOPLE}"] = conn.entries.pop(f"CN=alice,{PEOPLE}")
    out = users_dir(conn, boto3.client("ds", region_name="eu-west-1"), []).upsert_user(
        "ALICE", display_name="Alice A", initial_password=lambda: "x")
    assert out["dn"] == f"CN=Alice Anders,{PEOPLE}" and conn.entries[out["dn"]]["sAMAccountName"] == ["ALICE"]
    assert [op[0] for op in conn.log] == ["modify"]
