"""Attack review of issue 20, second round: admission control (join_handler._Lease), the node's busy backoff
(join-domain.sh pyhelper busy_wait), the DirectoryAdmin sweep.

Attackers: (1) an AD user or a job on a node (the node role's credentials from IMDS unless restrictImds), (2) root
on one compute node (mid-join or joined), (3) someone who starts instances with the cluster's instance profile
outside the cluster's launch templates. Attacks refused today are plain tests; findings not fixed here are
xfail(strict=True) and flip with the fix."""

# ruff: noqa: F811  (the fixtures of tests/test_join_handler.py are imported, then requested by name)
from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pcluster_ad.lambda_src import directory_admin as da
from pcluster_ad.lambda_src import join_handler as jh
from tests.test_bootstrap_backoff import H
from tests.test_join_admission import calls, capped_to, leases  # noqa: F401  (fixture)
from tests.test_join_handler import (  # noqa: F401  (fixtures)
    TABLE,
    StalePreCheck,
    World,
    body,
    fake_aws_env,
    fake_dc,
    fake_sts,
    fresh_template_cache,
    no_secret_leaks,
    responses,
    world,
)

CAP = 4


@pytest.fixture
def capped(world: World) -> World:
    return capped_to(world, CAP)



# --- (3) instances started with the cluster's profile outside its launch templates -------------------------------


class InFlight:
    """EC2 stand-in: while a hand-started instance's request is inside its DescribeInstances (the lease already
    taken), the next one arrives; with CAP of them in flight, `then()` runs. Models CAP concurrent requests of
    the attacker without threads or clocks."""

    def __init__(self, world: World, attackers: list[str], then: Any) -> None:
        self.world, self.attackers, self.then, self.depth, self.result = world, attackers, then, 0, None

    def describe_instances(self, **kwargs: Any) -> Any:
        self.depth += 1
        if self.depth < len(self.attackers):
            assert self.world.call(self.world.event(self.attackers[self.depth]), ec2=self)["statusCode"] == 403
        elif self.depth == len(self.attackers):
            self.result = self.then()
        return self.world.clients["ec2"].describe_instances(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.world.clients["ec2"], name)


def test_requests_of_hand_started_instances_in_flight_do_not_deny_a_nodes_join(capped: World) -> None:
    """CAP instances started with the cluster's instance profile from a template of their own keep one request
    each in flight: each holds a slot while EC2 is asked. A node of the cluster asking then must still join."""
    attackers = [capped.launch(template="hand") for _ in range(CAP)]
    node = capped.launch()
    flight = InFlight(capped, attackers, then=lambda: capped.call(capped.event(node)))
    assert capped.call(capped.event(attackers[0]), ec2=flight)["statusCode"] == 403
    assert flight.result is not None
    assert flight.result["statusCode"] == 200, body(flight.result)


def test_refused_hand_started_instances_hold_no_slot_after_their_requests(capped: World) -> None:
    """What holds today: once their requests are answered, the hand-started instances hold nothing."""
    attackers = [capped.launch(template="hand") for _ in range(CAP)]
    flight = InFlight(capped, attackers, then=lambda: None)
    assert capped.call(capped.event(attackers[0]), ec2=flight)["statusCode"] == 403
    assert leases(capped) == {}
    node = capped.launch()
    assert capped.call(capped.event(node))["statusCode"] == 200


# --- (2) root on a node whose join failed: its window expired without an object -----------------------------------


def test_a_flood_after_the_window_expired_without_an_object_costs_no_ec2_call(capped: World, calls) -> None:
    """Root on a node whose join failed (an answer counted, no object issued) and which still runs after its window:
    its requests are refused whatever EC2 says (same launch: expired; another launch: the record's launchTime), so
    the record alone refuses them: no lease, no STS, EC2 or IAM call."""
    node = capped.launch()
    capped.fake_dc.fail_always = jh.computer_account.DirectoryUnavailable("no DC")
    assert capped.call(capped.event(node))["statusCode"] == 503  # one answer counted, no object
    capped.fake_dc.fail_always = None
    late = capped.minutes_after_launch(node, capped.settings.window_minutes + 1)
    calls.take()
    for _ in range(50):
        assert capped.call(capped.event(node), now=late)["statusCode"] == 403
    flood = calls.take()
    print(f"\n50 requests from a node after its window expired: {dict(flood)}")
    assert {service for service, _ in flood} == {"dynamodb"}, flood
    assert flood == Counter({("dynamodb", "GetItem"): 50}), flood
    assert leases(capped) == {}


def test_a_close_after_the_window_expired_is_still_refused_by_the_precheck(capped: World) -> None:
    node = capped.launch()
    assert capped.call(capped.event(node))["statusCode"] == 200
    late = capped.minutes_after_launch(node, capped.settings.window_minutes + 1)
    response = capped.call(capped.close_event(node), now=late)
    assert response["statusCode"] == 403
    assert "closedAt" not in capped.window(node)


