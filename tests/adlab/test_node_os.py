"""The lab's second node generation: a Debian 13 host runs on an overlay of the cached root that
tools/trixie_root.sh builds, sees nothing of the machine's own /etc, writes only to its own upper dir, and
leaves nothing behind (small lab without a DC; the first run builds the root, 1-3 min, then ~0 s); and one node
of each generation joins and logs an AD user in, in one lab."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from .conftest import JOIN_TIMEOUT, USERS, describe, lab_preflight, running_lab
from .lab import REPO, SSH_OPTS, Lab, LabConfig, LabError, _pid_running, default_node_os, machine_os, node_image
from .test_join_chain import ssh

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
    # the DC's, the ssh client's, the sandbox's and the builder's; packagekit and ldb-tools: see README
    not_on_nodes = {"samba-ad-dc", "samba-ad-provision", "samba", "winbind", "smbclient", "sshpass",
                    "strace", "debootstrap", "packagekit", "ldb-tools"}
    assert machine - not_on_nodes <= trixie, sorted(machine - not_on_nodes - trixie)


def test_both_generations_join_and_log_in_side_by_side():
    """One lab, one node of each generation: the product's join, an ssh password login of an AD user and `id`
    on both (join times printed, not asserted: a busy 2-core machine)."""
    if machine_os() != "debian12":
        pytest.skip("debian12 nodes need a Debian 12 machine (no cached bookworm root yet, see README)")
    with running_lab() as lab:
        nodes = [lab.add_node(os="debian12"), lab.add_node(os="debian13")]
        figures = {}
        for node in nodes:  # one after the other: each join alone on the machine
            res = node.start_bootstrap(timeout_arg=JOIN_TIMEOUT).wait()
            assert res.rc == 0, f"{node.os}: join-domain.sh failed\n{describe(res)}"
            assert node.run_action("enable-ssh-password-auth.sh").rc == 0
            login = ssh(lab, node, "alice", USERS["alice"], "id; ssh -V")
            assert login.returncode == 0, f"{node.os}: {login.stdout}{login.stderr}"
            assert "(alice)" in login.stdout and "hpc-users" in login.stdout, login.stdout
            figures[node.os] = {
                "join_s": round(res.elapsed, 1),
                "sssd": node.run(["sssd", "--version"]).stdout.strip(),
                "ssh": login.stderr.strip().splitlines()[-1],
            }
        assert figures["debian13"]["sssd"].startswith("2.10"), figures
        print(f"\nside by side: {figures}")


def test_openssh_10_drops_a_source_after_failed_logins_openssh_9_2_does_not():
    """OpenSSH 9.8+ (Debian 13: 10.0) refuses, by default (PerSourcePenalties), every connection from a source
    address that caused a few failed authentications (5 s each, enforced from 15 s on: ~6 refused passwords, as
    each takes ~2.8 s here): then even the right password from that address is dropped before the key exchange,
    for ~16 s. OpenSSH 9.2 (Debian 12) has no such thing. In a cluster all users reaching a node from the head
    node share one address. No DC: a local user."""
    lab_preflight()
    if machine_os() != "debian12":
        pytest.skip("needs a Debian 12 machine for the OpenSSH 9.2 side")
    lab = Lab(LabConfig(keep=False))
    with lab:
        lab.start(dc=False, services=False)
        client = lab.add_client()
        hosts = {"debian12": lab.add_host("s12", "s12", lab.next_ip()[1], node_os="debian12"),
                 "debian13": lab.add_host("s13", "s13", lab.next_ip()[1], node_os="debian13")}
        good = "Pen-Pw-" + os.urandom(6).hex()
        outcome = {}
        for gen, host in hosts.items():
            host.sh("useradd -m pen && chpasswd", input=f"pen:{good}\n")
            host.sh("mkdir -p /run/sshd && /usr/sbin/sshd -o PasswordAuthentication=yes -o LogLevel=VERBOSE "
                    "-E /var/log/adlab-sshd.log")

            def login(password, host=host):
                return client.run(["sshpass", "-e", "ssh", *SSH_OPTS, f"pen@{host.ip}", "id -un"],
                                  env={"SSHPASS": password}, check=False, timeout=60)

            assert login(good).stdout.strip() == "pen", gen
            refused = 0
            for _ in range(10):  # wrong passwords until the server drops the address (or 10 refusals)
                res = login("wrong-" + good)
                if "kex_exchange_identification" in res.stderr:
                    break
                refused += 1
            after = login(good)  # right after the first drop (the penalty lasts ~16 s)
            outcome[gen] = {"wrong passwords refused": refused,
                            "right password": "in" if after.stdout.strip() == "pen" else after.stderr.strip()[-70:],
                            "penalty": "activating ipv4 penalty" in host.read("/var/log/adlab-sshd.log")}
        print(f"\nfailed logins from one address: {outcome}")
        assert outcome["debian12"]["right password"] == "in" and not outcome["debian12"]["penalty"], outcome
        assert outcome["debian12"]["wrong passwords refused"] == 10, outcome
        assert outcome["debian13"]["penalty"] and outcome["debian13"]["wrong passwords refused"] < 10, outcome
        assert "kex_exchange_identification" in outcome["debian13"]["right password"], outcome


def test_the_lab_systemctl_returns_once_sshd_listens_again():
    """The lab's systemctl shim waits, as systemd does, until sshd is ready after a start, restart or reload
    (a SIGHUP makes sshd close its listen sockets and re-exec). Without that wait a login right after the
    product's `systemctl reload ssh` met "Connection refused" on a busy machine (a red CI). No DC."""
    lab_preflight()
    lab = Lab(LabConfig(keep=False))
    with lab:
        lab.start(dc=False, services=False)
        gens = ["debian12", "debian13"] if machine_os() == "debian12" else [machine_os() or "debian13"]
        refused = {}
        for gen in gens:
            host = lab.add_host(f"r{gen[-2:]}", f"r{gen[-2:]}", lab.next_ip()[1], node_os=gen)
            host.run(["systemctl", "start", "ssh"])
            refused[gen] = 0
            for verb in ["reload", "restart"] * 10:  # the probe right after, in the same shell: no gap
                refused[gen] += host.sh(f"systemctl {verb} ssh; exec 3<>/dev/tcp/{host.ip}/22",
                                        check=False).returncode != 0
        print(f"\nconnections refused right after a reload or restart: {refused}")
        assert refused == dict.fromkeys(gens, 0), refused
