"""Attack review 3 of issue 20: authorization (EC2, IAM, CloudFormation) before the admission lease, the
authorization recorded on a 429 (authorizedRoleId, authorizedUntil, launchTime) and the "not a node" marker.

Attackers: (1) an AD user with a shell or job on a node (the node role's credentials from IMDS, which stay valid
for hours after the instance is gone), (2) root on a compute node (mid-join, joined, or whose join failed),
(3) someone who starts instances with the cluster's instance profile outside the cluster's launch templates,
(4) someone with ec2:CreateTags/DeleteTags in the account (who, like anyone allowed to assume some role, can also
get an STS session named after any instance id). Attacks refused are plain tests; the five findings of the review
are fixed, each test says what it found and what the fix is. AWS calls are counted with botocore's event hooks
(tests/test_join_calls.py's Calls)."""

# ruff: noqa: F811  (the fixtures of tests/test_join_handler.py are imported, then requested by name)
from __future__ import annotations

import time
from collections import Counter

import pytest

from pcluster_ad.lambda_src import join_handler as jh
from tests.test_attack_issue20 import directory_admin, terminated  # noqa: F401  (fixture)
from tests.test_join_admission import calls, capped_to, ec2_calls, fill  # noqa: F401  (fixture)
from tests.test_join_handler import (  # noqa: F401  (fixtures)
    CLUSTER,
    TABLE,
    World,
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


@pytest.fixture
def capped(world: World) -> World:
    return capped_to(world, CAP)




# --- refused today --------------------------------------------------------------------------------------------------


def test_refused_no_marker_for_an_instance_id_ec2_does_not_know(capped: World) -> None:
    """(4) A session named after an id no instance has: refused, nothing written (a future node's id cannot be
    pre-marked; instance ids are never reused)."""
    ghost = "i-0123456789abcdef0"
    assert capped.call(node_event(ghost, role="other-role", role_id=capped.other_role_id))["statusCode"] == 403
    assert capped.window(ghost) == {}


def test_refused_a_hand_started_instance_with_the_node_profile_gets_no_recorded_authorization(capped: World) -> None:
    """(3) An instance of the cluster's profile (the same role id as every node) outside the cluster's templates: no
    lease, no authorizedRoleId (the record is keyed on the instance id STS vouches for, so no node's record serves
    it either)."""
    fill(capped)
    hand = capped.launch(template="hand")
    assert capped.call(capped.event(hand))["statusCode"] == 403
    assert "authorizedRoleId" not in capped.window(hand)


def test_refused_a_joined_nodes_flood_costs_one_read_per_request(capped: World, calls) -> None:
    """(1)/(2) on a joined node: the record refuses it; printed figure."""
    [node] = fill(capped, 1)
    calls.take()
    for _ in range(20):
        assert capped.call(capped.event(node))["statusCode"] == 403
    flood = calls.take()
    print(f"\n20 requests from a joined node: {dict(flood)}")
    assert flood == Counter({("dynamodb", "GetItem"): 20}), flood


# --- findings -------------------------------------------------------------------------------------------------------


def test_a_terminated_nodes_credentials_flood_costs_no_ec2_call(capped: World, directory_admin, calls) -> None:
    """Finding 1 (medium, fixed): the credentials of a TERMINATED node (read from IMDS by any user of the node, valid
    for hours) cost one EC2 DescribeInstances per request: the termination handler deletes the node's record, so the
    pre-check finds nothing, and 'instance state is terminated' is no _NotANode, so no marker is written. Fix: the
    termination makes the state 'terminated', which is now a not-a-node refusal: recorded for the role id."""
    [node] = fill(capped, 1)
    assert capped.call(capped.close_event(node))["statusCode"] == 200
    capped.clients["ec2"].terminate_instances(InstanceIds=[node])
    assert directory_admin(terminated(node))["result"] == "deleted"
    assert "terminatedAt" in capped.window(node)  # the tombstone (attack review 4, finding 2)
    calls.take()
    for _ in range(20):
        assert capped.call(capped.event(node))["statusCode"] == 403
    flood = calls.take()
    print(f"\n20 requests with a terminated node's credentials: {dict(flood)}")
    assert ec2_calls(flood) <= 1, flood


def test_a_forged_session_during_a_tag_blip_does_not_deny_a_real_nodes_join(capped: World) -> None:
    """Finding 2 (low-medium, fixed): a session of ANY role named after a real node (attacker 4: any assumable role,
    session name of their choice) marks the node 'not a node' for 24 h while its cluster tag is briefly removed: the
    VPC and tag checks raise _NotANode before the caller's role is checked, and the pre-check honours the marker for
    every role; the node's join is refused for 24 h after the tag is back. Fix: the marker is keyed on the role id
    STS vouched for: another role's refusal never marks the node's own role."""
    node = capped.launch()
    ec2 = capped.clients["ec2"]
    ec2.delete_tags(Resources=[node], Tags=[{"Key": jh.CLUSTER_TAG}])
    forged = node_event(node, role="other-role", role_id=capped.other_role_id)
    assert capped.call(forged)["statusCode"] == 403
    ec2.create_tags(Resources=[node], Tags=[{"Key": jh.CLUSTER_TAG, "Value": CLUSTER}])
    response = capped.call(capped.event(node))
    assert response["statusCode"] == 200, capped.window(node)


def test_a_node_terminated_after_its_429_gets_no_password(capped: World, directory_admin) -> None:
    """Finding 3 (low-medium, fixed): a node terminated after its 429 still gets a one-time password within
    AUTHORIZED_SECONDS (its credentials outlive it): the termination handler ignores a record without computerName,
    so authorizedRoleId stays, and the object it creates after the termination event is never deleted by the
    termination handler (an orphan with a known password until the sweep). Fix: the termination handler withdraws a
    recorded authorization of an instance without an object (no EC2 call)."""
    held = fill(capped)
    waiting = capped.launch()
    assert capped.call(capped.event(waiting))["statusCode"] == 429
    capped.clients["ec2"].terminate_instances(InstanceIds=[waiting])
    directory_admin(terminated(waiting))
    assert capped.call(capped.close_event(held[0]))["statusCode"] == 200
    created = len(capped.fake_dc.passwords)
    response = capped.call(capped.event(waiting))
    assert response["statusCode"] == 403 and len(capped.fake_dc.passwords) == created, capped.window(waiting)


def test_a_hand_started_instance_flood_within_the_settle_time_costs_at_most_one_ec2_call(capped: World,
                                                                                         calls) -> None:
    """Finding 4 (low-medium, fixed): an instance started by hand with the cluster's profile (attacker 3) costs one EC2
    DescribeInstances per request until the stack is read TEMPLATE_SETTLE_SECONDS after its launch: the unsettled
    template refusal writes no marker, not even a short one; relaunching every 5 minutes keeps it so. Fix: the
    unsettled template refusal is recorded until the template list may be read again (30 s)."""
    hand = capped.launch(template="hand")
    at = capped.launch_time(hand) + 60
    calls.take()
    for n in range(20):
        assert capped.call(capped.event(hand), now=lambda n=n: at + n / 10)["statusCode"] == 403
    flood = calls.take()
    print(f"\n20 requests from a hand-started instance 60 s after its launch: {dict(flood)}")
    assert ec2_calls(flood) <= 1, flood


def test_a_waiting_nodes_429_flood_does_not_write_the_admission_item_per_request(capped: World, calls) -> None:
    """Finding 5 (medium, fixed): every 429 retry, however soon, is a conditional UpdateItem of the ONE admission item:
    root on a waiting node (attacker 2) flooding 1,000/s pushes that single item past DynamoDB's per-partition 1,000
    WCU/s, so every other node's lease (and close) is throttled; the recorded authorization does not make the retry
    wait out its Retry-After. Fix: a 429 records retryNotBefore in the node's own record: earlier retries are
    answered 429 by the pre-check read."""
    fill(capped)
    waiting = capped.launch()
    t0 = time.time()
    assert capped.call(capped.event(waiting), now=lambda: t0)["statusCode"] == 429
    calls.params.clear()
    for n in range(20):  # within one second
        assert capped.call(capped.event(waiting), now=lambda n=n: t0 + n / 20)["statusCode"] == 429
    admission = [p for s, op, p in calls.params
                 if (s, op) == ("dynamodb", "UpdateItem") and p["Key"] == {jh.WINDOW_KEY: {"S": jh.ADMISSION_KEY}}]
    print(f"\n20 retries of a node answered 429 within its Retry-After: {len(admission)} admission-item writes")
    assert len(admission) <= 1, len(admission)
