"""The directory-admin function (lambda_src/directory_admin.py) against the lab's real Samba AD DC.

The DC is configured like Simple AD: simple binds over plain LDAP allowed
(``ldap server require strong auth = no``; Samba's default refuses them). The product's real
``handle()`` runs in the switch namespace (tests/adlab/dirsvc.py) with real ldap3; EC2/SSM/DynamoDB
on moto; ds:ResetUserPassword by a stand-in that sets the password on the DC. Every check of the
directory's state reads the DC's own database (SamDB on the DC), not the product's view.

The stack starts as the code before issue 16 left it (the old join account, its two ACEs, a node it
joined): the first setup is the upgrade. What the computer-adding account may do is probed AS that
account from the DC's samba client over LDAP with NTLMSSP and sealing (DC_AS), with the result codes.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import secrets
import select
import signal
import subprocess
import termios
import time
from datetime import UTC, datetime, timedelta

import pytest

from pcluster_ad.lambda_src.directory_admin import computer_name, computer_prefix

from .conftest import describe, running_lab
from .lab import HERE, REPO, SSH_OPTS, Lab, LabError, lab_python

pytestmark = pytest.mark.adlab

STACK = "adlab"
OU = f"pcluster-ad-{STACK}"
BASE = "DC=test,DC=domain"
STACK_DN = f"OU={OU},{BASE}"
COMPUTERS_DN = f"OU=Computers,{STACK_DN}"
PEOPLE_DN = f"OU=Users,{STACK_DN}"
JOIN_USER = f"pcad-add-{STACK}"  # the computer-adding account (issue 16)
OLD_JOIN_USER = f"pcad-join-{STACK}"  # what the code before issue 16 created (full control of every node)
ADMIN_PARAM = f"/pcluster-ad/{STACK}/admin-password"
JOIN_PARAM = f"/pcluster-ad/{STACK}/join-password"
TABLE = "adlab-join-windows"

# Run by the DC's python3: search the DC's own database; JSON in (stdin), JSON out.
DC_SEARCH = r"""
import json, sys
import ldb
from samba.auth import system_session
from samba.param import LoadParm
from samba.samdb import SamDB
q = json.load(sys.stdin)
lp = LoadParm(); lp.load_default()
db = SamDB(url=lp.samdb_url(), session_info=system_session(), lp=lp)
scope = {"base": ldb.SCOPE_BASE, "one": ldb.SCOPE_ONELEVEL, "sub": ldb.SCOPE_SUBTREE}[q.get("scope", "sub")]
try:
    res = db.search(q["base"], scope=scope, expression=q["filter"], attrs=q.get("attrs", ["dn"]))
except ldb.LdbError as e:
    if e.args[0] == ldb.ERR_NO_SUCH_OBJECT:
        res = []
    else:
        raise
print(json.dumps([{"dn": str(m.dn), **{a: [str(v) for v in m[a]] for a in q.get("attrs", []) if a in m}}
                  for m in res]))
"""
COMPUTER_CLASS = "bf967a86-0de6-11d0-a285-00aa003049e2"
COMPUTER_ADD = r"""
import sys
from samba.auth import system_session
from samba.param import LoadParm
from samba.samdb import SamDB
lp = LoadParm(); lp.load_default()
db = SamDB(url=lp.samdb_url(), session_info=system_session(), lp=lp)
name, parent = sys.argv[1], sys.argv[2]
db.add({"dn": "CN=%s,%s" % (name, parent), "objectClass": "computer", "sAMAccountName": name + "$",
        "userAccountControl": "4096"})
"""

COMPUTERS_ADD = r"""
import sys
from samba.auth import system_session
from samba.param import LoadParm
from samba.samdb import SamDB
lp = LoadParm(); lp.load_default()
db = SamDB(url=lp.samdb_url(), session_info=system_session(), lp=lp)
parent, names = sys.argv[1], sys.argv[2:]
for name in names:
    db.add({"dn": "CN=%s,%s" % (name, parent), "objectClass": "computer", "sAMAccountName": name + "$",
            "userAccountControl": "4096"})
"""

DC_SDDL = r"""
import json, sys
import ldb
from samba.auth import system_session
from samba.dcerpc import security
from samba.ndr import ndr_unpack
from samba.param import LoadParm
from samba.samdb import SamDB
lp = LoadParm(); lp.load_default()
db = SamDB(url=lp.samdb_url(), session_info=system_session(), lp=lp)
m = db.search(sys.argv[1], scope=ldb.SCOPE_BASE, attrs=["nTSecurityDescriptor"])[0]
sd = ndr_unpack(security.descriptor, m["nTSecurityDescriptor"][0])
u = db.search(db.domain_dn(), expression="(sAMAccountName=%s)" % ldb.binary_encode(sys.argv[2]), attrs=["objectSid"])
print(json.dumps({"sddl": sd.as_sddl(),
                  "sid": str(ndr_unpack(security.dom_sid, u[0]["objectSid"][0])) if len(u) else None}))
"""


# Run by the DC's python3: what the code before issue 16 left in a stack's OU (the upgrade starts from it):
# the OU layout, the old join account (its description, enabled, its password) and its two ACEs on
# OU=Computers, and a computer object that account created (a node of the running cluster).
OLD_LAYOUT = r"""
import json, sys
import ldb
from samba.auth import system_session
from samba.credentials import Credentials, DONT_USE_KERBEROS
from samba.dcerpc import security
from samba.ndr import ndr_unpack
from samba.param import LoadParm
from samba.samdb import SamDB
from samba.sd_utils import SDUtils
q = json.load(sys.stdin)
lp = LoadParm(); lp.load_default()
db = SamDB(url=lp.samdb_url(), session_info=system_session(), lp=lp)
for dn, what in ((q["stack"], "pcluster-ad stack"), (q["computers"], "cluster nodes")):
    if not db.search(q["base"], expression="(distinguishedName=%s)" % ldb.binary_encode(dn)):  # the lab may have it
        db.add({"dn": dn, "objectClass": "organizationalUnit", "description": what})
dn = "CN=%s,%s" % (q["user"], q["stack"])
db.add({"dn": dn, "objectClass": "user", "sAMAccountName": q["user"], "userAccountControl": "66048",
        "description": "pcluster-ad join account: creates/deletes computer objects in this OU's Computers",
        "unicodePwd": ('"%s"' % q["password"]).encode("utf-16-le")})
