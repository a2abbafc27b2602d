"""Issue 20's scale model (bench/join_scale.py) in small cases: it replays the calls counted from the real handlers
on moto (bench/join_calls.py), so a call added to or removed from a handler changes these figures. Structural
asserts only (who is called, who fails, who is throttled); no timings: the full figures are printed by
`venv/bin/python -m bench.join_scale` (bench/RESULTS.md)."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest

from bench import join_calls
from bench import join_scale as js

# Reserved concurrency 10 and an admission cap that never binds at this size (every join takes and gives back its
# lease); the cases that need the cap to bind set their own.
SMALL = js.Scenario(nodes=50, seconds=20, dcs=1, seed=7, reserved_concurrency=10, admission_per_dc=50)


@pytest.fixture(scope="module")
def counted() -> join_calls.Counted:
    return join_calls.count(4)


@pytest.fixture(scope="module")
def current(counted: join_calls.Counted) -> js.Profile:
    return js.current_profile(counted)


def services(calls: tuple[join_calls.Call, ...]) -> Counter[str]:
    return join_calls.by_service(calls)


def test_the_counted_requests_are_the_handlers_budgets(counted: join_calls.Counted, current: js.Profile) -> None:
    """Per join one EC2 call, carrying a filter; IAM, CloudFormation and SSM only in a cold container (cached); a
    close, a refused request and another instance's termination cost no EC2 or IAM call."""
    assert services(counted.join_warm)["ec2"] == 1 and services(counted.join_warm)["iam"] == 0
    assert [k for s, _, k in counted.join_warm if s == "ec2"] == ["filtered"]
    assert current.cached == {"iam", "cloudformation", "ssm"}
    assert services(counted.join_cold) - services(counted.join_warm) == Counter(
        {"iam": 1, "cloudformation": 2, "ssm": 1})
    for calls in (counted.close, counted.refused, counted.termination_other):
        assert services(calls)["ec2"] == services(calls)["iam"] == 0, calls
    assert counted.refused == (("dynamodb", "GetItem", ""),)
    assert [c for c in counted.termination_ours if c[0] == "ec2"] == [("ec2", "DescribeInstances", "filtered")]
    assert ("directory", "CreateComputer", "") in counted.join_warm


def test_the_simulation_replays_the_counted_calls(counted: join_calls.Counted, current: js.Profile) -> None:
    """Unthrottled, the model's calls are the counted ones times the requests: every node one join and one close."""
    r = js.simulate(SMALL, current)
    assert len(r.latencies) == SMALL.nodes and not r.failed and not r.throttles and not r.lambda_throttles
    per_join, per_close = services(counted.join_warm), services(counted.close)
    for service in ("ec2", "sts", "dynamodb"):
        assert r.calls[service] == SMALL.nodes * (per_join[service] + per_close[service]), service
    # A cached answer is fetched once per container, and there are at most `reserved_concurrency` of them.
    assert 1 <= r.calls["iam"] <= SMALL.reserved_concurrency and r.calls["ssm"] >= 1
    cold = services(counted.join_cold) - per_join  # within 20 s every container fetches each answer once
    assert r.calls["cloudformation"] == cold["cloudformation"] * r.calls["iam"]


@pytest.mark.parametrize("reading", sorted(js.EC2_READINGS))
def test_parallelcluster_sees_no_ec2_throttle_at_the_small_case(current: js.Profile, reading: str) -> None:
    r = js.simulate(replace(SMALL, reading=reading), current)
    assert r.pc_throttles == r.pc_describe_failures == r.discarded == 0
    assert r.windows_open == 0 and len(r.latencies) == SMALL.nodes


def test_a_burst_throttled_ec2_before_issue_20_and_does_not_now(current: js.Profile) -> None:
    """200 nodes within 10 s and 100 Lambda slots: the former calls (bare InstanceIds, IAM per request, EC2 for the
    close too) empty the unfiltered bucket ParallelCluster's post-launch describe shares; the counted ones do not."""
    burst = replace(SMALL, nodes=200, seconds=10, dcs=2, reserved_concurrency=100, reading="unfiltered")
    before, now = js.simulate(burst, js.BEFORE), js.simulate(burst, current)
    assert before.throttles["ec2"] > 0
    assert now.throttles["ec2"] == now.pc_throttles == 0 and len(now.latencies) == burst.nodes


