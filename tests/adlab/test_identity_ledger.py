"""Issue 18, stable POSIX identities, against the lab's real Samba AD DC (Simple AD is Samba).

Two "stacks" share the directory: two directory-admin functions (tests/adlab/dirsvc.py, the product's real handler
with real ldap3), each with its own settings (STACK, OU under the domain root, deployment). What they declare gets
uidNumber / gidNumber from the identity ledger CN=pcluster-ad-ids,DC=test,DC=domain, beside their OUs. Every check
reads the DC's own database (SamDB on the DC), not the product's view.
"""

from __future__ import annotations

import json
import secrets

import pytest

from pcluster_ad.lambda_src.directory_admin import ID_RANGE, access_group_names

from .lab import Lab
from .test_directory_admin import BASE, DirSvc, dc_search, lab  # noqa: F401

pytestmark = pytest.mark.adlab

LEDGER = f"CN=pcluster-ad-ids,{BASE}"
STACKS = ("ids-a", "ids-b")
USERS = ("lena", "mia", "noah", "olga", "pia", "pinned", "quinn")

# Run by the DC's python3: a hand-made user carrying a uidNumber (another tool's, or the site's own numbering).
SITE_USER = r"""
import sys
from samba.auth import system_session
from samba.param import LoadParm
from samba.samdb import SamDB
lp = LoadParm(); lp.load_default()
db = SamDB(url=lp.samdb_url(), session_info=system_session(), lp=lp)
name, number = sys.argv[1], sys.argv[2]
db.add({"dn": "CN=%s,CN=Users,%s" % (name, db.domain_dn()), "objectClass": "user", "sAMAccountName": name,
        "uidNumber": number, "gidNumber": number})
"""


class Stack:
    def __init__(self, lab: Lab, name: str, parent: str = ""):  # noqa: F811
        self.name, self.lab = name, lab
        self.ou = f"OU=pcluster-ad-{name},{parent or BASE}"
        self.svc = DirSvc(lab)
        params = {f"/pcluster-ad/{name}/admin-password": lab.admin_password}
        params.update({f"/pcluster-ad/{name}/users/{u}/initial-password": "In1t-" + secrets.token_urlsafe(10) + "!"
                       for u in USERS})
        self.svc.ok("config", settings={
            "DIRECTORY_ID": "d-1234567890", "DOMAIN": lab.cfg.domain, "DNS_IPS": lab.dc_ip,
            "OU_NAME": f"pcluster-ad-{name}", "ADMIN_USER": "Administrator",
            "ADMIN_PASSWORD_PARAMETER": f"/pcluster-ad/{name}/admin-password", "STACK": name,
            "CLUSTER_NAME": f"hpc-{name}", "COMPUTER_PREFIX": "IDS" + name[-1].upper(), "PARENT_DN": parent,
        }, parameters=params, dc_argv=lab.dc.argv([]))
        self.handle({"resource": "directory", "ou": f"pcluster-ad-{name}", "setupVersion": 2})

    def handle(self, event: dict, action: str = "create") -> dict:
        ev = {**event, "tf": {"action": action, "prev_input": event if action == "delete" else {}}}
        return self.svc.ok("handle", event=ev)["result"]

    def user(self, name: str, action: str = "create", **kw) -> dict:
        return self.handle({"resource": "user", "name": name, "groups": [], "identityVersion": 1, **kw}, action)

    def group(self, name: str, action: str = "create", **kw) -> dict:
        return self.handle({"resource": "group", "name": name, "description": "", "identityVersion": 1, **kw},
                           action)


@pytest.fixture(scope="module")
def stacks(lab):  # noqa: F811
    a, b = Stack(lab, STACKS[0]), Stack(lab, STACKS[1])
    yield a, b
    a.svc.close()
    b.svc.close()


def on_dc(lab: Lab, name: str) -> dict:  # noqa: F811
    """uidNumber / gidNumber / uSNCreated / objectClass of the account `name` as the DC stores it ({} if absent)."""
    hits = dc_search(lab, BASE, f"(sAMAccountName={name})", ["uidNumber", "gidNumber", "uSNCreated", "objectClass"])
    return hits[0] if hits else {}


def ledger(lab: Lab) -> dict[str, str]:  # noqa: F811
    return {h["dn"].split(",")[0][3:]: h["description"][0]
            for h in dc_search(lab, LEDGER, "(objectClass=container)", ["description"], scope="one")}