sid = str(ndr_unpack(security.dom_sid, db.search(dn, scope=ldb.SCOPE_BASE, attrs=["objectSid"])[0]["objectSid"][0]))
for ace in ("(OA;;CCDC;%s;;%s)" % (q["cls"], sid), "(OA;CIIO;RPWPCRCCDCLCLORCWOWDSDDTSW;;%s;%s)" % (q["cls"], sid)):
    SDUtils(db).dacl_add_ace(q["computers"], ace)
creds = Credentials(); creds.guess(lp); creds.set_username(q["user"]); creds.set_password(q["password"])
creds.set_kerberos_state(DONT_USE_KERBEROS)
as_old = SamDB(url="ldap://" + q["dc"], credentials=creds, lp=lp)
as_old.add({"dn": "CN=%s,%s" % (q["node"], q["computers"]), "objectClass": "computer",
            "sAMAccountName": q["node"] + "$", "userAccountControl": "4096"})
print(json.dumps({"sid": sid}))
"""

# Run by the DC's python3: LDAP operations AS some account over the network (NTLMSSP, sealed: Samba's
# client with `client ldap sasl wrapping = seal`), each with its LDAP result code. JSON in, JSON out.
DC_AS = r"""
import json, sys
import ldb
from samba.credentials import Credentials, DONT_USE_KERBEROS
from samba.dcerpc import security
from samba.ndr import ndr_pack
from samba.param import LoadParm
from samba.samdb import SamDB
q = json.load(sys.stdin)
lp = LoadParm(); lp.load_default()
lp.set("client ldap sasl wrapping", "seal")
creds = Credentials(); creds.guess(lp); creds.set_username(q["user"]); creds.set_password(q["password"])
creds.set_kerberos_state(DONT_USE_KERBEROS)
try:
    db = SamDB(url="ldap://" + q["dc"], credentials=creds, lp=lp)
except ldb.LdbError as e:
    print(json.dumps([{"op": "bind", "dn": "", "code": e.args[0], "result": "bind refused",
                       "message": e.args[1][:200]}]))
    sys.exit(0)
NAMES = {0: "success", 8: "strongerAuthRequired", 19: "constraintViolation", 32: "noSuchObject",
         50: "insufficientAccessRights", 53: "unwillingToPerform", 65: "objectClassViolation",
         68: "entryAlreadyExists", 69: "objectClassModsProhibited"}
def pw(p):
    return ('"%s"' % p).encode("utf-16-le")
def sd(sddl):
    return ndr_pack(security.descriptor.from_sddl(sddl, security.dom_sid(db.get_domain_sid())))
out = []
for o in q["ops"]:
    try:
        if o["op"] == "add":
            m = {"dn": o["dn"], **o.get("attrs", {})}
            if "password" in o:
                m["unicodePwd"] = pw(o["password"])
            if "sddl" in o:
                m["nTSecurityDescriptor"] = sd(o["sddl"])
            db.add(m)
        elif o["op"] == "delete":
            db.delete(o["dn"])
        elif o["op"] in ("modify", "set_password", "add_member", "write_dacl"):
            m = ldb.Message(); m.dn = ldb.Dn(db, o["dn"])
            attr, flag, value, controls = {
                "modify": (o.get("attr"), ldb.FLAG_MOD_REPLACE, o.get("value"), []),
                "set_password": ("unicodePwd", ldb.FLAG_MOD_REPLACE, pw(o.get("password", "")), []),
                "add_member": ("member", ldb.FLAG_MOD_ADD, o.get("member"), []),
                "write_dacl": ("nTSecurityDescriptor", ldb.FLAG_MOD_REPLACE, sd(o.get("sddl", "D:")),
                               ["sd_flags:1:4"]),
            }[o["op"]]
            m[attr] = ldb.MessageElement(value, flag, attr)
            db.modify(m, controls=controls)
        else:
            raise ValueError(o["op"])
        code, msg = 0, ""
    except ldb.LdbError as e:
        code, msg = e.args[0], e.args[1]
    out.append({"op": o["op"], "dn": o["dn"], "code": code, "result": NAMES.get(code, str(code)),
                "message": msg[:200]})
print(json.dumps(out))
"""


def dc_old_layout(lab: Lab, password: str, node: str) -> str:
    res = lab.dc.run(["/usr/bin/python3", "-c", OLD_LAYOUT], input=json.dumps({
        "base": BASE, "stack": STACK_DN, "computers": COMPUTERS_DN, "user": OLD_JOIN_USER,
        "password": password, "cls": COMPUTER_CLASS, "dc": lab.dc_ip, "node": node}), timeout=120)
    return json.loads(res.stdout.strip().splitlines()[-1])["sid"]


def dc_as(lab: Lab, user: str, password: str, ops: list[dict]) -> list[dict]:
    """LDAP operations as `user` (sealed NTLM from the DC's samba client), with their result codes."""
    res = lab.dc.run(["/usr/bin/python3", "-c", DC_AS], input=json.dumps(
        {"dc": lab.dc_ip, "user": user, "password": password, "ops": ops}), timeout=120)
    return json.loads(res.stdout.strip().splitlines()[-1])


def dc_sddl(lab: Lab, dn: str, account: str) -> dict:
    return json.loads(lab.dc.run(["/usr/bin/python3", "-c", DC_SDDL, dn, account]).stdout)


def dc_search(lab: Lab, base: str, flt: str = "(objectClass=*)", attrs=(), scope: str = "sub") -> list[dict]:
    res = lab.dc.run(["/usr/bin/python3", "-c", DC_SEARCH], input=json.dumps(
        {"base": base, "filter": flt, "attrs": list(attrs), "scope": scope}), timeout=60)
    return json.loads(res.stdout)


def dc_add_computer(lab: Lab, name: str, parent: str) -> None:
    lab.dc.run(["/usr/bin/python3", "-c", COMPUTER_ADD, name, parent], timeout=60)


def computers(lab: Lab, base: str) -> set[str]:
    return {h["sAMAccountName"][0].rstrip("$") for h in dc_search(lab, base, "(objectClass=computer)",
                                                                   ["sAMAccountName"])}


def allow_simple_binds(lab: Lab) -> None:
    """Simple AD's setting: simple binds over plain LDAP inside the VPC. Samba reads it at start, so
    the lab's samba is restarted (only the processes the lab started, by their ids)."""
    lab.dc.sh("sed -i 's/^\\[global\\]$/[global]\\n\\tldap server require strong auth = no/' /etc/samba/smb.conf "
              "&& grep -q 'require strong auth = no' /etc/samba/smb.conf")
    old = [p for p in lab.procs if "/usr/sbin/samba" in p.args and p.poll() is None]
    for p in old:
        os.killpg(p.pid, signal.SIGTERM)
    for p in old:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=10)
    # samba's children leave with their parent; wait until LDAP is closed before starting again.
    deadline = time.monotonic() + 30
    while lab.dc.sh(f"timeout 1 bash -c '</dev/tcp/{lab.dc_ip}/389'", check=False).returncode == 0:
        if time.monotonic() > deadline:
            raise LabError("samba did not stop")
        time.sleep(0.2)
    log = open(lab.dc.root / "samba2.log", "wb")
    lab.dc.popen(["/usr/sbin/samba", "--foreground", "--no-process-group", "--debug-stdout"],
                 stdout=log, stderr=subprocess.STDOUT)
    log.close()
    lab.wait_dc_ready()


