"""Issue 18: the stack's two access groups (pca-<stack>-users / -admins) as DirectoryAdmin keeps them, on an
in-memory directory (the LDAP side against a real Samba DC: tests/adlab/test_access_directory.py)."""

from __future__ import annotations

import re

import pytest

from pcluster_ad.lambda_src import directory_admin as da
from tests.test_directory_admin import NumbersStub

BASE = "DC=test,DC=domain"
LAYOUT = da.Layout("test.domain", "pcluster-ad-dev")
SETTINGS = da.Settings(directory_id="d-1234567890", domain="test.domain", dns_ips=["10.0.1.5"],
                       ou_name="pcluster-ad-dev", admin_user="Administrator", admin_password_parameter="/p/admin",
                       cluster_name="hpc", computer_prefix="HPC12", stack="dev", deployment_id="dep-12345678")
USERS, ADMINS = "pca-dev-users", "pca-dev-admins"


class MemDirectory(NumbersStub, da.Directory):
    """Directory on a dict of objects {dn: {attr: [values]}}: the primitives only; the logic is the real one."""

    def __init__(self, objects: dict[str, dict[str, list[str]]]):
        super().__init__(conn=None, layout=LAYOUT, set_password=lambda u, p: None)
        self.objects = objects
        self.writes: list[tuple] = []

        self.conn = MemConn(self)

    def _hit(self, dn):
        obj = self.objects[dn]
        return {"dn": dn, "attributes": {k: v for k, v in obj.items() if k != "objectSid"},
                "raw_attributes": {"objectSid": obj.get("objectSid", [])}}

    def search(self, base, flt, attrs=(), *, scope="SUBTREE", controls=None):
        if scope == "BASE":
            return [self._hit(dn) for dn in self.objects if dn.lower() == base.lower()]
        inside = [dn for dn in self.objects if dn.lower().endswith(base.lower())]
        if flt == "(sAMAccountType=805306368)":
            return [self._hit(dn) for dn in inside if self.objects[dn].get("sAMAccountType") == ["805306368"]]
        if m := re.fullmatch(r"\(memberOf=(.*)\)", flt):  # the back-link: who the group's member values name
            group_dn = next((g for g in self.objects if g.lower() == m[1].lower()), None)
            named = {v.lower() for v in self.objects[group_dn].get("member", [])} if group_dn else set()
            return [self._hit(dn) for dn in inside if dn.lower() in named]
        if m := re.fullmatch(r"\(&\(objectClass=group\)\(objectSid=((?:\\[0-9a-f]{2})+)\)\)", flt):
            sid = bytes.fromhex(m[1].replace("\\", ""))
            return [self._hit(dn) for dn in inside if self.objects[dn].get("objectSid") == [sid]]
        m = re.fullmatch(r"\(&\(objectClass=(\w+|\*)\)\(sAMAccountName=([^)]*)\)\)", flt)
        assert m, flt
        cls, sam = m.groups()
        return [self._hit(dn) for dn, o in self.objects.items()
                if dn.lower().endswith(base.lower()) and o.get("sAMAccountName", [""])[0].lower() == sam.lower()
                and (cls == "*" or cls in o["objectClass"])]

    def add(self, dn, classes, attrs):
        self.writes.append(("add", dn))
        self.objects[dn] = {"objectClass": classes, **{k: v if isinstance(v, list) else [v] for k, v in attrs.items()}}

    def replace(self, dn, changes):
        self.writes.append(("replace", dn, tuple(sorted(changes))))
        for k, v in changes.items():
            self.objects[dn][k] = v if isinstance(v, list) else [v]

    def delete_tree(self, dn):
        self.writes.append(("delete", dn))
        return self.objects.pop(dn, None) is not None


class MemConn:
    """ldap3's modify on the in-memory objects, with LDAP's semantics: the changes of one modify apply in order
    and all or nothing; deleting a value that is not there fails (noSuchAttribute), adding one that is there fails
    (attributeOrValueExists)."""

    def __init__(self, d: MemDirectory):
        self.d, self.result = d, {}

    def modify(self, dn, changes):
        obj = {k: list(v) for k, v in self.d.objects[dn].items()}
        for attr, ops in changes.items():
            for op, values in ops:
                have = obj.setdefault(attr, [])
                for v in values:
                    present = v.lower() in {h.lower() for h in have}
                    if op == "MODIFY_DELETE" and not present:
                        self.result = {"description": "noSuchAttribute", "message": f"{attr}: {v}"}
                        return False
                    if op == "MODIFY_ADD" and present:
                        self.result = {"description": "attributeOrValueExists", "message": f"{attr}: {v}"}
                        return False
                    if op == "MODIFY_DELETE":
                        have[:] = [h for h in have if h.lower() != v.lower()]
                    else:
                        have.append(v)
        self.d.writes.append(("modify", dn, tuple(sorted(changes))))
        self.d.objects[dn] = obj
        self.result = {"description": "success"}
        return True


