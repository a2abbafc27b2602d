"""Scale model of the join path (issue 20): N nodes booting over T seconds against AWS's limits and the directory.

    venv/bin/python -m bench.join_scale [--seed 1] [--quick]     (about 20 s; --quick a few seconds)

A discrete-event simulation, seeded and deterministic. What each request costs is not written here: the call
sequences of the join function (join, close, refused request, a join answered 429 by admission control, a join that
fails after its lease) and of the termination handler are counted from the real handlers on moto
(bench/join_calls.py) and replayed in their order, with the per-container caches of the code
(join_handler.PROFILE_CACHE_SECONDS, TEMPLATE_CACHE_SECONDS, CREDENTIAL_CACHE_SECONDS). "Before issue 20" replays
the call counts the issue gives for main before it (commit fdc06b3): per join EC2 2 (bare InstanceIds), IAM 2,
DynamoDB 2 writes, SSM 1, Lambda 2; a refused request EC2 + IAM; a termination 1 EC2 call per terminated instance
(the STS check of the caller proof, one per request, as now; its CloudFormation calls, not in the issue, left out),
and the join script before it (every retryable answer, 429 included, 1, 2, 4 .. 30 s apart plus up to half; the
close 3 tries within 60 s whatever the answer).

Limits (token buckets: capacity, refill per second):
- EC2 DescribeInstances, two readings of https://docs.aws.amazon.com/AWSEC2/latest/APIReference/throttling.html
  (request token bucket sizes and refill rates) and its newer page
  https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-throttling.html:
  "unfiltered": the category buckets; a DescribeInstances without Filters and MaxResults counts in the
  "unfiltered and unpaginated non-mutating" bucket (50, 10/s), any other in the non-mutating bucket (100, 20/s);
  "non-mutating": every DescribeInstances, filtered or not, in one bucket of (100, 20/s) (the newer page evaluates
  each API on its own; its example non-mutating bucket is 100 tokens, 20 per second). The pages' excerpts at hand
  show the 100/20 figures; the 50/10 of the unfiltered bucket is as issue 20 quotes the older page. Not modelled:
  a reading in which a call naming InstanceIds is "unfiltered" whatever its filter (then the function's call would
  share ParallelCluster's post-launch bucket again).
  ParallelCluster's own calls share them (aws-parallelcluster-node, develop of 2024-10 = 3.11.1, the newest source
  at hand; the version in pcluster_version.txt is newer: not checked for changes since;
  src/slurm_plugin/fleet_manager.py):
  after each CreateFleet, `_get_instances_info` calls DescribeInstances with bare InstanceIds (the paginator, no
  page size: unfiltered and unpaginated), 5 attempts 0.1 s, then 0.3*2^n s + up to 0.5 s apart, boto3 retries off
  (resume.py max_retry 1); instances still undescribed are not assigned to Slurm nodes and clustermgtd terminates
  them ("discarded"). clustermgtd's loop (60 s) describes the cluster's instances with tag filters, pages of 1000.
- IAM: AWS publishes no rate and it cannot be raised. ASSUMPTION: GetInstanceProfile (20, 10/s) for the account.
- SSM GetParameters: the standard throughput default, 40 per second (40, 40/s).
- STS GetCallerIdentity (the caller proof): ASSUMPTION (600, 600/s) per account and region.
- CloudFormation ListStackResources: unpublished; ASSUMPTION (20, 5/s).
- DynamoDB on demand: a new table serves up to 4,000 writes and 12,000 reads per second.
- DynamoDB, the admission item: every lease take and release writes the ONE item "admission" of the window table;
  one partition serves at most 1,000 write units per second (a unit per started KB of the item).
- Lambda: reserved concurrency R (the stack's default, stack_config.JOIN_RESERVED_CONCURRENCY, 150) limits the
  function twice; either limit answers the function URL's request HTTP 429 (TooManyRequestsException), and the
  node cannot tell them apart:
  - slots: a request finding all R execution environments busy (a cold start, 0.4 s, holds its slot too);
  - rate: synchronous invocations are limited to 10 requests per second per unit of concurrency, so the function
    gets 10 * R requests per second, however short its requests (AWS Lambda Developer Guide, "Understanding Lambda
    function scaling", https://docs.aws.amazon.com/lambda/latest/dg/lambda-concurrency.html , section on
    concurrency and requests per second: each execution environment serves at most 10 requests per second, and
    the account's requests per second are limited to 10 times its concurrency; "Lambda scaling behavior",
    https://docs.aws.amazon.com/lambda/latest/dg/scaling-behavior.html , states the same ratio: 1,000
    environments "or 10,000 requests per second"). The excerpts at hand state the account-level limit and the
    ratio; applying it per function to 10 * R follows the guide's per-environment rule. Modelled as a token bucket
    of 10 * R per second; ASSUMPTION (no burst is published): its capacity is 0.1 s of the rate (R tokens). A
    request refused for a busy slot spends no token. Not modelled: the scaling rate (1,000 environments per 10 s
    per function), which never binds for R <= 1,000.
  A new container starts cold with empty caches. ASSUMPTION (Lambda's routing is not published): a request takes
  the most recently freed idle container, so after a flood a node's request often lands on one the flood started,
  whose caches are empty (its refused requests fetch nothing), and pays the cached calls again.
- Directory: the lab's Samba DC spends 0.10-0.14 CPU s per join (issue 20; bench/RESULTS.md); one free core per
  DC, served first come first served. ASSUMPTION: a third of it is the function's LDAP create, the rest the node's
  `realm join`, which also spends 1.2 s on the node and its network (the lab's join takes ~1.5 s).

The node follows bootstrap/join-domain.sh: a 429 or 503 answer is "busy": it waits max(retryAfter, uniform(0,
min(30, 2^n))) s for its n-th busy answer (pyhelper busy_delay; retryAfter 2 s from admission control, none from
Lambda's own 429 or the function's 503), cut to the 600 s deadline; 408 and other 5xx wait 1, 2, 4 .. 30 s plus up
to half; a 403 ends the join; the node waits out the function; each `realm join` attempt capped at 120 s; the close (in
the background) 3 failures or 10 attempts within 60 s, busy answers waited out the same way and not counted.

Admission control follows lambda_src/join_handler.py (_Lease), at the handler's default of JOINS_PER_DC per DC
(components/join_function.py sets MAX_JOINS_IN_PROGRESS from the DC count): it is decided at the join's call on the
admission item, found in the counted sequence (after the pre-check read, STS and the authorization: EC2, IAM and
CloudFormation); a full map answers 429 right after it, with the counted Retry-After, spends no answer of the window
and records the authorization (one more write; the counted 429 is exactly that prefix and the write, current_profile
checks it); the node's requests within AUTHORIZED_SECONDS (120 s) of it are decided from that record (the counted
join without EC2, IAM and CloudFormation); a join failing after its lease gives it back with one more write, one
killed by the function's timeout does not; the close gives it back (its counted call on the item); a lease not given
back expires LEASE_SECONDS (180 s) after its last take and is dropped (one more write, then the take again) only when
it would refuse someone. A joined node's request is refused by the pre-check read before the lease is touched.
"""

