"""Issue 18, stable POSIX identities: DirectoryAdmin's identity ledger (lambda_src/directory_admin.py,
Directory.identity) on an in-memory directory whose LDAP primitives behave as a DC's: an add of an existing DN
fails (entryAlreadyExists), a modify that deletes a value that is not there fails (noSuchAttribute) and changes
nothing, every operation is atomic. The handler, Directory's lookups and the ledger's logic are the real ones.
The same against the lab's Samba DC: tests/adlab/test_identity_ledger.py."""

from __future__ import annotations

import random
import threading
import time

import pytest

from pcluster_ad.lambda_src import directory_admin as da
from tests.test_directory_admin import ENV, AnySecureString

BASE = "DC=test,DC=domain"
LEDGER = f"CN=pcluster-ad-ids,{BASE}"
SETTINGS = da.load_settings(ENV)  # stack dev, OU pcluster-ad-dev, the default range 100000..199999


# -- an LDAP server on a dict ------------------------------------------------------------------------------------

def _split(body: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, c in enumerate(body):
        if c == "(":
            depth += 1
            if depth == 1:
                start = i
        elif c == ")":
            depth -= 1
            if depth == 0:
                parts.append(body[start:i + 1])
    return parts


def matches(flt: str, entry: dict[str, list[str]]) -> bool:
    """RFC 4515 filters as the product sends them: & | ! and attr=value (value * = present), without case."""
    inner = flt[1:-1]
    if inner[0] in "&|":
        results = [matches(p, entry) for p in _split(inner[1:])]
        return all(results) if inner[0] == "&" else any(results)
    if inner[0] == "!":
        return not matches(inner[1:], entry)
    attr, _, value = inner.partition("=")
    values = [str(v).lower() for v in entry.get(attr, [])]
    if value == "*":
        return bool(values)
    return value.replace("\\2a", "*").lower() in values


class Server:
    """Entries {dn: {attr: [values]}}; each operation atomic (one lock), as on one domain controller. `pause`:
    a random sleep before each operation so that threads interleave."""

    def __init__(self, pause: float = 0.0):
        self.entries: dict[str, dict[str, list[str]]] = {}
        self.lock = threading.Lock()
        self.pause = pause
        self.writes: list[tuple] = []

    def _wait(self):
        if self.pause:
            time.sleep(random.uniform(0, self.pause))

    def find(self, dn: str) -> str | None:
        return next((d for d in self.entries if d.lower() == dn.lower()), None)


class Conn:
    """One function's ldap3 connection to the Server (raise_exceptions=False: False and `result` on failure)."""

    def __init__(self, server: Server):
        self.server, self.result = server, {}

    def _done(self, ok: bool, description: str = "success") -> bool:
        self.result = {"result": 0 if ok else 1, "description": description, "message": ""}
        return ok

    def add(self, dn, classes, attrs):
        s = self.server
        s._wait()
        with s.lock:
            if s.find(dn):
                return self._done(False, "entryAlreadyExists")
            s.entries[dn] = {"objectClass": list(classes),
                             **{k: [str(x) for x in (v if isinstance(v, list) else [v])] for k, v in attrs.items()}}
            s.writes.append(("add", dn))
            return self._done(True)

    def modify(self, dn, mods, controls=None):
        from ldap3 import MODIFY_ADD, MODIFY_DELETE, MODIFY_REPLACE

        s = self.server
        s._wait()
        with s.lock:
            key = s.find(dn)
            if key is None:
                return self._done(False, "noSuchObject")
            new = {k: list(v) for k, v in s.entries[key].items()}
            for attr, ops in mods.items():
                for op, values in ops:
                    values = [str(v) for v in values]
                    have = new.get(attr, [])
                    if op == MODIFY_DELETE:
                        if any(v not in have for v in values):
                            return self._done(False, "noSuchAttribute")  # nothing of the modify is applied
                        new[attr] = [v for v in have if v not in values]
                    elif op == MODIFY_ADD:
                        if any(v in have for v in values):
                            return self._done(False, "attributeOrValueExists")
                        new[attr] = have + values
                    elif op == MODIFY_REPLACE:
                        new[attr] = values
            s.entries[key] = {k: v for k, v in new.items() if v}
            s.writes.append(("modify", key, tuple(sorted(mods))))
            return self._done(True)

    def delete(self, dn, controls=None):
        s = self.server
        with s.lock:
            gone = [d for d in s.entries if d.lower() == dn.lower() or d.lower().endswith("," + dn.lower())]
            for d in gone:
                del s.entries[d]
            s.writes.append(("delete", dn))
            return self._done(bool(gone), "success" if gone else "noSuchObject")

    def modify_dn(self, dn, rdn):
        raise AssertionError("not used here")

    def unbind(self):
        pass


class Dir(da.Directory):
    """The real Directory on a Conn; only search is answered from the dict (scope and filter as the DC does)."""

    def __init__(self, server: Server, ou: str = "pcluster-ad-dev", parent: str = ""):
        super().__init__(Conn(server), da.Layout("test.domain", ou, parent), lambda user, pw: None,
                         da.ReplicationWait(sleep=lambda s: None))
        self.server = server

    def search(self, base, flt, attrs=(), *, scope="SUBTREE", controls=None):
        s = self.server
        s._wait()
        with s.lock:
            out = []
            for dn, e in s.entries.items():
                inside = dn.lower() == base.lower() if scope == "BASE" else (
                    dn.lower() == base.lower() or dn.lower().endswith("," + base.lower()))
                if scope == "LEVEL":
                    inside = dn.lower().split(",", 1)[-1] == base.lower()
                if inside and matches(flt, e):
                    out.append({"dn": dn, "attributes": {k: list(v) for k, v in e.items()}})
            return out


def site() -> Server:
    """A domain with the stack's OU, a site user with its own uidNumber, the built-in Administrator."""
    s = Server()
    for dn in (f"OU=pcluster-ad-dev,{BASE}", f"OU=Users,OU=pcluster-ad-dev,{BASE}",
               f"OU=Computers,OU=pcluster-ad-dev,{BASE}"):
        s.entries[dn] = {"objectClass": ["organizationalUnit"]}
    s.entries[f"CN=Administrator,CN=Users,{BASE}"] = {"objectClass": ["user"], "sAMAccountName": ["Administrator"]}
    s.entries[f"CN=jsmith,CN=Users,{BASE}"] = {"objectClass": ["user"], "sAMAccountName": ["jsmith"],
                                               "uidNumber": ["100001"], "gidNumber": ["100001"]}
    return s




def handle(d: Dir, event: dict, action: str = "create", settings: da.Settings = SETTINGS) -> dict:
    ev = {**event, "tf": {"action": action, "prev_input": event if action == "delete" else {}}}
    return da.handle_resource(ev, settings=settings, directory=d, ssm=AnySecureString(ENV["KMS_KEY_ARN"]))


def user(name: str, **kw) -> dict:
    return {"resource": "user", "name": name, "groups": [], "identityVersion": 1, **kw}


def group(name: str, **kw) -> dict:
    return {"resource": "group", "name": name, "description": "", "identityVersion": 1, **kw}


def numbers(s: Server, name: str) -> dict[str, str]:
    dn = next(d for d, e in s.entries.items() if e.get("sAMAccountName", [""])[0].lower() == name.lower())
    return {k: s.entries[dn][k][0] for k in ("uidNumber", "gidNumber") if k in s.entries[dn]}


def ledger(s: Server) -> dict[str, str]:
    return {dn.split(",")[0][3:]: e["description"][0] for dn, e in s.entries.items()
            if dn.lower().endswith("," + LEDGER.lower())}


# -- allocation ----------------------------------------------------------------------------------------------------

def test_declared_users_and_groups_get_numbers_from_the_ledger_skipping_the_sites():
    s = site()
    d = Dir(s)
    g = handle(d, group("physics"))
    assert g["gidNumber"] == 100000 and g["idSource"] == "allocated"
    u = handle(d, user("alice"))
    # 100001 is jsmith's (the site's own): skipped. A user's gidNumber is its uidNumber (private group).
    assert (u["uidNumber"], u["gidNumber"], u["idSource"]) == (100002, 100002, "allocated")
    assert numbers(s, "physics") == {"gidNumber": "100000"}
    assert numbers(s, "alice") == {"uidNumber": "100002", "gidNumber": "100002"}
    # The ledger, beside the stack's OU: one entry per name, one per number handed out, the counter.
    assert ledger(s) == {"group-physics": "100000", "n-100000": "group-physics", "user-alice": "100002",
                         "n-100002": "user-alice", "next-100000": "100003"}
    assert s.entries[LEDGER]["objectClass"] == ["top", "container"]
    # Idempotent: the update gets the same numbers, writes nothing new to the ledger or the object.
    before = list(s.writes)
    again = handle(d, user("alice"), "update")
    assert (again["uidNumber"], again["idSource"]) == (100002, "ledger")
    assert not [w for w in s.writes[len(before):] if "uidNumber" in str(w) or LEDGER.lower() in str(w).lower()]


def test_a_removed_and_redeclared_user_gets_its_number_back():
    s = site()
    d = Dir(s)
    first = handle(d, user("alice"))["uidNumber"]
    handle(d, user("bob"))
    assert handle(d, user("alice"), "delete")["result"] == "deleted"
    assert not any("alice" in dn for dn in s.entries if "pcluster-ad-dev" in dn)
    assert ledger(s)["user-alice"] == str(first)  # the ledger is outside the OU: kept
    back = handle(d, user("Alice"))  # declared again (another spelling: AD names ignore case)
    assert (back["uidNumber"], back["gidNumber"], back["idSource"]) == (first, first, "ledger")
    assert handle(d, user("carol"))["uidNumber"] not in (first, 100001)


def test_the_ledger_outlives_the_stack_ou_and_serves_a_second_stack():
    """pulumi destroy deletes the stack's OU; the ledger (beside it) stays. Another stack whose OU has the same parent
    gets the same number for the same name, and a new name a number no one had."""
    s = site()
    a = Dir(s)
    alice = handle(a, user("alice"))["uidNumber"]
    hpc = handle(a, group("hpc"))["gidNumber"]
    a.delete_stack_ou()
    assert LEDGER in s.entries and not any("pcluster-ad-dev" in dn for dn in s.entries)
    for dn in (f"OU=pcluster-ad-prod,{BASE}", f"OU=Users,OU=pcluster-ad-prod,{BASE}"):
        s.entries[dn] = {"objectClass": ["organizationalUnit"]}
    b = Dir(s, "pcluster-ad-prod")
    prod = da.load_settings({**ENV, "STACK": "prod", "OU_NAME": "pcluster-ad-prod"})
    assert handle(b, user("alice"), settings=prod)["uidNumber"] == alice
    assert handle(b, group("hpc"), settings=prod)["gidNumber"] == hpc
    assert handle(b, user("dave"), settings=prod)["uidNumber"] not in (alice, hpc, 100001)


def test_the_access_groups_are_posix_groups():
    s = site()
    d = Dir(s)
    out = handle(d, {"resource": "access", "allowedGroups": [], "adminGroups": [], "identityVersion": 1})
    got = {out[k]["name"]: out[k]["gidNumber"] for k in ("users", "admins")}
    assert got == {"pca-dev-users": 100000, "pca-dev-admins": 100002}
    assert numbers(s, "pca-dev-admins") == {"gidNumber": "100002"}  # sudo's %group needs it under rfc2307
    # The access Invocation's delete removes the groups; the next create gives them their numbers back.
    handle(d, {"resource": "access", "allowedGroups": [], "adminGroups": []}, "delete")
    again = handle(d, {"resource": "access", "allowedGroups": [], "adminGroups": [], "identityVersion": 1})
    assert {again[k]["name"]: again[k]["gidNumber"] for k in ("users", "admins")} == got


def test_the_range_comes_from_the_settings_and_its_end_is_a_clear_error():
    s = site()
    narrow = da.load_settings({**ENV, "ID_MIN": "5000", "ID_MAX": "5001"})
    d = Dir(s)
    assert handle(d, group("a"), settings=narrow)["gidNumber"] == 5000
    assert handle(d, group("b"), settings=narrow)["gidNumber"] == 5001
    with pytest.raises(da.DirectoryError, match=r"5000\.\.5001 is used up .* widen pcluster-ad:identity\.idRange"):
        handle(d, group("c"), settings=narrow)
    assert "c" not in {e.get("sAMAccountName", [""])[0] for e in s.entries.values()}  # refused before the group
    for bad in ({"ID_MIN": "999"}, {"ID_MIN": "7", "ID_MAX": "x"}, {"ID_MIN": "6000", "ID_MAX": "5000"}):
        with pytest.raises(da.SettingsError, match="ID_MIN"):
            da.load_settings({**ENV, **bad})
    assert da.load_settings(ENV).id_range == (100000, 199999)


# -- pins and the site's own numbers ---------------------------------------------------------------------------------

def test_a_pin_is_recorded_and_kept_out_of_the_allocation():
    s = site()
    d = Dir(s)
    out = handle(d, user("alice", uid=100000))  # inside the range: the counter must skip it later
    assert (out["uidNumber"], out["idSource"]) == (100000, "pinned")
    assert handle(d, user("legacy", uid=5012))["uidNumber"] == 5012  # outside the range: the old directory's
    assert handle(d, group("hpc"))["gidNumber"] == 100002  # 100000 pinned, 100001 jsmith's
    assert ledger(s)["n-100000"] == "user-alice" and ledger(s)["user-legacy"] == "5012"


@pytest.mark.parametrize("setup,event,message", [
    # A pin the ledger gives to another name.
    ([user("alice")], user("bob", uid=100000),
     r"pcluster-ad:users\[bob\]\.uid pins 100000, the identity ledger .* gives it to user-alice"),
    # A name whose ledger number differs from its pin.
    ([user("alice")], user("alice", uid=150000),
     r"pcluster-ad:users\[alice\]\.uid pins 150000, but the identity ledger .* gave user 'alice' 100000"),
    # A pin another object carries (the site's jsmith).
    ([], group("hpc", gid=100001), r"pcluster-ad:groups\[hpc\]\.gid pins 100001, which CN=jsmith"),
    ([], user("bob", uid=999), r"bad resource event: uid=999"),
])
def test_a_conflicting_pin_is_refused_before_any_write(setup, event, message):
    s = site()
    d = Dir(s)
    for ev in setup:
        handle(d, ev)
    before = {dn: {k: list(v) for k, v in e.items()} for dn, e in s.entries.items()}
    with pytest.raises(da.DirectoryError, match=message) as err:
        handle(d, event, "update")
    assert s.entries == before, "refused, but something was written"
    assert "Fix:" in str(err.value) or "bad resource event" in str(err.value)


def test_the_sites_own_number_on_the_object_is_adopted_and_never_changed():
    s = site()
    d = Dir(s)
    people = f"OU=Users,OU=pcluster-ad-dev,{BASE}"
    # A user the site numbered by hand before the stack managed numbers: adopted into the ledger.
    s.entries[f"CN=erin,{people}"] = {"objectClass": ["user"], "sAMAccountName": ["erin"], "uidNumber": ["4242"],
                                      "gidNumber": ["100"], "userAccountControl": [str(da.UF_NORMAL_ACCOUNT)],
                                      "pwdLastSet": ["1"]}
    out = handle(d, user("erin"), "update")
    assert (out["uidNumber"], out["gidNumber"], out["idSource"]) == (4242, 100, "adopted")  # its own gidNumber kept
    assert ledger(s)["user-erin"] == "4242"
    # Someone changes it by hand afterwards: the stack refuses rather than rewrite the owner of erin's files.
    s.entries[f"CN=erin,{people}"]["uidNumber"] = ["4343"]
    with pytest.raises(da.IdentityRefused, match=r"carries uidNumber 4343, the identity ledger .* gives it 4242"):
        handle(d, user("erin"), "update")
    assert s.entries[f"CN=erin,{people}"]["uidNumber"] == ["4343"]


# -- two stacks' functions at once ---------------------------------------------------------------------------------

def race(server: Server, per_thread: int = 12, threads: int = 3) -> dict[str, int]:
    """`threads` functions (each its own connection) allocate numbers for their own names and for shared ones at
    once; returns {name: number} as each function saw it (a name seen twice with two numbers: "name#2")."""
    got: dict[str, int] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads)

    def work(t: int) -> None:
        d = Dir(server)
        barrier.wait()
        try:
            for i in range(per_thread):
                for name in (f"t{t}-g{i}", f"shared-{i}"):
                    n = d.identity("group", name)["number"]
                    key = name if got.setdefault(name, n) == n else f"{name}#{t}"
                    got.setdefault(key, n)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors, errors
    return got


