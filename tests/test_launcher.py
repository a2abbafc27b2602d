"""The launcher (`python -m launcher`) against the stand-in pcluster CLI (tests/fake_pcluster/pcluster).

The stand-in runs as a real subprocess through the launcher's real subprocess runner; only the clock and
sleep are injected, so hour-long waits take milliseconds.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pcluster_ad.launcher import cli
from pcluster_ad.launcher.core import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_SETUP,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    Launcher,
    SetupError,
    resolve_pcluster,
    subprocess_runner,
)

ROOT = Path(__file__).resolve().parent.parent
FAKE = ROOT / "tests" / "fake_pcluster" / "pcluster"
NAME = "pcluster-ad-test"
REGION = "eu-west-1"

CONFIG_A = """\
Region: eu-west-1
Image:
  Os: alinux2023
HeadNode:
  InstanceType: t3.medium
  Networking:
    SubnetId: subnet-0123456789abcdef0
Scheduling:
  Scheduler: slurm
  SlurmQueues:
    - Name: compute
      ComputeResources:
        - Name: c5
          InstanceType: c5.large
          MinCount: 0
          MaxCount: 4
      Networking:
        SubnetIds:
          - subnet-0123456789abcdef0
"""
CONFIG_B = CONFIG_A.replace("MaxCount: 4", "MaxCount: 8")  # ParallelCluster: fine with the fleet running
# Update verdicts come from ParallelCluster's own ConfigPatch (the stand-in runs it in .venv-pcluster):
CONFIG_SHRINK = CONFIG_A.replace("MaxCount: 4", "MaxCount: 2")  # needs the fleet stopped (no strategy)
CONFIG_HEAD = CONFIG_A.replace("InstanceType: t3.medium", "InstanceType: t3.large")  # needs a new cluster
CONFIG_HEAD_AND_SHRINK = CONFIG_SHRINK.replace("InstanceType: t3.medium", "InstanceType: t3.large")


def with_strategy(config: str, strategy: str) -> str:
    settings = f"  SlurmSettings:\n    QueueUpdateStrategy: {strategy}\n"
    return config.replace("  Scheduler: slurm\n", "  Scheduler: slurm\n" + settings)


class FakeClock:
    """time.monotonic / time.sleep stand-ins: sleeping moves the clock."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds


class Fake:
    """Access to the stand-in pcluster's state file."""

    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "fake-pcluster-state.json"
        self.tmp = tmp_path

    def state(self) -> dict:
        if not self.path.exists():
            return {"scenario": {}, "clusters": {}, "calls": []}
        return json.loads(self.path.read_text())

    def save(self, state: dict) -> None:
        self.path.write_text(json.dumps(state))

    def scenario(self, **knobs) -> None:
        state = self.state()
        state["scenario"].update(knobs)
        self.save(state)

    def pcluster(self, *args: str) -> dict:
        proc = subprocess.run([sys.executable, str(FAKE), *args], capture_output=True, text=True, check=False,
                              env={**os.environ, "FAKE_PCLUSTER_STATE": str(self.path)})
        return json.loads(proc.stdout) if proc.stdout.strip() else {}

    def seed(self, status: str, config: str = CONFIG_A, polls: int = 3) -> None:
        """Put a cluster named NAME into `status`, then forget the calls and the scenario."""
        config_file = self.tmp / "seed.yaml"
        config_file.write_text(config)
        outcome = "CREATE_FAILED" if status == "CREATE_FAILED" else "CREATE_COMPLETE"
        in_progress = status == "CREATE_IN_PROGRESS"
        self.scenario(create_polls=polls if in_progress else 0, create_outcome=outcome, delete_polls=polls)
        self.pcluster("create-cluster", "-n", NAME, "-r", REGION, "-c", str(config_file))
        if not in_progress:
            info = self.pcluster("describe-cluster", "-n", NAME, "-r", REGION)
            while info["cloudFormationStackStatus"].endswith("_IN_PROGRESS"):  # a rollback: let it settle
                info = self.pcluster("describe-cluster", "-n", NAME, "-r", REGION)
            assert info["clusterStatus"] == outcome
        if status == "DELETE_IN_PROGRESS":
            self.pcluster("delete-cluster", "-n", NAME, "-r", REGION)
        state = self.state()
        state["scenario"], state["calls"] = {}, []
        self.save(state)

    def commands(self) -> list[str]:
        return [call["argv"][0] for call in self.state()["calls"]]

    def calls(self, command: str) -> list[dict]:
        return [call for call in self.state()["calls"] if call["argv"][0] == command]


@pytest.fixture
def fake(tmp_path, monkeypatch) -> Fake:
    fake = Fake(tmp_path)
    monkeypatch.setenv("FAKE_PCLUSTER_STATE", str(fake.path))
    monkeypatch.delenv("PCLUSTER_AD_ROLLBACK_ON_FAILURE", raising=False)
    return fake


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


class Result:
    def __init__(self, code: int, stdout: str, stderr: str) -> None:
        self.code, self.stdout, self.stderr = code, stdout, stderr

    @property
    def final(self) -> dict:
        return json.loads(self.stdout.strip().splitlines()[-1])


def fake_runner():
    """The real subprocess runner, starting the stand-in with this interpreter (skips a slow `env python3`)."""
    run = subprocess_runner(sys.executable)
    return lambda args, timeout: run([str(FAKE), *args], timeout)


@pytest.fixture
def launch(fake, clock):
    def run(command: str, config: str | None = CONFIG_A, *extra: str, runner=None) -> Result:
        stdout, stderr = io.StringIO(), io.StringIO()
        code = cli.main(
            [command, "--cluster-name", NAME, "--region", REGION, *extra],
            runner=runner or fake_runner(),
            clock=clock,
            sleep=clock.sleep,
            stdin=io.StringIO(config or ""),
            stdout=stdout,
            stderr=stderr,
        )
        return Result(code, stdout.getvalue(), stderr.getvalue())

    return run


HEAD_ID = "i-0123456789abcdef0"  # the stand-in's head node
LOG_GROUP_RE = re.compile(rf"/aws/parallelcluster/{NAME}-\d{{12}}")  # ParallelCluster's name: cluster, UTC minute


