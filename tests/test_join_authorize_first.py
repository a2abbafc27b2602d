"""Attack review 2 of issue 20, finding 1, fixed: the join function authorizes (EC2, IAM, CloudFormation) BEFORE it
takes an admission lease, so only a node holds a slot. To keep one EC2 call per join, a join answered 429 records
its authorization in its window record and its retries are decided from it (join_handler._authorized_launch); an
instance refused for what depends on the instance alone is recorded as "not a node" for NOT_A_NODE_SECONDS and
refused from DynamoDB alone. AWS calls are counted with botocore's event hooks (tests/test_join_calls.py's Calls)."""

# ruff: noqa: F811  (the fixtures of tests/test_join_handler.py are imported, then requested by name)
from __future__ import annotations

import time
from collections import Counter

import pytest

from pcluster_ad.lambda_src import join_handler as jh
from tests.test_join_admission import calls, capped_to, fill  # noqa: F401  (fixture)
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
    node_event,
    responses,
    world,
)

CAP = 2
AUTHORIZING = {"ec2", "iam", "cloudformation"}


@pytest.fixture
def capped(world: World) -> World:
    return capped_to(world, CAP)


def services(counts: Counter) -> set[str]:
    return {service for service, _ in counts}



# --- (a) a node's 429 retries are decided from its record ---------------------------------------------------------


def test_a_nodes_429_retries_and_its_join_after_them_cost_one_ec2_call_in_all(capped: World, calls) -> None:
    held = fill(capped)
    waiting = capped.launch()
    t0 = time.time()
    calls.take()
    assert capped.call(capped.event(waiting), now=lambda: t0)["statusCode"] == 429
    first = calls.take()
    assert first[("ec2", "DescribeInstances")] == 1
    record = capped.window(waiting)
    assert record["authorizedRoleId"] == capped.node_role_id and "answers" not in record
    calls.take()  # the test's own read
    at = t0
    for _ in range(5):  # each after its Retry-After: the lease is tried (and refused), the next retry time recorded
        at += jh.RETRY_AFTER_SECONDS + 1
        assert capped.call(capped.event(waiting), now=lambda at=at: at)["statusCode"] == 429
    retries = calls.take()
    assert retries == Counter({("dynamodb", "GetItem"): 5, ("dynamodb", "UpdateItem"): 10}), retries
    assert capped.call(capped.close_event(held[0]))["statusCode"] == 200
    calls.take()
    at += jh.RETRY_AFTER_SECONDS + 1
    response = capped.call(capped.event(waiting), now=lambda: at)
    joined = calls.take()
    assert response["statusCode"] == 200, body(response)
    assert not services(joined) & AUTHORIZING, joined  # decided from the record
    assert capped.window(waiting)["issuedRoleId"] == capped.node_role_id
    print(f"\nthe first 429: {dict(first)}; 5 retries: {dict(retries)}; the join after them: {dict(joined)}")


def test_the_recorded_authorization_serves_no_other_role(capped: World, calls) -> None:
    """A session of another role named after the waiting node (anyone allowed to assume some role chooses its
    session name) is not decided from the node's record: the full checks refuse it."""
    fill(capped)
    waiting = capped.launch()
    assert capped.call(capped.event(waiting))["statusCode"] == 429
    calls.take()
    forged = node_event(waiting, role="other-role", role_id=capped.other_role_id)
    assert capped.call(forged)["statusCode"] == 403
    assert calls.take()[("ec2", "DescribeInstances")] == 1
    assert "answers" not in capped.window(waiting)


def test_the_recorded_authorization_lasts_authorized_seconds_then_ec2_is_asked_again(capped: World, calls) -> None:
    fill(capped)
    waiting = capped.launch()
    start = capped.launch_time(waiting) + 10
    assert capped.call(capped.event(waiting), now=lambda: start)["statusCode"] == 429
    calls.take()
    late = start + jh.AUTHORIZED_SECONDS - 1
    assert capped.call(capped.event(waiting), now=lambda: late)["statusCode"] == 429
    assert not services(calls.take()) & AUTHORIZING
    late = start + jh.AUTHORIZED_SECONDS + jh.RETRY_AFTER_SECONDS + 1  # after the last 429's Retry-After
    assert capped.call(capped.event(waiting), now=lambda: late)["statusCode"] == 429
    assert calls.take()[("ec2", "DescribeInstances")] == 1


def test_a_join_decided_from_a_record_removed_meanwhile_is_answered_429_and_recreates_nothing(capped: World) -> None:
    """The node's record was removed after its 429 while the pre-check still reads the old record: its turn (and the
    answer's count) require the record's authorization, so nothing is issued or re-created; 429, not a final 403:
    the retry asks EC2 (attack review 4 of issue 20, finding 3)."""
    held = fill(capped)
    waiting = capped.launch()
    assert capped.call(capped.event(waiting))["statusCode"] == 429
    old = capped.clients["dynamodb"].get_item(TableName=TABLE, Key={jh.WINDOW_KEY: {"S": waiting}})["Item"]
    capped.clients["dynamodb"].delete_item(TableName=TABLE, Key={jh.WINDOW_KEY: {"S": waiting}})
    assert capped.call(capped.close_event(held[0]))["statusCode"] == 200
    creates = len(capped.fake_dc.calls)
    stale = StalePreCheck(capped.clients["dynamodb"], old)
    after_retry_after = time.time() + jh.RETRY_AFTER_SECONDS + 1
    assert capped.call(capped.event(waiting), dynamodb=stale, now=lambda: after_retry_after)["statusCode"] == 429
    assert len(capped.fake_dc.calls) == creates
    assert capped.window(waiting) == {}
    assert waiting not in (capped.clients["dynamodb"].get_item(
        TableName=TABLE, Key={jh.WINDOW_KEY: {"S": jh.ADMISSION_KEY}}, ConsistentRead=True)["Item"]["leases"]["M"])