class DirSvc:
    """tests/adlab/dirsvc.py in the lab's switch namespace."""

    def __init__(self, lab: Lab):
        self.log = open(lab.root / "dirsvc.log", "wb")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", lab.sw_ns, lab_python(), str(HERE / "dirsvc.py")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, cwd=str(REPO), text=True,
            start_new_session=True)
        lab.procs.append(self.proc)
        self.lab = lab
        assert self._read(120).get("ok"), "dirsvc did not start"

    def _read(self, timeout: float) -> dict:
        r, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if r else ""
        if not line:
            err = (self.lab.root / "dirsvc.log").read_text(errors="replace")[-3000:]
            raise LabError(f"dirsvc did not answer: {err}")
        return json.loads(line)

    def call(self, op: str, **kw) -> dict:
        self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
        self.proc.stdin.flush()
        return self._read(300)

    def ok(self, op: str, **kw) -> dict:
        out = self.call(op, **kw)
        assert out.get("ok"), f"{op}: {out.get('error')}\n{out.get('trace', '')}"
        return out

    def handle(self, event: dict, now: datetime | None = None) -> dict:
        return self.call("handle", event=event, now=now.isoformat() if now else None)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)
        self.log.close()


class Env:
    def __init__(self, lab: Lab, svc: DirSvc, join_password: str, prefix: str):
        self.lab, self.svc, self.join_password, self.prefix = lab, svc, join_password, prefix
        self.initial: dict[str, str] = {}
        self.setup: dict = {}
        self.old_password = ""
        self.old_sid = ""


def user_event(name: str, action: str = "create", prev: dict | None = None, **kw) -> dict:
    ev = {"resource": "user", "name": name, "groups": [], **kw}  # the parameter's name: derived by the function
    ev["tf"] = {"action": action, "prev_input": prev or {}}
    return ev


@pytest.fixture(scope="module")
def lab():
    """The lab of tests/adlab/conftest.py, with two differences: the DC allows simple binds (as Simple AD
    does), and the lab's join-function stand-in starts only once the stack's join account exists (env)."""
    with running_lab(services=False, after_start=allow_simple_binds, client=False) as lab:
        yield lab


@pytest.fixture(scope="module")
def env(lab: Lab):
    svc = DirSvc(lab)
    join_password = "Jn-" + secrets.token_urlsafe(16) + "9!"
    lab.watch.add("directory join password", join_password.encode())
    prefix = computer_prefix(lab.cfg.cluster_name)
    initial = {u: "In1t-" + secrets.token_urlsafe(10) + "!" for u in ("carol", "dave", "erin")}
    params = {ADMIN_PARAM: lab.admin_password, JOIN_PARAM: join_password}
    params.update({f"/pcluster-ad/{STACK}/users/{u}/initial-password": p for u, p in initial.items()})
    # erin -> Erin (test_case_only_rename_keeps_the_account): the stack writes the parameter under the new spelling.
    params[f"/pcluster-ad/{STACK}/users/Erin/initial-password"] = initial["erin"]
    # KMS_KEY_ARN: dirsvc fills in the key its parameters are under (the stack key of a deployed stack).
    svc.ok("config", settings={
        "DIRECTORY_ID": "d-1234567890", "DOMAIN": lab.cfg.domain, "DNS_IPS": lab.dc_ip, "OU_NAME": OU,
        "ADMIN_USER": "Administrator", "ADMIN_PASSWORD_PARAMETER": ADMIN_PARAM, "STACK": STACK,
        "CLUSTER_NAME": lab.cfg.cluster_name, "COMPUTER_PREFIX": prefix, "JOIN_USER": JOIN_USER,
        "JOIN_PASSWORD_PARAMETER": JOIN_PARAM, "WINDOW_TABLE": TABLE, "SWEEP_GRACE_MINUTES": "60",
    }, parameters=params, table=TABLE, dc_argv=lab.dc.argv([]))
    e = Env(lab, svc, join_password, prefix)
    e.initial = initial
    # The stack as the code before issue 16 left it: the old join account with its two ACEs, and a node
    # of the running cluster that it joined.
    e.old_password = "Old-" + secrets.token_urlsafe(12) + "7!"
    e.old_sid = dc_old_layout(lab, e.old_password, OLD_NODE)
    # The first `pulumi up` with this code: the setup Invocation's update (its previous input still
    # names the old account: ignored), then the join function uses the computer-adding account.
    e.setup = svc.ok("handle", event=directory_event("update", prev=OLD_SETUP_INPUT))["result"]
    lab.add_user, lab.add_password = JOIN_USER, join_password  # what the join function adds computers with
    lab.start_services()
    if lab.services_info.get("handler_error"):
        pytest.fail(f"the join handler cannot be loaded:\n{lab.services_info['handler_error']}", pytrace=False)
    lab.add_client()
    yield e
    svc.close()


