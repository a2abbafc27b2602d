"""The node agent's --restrict-imds (bootstrap/node_agent/imds_lockdown.py) with fakes for commands and `which`; the
real iptables in a network namespace and the join script's order are proven in tests/test_bootstrap_scripts.py and the
lab (tests/adlab/test_join_chain.py)."""

from __future__ import annotations

import os
import stat

import pytest

from pcluster_ad.bootstrap.node_agent import imds_lockdown as lockdown


class FakeNode:
    """Commands recorded with their answer; `which` finds what the node has."""

    def __init__(self, has=("iptables", "ip6tables"), rc=None, installs=()):
        self.has, self.rc, self.installs, self.calls, self.lines = set(has), dict(rc or {}), installs, [], []

    def run(self, argv):
        self.calls.append(argv)
        key = next((k for k in self.rc if k in " ".join(argv)), None)
        if any(a in ("apt-get", "dnf", "yum") for a in argv) and not self.rc.get(key):
            self.has.update(self.installs)
        return self.rc.get(key, 0)

    def which(self, name):
        return f"/usr/sbin/{name}" if name in self.has else None

    def log(self, line):
        self.lines.append(line)


def restrict(node, tmp_path, endpoint="http://169.254.169.254", os_family="debian", remaining=600):
    lockdown.restrict_imds(endpoint, str(tmp_path), os_family, remaining, node.run, node.which, node.log)


@pytest.mark.parametrize("endpoint, want", [
    ("http://169.254.169.254", [(4, "169.254.169.254", None), (6, "fd00:ec2::254", None)]),
    ("http://[fd00:ec2::254]:80", [(4, "169.254.169.254", None), (6, "fd00:ec2::254", None)]),
    ("http://169.254.169.254:8080", [(4, "169.254.169.254", 8080)]),  # a stand-in on another port: that port only
    ("http://10.98.1.1", [(4, "10.98.1.1", 80)]),
])
def test_addresses_whole_for_ec2_one_port_for_a_stand_in(endpoint, want):
    assert lockdown.imds_addresses(endpoint) == want


@pytest.mark.parametrize("endpoint", ["https://10.98.1.1", "http://imds.local", "http://10.98.1.1:x", ""])
def test_an_endpoint_that_is_no_address_is_refused_by_name(endpoint):
    with pytest.raises(lockdown.LockdownError, match="is not http://<IP address>"):
        lockdown.imds_addresses(endpoint)


def test_writes_the_script_and_unit_runs_the_script_then_enables_the_unit(tmp_path):
    node = FakeNode()
    restrict(node, tmp_path)
    script = tmp_path / lockdown.LOCKDOWN_SCRIPT.lstrip("/")
    text = script.read_text()
    assert text.startswith("#!/bin/sh\n") and text.endswith(
        "lock iptables -d 169.254.169.254\nlock ip6tables -d fd00:ec2::254\n")
    assert stat.S_IMODE(script.stat().st_mode) == 0o755
    unit = tmp_path / "etc/systemd/system" / lockdown.LOCKDOWN_UNIT
    assert stat.S_IMODE(unit.stat().st_mode) == 0o644
    assert f"ExecStart={lockdown.LOCKDOWN_SCRIPT}\n" in unit.read_text()
    assert "After=network-pre.target iptables.service" in unit.read_text()
    assert node.calls == [
        [str(script)],
        ["timeout", "-k", "10", "60", "systemctl", "daemon-reload"],
        ["timeout", "-k", "10", "60", "systemctl", "enable", lockdown.LOCKDOWN_UNIT],
    ]
    assert node.lines[0] == ("imds: allowing IMDS (4 169.254.169.254;6 fd00:ec2::254;) to root only: "
                             "/usr/local/sbin/pcluster-ad-imds-lockdown")
    assert node.lines[-1].startswith("imds: only root can reach IMDS now")


@pytest.mark.parametrize("os_family, has, tool", [
    ("debian", (), "apt-get"),
    ("rhel", ("dnf",), "dnf"),
    ("rhel", (), "yum"),
])
def test_missing_iptables_is_installed_within_the_deadline(tmp_path, os_family, has, tool):
    node = FakeNode(has=has, installs=("iptables", "ip6tables"))
    restrict(node, tmp_path, os_family=os_family, remaining=123)
    install = node.calls[0]
    assert install[:4] == ["timeout", "-k", "10", "123"] and tool in install
    assert node.lines[0] == "imds: iptables ip6tables missing; installing iptables"


@pytest.mark.parametrize("node, message", [
    (FakeNode(has=(), rc={"apt-get": 100}), "--restrict-imds: apt-get install iptables failed"),
    (FakeNode(has=()), "--restrict-imds: iptables ip6tables still missing after installing iptables"),
    (FakeNode(rc={"pcluster-ad-imds-lockdown": 1}), "the iptables rules were refused"),
    (FakeNode(rc={"enable": 1}), "could not enable pcluster-ad-imds-lockdown.service"),
])
def test_each_failure_names_its_cause(tmp_path, node, message):
    with pytest.raises(lockdown.LockdownError, match=message):
        restrict(node, tmp_path)


def test_no_install_after_the_deadline(tmp_path):
    node = FakeNode(has=())
    with pytest.raises(lockdown.LockdownError, match="deadline is reached"):
        restrict(node, tmp_path, remaining=0)
    assert node.calls == []


def test_a_failed_daemon_reload_only_warns(tmp_path):
    node = FakeNode(rc={"daemon-reload": 1})
    restrict(node, tmp_path)
    assert "WARNING: systemctl daemon-reload failed" in node.lines


def test_an_unwritable_root_is_an_error_naming_the_file(tmp_path):
    blocker = tmp_path / "usr"
    blocker.write_text("a file where a directory should be")
    with pytest.raises(lockdown.LockdownError, match="cannot write .*pcluster-ad-imds-lockdown"):
        restrict(FakeNode(), tmp_path)


def test_the_command_line_logs_the_error_and_exits_10(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(lockdown.Node, "run", lambda self, argv, **kw: 0)
    with pytest.raises(SystemExit) as exited:
        lockdown.restrict_imds_cli("http://imds.local", str(tmp_path), "debian", "600")
    assert exited.value.code == 10
    assert capsys.readouterr().out.startswith("ERROR: the IMDS endpoint 'http://imds.local' is not")
    assert not os.listdir(tmp_path)
