"""Replace or update: the plan's decision against ParallelCluster's OWN verdict (issue 9, finding 4).

The plan replaces the cluster (the pcluster Command) when its `create` or `triggers` input changes;
`triggers` is the digest of update_policy.replacement_view(config), computed from
tools/update_policy.json. ParallelCluster's verdict is `ConfigPatch(cluster, base, target).check()` run in
its own venv (tools/config_patch_verdict.py) with the compute fleet STOPPED: if it still refuses, only a new
cluster applies the change. Every row of the table must agree. The snapshot itself is regenerated from the
installed ParallelCluster and compared, so an upgrade cannot drift silently.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable

import pytest
import yaml

from pcluster_ad.tools.mocks import PlanMocks
from pcluster_ad.tools.pcluster_schema import pcluster_python
from pcluster_ad.update_policy import SNAPSHOT, needs_replacement, replacement_view, snapshot
from tests.conftest import ROOT

NEW_URL = "https://newfunctionurl0000000000000000.lambda-url.eu-west-1.on.aws/"


class _Recreated(PlanMocks):
    """Mocks in which some resources came back with new computed values (re-created)."""

    def __init__(self, overrides: dict[tuple[str, str], str], **kw):
        super().__init__(**kw)
        self.overrides = overrides

    def new_resource(self, args):
        resource_id, state = super().new_resource(args)
        for (name, prop), value in self.overrides.items():
            if args.name == name:
                if prop == "id":
                    resource_id = value
                else:
                    state[prop] = value
        return resource_id, state


def _cluster(edit: Callable[[dict], None]) -> Callable[[dict], None]:
    return lambda config: edit(config["pcluster-ad:cluster"])


def _queue(edit: Callable[[dict], None]) -> Callable[[dict], None]:
    return lambda config: edit(config["pcluster-ad:cluster"]["queues"][0])


def _add_queue(c: dict) -> None:
    c["queues"].append({"name": "big", "instanceType": "c5.2xlarge", "minCount": 0, "maxCount": 4})


def _two_types(q: dict) -> None:
    first = {k: q.pop(k) for k in ("instanceType", "minCount", "maxCount")}
    q["computeResources"] = [first, {"instanceType": "c5.2xlarge", "maxCount": 4}]


# (row id, stack-config edit, mocks overrides, expected decision, expected with the fleet RUNNING)
# The last column documents what happens without a replacement: "live" (applied with the fleet running:
# QueueUpdateStrategy DRAIN), "fleet-stop" (the launcher stops the fleet), "no-change", or "-" (replaced).
ROWS = [
    ("os", _cluster(lambda c: c.update(os="ubuntu2204")), {}, "replace", "-"),
    ("head-node-type", _cluster(lambda c: c["headNode"].update(instanceType="c5.xlarge")), {}, "replace", "-"),
    ("key-pair", _cluster(lambda c: c.update(keyName="ops-key")), {}, "replace", "-"),
    ("ssh-password-auth-off", _cluster(lambda c: c.update(sshPasswordAuth=False)), {}, "replace", "-"),
    ("home-file-system", _cluster(lambda c: c["homeStorage"].update(fileSystemId="fs-0123456789abcdef0")), {},
     "replace", "-"),
    ("queue-max-count-up", _queue(lambda q: q.update(maxCount=20)), {}, "update", "live"),
    ("queue-max-count-down", _queue(lambda q: q.update(maxCount=5)), {}, "update", "fleet-stop"),
    ("queue-min-count-down", _queue(lambda q: q.update(minCount=1)), {}, "update", "fleet-stop"),
    ("queue-min-and-max-up", _queue(lambda q: q.update(minCount=3, maxCount=11)), {}, "update", "live"),
    ("queue-instance-type", _queue(lambda q: q.update(instanceType="c5.xlarge")), {}, "update", "fleet-stop"),
    ("queue-added", _cluster(_add_queue), {}, "update", "live"),
    ("queue-renamed", _queue(lambda q: q.update(name="batch")), {}, "update", "fleet-stop"),  # removed + added
    ("terminate-and-shrink", _cluster(lambda c: (c.update(queueUpdateStrategy="TERMINATE"),
                                                 c["queues"][0].update(minCount=1, maxCount=5))), {}, "update",
     "live"),
    ("terminate-and-instance-type", _cluster(lambda c: (c.update(queueUpdateStrategy="TERMINATE"),
                                                        c["queues"][0].update(instanceType="c5.xlarge"))), {},
     "update", "live"),
    ("custom-ami", _cluster(lambda c: c.update(customAmi="ami-0123456789abcdef0")), {}, "replace", "-"),
    ("home-type-ebs", _cluster(lambda c: c["homeStorage"].update(type="Ebs")), {}, "replace", "-"),
    # IGNORED by ConfigPatch: read from the target config during each update, never a change of its own.
    ("queue-update-terminate", _cluster(lambda c: c.update(queueUpdateStrategy="TERMINATE")), {}, "update",
     "no-change"),
    ("ssh-cidr", _cluster(lambda c: c.update(allowedSshCidr="198.51.100.0/24")), {}, "update", "live"),
    ("tags", lambda config: config.update({"pcluster-ad:tags": {"team": "hpc"}}), {}, "update", "live"),
    # Issue 12: a login pool, a second instance type in a queue, access groups (baked into the script only).
    ("login-nodes-added", _cluster(lambda c: c.update(loginNodes={"count": 1, "instanceType": "c5.large"})), {},
     "update", "live"),
    ("queue-second-instance-type", _queue(_two_types), {}, "update", "live"),
    ("access-groups", lambda config: config.update({"pcluster-ad:access": {"allowedGroups": ["hpc-users"],
                                                                           "adminGroups": ["Domain Admins"]}}),
     {}, "update", "no-change"),
    ("new-join-function-url", None, {("join-function-url", "functionUrl"): NEW_URL}, "update", "no-change"),
    ("new-bootstrap-bucket", None, {("bootstrap-bucket", "id"): "recreated-bucket-id",
                                    ("bootstrap-bucket", "arn"): "arn:aws:s3:::recreated"}, "update", "no-change"),
]


def _plan(run_stack, edit, overrides) -> tuple[dict, dict]:
    mocks = _Recreated(overrides, region="eu-west-1") if overrides else None
    g = run_stack(edit, mocks=mocks)
    return g.named("cluster-pcluster").inputs, yaml.safe_load(g.outputs["clusterConfig"])


def _verdicts(cases: list[dict]) -> list[dict]:
    proc = subprocess.run([str(pcluster_python()), str(ROOT / "tools" / "config_patch_verdict.py")],
                          input=json.dumps({"cases": cases}), capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)["results"]


@pytest.fixture(scope="module")
def table(request) -> list[dict]:
    run_stack = request.getfixturevalue("run_stack_module")
    base_cmd, base_cfg = _plan(run_stack, None, {})
    rows, cases = [], []
    for row_id, edit, overrides, expected, running in ROWS:
        cmd, cfg = _plan(run_stack, edit, overrides)
        plan = "replace" if (cmd["create"] != base_cmd["create"] or cmd["triggers"] != base_cmd["triggers"]) \
            else "update"
        rows.append({"id": row_id, "plan": plan, "expected": expected, "running": running,
                     "base": base_cfg, "target": cfg, "cmd": cmd, "base_cmd": base_cmd})
        cases.append({"base": base_cfg, "target": cfg, "running": False})
        cases.append({"base": base_cfg, "target": cfg, "running": True})
    results = _verdicts(cases)
    for i, row in enumerate(rows):
        row["stopped"], row["live"] = results[2 * i], results[2 * i + 1]
    return rows


@pytest.fixture(scope="module")
def run_stack_module():
    """run_stack for a module-scoped fixture: the table runs the program once per row, for all its tests."""
    import copy

    from pcluster_ad import program
    from pcluster_ad.tools.mocks import config_from_stack_file, run_program
    from tests.conftest import stack_doc

    def run(edit=None, *, mocks=None):
        doc = copy.deepcopy(stack_doc("dev"))
        if edit:
            edit(doc["config"])
        config, secret_keys = config_from_stack_file(doc)
        return run_program(program.pulumi_program, config=config, secret_keys=secret_keys, stack="dev",
                           mocks=mocks or PlanMocks.from_config(config))

    return run


@pytest.mark.parametrize("index", range(len(ROWS)), ids=[r[0] for r in ROWS])
def test_plan_decision_equals_parallelclusters_verdict(table, index):
    row = table[index]
    pcluster = "update" if row["stopped"]["allowed"] else "replace"
    refused = [e["parameter"] for e in row["stopped"]["updateValidationErrors"]]
    assert row["plan"] == pcluster, (row["id"], refused, replacement_view(row["base"]),
                                     replacement_view(row["target"]))
    assert row["plan"] == row["expected"], row["id"]
    if pcluster == "update":
        changes = row["live"]["changeSet"]
        with_fleet_running = "no-change" if not changes else "live" if row["live"]["allowed"] else "fleet-stop"
        assert with_fleet_running == row["running"], (row["id"], row["live"]["updateValidationErrors"])
    # The pure function the trigger is built from says the same.
    assert needs_replacement(row["base"], row["target"]) == (row["plan"] == "replace" and
                                                             row["cmd"]["create"] == row["base_cmd"]["create"])


def test_refusals_name_the_fields_parallelcluster_names(table):
    by_id = {row["id"]: row for row in table}
    refused = {e["parameter"] for e in by_id["ssh-password-auth-off"]["stopped"]["updateValidationErrors"]}
    assert "HeadNode.CustomActions.OnNodeConfigured" in refused
    assert {e["parameter"] for e in by_id["os"]["stopped"]["updateValidationErrors"]} == {"Image.Os"}
    assert {e["parameter"] for e in by_id["home-file-system"]["stopped"]["updateValidationErrors"]} == {
        "SharedStorage[home].EfsSettings.FileSystemId"}


def test_join_url_and_bucket_never_reach_the_head_node_custom_actions(table):
    by_id = {row["id"]: row for row in table}
    for row_id in ("new-join-function-url", "new-bootstrap-bucket"):
        assert by_id[row_id]["target"] == by_id[row_id]["base"]
    assert NEW_URL not in json.dumps(by_id["new-join-function-url"]["target"])


def test_the_command_replaces_on_trigger_changes(run_stack):
    cmd = run_stack().named("cluster-pcluster")
    assert {"create", "triggers"} <= set(cmd.options["replaceOnChanges"])
    assert cmd.options["deleteBeforeReplace"] is True
    (digest,) = cmd.inputs["triggers"]
    assert len(digest) == 64


def test_snapshot_matches_the_installed_parallelcluster():
    proc = subprocess.run([str(pcluster_python()), str(ROOT / "tools" / "update_policy_snapshot.py"), "--stdout"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout == SNAPSHOT.read_text(encoding="utf-8"), (
        "tools/update_policy.json is stale: run .venv-pcluster/bin/python tools/update_policy_snapshot.py")


def test_snapshot_classes_match_parallelclusters_documented_rules():
    fields = json.loads(SNAPSHOT.read_text())["fields"]
    for path in ("HeadNode.CustomActions.OnNodeStart.Script", "HeadNode.CustomActions.OnNodeStart.Args",
                 "HeadNode.Ssh.KeyName", "HeadNode.InstanceType", "Image.Os",
                 "SharedStorage[].EfsSettings.FileSystemId", "Scheduling.SlurmSettings.Dns.UseEc2Hostnames"):
        assert fields[path]["change"] == "replace", path
    assert fields["HeadNode.CustomActions.OnNodeConfigured"]["add"] == "replace"
    assert fields["HeadNode.CustomActions.OnNodeUpdated.Script"]["change"] == "live"
    assert fields["Scheduling.SlurmQueues[]"]["add"] == "live"
    assert fields["Scheduling.SlurmQueues[].ComputeResources[].InstanceType"]["change"] == "fleet-stop"


def test_view_keeps_unknown_keys_and_drops_update_keys():
    base = {"HeadNode": {"InstanceType": "c5.large", "Ssh": {"AllowedIps": "1.2.3.0/24"}},
            "Scheduling": {"SlurmQueues": [{"Name": "q", "ComputeResources": [{"Name": "c", "MaxCount": 2}]}]},
            "NotInTheSchema": 1}
    # Scheduling: adding or removing the whole section is refused, so its presence counts.
    assert replacement_view(base) == {"HeadNode": {"InstanceType": "c5.large"}, "Scheduling": {"present": True},
                                      "NotInTheSchema": 1}


@pytest.mark.parametrize("home_type", ["Efs", "Ebs"])
def test_homes_survive_a_replacement(run_stack, home_type):
    """A replacement deletes the old cluster first (delete_before_replace), then creates the new one. The
    homes are stack resources OUTSIDE the cluster: the config names them by FileSystemId / VolumeId, for
    which ParallelCluster creates no CloudFormation resource (templates/cluster_stack.py `_add_efs_storage`
    `if not efs_id`, `_add_ebs_volume` likewise), so deleting the cluster stack cannot delete them; and
    nothing of them depends on the pcluster Command, so Pulumi does not touch them when it replaces it."""
    g = run_stack(lambda c: c["pcluster-ad:cluster"]["homeStorage"].update(type=home_type))
    cmd = g.named("cluster-pcluster")
    data = g.named("home-efs" if home_type == "Efs" else "home-volume")
    (home,) = yaml.safe_load(g.outputs["clusterConfig"])["SharedStorage"]
    settings = home["EfsSettings"] if home_type == "Efs" else home["EbsSettings"]
    assert settings == ({"FileSystemId": f"<after-deploy:{data.name}.id>", "EncryptionInTransit": True,
                         "IamAuthorization": True} if home_type == "Efs"
                        else {"VolumeId": f"<after-deploy:{data.name}.id>"})
    assert home["MountDir"] == "/home"
    assert g.parent_name(data) == "home" and data.options["retainOnDelete"] is True
    assert cmd.options["deleteBeforeReplace"] is True
    assert "home" in g.dependency_names(cmd) or data.name in g.dependency_names(cmd)  # created before, deleted after
    dependents = [r.name for r in g.resources if cmd.name in g.dependency_names(r)]
    assert all(not name.startswith("home") for name in dependents), dependents


def test_inputs_left_out_of_the_triggers_only_reach_in_place_fields():
    """The Command's triggers are computed with a stand-in for the policies, queue subnets and security groups
    (so that one of them being unknown in a preview does not show a replacement): ParallelCluster must update
    every field they reach in place, and the inputs that are used must matter."""
    from pcluster_ad.cluster_config import ClusterConfigInputs, HomeStorage, render
    from pcluster_ad.components.cluster_launcher import IN_PLACE_STAND_IN
    from pcluster_ad.stack_config import ComputeResourceSettings, QueueSettings

    def config(private=("subnet-b",), policies=("arn:p",), sgs=("sg-1",), public="subnet-a", uri="s3://b/x",
               home="fs-1") -> dict:
        return render(ClusterConfigInputs(
            region="eu-west-1", os="alinux2023", head_node_instance_type="c5.large", public_subnet_id=public,
            private_subnet_ids=list(private),
            queues=[QueueSettings("compute", (ComputeResourceSettings("c5-large", "c5.large", 0, 4),))],
            scripts_base_uri=uri,
            additional_policy_arns=list(policies), home=HomeStorage("Efs", home), node_security_group_ids=list(sgs),
            allowed_ssh_cidr="203.0.113.0/24"))

    base = replacement_view(config())
    for other in (dict(private=("subnet-x", "subnet-y")), dict(policies=("arn:q", "arn:r")), dict(sgs=()),
                  dict(private=(IN_PLACE_STAND_IN,), policies=(IN_PLACE_STAND_IN,), sgs=(IN_PLACE_STAND_IN,))):
        assert replacement_view(config(**other)) == base, other
    for used in (dict(public="subnet-z"), dict(uri="s3://c/x"), dict(home="fs-2")):
        assert replacement_view(config(**used)) != base, used


def _paths(node, prefix: str = ""):
    """Every key path of a rendered config, list elements as `[]` (the snapshot's spelling)."""
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{prefix}.{key}" if prefix else key
            yield path
            yield from _paths(value, path)
    elif isinstance(node, list):
        for value in node:
            yield from _paths(value, prefix + "[]")


def test_no_rendered_field_needs_compute_and_login_nodes_stopped_at_once(table):
    """The launcher stops login pools or the compute fleet as ParallelCluster asks, never both at once: so no field
    the product renders may carry COMPUTE_AND_LOGIN_NODES_STOP ("not supported when compute or login nodes are
    running"; DirectoryService, MungeKeySecretArn, DisableSudoAccessForDefaultUser), in any row of the table
    (login pools and multi-type queues included)."""
    combined = {path for path, entry in snapshot()["fields"].items()
                if entry.get("policy") == "COMPUTE_AND_LOGIN_NODES_STOP"}
    assert "DirectoryService.DomainName" in combined  # the snapshot knows the policy, so this test can fail
    rendered: set[str] = set()
    for row in table:
        rendered |= set(_paths(row["base"])) | set(_paths(row["target"]))
    assert "LoginNodes.Pools[].Count" in rendered
    assert not rendered & combined, sorted(rendered & combined)


def _before_issue_16(config: dict) -> dict:
    """The config a stack deployed before issue 16: /home on EFS by FileSystemId only (no TLS, no IAM)."""
    import copy

    old = copy.deepcopy(config)
    (home,) = old["SharedStorage"]
    home["EfsSettings"] = {"FileSystemId": home["EfsSettings"]["FileSystemId"]}
    return old


def test_first_up_after_issue_16_replaces_the_cluster(run_stack):
    """EncryptionInTransit and IamAuthorization are UNSUPPORTED updates (pcluster schemas/cluster_schema.py
    SharedEfsSchema): ParallelCluster refuses them even with the compute fleet stopped, so an existing stack's
    first `pulumi up` with this render must REPLACE the cluster (the Command's triggers change), never send
    them to update-cluster. The homes survive (test_homes_survive_a_replacement)."""
    g = run_stack()
    new = yaml.safe_load(g.outputs["clusterConfig"])
    old = _before_issue_16(new)
    fields = snapshot()["fields"]
    for key in ("EncryptionInTransit", "IamAuthorization"):
        assert fields[f"SharedStorage[].EfsSettings.{key}"] == {"change": "replace", "policy": "UNSUPPORTED"}
    assert needs_replacement(old, new)
    assert replacement_view(new)["SharedStorage"]["home"]["EfsSettings"] == {
        "FileSystemId": "<after-deploy:home-efs.id>", "EncryptionInTransit": True, "IamAuthorization": True}
    stopped, running = _verdicts([{"base": old, "target": new, "running": False},
                                  {"base": old, "target": new, "running": True}])
    for verdict in (stopped, running):
        assert verdict["allowed"] is False
        errors = {e["parameter"]: e for e in verdict["updateValidationErrors"]}
        assert set(errors) == {"SharedStorage[home].EfsSettings.EncryptionInTransit",
                               "SharedStorage[home].EfsSettings.IamAuthorization"}, errors
        for e in errors.values():
            assert e["updatePolicy"] == "UNSUPPORTED" and (e["currentValue"], e["requestedValue"]) == ("-", "True")
            print(f"\n{e['parameter']}: {e['message']}")
    # What the launcher would say, should such a change ever reach update-cluster (a cluster changed outside
    # Pulumi): its "needs a NEW cluster" branch recognises ParallelCluster's message.
    from pcluster_ad.launcher.core import _UNSUPPORTED_RE

    assert all(_UNSUPPORTED_RE.search(e["message"]) for e in stopped["updateValidationErrors"])


def test_launcher_refuses_the_tls_iam_change_in_place_with_a_clear_message(tmp_path, monkeypatch):
    """Should the change ever reach `update` (the cluster differs from what the stack last deployed), the launcher
    sends it to update-cluster once, and fails at once with ParallelCluster's refusals and its "needs a NEW cluster"
    message, without touching the compute fleet (the stand-in pcluster answers with ParallelCluster's ConfigPatch)."""
    import io

    from pcluster_ad.launcher import cli
    from pcluster_ad.launcher.core import EXIT_FAILED
    from tests.test_launcher import CONFIG_A, NAME, REGION, Fake, FakeClock, fake_runner

    home = ("SharedStorage:\n  - MountDir: /home\n    Name: home\n    StorageType: Efs\n    EfsSettings:\n"
            "      FileSystemId: fs-0123456789abcdef0\n")
    before = CONFIG_A + home
    after = before + "      EncryptionInTransit: true\n      IamAuthorization: true\n"
    fake = Fake(tmp_path)
    monkeypatch.setenv("FAKE_PCLUSTER_STATE", str(fake.path))
    fake.seed("CREATE_COMPLETE", before)
    clock, stdout, stderr = FakeClock(), io.StringIO(), io.StringIO()
    code = cli.main(["update", "--cluster-name", NAME, "--region", REGION], runner=fake_runner(), clock=clock,
                    sleep=clock.sleep, stdin=io.StringIO(after), stdout=stdout, stderr=stderr)
    err = stderr.getvalue()
    print(err)
    assert code == EXIT_FAILED
    for key in ("EncryptionInTransit", "IamAuthorization"):
        assert (f"update refused for SharedStorage[home].EfsSettings.{key}: - -> True: Update actions are not "
                f"currently supported for the '{key}' parameter") in err
    assert ("ParallelCluster cannot change SharedStorage[home].EfsSettings.EncryptionInTransit, "
            "SharedStorage[home].EfsSettings.IamAuthorization in place, even with the compute fleet stopped: this "
            "needs a NEW cluster") in err
    assert fake.commands() == ["describe-cluster", "update-cluster"]  # no fleet stop, nothing changed