OLD_NODE = "OLDNODE01"  # a node of the running cluster, joined by the old account
OLD_SETUP_INPUT = {"resource": "directory", "ou": OU, "joinUser": OLD_JOIN_USER, "joinPasswordParameter": JOIN_PARAM,
                   "joinPasswordVersion": 1}


def directory_event(action: str = "create", prev: dict | None = None) -> dict:
    """The setup Invocation's input (components/directory_admin.py): no names, only versions."""
    return {"resource": "directory", "ou": OU, "setupVersion": 2, "joinPasswordVersion": 2,
            "tf": {"action": action, "prev_input": prev or {}}}


def ldap_as(env: Env, user: str, password: str, ops: list[dict]) -> list[dict]:
    out = env.svc.ok("ldap", server=env.lab.dc_ip, user=f"{user}@{env.lab.cfg.domain}", password=password, ops=ops)
    return out["results"]


def mine(sddl: str, sid: str) -> list[str]:
    return sorted(a for a in re.findall(r"\(([^()]*)\)", sddl) if a.endswith(f";{sid}"))


def test_upgrade_replaces_the_old_join_account(env: Env):
    """The first `up` of this code on a stack of the old design: the old account (its password was on
    every node) and its ACEs are gone, the computer-adding account has exactly ONE ACE."""
    lab, out = env.lab, env.setup
    assert out["created"] == [PEOPLE_DN]  # the OUs that were there stay; a missing one is made
    acct = out["addingAccount"]
    assert acct["account"] == {"dn": f"CN={JOIN_USER},{STACK_DN}", "created": True} and acct["granted"]
    assert acct["removedAccounts"] == [f"CN={OLD_JOIN_USER},{STACK_DN}"] and acct["removedAces"] == 2
    assert not dc_search(lab, BASE, f"(sAMAccountName={OLD_JOIN_USER})")
    new = dc_search(lab, STACK_DN, f"(sAMAccountName={JOIN_USER})", ["userAccountControl", "memberOf", "description"])
    assert [a["dn"] for a in new] == [f"CN={JOIN_USER},{STACK_DN}"]
    assert int(new[0]["userAccountControl"][0]) & 0x2 == 0, "the account must be enabled"
    assert "memberOf" not in new[0], "in no group but Domain Users (primary group)"
    # On OU=Computers (read back from the DC as SDDL): the new account's one ACE, nothing of the old SID.
    got = dc_sddl(lab, COMPUTERS_DN, JOIN_USER)
    sid = got["sid"]
    assert mine(got["sddl"], sid) == [f"OA;;CC;{COMPUTER_CLASS};;{sid}"], got["sddl"]
    assert env.old_sid not in got["sddl"], got["sddl"]
    # Nothing for it anywhere else: the stack OU and the domain root carry no ACE for the account.
    for dn in (STACK_DN, BASE):
        assert sid not in dc_sddl(lab, dn, JOIN_USER)["sddl"], dn
    # The running cluster's node keeps its computer object (its machine password is its own).
    assert OLD_NODE in computers(lab, COMPUTERS_DN)
    # The old password opens nothing any more.
    (bind,) = dc_as(lab, OLD_JOIN_USER, env.old_password, []) or [{"op": "bind", "code": 0}]
    assert bind["op"] == "bind" and bind["code"] != 0, bind
    # Idempotent: a second run changes nothing and grants nothing twice.
    again = env.svc.ok("handle", event=directory_event("update"))["result"]
    assert again["created"] == [] and again["addingAccount"] == {
        "account": {"dn": f"CN={JOIN_USER},{STACK_DN}", "created": False}, "granted": False, "removedAces": 0,
        "removedAccounts": []}
    assert mine(dc_sddl(lab, COMPUTERS_DN, JOIN_USER)["sddl"], sid) == [f"OA;;CC;{COMPUTER_CLASS};;{sid}"]


PROBE_PW = "Pr0be-" + secrets.token_hex(8) + "!"
# What the join function is to do (its engineer builds the real descriptor): owner Domain Admins, and a
# DACL without the class default's CREATOR OWNER entries, so the creating account keeps nothing.
NO_CREATOR_SD = "O:DAG:DAD:(A;;GA;;;DA)(A;;GA;;;SY)(A;;GR;;;AU)"


def computer(name: str, parent: str, **extra) -> dict:
    return {"op": "add", "dn": f"CN={name},{parent}", "attrs": {
        "objectClass": "computer", "sAMAccountName": name + "$", "userAccountControl": "4096"}, **extra}


