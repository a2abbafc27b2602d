"""Replace-safety of DirectoryAdmin's CRUD Invocations (issue 17): Pulumi replaces an Invocation (new function name,
qualifier or triggers) create-before-delete, so the OLD one's delete runs after the NEW one's create, on the same
OU, group or user. The handler (lambda_src/directory_admin.py, OWNER_KEY) records the owner of each object; the old
delete deletes nothing, `pulumi destroy` (each Invocation's own delete) still removes everything. The lifecycle judge
(tools/lifecycle_judge.py replace_safety_findings) fails a plan whose Invocations lack it.

The directory is a dict (Dit) under Directory's own owner bookkeeping and lookups; EC2 (live nodes) and SSM (the
stack's SecureStrings) on moto. The same sequence against the real Samba DC: tests/adlab/test_directory_admin.py."""

from __future__ import annotations

import copy
import json
import logging

import boto3
import pytest
from moto import mock_aws

from pcluster_ad.lambda_src import directory_admin as da
from pcluster_ad.tools.lifecycle_judge import Plan, replace_safety_findings
from tests.test_directory_admin import CLUSTER, ENV, NumbersStub
from tests.test_lifecycle_judge import STACKS, plan_of

STACK_DN = "OU=pcluster-ad-dev,DC=test,DC=domain"
PEOPLE = f"OU=Users,{STACK_DN}"
OLD_FN, NEW_FN = "pcad-dev-eu-west-1-dir", "pcad-dev-eu-west-2-dir"  # a renamed function: the Invocations are replaced


class Dit(NumbersStub, da.Directory):
    """The stack's part of a directory on a dict (dn -> attributes). The handler's calls (ensure_layout, upsert_*,
    delete_*) act on it; Directory's managed_dn/owner_of/claim/_owned/delete_stack_ou/delete_group/delete_user are
    the real ones."""

    def __init__(self):
        super().__init__(conn=None, layout=da.Layout("test.domain", "pcluster-ad-dev"), set_password=lambda u, p: None)
        self.objects: dict[str, dict] = {}
        self.next_guid = 1

    def _new(self, dn: str, **attrs) -> None:
        self.objects[dn] = {"objectGUID": str(self.next_guid), **attrs}
        self.next_guid += 1

    def search(self, base, flt, attrs=(), *, scope="SUBTREE", controls=None):
        assert scope == "BASE" and flt == "(objectClass=*)", (base, flt, scope)
        o = self.objects.get(base)
        return [{"dn": base, "attributes": {k: [v] for k, v in o.items()}}] if o is not None else []

    def find_account(self, sam, object_class):
        for dn, o in self.objects.items():
            if str(o.get("sAMAccountName", "")).lower() == sam.lower() and object_class in ("*", o["class"]):
                return {"dn": dn, "attributes": {k: [v] for k, v in o.items()}}
        return None

    def replace(self, dn, changes):
        self.objects[dn].update(changes)

    def delete_tree(self, dn):
        gone = [d for d in self.objects if d == dn or d.endswith("," + dn)]
        for d in gone:
            del self.objects[d]
        return bool(gone)

    def ensure_layout(self, mark=""):
        made = []
        for dn in (self.layout.stack_dn, self.layout.computers_dn, self.layout.people_dn):
            if dn not in self.objects:
                own = {da.OWNER_ATTRIBUTE: mark} if mark and dn == self.layout.stack_dn else {}
                self._new(dn, **{"class": "organizationalUnit", **own})
                made.append(dn)
        return made

    def ensure_adding_account(self, name, password, deployment="", mark=""):
        return {"account": None}

    def upsert_group(self, name, description=""):
        if self._owned(name, "group"):
            return "unchanged"
        self._new(f"CN={name},{PEOPLE}", **{"class": "group", "sAMAccountName": name})
        return "created"

    def stack_groups(self, groups):
        return {"ours": {}, "want": {}}

    def upsert_user(self, name, *, groups=(), display_name="", email="", initial_password):
        found = self._owned(name, "user")
        if found:
            return {"dn": found["dn"], "created": False, "added": [], "removed": []}
        initial_password()
        dn = f"CN={name},{PEOPLE}"
        self._new(dn, **{"class": "user", "sAMAccountName": name})
        return {"dn": dn, "created": True, "added": [], "removed": []}

    def guids(self) -> dict[str, str]:
        return {dn: o["objectGUID"] for dn, o in self.objects.items()}