def test_a_declared_user_and_group_carry_their_numbers_on_the_dc(stacks):
    a, _b = stacks
    dc = a.lab
    g = a.group("physics")
    u = a.user("lena")
    lo, hi = ID_RANGE
    assert lo <= g["gidNumber"] <= hi and lo <= u["uidNumber"] <= hi and u["uidNumber"] != g["gidNumber"]
    assert u["gidNumber"] == u["uidNumber"] and u["idSource"] == "allocated"
    lena, physics = on_dc(dc, "lena"), on_dc(dc, "physics")
    assert lena["uidNumber"] == lena["gidNumber"] == [str(u["uidNumber"])], lena
    assert physics["gidNumber"] == [str(g["gidNumber"])], physics
    # Samba takes both on plain user/group objects (the schema's user and group classes carry the posixAccount /
    # posixGroup attributes); no auxiliary class is added.
    assert "posixAccount" not in lena["objectClass"] and "posixGroup" not in physics["objectClass"], lena
    # The ledger, beside the stack OUs (not inside them): the name and the number, both ways.
    entries = ledger(dc)
    assert entries["user-lena"] == str(u["uidNumber"]) and entries[f"n-{u['uidNumber']}"] == "user-lena"
    assert entries["group-physics"] == str(g["gidNumber"])
    # The access groups are POSIX groups too (sudo's %group under rfc2307).
    acc = a.handle({"resource": "access", "allowedGroups": ["physics"], "adminGroups": [], "identityVersion": 1})
    for key, name in access_group_names(a.name).items():
        assert on_dc(dc, name)["gidNumber"] == [str(acc[key]["gidNumber"])]


def test_the_schema_gives_user_and_group_the_rfc2307_attributes(stacks):
    """Why no objectClass is added: in the DC's schema (Samba's 2008 R2 one, like Windows since 2003 R2) the user
    and group classes carry posixAccount / posixGroup as auxiliary classes, which hold uidNumber and gidNumber."""
    dc = stacks[0].lab
    schema = f"CN=Schema,CN=Configuration,{BASE}"
    classes = {h["lDAPDisplayName"][0]: h for h in dc_search(
        dc, schema, "(|(lDAPDisplayName=user)(lDAPDisplayName=group)(lDAPDisplayName=posixAccount)"
        "(lDAPDisplayName=posixGroup))", ["lDAPDisplayName", "auxiliaryClass", "systemAuxiliaryClass", "mayContain",
                                          "systemMayContain"], scope="one")}
    aux = {c: set(h.get("auxiliaryClass", []) + h.get("systemAuxiliaryClass", [])) for c, h in classes.items()}
    may = {c: set(h.get("mayContain", []) + h.get("systemMayContain", [])) for c, h in classes.items()}
    print(f"\nschema: user aux {sorted(aux['user'])}, group aux {sorted(aux['group'])}")
    assert "posixAccount" in aux["user"] and "posixGroup" in aux["group"]
    assert {"uidNumber", "gidNumber"} <= may["posixAccount"] and "gidNumber" in may["posixGroup"]


def test_a_deleted_and_redeclared_user_gets_the_same_numbers(stacks):
    a, _b = stacks
    dc = a.lab
    first = a.user("mia")
    before = on_dc(dc, "mia")
    assert a.user("mia", "delete")["result"] == "deleted" and on_dc(dc, "mia") == {}
    assert ledger(dc)["user-mia"] == str(first["uidNumber"])  # the ledger outlives the account
    again = a.user("mia")
    after = on_dc(dc, "mia")
    assert after["uSNCreated"] != before["uSNCreated"]  # a new account (new SID): its ID-mapped UID would differ
    assert (again["uidNumber"], again["gidNumber"], again["idSource"]) == (first["uidNumber"], first["uidNumber"],
                                                                            "ledger")
    assert after["uidNumber"] == before["uidNumber"] and after["gidNumber"] == before["gidNumber"]


def test_a_second_stack_gets_the_same_number_for_a_name_and_new_ones_for_new_names(stacks):
    a, b = stacks
    dc = a.lab
    noah = a.user("noah")["uidNumber"]
    a.user("noah", "delete")  # leaves stack A (pulumi destroy there, or removed from its config)
    again = b.user("noah")
    assert (again["uidNumber"], again["idSource"]) == (noah, "ledger")
    assert on_dc(dc, "noah")["uidNumber"] == [str(noah)] and "pcluster-ad-ids-b" in on_dc(dc, "noah")["dn"]
    taken = {int(v) for k, v in ledger(dc).items() if k.startswith(("user-", "group-"))} - {noah}
    pia = b.user("pia")
    assert pia["idSource"] == "allocated" and pia["uidNumber"] not in taken | {noah}
    acc = b.handle({"resource": "access", "allowedGroups": [], "adminGroups": [], "identityVersion": 1})
    assert {acc["users"]["gidNumber"], acc["admins"]["gidNumber"]}.isdisjoint(taken | {noah, pia["uidNumber"]})


