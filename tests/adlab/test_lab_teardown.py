"""The lab cleans up after itself: no process, namespace, mount, bridge or link is left, also
when bring-up fails half-way. (Small labs without a DC: a second or two each.)"""

from __future__ import annotations

import subprocess

import pytest

from .conftest import lab_preflight
from .lab import Lab, LabConfig, _pid_running

pytestmark = pytest.mark.adlab


def _netns_names() -> set[str]:
    return set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split())


def test_teardown_leaves_nothing():
    lab_preflight()
    before = _netns_names()
    lab = Lab(LabConfig(keep=False))
    lab.start(dc=False, services=False)
    hosts = [lab.add_host(f"t{i}", f"t{i}", lab.next_ip()[1]) for i in range(2)]
    # something running inside each host, as daemons would be
    for h in hosts:
        h.popen(["sleep", "300"])
        assert h.run(["hostname"]).stdout.strip() == h.hostname
    pids = [h.pid for h in hosts]
    root = lab.root
    left = lab.teardown()
    assert left == []
    assert _netns_names() <= before
    assert not root.exists()
    for pid in pids:
        assert not _pid_running(pid), f"namespace init {pid} still running"


def test_teardown_after_failed_bringup():
    lab_preflight()
    before = _netns_names()
    lab = Lab(LabConfig(keep=False))
    with pytest.raises(RuntimeError, match="boom"):
        with lab:
            lab.start(dc=False, services=False)
            lab.add_host("t0", "t0", lab.next_ip()[1])
            raise RuntimeError("boom")
    assert lab.leftovers == []
    assert _netns_names() <= before
