"""ParallelCluster 3.16.1's own UPDATE validation on every row of the update-policy table.

What `pcluster update-cluster` runs before it changes anything (models/cluster.py `validate_update_request`):
the target config's schema and every semantic validator in the update context (the head node's id, the
stack's managed security groups and official AMI), then the change policy (ConfigPatch) against the cluster's
real state (its compute fleet status). tools/validate_cluster_update.py runs exactly that in a moto world
holding the existing cluster; this module renders the base and the target config of every row of
tests/test_update_policy.py's ROWS through the real program (as that table does), runs all of them in ONE
ParallelCluster process (importing pcluster and moto costs seconds: once), and asserts that ParallelCluster
agrees with the table: rows the table replaces are refused even with the compute fleet stopped, "live" rows
pass with the fleet running, "fleet-stop" rows pass only with it stopped, and no row's target config fails a
validator. A row added to the table is covered here without an edit.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from pcluster_ad.tools.pcluster_schema import full_validation_python
from tests.conftest import ROOT, stack_doc
from tests.test_update_policy import ROWS, _Recreated, _verdicts

UPDATE_VALIDATOR = ROOT / "tools" / "validate_cluster_update.py"
STACK = "dev"  # the table's stack
CLUSTER = stack_doc(STACK)["config"]["pcluster-ad:cluster"]["name"]


SAMPLES = sorted(p.name.removeprefix("Pulumi.").removesuffix(".yaml") for p in ROOT.glob("Pulumi.*.yaml"))
EXISTING_NETWORK = {"vpcId": "vpc-0123456789abcdef0", "publicSubnetId": "subnet-0aaaaaaaaaaaaaaa1",
                    "privateSubnetIds": ["subnet-0bbbbbbbbbbbbbbb1", "subnet-0bbbbbbbbbbbbbbb2"]}


def _render(edit, overrides: dict, out: Path, stack: str = STACK) -> dict:
    """The program's plan for a stack with one edit: a `tools.plan --out` directory; returns the config."""
    from pcluster_ad import program
    from pcluster_ad.tools.mocks import PlanMocks, config_from_stack_file, run_program

    doc = copy.deepcopy(stack_doc(stack))
    if edit:
        edit(doc["config"])
    config, secret_keys = config_from_stack_file(doc)
    mocks = _Recreated(overrides, region="eu-west-1") if overrides else PlanMocks.from_config(config)
    graph = run_program(program.pulumi_program, config=config, secret_keys=secret_keys, stack=stack, mocks=mocks)
    graph.root = str(ROOT)
    out.mkdir(parents=True)
    (out / "resources.json").write_text(json.dumps(graph.to_plan(), default=str))
    (out / "cluster-config.yaml").write_text(graph.outputs["clusterConfig"])
    return yaml.safe_load(graph.outputs["clusterConfig"])


def _no_nfs_egress(plan_dir: Path) -> None:
    """The /home mount-target group without its egress (the code before issue 9)."""
    path = plan_dir / "resources.json"
    resources = json.loads(path.read_text())
    (group,) = [r for r in resources if r["name"] == "home-mount-targets"]
    assert group["inputs"].pop("egress")
    path.write_text(json.dumps(resources))


