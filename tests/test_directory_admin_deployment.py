"""Attack finding 1 of issue 17, fixed: two deployments with the same stack name on one directory (another region
or account). The OU and the adding account are named by the stack name only, so each deployment has its own id
(components/directory_admin.py's RandomId: DEPLOYMENT_ID in the function's environment, DEPLOYMENT_KEY in every
input) and lambda_src/directory_admin.py marks what it makes with it: the setup refuses an OU another deployment
marked, adopts an unmarked one only on the migration from an earlier version; the OU's delete, the sweep and the
termination handler act only on an OU marked with their own; the adding account of another deployment is never
touched (its password never reset). The same against the real Samba DC: tests/adlab/test_attack_issue17.py."""

from __future__ import annotations

import copy

import pytest

import tests.test_directory_admin as admin_tests
import tests.test_directory_admin_replace as replace_tests
from pcluster_ad.lambda_src import directory_admin as da
from tests.test_directory_admin import (
    ENV,
    FOREIGN_SID,
    OU,
    TABLE,
    WORLD,
    FakeDirectory,
    RecordingDirectory,
    event,
    terminate,
)
from tests.test_directory_admin_replace import Dit, inputs

aws, world = admin_tests.aws, replace_tests.world  # their fixtures (moto EC2/DynamoDB; moto EC2/SSM + settings)

OTHER = "fedcba9876543210fedcba9876543210"  # the other deployment's id
FN = "pcad-dev-eu-west-1-dir"


class Tree(Dit):
    """Dit with the one subtree search the deployment check makes (accounts below the stack's OU)."""

    def stack_ou_holds_accounts(self) -> bool:
        return any(o.get("class") in ("user", "group") for dn, o in self.objects.items()
                   if da.under(dn, self.layout.stack_dn))


def handle(world, d: Dit, payload: dict, action: str, prev: dict | None = None, **env) -> dict:
    ec2, ssm, settings, _launch = world
    if env:
        settings = da.load_settings({**ENV, "KMS_KEY_ARN": settings.kms_key_arn, **env})
    ev = {**payload, "tf": {"action": action, "prev_input": prev if prev is not None else
                            (payload if action == "delete" else {})}}
    return da.handle_resource(ev, settings=settings, directory=d, ssm=ssm, ec2=ec2)


def mine(name: str = "directory-admin-setup") -> dict:
    return {**inputs(FN)[name], da.DEPLOYMENT_KEY: ENV["DEPLOYMENT_ID"]}


def theirs(name: str = "directory-admin-setup") -> dict:
    """The other deployment's input: the same stack, its function in another region."""
    return {**inputs("pcad-dev-us-east-1-dir")[name], da.DEPLOYMENT_KEY: OTHER}


def test_the_other_deployment_is_refused_and_its_destroy_deletes_nothing(world):
    d = Tree()
    handle(world, d, mine(), "create")
    handle(world, d, mine("directory-admin-group-hpc"), "create")
    handle(world, d, mine("directory-admin-user-carol"), "create")
    assert d.owner_value_of("directory") == da.owner_value(mine()["owner"], ENV["DEPLOYMENT_ID"])
    before = copy.deepcopy(d.objects)
    with pytest.raises(da.DirectoryError) as refused:
        handle(world, d, theirs(), "create", DEPLOYMENT_ID=OTHER)
    message = str(refused.value)
    assert f"belongs to another deployment ({ENV['DEPLOYMENT_ID']}; this one is {OTHER})" in message
    assert "another stack name" in message and "pcluster-ad:directory.parentOu" in message
    assert d.objects == before  # refused before any write
    # Its destroy: the setup's, a user's and a group's deletes (had they been made) delete nothing.
    out = handle(world, d, theirs(), "delete", DEPLOYMENT_ID=OTHER)
    assert out["result"] == "not ours" and out["deleted"] is False and out["ownedBy"] == ENV["DEPLOYMENT_ID"]
    for n in ("directory-admin-user-carol", "directory-admin-group-hpc"):
        assert handle(world, d, theirs(n), "delete", DEPLOYMENT_ID=OTHER)["result"] == "not ours"
    assert d.objects == before
    # The same function name and owner (another ACCOUNT, same region): told apart by the deployment alone.
    same_fn = {**mine(), da.DEPLOYMENT_KEY: OTHER}
    with pytest.raises(da.DirectoryError, match="belongs to another deployment"):
        handle(world, d, same_fn, "create", DEPLOYMENT_ID=OTHER)
    assert handle(world, d, same_fn, "delete", DEPLOYMENT_ID=OTHER)["result"] == "not ours"
    assert d.objects == before
    # Its own destroy removes it all.
    assert handle(world, d, mine(), "delete")["deleted"] is True and d.objects == {}