def assert_final(result: Result, status: str | None, public: str | None = None, private: str | None = None) -> None:
    """The final line; the log group is named exactly after a create or update that succeeded."""
    assert result.stdout.count("\n") == 1, "stdout must hold only the final JSON line"
    final = dict(result.final)
    group = final.pop("clusterLogGroup")
    done = result.code == EXIT_OK and status in ("CREATE_COMPLETE", "UPDATE_COMPLETE")
    assert (group is not None and LOG_GROUP_RE.fullmatch(group) is not None) if done else group is None, group
    assert final == {
        "clusterName": NAME,
        "status": status,
        "headNodePublicIp": public,
        "headNodePrivateIp": private,
        "loginNodesAddress": None,
        "headNodeInstanceId": HEAD_ID if private else None,
        "pclusterVersion": "3.16.1" if status not in (None, "DELETED") else None,
    }


# ----------------------------------------------------------------------------- create


def test_create_new_cluster(fake, launch, clock):
    result = launch("create")
    assert result.code == EXIT_OK, result.stderr
    assert_final(result, "CREATE_COMPLETE", "203.0.113.10", "10.0.0.10")
    assert fake.commands() == (["describe-cluster", "create-cluster"] + ["describe-cluster"] * 3
                               + ["list-cluster-log-streams"])
    (create,) = fake.calls("create-cluster")
    assert create["argv"][create["argv"].index("--rollback-on-failure") + 1] == "false"
    assert create["argv"][create["argv"].index("-r") + 1] == REGION
    assert create["config_text"] == CONFIG_A
    assert create["config_mode"] == "0o600"
    assert not os.path.exists(create["config_path"]), "the private config copy must be removed"
    assert not os.path.exists(os.path.dirname(create["config_path"]))
    assert "waiting for CREATE_COMPLETE: CREATE_IN_PROGRESS" in result.stderr
    assert "cluster created" in result.stderr
    assert "SubnetId" not in result.stderr, "the config must not be echoed"


def test_create_rollback_can_be_enabled(fake, launch, monkeypatch):
    monkeypatch.setenv("PCLUSTER_AD_ROLLBACK_ON_FAILURE", "true")
    assert launch("create").code == EXIT_OK
    (create,) = fake.calls("create-cluster")
    assert create["argv"][create["argv"].index("--rollback-on-failure") + 1] == "true"


def test_create_private_head_node_has_null_public_ip(fake, launch):
    fake.scenario(public_ip=None)
    result = launch("create")
    assert result.code == EXIT_OK
    assert_final(result, "CREATE_COMPLETE", None, "10.0.0.10")


def test_create_adopts_existing_cluster_with_same_config(fake, launch):
    fake.seed("CREATE_COMPLETE")
    result = launch("create")
    assert result.code == EXIT_OK, result.stderr
    assert_final(result, "CREATE_COMPLETE", "203.0.113.10", "10.0.0.10")
    assert "create-cluster" not in fake.commands()
    assert fake.commands() == ["describe-cluster", "update-cluster", "list-cluster-log-streams"]
    assert "adopting the existing cluster" in result.stderr
    assert "no changes" in result.stderr


def test_create_adopts_and_converges_a_different_config(fake, launch):
    fake.seed("CREATE_COMPLETE", CONFIG_A)
    result = launch("create", CONFIG_B)
    assert result.code == EXIT_OK, result.stderr
    assert_final(result, "UPDATE_COMPLETE", "203.0.113.10", "10.0.0.10")
    assert "create-cluster" not in fake.commands()
    assert "Scheduling.SlurmQueues[compute].ComputeResources[c5].MaxCount: 4 -> 8" in result.stderr


def test_create_waits_for_a_cluster_already_being_created(fake, launch):
    fake.seed("CREATE_IN_PROGRESS", polls=3)
    result = launch("create")
    assert result.code == EXIT_OK, result.stderr
    assert_final(result, "CREATE_COMPLETE", "203.0.113.10", "10.0.0.10")
    assert "create-cluster" not in fake.commands()
    assert fake.commands()[-2:] == ["update-cluster", "list-cluster-log-streams"]  # converge: a no-change update


def test_create_waits_for_a_deletion_then_creates(fake, launch):
    fake.seed("DELETE_IN_PROGRESS", polls=2)
    result = launch("create")
    assert result.code == EXIT_OK, result.stderr
    assert_final(result, "CREATE_COMPLETE", "203.0.113.10", "10.0.0.10")
    assert fake.commands().count("create-cluster") == 1


def test_create_losing_a_race_adopts_the_winner(fake, launch):
    fake.scenario(create_race=True)
    result = launch("create")
    assert result.code == EXIT_OK, result.stderr
    assert_final(result, "CREATE_COMPLETE", "203.0.113.10", "10.0.0.10")
    assert "already exists; adopting it" in result.stderr
    assert fake.commands() == ["describe-cluster", "create-cluster", "describe-cluster", "update-cluster",
                               "list-cluster-log-streams"]


def test_create_refuses_an_existing_failed_cluster(fake, launch):
    fake.seed("CREATE_FAILED")
    result = launch("create")
    assert result.code == EXIT_FAILED
    assert_final(result, "CREATE_FAILED")  # seeded with rollback: the head node is gone
    assert fake.commands() == ["describe-cluster"]
    assert "OnNodeStartExecutionFailure" in result.stderr
    assert f"python -m launcher delete --cluster-name {NAME} --region {REGION}" in result.stderr


def test_create_failure_prints_failures(fake, launch):
    fake.scenario(create_outcome="CREATE_FAILED")
    result = launch("create")
    assert result.code == EXIT_FAILED
    assert result.final["status"] == "CREATE_FAILED"
    assert "failure OnNodeStartExecutionFailure: Failed to execute OnNodeStart script." in result.stderr
    assert "CloudFormation stack status CREATE_FAILED" in result.stderr
    assert "get-cluster-stack-events" in result.stderr
    (create,) = fake.calls("create-cluster")
    assert not os.path.exists(create["config_path"])


def test_create_validation_errors_are_readable(fake, launch):
    fake.scenario(
        create_errors=[
            {"level": "ERROR", "type": "SubnetsValidator", "message": "The subnet 'subnet-1' does not exist."},
            {"level": "ERROR", "type": "KeyPairValidator", "message": "The key pair 'k' does not exist."},
        ]
    )
    result = launch("create")
    assert result.code == EXIT_FAILED
    assert_final(result, None)
    assert "config ERROR [SubnetsValidator]: The subnet 'subnet-1' does not exist." in result.stderr
    assert "config ERROR [KeyPairValidator]: The key pair 'k' does not exist." in result.stderr
    assert "Invalid cluster configuration." in result.stderr
    (create,) = fake.calls("create-cluster")
    assert not os.path.exists(create["config_path"]), "removed on error too"