def run_update_validation(cases: list[dict]) -> dict:
    proc = subprocess.run(
        [str(full_validation_python()), str(UPDATE_VALIDATOR), "--batch"], input=json.dumps({"cases": cases}),
        capture_output=True, text=True, timeout=1200, check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("AWS_")},  # never a real account
    )
    assert proc.returncode in (0, 1) and proc.stdout.strip(), proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("update-validation")
    started = time.perf_counter()
    base = _render(None, {}, tmp / "base")
    rows, cases, offline = [], [], []
    for row_id, edit, overrides, expected, running in ROWS:
        target = _render(edit, overrides, tmp / row_id)
        rows.append({"id": row_id, "expected": expected, "running": running})
        cases.append({"id": row_id, "base": str(tmp / "base"), "target": str(tmp / row_id), "clusterName": CLUSTER})
        offline.append({"base": base, "target": target, "running": False})
    # Teeth: a target whose /home mount targets refuse NFS out must fail a validator at update too.
    _render(None, {}, tmp / "no-nfs-egress")
    _no_nfs_egress(tmp / "no-nfs-egress")
    cases.append({"id": "no-nfs-egress", "base": str(tmp / "base"), "target": str(tmp / "no-nfs-egress"),
                  "clusterName": CLUSTER})
    # /home on an EBS volume: at update it is attached to the head node ("in-use"), which SharedEbsVolumeIdValidator
    # accepts only in the update context (it knows the head node); the create context wants it "available".
    def ebs(c):
        c["pcluster-ad:cluster"]["homeStorage"]["type"] = "Ebs"

    def ebs_more_nodes(c):
        ebs(c)
        c["pcluster-ad:cluster"]["queues"][0]["maxCount"] += 1

    _render(ebs, {}, tmp / "ebs-deployed")
    _render(ebs_more_nodes, {}, tmp / "ebs-more-nodes")
    cases.append({"id": "ebs-home-live-change", "base": str(tmp / "ebs-deployed"),
                  "target": str(tmp / "ebs-more-nodes"), "clusterName": CLUSTER})
    # Every shipped sample (its OS, key pair, queues, home) passes the update-time validators on a live change.
    for stack in SAMPLES:
        _render(None, {}, tmp / f"{stack}-deployed", stack)
        _render(lambda c: [q.update(maxCount=q["maxCount"] + 1) for q in c["pcluster-ad:cluster"]["queues"]], {},
                tmp / f"{stack}-more-nodes", stack)
        cases.append({"id": f"sample-{stack}", "base": str(tmp / f"{stack}-deployed"),
                      "target": str(tmp / f"{stack}-more-nodes"),
                      "clusterName": stack_doc(stack)["config"]["pcluster-ad:cluster"]["name"]})
    # An adopted VPC (network.vpcId + subnet ids, issue 19 item 4): the world builds it under the stack's ids.
    def existing_vpc(c):
        c["pcluster-ad:network"] = dict(EXISTING_NETWORK)

    def existing_vpc_more_nodes(c):
        existing_vpc(c)
        c["pcluster-ad:cluster"]["queues"][0]["maxCount"] += 1

    _render(existing_vpc, {}, tmp / "existing-vpc-deployed")
    _render(existing_vpc_more_nodes, {}, tmp / "existing-vpc-more-nodes")
    cases.append({"id": "existing-vpc-live-change", "base": str(tmp / "existing-vpc-deployed"),
                  "target": str(tmp / "existing-vpc-more-nodes"), "clusterName": CLUSTER})
    rendered = time.perf_counter() - started
    answer = run_update_validation(cases)
    total = time.perf_counter() - started
    results = {r["id"]: r for r in answer["results"]}
    print(f"\nupdate validation of {len(cases)} stack changes: render {rendered:.1f} s, ParallelCluster process "
          f"{answer['seconds']} s (slowest change {max(r['seconds'] for r in results.values())} s), "
          f"total {total:.1f} s")
    for row, verdict in zip(rows, _verdicts(offline), strict=True):
        row["result"], row["offline"] = results[row["id"]], verdict
    return {"rows": rows, "results": results}


def _errors(run: dict) -> list[dict]:
    return [f for f in run["failures"] if f["level"] == "ERROR"]


@pytest.mark.parametrize("index", range(len(ROWS)), ids=[r[0] for r in ROWS])
def test_parallelclusters_update_validation_agrees_with_the_table(table, index):
    row = table["rows"][index]
    result = row["result"]
    stopped, running = result["runs"]["STOPPED"], result["runs"]["RUNNING"]
    assert result["blocked_network"] == []  # nothing outside this machine was contacted
    for fleet, run in result["runs"].items():
        # The target config passes every validator in the update context, whatever the change policy says.
        assert run["verdict"] not in ("invalid", "error"), (row["id"], fleet, run["message"], run["failures"])
        assert _errors(run) == [], (row["id"], fleet, run["failures"])
    refused = {fleet: [(e["parameter"], e["message"]) for e in run["updateValidationErrors"]]
               for fleet, run in result["runs"].items()}
    if row["expected"] == "replace":
        # Refused even with the compute fleet stopped: only a new cluster applies it.
        assert (stopped["verdict"], running["verdict"]) == ("refused", "refused"), (row["id"], refused)
    elif row["running"] == "no-change":
        assert (stopped["verdict"], running["verdict"]) == ("no-change", "no-change"), (row["id"], refused)
    else:
        assert stopped["verdict"] == "allowed", (row["id"], refused)
        want = {"live": "allowed", "fleet-stop": "refused"}[row["running"]]
        assert running["verdict"] == want, (row["id"], row["running"], refused)
    # The real cluster's change policy names the same fields as the table test's offline ConfigPatch (stub cluster).
    assert sorted(e["parameter"] for e in stopped["updateValidationErrors"]) == sorted(
        e["parameter"] for e in row["offline"]["updateValidationErrors"]), row["id"]


