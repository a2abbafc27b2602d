"""The plan warns about adminGroups members and declared users who cannot log in (issue 18): what the stack file
alone tells (the directory decides nested membership at each login)."""

from __future__ import annotations

import copy
from typing import Any

from pcluster_ad.stack_config import parse_settings
from tests.conftest import stack_doc


def settings(**over: Any):
    r = copy.deepcopy(stack_doc("dev")["config"])
    r.update({f"pcluster-ad:{k}": v for k, v in over.items()})
    return parse_settings(r, stack="dev")


def access_warnings(s) -> list[str]:
    return [w for w in s.warnings if "access." in w]


def test_an_admin_group_outside_the_allowed_groups_is_named():
    s = settings(access={"allowedGroups": ["hpc-users"], "adminGroups": ["ops", "HPC-Users"]})
    (w,) = access_warnings(s)
    assert w.startswith("pcluster-ad:access.adminGroups[0] 'ops' is not in pcluster-ad:access.allowedGroups"), w
    assert "add 'ops' to allowedGroups" in w


def test_no_warning_when_every_user_may_log_in_or_admins_are_allowed():
    assert access_warnings(settings(access={"allowedGroups": [], "adminGroups": ["ops"]})) == []
    assert access_warnings(settings(access={"allowedGroups": ["ops", "hpc"], "adminGroups": ["OPS"]})) == []


def test_a_declared_user_in_no_allowed_group_is_named():
    s = settings(access={"allowedGroups": ["hpc-users"], "adminGroups": []},
                 groups=[{"name": "hpc-users"}, {"name": "gpu"}],
                 users=[{"name": "alice", "groups": ["hpc-users", "gpu"]}, {"name": "carol", "groups": ["gpu"]}])
    (w,) = access_warnings(s)
    assert w.startswith("pcluster-ad:users 'carol' is in none of pcluster-ad:access.allowedGroups (hpc-users)"), w
