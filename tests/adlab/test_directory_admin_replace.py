"""A replaced DirectoryAdmin Invocation against the lab's real Samba DC (issue 17, replace-safety).

Pulumi replaces a CRUD Invocation (its function renamed, a qualifier or triggers changed) create-before-delete: the
new Invocation's create runs, then the OLD one's delete with its old input. The plan's own Invocation inputs (the real
program) are played through the product's real handler (dirsvc: real ldap3 to the DC, EC2/SSM on moto): creates in
the judged create order with the cluster running, the replacement (the same inputs as the component builds them for
a renamed function: another owner), the old deletes, and then `pulumi destroy`'s deletes. Every check reads the DC's
own database: after the old deletes the OU and everything in it are the same objects (objectGUID), owned by the new
Invocations; the destroy removes them all.
"""

from __future__ import annotations

import json
import secrets

import pytest

from pcluster_ad.lambda_src.directory_admin import (
    OWNER_ATTRIBUTE,
    OWNER_KEY,
    computer_prefix,
    invocation_owner,
    owner_value,
)
from pcluster_ad.tools.lifecycle_judge import T_INVOCATION, Plan

from .conftest import running_lab
from .test_directory_admin import DirSvc, allow_simple_binds, dc_add_computer, dc_search

pytestmark = pytest.mark.adlab

STACK = "dev"
BASE = "DC=test,DC=domain"
STACK_DN = f"OU=pcluster-ad-{STACK},{BASE}"
COMPUTERS_DN = f"OU=Computers,{STACK_DN}"
JOIN_USER = f"pcad-add-{STACK}"
DIRECTORY_ID = "d-1234567890"
TABLE = "replace-join-windows"
NEW_FUNCTION = f"pcad-{STACK}-eu-west-1-dir2"  # the function renamed: every Invocation is replaced


def _stack(c):
    c["pcluster-ad:directory"] = {"type": "Existing", "domainName": "test.domain", "shortName": "TEST",
                                  "dnsIps": ["10.0.0.10", "10.0.1.10"], "directoryId": DIRECTORY_ID,
                                  "adminUser": "Administrator", "parentOu": BASE}
    c["pcluster-ad:join"] = {"user": JOIN_USER}
    c["pcluster-ad:groups"] = [{"name": "hpc"}]
    c["pcluster-ad:users"] = [{"name": "carol", "groups": ["hpc"]}]


@pytest.fixture(scope="module")
def lab():
    with running_lab(services=False, after_start=allow_simple_binds, client=False) as lab:
        yield lab


@pytest.fixture(scope="module")
def svc(lab):
    svc = DirSvc(lab)
    svc.deployment = svc.ok("config", settings={
        "DIRECTORY_ID": DIRECTORY_ID, "DOMAIN": lab.cfg.domain, "DNS_IPS": lab.dc_ip, "OU_NAME": f"pcluster-ad-{STACK}",
        "ADMIN_USER": "Administrator", "ADMIN_PASSWORD_PARAMETER": f"/pcluster-ad/{STACK}/admin-password",
        "STACK": STACK, "CLUSTER_NAME": lab.cfg.cluster_name, "COMPUTER_PREFIX": computer_prefix(lab.cfg.cluster_name),
        "JOIN_USER": JOIN_USER, "JOIN_PASSWORD_PARAMETER": f"/pcluster-ad/{STACK}/join-password",
        "WINDOW_TABLE": TABLE, "SWEEP_GRACE_MINUTES": "60",
    }, parameters={f"/pcluster-ad/{STACK}/admin-password": lab.admin_password,
                   f"/pcluster-ad/{STACK}/join-password": "Jn-" + secrets.token_urlsafe(16) + "9!",
                   f"/pcluster-ad/{STACK}/users/carol/initial-password": "In1t-" + secrets.token_urlsafe(10) + "!"},
        table=TABLE, dc_argv=lab.dc.argv([]))["deployment"]  # its DEPLOYMENT_ID: in every owner token
    yield svc
    svc.close()


