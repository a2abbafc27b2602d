"""Attack review of issue 17 against the lab's real Samba DC: the owner token DirectoryAdmin writes on the objects
it manages (adminDescription, replace-safe deletes) and the stack's OU when two deployments share one directory.

The product's real handler runs in dirsvc (real ldap3 to the DC; EC2/SSM on moto), one dirsvc per deployment.
Attacks refused today are plain tests; findings are xfail(strict=True) and flip with the fix (see
tests/test_attack_issue17.py for the unit side)."""

from __future__ import annotations

import json
import secrets
import subprocess
from datetime import UTC, datetime, timedelta

import pytest

from pcluster_ad.lambda_src.directory_admin import (
    OWNER_ATTRIBUTE,
    OWNER_PREFIX,
    computer_prefix,
    invocation_owner,
    owner_value,
)

from .conftest import running_lab
from .lab import HERE, Lab, lab_python
from .test_directory_admin import DirSvc, allow_simple_binds, dc_add_computer, dc_search

pytestmark = pytest.mark.adlab

BASE = "DC=test,DC=domain"
DIRECTORY_ID = "d-1234567890"

# Run by the DC's python3: set a user's password (stdin), not to be changed at the next login (so the test can bind
# as her, as she would after her first login).
DC_SETPW = r"""
import sys
import ldb
from samba.auth import system_session
from samba.param import LoadParm
from samba.samdb import SamDB
lp = LoadParm(); lp.load_default()
db = SamDB(url=lp.samdb_url(), session_info=system_session(), lp=lp)
db.setpassword("(&(objectClass=user)(sAMAccountName=%s))" % ldb.binary_encode(sys.argv[1]), sys.stdin.read(),
               force_change_at_next_login=False)
"""

# Run in the switch namespace with the venv's python: as some account, replace one attribute of one object.
AS_USER_MODIFY = r"""
import json, sys
from ldap3 import MODIFY_REPLACE, SIMPLE, Connection, Server
q = json.load(sys.stdin)
conn = Connection(Server(q["server"], port=389, connect_timeout=5), user=q["user"], password=q["password"],
                  authentication=SIMPLE, raise_exceptions=False)
if not conn.bind():
    print(json.dumps({"bind": False, "result": conn.result.get("description")}))
    sys.exit(0)
ok = conn.modify(q["dn"], {q["attr"]: [(MODIFY_REPLACE, [q["value"]])]})
print(json.dumps({"bind": True, "ok": bool(ok), "result": conn.result.get("description")}))
"""


def as_user_modify(lab: Lab, user: str, password: str, dn: str, attr: str, value: str) -> dict:
    probe = subprocess.run(
        ["ip", "netns", "exec", lab.sw_ns, lab_python(), "-c", AS_USER_MODIFY],
        input=json.dumps({"server": lab.dc_ip, "user": f"{user}@{lab.cfg.domain}", "password": password, "dn": dn,
                          "attr": attr, "value": value}),
        capture_output=True, text=True, timeout=60, cwd=str(HERE))
    return json.loads(probe.stdout) if probe.returncode == 0 and probe.stdout else {"error": probe.stderr[-2000:]}


def deployment(lab: Lab, stack: str, region: str, cluster: str, users: list[str]) -> tuple[DirSvc, dict]:
    """One deployment's DirectoryAdmin (its own dirsvc): stack name, region (its function's name), cluster, and its
    deployment id (components/directory_admin.py's RandomId: in its environment and every input)."""
    svc = DirSvc(lab)
    deployment_id = secrets.token_hex(16)
    join_password = "Jn-" + secrets.token_urlsafe(16) + "9!"
    params = {f"/pcluster-ad/{stack}/admin-password": lab.admin_password,
              f"/pcluster-ad/{stack}/join-password": join_password}
    params.update({f"/pcluster-ad/{stack}/users/{u}/initial-password": "In1t-" + secrets.token_urlsafe(10) + "!"
                   for u in users})
    svc.ok("config", settings={
        "DIRECTORY_ID": DIRECTORY_ID, "DOMAIN": lab.cfg.domain, "DNS_IPS": lab.dc_ip, "OU_NAME": f"pcluster-ad-{stack}",
        "ADMIN_USER": "Administrator", "ADMIN_PASSWORD_PARAMETER": f"/pcluster-ad/{stack}/admin-password",
        "STACK": stack, "CLUSTER_NAME": cluster, "COMPUTER_PREFIX": computer_prefix(cluster),
        "JOIN_USER": f"pcad-add-{stack}", "JOIN_PASSWORD_PARAMETER": f"/pcluster-ad/{stack}/join-password",
        "SWEEP_GRACE_MINUTES": "60", "DEPLOYMENT_ID": deployment_id,
    }, parameters=params, dc_argv=lab.dc.argv([]))
    function = f"pcad-{stack}-{region}-dir"  # stack_config.physical_names: what the owner token names
    return svc, {"join_password": join_password, "function": function, "stack": stack, "deployment": deployment_id}