def test_racing_functions_never_hand_out_one_number_twice():
    s = site()
    s.pause = 0.002
    got = race(s)
    assert not [k for k in got if "#" in k], "a shared name got two numbers"
    assert len(got) == 3 * 12 + 12 and len(set(got.values())) == len(got), sorted(got.items(), key=lambda kv: kv[1])
    assert 100001 not in got.values()  # jsmith's
    # Every number in the ledger belongs to exactly one name, both ways.
    entries = ledger(s)
    for name, n in got.items():
        assert entries[f"group-{name}"] == str(n) and entries[f"n-{n}"] == f"group-{name}"


def test_the_race_test_catches_an_allocator_without_the_atomic_steps(monkeypatch):
    """The same race with the counter written by REPLACE (read, then write: no check that no one moved it) and
    ledger entries overwritten instead of added: numbers are handed out twice. So the test above can fail."""
    from ldap3 import MODIFY_REPLACE

    def naive_next(self, lo, hi):
        value = self.ledger_entry(f"next-{lo}")
        n = max(int(value), lo) if value else lo
        if value is None:
            self.conn.add(f"CN=next-{lo},{self.layout.ledger_dn}", ["top", "container"], {"description": str(n + 1)})
        else:
            self.conn.modify(f"CN=next-{lo},{self.layout.ledger_dn}", {"description": [(MODIFY_REPLACE, [str(n + 1)])]})
        return n

    def naive_add(self, rdn, value):
        dn = f"CN={rdn},{self.layout.ledger_dn}"
        if not self.conn.add(dn, ["top", "container"], {"description": value}):
            self.conn.modify(dn, {"description": [(MODIFY_REPLACE, [value])]})
        return True

    monkeypatch.setattr(da.Directory, "next_candidate", naive_next)
    monkeypatch.setattr(da.Directory, "_ledger_add", naive_add)
    s = site()
    s.pause = 0.002
    got = race(s)
    assert len(set(got.values())) < len(got)  # duplicates


def test_a_user_refused_for_its_password_parameter_leaves_the_ledger_untouched():
    """The ledger is written only after everything that can refuse the user (here: its initial-password parameter
    is not the stack's SecureString): a refused event writes nothing, not even a number."""
    class PlainSsm(AnySecureString):
        def describe_parameters(self, ParameterFilters):
            name = ParameterFilters[0]["Values"][0]
            return {"Parameters": [{"Name": name, "Type": "String"}]}

    s = site()
    ev = {**user("alice"), "tf": {"action": "create", "prev_input": {}}}
    with pytest.raises(da.DirectoryError, match="not a SecureString"):
        da.handle_resource(ev, settings=SETTINGS, directory=Dir(s), ssm=PlainSsm(ENV["KMS_KEY_ARN"]))
    assert s.writes == [] and LEDGER not in s.entries


def test_a_damaged_ledger_entry_is_refused_not_looped_on():
    s = site()
    d = Dir(s)
    handle(d, user("alice"))
    s.entries[f"CN=user-alice,{LEDGER}"]["description"] = ["edited by hand"]
    with pytest.raises(da.DirectoryError, match=r"CN=user-alice,CN=pcluster-ad-ids.* holds 'edited by hand', not a"):
        handle(d, user("alice"), "update")