def test_a_node_within_its_window_after_a_failed_attempt_still_joins(capped: World) -> None:
    node = capped.launch()
    capped.fake_dc.fail_always = jh.computer_account.DirectoryUnavailable("no DC")
    assert capped.call(capped.event(node))["statusCode"] == 503
    capped.fake_dc.fail_always = None
    soon = capped.minutes_after_launch(node, capped.settings.window_minutes - 1)
    assert capped.call(capped.event(node), now=soon)["statusCode"] == 200


# --- (2) root on a node mid-join: a refused request of its own frees the slot of its join in progress ------------


def test_a_refused_second_request_keeps_the_slot_of_the_join_in_progress(capped: World) -> None:
    """Root on a node that just got its answer (realm join running, the lease held) sends another request while the
    pre-check's eventually consistent read does not show the record yet. The full path refuses it; that refusal
    must not give back the slot its own join in progress holds (it would let CAP + 1 joins at the directory)."""
    node = capped.launch()
    assert capped.call(capped.event(node))["statusCode"] == 200
    held = leases(capped)
    assert list(held) == [node]
    stale = StalePreCheck(capped.clients["dynamodb"], None)
    assert capped.call(capped.event(node), dynamodb=stale)["statusCode"] == 403
    assert list(leases(capped)) == [node]
    others = [capped.launch() for _ in range(CAP)]
    statuses = [capped.call(capped.event(i))["statusCode"] for i in others]
    assert statuses == [200] * (CAP - 1) + [429]


# --- the node's backoff: a long run of busy answers ---------------------------------------------------------------


class Fakes:
    def __init__(self) -> None:
        self.slept: list[float] = []

    def rand(self, low: float, high: float) -> float:
        return high

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)

    def out(self, *_: Any, **__: Any) -> None:
        pass


def test_the_busy_wait_survives_any_number_of_busy_answers() -> None:
    """Busy answers are not counted as failures: a long --timeout and answers without a retryAfter (Lambda's own
    throttling, or whoever answers the node's request) can push the busy count past 1,023, where 1.0 * 2 ** busy is
    no float: the helper must keep waiting at the cap, not crash the join script (set -e)."""
    fakes = Fakes()
    for busy in (1023, 1024, 5000):
        assert H["busy_wait"](busy, busy + 1, 3600, "429", "", sleep=fakes.sleep, rand=fakes.rand,
                              out=fakes.out) == 30.0
    assert fakes.slept == [30.0, 30.0, 30.0]


@pytest.mark.parametrize("text", ['{"retryAfter": 1e309}', '{"retryAfter": 10000}', '{"retryAfter": -5}',
                                  '{"retryAfter": "$(reboot)"}', '{"retryAfter": true}', "[1]", "\x00" * 10])
def test_refused_a_body_cannot_make_the_node_wait_past_its_deadline_or_run_anything(text: str) -> None:
    fakes = Fakes()
    delay = H["busy_wait"](1, 2, 100, "429", text, sleep=fakes.sleep, rand=fakes.rand, out=fakes.out)
    assert 0 <= delay <= 99 and fakes.slept == [delay]


# --- the sweep ---------------------------------------------------------------------------------------------------


class SweepDir:
    """The Directory calls sweep() makes; `undeletable` DNs fail as a DC refusal does."""

    def __init__(self, names: list[str], undeletable: set[str]) -> None:
        old = datetime(2020, 1, 1, tzinfo=UTC)
        self.computers = [{"name": n, "dn": f"CN={n},OU=Computers,{OWN}", "created": old} for n in names]
        self.undeletable, self.deleted = undeletable, []

    def list_computers(self) -> list[dict[str, Any]]:
        return list(self.computers)

    def delete_tree(self, dn: str) -> bool:
        if dn in self.undeletable:
            raise da.LdapError(f"delete {dn}: insufficientAccessRights", {"description": "insufficientAccessRights"})
        self.deleted.append(dn)
        return True


OWN = "OU=c,OU=pcad,DC=example,DC=com"


class NoInstances:
    def get_paginator(self, _name: str) -> Any:
        class P:
            def paginate(self, **_: Any) -> list[dict[str, Any]]:
                return [{"Reservations": []}]
        return P()


def test_one_undeletable_orphan_does_not_keep_every_other_orphan_forever(monkeypatch) -> None:
    """A computer object the sweep cannot delete (protected from deletion by a directory admin, a DC refusal) must
    not stop the run: the orphans sorted after it would never go, run after run."""
    from tests.test_directory_admin import ENV as DA_ENV

    settings = da.load_settings(DA_ENV)
    monkeypatch.setattr(da, "stack_ou_standing", lambda *_: ("own", None))
    names = sorted(da.computer_name(settings.computer_prefix, f"i-{n:017x}") for n in range(5))
    directory = SweepDir(names, undeletable={f"CN={names[0]},OU=Computers,{OWN}"})
    out = da.sweep(settings=settings, ec2=NoInstances(), directory=directory,
                   now=datetime(2030, 1, 1, tzinfo=UTC) + timedelta(days=1))
    assert sorted(directory.deleted) == [f"CN={n},OU=Computers,{OWN}" for n in names[1:]]
    assert out["failed"] == [names[0]]