def event(d: dict, part: str, payload: dict, action: str) -> dict:
    """An Invocation's input as components/directory_admin.py builds it (directory, DNS IPs, owner) plus tf."""
    body = {**payload, "directoryId": DIRECTORY_ID, "dnsIps": ["10.0.0.10"], "deployment": d["deployment"],
            "owner": invocation_owner(f"directory-admin-{part}", d["function"])}
    return {**body, "tf": {"action": action, "prev_input": body if action == "delete" else {}}}


SETUP = {"resource": "directory", "setupVersion": 2, "joinPasswordVersion": 1}


def setup(d: dict) -> dict:
    return {**SETUP, "ou": f"pcluster-ad-{d['stack']}"}


def exists(lab: Lab, name: str) -> bool:
    return bool(dc_search(lab, BASE, f"(sAMAccountName={name})"))


def binds(svc: DirSvc, lab: Lab, user: str, password: str) -> bool:
    out = svc.call("ldap", server=lab.dc_ip, user=f"{user}@{lab.cfg.domain}", password=password, ops=[])
    return bool(out.get("ok"))


@pytest.fixture(scope="module")
def lab():
    with running_lab(services=False, after_start=allow_simple_binds, client=False) as lab:
        yield lab


def test_refused_a_user_cannot_write_the_owner_token_on_her_own_account_to_outlive_her_removal(lab):
    """The owner token (adminDescription on the user object) decides whether a delete acts. frank, a user the
    stack declared, logged in (his own password): he tries to write a foreign owner on his own account so that
    removing him from the config (his Invocation's delete) would answer 'superseded' and leave the account.
    The directory refuses the write (Samba 4.17; on Windows DCs adminDescription is in no property set SELF may
    write either: not proven here), and the delete removes him."""
    svc, d = deployment(lab, "own", "eu-west-1", "ownc", ["frank"])
    try:
        svc.ok("handle", event=event(d, "setup", setup(d), "create"))
        svc.ok("handle", event=event(d, "user-frank", {"resource": "user", "name": "frank", "groups": []}, "create"))
        (frank,) = dc_search(lab, BASE, "(sAMAccountName=frank)", [OWNER_ATTRIBUTE])
        assert frank[OWNER_ATTRIBUTE] == [owner_value(invocation_owner("directory-admin-user-frank", d["function"]),
                                                      d["deployment"])]
        own = "Fr4nk-" + secrets.token_urlsafe(10) + "!"
        lab.dc.run(["/usr/bin/python3", "-c", DC_SETPW, "frank"], input=own, timeout=60)
        forged = OWNER_PREFIX + "directory-admin-user-frank@someone-else"
        got = as_user_modify(lab, "frank", own, frank["dn"], OWNER_ATTRIBUTE, forged)
        assert got["bind"] is True and got["ok"] is False and got["result"] == "insufficientAccessRights", got
        # Nor on the stack's OU (whose owner decides the OU's delete): not frank, not the computer-adding account
        # (the join function's; root on a node never holds it).
        stack_dn = f"OU=pcluster-ad-own,{BASE}"
        for user, password in (("frank", own), ("pcad-add-own", d["join_password"])):
            got = as_user_modify(lab, user, password, stack_dn, OWNER_ATTRIBUTE, OWNER_PREFIX + "x@y")
            assert got["bind"] is True and got["ok"] is False, (user, got)
            assert got["result"] in ("insufficientAccessRights", "noSuchObject"), (user, got)
        (ou,) = dc_search(lab, BASE, "(ou=pcluster-ad-own)", [OWNER_ATTRIBUTE])
        assert ou[OWNER_ATTRIBUTE] == [owner_value(invocation_owner("directory-admin-setup", d["function"]),
                                                   d["deployment"])]
        out = svc.ok("handle", event=event(d, "user-frank", {"resource": "user", "name": "frank", "groups": []},
                                           "delete"))["result"]
        assert out["result"] == "deleted" and not exists(lab, "frank")
    finally:
        svc.handle(event(d, "setup", setup(d), "delete"))
        svc.close()


