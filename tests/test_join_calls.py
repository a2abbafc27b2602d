"""Issue 20: the AWS calls the join function makes per join, per close and per refused request, counted from the
real handler on moto with botocore's own event hooks (every API call a client makes passes `before-call`), so the
figures follow the code. The printed table is the small case of the scale model; the goals asserted here are the
issue's per-request budgets, not timings."""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

import pytest

from tests.test_join_handler import (  # noqa: F401  (fixtures)
    MAX_ANSWERS,
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

NODES = 20


class Calls:
    """Counts every API call the world's clients make, by (service, operation), via botocore's event hooks."""

    def __init__(self, clients: dict[str, Any]):
        self.counts: Counter[tuple[str, str]] = Counter()
        self.params: list[tuple[str, str, dict]] = []
        for client in clients.values():
            client.meta.events.register("before-call.*.*", self._count)  # once per call (not per retry)
            client.meta.events.register("before-parameter-build.*.*", self._params)

    def _count(self, model, **_: Any) -> None:
        self.counts[model.service_model.service_name, model.name] += 1

    def _params(self, params, model, **_: Any) -> None:
        self.params.append((model.service_model.service_name, model.name, dict(params)))

    def take(self) -> Counter[tuple[str, str]]:
        out, self.counts = self.counts, Counter()
        return out

    def of(self, counts: Counter, service: str) -> int:
        return sum(n for (s, _), n in counts.items() if s == service)


@pytest.fixture
def calls(world: World) -> Calls:  # noqa: F811
    return Calls(world.clients)


def table(rows: dict[str, Counter]) -> str:
    services = sorted({s for c in rows.values() for s, _ in c})
    head = f"{'':<34}" + "".join(f"{s:>16}" for s in services)
    lines = [head] + [f"{name:<34}" + "".join(f"{sum(n for (s, _), n in c.items() if s == svc):>16}"
                                                for svc in services) for name, c in rows.items()]
    return "\n".join(lines)


def test_a_burst_of_joins_and_closes_stays_within_the_per_join_budget(world: World, calls: Calls):  # noqa: F811
    """20 nodes of one queue (one instance profile) join and close: at most one EC2 call per join and none per
    close; IAM once for the burst (cached per profile); the adding account's credentials read once (cached);
    CloudFormation once for the cluster's templates."""
    world.settings = dataclasses.replace(world.settings, max_joins_in_progress=NODES)  # all in progress at once
    ids = [world.launch() for _ in range(NODES)]
    calls.take()
    for iid in ids:
        assert world.call(world.event(iid))["statusCode"] == 200
    joins = calls.take()
    for iid in ids:
        assert world.call(world.close_event(iid))["statusCode"] == 200
    closes = calls.take()
    print(f"\nissue 20: AWS calls for {NODES} joins and {NODES} closes (real handler, moto)\n"
          + table({f"{NODES} joins": joins, f"{NODES} closes": closes}))
    assert joins["ec2", "DescribeInstances"] == NODES and calls.of(joins, "ec2") == NODES
    assert calls.of(joins, "iam") == 1 and joins["ssm", "GetParameters"] == 1
    assert calls.of(joins, "cloudformation") <= 2  # the cluster stack and its nested queue stack, once
    assert calls.of(closes, "ec2") == calls.of(closes, "iam") == calls.of(closes, "cloudformation") == 0
    assert calls.of(closes, "dynamodb") == 3 * NODES  # the record read, the close write, the lease's release
    assert joins["dynamodb", "UpdateItem"] == 3 * NODES  # the admission lease, the count, the issued record


def test_describe_instances_names_the_instance_and_carries_a_filter(world: World, calls: Calls):  # noqa: F811
    """EC2 may count a DescribeInstances without a filter in its small "unfiltered" bucket, which ParallelCluster's
    own calls share: the function's call carries one, and names the instance id (one whole answer, no pages)."""
    iid = world.launch()
    calls.take()
    assert world.call(world.event(iid))["statusCode"] == 200
    [(_, _, params)] = [p for p in calls.params if p[:2] == ("ec2", "DescribeInstances")]
    assert params == {"InstanceIds": [iid], "Filters": [{"Name": "instance-id", "Values": [iid]}]}


def test_a_flood_from_a_joined_nodes_credentials_costs_no_ec2_iam_or_ssm_call(world: World, calls: Calls):  # noqa: F811
    """A process on a joined node repeats signed requests (1,000 here): each is refused from the window record
    alone (one DynamoDB read), before EC2, IAM, CloudFormation or SSM are asked."""
    iid = world.launch()
    assert world.call(world.event(iid))["statusCode"] == 200
    assert world.call(world.close_event(iid))["statusCode"] == 200
    calls.take()
    for _ in range(1000):
        assert world.call(world.event(iid))["statusCode"] == 403
    flood = calls.take()
    print(f"\nissue 20: 1,000 requests from a joined node: {dict(flood)}")
    assert flood == Counter({("dynamodb", "GetItem"): 1000})


def test_an_exhausted_window_is_refused_from_the_record(world: World, calls: Calls):  # noqa: F811
    from pcluster_ad.lambda_src import computer_account

    world.fake_dc.fail_always = computer_account.DirectoryUnavailable("no DC")
    iid = world.launch()
    for _ in range(MAX_ANSWERS):
        assert world.call(world.event(iid))["statusCode"] == 503
    calls.take()
    response = world.call(world.event(iid))
    assert response["statusCode"] == 403 and body(response) == {"error": "forbidden"}
    assert calls.take() == Counter({("dynamodb", "GetItem"): 1})