def test_an_input_for_another_deployment_is_refused(world):
    with pytest.raises(da.DirectoryError, match="input is for deployment 'fedcba.*run `pulumi up` again"):
        handle(world, Tree(), {**mine(), da.DEPLOYMENT_KEY: OTHER}, "create")


def legacy(d: Dit, *, accounts: bool) -> None:
    """The OU as the version before deployment marks left it: its owner token has no deployment."""
    d.ensure_layout()
    d.objects[d.layout.stack_dn][da.OWNER_ATTRIBUTE] = da.OWNER_PREFIX + mine()["owner"]
    if accounts:
        d._new(f"CN=carol,{d.layout.people_dn}", **{"class": "user", "sAMAccountName": "carol"})


def test_an_unmarked_ou_is_adopted_only_on_the_migration_or_when_it_holds_no_account(world, caplog):
    d = Tree()
    legacy(d, accounts=True)
    before = copy.deepcopy(d.objects)
    # A first `up` (a create) finds it: another deployment's of an earlier version (or hand-made): refused.
    with pytest.raises(da.DirectoryError, match="carries no deployment mark.*pcluster-ad:directory.parentOu"):
        handle(world, d, mine(), "create")
    assert d.objects == before
    # Its delete (a stack that never made it) leaves it.
    assert handle(world, d, mine(), "delete")["result"] == "not ours" and d.objects == before
    # This stack's own first `up` with this version: an update whose stored input has no deployment.
    old = {k: v for k, v in mine().items() if k != da.DEPLOYMENT_KEY}
    out = handle(world, d, mine(), "update", prev=old)
    assert out["ou"] == "adopted" and '"event": "adopted"' in caplog.text
    assert d.deployment_of("directory") == ENV["DEPLOYMENT_ID"] and d.owner_of("directory") == mine()["owner"]
    # From then on the other deployment is refused by the mark, also with an update of its own.
    with pytest.raises(da.DirectoryError, match="belongs to another deployment"):
        handle(world, d, theirs(), "update", prev={k: v for k, v in theirs().items() if k != "deployment"},
               DEPLOYMENT_ID=OTHER)
    # An unmarked OU without any account (an earlier version's leftover, or made by hand): nobody's objects at stake.
    empty = Tree()
    legacy(empty, accounts=False)
    assert handle(world, empty, mine(), "create")["ou"] == "adopted"
    assert empty.deployment_of("directory") == ENV["DEPLOYMENT_ID"]


