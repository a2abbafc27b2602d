"""The offline plan as a user runs it: a real subprocess, real files."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import yaml

from tests.conftest import ROOT, stack_doc


def run_plan(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pcluster_ad.tools.plan", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_dev_plan_writes_resources_with_dependencies_and_masked_secrets(tmp_path):
    out = tmp_path / "plan"
    started = time.perf_counter()
    result = run_plan("dev", "--out", str(out))
    elapsed = time.perf_counter() - started
    print(f"tools.plan dev: {elapsed:.2f} s wall")
    assert result.returncode == 0, result.stderr
    resources = json.loads((out / "resources.json").read_text())
    by_name = {r["name"]: r for r in resources}
    assert by_name["network"]["type"] == "pcluster-ad:index:Network"
    assert by_name["directory"]["type"] == "pcluster-ad:index:Directory"
    assert by_name["directory-ad"]["parent"] == "directory"
    assert by_name["directory-ad"]["inputs"]["password"] == "[secret]"
    assert "network-private-a" in by_name["directory-ad"]["dependencies"]
    assert by_name["directory-dhcp-assoc"]["dependencies"] == ["directory-dhcp", "network-vpc"]
    assert by_name["network-vpc"]["inputs"]["cidrBlock"] == "10.0.0.0/16"
    assert all(set(r) >= {"type", "name", "parent", "dependencies", "inputs"} for r in resources)
    assert "directory-ad" in result.stdout and "<- " in result.stdout
    assert "<after-deploy:directory-ad.dnsIpAddresses[0]>" in json.dumps(resources)


def test_config_file_with_encrypted_secret_stays_masked(tmp_path):
    doc = stack_doc("dev")
    doc["encryptionsalt"] = "v1:abc"
    doc["config"]["pcluster-ad:adminPassword"] = {"secure": "v1:cipher-text-here"}
    cfg = tmp_path / "Pulumi.mine.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    result = run_plan("--config-file", str(cfg), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "out" / "resources.json").read_text()
    assert "cipher-text-here" not in text and "Encrypted-Offline-1" not in text
    assert '"password": "[secret]"' in text
    # No generated password when one is configured.
    assert "directory-admin-password" not in text


def test_invalid_config_prints_every_problem_and_writes_nothing(tmp_path):
    doc = stack_doc("dev")
    doc["config"]["pcluster-ad:cluster"]["name"] = "my_cluster"
    doc["config"]["pcluster-ad:directory"]["shortName"] = "WAY-TOO-LONG-NETBIOS"
    doc["config"]["pcluster-ad:network"]["cidr"] = "10.0.0.0/8"
    cfg = tmp_path / "Pulumi.bad.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    out = tmp_path / "out"
    result = run_plan("--config-file", str(cfg), "--out", str(out))
    assert result.returncode == 1
    for key in ("cluster.name", "directory.shortName", "network.cidr"):
        assert key in result.stderr, result.stderr
    assert "3 problem(s)" in result.stderr
    assert not out.exists()


def test_unknown_stack_is_a_clear_error(tmp_path):
    result = run_plan("nosuchstack", "--out", str(tmp_path / "out"))
    assert result.returncode == 1
    assert "Pulumi.nosuchstack.yaml not found" in result.stderr and "Pulumi.dev.yaml" in result.stderr