# --- (b) an instance that is no node of the cluster is refused from DynamoDB ---------------------------------------


@pytest.mark.parametrize("case", ["no cluster tag", "other VPC", "no launch template", "a template not the stack's"])
def test_a_non_node_instances_second_request_costs_no_ec2_or_iam_call(capped: World, calls, case: str) -> None:
    if case == "no cluster tag":
        iid = capped.launch(tags={})
    elif case == "other VPC":
        iid = capped.launch(subnet_id=capped.other_subnet_id)
    elif case == "no launch template":
        iid = capped.launch(template=None)
    else:
        iid = capped.launch(template="hand")
    # The stack is read well after the launch (TEMPLATE_SETTLE_SECONDS): the template is not the cluster's for good.
    at = capped.launch_time(iid) + jh.TEMPLATE_SETTLE_SECONDS + 1
    calls.take()
    assert capped.call(capped.event(iid), now=lambda: at)["statusCode"] == 403
    first = calls.take()
    assert first[("ec2", "DescribeInstances")] == 1
    marker = jh.NOT_A_NODE_ATTRIBUTE.format(role_id=capped.node_role_id)
    assert int(capped.window(iid)[marker]) == int(at) + jh.NOT_A_NODE_SECONDS
    assert int(capped.window(iid)[jh.TTL_ATTRIBUTE]) == int(at) + jh.NOT_A_NODE_SECONDS
    calls.take()  # the test's own reads
    for n in range(3):
        assert capped.call(capped.event(iid), now=lambda n=n: at + 60 * n)["statusCode"] == 403
    again = calls.take()
    assert again == Counter({("dynamodb", "GetItem"): 3}), again
    # After the marker's 24 h the full checks decide again (DynamoDB's TTL deletion may lag).
    assert capped.call(capped.event(iid), now=lambda: at + jh.NOT_A_NODE_SECONDS)["statusCode"] == 403
    assert calls.take()[("ec2", "DescribeInstances")] == 1
    print(f"\n{case}: the first request {dict(first)}, the next three {dict(again)}")


def markers(window: dict) -> set[str]:
    return {k for k in window if k.startswith("notNodeUntil")}


def test_a_template_missing_from_a_stack_read_soon_after_the_launch_is_marked_only_until_the_next_read(
        capped: World, calls) -> None:
    """A queue added by a cluster update may launch nodes before the cached template list shows its template: the
    refusal is recorded only until the list may be read again (TEMPLATE_MISS_REFRESH_SECONDS), so such a node joins
    then, and an instance started by hand costs one EC2 call per that time, not per request."""
    iid = capped.launch(template="hand")
    at = capped.launch_time(iid) + 60
    assert capped.call(capped.event(iid), now=lambda: at)["statusCode"] == 403
    marker = jh.NOT_A_NODE_ATTRIBUTE.format(role_id=capped.node_role_id)
    assert int(capped.window(iid)[marker]) == int(at) + jh.TEMPLATE_MISS_REFRESH_SECONDS
    calls.take()
    assert capped.call(capped.event(iid), now=lambda: at + 1)["statusCode"] == 403
    assert calls.take()[("ec2", "DescribeInstances")] == 0
    assert capped.call(capped.event(iid), now=lambda: at + jh.TEMPLATE_MISS_REFRESH_SECONDS)["statusCode"] == 403
    assert calls.take()[("ec2", "DescribeInstances")] == 1


def test_a_refusal_that_depends_on_the_caller_marks_no_instance(capped: World) -> None:
    """A session of another role named after a real node is refused for its role, which says nothing about the
    instance: the node is not marked and joins."""
    node = capped.launch()
    assert capped.call(node_event(node, role="other-role", role_id=capped.other_role_id))["statusCode"] == 403
    assert markers(capped.window(node)) == set()
    assert capped.call(capped.event(node))["statusCode"] == 200


def test_a_joined_nodes_record_is_never_marked(capped: World) -> None:
    """A node whose template later left the stack (its queue removed) keeps its record: the marker never replaces
    a record of an issued object (which has no TTL and must outlive the instance's join)."""
    [node] = fill(capped, 1)
    before = capped.window(node)
    stale = StalePreCheck(capped.clients["dynamodb"], None)
    capped.clients["ec2"].delete_tags(Resources=[node], Tags=[{"Key": jh.CLUSTER_TAG}])
    assert capped.call(capped.event(node), dynamodb=stale)["statusCode"] == 403
    assert capped.window(node) == before
