"""The launcher with login nodes (issue 12): ParallelCluster refuses most LoginNodes.Pools[] changes while the
pool has nodes ("Stop the login nodes by setting Count parameter to 0 and update the cluster"). The launcher
does exactly that on the CURRENT config (from describe-cluster's clusterConfiguration URL), waits until the pool
is empty, then applies the wanted config. The stand-in pcluster judges every update with ParallelCluster's own
ConfigPatch, with the pools that have nodes running."""

from __future__ import annotations

import io
import json

import pytest
import yaml

from pcluster_ad.launcher import cli
from pcluster_ad.launcher.core import EXIT_FAILED, EXIT_OK, LauncherError, fetch_https
from tests.test_launcher import CONFIG_A, NAME, REGION, Fake, FakeClock, fake_runner

POOL = """\
LoginNodes:
  Pools:
    - Name: login
      InstanceType: c5.large
      Count: 2
      Networking:
        SubnetIds:
          - subnet-0123456789abcdef0
"""
WITH_POOL = CONFIG_A + POOL
BIGGER_POOL = WITH_POOL.replace("InstanceType: c5.large\n      Count", "InstanceType: c5.xlarge\n      Count")
MORE_NODES = WITH_POOL.replace("Count: 2", "Count: 3")


@pytest.fixture
def stand_in(tmp_path, monkeypatch) -> Fake:
    """The stand-in pcluster's state, as tests/test_launcher.py's `fake` fixture sets it up."""
    monkeypatch.setenv("FAKE_PCLUSTER_STATE", str(tmp_path / "fake-pcluster-state.json"))
    monkeypatch.delenv("PCLUSTER_AD_ROLLBACK_ON_FAILURE", raising=False)
    return Fake(tmp_path)


def fetch_from(fake: Fake):
    """describe-cluster's configuration URL -> the stand-in's current config (what S3 would serve)."""
    seen = []

    def fetch(url: str) -> str:
        seen.append(url)
        assert url == f"https://parallelcluster-fake.s3.amazonaws.com/{NAME}"
        return fake.state()["clusters"][NAME]["config"]

    fetch.seen = seen
    return fetch


def run(command: str, config: str, fetch):
    stdout, stderr = io.StringIO(), io.StringIO()
    clock = FakeClock()
    code = cli.main([command, "--cluster-name", NAME, "--region", REGION], runner=fake_runner(), clock=clock,
                    sleep=clock.sleep, stdin=io.StringIO(config), stdout=stdout, stderr=stderr, fetch=fetch)
    return code, json.loads(stdout.getvalue().strip().splitlines()[-1]), stderr.getvalue()


def update_configs(fake: Fake) -> list[str]:
    return [call["config_text"] for call in fake.calls("update-cluster")]


def test_final_line_names_the_login_pool_address(stand_in):
    code, final, err = run("create", WITH_POOL, fetch_from(stand_in))
    assert code == EXIT_OK, err
    assert final["loginNodesAddress"] == f"login-{NAME}-0123456789abcdef.elb.{REGION}.amazonaws.com"
    assert final["headNodePublicIp"] == "203.0.113.10"


def test_count_change_needs_no_stop(stand_in):
    stand_in.seed("CREATE_COMPLETE", WITH_POOL)
    fetch = fetch_from(stand_in)
    code, _, err = run("update", MORE_NODES, fetch)
    assert code == EXIT_OK, err
    assert update_configs(stand_in) == [MORE_NODES] and fetch.seen == []
    assert "stopped" not in err


def test_pool_change_stops_the_pool_first(stand_in):
    stand_in.seed("CREATE_COMPLETE", WITH_POOL)
    fetch = fetch_from(stand_in)
    code, final, err = run("update", BIGGER_POOL, fetch)
    assert code == EXIT_OK, err
    first, stop, target = update_configs(stand_in)
    assert first == BIGGER_POOL  # refused by ParallelCluster: the pool has 2 nodes
    stop_doc, current = yaml.safe_load(stop), yaml.safe_load(WITH_POOL)
    current["LoginNodes"]["Pools"][0]["Count"] = 0
    assert stop_doc == current  # the CURRENT config with Count 0, nothing else changed
    assert target == BIGGER_POOL
    assert "the update needs login pool(s) login stopped: setting Count 0" in err
    assert "login pool(s) login stopped" in err
    assert final["status"] == "UPDATE_COMPLETE"
    assert stand_in.state()["clusters"][NAME]["config"] == BIGGER_POOL
    # The stop went through ParallelCluster's verdict like any update: the refusal named the pool.
    assert "The update is not supported when login nodes in login are running" in err


def test_a_refusal_that_no_stop_fixes_still_fails(stand_in):
    head_and_pool = BIGGER_POOL.replace("InstanceType: t3.medium", "InstanceType: t3.large")
    stand_in.seed("CREATE_COMPLETE", WITH_POOL)
    code, _, err = run("update", head_and_pool, fetch_from(stand_in))
    assert code == EXIT_FAILED
    assert "needs a NEW cluster" in err and "HeadNode.InstanceType" in err
    assert len(update_configs(stand_in)) == 1  # no pool was stopped for nothing


def test_configuration_is_fetched_over_https_only():
    with pytest.raises(LauncherError, match="non-https"):
        fetch_https("file:///etc/passwd")