DOMAIN_SID = bytes([1, 4, 0, 0, 0, 0, 0, 5]) + b"".join(n.to_bytes(4, "little") for n in (21, 1, 2, 3))


def group(name: str, parent: str = f"CN=Users,{BASE}", rid: int | None = None) -> tuple[str, dict]:
    obj = {"objectClass": ["top", "group"], "sAMAccountName": [name]}
    if rid is not None:
        obj["objectSid"] = [da.sid_with_rid(DOMAIN_SID, rid)]
    return f"CN={name},{parent}", obj


def person(name: str, parent: str = f"CN=Users,{BASE}") -> tuple[str, dict]:
    return f"CN={name},{parent}", {"objectClass": ["top", "person", "user"], "sAMAccountName": [name],
                                   "sAMAccountType": ["805306368"]}


def site() -> MemDirectory:
    return MemDirectory(dict([(BASE, {"objectClass": ["domain"], "objectSid": [DOMAIN_SID]}),
                              group("hpc-users"), group("hpc-admins"), group("Domain Admins", rid=512),
                              group("Domain Users", rid=513), group("physics", f"OU=Groups,{BASE}")]))


def event(allowed, admins, action="create", **extra):
    return {"resource": "access", "allowedGroups": allowed, "adminGroups": admins, "owner": "directory-admin-access@f",
            "deployment": "dep-12345678", "tf": {"action": action}, **extra}


def members(d: MemDirectory, name: str) -> list[str]:
    return d.objects[da.access_group_dn(LAYOUT, name)].get("member", [])


def test_names_fit_samaccountname_and_differ_per_stack():
    assert da.access_group_names("dev") == {"users": USERS, "admins": ADMINS}
    names = [n for s in ("dev", "Prod", "a-very-long-stack-name", "a-very-long-stack-name2", "x_y")
             for n in da.access_group_names(s).values()]
    assert len(set(names)) == len(names)
    assert all(len(n) <= 20 and da.sam_problem(n) is None for n in names), names
    assert da.access_group_dn(LAYOUT, USERS) == f"CN={USERS},OU=Users,OU=pcluster-ad-dev,{BASE}"


def test_create_makes_both_groups_with_the_configured_groups_as_members():
    d = site()
    out = da.handle_resource(event(["hpc-users", "physics"], ["hpc-admins"]), settings=SETTINGS, directory=d, ssm=None)
    assert sorted(members(d, USERS)) == sorted([f"CN=hpc-users,CN=Users,{BASE}", f"CN=physics,OU=Groups,{BASE}"])
    assert members(d, ADMINS) == [f"CN=hpc-admins,CN=Users,{BASE}"]
    assert out["users"]["result"] == "created" and out["users"]["missing"] == []
    # Both carry the owner token with the deployment (replace-safety, issue 17).
    for name in (USERS, ADMINS):
        mark = d.objects[da.access_group_dn(LAYOUT, name)][da.OWNER_ATTRIBUTE][0]
        assert da.parse_owner_value(mark) == ("directory-admin-access@f", "dep-12345678")


def test_update_changes_only_membership_and_removes_a_group():
    d = site()
    da.handle_resource(event(["hpc-users", "physics"], ["hpc-admins"]), settings=SETTINGS, directory=d, ssm=None)
    d.writes.clear()
    out = da.handle_resource(event(["hpc-users"], ["hpc-admins"], "update"), settings=SETTINGS, directory=d, ssm=None)
    assert members(d, USERS) == [f"CN=hpc-users,CN=Users,{BASE}"]
    assert out["users"]["removed"] == [f"CN=physics,OU=Groups,{BASE}"] and out["users"]["added"] == []
    assert out["admins"]["added"] == out["admins"]["removed"] == []
    # One write: the users group's members, asserting its mode (the admins group is not touched, nothing created).
    assert d.writes == [("modify", da.access_group_dn(LAYOUT, USERS), ("description", "member"))]
    # An empty admins list empties that group.
    da.handle_resource(event(["hpc-users"], [], "update"), settings=SETTINGS, directory=d, ssm=None)
    assert members(d, USERS) == [f"CN=hpc-users,CN=Users,{BASE}"] and members(d, ADMINS) == []


