"""The Automation API module: config handling, validation first, and the inline program under mocks."""

from __future__ import annotations

import json

import pytest

import automation
from stack_config import ConfigError
from tests.conftest import stack_doc
from tools.mocks import PlanMocks, mask_secrets, run_program

PASSWORD = "Autom4tion-Secret-Pw"


def dev_config() -> dict:
    return dict(stack_doc("dev")["config"])


def test_engine_config_encodes_objects_and_marks_secrets():
    cfg = automation.engine_config({"aws:region": "eu-west-1", "pcluster-ad:network": {"cidr": "10.1.0.0/16"},
                                    "pcluster-ad:directory": {"protect": True}},
                                   secrets={"pcluster-ad:adminPassword": PASSWORD})
    assert cfg["aws:region"] == ("eu-west-1", False)
    assert json.loads(cfg["pcluster-ad:network"][0]) == {"cidr": "10.1.0.0/16"}
    assert cfg["pcluster-ad:adminPassword"] == (PASSWORD, True)


def test_secrets_must_not_travel_in_plain_config():
    with pytest.raises(ValueError, match="pcluster-ad:adminPassword is a secret"):
        automation.engine_config({"pcluster-ad:adminPassword": PASSWORD})
    with pytest.raises(ValueError, match="not a secret key"):
        automation.engine_config({}, secrets={"pcluster-ad:cluster": "x"})


def test_invalid_config_fails_before_any_stack_is_touched(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")  # not even the CLI is looked up
    config = dev_config()
    config["pcluster-ad:cluster"] = {**config["pcluster-ad:cluster"], "name": "bad_name"}
    with pytest.raises(ConfigError) as err:
        automation.up("dev", config)
    assert any("cluster.name" in str(p) for p in err.value.problems)


def test_missing_pulumi_cli_is_named(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(RuntimeError, match="Pulumi CLI is not on PATH"):
        automation.preview("dev", dev_config())


def test_inline_program_builds_the_whole_stack_under_mocks():
    values = automation.engine_config(dev_config(), secrets={"pcluster-ad:adminPassword": PASSWORD})
    graph = run_program(automation.inline_program, config={k: v for k, (v, _) in values.items()},
                        secret_keys=[k for k, (_, secret) in values.items() if secret], stack="automation",
                        mocks=PlanMocks(region="eu-west-1"))
    names = {r.name for r in graph.resources}
    assert {"network", "directory", "join-secrets", "join-function", "cluster-role", "home", "cluster"} <= names
    assert graph.outputs["clusterName"] == "hpc-dev"
    assert graph.outputs["joinParameterPrefix"] == "/pcluster-ad/automation/"
    assert PASSWORD not in json.dumps([mask_secrets(r.inputs) for r in graph.resources], default=str)
