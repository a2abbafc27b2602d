"""Config of the directory admin (issue 10): the stack's own computer-adding account by default (issue 16:
`pcad-add-<stack>`, only "create computer objects" in the cluster's OU), users and groups as code,
validated offline with every problem naming its key."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from pcluster_ad.stack_config import ConfigError, default_join_user, parse_settings, physical_names
from tests.conftest import stack_doc


def raw(**over: Any) -> dict[str, Any]:
    r = copy.deepcopy(stack_doc("dev")["config"])
    r.pop("pcluster-ad:join", None)
    r.update({f"pcluster-ad:{k}": v for k, v in over.items()})
    if "adminUser" not in r.get("pcluster-ad:directory", {}) and r["pcluster-ad:directory"]["type"] == "Existing":
        r.pop("pcluster-ad:identity", None)  # rfc2307 (the sample's) needs admin credentials
    return r


def problems(r: dict[str, Any], stack: str = "dev") -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_settings(r, stack=stack)
    return [str(p) for p in err.value.problems]


GROUPS = [{"name": "hpc-users", "description": "HPC users"}, {"name": "gpu"}]
USERS = [{"name": "alice", "groups": ["hpc-users", "gpu"], "displayName": "Alice A", "email": "alice@example.com"},
         {"name": "bob", "groups": ["hpc-users"]}]


def test_default_join_account_is_the_stacks_own():
    s = parse_settings(raw(), stack="dev")
    # A new name (it was pcad-join-<stack>): the first `up` creates a fresh account and deletes the old one.
    assert s.join.user == "pcad-add-dev" and s.join.managed and s.directory_admin
    assert s.warnings == ()
    assert default_join_user("a-rather-long-stack-name") == "pcad-add-a-rather-lo"
    assert len(default_join_user("x" * 45)) == 20
    long = parse_settings(raw(), stack="team-analytics-prod")
    assert long.join.user == "pcad-add-team-analyt"
    assert physical_names("dev", "eu-west-1")["directory_admin_role"] == "pcad-dev-eu-west-1-dir"
    managed = parse_settings(raw(directory={"type": "MicrosoftAD", "domainName": "corp.example.com"}), stack="dev")
    assert managed.join.user == "pcad-add-dev" and managed.join.managed


def test_explicit_admin_join_account_works_with_a_warning():
    s = parse_settings(raw(join={"user": "Administrator"}), stack="dev")
    assert s.join.user == "Administrator" and not s.join.managed
    (w,) = s.warnings
    assert "pcluster-ad:join.user" in w and "directory administrator" in w and "pcad-add-dev" in w
    assert "the join function holds the admin password" in w and "nodes never get it" in w
    named = parse_settings(raw(join={"user": "svc-hpc-join"}), stack="dev")
    assert named.join.user == "svc-hpc-join" and named.join.managed and named.warnings == ()


def test_existing_directory_keeps_its_configured_account():
    r = raw(directory={"type": "Existing", "domainName": "corp.example.com", "dnsIps": ["10.0.0.10", "10.0.1.10"]},
            join={"user": "svc-join"})
    s = parse_settings(r, stack="dev", join_password="Corr3ct-Horse-Battery")
    assert s.join.user == "svc-join" and not s.join.managed and not s.directory_admin
    r["pcluster-ad:users"] = [{"name": "alice"}]
    found = problems(r)
    assert any(p.startswith("pcluster-ad:users: applies only to a directory created here") for p in found), found


def test_users_and_groups_parse():
    s = parse_settings(raw(groups=GROUPS, users=USERS), stack="dev")
    assert [(g.name, g.description) for g in s.groups] == [("hpc-users", "HPC users"), ("gpu", "")]
    alice, bob = s.users
    assert (alice.name, alice.groups, alice.display_name, alice.email) == (
        "alice", ("hpc-users", "gpu"), "Alice A", "alice@example.com")
    assert bob.groups == ("hpc-users",) and bob.display_name == ""


@pytest.mark.parametrize("over,key,message", [
    ({"join": {"user": "pcad-join-much-too-long"}}, "pcluster-ad:join.user", "at most 20"),
    ({"join": {"user": "join*svc"}}, "pcluster-ad:join.user", "contains"),
    ({"users": [{"name": "a-very-long-user-name-x"}]}, "pcluster-ad:users[0].name", "at most 20"),
    ({"users": [{"name": "al;ce"}]}, "pcluster-ad:users[0].name", "contains"),
    ({"groups": [{"name": "grp[1]"}]}, "pcluster-ad:groups[0].name", "contains"),
    ({"groups": GROUPS, "users": [{"name": "carol", "groups": ["gpu", "nope"]}]},
     "pcluster-ad:users[0].groups[1]", "'nope' is not declared in pcluster-ad:groups"),
    ({"users": [{"name": "carol", "groups": ["hpc-users"]}]}, "pcluster-ad:users[0].groups[0]", "not declared"),
    ({"users": [{"name": "alice"}, {"name": "Alice"}]}, "pcluster-ad:users[1].name", "declared twice"),
    ({"groups": [{"name": "gpu"}], "users": [{"name": "GPU"}]}, "pcluster-ad:users[0].name", "declared twice"),
    ({"groups": [{"name": "gpu"}, {"name": "gpu"}]}, "pcluster-ad:groups[1].name", "declared twice"),
    ({"users": [{"name": "alice", "email": "not-an-address"}]}, "pcluster-ad:users[0].email", "not an e-mail"),
    ({"users": [{"name": "alice", "group": ["x"]}]}, "pcluster-ad:users[0].group", "did you mean 'groups'"),
    ({"users": [{"groups": []}]}, "pcluster-ad:users[0].name", "is required"),
    ({"users": {"alice": {}}}, "pcluster-ad:users", "must be a list"),
    ({"groups": GROUPS, "users": [{"name": "bob", "groups": ["gpu", "GPU"]}]}, "pcluster-ad:users[0].groups",
     "twice"),
])
def test_bad_input_is_refused_naming_the_key(over, key, message):
    found = problems(raw(**over))
    assert any(p.startswith(key + ":") and message in p for p in found), found


# -- the real program wires it --------------------------------------------------------------------------

def test_program_wires_the_directory_admin(run_stack):
    import json

    import yaml

    from pcluster_ad.tools.mocks import is_secret_value

    def edit(c):
        c["pcluster-ad:groups"] = GROUPS
        c["pcluster-ad:users"] = USERS

    g = run_stack(edit)
    setup = json.loads(g.named("directory-admin-setup").inputs["input"])
    assert "joinUser" not in setup and setup["ou"] == "pcluster-ad-dev" and setup["setupVersion"] == 2
    env = g.named("directory-admin-fn").inputs["environment"]["variables"]
    assert env["JOIN_USER"] == "pcad-add-dev" and env["STACK"] == "dev"
    # The join parameters hold the stack's computer-adding account and a password of its own (not the
    # admin's), from a RandomPassword with a new logical name: existing stacks get a new password.
    assert g.named("join-secrets-join-user").inputs["value"] is not None
    password_deps = g.dependency_names(g.named("join-secrets-join-password"))
    assert "adding-account-password" in password_deps and "directory-admin-password" not in password_deps
    assert "join-password" not in {r.name for r in g.resources}
    assert is_secret_value(g.named("join-secrets-join-password").inputs["value"])
    # Nodes join into the cluster's OU under collision-free names; the cluster waits for the OU and the
    # join account (and goes first on destroy).
    config = yaml.safe_load(g.outputs["clusterConfig"])
    args = config["HeadNode"]["CustomActions"]["OnNodeStart"]["Args"]
    assert args[args.index("--computer-ou") + 1] == "OU=Computers,OU=pcluster-ad-dev,DC=test,DC=domain"
    from pcluster_ad.lambda_src.directory_admin import computer_prefix

    assert args[args.index("--computer-prefix") + 1] == computer_prefix("hpc-dev")
    for q in config["Scheduling"]["SlurmQueues"]:
        assert "--computer-ou" in q["CustomActions"]["OnNodeStart"]["Args"]
    assert "directory-admin-setup" in g.dependency_names(g.named("cluster-pcluster"))
    assert {r.name for r in g.of_type("aws:lambda/invocation:Invocation")} == {
        "directory-admin-setup", "directory-admin-group-hpc-users", "directory-admin-group-gpu",
        "directory-admin-user-alice", "directory-admin-user-bob", "directory-admin-access"}
    assert g.outputs["userInitialPasswordParameters"] == {
        "alice": "/pcluster-ad/dev/users/alice/initial-password", "bob": "/pcluster-ad/dev/users/bob/initial-password"}
    # The stack key lets the directory-admin role decrypt; the function is in the private subnets.
    key = json.loads(g.named("join-secrets-key").inputs["policy"])
    reader = next(s for s in key["Statement"] if s["Sid"] == "ReaderRoleDecryptsViaSsm")
    assert any(a.endswith(":role/pcad-dev-eu-west-1-dir") for a in reader["Condition"]["ArnEquals"]["aws:PrincipalArn"])
    fn = g.named("directory-admin-fn").inputs
    private = ["<after-deploy:network-private-a.id>", "<after-deploy:network-private-b.id>"]
    assert fn["vpcConfig"]["subnetIds"] == private
    assert fn["environment"]["variables"]["WINDOW_TABLE"] == "pcad-dev-eu-west-1-join-windows"


def test_program_managed_ad_puts_the_ou_under_the_delegated_ou(run_stack):

    g = run_stack(lambda c: c.update({"pcluster-ad:directory": {"type": "MicrosoftAD",
                                                                 "domainName": "corp.example.com"}}))
    env = g.named("directory-admin-fn").inputs["environment"]["variables"]
    assert env["PARENT_DN"] == "OU=CORP,DC=corp,DC=example,DC=com" and env["ADMIN_USER"] == "Admin"
    assert g.outputs["computerOu"] == "OU=Computers,OU=pcluster-ad-dev,OU=CORP,DC=corp,DC=example,DC=com"
    assert g.named("directory-admin-fn").inputs["environment"]["variables"]["JOIN_USER"] == "pcad-add-dev"


def test_program_admin_as_join_account_creates_none(run_stack):
    import json

    g = run_stack(lambda c: c.update({"pcluster-ad:join": {"user": "Administrator"}}))
    setup = json.loads(g.named("directory-admin-setup").inputs["input"])
    assert "joinUser" not in setup and "joinPasswordVersion" not in setup  # the OU, no account of its own
    assert "JOIN_USER" not in g.named("directory-admin-fn").inputs["environment"]["variables"]
    assert "directory-admin-password" in g.dependency_names(g.named("join-secrets-join-password"))


def test_program_existing_directory_has_no_directory_admin(run_stack):
    import yaml

    def edit(c):
        c["pcluster-ad:directory"] = {"type": "Existing", "domainName": "corp.example.com",
                                      "dnsIps": ["10.0.0.10", "10.0.1.10"]}
        c["pcluster-ad:join"] = {"user": "svc-join"}
        c.pop("pcluster-ad:identity", None)  # rfc2307 (the sample's) needs admin credentials

    g = run_stack(edit, secrets={"pcluster-ad:joinPassword": "Corr3ct-Horse-Battery"})
    assert not [r for r in g.resources if r.name.startswith("directory-admin")]
    args = yaml.safe_load(g.outputs["clusterConfig"])["HeadNode"]["CustomActions"]["OnNodeStart"]["Args"]
    assert "--computer-ou" not in args and "--computer-prefix" in args  # names stay collision-free


def test_plan_prints_the_admin_join_warning(tmp_path):
    import subprocess
    import sys

    import yaml

    from tests.conftest import ROOT

    doc = stack_doc("dev")
    doc["config"]["pcluster-ad:join"] = {"user": "Administrator"}
    cfg = tmp_path / "Pulumi.mine.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    res = subprocess.run([sys.executable, "-m", "pcluster_ad.tools.plan", "--config-file", str(cfg),
                          "--out", str(tmp_path / "o")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "warning: pcluster-ad:join.user is the directory administrator 'Administrator'" in res.stderr


EXISTING = {"type": "Existing", "domainName": "corp.example.com", "dnsIps": ["10.0.0.10", "10.0.1.10"],
            "directoryId": "d-1234567890", "adminUser": "Admin", "parentOu": "OU=CORP,DC=corp,DC=example,DC=com"}


def test_existing_directory_with_admin_credentials_is_managed_the_same_way():
    s = parse_settings(raw(directory=EXISTING, users=[{"name": "alice"}]), stack="dev",
                       admin_password="any-Existing-pw")
    assert s.directory_admin and s.join.user == "pcad-add-dev" and s.join.managed
    assert s.directory.admin_account == "Admin" and s.directory.parent_ou == EXISTING["parentOu"]
    assert [u.name for u in s.users] == ["alice"]


@pytest.mark.parametrize("change,key,message", [
    ({"directoryId": None}, "pcluster-ad:directory.directoryId", "is required with directory.adminUser"),
    ({"parentOu": "CN=Users,DC=corp"}, "pcluster-ad:directory.parentOu", "is not an OU's DN"),
    ({"adminUser": "CORP\\Admin"}, "pcluster-ad:directory.adminUser", "bare account name"),
])
def test_existing_directory_admin_settings_are_checked(change, key, message):
    d = {k: v for k, v in {**EXISTING, **change}.items() if v is not None}
    with pytest.raises(ConfigError) as err:
        parse_settings(raw(directory=d), stack="dev", admin_password="any-Existing-pw")
    found = [str(p) for p in err.value.problems]
    assert any(p.startswith(key + ":") and message in p for p in found), found


def test_existing_directory_admin_user_needs_the_password_and_created_ones_refuse_the_keys():
    with pytest.raises(ConfigError) as err:
        parse_settings(raw(directory=EXISTING), stack="dev")
    assert any(str(p).startswith("pcluster-ad:adminPassword: is required with directory.adminUser")
               for p in err.value.problems)
    found = problems(raw(directory={"type": "SimpleAD", "domainName": "test.domain", "adminUser": "x"}))
    assert any(p.startswith("pcluster-ad:directory.adminUser: applies only to type Existing") for p in found), found


def test_program_existing_directory_with_admin_credentials(run_stack):

    g = run_stack(lambda c: c.update({"pcluster-ad:directory": EXISTING}),
                  secrets={"pcluster-ad:adminPassword": "any-Existing-pw"})
    env = g.named("directory-admin-fn").inputs["environment"]["variables"]
    assert env["ADMIN_USER"] == "Admin" and env["PARENT_DN"] == EXISTING["parentOu"]
    assert env["DIRECTORY_ID"] == "d-1234567890" and env["DNS_IPS"] == "10.0.0.10,10.0.1.10"
    assert env["JOIN_USER"] == "pcad-add-dev"
    assert "directoryAdminPassword" not in g.outputs  # the directory's own password is not re-exported
    assert g.outputs["computerOu"] == "OU=Computers,OU=pcluster-ad-dev,OU=CORP,DC=corp,DC=example,DC=com"


def test_program_keys_users_without_case(run_stack):
    """A case-only rename (alice -> Alice) keeps every resource: the Invocation is UPDATED (its input's name
    changes; the function renames the account in place, issue 17 finding 7), nothing is deleted and created
    but the initial-password parameter, whose SSM name carries the spelling (SSM names are case-sensitive)."""
    import json

    def users(name: str):
        return lambda c: c.update({"pcluster-ad:groups": GROUPS, "pcluster-ad:users": [{**USERS[0], "name": name}]})

    before, after = run_stack(users("alice")), run_stack(users("Alice"))
    assert {r.urn for r in before.resources} == {r.urn for r in after.resources}
    old, new = (json.loads(g.named("directory-admin-user-alice").inputs["input"]) for g in (before, after))
    assert old["name"] == "alice" and new == {**old, "name": "Alice"}
    param = "directory-admin-user-alice-initial-password"
    assert after.named(param).inputs["name"] == "/pcluster-ad/dev/users/Alice/initial-password"
    was = {r["name"]: r for r in before.to_plan()}
    changed = {r["name"] for r in after.to_plan() if r != was[r["name"]]}
    assert changed == {"directory-admin-user-alice", param}