def test_create_timeout(fake, launch, clock):
    fake.scenario(create_outcome="STUCK")
    start = clock.now
    result = launch("create", CONFIG_A, "--timeout", "300", "--poll-seconds", "30")
    assert result.code == EXIT_TIMEOUT
    assert_final(result, "CREATE_IN_PROGRESS", "203.0.113.10", "10.0.0.10")
    assert "timed out after 5m00s waiting for CREATE_COMPLETE" in result.stderr
    assert clock.now - start == pytest.approx(300)
    (create,) = fake.calls("create-cluster")
    assert not os.path.exists(create["config_path"])


def _progress_times(stderr: str) -> list[int]:
    times = []
    for line in stderr.splitlines():
        match = re.match(r"launcher \[(?:(\d+)m)?(\d+)s\] .*waiting for", line)
        if match:
            times.append(int(match.group(1) or 0) * 60 + int(match.group(2)))
    return times


@pytest.mark.parametrize(("poll", "timeout"), [("10", 300), ("30", 600), ("120", 600)])
def test_progress_at_least_every_30_seconds(fake, launch, clock, poll, timeout):
    fake.scenario(create_outcome="STUCK")
    result = launch("create", CONFIG_A, "--timeout", str(timeout), "--poll-seconds", poll)
    assert result.code == EXIT_TIMEOUT
    times = _progress_times(result.stderr)
    assert times[0] == 0
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert gaps and max(gaps) <= 30, gaps
    assert timeout - times[-1] <= 30
    # describe-cluster runs every --poll-seconds, not more often.
    describes = fake.commands().count("describe-cluster")
    assert describes == pytest.approx(1 + timeout / float(poll), abs=2)


def test_transient_describe_errors_are_retried(fake, launch):
    fake.scenario(describe_errors=2)
    result = launch("create")
    assert result.code == EXIT_OK, result.stderr
    assert "describe-cluster failed (1/5): Failed when calling AWS service in describe_stack: Rate exceeded" in (
        result.stderr
    )


def test_persistent_describe_errors_fail(fake, launch):
    fake.scenario(describe_errors=50)
    result = launch("create")
    assert result.code == EXIT_FAILED
    assert "describe-cluster keeps failing" in result.stderr
    assert "create-cluster" not in fake.commands()


def test_pcluster_failing_without_output(fake, launch):
    fake.scenario(no_output=["create-cluster"])
    result = launch("create")
    assert result.code == EXIT_FAILED
    assert "pcluster-cli.log" in result.stderr


def test_missing_node_is_a_setup_error(fake, launch):
    fake.scenario(no_node=True)
    result = launch("create")
    assert result.code == EXIT_SETUP
    assert "Unable to find node executable" in result.stderr
    assert "install Node.js" in result.stderr


def test_empty_config_is_a_usage_error(fake, launch):
    result = launch("create", "  \n")
    assert result.code == EXIT_USAGE
    assert "empty" in result.stderr
    assert_final(result, None)
    assert fake.commands() == []


def test_config_from_a_file(fake, launch, tmp_path):
    config = tmp_path / "cluster.yaml"
    config.write_text(CONFIG_A)
    result = launch("create", None, "--config-file", str(config))
    assert result.code == EXIT_OK
    (create,) = fake.calls("create-cluster")
    assert create["config_text"] == CONFIG_A
    assert create["config_path"] != str(config)
    assert config.exists()


def test_missing_config_file_is_a_usage_error(fake, launch, tmp_path):
    result = launch("create", None, "--config-file", str(tmp_path / "nope.yaml"))
    assert result.code == EXIT_USAGE
    assert "cannot read the cluster config" in result.stderr


# ----------------------------------------------------------------------------- update


def test_update_applies_changes(fake, launch):
    fake.seed("CREATE_COMPLETE", CONFIG_A)
    result = launch("update", CONFIG_B)
    assert result.code == EXIT_OK, result.stderr
    assert_final(result, "UPDATE_COMPLETE", "203.0.113.10", "10.0.0.10")
    assert "applying changes (1):" in result.stderr
    assert "MaxCount: 4 -> 8" in result.stderr
    assert "update-compute-fleet" not in fake.commands()
    (update,) = fake.calls("update-cluster")
    assert update["config_text"] == CONFIG_B
    assert not os.path.exists(update["config_path"])


def test_update_without_changes_is_success(fake, launch):
    fake.seed("CREATE_COMPLETE", CONFIG_A)
    result = launch("update", CONFIG_A)
    assert result.code == EXIT_OK, result.stderr
    assert_final(result, "CREATE_COMPLETE", "203.0.113.10", "10.0.0.10")
    assert "no changes" in result.stderr
    assert fake.commands() == ["describe-cluster", "update-cluster", "list-cluster-log-streams"]


def test_update_stops_and_restarts_the_compute_fleet(fake, launch):
    fake.seed("CREATE_COMPLETE", CONFIG_A)
    fake.scenario(fleet_polls=2)
    result = launch("update", CONFIG_SHRINK)
    assert result.code == EXIT_OK, result.stderr
    assert_final(result, "UPDATE_COMPLETE", "203.0.113.10", "10.0.0.10")
    fleet = [c["argv"][c["argv"].index("--status") + 1] for c in fake.calls("update-compute-fleet")]
    assert fleet == ["STOP_REQUESTED", "START_REQUESTED"]
    commands = fake.commands()
    stop, start = (i for i, c in enumerate(commands) if c == "update-compute-fleet")
    updates = [i for i, c in enumerate(commands) if c == "update-cluster"]
    assert updates[0] < stop < updates[1] < start
    assert fake.state()["clusters"][NAME]["computeFleetStatus"] == "RUNNING"
    assert "All compute nodes must be stopped" in result.stderr
    assert "compute fleet STOPPED" in result.stderr
    assert "compute fleet RUNNING" in result.stderr


def test_update_failure_after_fleet_stop_restarts_the_fleet(fake, launch):
    fake.seed("CREATE_COMPLETE", CONFIG_A)
    fake.scenario(update_outcome="UPDATE_FAILED")
    result = launch("update", CONFIG_SHRINK)
    assert result.code == EXIT_FAILED
    assert result.final["status"] == "UPDATE_FAILED"
    assert "UPDATE_ROLLBACK_COMPLETE" in result.stderr
    fleet = [c["argv"][c["argv"].index("--status") + 1] for c in fake.calls("update-compute-fleet")]
    assert fleet == ["STOP_REQUESTED", "START_REQUESTED"]
    assert fake.state()["clusters"][NAME]["computeFleetStatus"] == "RUNNING"