def test_adding_account_rights(env: Env):
    """What the computer-adding account can and cannot do, as itself over sealed NTLM LDAP, with the
    LDAP result codes (50 = insufficientAccessRights)."""
    lab = env.lab
    dc_add_computer(lab, "OUTSIDE1", f"CN=Computers,{BASE}")
    me = f"CN={JOIN_USER},{STACK_DN}"
    ops = [
        computer("PROBE1", COMPUTERS_DN, password=PROBE_PW),                        # 0 class default SD
        computer("PROBE2", COMPUTERS_DN, password=PROBE_PW, sddl=NO_CREATOR_SD),    # 1 explicit SD
        {"op": "modify", "dn": f"CN=PROBE2,{COMPUTERS_DN}", "attr": "description", "value": "x"},
        {"op": "set_password", "dn": f"CN=PROBE2,{COMPUTERS_DN}", "password": "An0ther-pw-1!"},
        {"op": "write_dacl", "dn": f"CN=PROBE2,{COMPUTERS_DN}", "sddl": f"D:(A;;GA;;;{env.old_sid})"},
        {"op": "delete", "dn": f"CN=PROBE2,{COMPUTERS_DN}"},                        # 5
        {"op": "modify", "dn": f"CN={OLD_NODE},{COMPUTERS_DN}", "attr": "description", "value": "x"},
        {"op": "set_password", "dn": f"CN={OLD_NODE},{COMPUTERS_DN}", "password": "An0ther-pw-1!"},
        {"op": "delete", "dn": f"CN={OLD_NODE},{COMPUTERS_DN}"},
        {"op": "add", "dn": f"CN=mallory,{COMPUTERS_DN}", "attrs": {"objectClass": "user",
                                                                    "sAMAccountName": "mallory"}},
        {"op": "add", "dn": f"CN=mallory,{PEOPLE_DN}", "attrs": {"objectClass": "user", "sAMAccountName": "mallory"}},
        {"op": "add", "dn": f"CN=mallory,CN=Users,{BASE}", "attrs": {"objectClass": "user",
                                                                     "sAMAccountName": "mallory"}},
        {"op": "add_member", "dn": f"CN=Domain Admins,CN=Users,{BASE}", "member": me},   # 12
        {"op": "add_member", "dn": f"CN=hpc-users,CN=Users,{BASE}", "member": me},
        computer("PROBE3", STACK_DN),
        computer("PROBE4", PEOPLE_DN),
        {"op": "add", "dn": f"OU=sub,{COMPUTERS_DN}", "attrs": {"objectClass": "organizationalUnit"}},
        {"op": "write_dacl", "dn": COMPUTERS_DN, "sddl": f"D:(A;;GA;;;{env.old_sid})"},
        {"op": "delete", "dn": f"CN=OUTSIDE1,CN=Computers,{BASE}"},                # 18
        # Documented facts, not the product: what the creator keeps with the class default descriptor
        # (the join function must not use it), and with an explicit DACL that leaves it the owner.
        {"op": "modify", "dn": f"CN=PROBE1,{COMPUTERS_DN}", "attr": "description", "value": "x"},  # 19
        {"op": "set_password", "dn": f"CN=PROBE1,{COMPUTERS_DN}", "password": "An0ther-pw-1!"},
        {"op": "delete", "dn": f"CN=PROBE1,{COMPUTERS_DN}"},
        computer("PROBE5", COMPUTERS_DN, password=PROBE_PW, sddl="D:(A;;GA;;;DA)(A;;GA;;;SY)"),  # 22 owner: me
        {"op": "write_dacl", "dn": f"CN=PROBE5,{COMPUTERS_DN}", "sddl": "D:(A;;GA;;;DA)(A;;GA;;;SY)(A;;GA;;;AU)"},
        computer("PROBE6", f"CN=Computers,{BASE}", password=PROBE_PW),            # 24 the domain's quota
    ]
    results = dc_as(lab, JOIN_USER, env.join_password, ops)
    codes = [r["code"] for r in results]
    # It adds computer objects in OU=Computers with their password set at creation (0, 1), with the class
    # default descriptor or with an explicit one (owner Domain Admins: Samba 4.17 accepts that owner from
    # a non-admin creator; Windows DCs may not, see notes/judges.md).
    assert codes[:2] == [0, 0], results
    # Nothing else: 50 = insufficientAccessRights for every one of these.
    assert codes[2:19] == [50] * 17, results
    # Documented facts (the join function's descriptor decides them, not this account's ACE): with the class
    # default descriptor the creator keeps modify, password reset and delete on what it created (CREATOR
    # OWNER entries); with an explicit DACL but itself as owner it can rewrite that DACL (owner's implicit
    # WRITE_DAC). Samba 4.17 refuses an LDAP add to the domain's CN=Computers (ms-DS-MachineAccountQuota is
    # not applied to LDAP adds there; Windows DCs apply it: the directory's own setting).
    assert codes[19:] == [0, 0, 0, 0, 0, 50], results
    # The password was set at creation: the computer account binds with it.
    assert dc_as(lab, "PROBE2$", PROBE_PW, []) == []
    assert not dc_search(lab, BASE, "(sAMAccountName=mallory)")
    admins = dc_search(lab, f"CN=Domain Admins,CN=Users,{BASE}", attrs=["member"], scope="base")[0]
    assert not any(JOIN_USER in m for m in admins.get("member", []))
    assert "OUTSIDE1" in computers(lab, f"CN=Computers,{BASE}") and OLD_NODE in computers(lab, COMPUTERS_DN)
    assert computers(lab, COMPUTERS_DN) >= {"PROBE2", "PROBE5"} and "PROBE1" not in computers(lab, COMPUTERS_DN)
    for name in ("PROBE2", "PROBE5", OLD_NODE):  # not this cluster's pattern: leave the sweep test its OU
        lab.dc.run(["samba-tool", "computer", "delete", name, "-H", "/var/lib/samba/private/sam.ldb"], timeout=60)


@pytest.fixture(scope="module")
def joined(env: Env):
    """Two lab nodes in the cluster OU under their instance-id names, as the new design joins them: the
    computer-adding account pre-creates each computer object with a one-time password (what the join
    function does), the node joins with that password as the computer itself (adcli, password on stdin)."""
    lab = env.lab
    nodes = lab.add_nodes([{}, {}])
    ids = env.svc.ok("instances", count=2)["ids"]
    names = [env.svc.ok("name", instance_id=i)["name"] for i in ids]
    for node, name in zip(nodes, names, strict=True):
        otp = "Otp-" + secrets.token_hex(10) + "!"
        (added,) = dc_as(lab, JOIN_USER, env.join_password, [computer(name, COMPUTERS_DN, password=otp)])
        assert added["code"] == 0, added
        res = node.run(["adcli", "join", "--verbose", f"--domain={lab.cfg.domain}", f"--domain-ou={COMPUTERS_DN}",
                        f"--computer-name={name}", "--login-type=computer", "--stdin-password"],
                       input=otp, check=False, timeout=180)
        assert res.returncode == 0, f"adcli join of the pre-created {name} failed:\n{res.stdout}{res.stderr}"
    return nodes, ids, names


def test_adding_account_node_joins_into_ou(env: Env, joined):
    nodes, ids, names = joined
    assert all(len(n) == 15 and n.startswith(env.prefix) for n in names)
    assert computers(env.lab, COMPUTERS_DN) >= set(names)
    # The node's machine account works: it can get a Kerberos ticket with its keytab.
    res = nodes[0].run(["klist", "-k"], check=False)
    assert f"{names[0]}$@TEST.DOMAIN" in res.stdout


def termination(iid: str) -> dict:
    return {"source": "aws.ec2", "detail-type": "EC2 Instance State-change Notification",
            "detail": {"instance-id": iid, "state": "terminated"}}


