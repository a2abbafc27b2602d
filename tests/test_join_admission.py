"""Issue 20, admission control: the join function caps the joins in progress against the directory with leases in
its DynamoDB table (lambda_src/join_handler.py _Lease), answers 429 with Retry-After when they are all held, before
any EC2, IAM, SSM, CloudFormation or directory call and without counting an answer of the node's window; the close
releases the slot, a refusal or failure releases it at once, an expired lease (a node that died) is taken over.
AWS calls are counted with botocore's event hooks (tests/test_join_calls.py's Calls), on moto."""

# ruff: noqa: F811  (the fixtures of tests/test_join_handler.py are imported, then requested by name)
from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter
from typing import Any

import pytest

from pcluster_ad.lambda_src import computer_account
from pcluster_ad.lambda_src import join_handler as jh
from tests.test_join_calls import Calls
from tests.test_join_handler import (  # noqa: F401  (fixtures)
    TABLE,
    World,
    atomic_moto_updates,
    body,
    decisions,
    fake_aws_env,
    fake_dc,
    fake_sts,
    fresh_template_cache,
    full_env,
    no_secret_leaks,
    node_event,
    responses,
    world,
)

CAP = 4


def capped_to(world: World, cap: int) -> World:
    """The world's join function with admission control at `cap` joins in progress."""
    world.settings = dataclasses.replace(world.settings, max_joins_in_progress=cap)
    return world


@pytest.fixture
def capped(world: World) -> World:
    return capped_to(world, CAP)


@pytest.fixture
def calls(world: World) -> Calls:
    return Calls(world.clients)


def leases(world: World) -> dict[str, int]:
    item = world.clients["dynamodb"].get_item(TableName=TABLE, Key={jh.WINDOW_KEY: {"S": jh.ADMISSION_KEY}},
                                              ConsistentRead=True).get("Item", {})
    return {k: int(v["N"]) for k, v in item.get("leases", {}).get("M", {}).items()}


def fill(world: World, n: int | None = None, **call: Any) -> list[str]:
    """n nodes (default: the world's cap) get their answer and do not close yet: n joins in progress."""
    ids = [world.launch() for _ in range(world.settings.max_joins_in_progress if n is None else n)]
    for iid in ids:
        assert world.call(world.event(iid), **call)["statusCode"] == 200
    return ids


def ec2_calls(counts: Counter) -> int:
    return sum(n for (service, _), n in counts.items() if service == "ec2")


def no_aws_but_dynamodb(counts: Counter) -> bool:
    return {service for service, _ in counts} <= {"dynamodb"}


def test_the_cap_answers_429_with_retry_after_after_the_authorization_and_counts_nothing(capped: World, calls,
                                                                                          caplog):
    """The first 429 comes after the node's one EC2 call (only a node takes a lease) and records the authorization;
    its retries cost DynamoDB only. No SSM or directory call, no answer of the window counted."""
    held = fill(capped)
    waiting = capped.launch()
    calls.take()
    creates = len(capped.fake_dc.calls)
    t0 = time.time()
    response = capped.call(capped.event(waiting), now=lambda: t0)
    counts = calls.take()
    assert response["statusCode"] == 429
    assert response["headers"]["retry-after"] == str(jh.RETRY_AFTER_SECONDS)
    assert body(response) == {"error": "join function busy: the joins in progress against the directory are at"
                                       " their cap; retry later", "retryAfter": jh.RETRY_AFTER_SECONDS}
    # The pre-check's read, the authorization (EC2; IAM and CloudFormation cached), the refused lease, the record of
    # the authorization: no SSM, no directory call.
    assert counts == Counter({("dynamodb", "GetItem"): 1, ("ec2", "DescribeInstances"): 1,
                              ("dynamodb", "UpdateItem"): 2}), counts
    # A retry before its Retry-After: answered from the pre-check's read (no write of the admission item).
    early = capped.call(capped.event(waiting), now=lambda: t0 + 1)
    assert early["statusCode"] == 429 and 1 <= int(early["headers"]["retry-after"]) <= jh.RETRY_AFTER_SECONDS
    assert calls.take() == Counter({("dynamodb", "GetItem"): 1})
    # After it: the lease is tried again (refused) and the next retry time recorded; still no EC2 call.
    later = t0 + jh.RETRY_AFTER_SECONDS + 1
    assert capped.call(capped.event(waiting), now=lambda: later)["statusCode"] == 429
    assert calls.take() == Counter({("dynamodb", "GetItem"): 1, ("dynamodb", "UpdateItem"): 2})
    assert len(capped.fake_dc.calls) == creates
    assert "answers" not in capped.window(waiting)  # no answer of its window counted
    assert sorted(leases(capped)) == sorted(held)
    log = decisions(caplog)[-1]
    assert (log["decision"], log["joins_in_progress"], log["max_joins_in_progress"]) == ("busy", CAP, CAP)