def test_update_leaves_an_already_stopped_fleet_alone(fake, launch):
    fake.seed("CREATE_COMPLETE", CONFIG_A)
    fake.pcluster("update-compute-fleet", "-n", NAME, "-r", REGION, "--status", "STOP_REQUESTED")
    result = launch("update", CONFIG_SHRINK)
    assert result.code == EXIT_OK, result.stderr
    assert fake.calls("update-compute-fleet")[1:] == [], "no START_REQUESTED by the launcher"


def test_update_unsupported_change_fails_without_touching_the_fleet(fake, launch):
    fake.seed("CREATE_COMPLETE", CONFIG_A)
    result = launch("update", CONFIG_HEAD)
    assert result.code == EXIT_FAILED
    assert "update refused for HeadNode.InstanceType: t3.medium -> t3.large: Update actions are not currently " \
        "supported for the 'InstanceType' parameter" in result.stderr
    assert "ParallelCluster cannot change HeadNode.InstanceType in place" in result.stderr
    assert "needs a NEW cluster" in result.stderr
    assert "update-compute-fleet" not in " ".join(fake.commands())
    assert result.final["status"] == "CREATE_COMPLETE"


def test_mixed_refusals_do_not_stop_the_fleet_and_name_the_unsupported_fields(fake, launch):
    fake.seed("CREATE_COMPLETE", CONFIG_A)
    result = launch("update", CONFIG_HEAD_AND_SHRINK)
    assert result.code == EXIT_FAILED
    # Both refusals are shown, as ParallelCluster gave them ...
    assert "update refused for Scheduling.SlurmQueues[compute].ComputeResources[c5].MaxCount: 4 -> 2" in result.stderr
    assert "update refused for HeadNode.InstanceType" in result.stderr
    # ... but only the one a fleet stop cannot fix decides: no stop, a clear error naming it.
    error = [line for line in result.stderr.splitlines() if "ERROR" in line][-1]
    assert "cannot change HeadNode.InstanceType in place" in error and "MaxCount" not in error
    assert fake.commands() == ["describe-cluster", "update-cluster"]
    assert fake.state()["clusters"][NAME]["computeFleetStatus"] == "RUNNING"


@pytest.mark.parametrize(("strategy", "config", "stops"), [
    (None, CONFIG_SHRINK, True),  # COMPUTE_FLEET_STOP (ParallelCluster's default): a shrink needs a stop
    ("DRAIN", CONFIG_SHRINK, True),  # DRAIN does not remove nodes: a shrink still needs a stop
    ("TERMINATE", CONFIG_SHRINK, False),  # TERMINATE removes them itself
    (None, CONFIG_A.replace("- subnet-0123456789abcdef0\n", "- subnet-0fedcba9876543210\n"), True),
    ("DRAIN", CONFIG_A.replace("- subnet-0123456789abcdef0\n", "- subnet-0fedcba9876543210\n"), False),
    ("DRAIN", CONFIG_B, False),  # a larger MaxCount never needs a stop
])
def test_queue_update_strategy_decides_whether_the_fleet_stops(fake, launch, strategy, config, stops):
    """ParallelCluster's own verdict (through the stand-in) decides; the launcher stops the fleet only then."""
    base = with_strategy(CONFIG_A, strategy) if strategy else CONFIG_A
    target = with_strategy(config, strategy) if strategy else config
    fake.seed("CREATE_COMPLETE", base)
    result = launch("update", target)
    assert result.code == EXIT_OK, result.stderr
    assert_final(result, "UPDATE_COMPLETE", "203.0.113.10", "10.0.0.10")
    fleet = [c["argv"][c["argv"].index("--status") + 1] for c in fake.calls("update-compute-fleet")]
    assert fleet == (["STOP_REQUESTED", "START_REQUESTED"] if stops else [])
    assert fake.state()["clusters"][NAME]["config"] == target


def test_update_of_an_unknown_cluster_creates_it(fake, launch):
    result = launch("update", CONFIG_B)
    assert result.code == EXIT_OK, result.stderr
    assert_final(result, "CREATE_COMPLETE", "203.0.113.10", "10.0.0.10")
    assert "creating it" in result.stderr
    assert fake.calls("create-cluster")[0]["config_text"] == CONFIG_B


def test_update_of_a_failed_cluster_fails(fake, launch):
    fake.seed("CREATE_FAILED")
    result = launch("update", CONFIG_B)
    assert result.code == EXIT_FAILED
    assert "update-cluster" not in fake.commands()


# ----------------------------------------------------------------------------- delete


def test_delete_existing_cluster(fake, launch):
    fake.seed("CREATE_COMPLETE")
    result = launch("delete", None)
    assert result.code == EXIT_OK, result.stderr
    assert_final(result, "DELETED")
    assert fake.commands() == ["describe-cluster", "delete-cluster"] + ["describe-cluster"] * 3
    assert NAME not in fake.state()["clusters"]
    assert "waiting for the cluster to be deleted: DELETE_IN_PROGRESS" in result.stderr


def test_delete_of_a_missing_cluster_is_success(fake, launch):
    result = launch("delete", None)
    assert result.code == EXIT_OK
    assert_final(result, "DELETED")
    assert fake.commands() == ["describe-cluster"]


def test_delete_waits_for_a_deletion_in_progress(fake, launch):
    fake.seed("DELETE_IN_PROGRESS", polls=2)
    result = launch("delete", None)
    assert result.code == EXIT_OK
    assert_final(result, "DELETED")
    assert "delete-cluster" not in fake.commands()


def test_delete_of_a_failed_creation(fake, launch):
    fake.seed("CREATE_FAILED")
    result = launch("delete", None)
    assert result.code == EXIT_OK
    assert_final(result, "DELETED")


def test_delete_failed(fake, launch):
    fake.seed("CREATE_COMPLETE")
    fake.scenario(delete_outcome="DELETE_FAILED")
    result = launch("delete", None)
    assert result.code == EXIT_FAILED
    assert result.final["status"] == "DELETE_FAILED"
    assert "DELETE_FAILED" in result.stderr


def test_delete_timeout(fake, launch, clock):
    fake.seed("CREATE_COMPLETE")
    fake.scenario(delete_outcome="STUCK")
    result = launch("delete", None, "--timeout", "120", "--poll-seconds", "10")
    assert result.code == EXIT_TIMEOUT
    assert result.final["status"] == "DELETE_IN_PROGRESS"