def test_termination_removes_exactly_that_node(env: Env, joined):
    lab, svc = env.lab, env.svc
    _nodes, ids, names = joined
    outside_same_name = names[0]
    before_outside = computers(lab, f"CN=Computers,{BASE}")
    # The node recorded its name when it closed its join window.
    svc.ok("put_item", item={"instanceId": {"S": ids[0]}, "computerName": {"S": names[0]}, "closedAt": {"S": "x"}})
    svc.ok("terminate", ids=[ids[0]])
    out = svc.ok("handle", event=termination(ids[0]))["result"]
    assert out == {"instance": ids[0], "computer": names[0], "result": "deleted"}
    left = computers(lab, COMPUTERS_DN)
    assert names[0] not in left and names[1] in left
    assert computers(lab, f"CN=Computers,{BASE}") == before_outside
    # Idempotent: the same event again (EventBridge delivers at least once): the record is the node's tombstone
    # (its credentials outlive it), the object is already gone, nothing else is touched.
    again = svc.ok("handle", event=termination(ids[0]))["result"]
    assert again == {"instance": ids[0], "computer": names[0], "result": "absent"}, again
    assert computers(lab, COMPUTERS_DN) == left
    # Unknown instance and another cluster's node: ignored, nothing deleted.
    assert svc.ok("handle", event=termination("i-0123456789abcdef0"))["result"]["result"] == "ignored"
    (other,) = svc.ok("instances", count=1, cluster="another-cluster")["ids"]
    svc.ok("terminate", ids=[other])
    # Decided from the join records (issue 20: no EC2 call per termination): no record, not ours.
    assert svc.ok("handle", event=termination(other))["result"]["reason"].startswith("no join record")
    assert computers(lab, COMPUTERS_DN) == left
    assert outside_same_name  # (kept for the message)


def test_termination_only_inside_the_ou(env: Env):
    """A computer named like a terminated node but outside the cluster OU is never deleted."""
    lab, svc = env.lab, env.svc
    (iid,) = svc.ok("instances", count=1)["ids"]
    name = svc.ok("name", instance_id=iid)["name"]
    dc_add_computer(lab, name, f"CN=Computers,{BASE}")
    svc.ok("put_item", item={"instanceId": {"S": iid}, "computerName": {"S": name}, "issuedAt": {"S": "x"}})
    svc.ok("terminate", ids=[iid])
    assert svc.ok("handle", event=termination(iid))["result"]["result"] == "outside"
    assert name in computers(lab, f"CN=Computers,{BASE}")


def test_sweep_removes_orphans_in_the_ou_only(env: Env, joined):
    lab, svc = env.lab, env.svc
    _nodes, ids, names = joined
    (gone1, gone2) = svc.ok("instances", count=2)["ids"]
    orphans = [svc.ok("name", instance_id=i)["name"] for i in (gone1, gone2)]
    svc.ok("terminate", ids=[gone1])  # terminated (still describable); gone2 stays running -> live
    orphan_never = env.prefix + "0" * (15 - len(env.prefix))  # no instance ever had it
    for n in (orphans[0], orphans[1], orphan_never):
        dc_add_computer(lab, n, COMPUTERS_DN)
    dc_add_computer(lab, "HANDMADE01", COMPUTERS_DN)  # not this cluster's pattern
    outside_orphan = env.prefix + "1" * (15 - len(env.prefix))
    dc_add_computer(lab, outside_orphan, f"CN=Computers,{BASE}")
    outside_before = computers(lab, f"CN=Computers,{BASE}")

    # Within the grace period (objects just created): nothing goes.
    now = datetime.now(UTC)
    fresh = svc.ok("handle", event={"op": "sweep"}, now=now.isoformat())["result"]
    assert fresh["deleted"] == []
    # Two hours later: exactly the orphans of this cluster's pattern in the OU go.
    later = svc.ok("handle", event={"op": "sweep"}, now=(now + timedelta(hours=2)).isoformat())["result"]
    assert sorted(later["deleted"]) == sorted([orphans[0], orphan_never])
    assert later["foreign"] == ["HANDMADE01"]
    left = computers(lab, COMPUTERS_DN)
    assert left == {names[1], orphans[1], "HANDMADE01"}
    assert computers(lab, f"CN=Computers,{BASE}") == outside_before


def test_a_backlog_of_missed_terminations_goes_in_one_sweep_run(env: Env):
    """300 orphans of this cluster's pattern (a directory outage outlasted the termination retries): one sweep run,
    below its bound (SWEEP_MAX_DELETES), deletes them all on the real DC. Prints the time per delete, the figure
    behind the bound (a run must stay far inside the function's 120 s timeout)."""
    lab, svc = env.lab, env.svc
    width = 15 - len(env.prefix)
    names = [f"{env.prefix}{'E' * (width - 4)}{n:04X}" for n in range(300)]
    lab.dc.run(["/usr/bin/python3", "-c", COMPUTERS_ADD, COMPUTERS_DN, *names], timeout=300)
    assert set(names) <= computers(lab, COMPUTERS_DN)
    started = time.monotonic()
    out = svc.ok("handle", event={"op": "sweep"}, now=(datetime.now(UTC) + timedelta(hours=2)).isoformat())["result"]
    took = time.monotonic() - started
    assert set(names) <= set(out["deleted"]) and out["left"] == 0, out
    assert not set(names) & computers(lab, COMPUTERS_DN)
    print(f"\nsweep: {len(out['deleted'])} computer objects deleted in one run, {took:.2f} s"
          f" ({took / len(out['deleted']) * 1000:.1f} ms each, bind and search included)")