def test_the_close_releases_the_slot_for_the_next_node(capped: World):
    held = fill(capped)
    waiting = capped.launch()
    assert capped.call(capped.event(waiting))["statusCode"] == 429
    assert capped.call(capped.close_event(held[0]))["statusCode"] == 200
    assert held[0] not in leases(capped)
    after_retry_after = time.time() + jh.RETRY_AFTER_SECONDS + 1
    assert capped.call(capped.event(waiting), now=lambda: after_retry_after)["statusCode"] == 200
    assert sorted(leases(capped)) == sorted([*held[1:], waiting])
    assert capped.window(waiting)["answers"] == "1"  # the 429 was not counted


def test_a_node_that_dies_after_its_answer_frees_its_slot_at_the_leases_expiry(capped: World):
    """No close ever comes from a node that died: its lease expires after LEASE_SECONDS and the next node takes
    the slot (the expired entry is dropped, not counted)."""
    start = capped.launch_time(capped.launch()) + 60
    held = fill(capped, now=lambda: start)
    waiting = capped.launch()
    at = start + jh.LEASE_SECONDS - 1
    assert capped.call(capped.event(waiting), now=lambda: at)["statusCode"] == 429
    at = start + jh.LEASE_SECONDS + jh.RETRY_AFTER_SECONDS + 1  # the lease expired; after the 429's Retry-After
    assert capped.call(capped.event(waiting), now=lambda: at)["statusCode"] == 200
    now_held = leases(capped)
    assert len(now_held) == 1 and now_held == {waiting: int(at) + jh.LEASE_SECONDS}
    assert not set(held) & set(now_held)


@pytest.mark.parametrize("case", ["refused", "directory unreachable"])
def test_a_request_that_gets_no_answer_gives_its_slot_back(capped: World, case):
    if case == "refused":
        iid = capped.launch(tags={})  # untagged: no node of the cluster
        status = 403
    else:
        capped.fake_dc.fail_always = computer_account.DirectoryUnavailable("no DC")
        iid = capped.launch()
        status = 503
    for _ in range(3):
        assert capped.call(capped.event(iid))["statusCode"] == status
    assert leases(capped) == {}
    capped.fake_dc.fail_always = None
    fill(capped)  # every slot is free


def test_one_slot_per_instance_however_often_it_asks(capped: World):
    """A node asking again while its join is in progress (a retry after a timeout) keeps its one slot."""
    [iid] = fill(capped, 1)
    before = leases(capped)
    for _ in range(3):
        assert capped.call(capped.event(iid))["statusCode"] == 403  # its window: one password, ever
    assert leases(capped) == before
    fill(capped, CAP - 1)
    assert capped.call(capped.event(capped.launch()))["statusCode"] == 429


def test_a_flood_from_a_waiting_nodes_credentials_costs_no_ec2_iam_or_ssm_call(capped: World, calls):
    """1,000 signed requests from one node's credentials while the joins in progress are at the cap: every one is
    a 429 from one DynamoDB read (within the Retry-After of its last 429: no write of the one admission item, attack
    review 3 of issue 20, finding 5), and the node's window counted none of them."""
    fill(capped)
    flooder = capped.launch()
    t0 = time.time()
    assert capped.call(capped.event(flooder), now=lambda: t0)["statusCode"] == 429  # its one EC2 call; recorded
    calls.take()
    for n in range(1000):  # 1,000 in one second, the flood of issue 20
        assert capped.call(capped.event(flooder), now=lambda n=n: t0 + n / 1000)["statusCode"] == 429
    flood = calls.take()
    print(f"\nissue 20: 1,000 requests from a waiting node at the cap: {dict(flood)}")
    assert flood == Counter({("dynamodb", "GetItem"): 1000})
    assert "answers" not in capped.window(flooder)


