"""Attack review of issue 18 against the lab's real Samba DC: the stack's access groups (pca-<stack>-users /
-admins) decide who logs in on every node (ad_access_filter, in-chain membership) and who gets sudo. Only the
stack's admin (DirectoryAdmin's admin account) may write their `member`: not an ordinary directory user, not the
computer-adding account (the join function's; the node role can reach that function), not a computer account an
ordinary user created through ms-DS-MachineAccountQuota.

The product's real handler (dirsvc) makes the groups. Attacks refused today are plain tests; findings would be
xfail(strict=True) (the unit side: tests/test_attack_issue18.py)."""

from __future__ import annotations

import pytest

from lambda_src.directory_admin import access_group_names

from .test_directory_admin import BASE, JOIN_USER, PEOPLE_DN, STACK, dc_search, env, lab, ldap_as  # noqa: F401

pytestmark = pytest.mark.adlab

NAMES = access_group_names(STACK)
USERS_DN = f"CN={NAMES['users']},{PEOPLE_DN}"
ADMINS_DN = f"CN={NAMES['admins']},{PEOPLE_DN}"
MALLORY, MALLORY_PW = "mallory", "Mall0ry-Pw-2026!x"
MALLORY_DN = f"CN={MALLORY},CN=Users,{BASE}"


@pytest.fixture(scope="module")
def groups(env):  # noqa: F811
    env.lab.populate({"users": [{"name": MALLORY, "password": MALLORY_PW}],
                      "groups": [{"name": "physics18", "members": []}, {"name": "ops18", "members": []}]})
    out = env.svc.ok("handle", event={"resource": "access", "allowedGroups": ["physics18"], "adminGroups": ["ops18"],
                                      "tf": {"action": "create", "prev_input": {}}})["result"]
    assert out["users"]["dn"].lower() == USERS_DN.lower() and out["admins"]["dn"].lower() == ADMINS_DN.lower(), out
    (me,) = dc_search(env.lab, BASE, f"(sAMAccountName={MALLORY})", ["distinguishedName"])
    return {"mallory_dn": me["dn"]}


def members(env, dn: str) -> list[str]:  # noqa: F811
    (hit,) = dc_search(env.lab, dn, "(objectClass=group)", ["member"], scope="base")
    return [m.lower() for m in hit.get("member", [])]


@pytest.mark.parametrize("target", ["users", "admins"])
def test_refused_an_ordinary_user_cannot_add_herself_to_a_stack_group(env, groups, target):  # noqa: F811
    """Attacker (4): mallory, an ordinary directory user, adds herself (the Self-Membership validated write) to the
    stack's users / admins group. Refused: only the stack's admin writes those groups."""
    dn = USERS_DN if target == "users" else ADMINS_DN
    (got,) = ldap_as(env, MALLORY, MALLORY_PW, [{"op": "add_member", "dn": dn, "member": groups["mallory_dn"]}])
    assert got["ok"] is False and got["result"] == "insufficientAccessRights", got
    assert groups["mallory_dn"].lower() not in members(env, dn)


@pytest.mark.parametrize("target", ["users", "admins"])
def test_refused_the_computer_adding_account_cannot_write_a_stack_group(env, groups, target):  # noqa: F811
    """Attacker (3): the node role reaches the join function, whose account adds computers. That account cannot
    add anything to the stack's groups (its one ACE is on OU=Computers)."""
    dn = USERS_DN if target == "users" else ADMINS_DN
    (got,) = ldap_as(env, JOIN_USER, env.join_password,
                     [{"op": "add_member", "dn": dn, "member": groups["mallory_dn"]}])
    assert got["ok"] is False and got["result"] in ("insufficientAccessRights", "noSuchObject"), got
    assert groups["mallory_dn"].lower() not in members(env, dn)


def test_refused_an_ordinary_user_cannot_plant_a_group_in_the_stack_ou_or_create_one(env, groups):  # noqa: F811
    """Attacker (4): mallory tries to create a group in the stack's OU=Users (where the stack's DN is), and a group
    named like the stack's users group elsewhere (CN=Users): both refused (no create-child for ordinary users; the
    name is taken anyway, sAMAccountName is unique, and the filter names the DN, not the name)."""
    got = ldap_as(env, MALLORY, MALLORY_PW, [
        {"op": "add", "dn": f"CN=evil18,{PEOPLE_DN}", "classes": ["top", "group"],
         "attrs": {"sAMAccountName": "evil18"}},
        {"op": "add", "dn": f"CN={NAMES['users']},CN=Users,{BASE}", "classes": ["top", "group"],
         "attrs": {"sAMAccountName": "pca18-lookalike"}},
    ])
    assert all(g["ok"] is False for g in got), got
    assert not dc_search(env.lab, BASE, "(|(sAMAccountName=evil18)(sAMAccountName=pca18-lookalike))")


def test_refused_a_machine_account_quota_computer_cannot_join_a_stack_group(env, groups):  # noqa: F811
    """Attacker (4): by default any user may add computer accounts (ms-DS-MachineAccountQuota = 10). mallory adds
    one in CN=Computers and then tries to put it into the stack's users group: refused.
    (Even inside, the filter's (!(objectClass=computer)) keeps it out: tests/test_attack_issue18.py.)"""
    comp = f"CN=MAL18PC,CN=Computers,{BASE}"
    got = ldap_as(env, MALLORY, MALLORY_PW, [
        {"op": "add", "dn": comp, "classes": ["top", "person", "organizationalPerson", "user", "computer"],
         "attrs": {"sAMAccountName": "MAL18PC$", "userAccountControl": "4096"}},
        {"op": "add_member", "dn": USERS_DN, "member": comp},
    ])
    # Samba 4.17 refuses this add over a simple bind (a computer needs more than these attributes, or LDAPS for
    # its password); whether it exists or not, the write to the stack's group is refused.
    assert got[1]["ok"] is False, got
    assert got[1]["result"] in ("insufficientAccessRights", "noSuchObject"), got
    (again,) = ldap_as(env, MALLORY, MALLORY_PW, [{"op": "add_member", "dn": USERS_DN, "member": groups["mallory_dn"]}])
    assert again["ok"] is False and again["result"] == "insufficientAccessRights", again
    assert comp.lower() not in members(env, USERS_DN)


def test_the_stack_groups_hold_exactly_the_configured_groups(env, groups):  # noqa: F811
    """After the attacks: the users group holds physics18 only, the admins group ops18 only."""
    assert [m.split(",")[0] for m in members(env, USERS_DN)] == ["cn=physics18"]
    assert [m.split(",")[0] for m in members(env, ADMINS_DN)] == ["cn=ops18"]
