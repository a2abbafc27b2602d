"""The lab's second node generation: a Debian 13 host runs on an overlay of the cached root that
tools/trixie_root.sh builds, sees nothing of the machine's own /etc, writes only to its own upper dir, and
leaves nothing behind (small lab without a DC; the first run builds the root, minutes, then ~0 s)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from .conftest import lab_preflight
from .lab import REPO, Lab, LabConfig, LabError, _pid_running, default_node_os, machine_os, node_image

pytestmark = pytest.mark.adlab


def _netns_names() -> set[str]:
    return set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split())


def test_node_os_choice_is_checked(monkeypatch, tmp_path):
    monkeypatch.delenv("ADLAB_NODE_OS", raising=False)
    assert default_node_os() == (machine_os() or "debian12")  # unset: the machine's own generation
    release = tmp_path / "os-release"
    release.write_text('PRETTY_NAME="Debian GNU/Linux 13 (trixie)"\nVERSION_ID="13"\nID=debian\n')
    assert machine_os(str(release)) == "debian13"
    release.write_text('ID=ubuntu\nVERSION_ID="24.04"\n')
    assert machine_os(str(release)) is None
    monkeypatch.setenv("ADLAB_NODE_OS", "debian13")
    assert default_node_os() == "debian13"
    monkeypatch.setenv("ADLAB_NODE_OS", "trixie")
    with pytest.raises(LabError, match=r"ADLAB_NODE_OS='trixie'.*debian12, debian13"):
        default_node_os()
    with pytest.raises(LabError, match="debian11"):
        node_image("debian11")


def test_debian13_host_runs_on_its_own_overlay_and_leaves_nothing():
    lab_preflight()
    if machine_os() == "debian13":
        pytest.skip("the machine is Debian 13: debian13 nodes run on its own file system, there is no cached root")
    image = node_image("debian13")
    before = _netns_names()
    machine_release = open("/etc/os-release").read()
    lab = Lab(LabConfig(keep=False))
    with lab:  # torn down also when an assert fails
        lab.start(dc=False, services=False)
        new = lab.add_host("t0", "t0", lab.next_ip()[1], node_os="debian13")
        old = lab.add_host("t1", "t1", lab.next_ip()[1])
        assert 'VERSION_ID="13"' in new.read("/etc/os-release")
        assert new.read("/etc/os-release") != machine_release
        assert old.read("/etc/os-release") == machine_release
        assert new.run(["hostname"]).stdout.strip() == "t0"
        # the init's working directory is the node's / (nsenter --wd), not the machine's
        assert new.sh("pwd && ls").stdout.split()[0] == "/"
        assert "job-working-directory" not in new.sh("true").stderr
        versions = dict(line.split(" ", 1) for line in new.run(
            ["dpkg-query", "-W", "-f", "${Package} ${Version}\n", "sssd", "adcli", "realmd", "openssh-server"]
        ).stdout.splitlines())
        versions["ssh -V"] = new.run(["ssh", "-V"]).stderr.strip()
        print(f"\ndebian13 node: {versions}")
        assert new.run(["sssd", "--version"]).stdout.startswith("2.10"), versions
        assert versions["ssh -V"].startswith("OpenSSH_10"), versions
        # the lab's shim, the checkout at its own path, its own processes only
        assert "Lab-only systemctl shim" in new.read("/usr/bin/systemctl")
        assert new.run(["test", "-d", os.path.dirname(__file__)], check=False).returncode == 0
        assert new.run(["ps", "-e", "-o", "pid="]).stdout.split()[0] == "1"
        new.popen(["sleep", "300"])
        # writes land in the node's upper dir; the cached root and the machine stay untouched
        new.write("/etc/adlab-probe", "x\n")
        (upper,) = new.upper_dirs()
        assert (upper / "etc" / "adlab-probe").read_text() == "x\n"
        assert not (image / "etc" / "adlab-probe").exists()
        assert not os.path.exists("/etc/adlab-probe")
    pids = [new.pid, old.pid]
    root = lab.root
    assert lab.teardown() == []
    assert _netns_names() <= before
    assert not root.exists()
    for pid in pids:
        assert not _pid_running(pid), f"namespace init {pid} still running"


def _bash_array(path: Path, name: str) -> set[str]:
    """The words of a bash array assignment NAME=( ... ) (comments dropped)."""
    text = path.read_text()
    body = text[text.index(f"{name}=(") + len(name) + 2:]
    body = body[: body.index("\n)")]
    return {w for line in body.splitlines() for w in line.split("#", 1)[0].split()}


def test_debian13_root_has_the_node_packages_of_the_machine():
    """tools/trixie_root.sh mirrors install_adlab_deps.sh's node side: a package added there for the nodes
    must be in the Debian 13 root too, or the two generations test different images."""
    machine = _bash_array(REPO / "tools" / "install_adlab_deps.sh", "PACKAGES")
    trixie = _bash_array(REPO / "tools" / "trixie_root.sh", "NODE_PACKAGES")
    # the DC's, the ssh client's, the sandbox's and the builder's; packagekit: left out on purpose (README)
    not_on_nodes = {"samba-ad-dc", "samba-ad-provision", "samba", "winbind", "ldb-tools", "smbclient", "sshpass",
                    "strace", "debootstrap", "packagekit"}
    assert machine - not_on_nodes <= trixie, sorted(machine - not_on_nodes - trixie)