# ----------------------------------------------------------------------------- what a user needs afterwards


def test_final_line_names_the_head_node_instance_the_version_and_the_log_group(fake, launch):
    """Issue 19 item 9: the instance id (SSM Session Manager), the version the cluster was created with (not the
    launcher's pin) and its CloudWatch log group, which describe-cluster does not give: list-cluster-log-streams
    does, in each stream's ARN; an update keeps the group."""
    fake.scenario(cluster_version="3.15.0")
    result = launch("create")
    assert result.code == EXIT_OK, result.stderr
    group = fake.state()["clusters"][NAME]["logGroup"]
    assert LOG_GROUP_RE.fullmatch(group)
    assert {k: result.final[k] for k in ("headNodeInstanceId", "pclusterVersion", "clusterLogGroup")} == {
        "headNodeInstanceId": HEAD_ID, "pclusterVersion": "3.15.0", "clusterLogGroup": group}
    assert fake.commands()[-1] == "list-cluster-log-streams"


def test_an_update_names_the_same_log_group(fake, launch):
    fake.seed("CREATE_COMPLETE", CONFIG_A)
    result = launch("update", CONFIG_B)
    assert result.code == EXIT_OK, result.stderr
    assert result.final["status"] == "UPDATE_COMPLETE"
    assert result.final["clusterLogGroup"] == fake.state()["clusters"][NAME]["logGroup"]


@pytest.mark.parametrize("knobs, why", [
    ({"log_streams": 0}, "no CloudWatch log stream yet"),
    ({"cloudwatch_logs": False}, "CloudWatch logging is off"),
    ({"log_stream_errors": "An error occurred (AccessDeniedException) when calling the DescribeLogStreams"
                           " operation"}, "list-cluster-log-streams failed: An error occurred (AccessDenied"),
], ids=["no-stream-yet", "logging-off", "access-denied"])
def test_no_log_group_leaves_the_output_empty_and_the_cluster_done(fake, launch, knobs, why):
    fake.scenario(**knobs)
    result = launch("create")
    assert result.code == EXIT_OK, result.stderr
    assert result.final["status"] == "CREATE_COMPLETE" and result.final["clusterLogGroup"] is None
    assert result.final["headNodeInstanceId"] == HEAD_ID
    assert why in result.stderr
    assert f"`pcluster list-cluster-log-streams -n {NAME} -r {REGION}`" in result.stderr


def test_a_failed_create_does_not_look_for_logs(fake, launch):
    fake.scenario(create_outcome="CREATE_FAILED")
    result = launch("create")
    assert result.code == EXIT_FAILED
    assert "list-cluster-log-streams" not in fake.commands()
    assert result.final["clusterLogGroup"] is None


# ----------------------------------------------------------------------------- pcluster executable


def test_explicit_pcluster_must_be_executable(tmp_path):
    with pytest.raises(SetupError, match="not an executable"):
        resolve_pcluster({"PCLUSTER_AD_PCLUSTER": str(tmp_path / "nope")})


def test_missing_pcluster_exits_4_with_a_final_line(fake, clock):
    stdout, stderr = io.StringIO(), io.StringIO()
    code = cli.main(
        ["delete", "--cluster-name", NAME, "--region", REGION],
        clock=clock, sleep=clock.sleep, stdout=stdout, stderr=stderr,
        env={"PCLUSTER_AD_PCLUSTER": "/nonexistent/pcluster"},
    )
    assert code == EXIT_SETUP
    assert json.loads(stdout.getvalue()) == {
        "clusterName": NAME, "status": None, "headNodePublicIp": None, "headNodePrivateIp": None,
        "loginNodesAddress": None, "headNodeInstanceId": None, "pclusterVersion": None, "clusterLogGroup": None,
    }


def _fake_repo(tmp_path: Path, script: str) -> Path:
    repo = tmp_path / "repo"
    (repo / "tools").mkdir(parents=True)
    (repo / "tools" / "pcluster_venv.sh").write_text(script)
    (repo / "pcluster_ad").mkdir()
    (repo / "pcluster_ad" / "__init__.py").touch()  # a checkout: its venvs sit beside the code
    return repo


def test_a_missing_venv_is_not_installed_during_a_deployment(tmp_path):
    """pip during `pulumi up` would fetch unreviewed code mid-deployment: the launcher names the setup command."""
    repo = _fake_repo(tmp_path, 'touch "$0.ran"\n')
    messages = []
    with pytest.raises(SetupError) as err:
        resolve_pcluster({"PATH": os.environ["PATH"]}, repo_dir=repo, log=messages.append)
    venv = repo / ".venv-pcluster"
    assert str(err.value) == (
        f"{venv}/bin/pcluster is missing; the launcher does not install anything during a deployment: run"
        f" `bash {repo}/tools/pcluster_venv.sh` (scripts/deploy.sh does this before `pulumi up`), then run the"
        " deployment again")
    assert not (repo / "tools" / "pcluster_venv.sh.ran").exists()
    assert not venv.exists()


def test_a_venv_with_another_version_is_not_reinstalled(tmp_path):
    repo = _fake_repo(tmp_path, 'touch "$0.ran"\n')
    _fake_venv(repo / ".venv-pcluster", "3.13.2")
    with pytest.raises(SetupError, match=r"is not aws-parallelcluster 3\.16\.1; the launcher does not install"):
        resolve_pcluster({"PATH": os.environ["PATH"]}, repo_dir=repo)
    with pytest.raises(SetupError) as err:
        resolve_pcluster({"PCLUSTER_AD_PCLUSTER_VERSION": "3.15.0"}, repo_dir=repo)
    assert (f"`PCLUSTER_AD_PCLUSTER_VENV={repo}/.venv-pcluster-3.15.0 bash {repo}/tools/pcluster_venv.sh 3.15.0`"
            in str(err.value))
    assert not (repo / "tools" / "pcluster_venv.sh.ran").exists()


def test_the_real_venv_is_used_when_present():
    if not (ROOT / ".venv-pcluster" / "bin" / "pcluster").exists():
        pytest.skip("no .venv-pcluster")
    messages = []
    path = resolve_pcluster({"PATH": os.environ["PATH"]}, log=messages.append)
    assert path == str(ROOT / ".venv-pcluster" / "bin" / "pcluster")
    assert messages == []


# ----------------------------------------------------------------------------- real process


