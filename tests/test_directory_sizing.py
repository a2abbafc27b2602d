"""Directory sizing (issue 20): the plan refuses a cluster whose maximum (every queue's maxCount, the head node, the
login nodes: one computer object each) plus what the stack declares cannot fit the directory edition created here,
warns when it leaves little room, and for an Existing directory says what it could not check. One line per cause,
naming the key and the fix; shown by the offline plan and logged by the program (what `pulumi preview` prints).

Documented capacities (stack_config.DIRECTORY_CAPACITY):
- Simple AD, AWS Directory Service Administration Guide, "Simple Active Directory",
  https://docs.aws.amazon.com/directoryservice/latest/admin-guide/directory_simple_ad.html: Small "up to 500 users
  (approximately 2,000 objects including users, groups, and computers)", Large "up to 5,000 users (approximately
  20,000 objects ...)".
- AWS Managed Microsoft AD, AWS Prescriptive Guidance, "AWS Managed Microsoft AD", https://docs.aws.amazon.com/
  prescriptive-guidance/latest/optimize-costs-microsoft-workloads/active-directory-aws-managed.html: Standard "up to
  30,000 Active Directory objects", Enterprise "up to 500,000"."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from pcluster_ad.stack_config import DIRECTORY_CAPACITY, ConfigError, parse_settings
from tests.conftest import stack_doc
from tests.test_stack_config_messages import problem_lines, run_plan

EXISTING = {"type": "Existing", "domainName": "corp.example.com", "dnsIps": ["10.0.0.10", "10.0.1.10"]}


def raw(max_count: int = 10, *, directory: dict | None = None, **over: Any) -> dict[str, Any]:
    r = copy.deepcopy(stack_doc("dev")["config"])
    r["pcluster-ad:cluster"]["queues"][0]["maxCount"] = max_count
    if directory is not None:
        r["pcluster-ad:directory"] = directory
        if directory["type"] == "Existing":
            r["pcluster-ad:join"] = {"user": "svc-join"}
            r.pop("pcluster-ad:identity", None)  # rfc2307 needs admin credentials
    r.update({f"pcluster-ad:{k}": v for k, v in over.items()})
    return r


def parse(r: dict[str, Any]):
    existing = r["pcluster-ad:directory"]["type"] == "Existing"
    return parse_settings(r, stack="dev", join_password="Corr3ct-Horse-Battery" if existing else None)


def problems(r: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse(r)
    return [str(p) for p in err.value.problems]


def sizing(s) -> list[str]:
    return [w for w in s.warnings if w.startswith(("pcluster-ad:directory.size", "pcluster-ad:directory.type"))]


def test_the_documented_capacities():
    assert DIRECTORY_CAPACITY == {("SimpleAD", "Small"): (2_000, 500), ("SimpleAD", "Large"): (20_000, 5_000),
                                  ("MicrosoftAD", "Standard"): (30_000, None),
                                  ("MicrosoftAD", "Enterprise"): (500_000, None)}


def test_the_sample_stacks_fit_without_a_word():
    assert sizing(parse(raw())) == []
    prod = copy.deepcopy(stack_doc("prod")["config"])
    assert sizing(parse_settings(prod, stack="prod")) == []


def test_a_cluster_too_big_for_simple_ad_small_is_refused_in_one_line():
    """1,995 compute nodes + the head node, and the stack's own objects (computer-adding account, access groups,
    OUs, ledger: 9): 2,005 > 2,000."""
    (line,) = problems(raw(1995))
    assert line == (
        "pcluster-ad:directory.size: Simple AD Small holds about 2,000 objects (users, groups and computers), but with"
        " every node up this stack puts 2,005 there: 1,996 computer objects (head node, the queues' maxCount 1,995),"
        " 1 user, 2 groups, 6 OUs and identity-ledger entries; set pcluster-ad:directory.size: Large (about 20,000"
        " objects), or lower the queues' maxCount")
    assert parse(raw(1986)).cluster.queues[0].compute_resources[0].max_count == 1986  # 1,996: fits


def test_little_room_left_is_a_warning_naming_what_is_left():
    (w,) = sizing(parse(raw(1700)))
    assert w.startswith("pcluster-ad:directory.size Small: with every node up this stack puts 1,710 of the about 2,000"
                        " objects Simple AD Small holds there"), w
    assert "leaving 290 for the directory's own objects, users made outside the stack" in w
    assert w.endswith("set pcluster-ad:directory.size: Large (about 20,000 objects), or lower the queues' maxCount")
    assert sizing(parse(raw(1500))) == []  # 1,510: below 80%


def test_every_node_counts_login_nodes_and_each_compute_resource():
    r = raw(directory={**stack_doc("dev")["config"]["pcluster-ad:directory"], "size": "Large"})
    queue = r["pcluster-ad:cluster"]["queues"][0]
    for k in ("instanceType", "minCount", "maxCount"):
        queue.pop(k)
    queue["computeResources"] = [{"instanceType": "c5.large", "maxCount": 9000},
                                 {"name": "big", "instanceType": "c5.4xlarge", "maxCount": 8000}]
    r["pcluster-ad:cluster"]["queues"].append({"name": "gpu", "instanceType": "g5.xlarge", "maxCount": 2990})
    r["pcluster-ad:cluster"]["loginNodes"] = {"count": 3}
    (line,) = problems(r)
    assert "20,003 there: 19,994 computer objects (head node, 3 login nodes, the queues' maxCount 19,990)" in line
    assert line.endswith("use pcluster-ad:directory.type: MicrosoftAD with size: Standard (about 30,000 objects), or"
                         " lower the queues' maxCount"), line


@pytest.mark.parametrize("size,max_count,fix", [
    ("Small", 25_000, "use pcluster-ad:directory.type: MicrosoftAD with size: Enterprise (about 500,000 objects)"),
    ("Large", 20_000, "use pcluster-ad:directory.type: MicrosoftAD with size: Standard (about 30,000 objects)"),
])
def test_the_fix_names_the_smallest_edition_that_holds_the_cluster(size, max_count, fix):
    (line,) = problems(raw(max_count, directory={"type": "SimpleAD", "domainName": "test.domain", "size": size}))
    assert fix in line, line


def test_managed_ad_standard_and_enterprise():
    managed = {"type": "MicrosoftAD", "domainName": "corp.example.com"}
    (line,) = problems(raw(30_000, directory=managed))
    assert line.startswith("pcluster-ad:directory.size: Managed Microsoft AD Standard holds about 30,000 objects")
    assert "set pcluster-ad:directory.size: Enterprise (about 500,000 objects)" in line
    (line,) = problems(raw(499_999, directory={**managed, "size": "Enterprise"}))
    assert line.endswith("; lower the queues' maxCount (or the login nodes' count)"), line
    assert sizing(parse(raw(20_000, directory={**managed, "size": "Enterprise"}))) == []


def test_more_users_than_simple_ad_supports_is_its_own_line():
    users = [{"name": f"user{i:03d}"} for i in range(500)]
    lines = problems(raw(users=users))
    assert lines == ["pcluster-ad:users: 501 users with the stack's computer-adding account: Simple AD Small supports"
                     " up to 500 users; set pcluster-ad:directory.size: Large, or declare fewer"], lines
    large = raw(directory={"type": "SimpleAD", "domainName": "test.domain", "size": "Large"}, users=users)
    assert sizing(parse(large)) == []


def test_an_existing_directory_says_what_was_not_checked():
    """Its edition and contents are unknown: never refused, one line with what the stack adds there (nodes only
    without adminUser: the stack then creates no OU, user or group)."""
    (w,) = sizing(parse(raw(5000, directory=EXISTING)))
    assert w == (
        "pcluster-ad:directory.type Existing: not checked whether the directory can hold what this stack adds (its"
        " edition and the objects already in it are unknown here): with every node up, 5,001 objects: 5,001 computer"
        " objects (head node, the queues' maxCount 5,000). AWS documents Simple AD Small at about 2,000 objects"
        " (users, groups and computers), Large 20,000, Managed Microsoft AD Standard 30,000, Enterprise 500,000")
    administered = {**EXISTING, "adminUser": "Admin", "directoryId": "d-1234567890",
                    "parentOu": "OU=CORP,DC=corp,DC=example,DC=com"}
    r = raw(directory=administered)
    r.pop("pcluster-ad:join")
    s = parse_settings(r, stack="dev", admin_password="Corr3ct-Horse-Battery")
    (w,) = sizing(s)
    assert "with every node up, 20 objects: 11 computer objects (head node, the queues' maxCount 10), 1 user," \
           " 2 groups, 6 OUs and identity-ledger entries" in w, w


def test_the_plan_prints_the_warning_and_refuses_in_one_line(tmp_path):
    result = run_plan(tmp_path, raw(1700))
    assert result.returncode == 0, result.stderr
    shown = [line for line in result.stderr.splitlines() if "pcluster-ad:directory.size" in line]
    assert len(shown) == 1 and shown[0].startswith("warning: pcluster-ad:directory.size Small: with every node up")
    refused = run_plan(tmp_path, raw(1995))
    assert refused.returncode == 1
    (line,) = problem_lines(refused.stderr)
    assert line.startswith("  - pcluster-ad:directory.size: Simple AD Small holds about 2,000 objects")


def test_the_program_logs_the_warning_as_pulumi_preview_shows_it(run_stack, monkeypatch):
    import pulumi

    logged: list[str] = []
    monkeypatch.setattr(pulumi.log, "warn", lambda msg, *a, **k: logged.append(str(msg)))

    def big(config: dict) -> None:
        config["pcluster-ad:cluster"]["queues"][0]["maxCount"] = 1700

    run_stack(big)
    assert [m for m in logged if m.startswith("pcluster-ad:directory.size Small: with every node up this stack puts"
                                              " 1,710")], logged