def test_a_number_a_hand_made_object_carries_is_skipped(stacks):
    a, _b = stacks
    dc = a.lab
    counter = int(ledger(dc)[f"next-{ID_RANGE[0]}"])  # the number the next allocation would try
    dc.dc.run(["/usr/bin/python3", "-c", SITE_USER, "site-made", str(counter)], timeout=60)
    olga = a.user("olga")
    assert olga["uidNumber"] > counter and on_dc(dc, "site-made")["uidNumber"] == [str(counter)]
    assert f"n-{counter}" not in ledger(dc)  # skipped, not recorded as handed out


def test_a_pin_is_recorded_and_a_pin_another_name_holds_is_refused(stacks):
    a, b = stacks
    dc = a.lab
    out = a.user("pinned", uid=5012)
    assert (out["uidNumber"], out["idSource"]) == (5012, "pinned") and on_dc(dc, "pinned")["uidNumber"] == ["5012"]
    lena = int(ledger(dc)["user-lena"])
    res = b.svc.call("handle", event={"resource": "group", "name": "chem", "gid": lena, "identityVersion": 1,
                                      "tf": {"action": "create", "prev_input": {}}})
    assert not res["ok"] and f"pcluster-ad:groups[chem].gid pins {lena}" in res["error"], res
    assert "gives it to user-lena" in res["error"] and on_dc(dc, "chem") == {}  # refused before any write


def test_two_functions_allocating_at_once_never_hand_out_one_number_twice(stacks):
    """Both functions' allocators run at the same moment, each on its own connection: 12 names of its own and
    12 shared ones (both ask for the same names) each. Every name gets one number, no number two names."""
    dc = stacks[0].lab
    names = {s.name: [["group", f"race-{s.name}-{i}"] for i in range(12)] + [["group", f"race-shared-{i}"]
                                                                               for i in range(12)] for s in stacks}
    for s in stacks:  # both requests written before either answer is read: the allocations overlap
        s.svc.proc.stdin.write(json.dumps({"op": "allocate", "names": names[s.name]}) + "\n")
        s.svc.proc.stdin.flush()
    answers = {s.name: s.svc._read(300) for s in stacks}
    assert all(r.get("ok") for r in answers.values()), answers
    spans = [(r["started"], r["ended"]) for r in answers.values()]
    overlap = min(e for _s, e in spans) - max(s_ for s_, _e in spans)
    print(f"\nallocations: {[round(e - s_, 2) for s_, e in spans]} s each, overlapping {overlap:.2f} s")
    assert overlap > 0, "the two allocators did not run at the same time"
    got: dict[str, set[int]] = {}
    for s in stacks:
        for (_kind, name), n in zip(names[s.name], answers[s.name]["numbers"], strict=True):
            got.setdefault(name, set()).add(n)
    assert all(len(v) == 1 for v in got.values()), {k: v for k, v in got.items() if len(v) > 1}
    numbers = [next(iter(v)) for v in got.values()]
    assert len(numbers) == 36 and len(set(numbers)) == 36, sorted(numbers)
    entries = ledger(dc)
    earlier = {int(v) for k, v in entries.items() if k.startswith(("user-", "group-")) and "race-" not in k}
    assert earlier.isdisjoint(numbers)
    for name, (n,) in got.items():
        assert entries[f"group-{name}"] == str(n) and entries[f"n-{n}"] == f"group-{name}"


def test_a_ledger_under_a_delegated_ou_as_on_managed_ad(stacks):
    """AWS Managed AD: the stack's OU (and so the ledger) goes under the delegated OU. Samba takes the container
    there too; that ledger starts its own counter, and still skips every number an object in the domain carries."""
    dc = stacks[0].lab
    parent = f"OU=Corp,{BASE}"
    dc.dc.run(["samba-tool", "ou", "add", parent], timeout=60)
    c = Stack(dc, "ids-c", parent)
    try:
        carried = {int(n) for h in dc_search(dc, BASE, "(|(uidNumber=*)(gidNumber=*))", ["uidNumber", "gidNumber"])
                   for n in h.get("uidNumber", []) + h.get("gidNumber", [])}
        quinn = c.user("quinn")
        assert quinn["idSource"] == "allocated" and quinn["uidNumber"] not in carried, (quinn, sorted(carried))
        own = {h["dn"].split(",")[0][3:]: h["description"][0] for h in dc_search(
            dc, f"CN=pcluster-ad-ids,{parent}", "(objectClass=container)", ["description"], scope="one")}
        assert own["user-quinn"] == str(quinn["uidNumber"]) and "user-quinn" not in ledger(dc)
        assert on_dc(dc, "quinn")["uidNumber"] == [str(quinn["uidNumber"])]
    finally:
        c.svc.close()
