"""Attack review of issue 20 (fewer AWS calls per join): the close decided from the window record (issuedRoleId),
the exhausted window refused from an eventually consistent read, DescribeInstances with an instance-id filter and a
page size, the IAM instance-profile and adding-account caches, and DirectoryAdmin's termination decided from the join
record without asking EC2.

Attackers: (1) an AD user or a job on a node (the node role's credentials from IMDS), (2) root on one compute node,
(3) someone who starts instances with the cluster's instance profile (ec2:RunInstances, iam:PassRole,
ec2:CreateTags), (4) anyone of the account who can call the function URL with an identity of their own (including
sessions of a role they may assume, with a session name of their choice), and, for DirectoryAdmin, a principal of
the account allowed lambda:InvokeFunction on it (the threat model the join function already defends against: README,
"Security properties"). Attacks refused today are plain tests; findings are xfail(strict=True) and flip with the
fix. Every test here runs under tests/test_join_handler.py's no_secret_leaks check."""

# ruff: noqa: F811  (the fixtures of tests/test_join_handler.py are imported, then requested by name)
from __future__ import annotations

import json
from typing import Any

import pytest

from pcluster_ad.lambda_src import computer_account
from pcluster_ad.lambda_src import directory_admin as da
from pcluster_ad.lambda_src import join_handler as jh
from tests.test_directory_admin import ENV as DA_ENV
from tests.test_directory_admin import OWN_OU
from tests.test_join_calls import Calls
from tests.test_join_handler import (  # noqa: F401  (fixtures)
    ACCOUNT,
    CLUSTER,
    CLUSTER_PATH,
    FORBIDDEN,
    MAX_ANSWERS,
    NODE_ROLE,
    PARAMS,
    PASSWORD,
    PREFIX,
    TABLE,
    NoAws,
    StalePreCheck,
    World,
    assert_denied,
    body,
    close_body,
    decisions,
    fake_aws_env,
    fake_dc,
    fake_sts,
    fresh_template_cache,
    identity_event,
    no_secret_leaks,
    offline,
    refused,
    responses,
    world,
)

# --- (1)/(2) a node's own credentials: its own window only ------------------------------------------------------


def test_refused_a_nodes_credentials_close_or_count_no_other_nodes_window(world: World, caplog) -> None:
    """A job (or root) on node A holds A's role session, named A. Closing B's window (B's computer name, or A's name
    with B's record) and asking for a password are decided for A alone; B's record is untouched, and every record
    names only its own instance's computer (what DirectoryAdmin's termination handler deletes)."""
    a, b = world.launch(), world.launch()
    assert world.call(world.event(a))["statusCode"] == 200
    assert world.call(world.event(b))["statusCode"] == 200
    b_before = world.window(b)
    response = world.call(world.event(a, body=close_body(world.name(b))))
    assert response["statusCode"] == 400 and "this instance's computer name" in body(response)["error"]
    refused(world, caplog, world.event(a), "already created")
    assert world.call(world.close_event(a))["statusCode"] == 200  # A's own bookkeeping only
    assert world.window(b) == b_before and "closedAt" not in b_before
    for iid in (a, b):
        assert world.window(iid)["computerName"] == world.name(iid)
    assert len(world.fake_dc.passwords) == 2


def test_refused_a_second_password_when_the_precheck_read_is_stale(world: World, caplog) -> None:
    """The pre-check reads eventually consistently and can only refuse: where it sees no record (or a record from
    before the object was issued), the conditional count still refuses the second password and counts nothing."""
    iid = world.launch()
    assert world.call(world.event(iid))["statusCode"] == 200
    item = world.window(iid)
    before_issue = {"instanceId": {"S": iid}, "answers": {"N": "1"}, "launchTime": {"S": item["launchTime"]}}
    for stale in (None, before_issue):
        refused(world, caplog, world.event(iid), "already created", dynamodb=StalePreCheck(world.clients["dynamodb"],
                                                                                          stale))
    assert world.window(iid) == item and len(world.fake_dc.passwords) == 1


def test_refused_a_stale_precheck_cannot_skip_counting_an_exhausted_window(world: World, caplog) -> None:
    """A window used up by failed attempts: a request whose pre-check read is stale (no record, or fewer answers)
    goes the full way and is refused by the conditional count, which counts nothing more."""
    world.fake_dc.fail_always = computer_account.DirectoryUnavailable("no DC")
    iid = world.launch()
    for _ in range(MAX_ANSWERS):
        assert world.call(world.event(iid))["statusCode"] == 503
    world.fake_dc.fail_always = None
    item = world.window(iid)
    fewer = {"instanceId": {"S": iid}, "answers": {"N": "1"}, "launchTime": {"S": item["launchTime"]}}
    for stale in (None, fewer):
        refused(world, caplog, world.event(iid), f"join window exhausted: {MAX_ANSWERS} of {MAX_ANSWERS}",
                dynamodb=StalePreCheck(world.clients["dynamodb"], stale))
    assert world.window(iid) == item and world.fake_dc.passwords == []


