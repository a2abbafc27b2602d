"""Issue 18: the stack's two access groups (pca-<stack>-users / -admins) as DirectoryAdmin keeps them, on an
in-memory directory (the LDAP side against a real Samba DC: tests/adlab/test_access_directory.py)."""

from __future__ import annotations

import re

import pytest

from lambda_src import directory_admin as da
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

    def _hit(self, dn):
        return {"dn": dn, "attributes": dict(self.objects[dn])}

    def search(self, base, flt, attrs=(), *, scope="SUBTREE", controls=None):
        if scope == "BASE":
            return [self._hit(dn) for dn in self.objects if dn.lower() == base.lower()]
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


def group(name: str, parent: str = f"CN=Users,{BASE}") -> tuple[str, dict]:
    return f"CN={name},{parent}", {"objectClass": ["top", "group"], "sAMAccountName": [name]}


def site() -> MemDirectory:
    return MemDirectory(dict([group("hpc-users"), group("hpc-admins"), group("Domain Admins"),
                              group("physics", f"OU=Groups,{BASE}")]))


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
    # One write: the users group's members (the admins group is not touched, nothing created).
    assert d.writes == [("replace", da.access_group_dn(LAYOUT, USERS), ("member",))]
    # An empty list empties the group.
    da.handle_resource(event([], [], "update"), settings=SETTINGS, directory=d, ssm=None)
    assert members(d, USERS) == [] and members(d, ADMINS) == []


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
