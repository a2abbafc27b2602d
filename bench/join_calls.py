"""The AWS calls of the join function (join, close, a refused request, a join answered 429 by admission control and
its retry and join decided from the recorded authorization, a join that fails after taking its admission lease, an
instance that is no node of the cluster) and of the directory-admin function's termination handler,
counted from the real handlers on moto (issue 20), in the order the handler makes them.

Each request's calls are recorded with botocore's event hooks (tests/test_join_calls.py's `Calls`); the STS check
of the caller proof (plain HTTPS, not botocore) and the directory's create are recorded by wrapping the handler's
`verify_proof` and `create_computer` parameters. The scale model (bench/join_scale.py) replays these sequences,
so it follows the code. Runs outside pytest: it provides what the tests' autouse fixtures do (fake credentials,
no IMDS, no network for STS, empty per-container caches).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

# One call: (service, operation, bucket class). The class says which EC2 bucket a DescribeInstances may fall in:
# "unfiltered" without Filters and MaxResults, else "filtered"; "admission" for a DynamoDB call on the admission
# item (join_handler.ADMISSION_KEY: taking or giving back a lease, one item for every join); "" for other calls.
Call = tuple[str, str, str]

_FAKE_ENV = {
    "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "eu-west-1", "AWS_EC2_METADATA_DISABLED": "true", "MOTO_EC2_LOAD_DEFAULT_AMIS": "false",
    "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}


@dataclass(frozen=True)
class Counted:
    """Call sequences per request kind, each as the handler made it on moto."""

    join_cold: tuple[Call, ...]  # the first join in a fresh container (nothing cached), admission control on
    join_warm: tuple[Call, ...]  # every later join (IAM, CloudFormation, SSM answers cached)
    close: tuple[Call, ...]  # the node's close after its join (it gives the lease back)
    refused: tuple[Call, ...]  # a join request after the window closed (the flood's request)
    busy: tuple[Call, ...]  # a join while `cap` others hold leases: HTTP 429 with Retry-After (authorization recorded)
    busy_retry: tuple[Call, ...]  # that node's next request, still at the cap: decided from its record (no EC2)
    join_recorded: tuple[Call, ...]  # that node's join once a lease is free, decided from its record (no EC2)
    not_node_first: tuple[Call, ...]  # an instance that is no node of the cluster (no cluster tag): recorded as such
    not_node_again: tuple[Call, ...]  # its next request: refused from the record
    join_failed: tuple[Call, ...]  # a join whose directory is unreachable (503): the lease is given back
    termination_ours: tuple[Call, ...]  # a terminated node the join function recorded
    termination_other: tuple[Call, ...]  # any other terminated instance of the account and region
    nodes: int  # joins counted (every warm join had the same sequence)
    cap: int  # the handler's MAX_JOINS_IN_PROGRESS in the counting world (its default, JOINS_PER_DC)
    retry_after: int  # the 429's Retry-After header (s)


def bucket_class(service: str, operation: str, params: dict[str, Any]) -> str:
    from pcluster_ad.lambda_src import join_handler as jh

    if service == "dynamodb":
        return "admission" if params.get("Key") == {jh.WINDOW_KEY: {"S": jh.ADMISSION_KEY}} else ""
    if (service, operation) != ("ec2", "DescribeInstances"):
        return ""
    return "filtered" if params.get("Filters") or params.get("MaxResults") else "unfiltered"


@contextlib.contextmanager
def _fake_aws() -> Iterator[None]:
    """Fake credentials only, no config files, no IMDS; the real STS unreachable; empty per-container caches."""
    from pcluster_ad.lambda_src import join_handler as jh
    from tests import test_join_handler as tjh

    saved_env = {k: v for k, v in os.environ.items() if k.startswith("AWS_") or k.startswith("MOTO_")}
    saved = (urllib.request.urlopen, jh._templates, jh._profiles, jh._credentials)
    quiet = logging.getLogger(tjh.TEST_LOG.name), logging.getLogger(jh.LOG.name)  # the refusals log WARNING lines
    was_disabled = [q.disabled for q in quiet]

    def no_network(*_: Any, **__: Any) -> Any:
        raise AssertionError("the call count sent a request to the real STS")

    for name in saved_env:
        del os.environ[name]
    os.environ.update(_FAKE_ENV)
    urllib.request.urlopen = no_network
    jh._templates = {"ids": frozenset(), "fetched": float("-inf")}
    jh._profiles, jh._credentials = {}, {"values": None, "fetched": float("-inf")}
    tjh.STS.proofs.clear()
    tjh.STS.calls.clear()
    tjh.STS.failure = None
    for q in quiet:
        q.disabled = True
    try:
        yield
    finally:
        for q, disabled in zip(quiet, was_disabled, strict=True):
            q.disabled = disabled
        for name in _FAKE_ENV:
            os.environ.pop(name, None)
        os.environ.update(saved_env)
        urllib.request.urlopen, jh._templates, jh._profiles, jh._credentials = saved


def count(nodes: int = 20) -> Counted:
    """Launch `nodes` nodes of one queue in moto, join and close each in turn, repeat one request after a close;
    fill the admission cap with joins in progress and ask twice more (429), close them, let the refused node join;
    ask twice from an instance that is no node;
    fail one join at the directory; terminate one recorded node and one other instance. Return each request's call
    sequence."""
    from pcluster_ad.lambda_src import computer_account
    from pcluster_ad.lambda_src import directory_admin as da
    from tests import test_join_handler as tjh
    from tests.test_attack_issue20 import DirectoryOfTheWorld
    from tests.test_directory_admin import ENV as DA_ENV
    from tests.test_join_calls import Calls

    if nodes < 2:
        raise ValueError(f"nodes={nodes}: at least 2 (one cold join, one warm)")
    with _fake_aws():
        fake_dc = tjh.FakeDirectory()
        with tjh.moto_world([], fake_dc) as world:
            calls = Calls(world.clients)
            cap = world.settings.max_joins_in_progress
            if not cap:
                raise AssertionError("counting: the handler's default has no admission control")
            dc_down = False

            def verify(proof: Any, now: float) -> dict[str, str]:
                calls.params.append(("sts", "GetCallerIdentity", {}))
                return tjh.STS(proof, now)

            def create(*args: Any) -> tuple[str, str]:
                calls.params.append(("directory", "CreateComputer", {}))
                if dc_down:
                    raise computer_account.DirectoryUnavailable("counting: no domain controller reachable")
                return fake_dc(*args)

            clock = {"offset": 0.0}  # a node's retry comes after its 429's Retry-After (the model's nodes wait it out)

            def request(event: dict[str, Any], want: int) -> tuple[Call, ...]:
                calls.params.clear()
                response = world.call(event, verify_proof=verify, create_computer=create,
                                      now=lambda: time.time() + clock["offset"])
                if response["statusCode"] != want:
                    raise AssertionError(f"counting: status {response['statusCode']}, not {want}: {response}")
                last.update(headers=response["headers"])
                return tuple((s, o, bucket_class(s, o, p)) for s, o, p in calls.params)

            last: dict[str, Any] = {}
            ids = [world.launch() for _ in range(nodes)]
            joins, closes = [], set()
            for iid in ids:  # one after the other: each close gives its lease back
                joins.append(request(world.event(iid), 200))
                closes.add(request(world.close_event(iid), 200))
            refused = request(world.event(ids[0]), 403)
            holders = [world.launch() for _ in range(cap)]
            joins += [request(world.event(iid), 200) for iid in holders]
            waiting = world.launch()
            busy = request(world.event(waiting), 429)
            retry_after = int(last["headers"].get("retry-after", "0"))
            clock["offset"] += retry_after + 1
            busy_retry = request(world.event(waiting), 429)
            closes |= {request(world.close_event(iid), 200) for iid in holders}
            clock["offset"] += retry_after + 1
            join_recorded = request(world.event(waiting), 200)  # a 429 spent no answer of its window
            closes.add(request(world.close_event(waiting), 200))
            stranger = world.launch(tags={})  # the cluster's profile and template, not its tag
            not_node_first = request(world.event(stranger), 403)
            not_node_again = request(world.event(stranger), 403)
            dc_down = True
            join_failed = request(world.event(world.launch()), 503)
            if len(set(joins[1:])) != 1 or len(closes) != 1:
                raise AssertionError(f"counting: joins or closes differ between nodes: {set(joins[1:])}, {closes}")

            settings = da.load_settings({**DA_ENV, "CLUSTER_NAME": tjh.CLUSTER, "COMPUTER_PREFIX": tjh.PREFIX,
                                         "WINDOW_TABLE": tjh.TABLE})
            directory = DirectoryOfTheWorld(fake_dc)
            other = world.launch(tags={})  # another instance of the account: never joined
            world.clients["ec2"].terminate_instances(InstanceIds=[ids[0], other])

            def terminate(iid: str, want: str) -> tuple[Call, ...]:
                calls.params.clear()
                out = da.handle_termination({"detail": {"instance-id": iid, "state": "terminated"}},
                                            settings=settings, ec2=world.clients["ec2"],
                                            dynamodb=world.clients["dynamodb"], directory=lambda: directory)
                if out["result"] != want:
                    raise AssertionError(f"counting: termination of {iid}: {out}")
                return tuple((s, o, bucket_class(s, o, p)) for s, o, p in calls.params)

            return Counted(join_cold=joins[0], join_warm=joins[1], close=closes.pop(), refused=refused, busy=busy,
                           busy_retry=busy_retry, join_recorded=join_recorded, not_node_first=not_node_first,
                           not_node_again=not_node_again, join_failed=join_failed,
                           termination_ours=terminate(ids[0], "deleted"),
                           termination_other=terminate(other, "ignored"), nodes=len(joins), cap=cap,
                           retry_after=retry_after)


def by_service(calls: tuple[Call, ...]) -> Counter[str]:
    return Counter(s for s, _, _ in calls if s != "directory")