def test_a_missing_group_is_reported_not_fatal(caplog):
    d = site()
    out = da.handle_resource(event(["hpc-users", "nosuch"], []), settings=SETTINGS, directory=d, ssm=None)
    assert out["users"]["missing"] == ["nosuch"] and members(d, USERS) == [f"CN=hpc-users,CN=Users,{BASE}"]
    assert "nosuch (allowedGroups)" in caplog.text


def test_the_stack_groups_never_become_members_of_themselves():
    d = site()
    da.handle_resource(event(["hpc-users"], []), settings=SETTINGS, directory=d, ssm=None)
    da.handle_resource(event([USERS, "hpc-users"], [USERS], "update"), settings=SETTINGS, directory=d, ssm=None)
    assert members(d, USERS) == [f"CN=hpc-users,CN=Users,{BASE}"] and members(d, ADMINS) == []


def test_a_name_taken_outside_the_ou_is_refused_before_any_write():
    d = site()
    dn, obj = group(USERS)  # someone's own group with the stack's name, outside the OU
    d.objects[dn] = obj
    with pytest.raises(da.NotOurs):
        da.handle_resource(event(["hpc-users"], []), settings=SETTINGS, directory=d, ssm=None)
    assert d.writes == []


def test_bad_events_are_refused():
    d = site()
    for bad in ({"allowedGroups": "hpc-users"}, {"adminGroups": ["a" * 21]}):
        with pytest.raises(da.DirectoryError, match="bad resource event"):
            da.handle_resource({**event([], []), **bad}, settings=SETTINGS, directory=d, ssm=None)
    assert d.writes == []


def test_delete_removes_both_groups_but_not_a_newer_owners():
    d = site()
    da.handle_resource(event(["hpc-users"], ["hpc-admins"]), settings=SETTINGS, directory=d, ssm=None)
    # A replacement's old delete (another owner token): nothing deleted.
    old = event([], [], "delete", owner="directory-admin-access@old")
    out = da.handle_resource(old, settings=SETTINGS, directory=d, ssm=None)
    assert out["users"]["result"] == "superseded" and da.access_group_dn(LAYOUT, USERS) in d.objects
    out = da.handle_resource(event([], [], "delete"), settings=SETTINGS, directory=d, ssm=None)
    assert out["users"]["result"] == out["admins"]["result"] == "deleted"
    assert da.access_group_dn(LAYOUT, USERS) not in d.objects and f"CN=hpc-users,CN=Users,{BASE}" in d.objects


# -- allowedGroups empty: every user account (attack finding 1 of issue 18) -----------------------------------------

def people_site(*names: str) -> MemDirectory:
    d = site()
    for name in ("Administrator", "krbtgt", "svc-join", *names):
        dn, obj = person(name)
        d.objects[dn] = obj
    return d


EVERYONE_SETTINGS = da.Settings(**{**SETTINGS.__dict__, "join_user": "svc-join", "join_password_parameter": "/p/j"})


def people(d: MemDirectory) -> list[str]:
    return sorted(m.split(",")[0].removeprefix("CN=") for m in members(d, USERS))


def test_empty_allowed_groups_put_every_user_account_in_the_users_group_but_the_admin_and_the_adding_account():
    """In-chain membership never sees a user's primary group (Domain Users), so "every user" is every normal user
    account as a direct member; the directory's admin, the stack's adding account and krbtgt never are."""
    d = people_site("alice", "bob")
    out = da.handle_resource(event([], ["hpc-admins"]), settings=EVERYONE_SETTINGS, directory=d, ssm=None)
    assert people(d) == ["alice", "bob"], out
    assert out["users"]["mode"] == "every user account" and out["users"]["members"] == 2
    assert d.objects[da.access_group_dn(LAYOUT, USERS)]["description"] == [da.everyone_description("dev")]
    assert members(d, ADMINS) == [f"CN=hpc-admins,CN=Users,{BASE}"]  # the admins group: its groups, as before


@pytest.mark.parametrize("name", ["Domain Users", "Domänen-Benutzer"])
def test_domain_users_in_allowed_groups_means_every_user_account_whatever_its_localized_name(name):
    d = people_site("alice")
    if name != "Domain Users":  # a German directory: the same SID, another name
        dn, obj = group(name, rid=513)
        del d.objects[f"CN=Domain Users,CN=Users,{BASE}"]
        d.objects[dn] = obj
    da.handle_resource(event([name, "physics"], []), settings=EVERYONE_SETTINGS, directory=d, ssm=None)
    assert people(d) == ["alice"]
    # A group whose name says "users" but is not <domain SID>-513: its members, as any group.
    da.handle_resource(event(["hpc-users"], [], "update"), settings=EVERYONE_SETTINGS, directory=d, ssm=None)
    assert people(d) == ["hpc-users"]