def test_groups_and_users(env: Env):
    lab, svc = env.lab, env.svc
    for g in ("hpc", "gpu"):
        out = svc.ok("handle", event={"resource": "group", "name": g, "description": f"{g} users",
                                      "tf": {"action": "create", "prev_input": {}}})["result"]
        assert out["result"] == "created"
    out = svc.ok("handle", event=user_event("carol", groups=["hpc", "gpu"], displayName="Carol C",
                                            email="carol@example.com"))["result"]
    assert out["created"] is True
    carol = dc_search(lab, PEOPLE_DN, "(sAMAccountName=carol)", ["userAccountControl", "pwdLastSet", "memberOf",
                                                                  "displayName", "mail"])
    assert len(carol) == 1
    c = carol[0]
    assert int(c["userAccountControl"][0]) & 0x2 == 0 and c["pwdLastSet"] == ["0"], c  # enabled, must change
    assert sorted(c["memberOf"]) == sorted([f"CN=hpc,{PEOPLE_DN}", f"CN=gpu,{PEOPLE_DN}"])
    assert c["displayName"] == ["Carol C"] and c["mail"] == ["carol@example.com"]
    assert "carol" in svc.ok("resets")["users"]

    # A group's description follows the config, also when it is removed.
    for description, expected in (("GPU people", ["GPU people"]), ("", None)):
        out = svc.ok("handle", event={"resource": "group", "name": "gpu", "description": description,
                                      "tf": {"action": "update", "prev_input": {"name": "gpu"}}})["result"]
        assert out["result"] == "updated"
        got = dc_search(lab, PEOPLE_DN, "(sAMAccountName=gpu)", ["description"])[0]
        assert got.get("description") == expected, got
    # Groups change: membership follows; attributes update.
    prev = user_event("carol", groups=["hpc", "gpu"])
    out = svc.ok("handle", event=user_event("carol", "update", prev, groups=["gpu"], displayName="Carol D"))["result"]
    assert out["created"] is False and out["removed"] == [f"CN=hpc,{PEOPLE_DN}"] and out["added"] == []
    c = dc_search(lab, PEOPLE_DN, "(sAMAccountName=carol)", ["memberOf", "displayName", "mail"])[0]
    assert c["memberOf"] == [f"CN=gpu,{PEOPLE_DN}"] and c["displayName"] == ["Carol D"] and "mail" not in c
    # An undeclared group is refused.
    bad = svc.call("handle", event=user_event("carol", "update", prev, groups=["nope"]))
    assert not bad["ok"] and "not one of the stack's groups" in bad["error"]

    # Removal deletes the user.
    out = svc.ok("handle", event=user_event("carol", "delete"))["result"]
    assert out["result"] == "deleted"
    assert not dc_search(lab, BASE, "(sAMAccountName=carol)")


def ssh_pty(lab: Lab, node, user: str, answers: list[tuple[str, str]], command: str,
            timeout: float = 120) -> tuple[int | None, str]:
    """ssh -tt from the client under a real pseudo-terminal (PAM's password change talks to the
    terminal); answers: (regex on the output so far, reply), each used once, in order of appearance."""
    master, slave = pty.openpty()

    def own_tty() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(lab.client.argv(["ssh", "-tt", *SSH_OPTS, f"{user}@{node.ip}", command]),
                            stdin=slave, stdout=slave, stderr=slave, preexec_fn=own_tty)
    os.close(slave)
    out, pending, seen = b"", list(answers), 0
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            r, _, _ = select.select([master], [], [], 0.5)
            if r:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: the other side closed
                    break
                if not chunk:
                    break
                out += chunk
                text = out[seen:].decode(errors="replace")
                for i, (pattern, reply) in enumerate(pending):
                    m = re.search(pattern, text, re.I)
                    if m:
                        seen += len(text[:m.end()].encode())
                        os.write(master, reply.encode() + b"\n")
                        pending.pop(i)
                        break
            elif proc.poll() is not None:
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        rc = proc.wait(timeout=30)
        os.close(master)
    return rc, out.decode(errors="replace")


def ssh_pass(lab: Lab, node, user: str, password: str, command: str = "true") -> subprocess.CompletedProcess:
    return lab.client.run(["sshpass", "-e", "ssh", *SSH_OPTS, f"{user}@{node.ip}", command],
                          env={"SSHPASS": password}, check=False, timeout=120)


@pytest.fixture(scope="module")
def product_node(env: Env):
    """A node joined by the product's own join-domain.sh (join function stand-in, which adds the computer
    object with the stack's computer-adding account) into the cluster OU, with the cluster's computer-name
    prefix, as cluster_config passes them."""
    lab = env.lab
    (node,) = lab.add_nodes([{}])
    res = node.start_bootstrap(args=[
        "--function-url", lab.function_url, "--region", lab.cfg.region, "--timeout", "240",
        "--computer-ou", COMPUTERS_DN, "--computer-prefix", env.prefix]).wait()
    assert res.rc == 0, describe(res)
    return node, res


def test_product_join_script_joins_into_the_ou_under_the_instance_name(env: Env, product_node):
    lab = env.lab
    node, res = product_node
    name = computer_name(env.prefix, node.instance_id)
    assert name in computers(lab, COMPUTERS_DN)
    assert name not in computers(lab, f"CN=Computers,{BASE}")
    assert res.rc == 0  # joined through the join function, which added the object with this stack's account
    # The node recorded the name when it closed its join window (what the termination handler reads).
    assert lab.svc_call("window", instance_id=node.instance_id)["window"]["computerName"] == name


def test_declared_user_changes_the_initial_password_at_first_login(env: Env, product_node):
    """A user declared in the stack logs in over SSH with the initial password, is made to change it
    (sssd + PAM), and then logs in with the new one; the initial one no longer works."""
    lab, svc = env.lab, env.svc
    node, _res = product_node
    # Harness, not product: this machine's PAM stack has pam_pwquality but no cracklib dictionary
    # (an image detail); without this it refuses every new password with "error loading dictionary".
    node.sh("mkdir -p /etc/security/pwquality.conf.d && "
            "echo 'dictcheck = 0' >/etc/security/pwquality.conf.d/adlab.conf")
    assert node.run_action("enable-ssh-password-auth.sh").rc == 0
    svc.ok("handle", event={"resource": "group", "name": "hpc", "tf": {"action": "create"}})
    svc.ok("handle", event=user_event("dave", groups=["hpc"]))
    initial = env.initial["dave"]
    new = "N3w-" + secrets.token_urlsafe(10) + "!"
    lab.watch.add("dave's new password", new.encode())
    rc, out = ssh_pty(lab, node, "dave", [
        (r"password:", initial),  # ssh's own prompt
        (r"current password:|\(current\)", initial),
        (r"(retype|reenter|re-enter|again).*password:", new),
        (r"new password:", new),
    ], "echo LOGGED-IN-$(id -un); exit")
    # OpenSSH changes an expired password and then closes the session ("login again").
    assert re.search(r"password has expired", out, re.I) and "password updated successfully" in out, \
        f"rc={rc}\n{out[-3000:]}"
    dave = dc_search(lab, PEOPLE_DN, "(sAMAccountName=dave)", ["pwdLastSet"])[0]
    assert dave["pwdLastSet"] != ["0"]
    assert ssh_pass(lab, node, "dave", new, "id -un").stdout.strip() == "dave"
    assert ssh_pass(lab, node, "dave", initial).returncode != 0
    # Removing the user from the config deletes it; its home directory stays on the node.
    assert svc.ok("handle", event=user_event("dave", "delete"))["result"]["result"] == "deleted"
    assert not dc_search(lab, BASE, "(sAMAccountName=dave)")
    assert node.run(["test", "-d", "/home/dave"], check=False).returncode == 0
    assert ssh_pass(lab, node, "dave", new).returncode != 0