@pytest.fixture
def world():
    """moto EC2 + SSM with the stack's key and the user's initial password; settings naming them."""
    with mock_aws():
        ec2 = boto3.client("ec2", region_name="eu-west-1")
        ssm = boto3.client("ssm", region_name="eu-west-1")
        key = boto3.client("kms", region_name="eu-west-1").create_key()["KeyMetadata"]["Arn"]
        ssm.put_parameter(Name=da.initial_password_parameter_name("dev", "carol"), Value="In1t-carol!",
                          Type="SecureString", KeyId=key)
        ssm.put_parameter(Name=ENV["ADMIN_PASSWORD_PARAMETER"], Value="Adm1n!", Type="SecureString", KeyId=key)
        image = "ami-12c6146b"  # moto does not check the AMI; its defaults may be off (MOTO_EC2_LOAD_DEFAULT_AMIS)

        def launch() -> str:
            return ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, TagSpecifications=[
                {"ResourceType": "instance", "Tags": [{"Key": da.CLUSTER_TAG, "Value": CLUSTER}]}])["Instances"][0][
                "InstanceId"]

        yield ec2, ssm, da.load_settings({**ENV, "KMS_KEY_ARN": key}), launch


def inputs(fn: str) -> dict[str, dict]:
    """The Invocations' inputs as components/directory_admin.py builds them, for a function named `fn`."""
    where = {"directoryId": ENV["DIRECTORY_ID"], "dnsIps": ["10.0.1.5", "10.0.2.5"]}
    out = {"directory-admin-setup": {"resource": "directory", "ou": "pcluster-ad-dev", "setupVersion": 2},
           "directory-admin-group-hpc": {"resource": "group", "name": "hpc", "description": ""},
           "directory-admin-user-carol": {"resource": "user", "name": "carol", "groups": ["hpc"], "displayName": "",
                                          "email": ""}}
    return {n: {**p, **where, da.OWNER_KEY: da.invocation_owner(n, fn)} for n, p in out.items()}


def run(world, d: Dit, payload: dict, action: str, prev: dict | None = None) -> dict:
    ec2, ssm, settings, _launch = world
    event = {**payload, "tf": {"action": action, "prev_input": prev if prev is not None else
                               (payload if action == "delete" else {})}}
    return da.handle_resource(event, settings=settings, directory=d, ssm=ssm, ec2=ec2)


ORDER = ["directory-admin-setup", "directory-admin-group-hpc", "directory-admin-user-carol"]


def test_owner_differs_for_whatever_replaces_an_invocation():
    base = da.invocation_owner("directory-admin-setup", OLD_FN)
    assert base == f"directory-admin-setup@{OLD_FN}"
    others = {da.invocation_owner("directory-admin-setup", NEW_FN), da.invocation_owner("directory-admin-x", OLD_FN),
              da.invocation_owner("directory-admin-setup", OLD_FN, "2"),
              da.invocation_owner("directory-admin-setup", OLD_FN, None, {"a": "1"}),
              da.invocation_owner("directory-admin-setup", OLD_FN, None, {"a": "2"})}
    assert base not in others and len(others) == 5


