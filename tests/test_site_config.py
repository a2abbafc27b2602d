"""Issue 12's configuration: several instance types per queue, login nodes, access groups.

Parsing rules (each bad input names its key), the render, and the rendered configs against the REAL
ParallelCluster 3.16.1 schema and its full create validation (tools/validate_cluster_full.py)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from pcluster_ad.cluster_config import LOGIN_POOL_NAME
from pcluster_ad.stack_config import ConfigError, parse_settings
from tests.conftest import ROOT, stack_doc

MULTI = [{"instanceType": "c5.large", "minCount": 1, "maxCount": 10},
         {"name": "big", "instanceType": "c5.4xlarge", "maxCount": 4},
         {"instanceType": "r6i.2xlarge", "maxCount": 2}]


def dev_raw() -> dict[str, Any]:
    return copy.deepcopy(stack_doc("dev")["config"])


def problems_of(edit: Callable[[dict[str, Any]], None]) -> list[str]:
    raw = dev_raw()
    edit(raw)
    with pytest.raises(ConfigError) as err:
        parse_settings(raw, stack="dev")
    return [str(p) for p in err.value.problems]


def _queue(raw: dict[str, Any]) -> dict[str, Any]:
    return raw["pcluster-ad:cluster"]["queues"][0]


def _multi(raw: dict[str, Any], resources: Any = None) -> None:
    q = _queue(raw)
    for k in ("instanceType", "minCount", "maxCount"):
        q.pop(k)
    q["computeResources"] = copy.deepcopy(MULTI) if resources is None else resources


# ------------------------------------------------------------------ several instance types per queue


def test_one_type_form_stays_valid_and_becomes_one_compute_resource():
    (q,) = parse_settings(dev_raw(), stack="dev").cluster.queues
    assert [(c.name, c.instance_type, c.min_count, c.max_count) for c in q.compute_resources] == [
        ("c5-large", "c5.large", 2, 10)]


def test_compute_resources_form_names_and_defaults():
    raw = dev_raw()
    _multi(raw)
    (q,) = parse_settings(raw, stack="dev").cluster.queues
    assert [(c.name, c.instance_type, c.min_count, c.max_count) for c in q.compute_resources] == [
        ("c5-large", "c5.large", 1, 10), ("big", "c5.4xlarge", 0, 4), ("r6i-2xlarge", "r6i.2xlarge", 0, 2)]


@pytest.mark.parametrize(("resources", "key", "needle"), [
    ([], "queues[0].computeResources", "non-empty list"),
    ("c5.large", "queues[0].computeResources", "non-empty list"),
    ([{"instanceType": "c5.large"}, {"instanceType": "c5.large", "maxCount": 3}],
     "queues[0].computeResources[1].name", "'c5-large' is already the name of"),
    ([{"name": "a", "instanceType": "c5.large"}, {"name": "a", "instanceType": "c5.xlarge"}],
     "queues[0].computeResources[1].name", "must be unique in a queue"),
    ([{"name": "Big", "instanceType": "c5.large"}], "queues[0].computeResources[0].name", "lower-case"),
    ([{"name": "default", "instanceType": "c5.large"}], "queues[0].computeResources[0].name", "not 'default'"),
    ([{"name": "x" * 26, "instanceType": "c5.large"}], "queues[0].computeResources[0].name", "25 characters"),
    ([{"instanceType": "c5"}], "queues[0].computeResources[0].instanceType", "not an EC2 instance type"),
    ([{"maxCount": 3}], "queues[0].computeResources[0].instanceType", "is required"),
    ([{"instanceType": "c5.large", "minCount": 5, "maxCount": 2}], "queues[0].computeResources[0].minCount",
     "more than maxCount"),
    ([{"instanceType": "c5.large", "maxcount": 2}], "queues[0].computeResources[0].maxcount",
     "did you mean 'maxCount'"),
    ([{"instanceType": f"c5.{i}xlarge"} for i in range(1, 52)], "queues[0].computeResources", "at most 50"),
])
def test_bad_compute_resources_are_refused_naming_the_key(resources, key, needle):
    problems = problems_of(lambda raw: _multi(raw, resources))
    assert any(p.startswith(f"pcluster-ad:cluster.{key}: ") and needle in p for p in problems), problems


def test_both_forms_in_one_queue_are_refused():
    def edit(raw):
        _queue(raw)["computeResources"] = copy.deepcopy(MULTI)

    problems = problems_of(edit)
    for k in ("instanceType", "minCount", "maxCount"):
        assert f"pcluster-ad:cluster.queues[0].{k}: cannot be combined with computeResources: move it into each" \
               " computeResources entry" in problems, problems


# Eleven real types (each must exist in some region: tests/test_instance_types.py).
ELEVEN_TYPES = ["c5.large", "c5.xlarge", "c5.2xlarge", "c5.4xlarge", "c5.9xlarge", "c5.12xlarge", "c5.18xlarge",
                "c5.24xlarge", "c5.metal", "m5.large", "m5.xlarge"]


def test_more_than_50_compute_resources_in_the_cluster_are_refused():
    def edit(raw):
        raw["pcluster-ad:cluster"]["queues"] = [
            {"name": f"q{i}", "computeResources": [{"instanceType": t} for t in ELEVEN_TYPES]} for i in range(5)]

    problems = problems_of(edit)
    assert problems == ["pcluster-ad:cluster.queues: ParallelCluster allows at most 50 compute resources"
                        " (instance types) in a cluster, got 55"], problems


# ------------------------------------------------------------------ login nodes


def test_login_nodes_parse_with_defaults():
    raw = dev_raw()
    raw["pcluster-ad:cluster"]["loginNodes"] = {"count": 2}
    ln = parse_settings(raw, stack="dev").cluster.login_nodes
    assert (ln.count, ln.instance_type) == (2, "c5.large")
    assert parse_settings(dev_raw(), stack="dev").cluster.login_nodes is None


@pytest.mark.parametrize(("value", "key", "needle"), [
    ({"count": -1}, "loginNodes.count", "must be 0 (pool stopped) to 100"),
    ({"count": "two"}, "loginNodes.count", "whole number"),
    ({"instanceType": "big"}, "loginNodes.instanceType", "not an EC2 instance type"),
    ({"count": 1, "keyName": "k"}, "loginNodes.keyName", "unknown key"),
    (["c5.large"], "loginNodes", "must be an object"),
])
def test_bad_login_nodes_are_refused_naming_the_key(value, key, needle):
    problems = problems_of(lambda raw: raw["pcluster-ad:cluster"].update(loginNodes=value))
    assert any(p.startswith(f"pcluster-ad:cluster.{key}") and needle in p for p in problems), problems


# ------------------------------------------------------------------ access groups


def test_access_groups_parse_and_default_to_everyone():
    assert parse_settings(dev_raw(), stack="dev").access.allowed_groups == ()
    raw = dev_raw()
    raw["pcluster-ad:access"] = {"allowedGroups": ["hpc-users", "Domain Admins", "R&D (old) #1!"],
                                 "adminGroups": ["Domain Admins"]}
    access = parse_settings(raw, stack="dev").access
    assert access.allowed_groups == ("hpc-users", "Domain Admins", "R&D (old) #1!")
    assert access.admin_groups == ("Domain Admins",)


@pytest.mark.parametrize(("value", "expected"), [
    ({"allowedGroups": ["hpc,users"]},
     "pcluster-ad:access.allowedGroups[0]: 'hpc,users' contains ',': AD group names cannot hold"),
    ({"adminGroups": ["ops@corp"]}, "pcluster-ad:access.adminGroups[0]: 'ops@corp' contains '@'"),
    ({"allowedGroups": ["ok", "x" * 257]}, "pcluster-ad:access.allowedGroups[1]: "),
    ({"allowedGroups": [" padded"]}, "pcluster-ad:access.allowedGroups[0]: ' padded' starts or ends with white"),
    ({"allowedGroups": [""]}, "pcluster-ad:access.allowedGroups[0]: '' is empty"),
    ({"allowedGroups": ["team."]}, "pcluster-ad:access.allowedGroups[0]: 'team.' ends with a period"),
    ({"allowedGroups": ["tab\there"]}, "pcluster-ad:access.allowedGroups[0]: 'tab\\there' contains '\\t'"),
    ({"allowedGroups": ["hpc-users", "HPC-Users"]},
     "pcluster-ad:access.allowedGroups[1]: 'HPC-Users' is listed twice (also at [0]; AD group names ignore case)"),
    ({"allowedGroups": "hpc-users"}, "pcluster-ad:access.allowedGroups: must be a list of strings"),
    ({"allowGroups": ["a"]}, "pcluster-ad:access.allowGroups: unknown key (did you mean 'allowedGroups'?)"),
])
def test_bad_access_groups_are_refused_naming_the_key(value, expected):
    problems = problems_of(lambda raw: raw.update({"pcluster-ad:access": value}))
    assert any(p.startswith(expected) for p in problems), problems


# ------------------------------------------------------------------ render


def _render(run_stack, edit) -> dict:
    return yaml.safe_load(run_stack(edit).outputs["clusterConfig"])


def _site(config: dict) -> None:
    _multi(config)
    config["pcluster-ad:cluster"]["loginNodes"] = {"count": 2, "instanceType": "c5.xlarge"}


def test_multi_type_queue_and_login_pool_render(run_stack):
    config = _render(run_stack, _site)
    (queue,) = config["Scheduling"]["SlurmQueues"]
    assert queue["ComputeResources"] == [
        {"Name": "c5-large", "Instances": [{"InstanceType": "c5.large"}], "MinCount": 1, "MaxCount": 10},
        {"Name": "big", "Instances": [{"InstanceType": "c5.4xlarge"}], "MinCount": 0, "MaxCount": 4},
        {"Name": "r6i-2xlarge", "Instances": [{"InstanceType": "r6i.2xlarge"}], "MinCount": 0, "MaxCount": 2}]
    head = config["HeadNode"]
    (pool,) = config["LoginNodes"]["Pools"]
    assert pool["Name"] == LOGIN_POOL_NAME and pool["InstanceType"] == "c5.xlarge" and pool["Count"] == 2
    assert pool["Networking"] == {"SubnetIds": [head["Networking"]["SubnetId"]],
                                  "AdditionalSecurityGroups": head["Networking"]["AdditionalSecurityGroups"]}
    assert pool["Ssh"] == {"AllowedIps": head["Ssh"]["AllowedIps"]}
    # The same join and password-SSH actions and the same extra policies as the head node.
    assert pool["CustomActions"] == head["CustomActions"]
    assert pool["Iam"] == head["Iam"]
    assert "LoginNodes" not in _render(run_stack, None)


def test_site_config_passes_the_real_schema(run_stack):
    from pcluster_ad.tools.pcluster_schema import validate
    from tests.test_cluster import concrete

    assert validate(concrete(run_stack(_site).outputs["clusterConfig"]), "hpc-dev", "eu-west-1") == []


def test_site_config_passes_parallelclusters_full_validation(tmp_path):
    from pcluster_ad.tools.pcluster_schema import validate_full
    from tests.test_pcluster_full_validation import errors_of, make_plan

    plan_dir, name = make_plan(tmp_path, "dev", _site)
    result = validate_full(plan_dir, name)
    print(f"\nsite config: full validation notices {[(f['level'], f['type']) for f in result['failures']]}")
    assert errors_of(result) == [], result["failures"]
    assert result["ok"] is True


# ------------------------------------------------------------------ access groups reach the nodes


TRICKY = ["hpc-users", "Domain Admins", "O'Brien $HOME `x` team", "R&D (old) #1!"]


def test_baked_groups_read_back_in_bash_exactly():
    import subprocess

    from pcluster_ad.components.bootstrap_scripts import bake_access_groups

    script = (ROOT / "bootstrap" / "join-domain.sh").read_text()
    baked = bake_access_groups(script, TRICKY, ["Domain Admins"])
    lines = [line for line in baked.splitlines() if line.startswith(("BAKED_ALLOWED_GROUPS=", "BAKED_ADMIN_GROUPS="))]
    assert len(lines) == 2
    out = subprocess.run(["bash", "-c", "\n".join(lines) + '\nprintf "%s\\n%s\\n" "$BAKED_ALLOWED_GROUPS"'
                          ' "$BAKED_ADMIN_GROUPS"'], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == [",".join(TRICKY), "Domain Admins"]
    assert bake_access_groups(script, [], []) == script  # nothing configured: the lines stay as shipped


@pytest.mark.parametrize("bad", ["a,b", "line\nbreak", " "])
def test_baking_refuses_what_the_script_cannot_split(bad):
    from pcluster_ad.components.bootstrap_scripts import bake_access_groups

    with pytest.raises(ValueError, match="not a valid AD group name"):
        bake_access_groups((ROOT / "bootstrap" / "join-domain.sh").read_text(), [bad], [])


def test_group_change_changes_the_script_object_not_the_cluster(run_stack):
    """A new group list reaches nodes through the uploaded script: the cluster config, and so the pcluster
    Command (its create, triggers and stdin), stays the same: no replacement, no update-cluster."""
    def edit(config):
        config["pcluster-ad:access"] = {"allowedGroups": ["hpc-users", "Domain Admins"], "adminGroups": ["ops"]}

    before, after = run_stack(), run_stack(edit)
    content = after.named("bootstrap-join-domain").inputs["content"]
    assert "BAKED_ALLOWED_GROUPS='hpc-users,Domain Admins'\n" in content
    assert "BAKED_ADMIN_GROUPS=ops\n" in content
    assert before.named("bootstrap-join-domain").inputs["content"] != content
    for key in ("create", "update", "triggers", "stdin"):
        assert before.named("cluster-pcluster").inputs[key] == after.named("cluster-pcluster").inputs[key], key
    # Issue 18: the nodes admit the stack's users group and give sudo to its admins group (baked, the same DN and
    # name before and after); the lists themselves are that group's members, kept by the access Invocation.
    users_dn = "CN=pca-dev-users,OU=Users,OU=pcluster-ad-dev,DC=test,DC=domain"
    assert f"BAKED_STACK_USERS_GROUP={users_dn}\nBAKED_STACK_ADMINS_GROUP=pca-dev-admins\n" in content
    access = [json.loads(s.named("directory-admin-access").inputs["input"]) for s in (before, after)]
    assert (access[0]["allowedGroups"], access[0]["adminGroups"]) == ([], [])
    assert (access[1]["allowedGroups"], access[1]["adminGroups"]) == (["hpc-users", "Domain Admins"], ["ops"])
    assert after.outputs["loginAccess"] == (
        "login: members of hpc-users, Domain Admins (nested groups count), as members of the stack's group"
        " pca-dev-users; disabled, expired, locked-out, computer and service accounts never; sudo: ops, as members"
        " of the stack's group pca-dev-admins")
    assert before.outputs["loginAccess"] == (
        "login: every domain user (pcluster-ad:access.allowedGroups is empty); disabled, expired, locked-out,"
        " computer and service accounts never; sudo: no AD group, as members of the stack's group pca-dev-admins")


def test_ssh_command_points_at_the_login_nodes_when_there_are_any(run_stack):
    from pcluster_ad import program

    settings = parse_settings(dev_raw(), stack="dev")
    assert program._ssh_command(settings, "203.0.113.9", None) == "ssh <ad-user>@203.0.113.9"
    raw = dev_raw()
    raw["pcluster-ad:cluster"]["loginNodes"] = {"count": 2}
    with_login = parse_settings(raw, stack="dev")
    lb = "login-hpc-dev-0123.elb.eu-west-1.amazonaws.com"
    assert program._ssh_command(with_login, "203.0.113.9", lb) == f"ssh <ad-user>@{lb}"
    assert program._ssh_command(with_login, None, None) == "(after deployment) ssh <ad-user>@<loginNodesAddress>"
    raw["pcluster-ad:cluster"]["loginNodes"] = {"count": 0}  # a stopped pool: users go to the head node
    stopped = parse_settings(raw, stack="dev")
    assert program._ssh_command(stopped, "203.0.113.9", None) == "ssh <ad-user>@203.0.113.9"
    g = run_stack(_site)
    assert g.outputs["sshCommand"] == "(after deployment) ssh <ad-user>@<loginNodesAddress>"