from __future__ import annotations

import argparse
import heapq
import math
import random
from collections import Counter
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from bench.join_calls import Call, Counted
from pcluster_ad.lambda_src import join_handler as jh
from pcluster_ad.stack_config import JOIN_RESERVED_CONCURRENCY

# --- limits ------------------------------------------------------------------------------------------------------

EC2_READINGS: dict[str, dict[str, tuple[float, float]]] = {
    # bucket name -> (capacity, refill per second); DescribeInstances classes map onto them in ec2_bucket().
    "unfiltered": {"ec2-unfiltered": (50, 10), "ec2-describe": (100, 20)},
    "non-mutating": {"ec2-describe": (100, 20)},
}
LIMITS: dict[str, tuple[float, float]] = {
    "iam": (20, 10),  # ASSUMPTION (unpublished)
    "ssm": (40, 40),
    "sts": (600, 600),  # ASSUMPTION
    "cloudformation": (20, 5),  # ASSUMPTION (unpublished)
    "dynamodb-read": (12000, 12000),
    "dynamodb-write": (4000, 4000),
}
# Service time of one call (s), from the function in the region; rough, only the shape matters.
LATENCY = {"dynamodb": 0.008, "sts": 0.03, "ec2": 0.12, "iam": 0.08, "cloudformation": 0.15, "ssm": 0.03}
LAMBDA_OVERHEAD_S, COLD_START_S = 0.02, 0.4
LAMBDA_RPS_PER_CONCURRENCY = 10  # requests per second per unit of reserved concurrency (docstring)
LAMBDA_RPS_BURST_S = 0.1  # ASSUMPTION: the rate bucket holds 0.1 s of its rate
LAMBDA_TIMEOUT_S = 60  # components/join_function.py: timeout_seconds
MAX_ANSWERS = 3  # components/join_function.py: max_answers (the window's attempts)
BOTO_ATTEMPTS = jh.MAX_ATTEMPTS  # the function's standard retry mode: backoff uniform(0, 2^n) s
DC_CPU_PER_JOIN = (0.10, 0.14)
CREATE_SHARE = 1 / 3
REALM_JOIN_CLIENT_S = 1.2
REALM_JOIN_CAP_S = 120
DEADLINE_S = 600
CLOSE_BUDGET_S = 60
CACHE_SECONDS = {"iam": jh.PROFILE_CACHE_SECONDS, "cloudformation": jh.TEMPLATE_CACHE_SECONDS,
                 "ssm": jh.CREDENTIAL_CACHE_SECONDS}
WRITES = frozenset({"UpdateItem", "PutItem", "DeleteItem"})
# Admission control (lambda_src/join_handler.py, _Lease): the cap is JOINS_PER_DC per DC (components/join_function.py
# max_joins_for), a lease lasts LEASE_SECONDS from its last take, expired ones are dropped (EXPIRED_DROP_MAX per
# write) only when they would refuse someone. The 429's Retry-After is counted on moto (Counted.retry_after).
ADMISSION_LEASE_S = jh.LEASE_SECONDS
# A join answered 429 after EC2 authorized it records the authorization; its requests within this time are decided
# from the record (Counted.busy_retry, join_recorded: no EC2, IAM or CloudFormation call).
AUTHORIZED_S = jh.AUTHORIZED_SECONDS
# DynamoDB serves one partition at most 1,000 write units per second, and one item never spans partitions: every
# lease take and release is a write of the ONE admission item (a write unit per started KB of the item).
ADMISSION_ITEM_LIMIT = (1000, 1000)
LEASE_ENTRY_BYTES, ITEM_BASE_BYTES = 32, 32  # "leases.i-0123456789abcdef0" = epoch; the key and map names
# The node's waits (bootstrap/join-domain.sh): 429 and 503 are "busy": pyhelper busy_delay, full jitter
# max(retryAfter, uniform(0, min(30, 2^busy))) with busy counted from 1, cut to the deadline (1 s left); Lambda's own
# 429 and the function's 503 carry no retryAfter (0). 408 and other 5xx: sleep_backoff, 1, 2, 4 .. 30 s plus up to
# half of it (bash integers). The close: 3 failures or 10 attempts within min(remaining, 60 s), busy answers waited
# out the same way and not counted as failures; 403 ends it.
BUSY_CAP_S = 30
CLOSE_FAILURES, CLOSE_ATTEMPTS = 3, 10
# ParallelCluster (aws-parallelcluster-node fleet_manager.py / clustermgtd.py)
PC_DESCRIBE_DELAYS = (0.1, 0.6, 1.2, 2.4, 4.8)  # before attempt 1..5 (+ up to 0.5 s jitter from the 2nd)
PC_LAUNCH_EVERY_S, PC_BOOT_S = 10, 40  # a launch batch every 10 s; its nodes start their join script 40 s later
CLUSTERMGTD_EVERY_S, PC_PAGE = 60, 1000
FLOODER, PC = -1, -2  # "nodes" of their own random streams


@dataclass(frozen=True)
class Profile:
    """What each request costs, in order: counted (current code) or the issue's figures (before issue 20)."""

    name: str
    join: tuple[Call, ...]  # with every cached call included (a cold container)
    close: tuple[Call, ...]
    refused: tuple[Call, ...]
    termination_ours: tuple[Call, ...]
    termination_other: tuple[Call, ...]
    cached: frozenset[str] = frozenset()  # services whose answers a container keeps (CACHE_SECONDS)
    busy: tuple[Call, ...] = ()  # a join answered 429 by admission control (the join's calls up to its lease, then
    # the record of its authorization)
    join_recorded: tuple[Call, ...] = ()  # a join decided from that record (a 429 after its lease call)
    retry_after: int = 0  # the 429's Retry-After (s)
    old_node: bool = False  # the join script before issue 20: every retryable answer 1, 2, 4 .. 30 s (+ up to half)
    # apart, the close 3 tries whatever the answer

    @property
    def admits(self) -> bool:
        """The join takes an admission lease (a call on the admission item)."""
        return any(kind == "admission" for _, _, kind in self.join)