def test_a_close_after_the_termination_handler_removed_the_record_recreates_nothing(world: World, caplog) -> None:
    """Root on a node copies its role credentials (valid for hours after termination) and never lets the boot
    close run. After the node is terminated and DirectoryAdmin deleted its object and record, a close whose pre-check
    read still sees the issued record (eventual consistency, or the delete landing between the read and the write)
    must not write a record again: before issue 20 EC2 refused it (instance state terminated)."""
    iid = world.launch()
    assert world.call(world.event(iid))["statusCode"] == 200
    raw = world.clients["dynamodb"].get_item(TableName=TABLE, Key={jh.WINDOW_KEY: {"S": iid}})["Item"]
    world.clients["ec2"].terminate_instances(InstanceIds=[iid])
    world.clients["dynamodb"].delete_item(TableName=TABLE, Key={jh.WINDOW_KEY: {"S": iid}})  # the handler's delete
    response = world.call(world.close_event(iid), dynamodb=StalePreCheck(world.clients["dynamodb"], raw))
    assert world.window(iid) == {}, world.window(iid)  # today: closedAt, computerName, no expiresAt: kept forever
    assert response["statusCode"] == 403


# --- (4) any identity of the account, sessions named as it likes ------------------------------------------------


@pytest.mark.parametrize("role", ["other-role", "unscoped-role"])
def test_refused_a_session_named_after_another_node_neither_counts_nor_closes_its_window(
        world: World, caplog, role) -> None:
    """A session of a role the attacker may assume, named after node B: no password, no count, no close (the fast
    close needs the role id the object was issued to), before and after B's join."""
    b = world.launch()
    attacker = {"role": role, "role_id": world.role_ids[role]}
    refused(world, caplog, world.event(b, **attacker), "caller role is not the instance role")
    refused(world, caplog, world.event(b, body=close_body(world.name(b)), **attacker), "caller role")
    assert world.window(b) == {}
    assert world.call(world.event(b))["statusCode"] == 200
    issued = world.window(b)
    assert issued["issuedRoleId"] == world.node_role_id
    refused(world, caplog, world.event(b, body=close_body(world.name(b)), **attacker), "caller role")
    assert world.window(b) == issued


@pytest.mark.parametrize("session", ["i-0123456*", "i-*", "i-01234567,i-89abcdef", "i-0123456789ABCDEF0",
                                     "i-0123456789abcdef0x", "i-0123456?", "i-012345678"])
def test_refused_a_session_name_that_is_not_exactly_an_instance_id_never_reaches_ec2(offline, caplog,
                                                                                     session) -> None:
    """The instance-id filter's value is the STS-verified session name, only after INSTANCE_ID.fullmatch (lower-case
    hex, 8 or 17 digits): no wildcard ('*' and '?' are EC2 filter wildcards), no list, no other spelling; refused
    before any AWS call (the pre-check does not even read)."""
    identity = {"userArn": f"arn:aws:sts::{ACCOUNT}:assumed-role/{NODE_ROLE}/{session}",
                "userId": f"AROAEXAMPLENODEROLE01:{session}", "accountId": ACCOUNT}
    response = offline(identity_event(identity))
    assert response["statusCode"] == 403 and body(response) == FORBIDDEN
    [log] = decisions(caplog)
    assert log["reason"] in ("session name is not an instance id", "caller is not an assumed-role session")