def test_a_replacement_keeps_everything_and_destroy_still_removes_it(world):
    """create(A) -> create(B, new function name) -> delete(A): the OU, group and user stay (same objects) and B owns
    them; then delete(B), what `pulumi destroy` sends, removes everything."""
    d = Dit()
    a, b = inputs(OLD_FN), inputs(NEW_FN)
    for n in ORDER:
        run(world, d, a[n], "create")
    made = d.guids()
    assert len(made) == 5 and d.owner_of("directory") == a["directory-admin-setup"]["owner"]
    for n in ORDER:  # the replacement: each new create (the engine replaces dependents after what they depend on)
        run(world, d, b[n], "create")
    for n in reversed(ORDER):  # ... then the old deletes, at the end, with the OLD inputs
        out = run(world, d, a[n], "delete")
        assert out["result"] == "superseded" and out["deleted"] is False and out["ownedBy"] == b[n]["owner"], out
    assert d.guids() == made  # nothing deleted, nothing re-made: the same objects
    assert d.owner_of("directory") == b["directory-admin-setup"]["owner"]
    assert d.owner_of("group", "hpc") == b["directory-admin-group-hpc"]["owner"]
    assert d.owner_of("user", "carol") == b["directory-admin-user-carol"]["owner"]
    # An update keeps the owner; the destroy's deletes (B's own) remove everything.
    run(world, d, {**b["directory-admin-group-hpc"], "description": "HPC"}, "update", b["directory-admin-group-hpc"])
    assert d.owner_of("group", "hpc") == b["directory-admin-group-hpc"]["owner"]
    assert run(world, d, b["directory-admin-user-carol"], "delete")["result"] == "deleted"
    assert run(world, d, b["directory-admin-group-hpc"], "delete")["result"] == "deleted"
    assert run(world, d, b["directory-admin-setup"], "delete")["deleted"] is True
    assert d.objects == {}


def test_a_superseded_setup_delete_succeeds_while_the_cluster_has_nodes(world):
    """Without owners the old delete was refused forever (nodes in the OU); now it is a no-op, and the new
    Invocation's delete is still refused until the cluster is gone."""
    ec2, _ssm, _settings, launch = world
    d = Dit()
    a, b = inputs(OLD_FN)["directory-admin-setup"], inputs(NEW_FN)["directory-admin-setup"]
    run(world, d, a, "create")
    iid = launch()
    run(world, d, b, "create")
    assert run(world, d, a, "delete")["result"] == "superseded" and STACK_DN in d.objects
    with pytest.raises(da.DirectoryError, match="delete the cluster first"):
        run(world, d, b, "delete")
    ec2.terminate_instances(InstanceIds=[iid])
    assert run(world, d, b, "delete")["deleted"] is True and not d.objects


def test_objects_without_an_owner_are_deleted_and_a_legacy_delete_yields_to_an_owner(world):
    """What an older version made (no owner recorded) goes with any delete (a stack upgraded and destroyed); a
    delete without an owner (an input stored before this version) after an owner was recorded deletes nothing."""
    d = Dit()
    legacy = {k: v for k, v in inputs(OLD_FN)["directory-admin-group-hpc"].items() if k != da.OWNER_KEY}
    run(world, d, inputs(OLD_FN)["directory-admin-setup"], "create")
    run(world, d, legacy, "create")
    assert d.owner_of("group", "hpc") is None
    assert run(world, d, inputs(NEW_FN)["directory-admin-group-hpc"], "delete")["result"] == "deleted"
    run(world, d, inputs(NEW_FN)["directory-admin-group-hpc"], "create")
    assert run(world, d, legacy, "delete")["result"] == "superseded"
    assert d.find_account("hpc", "group")