def current_profile(counted: Counted) -> Profile:
    """The counted sequences; a service the cold join calls and the warm join does not is a cached one."""
    cached = frozenset(s for s, _, _ in counted.join_cold) - frozenset(s for s, _, _ in counted.join_warm)
    unknown = cached - set(CACHE_SECONDS)
    if unknown:
        raise ValueError(f"the handler caches {sorted(unknown)}: add their cache time to CACHE_SECONDS")
    lease = [i for i, (_, _, kind) in enumerate(counted.join_warm) if kind == "admission"]
    record = (("dynamodb", "UpdateItem", ""),)  # counted in a warm container (IAM, CloudFormation cached)
    if len(lease) != 1 or counted.busy != counted.join_warm[:lease[0] + 1] + record:
        raise ValueError(f"the model decides admission at the join's one lease call and answers 429 right after it,"
                         f" recording the authorization with one write; the handler's join is {counted.join_warm},"
                         f" its 429 {counted.busy}: adapt _Sim._handle")
    authorizing = {"ec2", "iam", "cloudformation"}
    warm = tuple(c for c in counted.join_warm if c[0] not in authorizing)
    at = [i for i, (_, _, kind) in enumerate(warm) if kind == "admission"]
    recorded = warm[:at[0]] + record + warm[at[0]:]  # its turn (one write in its own record) before the lease
    if counted.join_recorded != recorded or counted.busy_retry != recorded[:at[0] + 2]:
        raise ValueError(f"the model replays a join decided from its recorded authorization as the warm join without"
                         f" EC2, IAM and CloudFormation, with its turn (a write in its own record) before the lease,"
                         f" and its 429 as that up to the lease call; the handler's are"
                         f" {counted.join_recorded} and {counted.busy_retry}: adapt _Sim._handle")
    if [k for _, _, k in counted.close].count("admission") != 1 or counted.join_failed[-1][2] != "admission":
        raise ValueError(f"the model gives a lease back in the close and after a failed join (one call on the "
                         f"admission item): the handler's close is {counted.close}, a failed join "
                         f"{counted.join_failed}: adapt _Sim._handle")
    return Profile("current", counted.join_cold, counted.close, counted.refused, counted.termination_ours,
                   counted.termination_other, cached, counted.busy, counted.join_recorded, counted.retry_after)


EC2_BARE: Call = ("ec2", "DescribeInstances", "unfiltered")
IAM: Call = ("iam", "GetInstanceProfile", "")
STS: Call = ("sts", "GetCallerIdentity", "")
BEFORE = Profile(  # issue 20's figures for main before it (fdc06b3): no pre-check, no cache, bare InstanceIds
    "before issue 20",
    join=(STS, EC2_BARE, IAM, ("dynamodb", "UpdateItem", ""), ("ssm", "GetParameters", ""),
          ("directory", "CreateComputer", "")),
    close=(STS, EC2_BARE, IAM, ("dynamodb", "UpdateItem", "")),
    refused=(STS, EC2_BARE, IAM, ("dynamodb", "UpdateItem", "")),
    termination_ours=(EC2_BARE,),
    termination_other=(EC2_BARE,),
    old_node=True,
)


# --- the simulation ----------------------------------------------------------------------------------------------

class Bucket:
    def __init__(self, capacity: float, rate: float, at: float = 0.0) -> None:
        self.capacity, self.rate, self.tokens, self.at = capacity, rate, capacity, at  # full at `at`

    def take(self, now: float, tokens: float = 1) -> bool:
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= tokens:
            self.tokens -= tokens
            return True
        return False


@dataclass
class Scenario:
    nodes: int
    seconds: float
    dcs: int = 2
    reading: str = "unfiltered"
    reserved_concurrency: int = JOIN_RESERVED_CONCURRENCY  # the stack's default
    admission_per_dc: int | None = jh.JOINS_PER_DC  # the stack's default; None: no admission control (0)
    flood_per_s: float = 0.0  # signed requests per second from one joined node's credentials
    flood_seconds: float = 60.0
    flood_start: float = 30.0
    seed: int = 1

    @property
    def cap(self) -> int:
        """MAX_JOINS_IN_PROGRESS as components/join_function.py max_joins_for sets it (0: none)."""
        if self.admission_per_dc is None:
            return 0
        return max(1, min(jh.MAX_JOINS_LIMIT, self.admission_per_dc * self.dcs))


@dataclass
class Result:
    scenario: Scenario
    profile: str
    latencies: dict[int, float] = field(default_factory=dict)  # node -> join latency from its script start
    starts: dict[int, float] = field(default_factory=dict)  # node -> when its join script started
    failed: Counter[str] = field(default_factory=Counter)  # why
    discarded: int = 0  # nodes ParallelCluster launched, could not describe, and terminated
    throttles: Counter[str] = field(default_factory=Counter)  # by service (function's calls)
    pc_throttles: int = 0  # ParallelCluster's own DescribeInstances answered RequestLimitExceeded
    pc_describe_failures: int = 0  # launch batches not described in 5 attempts + clustermgtd loops failed
    http_429_lambda: int = 0
    lambda_throttles: Counter[str] = field(default_factory=Counter)  # every 429 of Lambda, nodes' and flood's, by
    # limit: "concurrency" (every slot busy) or "rate" (over 10 * R requests per second)
    http_429_admission: int = 0
    leases_expired: int = 0  # leases dropped after LEASE_SECONDS (a node that never closed)
    admission_item_peak: int = 0  # the most writes of the admission item within one second
    lease_held: list[float] = field(default_factory=list)  # seconds from a lease's (last) take to its release
    failed_after_429: int = 0
    windows_open: int = 0
    calls: Counter[str] = field(default_factory=Counter)  # by service, the function's
    flood_calls: Counter[str] = field(default_factory=Counter)
    flood_answers: Counter[int] = field(default_factory=Counter)

    @property
    def started(self) -> int:
        return self.scenario.nodes - self.discarded

    def share(self) -> float:
        return len(self.latencies) / self.scenario.nodes

    def pct(self, q: float) -> float:
        values = sorted(self.latencies.values())
        if not values:
            return math.nan
        return values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]