# Run by the DC's python3: every object below a DN in the DC's own database, with its objectGUID and owner.
DC_GUIDS = r"""
import json, sys, uuid
import ldb
from samba.auth import system_session
from samba.param import LoadParm
from samba.samdb import SamDB
lp = LoadParm(); lp.load_default()
db = SamDB(url=lp.samdb_url(), session_info=system_session(), lp=lp)
try:
    res = db.search(sys.argv[1], scope=ldb.SCOPE_SUBTREE, attrs=["objectGUID", sys.argv[2]])
except ldb.LdbError:
    res = []
print(json.dumps({str(m.dn): [str(uuid.UUID(bytes_le=bytes(m["objectGUID"][0]))),
                              str(m[sys.argv[2]][0]) if sys.argv[2] in m else ""] for m in res}))
"""


def objects(lab) -> dict[str, tuple[str, str]]:
    """Everything in the stack's OU on the DC: dn -> (objectGUID, owner recorded on it)."""
    res = lab.dc.run(["/usr/bin/python3", "-c", DC_GUIDS, STACK_DN, OWNER_ATTRIBUTE], timeout=60)
    return {dn: tuple(v) for dn, v in json.loads(res.stdout).items()}


def test_a_replacement_leaves_the_new_invocations_objects_and_destroy_removes_them(lab, svc, run_stack):
    plan = Plan(run_stack(_stack, secrets={"pcluster-ad:adminPassword": "Adm1n-Secret-Passw0rd!"}).to_plan())
    old = {n: json.loads(r.inputs["input"]) for n, r in plan.by_name.items() if r.type == T_INVOCATION}
    order = [n for wave in plan.create_order() for n in wave if n in old]
    assert order == ["directory-admin-setup", "directory-admin-access", "directory-admin-group-hpc",
                     "directory-admin-user-carol"]
    function = plan.by_name["directory-admin-setup"].inputs["functionName"]
    assert all(old[n][OWNER_KEY] == invocation_owner(n, function) for n in order)
    new = {n: {**p, OWNER_KEY: invocation_owner(n, NEW_FUNCTION)} for n, p in old.items()}

    for n in order:
        svc.ok("handle", event={**old[n], "tf": {"action": "create", "prev_input": {}}})
    (iid,) = svc.ok("instances", count=1)["ids"]  # the cluster is running: a node in the OU
    dc_add_computer(lab, svc.ok("name", instance_id=iid)["name"], COMPUTERS_DN)
    before = objects(lab)
    # OU, Computers, Users, the adding account, the node, the two access groups (issue 18), hpc, carol
    assert len(before) == 9, before
    assert before[STACK_DN][1] == owner_value(old["directory-admin-setup"][OWNER_KEY], svc.deployment)

    # The replacement: the new creates, then the old deletes at the end with their old inputs.
    for n in order:
        svc.ok("handle", event={**new[n], "tf": {"action": "create", "prev_input": {}}})
    for n in reversed(order):
        out = svc.ok("handle", event={**old[n], "tf": {"action": "delete", "prev_input": old[n]}})["result"]
        # The access Invocation answers per group (its two stack groups), the others for their one object.
        for answer in ([out["users"], out["admins"]] if n == "directory-admin-access" else [out]):
            assert answer["result"] == "superseded" and answer["deleted"] is False, out
    after = objects(lab)
    assert {dn: guid for dn, (guid, _o) in after.items()} == {dn: guid for dn, (guid, _o) in before.items()}
    assert after[STACK_DN][1] == owner_value(new["directory-admin-setup"][OWNER_KEY], svc.deployment)
    owned = {dn: o for dn, (_g, o) in after.items()}
    assert owned[f"CN=hpc,OU=Users,{STACK_DN}"] == owner_value(
        new["directory-admin-group-hpc"][OWNER_KEY], svc.deployment)
    assert owned[f"CN=carol,OU=Users,{STACK_DN}"] == owner_value(
        new["directory-admin-user-carol"][OWNER_KEY], svc.deployment)
    carol = dc_search(lab, STACK_DN, "(sAMAccountName=carol)", ["memberOf"])
    assert carol[0]["memberOf"] == [f"CN=hpc,OU=Users,{STACK_DN}"]

    # `pulumi destroy`: the cluster first, then the new Invocations' own deletes remove everything.
    svc.ok("delete_cluster")
    for n in reversed(order):
        svc.ok("handle", event={**new[n], "tf": {"action": "delete", "prev_input": new[n]}})
    assert not dc_search(lab, STACK_DN, scope="base")
    for sam in (JOIN_USER, "carol", "hpc"):
        assert not dc_search(lab, BASE, f"(sAMAccountName={sam})"), sam
    assert dc_search(lab, BASE, "(sAMAccountName=alice)")  # a lab user outside the stack