def test_every_row_of_the_table_was_validated(table):
    assert [row["id"] for row in table["rows"]] == [r[0] for r in ROWS]
    assert len(ROWS) >= 20  # the table is the one of tests/test_update_policy.py, not an empty stand-in
    assert all(set(row["result"]["runs"]) == {"STOPPED", "RUNNING"} for row in table["rows"])


def test_a_fleet_stop_row_is_refused_for_the_fleet_with_parallelclusters_reason(table):
    """The fleet state the change policy reads is the cluster's own (its status item), not a stub."""
    (row,) = [r for r in table["rows"] if r["id"] == "queue-max-count-down"]
    (error,) = row["result"]["runs"]["RUNNING"]["updateValidationErrors"]
    assert error["parameter"] == "Scheduling.SlurmQueues[compute].ComputeResources[c5-large].MaxCount"
    assert (error["current_value"], error["requested_value"]) == ("10", "5")
    assert error["message"].startswith("All compute nodes must be stopped or QueueUpdateStrategy must be set to "
                                       "TERMINATE")


@pytest.mark.parametrize("stack", SAMPLES)
def test_every_sample_passes_the_update_validation_of_a_live_change(table, stack):
    """More nodes in every queue of a shipped sample: ParallelCluster's update validation passes it with the fleet
    running (no validator fails in the update context, the change policy allows it live)."""
    result = table["results"][f"sample-{stack}"]
    for fleet, run in result["runs"].items():
        assert run["verdict"] == "allowed", (stack, fleet, run["message"], run["failures"],
                                             run["updateValidationErrors"])
        assert _errors(run) == []
        assert run["changeSet"] and all(c["parameter"].endswith(".MaxCount") for c in run["changeSet"]), run
    assert result["blocked_network"] == []


def test_every_shipped_sample_is_covered():
    assert SAMPLES == ["dev", "prod"]


def test_an_ebs_home_attached_to_the_head_node_passes_in_the_update_context(table):
    """The world attaches the EBS /home to the head node, as a running cluster has it; ParallelCluster's update
    context (the head node's id) accepts that volume state, so a live change of an EBS-home stack is allowed."""
    result = table["results"]["ebs-home-live-change"]
    for fleet, run in result["runs"].items():
        assert run["verdict"] == "allowed", (fleet, run["message"], run["failures"], run["updateValidationErrors"])
        assert not [f for f in run["failures"] if f["type"] == "SharedEbsVolumeIdValidator"], run["failures"]


def test_validators_run_in_the_update_too(table):
    """A target whose /home mount targets allow NFS in but not out: ParallelCluster's EfsIdValidator refuses the
    update (as it refuses the create), before any change policy, whatever the fleet's state."""
    result = table["results"]["no-nfs-egress"]
    for run in result["runs"].values():
        assert run["verdict"] == "invalid", run
        failures = [f["message"] for f in _errors(run) if f["type"] == "EfsIdValidator"]
        assert len(failures) == 2, run["failures"]  # one per AZ the cluster uses
        for message in failures:
            assert "does not have a security group that allows inbound and outbound rules to support NFS" in message


def test_an_existing_vpc_stack_passes_the_update_validation_of_a_live_change(table):
    """Issue 19 item 4: on an adopted VPC the world holds the VPC and subnets under the stack's ids (before: a
    RevokeSecurityGroupEgress traceback while building it); one more node is allowed live, and the result says the
    subnets' AZs and routes were assumed, not checked."""
    result = table["results"]["existing-vpc-live-change"]
    for fleet, run in result["runs"].items():
        assert run["verdict"] == "allowed", (fleet, run["message"], run["failures"], run["updateValidationErrors"])
        assert _errors(run) == []
        assert [c["parameter"] for c in run["changeSet"]] == [
            "Scheduling.SlurmQueues[compute].ComputeResources[c5-large].MaxCount"], run["changeSet"]
    assert result["blocked_network"] == []
    (note,) = result["not_checked"]
    assert "existing VPC vpc-0123456789abcdef0" in note and "ASSUMED" in note
    assert "subnet-0bbbbbbbbbbbbbbb2 in eu-west-1b" in note and "Not checked: the real subnets' AZs" in note
    assert all(table["results"][f"sample-{stack}"]["not_checked"] == [] for stack in SAMPLES)