def test_sessions_named_after_made_up_instances_hold_no_slot(capped: World, calls, caplog):
    """Attacker: a principal allowed to assume some role with the URL's invoke permission, free to choose session
    names. Each made-up instance id is refused by EC2 and gives its slot back before the answer: the slots are free
    for the nodes after the flood (while a request runs, it holds one slot, as it holds one of the function's
    reserved concurrency)."""
    for n in range(3 * CAP):
        event = node_event(f"i-{n:017x}", role="some-role", role_id="AROASOMEROLEEXAMPLE01")
        assert capped.call(event)["statusCode"] == 403
    assert leases(capped) == {}
    fill(capped)


def test_the_first_join_into_an_empty_table_creates_the_admission_item(capped: World):
    capped.clients["dynamodb"].delete_item(TableName=TABLE, Key={jh.WINDOW_KEY: {"S": jh.ADMISSION_KEY}})
    [iid] = fill(capped, 1)
    assert list(leases(capped)) == [iid]


def test_a_release_on_an_empty_table_creates_nothing_that_blocks_a_join(capped: World):
    """A close before any lease exists (the table was emptied) must leave an item the next lease can use."""
    capped.clients["dynamodb"].delete_item(TableName=TABLE, Key={jh.WINDOW_KEY: {"S": jh.ADMISSION_KEY}})
    iid = capped.launch()
    assert capped.call(capped.close_event(iid))["statusCode"] == 200  # a close before any answer
    fill(capped)


def test_without_a_cap_no_lease_is_taken(world: World, calls):
    world.settings = dataclasses.replace(world.settings, max_joins_in_progress=0)
    ids = fill(world, 12)
    assert leases(world) == {}
    calls.take()
    assert world.call(world.close_event(ids[0]))["statusCode"] == 200
    assert calls.take()[("dynamodb", "UpdateItem")] == 1  # the close only


def test_concurrent_requests_never_hold_more_slots_than_the_cap(capped: World, atomic_moto_updates):
    ids = [capped.launch() for _ in range(12)]
    start = threading.Barrier(len(ids))
    statuses: dict[str, int] = {}

    def run(iid: str) -> None:
        start.wait(timeout=60)
        statuses[iid] = capped.call(capped.event(iid))["statusCode"]

    workers = [threading.Thread(target=run, args=(iid,)) for iid in ids]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert sorted(statuses.values()) == [200] * CAP + [429] * (len(ids) - CAP)
    assert sorted(leases(capped)) == sorted(i for i, s in statuses.items() if s == 200)


def test_settings_default_to_one_domain_controller_and_name_a_bad_value() -> None:
    assert jh.load_settings(full_env()).max_joins_in_progress == jh.JOINS_PER_DC == 16
    assert jh.load_settings(full_env(MAX_JOINS_IN_PROGRESS="32")).max_joins_in_progress == 32
    assert jh.load_settings(full_env(MAX_JOINS_IN_PROGRESS="0")).max_joins_in_progress == 0
    for bad in ("-1", "eight", "501", "1.5"):
        with pytest.raises(jh.SettingsError, match=r"MAX_JOINS_IN_PROGRESS=.* is not a whole number from 0 to 500"):
            jh.load_settings(full_env(MAX_JOINS_IN_PROGRESS=bad))



# --- attack review of admission control --------------------------------------------------------------------------


def test_refused_a_joined_node_that_never_closes_cannot_keep_its_slot_by_asking_again(capped: World):
    """Root or a job on a node that got its answer (and never closes) asks again and again: the pre-check refuses
    each request before the lease is touched, so the slot still expires LEASE_SECONDS after the answer."""
    start = capped.launch_time(capped.launch()) + 60
    [holder] = fill(capped, 1, now=lambda: start)
    for seconds in (10, 100, jh.LEASE_SECONDS - 1):
        assert capped.call(capped.event(holder), now=lambda s=seconds: start + s)["statusCode"] == 403
    assert leases(capped) == {holder: int(start) + jh.LEASE_SECONDS}
    fill(capped, CAP - 1, now=lambda: start + 1)
    waiting = capped.launch()
    assert capped.call(capped.event(waiting), now=lambda: start + jh.LEASE_SECONDS)["statusCode"] == 200
    assert holder not in leases(capped)


def test_refused_a_nodes_close_releases_no_other_nodes_slot(capped: World):
    """A node's close (its own credentials, its own computer name) removes its own lease only."""
    held = fill(capped, 2)
    other = capped.launch()
    assert capped.call(capped.close_event(other))["statusCode"] == 200  # a close before any answer: allowed
    assert sorted(leases(capped)) == sorted(held)