def test_case_only_rename_keeps_the_account(env: Env, product_node):
    """pcluster-ad:users erin -> Erin (and its group sci -> SCI): the Invocations' updates rename the objects in
    place on the real DC: the same objectSid (so the same UID under sssd's ID mapping, and her home stays hers),
    the new spelling in sAMAccountName, userPrincipalName and the CN, her membership kept (issue 17, finding 7)."""
    lab, svc = env.lab, env.svc
    node, _res = product_node
    sci = {"resource": "group", "name": "sci", "description": "science"}
    svc.ok("handle", event={**sci, "tf": {"action": "create"}})
    erin = user_event("erin", groups=["sci"], displayName="Erin E")
    assert svc.ok("handle", event=erin)["result"]["created"] is True
    sid = dc_sddl(lab, PEOPLE_DN, "erin")["sid"]
    group_sid = dc_sddl(lab, PEOPLE_DN, "sci")["sid"]
    uid = node.run(["id", "-u", "erin"]).stdout.strip()
    assert sid and group_sid and uid.isdigit()

    out = svc.ok("handle", event={**sci, "name": "SCI", "tf": {"action": "update", "prev_input": sci}})["result"]
    assert out["result"] == "renamed"
    new = user_event("Erin", "update", prev={k: v for k, v in erin.items() if k != "tf"}, groups=["SCI"],
                     displayName="Erin E")
    out = svc.ok("handle", event=new)["result"]
    assert out["created"] is False and out["renamed"] is True and out["added"] == out["removed"] == []

    (got,) = dc_search(lab, BASE, "(sAMAccountName=erin)", ["sAMAccountName", "userPrincipalName", "memberOf"])
    assert got["dn"] == f"CN=Erin,{PEOPLE_DN}" and got["sAMAccountName"] == ["Erin"]
    assert got["userPrincipalName"] == [f"Erin@{lab.cfg.domain}"] and got["memberOf"] == [f"CN=SCI,{PEOPLE_DN}"]
    assert dc_sddl(lab, PEOPLE_DN, "Erin")["sid"] == sid, "a new SID: the account was deleted and re-created"
    (g,) = dc_search(lab, BASE, "(sAMAccountName=sci)", ["sAMAccountName"])
    assert g["sAMAccountName"] == ["SCI"] and dc_sddl(lab, PEOPLE_DN, "SCI")["sid"] == group_sid
    node.run(["sss_cache", "-E"], check=False)  # the node asks the DC again, not its cache
    assert node.run(["id", "-u", "erin"]).stdout.strip() == uid
    assert svc.ok("handle", event=user_event("Erin", "delete"))["result"]["result"] == "deleted"


def test_termination_uses_the_name_the_node_recorded(env: Env, product_node):
    """The product node's own recorded name (from its join window) is what the termination removes."""
    lab, svc = env.lab, env.svc
    node, _res = product_node
    recorded = lab.svc_call("window", instance_id=node.instance_id)["window"]["computerName"]
    # The handler's EC2 is the stand-in of dirsvc: an instance of the cluster stands for the node.
    (iid,) = svc.ok("instances", count=1)["ids"]
    svc.ok("put_item", item={"instanceId": {"S": iid}, "computerName": {"S": recorded}})
    svc.ok("terminate", ids=[iid])
    before = computers(lab, COMPUTERS_DN)
    out = svc.ok("handle", event=termination(iid))["result"]
    assert out == {"instance": iid, "computer": recorded, "result": "deleted"}
    assert computers(lab, COMPUTERS_DN) == before - {recorded}


def test_preexisting_objects_are_never_changed(env: Env):
    lab, svc = env.lab, env.svc
    attrs = ["whenChanged", "uSNChanged", "memberOf", "userAccountControl"]
    before = dc_search(lab, BASE, "(sAMAccountName=alice)", attrs)
    group_before = dc_search(lab, BASE, "(sAMAccountName=hpc-users)", ["uSNChanged", "member"])
    for ev in (user_event("alice", groups=[]), user_event("alice", "delete"),
               {"resource": "group", "name": "hpc-users", "description": "x", "tf": {"action": "create"}},
               {"resource": "group", "name": "hpc-users", "tf": {"action": "delete"}}):
        out = svc.call("handle", event=ev)
        assert not out["ok"] and "outside the stack's OU" in out["error"], out
    assert dc_search(lab, BASE, "(sAMAccountName=alice)", attrs) == before
    assert dc_search(lab, BASE, "(sAMAccountName=hpc-users)", ["uSNChanged", "member"]) == group_before


def test_destroy_removes_the_ou_and_nothing_else(env: Env):
    lab, svc = env.lab, env.svc
    outside_before = computers(lab, f"CN=Computers,{BASE}")
    # Never while the cluster has nodes (pulumi destroy deletes the cluster first).
    refused = svc.call("handle", event=directory_event("delete"))
    assert not refused["ok"] and "delete the cluster first" in refused["error"], refused
    assert dc_search(lab, STACK_DN, scope="base")
    assert svc.ok("delete_cluster")["terminated"]
    out = svc.ok("handle", event=directory_event("delete"))["result"]
    assert out["deleted"] is True
    assert not dc_search(lab, STACK_DN, scope="base")
    assert not dc_search(lab, BASE, f"(sAMAccountName={JOIN_USER})")
    assert dc_search(lab, BASE, "(sAMAccountName=alice)")
    assert computers(lab, f"CN=Computers,{BASE}") == outside_before
    assert svc.ok("handle", event=directory_event("delete"))["result"]["deleted"] is False


def test_no_secret_in_argv(env: Env):
    assert not [h for h in env.lab.watch.hits if h["secret"] == "directory join password"]