class OtherAnswer:
    """ec2 whose DescribeInstances answers `answer(real, **kwargs)` (a filter that EC2 might interpret otherwise)."""

    def __init__(self, real: Any, answer: Any) -> None:
        self.real, self.answer, self.calls = real, answer, []

    def describe_instances(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        return self.answer(self.real, **kwargs)


def test_refused_a_filtered_describe_that_answers_another_instance_or_several(world: World, caplog) -> None:
    """Whatever the filter returned, only an answer of exactly the caller's instance is used: another live cluster
    node's reservation (or two instances) is 'instance not found', nothing counted."""
    a, b = world.launch(), world.launch()
    for ids in ([b], [a, b]):
        def answer(real: Any, ids: list[str] = ids, **_: Any) -> Any:
            return real.describe_instances(InstanceIds=ids)

        refused(world, caplog, world.event(a), "instance not found", ec2=OtherAnswer(world.clients["ec2"], answer))
    assert world.window(a) == {} and world.window(b) == {}


def test_a_live_node_is_found_in_one_unpaginated_describe(world: World) -> None:
    """Attack finding 2 (fixed; a strict xfail until then): with Filters and MaxResults instead of the id, EC2 may
    answer a page without the match and a NextToken, and the function read only the first page (a live node refused
    403, which join-domain.sh does not retry). Now the call names the instance id (EC2 answers it whole: MaxResults
    and NextToken do not apply) and carries a filter (never EC2's unfiltered bucket)."""
    iid = world.launch()
    seen: list[dict] = []

    def record(real: Any, **kwargs: Any) -> Any:
        seen.append(kwargs)
        return real.describe_instances(**kwargs)

    response = world.call(world.event(iid), ec2=OtherAnswer(world.clients["ec2"], record))
    assert response["statusCode"] == 200, body(response)
    assert seen == [{"InstanceIds": [iid], "Filters": [{"Name": "instance-id", "Values": [iid]}]}]


# --- the instance-profile cache ------------------------------------------------------------------------------------


def swap_profile_role(world: World, new_role: str) -> None:
    iam = world.clients["iam"]
    iam.remove_role_from_instance_profile(InstanceProfileName=f"{NODE_ROLE}-profile", RoleName=NODE_ROLE)
    iam.add_role_to_instance_profile(InstanceProfileName=f"{NODE_ROLE}-profile", RoleName=new_role)


def test_refused_a_role_removed_from_the_profile_after_at_most_300_s(world: World, caplog) -> None:
    """Sessions of a role removed from the cluster's profile (credentials a node read before the removal) are
    refused once the cached answer is PROFILE_CACHE_SECONDS old; a hit never renews an entry, so no caller keeps it
    alive. Before that the cached answer still admits them (accepted, documented: 300 s, each window's count and
    one-password rules unchanged)."""
    a, b, c = world.launch(), world.launch(), world.launch()
    t0 = world.launch_time(a) + 60
    assert world.call(world.event(a), now=lambda: t0)["statusCode"] == 200  # fills the cache
    swap_profile_role(world, "other-role")
    assert world.call(world.event(b), now=lambda: t0 + jh.PROFILE_CACHE_SECONDS - 1)["statusCode"] == 200
    refused(world, caplog, world.event(c), "caller role is not the instance role",
            now=lambda: t0 + jh.PROFILE_CACHE_SECONDS)
    assert "answers" not in world.window(c)


def test_refused_a_flood_of_mismatched_sessions_costs_one_iam_call_per_30_s(world: World, caplog) -> None:
    """A session of another role named after a live node (attacker 4), 200 times in a minute: refused every time,
    and IAM is asked again at most every PROFILE_MISS_REFRESH_SECONDS (a mismatch never refreshes more often)."""
    node = world.launch()
    t0 = world.launch_time(node) + 60
    calls = Calls(world.clients)
    for n in range(200):
        response = world.call(world.event(node, role="other-role", role_id=world.other_role_id),
                              now=lambda n=n: t0 + n * 0.3)
        assert response["statusCode"] == 403
    iam = calls.of(calls.take(), "iam")
    assert 1 <= iam <= 1 + int(200 * 0.3 // jh.PROFILE_MISS_REFRESH_SECONDS), iam
    assert world.window(node) == {}


def test_refused_flooding_the_profile_cache_costs_joins_no_more_than_before_issue_20(world: World, caplog) -> None:
    """Attacker 3 starts instances in the cluster's VPC with the cluster tag and PROFILE_CACHE_MAX + 1 different
    instance profiles (a cached answer is stored before the caller's role is compared): the cache is emptied. That
    costs a node's join one GetInstanceProfile, what every join cost before issue 20; the node still joins, and the
    flood gets nothing."""
    iam = world.clients["iam"]
    node = world.launch()
    t0 = world.launch_time(node) + 60
    assert world.call(world.event(node), now=lambda: t0)["statusCode"] == 200
    flood = []
    for n in range(jh.PROFILE_CACHE_MAX + 1):
        profile = iam.create_instance_profile(InstanceProfileName=f"flood-{n}", Path=CLUSTER_PATH)["InstanceProfile"]
        iam.add_role_to_instance_profile(InstanceProfileName=f"flood-{n}", RoleName="other-role")
        flood.append(world.launch(profile_arn=profile["Arn"], template=None))
    for iid in flood:
        response = world.call(world.event(iid, role=NODE_ROLE), now=lambda: t0 + 1)
        assert response["statusCode"] == 403
    assert len(jh._profiles) <= jh.PROFILE_CACHE_MAX and world.node_profile_arn not in jh._profiles
    calls = Calls(world.clients)
    second = world.launch()
    assert world.call(world.event(second), now=lambda: t0 + 2)["statusCode"] == 200
    assert calls.take()["iam", "GetInstanceProfile"] == 1
    assert all(world.window(iid) == {} for iid in flood)


# --- the adding account's credentials, cached 60 s --------------------------------------------------------------


class RotatingDc:
    """A DC that accepts only the adding account's current password (a bind with an old one fails as the real bind
    does: DirectoryUnavailable, 503), else creates as fake_dc."""

    def __init__(self, fake_dc: Any) -> None:
        self.fake_dc, self.password = fake_dc, PASSWORD

    def __call__(self, directory: computer_account.Directory, name: str, host_fqdn: str) -> tuple[str, str]:
        if directory.password != self.password:
            raise computer_account.DirectoryUnavailable("no domain controller accepted the sealed LDAP bind:"
                                                        " 10.0.0.10: LDAPBindError 49")
        return self.fake_dc(directory, name, host_fqdn)


def test_a_node_joining_right_after_a_password_rotation_joins(world: World) -> None:
    """Attack finding 4 (fixed; a strict xfail until then): the cached credentials outlived a rotation by up to 60 s
    and a failed bind kept them, so a node booting then burnt all MAX_ANSWERS attempts (join-domain.sh retries a 503
    after 1, 2, 4 s) and never joined. A directory failure now drops them: the retry reads SSM again."""
    dc = RotatingDc(world.fake_dc)
    first, booting = world.launch(), world.launch()
    t0 = world.launch_time(first) + 60
    assert world.call(world.event(first), now=lambda: t0, create_computer=dc)["statusCode"] == 200
    new = "Pw-rotated-0b1e!New"
    world.clients["ssm"].put_parameter(Name=PARAMS["JOIN_PASSWORD_PARAMETER"], Value=new, Type="SecureString",
                                       Overwrite=True, KeyId="alias/pcluster-ad-test-join")
    dc.password = new  # DirectoryAdmin's ds:ResetUserPassword
    statuses = [world.call(world.event(booting), now=lambda d=d: t0 + 5 + d, create_computer=dc)["statusCode"]
                for d in (0, 1, 3)]
    assert 200 in statuses, statuses
    assert not any(new in json.dumps(r) for r in world.responses)


def test_refused_no_secret_in_the_log_of_a_bug_while_the_credentials_are_cached(world: World, caplog) -> None:
    """An unexpected exception (a bug) logs its type and the traceback's source lines, never a value: the cached
    password is in no log line (no_secret_leaks checks every record and answer as well)."""
    iid, other = world.launch(), world.launch()
    assert world.call(world.event(iid))["statusCode"] == 200
    assert jh._credentials["values"][2] == PASSWORD

    def bug(directory: Any, name: str, host_fqdn: str) -> Any:
        raise TypeError(f"bug with {len(directory.password)} characters")

    caplog.clear()
    assert world.call(world.event(other), create_computer=bug)["statusCode"] == 500
    [log] = decisions(caplog)
    assert log["error_type"] == "TypeError" and PASSWORD not in json.dumps(log)


# --- DirectoryAdmin: the termination decided from the join record -----------------------------------------------


class DirectoryOfTheWorld:
    """DirectoryAdmin's LDAP side over the world's fake DC: this deployment's OU; delete_computer removes the
    object, so the join function could create it again."""

    def __init__(self, fake_dc: Any) -> None:
        self.fake_dc, self.deleted = fake_dc, []
        self.layout = da.Layout("test.domain", "pcluster-ad-dev")
        self.conn = self

    def unbind(self) -> None:
        pass

    def owner_value_of(self, kind: str, name: str | None = None) -> str:
        return OWN_OU

    def exists(self, dn: str) -> bool:
        return True

    def delete_computer(self, name: str) -> str:
        self.deleted.append(name)
        self.fake_dc.created.pop(name, None)
        return "deleted"


@pytest.fixture
def directory_admin(world: World, monkeypatch: pytest.MonkeyPatch) -> Any:
    """DirectoryAdmin's real entry point (`handle`, the dispatcher its EventBridge rules and any direct invoker
    reach) on the world's EC2 and window table, its directory the world's fake DC."""
    d = DirectoryOfTheWorld(world.fake_dc)
    monkeypatch.setattr(da, "get_secret", lambda ssm, name: "admin-secret")
    monkeypatch.setattr(da, "Directory", lambda conn, layout, setter: d)
    settings = da.load_settings({**DA_ENV, "CLUSTER_NAME": CLUSTER, "COMPUTER_PREFIX": PREFIX,
                                 "WINDOW_TABLE": TABLE})

    def invoke(event: dict[str, Any]) -> dict[str, Any]:
        return da.handle(event, settings=settings, ec2=world.clients["ec2"], ssm=NoAws(), ds=NoAws(),
                         dynamodb=world.clients["dynamodb"], connect=lambda s, p: d)

    invoke.directory = d  # type: ignore[attr-defined]
    return invoke


def terminated(iid: str) -> dict[str, Any]:
    return {"source": "aws.ec2", "detail-type": "EC2 Instance State-change Notification",
            "detail": {"instance-id": iid, "state": "terminated"}}


def test_refused_a_real_termination_removes_only_that_nodes_object(world: World, directory_admin) -> None:
    """The record names only its own instance's computer (see the first test): the termination of node A deletes A's
    object and makes its record a tombstone, never B's."""
    a, b = world.launch(), world.launch()
    for iid in (a, b):
        assert world.call(world.event(iid))["statusCode"] == 200
    world.clients["ec2"].terminate_instances(InstanceIds=[a])
    out = directory_admin(terminated(a))
    assert out["result"] == "deleted" and directory_admin.directory.deleted == [world.name(a)]
    assert "terminatedAt" in world.window(a) and world.window(b)["computerName"] == world.name(b)
    assert "terminatedAt" not in world.window(b)


def test_a_forged_termination_of_a_live_node_keeps_its_object_and_record(world: World, directory_admin) -> None:
    """The test issue 20 removed (test_forged_termination_of_a_live_node_is_ignored), through the real dispatcher:
    a direct invocation writes any event; only EC2 knows the instance is running."""
    head = world.launch()
    assert world.call(world.event(head))["statusCode"] == 200
    record = world.window(head)
    out = directory_admin(terminated(head))
    assert directory_admin.directory.deleted == [] and out["result"] == "ignored", out
    assert world.window(head) == record


def test_a_forged_termination_gives_a_job_on_the_node_no_second_password(world: World, directory_admin,
                                                                         caplog) -> None:
    node = world.launch()
    t0 = world.launch_time(node) + 120
    assert world.call(world.event(node), now=lambda: t0)["statusCode"] == 200
    assert world.call(world.close_event(node), now=lambda: t0)["statusCode"] == 200
    directory_admin(terminated(node))  # sent by a principal allowed lambda:InvokeFunction, not by EC2
    response = world.call(world.event(node), now=lambda: t0 + 60)  # a job on the node, 3 minutes after boot
    assert response["statusCode"] == 403 and len(world.fake_dc.passwords) == 1, "a second one-time password"


def test_only_the_stacks_own_schedules_and_events_may_invoke_the_directory_admin_function(run_stack) -> None:
    """README "Security properties": no node's role and no other service may invoke the function that binds as the
    directory admin; the function's resource policy admits EventBridge from the stack's own rules only."""
    graph = run_stack()
    function = next(r for r in graph.of_type("aws:lambda/function:Function") if r.name == "directory-admin-fn")
    rules = {r.name for r in graph.of_type("aws:cloudwatch/eventRule:EventRule")}
    permissions = [r for r in graph.of_type("aws:lambda/permission:Permission")
                   if r.inputs.get("function") == function.inputs["name"]]
    assert permissions, "the schedules need a permission each"
    for p in permissions:
        assert p.inputs["principal"] == "events.amazonaws.com", p.inputs
        assert p.inputs["action"] == "lambda:InvokeFunction"
        assert p.inputs["sourceArn"].removeprefix("<after-deploy:").removesuffix(".arn>") in rules, p.inputs
    for policy in graph.of_type("aws:iam/policy:Policy") + graph.of_type("aws:iam/rolePolicy:RolePolicy"):
        document = json.loads(policy.inputs["policy"]) if isinstance(policy.inputs.get("policy"), str) else {}
        for statement in document.get("Statement", []):
            actions = statement.get("Action", [])
            actions = [actions] if isinstance(actions, str) else actions
            if any(a.startswith("lambda:Invoke") for a in actions):
                assert function.inputs["name"] not in json.dumps(statement), (policy.name, statement)
