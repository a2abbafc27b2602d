"""DirectoryAdmin under Pulumi's mocks: the function in the VPC behind its narrow security group, the
termination rule and the sweep schedule, IAM least privilege, the admin SecureString, the
Invocation resources that drive the directory, and the reproducible code package."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pulumi
import pytest

from pcluster_ad.components.directory_admin import (
    PACKAGED,
    TERMINATED_PATTERN,
    DirectoryAdmin,
    DirectoryAdminArgs,
    DirectoryGroup,
    DirectoryUser,
    code_archive,
    validate,
)
from pcluster_ad.components.join_secrets import JoinSecrets, JoinSecretsArgs
from pcluster_ad.tools.mocks import Graph, PlanMocks, is_secret_value, run_program, unwrap_secrets
from tests.conftest import ROOT

ADMIN_PW = "Adm1n-Secret-Passw0rd!"
DNS = ["10.0.1.10", "10.0.2.10"]
SUBNETS = ["subnet-0aaaaaaaaaaaaaaaa", "subnet-0bbbbbbbbbbbbbbbb"]
ROLE = "pcad-dev-eu-west-1-dir"
DIRECTORY = "d-1234567890"


def admin_program(**over):
    def program() -> None:
        stack = pulumi.get_stack()
        secrets = JoinSecrets("join-secrets", JoinSecretsArgs(
            stack=stack, domain_name="test.domain", join_user=f"pcad-add-{stack}",
            join_password=pulumi.Output.secret("J0in-Passw0rd-xyz!"), reader_role_name="pcad-dev-eu-west-1-join",
            extra_reader_role_names=[ROLE]))
        args = dict(
            stack=stack, role_name=ROLE, cluster_name="hpc", directory_id=DIRECTORY, domain_name="test.domain",
            dns_ips=DNS, vpc_id="vpc-0123456789abcdef0", subnet_ids=SUBNETS, admin_user="Administrator",
            admin_password=pulumi.Output.secret(ADMIN_PW), key_arn=secrets.key_arn, join_user=f"pcad-add-{stack}",
            join_password_parameter_name=secrets.join_password_parameter_name,
            join_password_parameter_arn=secrets.join_password_parameter_arn,
            join_password_version=secrets.join_password_version,
            window_table_name="pcad-dev-eu-west-1-join-windows",
            window_table_arn="arn:aws:dynamodb:eu-west-1:1:table/w",
            groups=[DirectoryGroup("hpc-users", "HPC users"), DirectoryGroup("gpu")],
            users=[DirectoryUser("alice", ("hpc-users", "gpu"), "Alice A", "alice@example.com"),
                   DirectoryUser("bob", ("hpc-users",))],
            code_dir=str(ROOT / "lambda_src"))
        args.update(over)
        DirectoryAdmin("directory-admin", DirectoryAdminArgs(**args))

    return program


def run(**over) -> Graph:
    return run_program(admin_program(**over), config={"aws:region": "eu-west-1"}, stack="dev",
                       mocks=PlanMocks(region="eu-west-1"))


@pytest.fixture(scope="module")
def g() -> Graph:
    return run()


def test_function_in_private_subnets_behind_egress_only_group(g):
    fn = g.named("directory-admin-fn").inputs
    assert fn["runtime"] == "python3.13" and fn["handler"] == "directory_admin.handler"
    assert fn["vpcConfig"]["subnetIds"] == SUBNETS
    assert fn["vpcConfig"]["securityGroupIds"] == ["<after-deploy:directory-admin-sg.id>"]
    sg = g.named("directory-admin-sg").inputs
    assert sg["ingress"] == []
    rules = {(e["protocol"], e["fromPort"], e["toPort"], tuple(e["cidrBlocks"])) for e in sg["egress"]}
    # DNS too: the function resolves through the VPC's DHCP options, which name only the directory's DNS (issue 17).
    assert rules == {("tcp", 389, 389, ("10.0.1.10/32",)), ("tcp", 389, 389, ("10.0.2.10/32",)),
                     ("tcp", 443, 443, ("0.0.0.0/0",))} | {
        (proto, 53, 53, (f"{ip}/32",)) for proto in ("udp", "tcp") for ip in ("10.0.1.10", "10.0.2.10")}
    ldaps = run(ldaps=True).named("directory-admin-sg").inputs["egress"]
    assert {(e["fromPort"], e["cidrBlocks"][0]) for e in ldaps if e["fromPort"] not in (443, 53)} == {
        (p, f"{ip}/32") for p in (389, 636) for ip in DNS}
    env = fn["environment"]["variables"]
    assert env["DNS_IPS"] == ",".join(DNS) and env["OU_NAME"] == "pcluster-ad-dev"
    assert env["ADMIN_PASSWORD_PARAMETER"] == "/pcluster-ad/dev/admin-password"
    assert ADMIN_PW not in json.dumps(env)
    # Every name the function acts on comes from here (issue 16), with the key its parameters must be under.
    assert env["STACK"] == "dev" and env["KMS_KEY_ARN"] == "<after-deploy:join-secrets-key.arn>"
    assert env["JOIN_USER"] == "pcad-add-dev" and env["JOIN_PASSWORD_PARAMETER"] == "/pcluster-ad/dev/join-password"
    none = run(join_user=None).named("directory-admin-fn").inputs["environment"]["variables"]
    assert "JOIN_USER" not in none and "JOIN_PASSWORD_PARAMETER" not in none
    # The function loads this environment (what Lambda gives it), with the resolved values.
    from pcluster_ad.lambda_src.directory_admin import load_settings

    resolved = {"<after-deploy:join-secrets-key.arn>": "arn:aws:kms:r:1:key/k",
                "<after-deploy:directory-admin-deployment.hex>": "0123456789abcdef0123456789abcdef"}  # RandomId.hex
    settings = load_settings({k: resolved.get(str(v), str(v)) for k, v in env.items()})
    assert settings.join_user == "pcad-add-dev" and settings.stack == "dev"
    assert settings.deployment_id == "0123456789abcdef0123456789abcdef"


def test_admin_password_in_its_own_securestring(g):
    p = g.named("directory-admin-admin-password").inputs
    assert p["type"] == "SecureString" and p["keyId"] == "<after-deploy:join-secrets-key.arn>"
    assert p["name"] == "/pcluster-ad/dev/admin-password"
    assert is_secret_value(p["value"]) and unwrap_secrets(p["value"]) == ADMIN_PW
    # The stack key's policy lets exactly the two function roles decrypt (via SSM); no node role.
    key = json.loads(g.named("join-secrets-key").inputs["policy"])
    reader = next(s for s in key["Statement"] if s["Sid"] == "ReaderRoleDecryptsViaSsm")
    arns = reader["Condition"]["ArnEquals"]["aws:PrincipalArn"]
    assert sorted(a.rsplit("/", 1)[1] for a in arns) == sorted(["pcad-dev-eu-west-1-join", ROLE])


def test_event_rule_and_schedule(g):
    term = g.named("directory-admin-terminated").inputs
    assert json.loads(term["eventPattern"]) == TERMINATED_PATTERN
    sweep = g.named("directory-admin-sweep").inputs
    assert sweep["scheduleExpression"] == "rate(1 hour)"  # missed terminations, bounded per run (issue 20)
    # allowedGroups empty: every user account into the stack's users group (README "Who may log in").
    assert g.named("directory-admin-access-sync").inputs["scheduleExpression"] == "rate(5 minutes)"
    for part, payload in (("terminated", None), ("sweep", {"op": "sweep"}), ("access-sync", {"op": "access-sync"})):
        t = g.named(f"directory-admin-{part}-target").inputs
        assert t["arn"] == "<after-deploy:directory-admin-fn.arn>"
        assert (json.loads(t["input"]) if "input" in t else None) == payload
        perm = g.named(f"directory-admin-{part}-permission").inputs
        assert perm["principal"] == "events.amazonaws.com"
        assert perm["sourceArn"] == f"<after-deploy:directory-admin-{part}.arn>"


def test_role_policy_is_least_privilege(g):
    doc = json.loads(g.named("directory-admin-role-policy").inputs["policy"])
    st = {s["Sid"]: s for s in doc["Statement"]}
    assert st["SetPasswordsInThisDirectory"]["Action"] == ["ds:ResetUserPassword"]
    assert st["SetPasswordsInThisDirectory"]["Resource"] == [
        f"arn:aws:ds:eu-west-1:<after-deploy:account-id>:directory/{DIRECTORY}"]
    assert st["ReadOwnParameters"]["Action"] == ["ssm:GetParameter"]
    assert st["ReadOwnParameters"]["Resource"] == [
        "<after-deploy:directory-admin-admin-password.arn>", "<after-deploy:join-secrets-join-password.arn>",
        "arn:aws:ssm:eu-west-1:<after-deploy:account-id>:parameter/pcluster-ad/dev/users/*"]
    assert st["DecryptOwnParameters"]["Resource"] == ["<after-deploy:join-secrets-key.arn>"]
    via = {"StringEquals": {"kms:ViaService": "ssm.eu-west-1.amazonaws.com"}}
    assert st["DecryptOwnParameters"]["Condition"] == via
    assert st["DescribeInstances"]["Action"] == ["ec2:DescribeInstances"]
    assert st["CheckParameterKeys"]["Action"] == ["ssm:DescribeParameters"]
    assert st["ReadRecordedComputerNames"]["Action"] == ["dynamodb:GetItem", "dynamodb:UpdateItem",
                                                         "dynamodb:DeleteItem", "dynamodb:Scan"]
    assert st["ReadRecordedComputerNames"]["Resource"] == ["arn:aws:dynamodb:eu-west-1:1:table/w"]  # the table only
    # Every `*` resource is one of the two documented ones.
    stars = sorted(s["Sid"] for s in doc["Statement"] if s["Resource"] == "*")
    assert stars == ["AttachToVpc", "CheckParameterKeys", "DescribeInstances"]
    actions = {a for s in doc["Statement"] for a in s["Action"]}
    assert not any(a.endswith("*") for a in actions)
    assert not actions & {"ssm:GetParameters", "ssm:GetParametersByPath", "ds:*", "kms:Encrypt"}


def test_invocations_drive_the_directory(g):
    invs = {r.name: r for r in g.of_type("aws:lambda/invocation:Invocation")}
    assert sorted(invs) == ["directory-admin-access", "directory-admin-group-gpu", "directory-admin-group-hpc-users",
                            "directory-admin-setup", "directory-admin-user-alice", "directory-admin-user-bob"]
    for r in invs.values():
        assert r.inputs["lifecycleScope"] == "CRUD"
        assert r.inputs["functionName"] == ROLE
    # No names in the inputs (issue 16): the function takes them from its environment; the setup's input
    # carries the versions that make it re-run (setup behaviour, the account's password), and every input the
    # directory (a new directory re-runs them all, issue 17 finding 4).
    # The deployment (issue 17 attack finding 1): one RandomId, a child of the component (kept in the stack's state,
    # never replaced: no keepers), in every input and in the function's environment.
    (dep,) = g.of_type("random:index/randomId:RandomId")
    assert dep.name == "directory-admin-deployment" and dep.inputs == {"byteLength": 16}
    assert g.parent_name(dep) == "directory-admin"
    hex_id = "<after-deploy:directory-admin-deployment.hex>"
    (fn,) = [f for f in g.of_type("aws:lambda/function:Function") if f.inputs.get("name") == ROLE]
    assert fn.inputs["environment"]["variables"]["DEPLOYMENT_ID"] == hex_id
    where = {"directoryId": DIRECTORY, "dnsIps": DNS, "deployment": hex_id}
    setup = json.loads(invs["directory-admin-setup"].inputs["input"])
    assert setup == {"resource": "directory", "ou": "pcluster-ad-dev", "setupVersion": 2,
                     "joinPasswordVersion": setup["joinPasswordVersion"], **where,
                     "owner": f"directory-admin-setup@{ROLE}"}  # replace-safety: the Invocation and its function
    assert "join-secrets-join-password" in g.dependency_names(invs["directory-admin-setup"])  # its version
    alice = json.loads(invs["directory-admin-user-alice"].inputs["input"])
    assert alice == {"resource": "user", "name": "alice", "groups": ["hpc-users", "gpu"], "displayName": "Alice A",
                     "email": "alice@example.com", "identityVersion": 1, **where,
                     "owner": f"directory-admin-user-alice@{ROLE}"}
    assert json.loads(invs["directory-admin-group-gpu"].inputs["input"])["directoryId"] == DIRECTORY
    deps = g.dependency_names(invs["directory-admin-user-alice"])
    assert {"directory-admin-setup", "directory-admin-group-hpc-users", "directory-admin-group-gpu",
            "directory-admin-user-alice-initial-password"} <= set(deps)
    # No secret goes into an Invocation input (they are plain in state): only parameter names.
    for r in invs.values():
        assert ADMIN_PW not in r.inputs["input"] and not is_secret_value(r.inputs["input"])


def test_initial_passwords(g):
    p = g.named("directory-admin-user-alice-initial-password").inputs
    assert p["name"] == "/pcluster-ad/dev/users/alice/initial-password" and p["type"] == "SecureString"
    assert p["keyId"] == "<after-deploy:join-secrets-key.arn>"
    pw = g.named("directory-admin-user-alice-password").inputs
    assert pw["length"] >= 16 and pw["minSpecial"] >= 1


@pytest.mark.parametrize("over,message", [
    ({"users": [DirectoryUser("x" * 21)]}, "at most 20"),
    ({"users": [DirectoryUser("bad:name")]}, "contains"),
    ({"users": [DirectoryUser("carol", ("nope",))]}, "undeclared groups"),
    ({"join_user": "pcad-add-with-a-very-long-name"}, "at most 20"),
])
def test_bad_input_refused(over, message):
    args = DirectoryAdminArgs(stack="dev", role_name=ROLE, cluster_name="hpc", directory_id=DIRECTORY,
                              domain_name="test.domain", dns_ips=DNS, vpc_id="vpc-1", subnet_ids=SUBNETS,
                              admin_user="Administrator", admin_password="x", key_arn="k",
                              join_password_parameter_name="p", join_password_parameter_arn="a")
    for k, v in over.items():
        setattr(args, k, v)
    with pytest.raises(ValueError, match=message):
        validate(args)


def test_code_package_is_the_pinned_libraries_and_reproducible(tmp_path):
    pins = dict(line.split("==") for line in (ROOT / "requirements.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    assert {k: pins[k] for k in PACKAGED} == PACKAGED
    archive = code_archive(str(ROOT / "lambda_src"))
    names = sorted(archive.assets)
    assert "directory_admin.py" in names and "ldap3/__init__.py" in names and "pyasn1/__init__.py" in names
    assert not [n for n in names if "__pycache__" in n or not n.endswith(".py")]
    assert names == sorted(code_archive(str(ROOT / "lambda_src")).assets)
    # The package imports on its own (what Lambda's python does with the zip).
    zpath = tmp_path / "fn.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        for n, asset in archive.assets.items():
            z.write(asset.path, n)
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-I", "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                          "import directory_admin, ldap3; print(ldap3.__file__)", str(zpath)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert str(zpath) in res.stdout and Path(res.stdout.strip()).name == "__init__.py"


def test_a_config_change_shows_as_a_change_of_exactly_its_invocation():
    """What `pulumi preview` diffs: changing one user's groups changes that user's Invocation input only;
    removing a user removes its Invocation (the function deletes the user) and its parameter."""
    def invocations(g: Graph) -> dict[str, str]:
        return {r.name: r.inputs["input"] for r in g.of_type("aws:lambda/invocation:Invocation")}

    before = invocations(run())
    after = invocations(run(users=[DirectoryUser("alice", ("gpu",), "Alice A", "alice@example.com"),
                                   DirectoryUser("bob", ("hpc-users",))]))
    assert sorted(k for k in before if before[k] != after.get(k)) == ["directory-admin-user-alice"]
    assert json.loads(after["directory-admin-user-alice"])["groups"] == ["gpu"]
    removed = run(users=[DirectoryUser("bob", ("hpc-users",))])
    assert "directory-admin-user-alice" not in invocations(removed)
    assert "directory-admin-user-alice-initial-password" not in {r.name for r in removed.resources}