def _subprocess_env(fake: Fake) -> dict:
    # A wrapper runs the stand-in with this interpreter: `#!/usr/bin/env python3` may be a slow pyenv shim.
    wrapper = fake.tmp / "pcluster"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE}" "$@"\n')
    wrapper.chmod(0o755)
    return {
        **os.environ,
        "PCLUSTER_AD_PCLUSTER": str(wrapper),
        "FAKE_PCLUSTER_STATE": str(fake.path),
        "PYTHONPATH": str(ROOT),
    }


def test_cli_as_a_real_process(fake):
    started = time.monotonic()
    base = [sys.executable, "-m", "launcher"]
    args = ["--cluster-name", NAME, "--region", REGION, "--poll-seconds", "0.05"]
    create = subprocess.run([*base, "create", *args], input=CONFIG_A, capture_output=True, text=True,
                            cwd=ROOT, env=_subprocess_env(fake), timeout=60, check=False)
    assert create.returncode == 0, create.stderr
    assert create.stdout.count("\n") == 1
    final = json.loads(create.stdout)
    assert LOG_GROUP_RE.fullmatch(final.pop("clusterLogGroup"))
    assert final == {
        "clusterName": NAME, "status": "CREATE_COMPLETE",
        "headNodePublicIp": "203.0.113.10", "headNodePrivateIp": "10.0.0.10", "loginNodesAddress": None,
        "headNodeInstanceId": HEAD_ID, "pclusterVersion": "3.16.1",
    }
    assert "waiting for CREATE_COMPLETE" in create.stderr

    update = subprocess.run([*base, "update", *args, "--config-file", "-"], input=CONFIG_B, capture_output=True,
                            text=True, cwd=ROOT, env=_subprocess_env(fake), timeout=60, check=False)
    assert update.returncode == 0, update.stderr
    assert json.loads(update.stdout.splitlines()[-1])["status"] == "UPDATE_COMPLETE"

    delete = subprocess.run([*base, "delete", *args], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                            cwd=ROOT, env=_subprocess_env(fake), timeout=60, check=False)
    assert delete.returncode == 0, delete.stderr
    assert json.loads(delete.stdout)["status"] == "DELETED"

    bad = subprocess.run([*base, "create", "--cluster-name", "1bad", "--region", REGION], capture_output=True,
                         text=True, cwd=ROOT, env=_subprocess_env(fake), timeout=60, check=False)
    assert bad.returncode == EXIT_USAGE
    assert time.monotonic() - started < 30