class _Sim:
    """Processes are generators yielding the seconds to sleep; everything else is plain state."""

    def __init__(self, scenario: Scenario, profile: Profile) -> None:
        self.s, self.p = scenario, profile
        self.rngs: dict[int, random.Random] = {}  # one stream per node: a flood changes no node's own draws
        self.now = -float(PC_BOOT_S)
        self.queue: list[tuple[float, int, Generator[float, None, None]]] = []
        self.seq = 0
        self.buckets = {name: Bucket(*spec, at=self.now)
                        for name, spec in {**LIMITS, **EC2_READINGS[scenario.reading]}.items()}
        self.dc_free = [self.now] * scenario.dcs
        rps = LAMBDA_RPS_PER_CONCURRENCY * scenario.reserved_concurrency
        self.lambda_rate = Bucket(max(1.0, rps * LAMBDA_RPS_BURST_S), rps, at=self.now)
        self.busy = 0
        self.admission_item = Bucket(*ADMISSION_ITEM_LIMIT, at=self.now)
        self.idle: list[dict[str, float]] = []  # warm containers: service -> when its answer was fetched
        self.leases: dict[int, float] = {}  # node -> when its admission lease expires
        self.item_writes: Counter[int] = Counter()  # second -> writes of the admission item
        self.result = Result(scenario, profile.name)
        self.window: dict[int, str] = {}  # node -> "open" | "issued" | "closed"; answers spent below
        self.answers: Counter[int] = Counter()
        self.authorized: dict[int, float] = {}  # node -> until when its recorded authorization decides its joins

    # scheduling
    def spawn(self, process: Generator[float, None, None], at: float) -> None:
        self.seq += 1
        heapq.heappush(self.queue, (at, self.seq, process))

    def run(self) -> None:
        while self.queue:
            self.now, _, process = heapq.heappop(self.queue)
            try:
                delay = next(process)
            except StopIteration:
                continue
            self.spawn(process, self.now + max(0.0, delay))

    def rng(self, who: int) -> random.Random:
        if who not in self.rngs:
            self.rngs[who] = random.Random(self.s.seed * 1_000_003 + who)
        return self.rngs[who]

    # limits
    def ec2_bucket(self, kind: str) -> str:
        return "ec2-unfiltered" if kind == "unfiltered" and "ec2-unfiltered" in self.buckets else "ec2-describe"

    def bucket_of(self, call: Call) -> str:
        service, operation, kind = call
        if service == "ec2":
            return self.ec2_bucket(kind)
        if service == "dynamodb":
            return "dynamodb-write" if operation in WRITES else "dynamodb-read"
        return service

    def take(self, call: Call) -> bool:
        if not self.buckets[self.bucket_of(call)].take(self.now):
            return False
        if call[2] != "admission":
            return True
        self.item_writes[int(self.now)] += 1
        units = math.ceil((ITEM_BASE_BYTES + LEASE_ENTRY_BYTES * len(self.leases)) / 1024)
        return self.admission_item.take(self.now, units)

    def aws_call(self, who: int, call: Call, calls: Counter[str]) -> Generator[float, None, bool]:
        """One call with the function's retries; False: still throttled after BOTO_ATTEMPTS."""
        for attempt in range(BOTO_ATTEMPTS):
            calls[call[0]] += 1
            if self.take(call):
                yield LATENCY[call[0]]
                return True
            self.result.throttles[call[0]] += 1
            yield LATENCY[call[0]]
            if attempt + 1 < BOTO_ATTEMPTS:
                yield self.rng(who).uniform(0, 2 ** attempt)
        return False

    def dc_work(self, who: int, seconds: float) -> float:
        """Queue `seconds` of CPU on a random DC; return when it is done (FIFO, one core)."""
        dc = self.rng(who).randrange(self.s.dcs)
        self.dc_free[dc] = max(self.now, self.dc_free[dc]) + seconds
        return self.dc_free[dc]

    # the function
    def invoke(self, node: int, kind: str, calls: Counter[str]) -> Generator[float, None, int]:
        """One function URL request; returns the HTTP status the node sees."""
        if self.busy >= self.s.reserved_concurrency:
            self.result.lambda_throttles["concurrency"] += 1
            return 429
        if not self.lambda_rate.take(self.now):
            self.result.lambda_throttles["rate"] += 1
            return 429
        self.busy += 1
        container = self.idle.pop() if self.idle else None
        try:
            if container is None:
                container = {}
                yield COLD_START_S
            yield LAMBDA_OVERHEAD_S
            started = self.now - LAMBDA_OVERHEAD_S
            return (yield from self._handle(node, kind, container, calls, started))
        finally:
            self.busy -= 1
            self.idle.append(container if container is not None else {})

    def _handle(self, node: int, kind: str, cache: dict[str, float], calls: Counter[str],
                started: float) -> Generator[float, None, int]:
        """The counted sequence in its order. Admission control (the join's call on the admission item, after the
        pre-check read and STS, before EC2): 429 right after it when `cap` leases are live; a join failing after it
        gives the lease back (one more call), one killed by the function's timeout does not; the close's call on the
        item gives it back. A 429 is returned as -429 (it carries Retry-After)."""
        p, state = self.p, self.window.get(node, "open")
        if state == "closed" or (kind == "join" and (state == "issued" or self.answers[node] >= MAX_ANSWERS)):
            # Refused: now by the pre-check read alone; before issue 20 after STS, EC2 and IAM.
            for call in p.refused:
                if not (yield from self.aws_call(node, call, calls)):
                    return 503
            return 403
        # A node answered 429 before: its join is decided from its recorded authorization (no EC2, IAM, CFN).
        from_record = kind == "join" and bool(p.join_recorded) and self.now < self.authorized.get(node, -math.inf)
        sequence = p.join_recorded if from_record else p.join if kind == "join" else p.close
        counted = leased = False
        status = 200
        # Decided once per request: a cold join makes both CloudFormation calls, a warm one neither.
        fresh = {svc for svc in p.cached if self.now - cache.get(svc, -math.inf) < CACHE_SECONDS[svc]}
        for call in sequence:
            service, operation, klass = call
            if service in fresh or (klass == "admission" and not self.s.cap):
                continue  # MAX_JOINS_IN_PROGRESS=0: the handler never touches the admission item
            if klass == "admission" and kind == "join":
                got = yield from self._acquire(node, call, calls)
                if got == "busy":
                    self.result.http_429_admission += 1
                    # The authorization EC2 just gave is recorded with the next retry time (p.busy's last call;
                    # best effort); a join decided from the record set its next retry time with its turn.
                    if not from_record and (yield from self.aws_call(node, p.busy[-1], calls)):
                        self.authorized[node] = self.now + AUTHORIZED_S
                    return -429
                if got == "throttled":
                    return 503
                leased = True
                continue
            if klass == "admission":  # the close gives the lease back; an error is left to the lease's expiry
                if (yield from self.aws_call(node, call, calls)):
                    self.give_back(node)
                continue
            if service == "directory":
                done = self.dc_work(node, self.rng(node).uniform(*DC_CPU_PER_JOIN) * CREATE_SHARE)
                yield done - self.now
                if self.now - started > LAMBDA_TIMEOUT_S:
                    self.window[node] = "issued"  # the object exists; its one password was never answered
                    return 504  # killed: no release, the lease expires
                continue
            if not (yield from self.aws_call(node, call, calls)):
                status = 503
                break
            if service in p.cached:
                cache[service] = self.now
            # count_answer: the join's first UpdateItem after its lease (a retry's turn comes before the lease)
            if (kind == "join" and (service, operation) == ("dynamodb", "UpdateItem") and not counted
                    and (leased or not self.s.cap or not p.admits)):
                counted = True
                self.answers[node] += 1  # count_answer: before the secret is read
            if self.now - started > LAMBDA_TIMEOUT_S:
                return 504
        if status != 200:
            if leased:
                release = next(c for c in p.close if c[2] == "admission")
                if (yield from self.aws_call(node, release, calls)):
                    self.give_back(node)
            return status
        if kind == "join":
            self.window[node] = "issued"
        elif kind == "close":
            self.window[node] = "closed"
        return 200

    def give_back(self, node: int) -> None:
        until = self.leases.pop(node, None)
        if until is not None:
            self.result.lease_held.append(self.now - (until - ADMISSION_LEASE_S))

    def _acquire(self, node: int, call: Call, calls: Counter[str]) -> Generator[float, None, str]:
        """_Lease.acquire: one conditional write; when full and some leases expired, one write dropping them and
        the take again. "ok", "busy" or "throttled"."""
        if not (yield from self.aws_call(node, call, calls)):
            return "throttled"
        if node not in self.leases and len(self.leases) >= self.s.cap:
            expired = sorted(n for n, until in self.leases.items() if until <= self.now)[:jh.EXPIRED_DROP_MAX]
            if not expired:
                return "busy"
            for n in expired:
                del self.leases[n]
            self.result.leases_expired += len(expired)
            for _ in range(2):
                if not (yield from self.aws_call(node, call, calls)):
                    return "throttled"
        self.leases[node] = self.now + ADMISSION_LEASE_S  # taken, or refreshed (its own entry)
        return "ok"

    # the node (bootstrap/join-domain.sh)
    def node(self, node: int) -> Generator[float, None, None]:
        start, r = self.now, self.result
        r.starts[node] = start
        delay, busy, saw_429 = 1, 0, False
        while True:
            status = yield from self.invoke(node, "join", r.calls)
            if status == 200:
                break
            if status in (429, -429):
                saw_429 = True
                r.http_429_lambda += status == 429
            if status == 403 or self.now - start >= DEADLINE_S - 1:
                self.fail(node, "refused (403)" if status == 403 else "deadline", saw_429)
                return
            left = start + DEADLINE_S - self.now
            if status in (429, -429, 503) and not self.p.old_node:  # busy: full jitter, at least its retryAfter
                busy += 1
                sleep = self.busy_delay(node, busy, self.p.retry_after if status == -429 else 0)
            else:
                sleep = delay + self.rng(node).randint(0, delay // 2)
                delay = min(30, delay * 2)
            yield max(0.0, min(sleep, left - 1))
        while True:  # realm join, each attempt capped
            done = self.dc_work(node, self.rng(node).uniform(*DC_CPU_PER_JOIN) * (1 - CREATE_SHARE))
            done += REALM_JOIN_CLIENT_S
            cap = min(REALM_JOIN_CAP_S, start + DEADLINE_S - self.now)
            if done - self.now <= cap:
                yield done - self.now
                break
            yield cap
            if self.now - start >= DEADLINE_S - 1:
                self.fail(node, "realm join deadline", saw_429)
                return
        r.latencies[node] = self.now - start
        self.spawn(self.close(node, start), self.now)

    def busy_delay(self, node: int, busy: int, retry_after: float) -> float:
        return max(retry_after, self.rng(node).uniform(0, min(BUSY_CAP_S, 2 ** busy)))

    def close(self, node: int, start: float) -> Generator[float, None, None]:
        until = self.now + min(CLOSE_BUDGET_S, start + DEADLINE_S - self.now)
        attempt = failures = busy = 0
        delay = 1
        while failures < CLOSE_FAILURES and attempt < CLOSE_ATTEMPTS:
            attempt += 1
            if until - self.now < 1:
                break
            status = yield from self.invoke(node, "close", self.result.calls)
            if status == 200:
                return
            if status in (429, 503) and not self.p.old_node:  # busy: waited out, no failure
                self.result.http_429_lambda += status == 429
                busy += 1
                if until - self.now > 1:
                    yield max(0.0, min(self.busy_delay(node, busy, 0), until - self.now - 1))
                continue
            self.result.http_429_lambda += status == 429 and self.p.old_node
            if status not in (408, 429, 500, 502, 503, 504):
                break  # 403: final
            failures += 1
            if failures < CLOSE_FAILURES and until - self.now > 1:
                yield max(0.0, min(delay + self.rng(node).randint(0, delay // 2), start + DEADLINE_S - self.now - 1))
            delay *= 2
        self.result.windows_open += 1  # its lease, if the close did not give it back, expires

    def fail(self, node: int, why: str, saw_429: bool) -> None:
        self.result.failed[why] += 1
        self.result.failed_after_429 += saw_429

    # the flood: one joined node's credentials, requests at a fixed rate
    def flood(self, node: int) -> Generator[float, None, None]:
        end, gap = self.now + self.s.flood_seconds, 1 / self.s.flood_per_s
        while self.now < end:
            self.spawn(self._flood_request(node), self.now)
            yield gap

    def _flood_request(self, node: int) -> Generator[float, None, None]:
        status = yield from self.invoke(node, "join", self.result.flood_calls)
        self.result.flood_answers[abs(status)] += 1

    # ParallelCluster
    def pc_launch(self, count: int) -> Generator[float, None, bool]:
        """CreateFleet, then DescribeInstances on the new ids: True if described."""
        bucket = self.buckets[self.ec2_bucket("unfiltered")]
        for attempt, pause in enumerate(PC_DESCRIBE_DELAYS):
            yield pause + (self.rng(PC).uniform(0, 0.5) if attempt else 0)
            for _ in range(math.ceil(count / PC_PAGE)):
                if not bucket.take(self.now):
                    self.result.pc_throttles += 1
                    break
            else:
                return True
        self.result.pc_describe_failures += 1
        return False

    def clustermgtd(self, running: Callable[[], int], until: float) -> Generator[float, None, None]:
        bucket = self.buckets[self.ec2_bucket("filtered")]
        yield self.rng(PC).uniform(0, CLUSTERMGTD_EVERY_S)
        while self.now < until:
            for _ in range(max(1, math.ceil(running() / PC_PAGE))):
                if not bucket.take(self.now):
                    self.result.pc_throttles += 1
                    self.result.pc_describe_failures += 1
                    break
            yield CLUSTERMGTD_EVERY_S


def simulate(scenario: Scenario, profile: Profile) -> Result:
    sim = _Sim(scenario, profile)
    rng = random.Random(scenario.seed + 1)
    starts = sorted(rng.uniform(0, scenario.seconds) for _ in range(scenario.nodes))
    batches: dict[int, list[int]] = {}
    for node, at in enumerate(starts):
        batches.setdefault(int(at // PC_LAUNCH_EVERY_S), []).append(node)
    for k, nodes in sorted(batches.items()):  # the batch's nodes start PC_BOOT_S after its launch, in order
        launch = k * PC_LAUNCH_EVERY_S - PC_BOOT_S
        sim.spawn(_batch_then_stagger(sim, nodes, [starts[n] - k * PC_LAUNCH_EVERY_S for n in nodes]), launch)
    sim.spawn(sim.clustermgtd(lambda: scenario.nodes, scenario.seconds + DEADLINE_S), sim.now)
    if scenario.flood_per_s:
        sim.window[FLOODER] = "closed"  # a joined node whose window closed
        sim.spawn(sim.flood(FLOODER), scenario.flood_start)
    sim.run()
    sim.result.admission_item_peak = max(sim.item_writes.values(), default=0)
    return sim.result


def _batch_then_stagger(sim: _Sim, nodes: list[int], offsets: list[float]) -> Generator[float, None, None]:
    launched = sim.now
    if not (yield from sim.pc_launch(len(nodes))):
        sim.result.discarded += len(nodes)
        return
    for node, offset in zip(nodes, offsets, strict=True):
        sim.spawn(sim.node(node), max(sim.now, launched + PC_BOOT_S + offset))


def terminations(profile: Profile, count: int, seconds: float, ours: float, reading: str) -> dict[str, Any]:
    """`count` instances of the account terminated evenly over `seconds`, a share `ours` of them this cluster's
    joined nodes: EC2 calls of the termination handler, its throttles (one call each, no retry counted), and how
    long the EC2 bucket it uses stays empty."""
    buckets = {name: Bucket(*spec) for name, spec in EC2_READINGS[reading].items()}
    calls = throttled = 0
    empty = set()
    for i in range(count):
        at = i * seconds / count
        sequence = profile.termination_ours if i < ours * count else profile.termination_other
        for service, _, kind in sequence:
            if service != "ec2":
                continue
            name = "ec2-unfiltered" if kind == "unfiltered" and "ec2-unfiltered" in buckets else "ec2-describe"
            calls += 1
            if not buckets[name].take(at):
                throttled += 1
                empty.add(int(at))
    return {"ec2_calls": calls, "throttled": throttled, "seconds_bucket_empty": len(empty)}


# --- the report --------------------------------------------------------------------------------------------------

def _fmt(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.1f}"


def row(label: str, r: Result) -> str:
    t = r.throttles
    fail = sum(r.failed.values())
    return (f"| {label} | {100 * r.share():.1f}% | {_fmt(r.pct(0.5))} / {_fmt(r.pct(0.95))} / {_fmt(r.pct(1.0))} | "
            f"{r.http_429_lambda} / {r.http_429_admission} | {fail} ({r.failed_after_429} after a 429) | "
            f"{t['ec2']} / {t['iam']} / {t['ssm']} / {t['cloudformation']} / {t['sts'] + t['dynamodb']} | "
            f"{r.windows_open} | {r.admission_item_peak} / {r.leases_expired} | "
            f"{r.pc_throttles} / {r.pc_describe_failures} ({r.discarded} nodes) |")


HEAD = ("| case | joined | latency from boot p50 / p95 / max (s) | HTTP 429 Lambda / admission | failed nodes | "
        "throttles EC2 / IAM / SSM / CloudFormation / other | windows left open | admission item: peak writes/s, "
        "leases expired | ParallelCluster EC2 throttles / describe failures (discarded) |\n"
        "|---|---|---|---|---|---|---|---|---|")


def call_table(counted: Counted, current: Profile) -> str:
    def cell(calls: Iterable[Call]) -> str:
        c = Counter(s if k != "admission" else "dynamodb (admission item)" for s, _, k in calls if s != "directory")
        return ", ".join(f"{s} {n}" for s, n in sorted(c.items())) or "-"

    warm = counted.join_warm
    lines = ["| request | before issue 20 (issue's figures) | now, counted on moto |", "|---|---|---|",
             f"| join, cold container | {cell(BEFORE.join)} | {cell(counted.join_cold)} |",
             f"| join, warm container | {cell(BEFORE.join)} | {cell(warm)} |",
             f"| join answered 429 (admission: {counted.cap} joins in progress) | - | {cell(counted.busy)} |",
             f"| its retry, still 429 (decided from the record) | - | {cell(counted.busy_retry)} |",
             f"| its join after the 429s (decided from the record) | - | {cell(counted.join_recorded)} |",
             f"| join failing after its lease (DC unreachable, 503) | - | {cell(counted.join_failed)} |",
             f"| close (gives the lease back) | {cell(BEFORE.close)} | {cell(counted.close)} |",
             f"| request after the window closed | {cell(BEFORE.refused)} | {cell(counted.refused)} |",
             f"| an instance that is no node, first request | - | {cell(counted.not_node_first)} |",
             f"| an instance that is no node, next requests | - | {cell(counted.not_node_again)} |",
             f"| termination, a joined node | {cell(BEFORE.termination_ours)} | {cell(counted.termination_ours)} |",
             f"| termination, any other instance | {cell(BEFORE.termination_other)} | "
             f"{cell(counted.termination_other)} |"]
    kinds = sorted({k for s, _, k in counted.join_cold + counted.termination_ours if s == "ec2"})
    lease = [f"{s} {o}" for s, o, k in counted.join_cold if k == "admission"]
    lines.append(f"\nEC2 DescribeInstances of the function now: {', '.join(kinds)} (before: unfiltered); cached per"
                 f" container: {', '.join(f'{s} {CACHE_SECONDS[s]} s' for s in sorted(current.cached))}. Admission"
                 f" (handler default {counted.cap} per DC): the lease is {', '.join(lease)} after the pre-check read,"
                 f" STS and the authorization (EC2); the 429 carries Retry-After {counted.retry_after} s.")
    return "\n".join(lines)


def _label(profile: Profile, sc: Scenario) -> str:
    if not profile.admits:
        cap = ""
    elif sc.admission_per_dc is None:
        cap = ", no admission"
    else:
        cap = f", admission {sc.admission_per_dc}/DC"
    return f"{profile.name}{cap}; reserved {sc.reserved_concurrency}; EC2 {sc.reading}"


SWEEP = (10, 50, 100, 110, 150, 200)
SWEEP_QUICK = (10, 150)
CAP_SWEEP: tuple[int | None, ...] = (4, 8, 12, 16, 24, 32, None)
CAP_SWEEP_QUICK: tuple[int | None, ...] = (8, None)
FLOOD_DELAY_GOAL_S = 1.0


def flood_delays(sc: Scenario, profile: Profile, per_s: float = 1000) -> tuple[Result, Result, list[float]]:
    """The same nodes without and with the flood; each node's extra latency (inf: it did not join), in the order
    of calm.latencies."""
    calm, hit = simulate(sc, profile), simulate(replace(sc, flood_per_s=per_s), profile)
    return calm, hit, [hit.latencies.get(node, math.inf) - v for node, v in calm.latencies.items()]


def _boot_goal(r: Result, p95: float) -> bool:
    return (r.share() == 1 and not r.failed and r.pct(0.95) <= p95 and r.pc_throttles == 0
            and r.windows_open == 0)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _worst(runs: list[Result]) -> Result:
    return max(runs, key=lambda x: (x.pct(0.95), x.pct(1.0)))


def _settled(sc: Scenario, calm: Result, delays: list[float]) -> float:
    """The largest delay of a node whose join started 1 s or more into the flood (after its cold starts)."""
    return max((d for node, d in zip(calm.latencies, delays, strict=True)
                if calm.starts[node] >= sc.flood_start + 1), default=0.0)


def _flood_cell(sc: Scenario, profile: Profile) -> tuple[str, bool]:
    calm, hit, delays = flood_delays(sc, profile)
    worst = max(delays, default=0.0)
    ok = worst <= FLOOD_DELAY_GOAL_S and hit.flood_calls["ec2"] == hit.flood_calls["iam"] == 0
    return (f"{worst:.2f} ({_settled(sc, calm, delays):.2f} from 1 s into it), {sum(d > 1 for d in delays)} nodes"
            f" > 1 s; flood EC2 / IAM {hit.flood_calls['ec2']} / {hit.flood_calls['iam']}"), ok


def reserved_sweep(current: Profile, seed: int, n: Callable[[int], int], values: Iterable[int]) -> list[str]:
    """Issue 20's three goals against reserved concurrency (admission control at the handler's default): the flood
    (1,000 signed requests/s for 60 s from one joined node's credentials during 1,000 nodes over 120 s, 2 DCs),
    1,000 nodes over 120 s (2 DCs; p95 <= 3 s, no failure, no ParallelCluster EC2 throttle, no window left open)
    and 2,000 over 120 s (4 DCs; p95 <= 40 s), the last two under both EC2 readings (the worse shown)."""
    out = [f"## Reserved concurrency against issue 20's goals (admission {jh.JOINS_PER_DC}/DC; flood: 1,000 "
           f"requests/s for 60 s from t=30 s during {n(1000)} nodes over 120 s, 2 DCs, EC2 unfiltered)\n",
           "| reserved concurrency | Lambda rate limit (req/s) | flood answers (HTTP status: count) | Lambda 429s: "
           "every slot busy / over the rate | other nodes' latency p95 / max without -> with the flood (s) | "
           "largest delay of one node (s) | nodes delayed > 1 s | "
           f"{n(1000)} nodes, 2 DCs: p95 / max (s), failed | {n(2000)} nodes, 4 DCs: p95 / max (s), failed | "
           "goals met: flood / 1,000 / 2,000 |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    yes = {True: "yes", False: "NO"}
    for r in values:
        sc = Scenario(n(1000), 120, dcs=2, seed=seed, reserved_concurrency=r)
        calm, hit, delays = flood_delays(sc, current)
        worst = max(delays, default=0.0)
        flood_ok = worst <= FLOOD_DELAY_GOAL_S and hit.flood_calls["ec2"] == hit.flood_calls["iam"] == 0
        boots = []
        for nodes, dcs, goal in ((n(1000), 2, 3.0), (n(2000), 4, 40.0)):
            runs = [simulate(replace(sc, nodes=nodes, dcs=dcs, reading=reading), current) for reading in EC2_READINGS]
            w = _worst(runs)
            boots.append((f"{_fmt(w.pct(0.95))} / {_fmt(w.pct(1.0))}, {sum(sum(x.failed.values()) for x in runs)}",
                          all(_boot_goal(x, goal) for x in runs)))
        lt = hit.lambda_throttles
        out.append(f"| {r} | {LAMBDA_RPS_PER_CONCURRENCY * r} | {dict(sorted(hit.flood_answers.items()))} | "
                   f"{lt['concurrency']} / {lt['rate']} | {_fmt(calm.pct(0.95))} / "
                   f"{_fmt(calm.pct(1))} -> {_fmt(hit.pct(0.95))} / {_fmt(hit.pct(1))} | {worst:.2f} | "
                   f"{sum(d > 1 for d in delays)} | {boots[0][0]} | {boots[1][0]} | "
                   f"{yes[flood_ok]} / {yes[boots[0][1]]} / {yes[boots[1][1]]} |")
    return out


def cap_sweep(current: Profile, seed: int, n: Callable[[int], int], values: Iterable[int | None]) -> list[str]:
    """Issue 20's goals against the admission cap per DC, at the stack's reserved concurrency; boots under both
    EC2 readings (the worse shown), plus the one-DC overload (2,000 nodes over 120 s on ONE DC)."""
    out = [f"## Admission cap per DC against issue 20's goals (reserved {JOIN_RESERVED_CONCURRENCY}; boots under "
           f"both EC2 readings, the worse shown)\n",
           f"| joins in progress per DC | lease held, mean (s) | {n(1000)} nodes, 2 DCs: p95 / max (s), "
           f"admission 429s, failed, windows open | {n(2000)} nodes, 4 DCs: p95 / max (s), admission 429s, failed, "
           f"windows open | flood: largest delay of one node (s) | ONE DC, {n(2000)} nodes: p95 / max (s), "
           f"admission / Lambda 429s, failed, windows open | goals met: 1,000 / 2,000 / flood |",
           "|---|---|---|---|---|---|---|"]
    yes = {True: "yes", False: "NO"}
    for per_dc in values:
        base = Scenario(n(1000), 120, dcs=2, seed=seed, admission_per_dc=per_dc)
        cells, oks = [], []
        for nodes, dcs, goal in ((n(1000), 2, 3.0), (n(2000), 4, 40.0)):
            runs = [simulate(replace(base, nodes=nodes, dcs=dcs, reading=reading), current)
                    for reading in EC2_READINGS]
            w = _worst(runs)
            cells.append(f"{_fmt(w.pct(0.95))} / {_fmt(w.pct(1.0))}, {w.http_429_admission}, "
                         f"{sum(w.failed.values())}, {w.windows_open}")
            oks.append(all(_boot_goal(x, goal) for x in runs))
        flood, flood_ok = _flood_cell(base, current)
        one = simulate(replace(base, nodes=n(2000), dcs=1), current)
        held = _mean(simulate(base, current).lease_held)
        out.append(f"| {per_dc if per_dc is not None else 'none'} | {_fmt(held)} | {cells[0]} | {cells[1]} | {flood} | "
                   f"{_fmt(one.pct(0.95))} / {_fmt(one.pct(1.0))}, {one.http_429_admission} / "
                   f"{one.http_429_lambda}, {sum(one.failed.values())}, {one.windows_open} | "
                   f"{yes[oks[0]]} / {yes[oks[1]]} / {yes[flood_ok]} |")
    return out


def report(seed: int = 1, quick: bool = False) -> str:
    from bench import join_calls

    counted = join_calls.count(5 if quick else 20)
    current = current_profile(counted)
    out = [f"## Calls per request (counted from the handlers on moto, {counted.nodes} joins)\n",
           call_table(counted, current), ""]
    scale = 0.1 if quick else 1.0

    def n(nodes: int) -> int:
        return max(10, int(nodes * scale))

    off = {"admission_per_dc": None}
    old = {"reserved_concurrency": 10}  # the stack's default before the sweep (and issue 20's study)
    cases = [  # (title, base scenario, rows: (profile, changes)); the base is the stack's default
        (f"{n(1000)} nodes over 120 s, 2 DCs", Scenario(n(1000), 120, dcs=2, seed=seed),
         [(BEFORE, old), (current, {}), (current, off), (current, {"admission_per_dc": 16}), (current, old),
          (BEFORE, {"reserved_concurrency": 100})]),
        (f"{n(2000)} nodes over 120 s, 4 DCs", Scenario(n(2000), 120, dcs=4, seed=seed),
         [(BEFORE, old), (current, {}), (current, off), (current, {"admission_per_dc": 16}), (current, old)]),
        (f"Overload: {n(2000)} nodes over 120 s on ONE DC (what admission control is for)",
         Scenario(n(2000), 120, dcs=1, seed=seed),
         [(current, {}), (current, off), (current, {"admission_per_dc": 16}), (current, {"admission_per_dc": 4}),
          (current, old)]),
    ]
    for title, base, rows in cases:
        out += [f"## {title}\n", HEAD]
        for reading in EC2_READINGS:
            for profile, changes in rows:
                sc = replace(base, reading=reading, **changes)
                out.append(row(_label(profile, sc), simulate(sc, profile)))
        out.append("")
    flood = Scenario(n(1000), 120, dcs=2, seed=seed)
    out.append(f"## A flood: 1,000 signed requests per second for 60 s (from t=30 s) from one joined node's "
               f"credentials, during {flood.nodes} nodes over 120 s, 2 DCs (EC2 unfiltered reading)\n")
    out.append("| case | flood's EC2 / IAM / STS / DynamoDB calls | flood answers (HTTP status: count) | other nodes'"
               " latency p95 / max without -> with the flood (s) | largest delay of one node (s) | the same, nodes "
               "starting 1 s or more into the flood (s) | nodes delayed > 1 s | joined |\n"
               "|---|---|---|---|---|---|---|---|")
    for profile, changes in [(BEFORE, old), (current, {}), (current, off), (current, {"admission_per_dc": 16}),
                             (current, {"reserved_concurrency": 100}), (current, old)]:
        sc = replace(flood, **changes)
        calm, hit, delays = flood_delays(sc, profile)
        fc = hit.flood_calls
        out.append(f"| {_label(profile, sc)} | {fc['ec2']} / {fc['iam']} / {fc['sts']} / {fc['dynamodb']} | "
                   f"{dict(sorted(hit.flood_answers.items()))} | {_fmt(calm.pct(0.95))} / {_fmt(calm.pct(1))} -> "
                   f"{_fmt(hit.pct(0.95))} / {_fmt(hit.pct(1))} | {max(delays, default=0.0):.2f} | "
                   f"{_settled(sc, calm, delays):.2f} | {sum(d > 1 for d in delays)} | {100 * hit.share():.1f}% |")
    out.append("")
    out += cap_sweep(current, seed, n, CAP_SWEEP_QUICK if quick else CAP_SWEEP)
    out.append("")
    out += reserved_sweep(current, seed, n, SWEEP_QUICK if quick else SWEEP)
    out.append("")
    out.append("## Terminations: 1,000 instances of the account over 10 s, half of them this cluster's joined nodes "
               "(first attempts only)\n")
    out.append("| case | EC2 calls | throttled | seconds with the bucket empty |\n|---|---|---|---|")
    for profile in (BEFORE, current):
        for reading in EC2_READINGS:
            t = terminations(profile, 1000, 10, 0.5, reading)
            out.append(f"| {profile.name}; EC2 {reading} | {t['ec2_calls']} | {t['throttled']} | "
                       f"{t['seconds_bucket_empty']} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="small cases only (seconds)")
    args = parser.parse_args(argv)
    print(report(args.seed, args.quick))


if __name__ == "__main__":
    main()