def test_sweep_and_termination_act_only_on_an_ou_marked_with_their_own(aws):
    ec2, _dynamodb, launch = aws
    s = da.load_settings({**ENV, "SWEEP_GRACE_MINUTES": "60"})
    old = {"name": da.computer_name(s.computer_prefix, "i-0123456789abcdef0"), "dn": f"CN=x,{OU}", "created": None}
    for mark in (da.owner_value("directory-admin-setup@pcad-dev-us-east-1-dir", OTHER),  # the other deployment's
                 da.OWNER_PREFIX + "directory-admin-setup@" + FN, None):  # an earlier version's, none
        d = RecordingDirectory([old], ou_mark=mark)
        out = da.sweep(settings=s, ec2=ec2, directory=d, now=da.datetime.now(da.UTC))
        assert out["result"] == "not ours" and out["deleted"] == [] and d.trees == []
    own = RecordingDirectory([old])
    assert da.sweep(settings=s, ec2=ec2, directory=own, now=da.datetime.now(da.UTC))["deleted"] == [old["name"]]
    # Termination: a node of the same cluster name, terminated, but the OU is the other deployment's.
    (iid,) = launch()
    ec2.terminate_instances(InstanceIds=[iid])
    d = RecordingDirectory(ou_mark=da.owner_value("x@y", OTHER))
    _dynamodb.put_item(TableName=TABLE, Item={"instanceId": {"S": iid}, "computerName": {"S": old["name"]}})
    out = da.handle_termination(event(iid), settings=s, ec2=ec2, dynamodb=_dynamodb, directory=lambda: d)
    assert out["result"] == "ignored" and "not this deployment's" in out["reason"] and d.deleted == []
    assert terminate(aws, launch()[0], recorded=old["name"])["deleted"]  # its own OU: deleted as before


def test_another_deployments_adding_account_is_never_touched():
    """Defence in depth below the OU check: an adding account marked by another deployment is refused before any
    write (no password reset: that deployment's join function uses it); an unmarked one in this deployment's OU
    (an earlier version's) is marked; a new one is made with the mark."""
    mark = da.owner_value("directory-admin-setup@" + FN, ENV["DEPLOYMENT_ID"])

    class Marked(FakeDirectory):
        def find_account(self, sam, object_class):
            a = self.accounts.get(sam)
            return {"dn": a["dn"], "attributes": {"description": [a["description"]],
                                                  da.OWNER_ATTRIBUTE: [a.get("mark")]}} if a else None

        def add(self, dn, classes, attrs):
            super().add(dn, classes, attrs)
            self.accounts[attrs["sAMAccountName"]]["mark"] = attrs.get(da.OWNER_ATTRIBUTE)

        def replace(self, dn, changes):
            super().replace(dn, changes)
            for a in self.accounts.values():
                if a["dn"] == dn and da.OWNER_ATTRIBUTE in changes:
                    a["mark"] = changes[da.OWNER_ATTRIBUTE]

    account = {"dn": f"CN=pcad-add-dev,{OU}", "sid": FOREIGN_SID, "description": da.ADDING_ACCOUNT_DESCRIPTION}
    d = Marked({"pcad-add-dev": {**account, "mark": da.owner_value("x@pcad-dev-us-east-1-dir", OTHER)}}, [WORLD])
    with pytest.raises(da.NotOurs, match=f"another deployment \\({OTHER}.*password not reset"):
        d.ensure_adding_account("pcad-add-dev", lambda: "pw", deployment=ENV["DEPLOYMENT_ID"], mark=mark)
    assert d.writes == []
    d = Marked({"pcad-add-dev": dict(account)}, [WORLD])  # unmarked: an earlier version's
    d.ensure_adding_account("pcad-add-dev", lambda: "pw", deployment=ENV["DEPLOYMENT_ID"], mark=mark)
    assert d.accounts["pcad-add-dev"]["mark"] == mark and ("password", "pcad-add-dev", "pw") in d.writes
    d = Marked({}, [WORLD])
    d.ensure_adding_account("pcad-add-dev", lambda: "pw", deployment=ENV["DEPLOYMENT_ID"], mark=mark)
    assert d.accounts["pcad-add-dev"]["mark"] == mark


def test_the_deployment_id_is_required_and_checked():
    with pytest.raises(da.SettingsError, match="not set: DEPLOYMENT_ID"):
        da.load_settings({k: v for k, v in ENV.items() if k != "DEPLOYMENT_ID"})
    with pytest.raises(da.SettingsError, match="DEPLOYMENT_ID 'a b'"):
        da.load_settings({**ENV, "DEPLOYMENT_ID": "a b"})
    assert da.parse_owner_value(da.owner_value("o@f#1", "abc12345")) == ("o@f#1", "abc12345")
    assert da.parse_owner_value(da.OWNER_PREFIX + "o@f") == ("o@f", None) and da.parse_owner_value("x") is None