def test_sigterm_removes_the_config_copy(fake):
    fake.scenario(create_outcome="STUCK")
    proc = subprocess.Popen(
        [sys.executable, "-m", "launcher", "create", "--cluster-name", NAME, "--region", REGION,
         "--poll-seconds", "0.05"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=ROOT, env=_subprocess_env(fake),
    )
    proc.stdin.write(CONFIG_A)
    proc.stdin.close()
    proc.stdin = None  # communicate() must not flush it again
    deadline = time.monotonic() + 30
    while not fake.calls("create-cluster") or fake.commands().count("describe-cluster") < 3:
        assert time.monotonic() < deadline, "launcher never reached the wait"
        time.sleep(0.05)
    config_path = fake.calls("create-cluster")[0]["config_path"]
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert json.loads(stdout.splitlines()[-1])["status"] == "CREATE_IN_PROGRESS"
    assert not os.path.exists(config_path)
    assert "interrupted" in stderr


def test_launcher_class_with_a_scripted_runner(clock):
    """The core takes any runner: a scripted one proves no subprocess is needed for the logic."""
    answers = iter([
        (1, {"message": f"Cluster '{NAME}' does not exist or belongs to an incompatible ParallelCluster major "
                        "version."}),
        (0, {"cluster": {"clusterName": NAME, "clusterStatus": "CREATE_IN_PROGRESS"}}),
        (0, {"clusterName": NAME, "clusterStatus": "CREATE_COMPLETE", "cloudFormationStackStatus": "CREATE_COMPLETE",
             "version": "3.16.1", "headNode": {"privateIpAddress": "10.1.2.3", "instanceId": "i-0aaaabbbbccccdddd"}}),
        (0, {"logStreams": [{"logStreamName": "ip-10-1-2-3.i-0aaaabbbbccccdddd.cfn-init", "logStreamArn":
             f"arn:aws:logs:{REGION}:123456789012:log-group:/aws/parallelcluster/{NAME}-202609011200:log-stream:"
             "ip-10-1-2-3.i-0aaaabbbbccccdddd.cfn-init"}]}),
    ])
    seen = []

    def runner(args, timeout):
        from pcluster_ad.launcher.core import PclusterResult

        seen.append(list(args))
        code, data = next(answers)
        return PclusterResult(code, json.dumps(data))

    launcher = Launcher(NAME, REGION, runner, clock=clock, sleep=clock.sleep, err=io.StringIO())
    launcher.create("/dev/null")
    assert launcher.summary() == {
        "clusterName": NAME, "status": "CREATE_COMPLETE", "headNodePublicIp": None, "headNodePrivateIp": "10.1.2.3",
        "loginNodesAddress": None, "headNodeInstanceId": "i-0aaaabbbbccccdddd", "pclusterVersion": "3.16.1",
        "clusterLogGroup": f"/aws/parallelcluster/{NAME}-202609011200",
    }
    assert [a[0] for a in seen] == ["describe-cluster", "create-cluster", "describe-cluster",
                                    "list-cluster-log-streams"]


# ----------------------------------------------------------------------------- behaviours of the real 3.16.1 CLI


def test_stand_in_dryrun_answers_like_the_real_cli(fake, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG_A)
    proc = subprocess.run([sys.executable, str(FAKE), "create-cluster", "-n", NAME, "-r", REGION, "-c", str(config),
                           "--dryrun", "true"], capture_output=True, text=True, check=False,
                          env={**os.environ, "FAKE_PCLUSTER_STATE": str(fake.path)})
    assert proc.returncode == 1
    assert json.loads(proc.stdout) == {"message": "Request would have succeeded, but DryRun flag is set."}
    assert fake.state()["clusters"] == {}, "a dry run creates nothing"
    fake.seed("CREATE_COMPLETE", CONFIG_A)
    config.write_text(CONFIG_B)
    answer = fake.pcluster("update-cluster", "-n", NAME, "-r", REGION, "-c", str(config), "--dryrun", "true")
    assert answer["message"] == "Request would have succeeded, but DryRun flag is set."
    assert [c["parameter"] for c in answer["changeSet"]] == ["Scheduling.SlurmQueues[compute].ComputeResources[c5]"
                                                             ".MaxCount"]
    assert fake.state()["clusters"][NAME]["config"] == CONFIG_A, "a dry run updates nothing"


def test_create_failure_waits_for_the_rollback_to_settle(fake, launch, monkeypatch):
    """pcluster says CREATE_FAILED as soon as CloudFormation starts ROLLBACK_IN_PROGRESS: the launcher reports
    the failure only once the stack has settled (ROLLBACK_COMPLETE), so a retry or a delete does not collide
    with the rollback."""
    monkeypatch.setenv("PCLUSTER_AD_ROLLBACK_ON_FAILURE", "true")
    fake.scenario(create_outcome="CREATE_FAILED", rollback_polls=3)
    result = launch("create")
    assert result.code == EXIT_FAILED
    assert "CREATE_FAILED (CloudFormation ROLLBACK_IN_PROGRESS" in result.stderr  # it kept waiting
    assert "CloudFormation stack status ROLLBACK_COMPLETE" in result.stderr
    assert fake.state()["clusters"][NAME]["cloudFormationStackStatus"] == "ROLLBACK_COMPLETE"
    assert result.final["status"] == "CREATE_FAILED" and result.final["headNodePrivateIp"] is None


def test_create_and_delete_wait_out_a_rollback_in_progress(fake, launch):
    fake.scenario(create_outcome="CREATE_FAILED", rollback_polls=3, create_polls=0)
    config = fake.tmp / "c.yaml"
    config.write_text(CONFIG_A)
    fake.pcluster("create-cluster", "-n", NAME, "-r", REGION, "-c", str(config))
    info = fake.pcluster("describe-cluster", "-n", NAME, "-r", REGION)
    assert (info["clusterStatus"], info["cloudFormationStackStatus"]) == ("CREATE_FAILED", "ROLLBACK_IN_PROGRESS")
    result = launch("create")
    assert result.code == EXIT_FAILED
    assert "ROLLBACK_IN_PROGRESS) to finish" in result.stderr and "delete it first" in result.stderr
    assert "create-cluster" not in fake.commands()[1:]
    assert fake.state()["clusters"][NAME]["cloudFormationStackStatus"] == "ROLLBACK_COMPLETE"


def test_delete_waits_for_a_rollback_before_deleting(fake, launch):
    fake.scenario(create_outcome="CREATE_FAILED", rollback_polls=3, create_polls=0)
    config = fake.tmp / "c.yaml"
    config.write_text(CONFIG_A)
    fake.pcluster("create-cluster", "-n", NAME, "-r", REGION, "-c", str(config))
    fake.pcluster("describe-cluster", "-n", NAME, "-r", REGION)  # now ROLLBACK_IN_PROGRESS
    state = fake.state()
    state["calls"] = []
    fake.save(state)
    result = launch("delete", None)
    assert result.code == EXIT_OK, result.stderr
    describes_before_delete = fake.commands().index("delete-cluster")
    assert describes_before_delete >= 4, fake.commands()  # waited the rollback out first


@pytest.mark.parametrize("fleet", ["PROTECTED", "UNKNOWN"])
def test_update_needing_a_fleet_stop_reports_a_protected_or_unknown_fleet(fake, launch, fleet):
    fake.seed("CREATE_COMPLETE", CONFIG_A)
    state = fake.state()
    state["clusters"][NAME]["computeFleetStatus"] = fleet
    fake.save(state)
    result = launch("update", CONFIG_SHRINK)
    assert result.code == EXIT_FAILED
    assert f"but the fleet is {fleet}, which the launcher leaves to you" in result.stderr
    if fleet == "PROTECTED":
        assert "repeated bootstrap failures" in result.stderr
        assert f"pcluster update-compute-fleet -n {NAME} -r {REGION} --status START_REQUESTED" in result.stderr
    assert "update-compute-fleet" not in fake.commands(), "a stop/start would clear PROTECTED"
    assert fake.state()["clusters"][NAME]["computeFleetStatus"] == fleet


def test_update_needing_no_fleet_stop_works_with_a_protected_fleet_and_warns(fake, launch):
    fake.seed("CREATE_COMPLETE", CONFIG_A)
    state = fake.state()
    state["clusters"][NAME]["computeFleetStatus"] = "PROTECTED"
    fake.save(state)
    result = launch("update", CONFIG_B)
    assert result.code == EXIT_OK, result.stderr
    assert "WARNING: the compute fleet is PROTECTED" in result.stderr
    assert "update-compute-fleet" not in fake.commands()


def test_create_reports_a_protected_fleet(fake, launch):
    fake.scenario(fleet_status="PROTECTED")
    result = launch("create")
    assert result.code == EXIT_OK, result.stderr
    assert "WARNING: the compute fleet is PROTECTED: ParallelCluster stopped launching compute nodes" in result.stderr


@pytest.mark.parametrize("command", ["create", "update", "delete"])
def test_missing_credentials_fail_at_once(fake, launch, clock, command):
    fake.scenario(no_credentials=True)
    result = launch(command, CONFIG_A if command != "delete" else None)
    assert result.code == EXIT_SETUP
    assert fake.commands() == ["describe-cluster"], "no retries"
    assert clock.sleeps == []
    assert "Unable to locate credentials: no usable AWS credentials for region eu-west-1" in result.stderr
    assert "AWS_PROFILE" in result.stderr


def test_update_with_another_parallelcluster_version_is_refused_clearly(fake, launch):
    fake.scenario(cluster_version="3.15.0")
    fake.seed("CREATE_COMPLETE", CONFIG_A)
    result = launch("update", CONFIG_B)
    assert result.code == EXIT_FAILED
    assert "the update can be performed only with the same ParallelCluster version (3.15.0)" in result.stderr
    assert "created with ParallelCluster 3.15.0" in result.stderr and "pclusterVersion" in result.stderr
    assert fake.commands() == ["describe-cluster", "update-cluster"]


def test_stand_in_update_verdict_is_parallelclusters_own(fake, tmp_path):
    """The stand-in's refusal for a mixed change equals ConfigPatch's, field by field."""
    from pcluster_ad.tools.pcluster_schema import pcluster_python

    fake.seed("CREATE_COMPLETE", CONFIG_A)
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG_HEAD_AND_SHRINK)
    answer = fake.pcluster("update-cluster", "-n", NAME, "-r", REGION, "-c", str(config))
    proc = subprocess.run([str(pcluster_python()), str(ROOT / "tools" / "config_patch_verdict.py")],
                          input=json.dumps({"cases": [{"base": CONFIG_A, "target": CONFIG_HEAD_AND_SHRINK,
                                                       "running": True}]}),
                          capture_output=True, text=True, check=False, timeout=300)
    (verdict,) = json.loads(proc.stdout)["results"]
    assert answer["message"] == "Update failure"
    assert answer["updateValidationErrors"] == [
        {k: v for k, v in e.items() if k != "updatePolicy"} for e in verdict["updateValidationErrors"]]
    policies = {e["parameter"]: e["updatePolicy"] for e in verdict["updateValidationErrors"]}
    assert policies == {"HeadNode.InstanceType": "UNSUPPORTED",
                        "Scheduling.SlurmQueues[compute].ComputeResources[c5].MaxCount":
                            "RESIZE_UPDATE_STRATEGY_ON_REMOVE"}