def test_the_decision_is_logged(world, caplog, monkeypatch):
    ec2, ssm, settings, _launch = world
    d = Dit()
    a, b = inputs(OLD_FN)["directory-admin-setup"], inputs(NEW_FN)["directory-admin-setup"]

    class Conn:
        def unbind(self):
            pass

    monkeypatch.setattr(da, "Directory", lambda conn, layout, set_password: setattr(d, "conn", conn) or d)
    caplog.set_level(logging.INFO, logger="directory_admin")
    for payload, action in ((a, "create"), (b, "create"), (a, "delete")):
        out = da.handle({**payload, "tf": {"action": action, "prev_input": payload}}, settings=settings, ec2=ec2,
                        ssm=ssm, ds=None, dynamodb=None, connect=lambda s, pw: Conn())
    assert out["decision"] == "superseded by a newer invocation: nothing deleted"
    assert '"decision": "superseded by a newer invocation: nothing deleted"' in caplog.text
    assert f'"ownedBy": "directory-admin-setup@{NEW_FN}"' in caplog.text


# -- the lifecycle judge ---------------------------------------------------------------------------------------

def dev_plan(run_stack) -> Plan:
    def users(c):
        c["pcluster-ad:groups"] = [{"name": "hpc"}]
        c["pcluster-ad:users"] = [{"name": "carol", "groups": ["hpc"]}]

    return Plan(run_stack(users).to_plan())


def edited(plan: Plan, edit) -> Plan:
    rows = copy.deepcopy([{"type": r.type, "name": r.name, "parent": r.parent, "dependencies": list(r.dependencies),
                           "inputs": r.inputs, "options": r.options} for r in plan.resources])
    for r in rows:
        edit(r)
    return Plan(rows)


@pytest.mark.parametrize("name", sorted(STACKS))
def test_every_sample_stack_is_replace_safe(run_stack, name):
    assert replace_safety_findings(plan_of(run_stack, name)) == []


def test_the_judge_passes_the_programs_invocations(run_stack):
    plan = dev_plan(run_stack)
    invs = [r.name for r in plan.of_type("aws:lambda/invocation:Invocation")]
    assert sorted(invs) == ["directory-admin-access", "directory-admin-group-hpc", "directory-admin-setup",
                            "directory-admin-user-carol"]
    assert replace_safety_findings(plan) == []


def test_the_judge_fails_invocations_without_their_owner(run_stack):
    """The plan of the code before the fix (no owner in the inputs): every CRUD Invocation fails."""
    def drop_owner(r):
        if r["type"] == "aws:lambda/invocation:Invocation":
            payload = json.loads(r["inputs"]["input"])
            payload.pop(da.OWNER_KEY)
            r["inputs"]["input"] = json.dumps(payload)

    found = replace_safety_findings(edited(dev_plan(run_stack), drop_owner))
    assert len(found) == 4 and all("its input's 'owner' is None" in f for f in found), found
    assert sorted(f.split(":")[0] for f in found) == ["directory-admin-access", "directory-admin-group-hpc",
                                                     "directory-admin-setup", "directory-admin-user-carol"]


def test_the_judge_fails_an_owner_that_a_replacement_keeps(run_stack):
    """triggers (or a qualifier) replace the Invocation too: an owner that does not carry them is the same for the
    old and the new one."""
    def add_triggers(r):
        if r["name"] == "directory-admin-setup":
            r["inputs"]["triggers"] = {"rotation": "1"}

    found = replace_safety_findings(edited(dev_plan(run_stack), add_triggers))
    assert len(found) == 1 and found[0].startswith("directory-admin-setup: its input's 'owner'"), found
    # delete_before_replace: the old delete runs first, nothing to tell apart.
    def dbr(r):
        add_triggers(r)
        if r["name"] == "directory-admin-setup":
            r["options"] = {**r["options"], "deleteBeforeReplace": True}

    assert replace_safety_findings(edited(dev_plan(run_stack), dbr)) == []


def test_the_judge_fails_a_handler_that_declares_no_replace_safety(run_stack, monkeypatch):
    monkeypatch.delattr(da, "OWNER_KEY")
    found = replace_safety_findings(dev_plan(run_stack))
    assert len(found) == 4 and all("declares no replace-safety" in f for f in found), found