def test_attack_finding_1_a_same_named_stack_elsewhere_cannot_take_or_delete_this_stacks_ou(lab):
    """Stack `dev` in eu-west-1 (cluster hpca: the OU, the adding account, group hpc, user carol). Then stack `dev`
    in us-east-1 (or another account) on the same directory (README: one stack name may be used in two regions;
    "two clusters on one directory never collide"): its first `up` and its `destroy`. The first deployment must
    keep its adding account's password (its nodes' joins), its user and its OU."""
    svc_a, a = deployment(lab, "dev", "eu-west-1", "hpca", ["carol"])
    svc_b, b = deployment(lab, "dev", "us-east-1", "hpcb", [])
    try:
        svc_a.ok("handle", event=event(a, "setup", setup(a), "create"))
        svc_a.ok("handle", event=event(a, "group-hpc", {"resource": "group", "name": "hpc", "description": ""},
                                       "create"))
        svc_a.ok("handle", event=event(a, "user-carol", {"resource": "user", "name": "carol", "groups": ["hpc"]},
                                       "create"))
        assert exists(lab, "carol") and binds(svc_a, lab, "pcad-add-dev", a["join_password"])
        # The other deployment: `pulumi up` (its setup), then `pulumi destroy` (its setup's delete). A refusal of
        # either is fine; what matters is what is left of the first deployment.
        refused = svc_b.handle(event(b, "setup", setup(b), "create"))
        gone = svc_b.handle(event(b, "setup", setup(b), "delete"))
        left = {"carol": exists(lab, "carol"), "hpc": exists(lab, "hpc"), "adding account": exists(lab, "pcad-add-dev"),
                "its password": binds(svc_a, lab, "pcad-add-dev", a["join_password"])}
        assert all(left.values()), left
        # How (the fix): the OU carries the first deployment's mark; the other's setup is refused before any write
        # with the conflict and the fix named, its delete leaves the OU (not its own).
        assert refused["ok"] is False and f"belongs to another deployment ({a['deployment']}" in refused["error"]
        assert "another stack name" in refused["error"] and "pcluster-ad:directory.parentOu" in refused["error"]
        assert gone["ok"] is True and gone["result"]["result"] == "not ours" and gone["result"]["deleted"] is False
        (ou,) = dc_search(lab, BASE, "(ou=pcluster-ad-dev)", [OWNER_ATTRIBUTE])
        assert ou[OWNER_ATTRIBUTE] == [owner_value(invocation_owner("directory-admin-setup", a["function"]),
                                                   a["deployment"])]
        (adder,) = dc_search(lab, BASE, "(sAMAccountName=pcad-add-dev)", [OWNER_ATTRIBUTE])
        assert adder[OWNER_ATTRIBUTE] == ou[OWNER_ATTRIBUTE]  # marked the same way
        # The first deployment's own destroy still removes everything.
        assert svc_a.ok("handle", event=event(a, "setup", setup(a), "delete"))["result"]["deleted"] is True
        assert not exists(lab, "carol") and not exists(lab, "pcad-add-dev")
    finally:
        for svc in (svc_a, svc_b):
            svc.close()