# ----------------------------------------------------------------------------- the real pcluster CLI


@pytest.fixture
def moto_endpoint(tmp_path):
    """A private moto server (AWS stand-in) for the real pcluster CLI; stopped afterwards."""
    import socket
    import urllib.request

    server = ROOT / "venv" / "bin" / "moto_server"
    if not server.exists() or not (ROOT / ".venv-pcluster" / "bin" / "pcluster").exists():
        pytest.skip("needs venv/bin/moto_server and .venv-pcluster")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "moto server did not start"
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_real_pcluster_cli_contract(moto_endpoint, tmp_path):
    """The real pcluster 3.16.1 (AWS answered by moto): its not-found and config-error answers are read right."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PCLUSTER_AD_", "FAKE_PCLUSTER"))}
    env.update(AWS_ENDPOINT_URL=moto_endpoint, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
               AWS_EC2_METADATA_DISABLED="true", HOME=str(tmp_path), PYTHONPATH=str(ROOT))
    base = [sys.executable, "-m", "launcher"]
    args = ["--cluster-name", NAME, "--region", REGION, "--poll-seconds", "1", "--timeout", "120"]

    delete = subprocess.run([*base, "delete", *args], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                            cwd=ROOT, env=env, timeout=120, check=False)
    assert delete.returncode == EXIT_OK, delete.stderr
    assert json.loads(delete.stdout)["status"] == "DELETED"
    assert "does not exist; nothing to delete" in delete.stderr

    # update of a missing cluster -> create-cluster, which the real CLI refuses: the subnet is unknown.
    # "The subnet ID '...' does not exist" must not be taken for "the cluster does not exist".
    update = subprocess.run([*base, "update", *args], input=CONFIG_A, capture_output=True, text=True, cwd=ROOT,
                            env=env, timeout=120, check=False)
    assert update.returncode == EXIT_FAILED, update.stderr
    assert "creating it" in update.stderr
    assert "create-cluster failed: Invalid cluster configuration: The subnet ID 'subnet-0123456789abcdef0' does not" \
           " exist" in update.stderr
    assert json.loads(update.stdout)["status"] is None


def _fake_venv(venv: Path, version: str) -> Path:
    pcluster = venv / "bin" / "pcluster"
    pcluster.parent.mkdir(parents=True)
    pcluster.write_text("#!/bin/sh\n")
    pcluster.chmod(0o755)
    (venv / "lib" / "python3.11" / "site-packages" / f"aws_parallelcluster-{version}.dist-info").mkdir(parents=True)
    return pcluster


def test_stack_pcluster_version_selects_its_own_venv(tmp_path):
    (tmp_path / "pcluster_ad").mkdir()
    (tmp_path / "pcluster_ad" / "__init__.py").touch()  # a checkout
    default = _fake_venv(tmp_path / ".venv-pcluster", "3.16.1")
    other = _fake_venv(tmp_path / ".venv-pcluster-3.15.0", "3.15.0")
    assert resolve_pcluster({}, repo_dir=tmp_path) == str(default)
    assert resolve_pcluster({"PCLUSTER_AD_PCLUSTER_VERSION": "3.16.1"}, repo_dir=tmp_path) == str(default)
    assert resolve_pcluster({"PCLUSTER_AD_PCLUSTER_VERSION": "3.15.0"}, repo_dir=tmp_path) == str(other)
    with pytest.raises(SetupError, match="not a version"):
        resolve_pcluster({"PCLUSTER_AD_PCLUSTER_VERSION": "latest"}, repo_dir=tmp_path)


def test_real_pcluster_cli_without_credentials_fails_at_once(moto_endpoint, tmp_path):
    """The real pcluster 3.16.1 without credentials: {"message": "Unable to locate credentials"}, exit 1; the
    launcher stops at the first call (no retries). moto answers anything that would still be sent."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PCLUSTER_AD_", "FAKE_PCLUSTER"))}
    env.update(AWS_ENDPOINT_URL=moto_endpoint, AWS_EC2_METADATA_DISABLED="true", HOME=str(tmp_path),
               AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
               PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "launcher", "delete", "--cluster-name", NAME, "--region", REGION,
                           "--poll-seconds", "1", "--timeout", "600"], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, cwd=ROOT, env=env, timeout=300, check=False)
    assert proc.returncode == EXIT_SETUP, proc.stderr
    assert "Unable to locate credentials: no usable AWS credentials" in proc.stderr
    assert "describe-cluster failed (1/" not in proc.stderr, "no retries"


def test_an_installed_package_keeps_its_venvs_in_the_users_data_directory(tmp_path):
    """A wheel in site-packages (no checkout marker): the venv is looked up, and made, outside site-packages."""
    package = _fake_repo(tmp_path, "")
    (package / "pcluster_ad" / "__init__.py").unlink()
    home = tmp_path / "home"
    with pytest.raises(SetupError) as err:
        resolve_pcluster({"HOME": str(home)}, repo_dir=package)
    venv = home / ".local" / "share" / "pcluster-ad" / ".venv-pcluster"
    assert str(err.value).startswith(f"{venv / 'bin' / 'pcluster'} is missing")
    assert f"bash {package / 'tools' / 'pcluster_venv.sh'}" in str(err.value)
    made = _fake_venv(tmp_path / "data" / "pcluster-ad" / ".venv-pcluster", "3.16.1")
    assert resolve_pcluster({"XDG_DATA_HOME": str(tmp_path / "data")}, repo_dir=package) == str(made)
