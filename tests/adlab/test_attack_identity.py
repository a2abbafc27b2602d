"""Attacks on stable POSIX identities (issue 18) against the lab's Samba DC: an AD user with her password (a shell on
any node gives her that much) tries to change the numbers that rfc2307 nodes take from the directory. Her own
uidNumber set to another user's makes her that user on every node (his files, his jobs); gidNumber set to a group's
gives her its files. Each write is made over sealed LDAP as her and must be refused (insufficientAccessRights).
Why this holds on Windows DCs (AWS Managed AD) too: a user's SELF rights cover property sets (Personal-Information
and others), and uidNumber, gidNumber, unixHomeDirectory and loginShell carry no attributeSecurityGUID in the AD
schema (MS-ADA3, the schema files Samba ships: checked), so no property set holds them; the default descriptors are
the same (MS-ADTS) in Samba."""

from __future__ import annotations

import pytest

from .conftest import USERS
from .test_directory_admin import BASE, dc_as, dc_search, lab  # noqa: F401

pytestmark = pytest.mark.adlab


def dn_of(lab, name: str) -> str:  # noqa: F811
    (hit,) = dc_search(lab, BASE, f"(sAMAccountName={name})")
    return hit["dn"]


@pytest.mark.parametrize("attr,value", [("uidNumber", "150777"), ("gidNumber", "150777"),
                                        ("unixHomeDirectory", "/home/bob"), ("loginShell", "/bin/evil")])
def test_a_user_cannot_change_her_own_posix_attributes(lab, attr, value):  # noqa: F811
    lab.dc.run(["samba-tool", "user", "addunixattrs", "alice", "150700", "--gid-number", "150700"], check=False)
    me = dn_of(lab, "alice")
    (res,) = dc_as(lab, "alice", USERS["alice"], [{"op": "modify", "dn": me, "attr": attr, "value": value}])
    assert res["result"] == "insufficientAccessRights", res
    after = dc_search(lab, BASE, "(sAMAccountName=alice)", [attr])[0].get(attr, [])
    assert value not in after, after


def test_a_user_cannot_give_another_user_or_a_group_her_numbers(lab):  # noqa: F811
    ops = [{"op": "modify", "dn": dn_of(lab, "bob"), "attr": "uidNumber", "value": "150700"},
           {"op": "modify", "dn": dn_of(lab, "hpc-users"), "attr": "gidNumber", "value": "150700"}]
    assert [r["result"] for r in dc_as(lab, "alice", USERS["alice"], ops)] == ["insufficientAccessRights"] * 2