def test_attack_finding_1_a_same_named_deployment_elsewhere_does_not_sweep_this_clusters_live_nodes(lab):
    svc_a, a = deployment(lab, "dev2", "eu-west-1", "hpc", [])
    svc_b, b = deployment(lab, "dev2", "us-east-1", "hpc", [])
    try:
        svc_a.ok("handle", event=event(a, "setup", setup(a), "create"))
        svc_b.handle(event(b, "setup", setup(b), "create"))
        (iid,) = svc_a.ok("instances", count=1)["ids"]
        node = svc_a.ok("name", instance_id=iid)["name"]
        dc_add_computer(lab, node, f"OU=Computers,OU=pcluster-ad-dev2,{BASE}")  # what the join function makes
        later = datetime.now(UTC) + timedelta(hours=2)  # past the grace period
        assert svc_a.ok("handle", event={"op": "sweep"}, now=later.isoformat())["result"]["deleted"] == []
        assert exists(lab, node + "$")
        swept = svc_b.handle({"op": "sweep"}, now=later)
        assert exists(lab, node + "$"), f"{node}: the live node's computer object was swept by the other deployment"
        assert swept["ok"] is True and swept["result"]["result"] == "not ours", swept  # the fix: the OU's mark
        # Nor does the other deployment's termination handler (the same cluster tag in its region) touch it.
        (other,) = svc_b.ok("instances", count=1)["ids"]
        svc_b.ok("terminate", ids=[other])
        dc_add_computer(lab, svc_b.ok("name", instance_id=other)["name"], f"OU=Computers,OU=pcluster-ad-dev2,{BASE}")
        term = {"source": "aws.ec2", "detail-type": "EC2 Instance State-change Notification",
                "detail": {"instance-id": other, "state": "terminated"}}
        assert svc_b.ok("handle", event=term)["result"]["result"] == "ignored"
        assert exists(lab, svc_b.ok("name", instance_id=other)["name"] + "$")
    finally:
        for svc in (svc_a, svc_b):
            svc.close()


def test_fix_1_an_earlier_versions_unmarked_ou_is_adopted_only_by_its_own_stacks_update(lab):
    """Migration (attack finding 1's fix): an OU and adding account as the version before deployment marks left them
    (owner token without a deployment). Another deployment with the same stack name (first `up`: a create) is
    refused; the stack's own first `up` with this version (an update whose stored input has no deployment) adopts
    and marks them, keeping the adding account's password; then the other deployment is refused by the mark."""
    svc_a, a = deployment(lab, "mig", "eu-west-1", "hpcm", [])
    svc_b, b = deployment(lab, "mig", "us-east-1", "hpcn", [])
    try:
        svc_a.ok("handle", event=event(a, "setup", setup(a), "create"))
        legacy = OWNER_PREFIX + invocation_owner("directory-admin-setup", a["function"])  # what the old version wrote
        stack_dn = f"OU=pcluster-ad-mig,{BASE}"
        (adder,) = dc_search(lab, BASE, "(sAMAccountName=pcad-add-mig)")
        for dn in (stack_dn, adder["dn"]):
            assert as_user_modify(lab, "Administrator", lab.admin_password, dn, OWNER_ATTRIBUTE, legacy)["ok"] is True
        refused = svc_b.handle(event(b, "setup", setup(b), "create"))
        assert refused["ok"] is False and "carries no deployment mark" in refused["error"], refused
        assert "pcluster-ad:directory.parentOu" in refused["error"]
        # The stack's own update: Pulumi's stored input (prev_input) is the earlier version's, without a deployment.
        body = {k: v for k, v in event(a, "setup", setup(a), "create").items() if k != "tf"}
        old = {k: v for k, v in body.items() if k != "deployment"}
        out = svc_a.ok("handle", event={**body, "tf": {"action": "update", "prev_input": old}})["result"]
        assert out["ou"] == "adopted"
        mark = owner_value(invocation_owner("directory-admin-setup", a["function"]), a["deployment"])
        for dn in (stack_dn, adder["dn"]):
            (hit,) = dc_search(lab, dn, "(objectClass=*)", [OWNER_ATTRIBUTE], scope="base")
            assert hit[OWNER_ATTRIBUTE] == [mark], dn
        assert binds(svc_a, lab, "pcad-add-mig", a["join_password"])
        refused = svc_b.handle(event(b, "setup", setup(b), "create"))
        assert refused["ok"] is False and f"belongs to another deployment ({a['deployment']}" in refused["error"]
        assert binds(svc_a, lab, "pcad-add-mig", a["join_password"])
    finally:
        svc_a.handle(event(a, "setup", setup(a), "delete"))
        for svc in (svc_a, svc_b):
            svc.close()