def test_admission_control_turns_an_overloaded_directory_into_waiting(current: js.Profile) -> None:
    """A cap of 2 joins in progress on one DC for 50 nodes booting within 5 s: nodes are told to come back (429 with
    Retry-After) and all join; none fails, none after a 429, every window is closed."""
    crowded = replace(SMALL, seconds=5, admission_per_dc=2)
    r = js.simulate(crowded, current)
    assert r.http_429_admission > 0
    assert len(r.latencies) == crowded.nodes and not r.failed and r.failed_after_429 == 0
    assert r.windows_open == 0


def test_a_flood_from_a_joined_nodes_credentials_costs_no_ec2_iam_or_sts_call(current: js.Profile) -> None:
    flood = replace(SMALL, flood_per_s=200, flood_seconds=5, flood_start=5, reserved_concurrency=50)
    now, before = js.simulate(flood, current), js.simulate(flood, js.BEFORE)
    assert sum(now.flood_answers.values()) == 1000
    assert now.flood_calls["ec2"] == now.flood_calls["iam"] == now.flood_calls["sts"] == 0
    assert now.flood_calls["dynamodb"] == now.flood_answers[403]  # the pre-check read, nothing else
    assert before.flood_calls["ec2"] > 0 and before.flood_calls["iam"] > 0


def test_a_flood_above_ten_requests_per_second_per_unit_of_concurrency_gets_429_with_slots_free(
        current: js.Profile) -> None:
    """Lambda serves a function at most 10 requests per second per unit of reserved concurrency. 200 refused
    requests/s for 5 s need ~6 of 10 slots (each lasts ~30 ms) but exceed 10 * 10 per second: the excess is
    answered 429 by the rate limit, not the slots, and at most the rate's 5 s plus its burst get through. With 30
    slots (300 per second) the same flood meets no rate limit."""
    flood = replace(SMALL, flood_per_s=200, flood_seconds=5, flood_start=5, reserved_concurrency=10)
    r = js.simulate(flood, current)
    assert sum(r.flood_answers.values()) == 1000
    rate = js.LAMBDA_RPS_PER_CONCURRENCY * flood.reserved_concurrency
    served = sum(n for status, n in r.flood_answers.items() if status != 429)
    assert 0 < served <= rate * flood.flood_seconds + rate * js.LAMBDA_RPS_BURST_S
    assert r.flood_answers[429] >= 1000 - served and r.lambda_throttles["rate"] > r.lambda_throttles["concurrency"]
    roomy = js.simulate(replace(flood, reserved_concurrency=30), current)
    assert roomy.lambda_throttles["rate"] == 0 and roomy.flood_answers[403] > served


def test_the_model_is_deterministic(current: js.Profile) -> None:
    a, b = js.simulate(SMALL, current), js.simulate(SMALL, current)
    assert a.latencies == b.latencies and a.calls == b.calls


def test_the_stacks_default_reserved_concurrency_absorbs_the_issues_flood(current: js.Profile) -> None:
    """stack_config.JOIN_RESERVED_CONCURRENCY: 1,000 signed requests/s from one node's credentials meet no Lambda
    rate limit and delay no other node that starts once the flood runs by more than 1 s (in the model); 100, where
    the flood alone fills the rate, would not."""
    from pcluster_ad.stack_config import JOIN_RESERVED_CONCURRENCY

    # Without admission control: its Retry-After waits, not the flood, would move nodes by seconds here.
    sc = js.Scenario(nodes=300, seconds=40, dcs=2, seed=3, flood_start=10, flood_seconds=20,
                     reserved_concurrency=JOIN_RESERVED_CONCURRENCY, admission_per_dc=None)
    calm, hit, delays = js.flood_delays(sc, current)
    assert hit.lambda_throttles["rate"] == 0
    settled = [d for node, d in zip(calm.latencies, delays, strict=True) if calm.starts[node] >= sc.flood_start + 1]
    assert settled and max(settled) <= 1.0
    assert hit.flood_calls["ec2"] == hit.flood_calls["iam"] == 0
    _, starved, _ = js.flood_delays(replace(sc, reserved_concurrency=100), current)
    assert starved.lambda_throttles["rate"] > 0
