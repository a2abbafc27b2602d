"""Computer objects of power-saved nodes do not pile up (issue 20, "Directory sizing"): the termination handler
deletes a node's object and record on its EC2 event; the hourly sweep removes what a missed event left (object and
record), at most `sweep_max_deletes` per run, never the object of an instance EC2 still reports, whatever its tags.
The handlers run on moto's EC2 and DynamoDB; the directory is a stand-in that holds objects (the LDAP side runs
against a real Samba DC in tests/adlab/test_directory_admin.py)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

import tests.test_directory_admin as admin_tests
from pcluster_ad.components.directory_admin import _role_policy
from pcluster_ad.lambda_src import directory_admin as da
from tests.test_directory_admin import ENV, OWN_OU, TABLE, event

aws = admin_tests.aws  # its fixture: moto EC2 and the window table

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


class HoldingDirectory:
    """The Computers OU as a dict {NAME: created}: what the handlers list and delete."""

    def __init__(self) -> None:
        self.objects: dict[str, datetime] = {}
        self.layout = da.Layout("test.domain", "pcluster-ad-dev")

    def owner_value_of(self, kind: str, name: str | None = None) -> str:
        return OWN_OU

    def exists(self, dn: str) -> bool:
        return True

    def add(self, name: str, created: datetime) -> None:
        self.objects[name] = created

    def list_computers(self) -> list[dict]:
        return [{"name": n, "dn": f"CN={n},{self.layout.computers_dn}", "created": c} for n, c in self.objects.items()]

    def delete_tree(self, dn: str) -> bool:
        return self.objects.pop(dn.split(",", 1)[0][3:], None) is not None

    def delete_computer(self, name: str) -> str:
        return "deleted" if self.objects.pop(name.upper(), None) is not None else "absent"


def settings(**env: str) -> da.Settings:
    return da.load_settings({**ENV, **env})


def join(aws_, d: HoldingDirectory, iid: str, at: datetime) -> str:
    """What the join function leaves for a node: its object, and its record (issuedAt, no TTL)."""
    name = da.computer_name(settings().computer_prefix, iid)
    d.add(name, at)
    aws_[1].put_item(TableName=TABLE, Item={"instanceId": {"S": iid}, "computerName": {"S": name},
                                            "issuedAt": {"S": at.isoformat()}})
    return name


def records(aws_) -> set[str]:
    """The instances with a join record, but for the tombstones of terminated nodes (terminatedAt, a TTL)."""
    items = aws_[1].scan(TableName=TABLE)["Items"]
    assert all("expiresAt" in i for i in items if "terminatedAt" in i), items
    return {i["instanceId"]["S"] for i in items if "terminatedAt" not in i}


def test_a_missed_termination_is_swept_with_its_record(aws):
    """A node whose termination event never arrived (a directory outage outlasted Lambda's retries): the next
    sweep after the grace period deletes its object AND its join record (which has no TTL once an object was
    made); the live node keeps both."""
    ec2, _dynamodb, launch = aws
    d = HoldingDirectory()
    live, gone = launch(count=2)
    names = {iid: join(aws, d, iid, NOW - timedelta(hours=3)) for iid in (live, gone)}
    ec2.terminate_instances(InstanceIds=[gone])  # no event delivered
    out = da.sweep(settings=settings(), ec2=ec2, directory=d, now=NOW, dynamodb=aws[1])
    assert out["deleted"] == [names[gone]] and out["left"] == 0
    assert set(d.objects) == {names[live]} and records(aws) == {live}


def test_a_live_node_without_the_cluster_tag_keeps_its_object(aws):
    """Someone removed the cluster tag of a running node (ec2:DeleteTags): the tag-filtered list misses it, but its
    record names it and EC2 reports it running: its object and record stay (deleting them would let that node's
    join window hand out a second object)."""
    ec2, _dynamodb, launch = aws
    d = HoldingDirectory()
    (iid,) = launch()
    name = join(aws, d, iid, NOW - timedelta(hours=3))
    ec2.delete_tags(Resources=[iid], Tags=[{"Key": da.CLUSTER_TAG}])
    out = da.sweep(settings=settings(), ec2=ec2, directory=d, now=NOW, dynamodb=aws[1])
    assert out["deleted"] == [] and name in out["kept"]
    assert set(d.objects) == {name} and records(aws) == {iid}


def test_the_sweep_is_bounded_per_run_and_finishes_the_backlog_in_later_runs(aws):
    """1,200 orphans (a long directory outage during a scale-down): 500 a run, `left` says how many wait."""
    ec2, _dynamodb, _launch = aws
    d = HoldingDirectory()
    prefix = settings().computer_prefix
    for n in range(1200):
        d.add(f"{prefix}{n:0{15 - len(prefix)}X}", NOW - timedelta(hours=5))
    runs = []
    for hour in range(4):
        out = da.sweep(settings=settings(), ec2=ec2, directory=d, now=NOW + timedelta(hours=hour), dynamodb=aws[1])
        runs.append((len(out["deleted"]), out["left"]))
    assert runs == [(500, 700), (500, 200), (200, 0), (0, 0)] and d.objects == {}
    small = da.sweep(settings=settings(SWEEP_MAX_DELETES="7"), ec2=ec2, directory=d, now=NOW, dynamodb=aws[1])
    assert small["deleted"] == [] and settings(SWEEP_MAX_DELETES="7").sweep_max_deletes == 7


@pytest.mark.parametrize("missed_share", [0.0, 0.1])
def test_power_save_cycles_leave_no_computer_objects(aws, missed_share):
    """Five power-save cycles of 40 nodes (launch, join, terminate): with every event delivered, each termination
    takes its object at once, so the directory never holds more than the live nodes; with events missed, the
    leftovers are bounded by the misses since the last sweep, and one sweep after the grace period takes them all.
    No record is left either, but the tombstones of terminated nodes (with their TTL)."""
    ec2, dynamodb, launch = aws
    d = HoldingDirectory()
    s = settings()
    rng = random.Random(20)
    peak, missed = 0, 0
    for cycle in range(5):
        at = NOW + timedelta(hours=cycle)
        ids = launch(count=40)
        for iid in ids:
            join(aws, d, iid, at)
        peak = max(peak, len(d.objects))
        ec2.terminate_instances(InstanceIds=ids)
        for iid in ids:
            if rng.random() < missed_share:
                missed += 1
                continue
            out = da.handle_termination(event(iid), settings=s, ec2=ec2, dynamodb=dynamodb, directory=lambda: d)
            assert out["result"] == "deleted", out
        assert len(d.objects) == missed  # the delivered events left nothing
    assert peak <= 40 + missed and (missed or peak == 40)  # the live nodes, plus earlier misses
    out = da.sweep(settings=s, ec2=ec2, directory=d, now=NOW + timedelta(hours=8), dynamodb=dynamodb)
    assert len(out["deleted"]) == missed and d.objects == {} and records(aws) == set()
    print(f"\n200 nodes over 5 cycles, {missed} termination events missed: at most {peak} objects at once,"
          f" {len(out['deleted'])} swept, 0 left")


def test_every_aws_call_of_termination_and_sweep_is_in_the_role_policy(aws):
    """The calls the handlers make (botocore's own operation names, seen by an event hook) are actions the
    function's role may take."""
    ec2, dynamodb, launch = aws
    seen: set[str] = set()
    for client in (ec2, dynamodb):
        client.meta.events.register("before-call", lambda model, **_: seen.add(
            f"{model.service_model.endpoint_prefix}:{model.name}"))
    d = HoldingDirectory()
    live, missed, delivered, waiting = launch(count=4)
    for iid in (live, missed, delivered):
        join(aws, d, iid, NOW - timedelta(hours=3))
    # A join answered 429 (its authorization recorded, no object yet) whose node then terminates.
    dynamodb.put_item(TableName=TABLE, Item={da.WINDOW_KEY: {"S": waiting}, "authorizedRoleId": {"S": "AROAWAIT"},
                                             "authorizedUntil": {"N": str(int(NOW.timestamp()) + 120)}})
    ec2.terminate_instances(InstanceIds=[missed, delivered, waiting])
    seen.clear()
    da.handle_termination(event(delivered), settings=settings(), ec2=ec2, dynamodb=dynamodb, directory=lambda: d)
    out = da.handle_termination(event(waiting), settings=settings(), ec2=ec2, dynamodb=dynamodb, directory=lambda: d)
    assert out["result"] == "authorization withdrawn", out
    da.sweep(settings=settings(), ec2=ec2, directory=d, now=NOW, dynamodb=dynamodb)
    policy = _role_policy(parameter_arns=["p"], user_parameters_arn="u", key_arn="k", via_ssm="v", directory_arn="d",
                          table_arn="t", log_group_arn="l")
    allowed = {a for st in policy["Statement"] for a in st["Action"]}
    assert seen == {"ec2:DescribeInstances", "dynamodb:GetItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem",
                    "dynamodb:Scan"}
    assert seen <= allowed


class TickingDirectory(HoldingDirectory):
    """Each delete takes one second of the run (the clock the sweep reads as `time_left`)."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def time_left(self) -> float:
        return self.seconds

    def delete_tree(self, dn: str) -> bool:
        self.seconds -= 1
        return super().delete_tree(dn)


def test_the_sweep_stops_before_the_function_times_out(aws):
    """A slow directory: with 40 s of the run left and 1 s a delete, the sweep deletes while at least
    SWEEP_RESERVE_SECONDS (20) are left, then counts the rest as `left` for the next run."""
    ec2, dynamodb, _launch = aws
    d = TickingDirectory(40)
    prefix = settings().computer_prefix
    for n in range(100):
        d.add(f"{prefix}{n:0{15 - len(prefix)}X}", NOW - timedelta(hours=5))
    out = da.sweep(settings=settings(), ec2=ec2, directory=d, now=NOW, dynamodb=dynamodb, time_left=d.time_left)
    assert (len(out["deleted"]), out["left"], len(d.objects)) == (21, 79, 79)


def test_the_lambda_entry_point_hands_the_run_time_left_to_the_sweep(monkeypatch):
    seen = {}

    def fake_handle(event, *, settings, time_left, **clients):
        seen["left"] = time_left()
        return {}

    class Context:
        def get_remaining_time_in_millis(self) -> int:
            return 45_500

    monkeypatch.setattr(da, "handle", fake_handle)
    monkeypatch.setattr(da, "_settings", settings())
    monkeypatch.setattr(da, "_clients", {})
    da.handler({"op": "sweep"}, Context())
    assert seen == {"left": 45.5}
