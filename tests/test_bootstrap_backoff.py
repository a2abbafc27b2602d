"""join-domain.sh honours the join function's admission control (issue 20): HTTP 429 (and 503, Lambda's own
throttling) is waited out with AWS's full-jitter exponential backoff, never shorter than the answer's retryAfter,
never past the deadline, and each wait is logged. The helper's sleep and random are injected: no real sleep here."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.bootstrap_sandbox.servers import FakeFunctionUrl, FakeImds
from tests.test_bootstrap_scripts import GOOD, run_join, sandbox  # noqa: F401  (fixture)


def helper() -> dict[str, Any]:
    """The node agent's module of the join function's answers (bootstrap/node_agent/function_api.py)."""
    from pcluster_ad.bootstrap.node_agent import function_api

    return vars(function_api)


H = helper()


class Fakes:
    """rand returns `pick` of its range (0: the low end, 1: the high end) and records the range; sleep records."""

    def __init__(self, pick: float = 1.0) -> None:
        self.pick, self.ranges, self.slept, self.lines = pick, [], [], []

    def rand(self, low: float, high: float) -> float:
        self.ranges.append((low, high))
        return low + (high - low) * self.pick

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)

    def out(self, line: str, **_: Any) -> None:
        self.lines.append(line)


def wait(fakes: Fakes, busy: int, body: Any = None, remaining: int = 600, code: str = "429") -> float:
    text = json.dumps(body) if body is not None else ""
    return H["busy_wait"](busy, busy + 1, remaining, code, text, sleep=fakes.sleep, rand=fakes.rand, out=fakes.out)


def test_the_ceiling_doubles_up_to_the_cap_and_the_wait_is_drawn_below_it():
    fakes = Fakes(pick=1.0)
    delays = [wait(fakes, n) for n in range(1, 8)]
    assert fakes.ranges == [(0.0, 2.0), (0.0, 4.0), (0.0, 8.0), (0.0, 16.0), (0.0, 30.0), (0.0, 30.0), (0.0, 30.0)]
    assert delays == fakes.slept == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    half = Fakes(pick=0.5)
    assert [wait(half, n) for n in (1, 3, 9)] == [1.0, 4.0, 15.0]  # full jitter: anywhere in [0, ceiling]


def test_retry_after_is_a_floor():
    fakes = Fakes(pick=0.0)  # the jitter picks 0: the function's retryAfter decides
    assert wait(fakes, 1, {"error": "join function busy", "retryAfter": 2}) == 2.0
    assert wait(fakes, 6, {"error": "busy", "retryAfter": 7}) == 7.0
    high = Fakes(pick=1.0)  # the jitter above the floor wins
    assert wait(high, 4, {"retryAfter": 2}) == 16.0


@pytest.mark.parametrize("body", [None, {"Message": "Rate Exceeded."}, {"retryAfter": "2"}, {"retryAfter": -1},
                                  {"retryAfter": 601}, {"retryAfter": True}, ["retryAfter", 2]])
def test_no_or_a_bad_retry_after_is_no_floor(body):
    fakes = Fakes(pick=0.0)
    assert wait(fakes, 1, body) == 0.0 and fakes.slept == [0.0]


def test_never_past_the_deadline():
    fakes = Fakes(pick=1.0)
    assert wait(fakes, 5, {"retryAfter": 2}, remaining=10) == 9.0  # 1 s left for the last attempt
    assert wait(fakes, 5, {"retryAfter": 20}, remaining=10) == 9.0  # Retry-After beyond it: the deadline wins
    assert wait(fakes, 1, remaining=1) == 0.0 and wait(fakes, 1, remaining=0) == 0.0


def test_each_wait_is_logged_before_it_is_slept():
    fakes = Fakes(pick=0.25)
    order: list[str] = []
    H["busy_wait"](3, 4, 300, "429", json.dumps({"retryAfter": 1}), rand=fakes.rand,
                   sleep=lambda s: order.append(f"sleep {s}"), out=lambda line, **_: order.append(line))
    assert order == ["join function busy, retrying in 2.0 s (attempt 4; HTTP 429)", "sleep 2.0"]


def test_the_node_waits_out_429s_and_503s_then_joins(sandbox):  # noqa: F811
    """Three 429s from the admission cap and a 503, then the answer: the node joins, each wait logged, no attempt
    counted as a failure (PCLUSTER_AD_TEST_NO_BACKOFF=1: the waits are computed and logged, not slept)."""
    busy = (429, {"error": "join function busy: the joins in progress against the directory are at their cap;"
                           " retry later", "retryAfter": 2})
    box = sandbox()
    with FakeImds() as imds, FakeFunctionUrl([busy, busy, busy, (503, {"error": "internal error"}), GOOD]) as fn:
        result = run_join(box, imds, fn, "--timeout", "120", env_extra={"PCLUSTER_AD_TEST_NO_BACKOFF": "1"})
    assert result.rc == 0, result.output
    assert len(fn.fetches) == 5 and len(fn.closes) == 1
    waits = [line for line in result.stdout.splitlines() if "join function busy, retrying in" in line]
    assert len(waits) == 4, result.stdout
    assert "retrying in 2.0 s (attempt 2; HTTP 429)" in waits[0]  # busy 1: max(retryAfter 2, U(0, 2)) = 2
    for k, line in enumerate(waits):
        seconds = float(line.split("retrying in ", 1)[1].split(" s", 1)[0])
        assert f"(attempt {k + 2}; HTTP {'503' if k == 3 else '429'})" in line
        assert (2.0 if k < 3 else 0.0) <= seconds <= min(30.0, 2.0 ** (k + 1))
    assert "attempt 1 failed" not in result.stdout  # a wait, not a failure
    assert "node joined to the domain and verified" in result.stdout


def test_a_403_after_waiting_is_still_final(sandbox):  # noqa: F811
    box = sandbox()
    with FakeImds() as imds, FakeFunctionUrl([(429, {"error": "busy", "retryAfter": 2}),
                                              (403, {"error": "forbidden"})]) as fn:
        result = run_join(box, imds, fn, "--timeout", "60", env_extra={"PCLUSTER_AD_TEST_NO_BACKOFF": "1"})
    assert result.rc == 6, result.output
    assert len(fn.requests) == 2 and "Not retrying" in result.stdout


def test_a_busy_close_is_waited_out_not_given_up_after_three_tries(sandbox):  # noqa: F811
    """Lambda throttling at the close (issue 20: a third of the windows of a 1,000-node burst stayed open): 429s are
    waited out within the close's 60 s and do not count as its 3 failures; the window closes (and the node's
    admission slot is freed)."""
    throttled = (429, {"Message": "Rate Exceeded."})
    box = sandbox()
    with FakeImds() as imds, FakeFunctionUrl([GOOD], close_responses=[throttled] * 5 + [(200, {"closed": True})]) as fn:
        result = run_join(box, imds, fn, "--timeout", "120", env_extra={"PCLUSTER_AD_TEST_NO_BACKOFF": "1"})
    assert result.rc == 0, result.output
    assert len(fn.closes) == 6 and "join window closed" in result.stdout
    assert "WARNING: join window NOT closed" not in result.stdout
    assert result.stdout.count("join function busy, retrying in") == 5