def test_closing_replaces_every_user_by_the_configured_groups_and_opening_again_refills():
    d = people_site("alice", "bob")
    da.handle_resource(event([], []), settings=EVERYONE_SETTINGS, directory=d, ssm=None)
    out = da.handle_resource(event(["physics"], [], "update"), settings=EVERYONE_SETTINGS, directory=d, ssm=None)
    assert members(d, USERS) == [f"CN=physics,OU=Groups,{BASE}"], out
    assert d.objects[da.access_group_dn(LAYOUT, USERS)]["description"] == [
        da.members_description("dev", "allowedGroups")]
    da.handle_resource(event([], [], "update"), settings=EVERYONE_SETTINGS, directory=d, ssm=None)
    assert people(d) == ["alice", "bob"]  # physics left: no group is a member in everyone mode


def test_the_schedule_adds_a_user_created_since_and_drops_a_member_added_by_hand():
    d = people_site("alice", "bob")
    da.handle_resource(event([], []), settings=EVERYONE_SETTINGS, directory=d, ssm=None)
    dn, obj = person("carol", f"OU=Staff,{BASE}")
    d.objects[dn] = obj
    d.objects[da.access_group_dn(LAYOUT, USERS)]["member"].append(f"CN=hpc-admins,CN=Users,{BASE}")  # by hand
    d.writes.clear()
    out = da.access_sync(settings=EVERYONE_SETTINGS, directory=OwnOu(d))
    assert out["added"] == [dn] and out["removed"] == [f"CN=hpc-admins,CN=Users,{BASE}"], out
    assert people(d) == ["alice", "bob", "carol"]
    assert len(d.writes) == 1  # one guarded modify


class OwnOu:
    """The directory with the stack's OU marked as this deployment's (what the setup Invocation does)."""

    def __init__(self, d: MemDirectory):
        self.d = d

    def __getattr__(self, name):
        return getattr(self.d, name)

    def owner_value_of(self, kind):
        return da.owner_value("directory-admin-setup@f", "dep-12345678")


def test_the_schedule_writes_nothing_while_the_configured_groups_are_members():
    d = people_site("alice")
    da.handle_resource(event(["physics"], []), settings=EVERYONE_SETTINGS, directory=d, ssm=None)
    d.writes.clear()
    out = da.access_sync(settings=EVERYONE_SETTINGS, directory=OwnOu(d))
    assert out["result"].startswith("members of the configured groups") and d.writes == []
    assert members(d, USERS) == [f"CN=physics,OU=Groups,{BASE}"]


def test_the_schedule_writes_nothing_in_an_ou_of_another_deployment():
    d = people_site("alice")
    da.handle_resource(event([], []), settings=EVERYONE_SETTINGS, directory=d, ssm=None)
    other = da.Settings(**{**EVERYONE_SETTINGS.__dict__, "deployment_id": "dep-other-1"})
    d.writes.clear()
    out = da.access_sync(settings=other, directory=OwnOu(d))
    assert out["result"] == "not ours" and d.writes == []


class ClosingMidway(MemDirectory):
    """A closing update (the access Invocation) lands between the sync's read and its write."""

    def user_accounts(self, never):
        found = super().user_accounts(never)
        dn = da.access_group_dn(LAYOUT, USERS)
        self.objects[dn]["description"] = [da.members_description("dev", "allowedGroups")]
        self.objects[dn]["member"] = [f"CN=physics,OU=Groups,{BASE}"]
        return found


def test_a_sync_that_races_a_closing_update_never_reopens_the_group():
    d = people_site("alice")
    da.handle_resource(event([], []), settings=EVERYONE_SETTINGS, directory=d, ssm=None)
    racing = ClosingMidway(d.objects)
    dn, obj = person("mallory")
    racing.objects[dn] = obj
    out = da.access_sync(settings=EVERYONE_SETTINGS, directory=OwnOu(racing))
    assert out["result"] == "the group's mode changed meanwhile: not synced", out
    assert members(racing, USERS) == [f"CN=physics,OU=Groups,{BASE}"]


def test_a_large_domain_is_written_in_chunks_each_asserting_the_mode():
    d = people_site(*(f"u{i:04d}" for i in range(2500)))
    out = da.handle_resource(event([], []), settings=EVERYONE_SETTINGS, directory=d, ssm=None)
    modifies = [w for w in d.writes if w[0] == "modify"]
    assert len(modifies) == 3 and all(w[2] == ("description", "member") for w in modifies), modifies
    assert out["users"]["members"] == 2500 and len(members(d, USERS)) == 2500
