"""Issue 18, stable POSIX identities: pcluster-ad:identity and the pins users[].uid / groups[].gid (stack_config.py),
what the program hands DirectoryAdmin (the function's ID_MIN / ID_MAX, pins in the Invocations' inputs), the
`identities` output and the plan's warning when UIDs stay ID-mapped."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from typing import Any

import pytest

from pcluster_ad.stack_config import ConfigError, IdentitySettings, parse_settings
from tests.conftest import ROOT, stack_doc

ID = "pcluster-ad:identity"


def raw(**over: Any) -> dict[str, Any]:
    r = copy.deepcopy(stack_doc("dev")["config"])
    r.update({f"pcluster-ad:{k}": v for k, v in over.items()})
    return r


def problems(r: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_settings(r, stack="dev")
    return [str(p) for p in err.value.problems]


def test_default_is_idmap_with_the_range_below_sssds_idmap_range():
    r = raw()
    r.pop(ID)
    s = parse_settings(r, stack="dev")
    assert s.identity == IdentitySettings(mode="idmap", id_min=100000, id_max=199999)
    assert s.identity.id_max < 200000  # sssd's ldap_idmap_range_min: the two never meet
    assert s.warnings == ()  # no users declared: nothing to warn about


def test_the_samples_set_rfc2307():
    for stack in ("dev", "prod"):
        assert parse_settings(stack_doc(stack)["config"], stack=stack).identity.mode == "rfc2307"


def test_pins_and_range_are_exposed():
    s = parse_settings(raw(identity={"mode": "rfc2307", "idRange": {"min": 300000, "max": 399999}},
                           groups=[{"name": "physics", "gid": 5001}, {"name": "chem"}],
                           users=[{"name": "alice", "uid": 5012, "groups": ["physics"]}, {"name": "bob"}]),
                       stack="dev")
    assert (s.identity.mode, s.identity.id_min, s.identity.id_max) == ("rfc2307", 300000, 399999)
    assert dict(s.identity.uid_pins) == {"alice": 5012} and dict(s.identity.gid_pins) == {"physics": 5001}
    assert [u.uid for u in s.users] == [5012, None] and [g.gid for g in s.groups] == [5001, None]


@pytest.mark.parametrize("over,key,message", [
    ({"identity": {"mode": "posix"}}, "identity.mode", "must be one of idmap, rfc2307"),
    ({"identity": {"idRange": {"min": 500, "max": 9999}}}, "identity.idRange.min", "below 2000"),
    ({"identity": {"idRange": {"min": 100000, "max": 2**31}}}, "identity.idRange.max", "above 2147483647"),
    ({"identity": {"idRange": {"min": 200000, "max": 100000}}}, "identity.idRange", "min 200000 must be below max"),
    ({"identity": {"idRange": {"min": 1000, "maxi": 2000}}}, "identity.idRange.maxi", "did you mean 'max'"),
    ({"identity": {"mod": "rfc2307"}}, "identity.mod", "did you mean 'mode'"),
    ({"users": [{"name": "alice", "uid": 999}]}, "users[0].uid", "outside 2000..2147483647"),
    ({"users": [{"name": "alice", "uid": "x"}]}, "users[0].uid", "whole number"),
    ({"groups": [{"name": "g", "gid": 7000}], "users": [{"name": "alice", "uid": 7000}]},
     "groups[g].gid", "also pinned at pcluster-ad:users[alice].uid"),
    ({"directory": {"type": "Existing", "domainName": "corp.example.com", "dnsIps": ["10.0.0.10"]},
      "join": {"user": "svc-join"}}, "identity.mode", "rfc2307 needs the stack to allocate"),
])
def test_bad_identity_config_is_refused_naming_the_key(over, key, message):
    found = problems(raw(**over))
    hits = [p for p in found if p.startswith(f"pcluster-ad:{key}: ") and message in p]
    assert hits, found


def test_idmap_with_users_warns_and_the_plan_prints_it(tmp_path):
    s = parse_settings(raw(identity={"mode": "idmap"}, users=[{"name": "alice"}]), stack="dev")
    (warning,) = [w for w in s.warnings if "identity" in w]
    assert "UIDs derive from SIDs" in warning and "set pcluster-ad:identity.mode: rfc2307" in warning
    assert "README 'Stable UIDs'" in warning
    stack_file = tmp_path / "Pulumi.idm.yaml"
    doc = stack_doc("dev")
    doc["config"].update({ID: {"mode": "idmap"}, "pcluster-ad:users": [{"name": "alice"}]})
    import yaml

    stack_file.write_text(yaml.safe_dump(doc))
    res = subprocess.run([sys.executable, "-m", "pcluster_ad.tools.plan", "--config-file", str(stack_file), "--out",
                          str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "warning: pcluster-ad:identity.mode is idmap and pcluster-ad:users are declared: UIDs derive from SIDs" \
        in res.stderr


def test_the_program_hands_directory_admin_the_range_and_the_pins(run_stack):
    def edit(c):
        c[ID] = {"mode": "rfc2307", "idRange": {"min": 300000, "max": 399999}}
        c["pcluster-ad:groups"] = [{"name": "physics", "gid": 5001}]
        c["pcluster-ad:users"] = [{"name": "alice", "uid": 5012, "groups": ["physics"]}, {"name": "bob"}]

    g = run_stack(edit)
    (fn,) = [f for f in g.of_type("aws:lambda/function:Function") if f.inputs["name"].endswith("-dir")]
    env = fn.inputs["environment"]["variables"]
    assert (env["ID_MIN"], env["ID_MAX"]) == ("300000", "399999")
    inputs = {r.name: json.loads(r.inputs["input"]) for r in g.of_type("aws:lambda/invocation:Invocation")}
    assert inputs["directory-admin-user-alice"]["uid"] == 5012 and "uid" not in inputs["directory-admin-user-bob"]
    assert inputs["directory-admin-group-physics"]["gid"] == 5001
    for name in ("directory-admin-user-alice", "directory-admin-user-bob", "directory-admin-group-physics",
                 "directory-admin-access"):
        assert inputs[name]["identityVersion"] == 1, name  # existing Invocations re-run once: numbers for all
    # The output lists every declared name and the access groups (numbers: the function's answers at deploy).
    assert set(g.outputs["identities"]) == {"alice", "bob", "physics", "pca-dev-users", "pca-dev-admins"}
    assert set(g.outputs["identities"]["alice"]) == {"uid", "gid"}


def test_the_identities_output_reads_the_functions_answers():
    from pcluster_ad.components.directory_admin import identities_from

    results = [json.dumps({"uidNumber": 100002, "gidNumber": 100002}), json.dumps({"gidNumber": 100000}),
               json.dumps({"users": {"gidNumber": 100003}, "admins": {"gidNumber": 100004}})]
    got = identities_from(["alice"], ["physics"], {"users": "pca-dev-users", "admins": "pca-dev-admins"}, results)
    assert got == {"alice": {"uid": 100002, "gid": 100002}, "physics": {"gid": 100000},
                   "pca-dev-users": {"gid": 100003}, "pca-dev-admins": {"gid": 100004}}
    # A preview (no answer yet) or an answer without numbers (an older function): None, not an error.
    assert identities_from(["alice"], [], {"users": "u"}, [None, "not json"]) == {
        "alice": {"uid": None, "gid": None}, "u": {"gid": None}}
