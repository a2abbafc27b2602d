"""The node agent's sssd service, PAM and join modules (bootstrap/node_agent/sssd_service.py, pam.py, join.py) with a
fake node: the commands, which, log and a counting clock. The sandbox (tests/test_bootstrap_scripts.py,
tests/test_access_script.py) and the lab prove the same through join-domain.sh."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pcluster_ad.bootstrap.node_agent import join, pam, sssd_service
from pcluster_ad.bootstrap.node_agent.common import NodeError


class FakeNode:
    """Answers: rc per word in the command line (first match); `sssd_up` after the n-th restart (None: never)."""

    def __init__(self, root, rc=None, has=(), outputs=None, sssd_up_after=0, getent_ok=True):
        self.root, self.rc, self.has, self.outputs = root, dict(rc or {}), set(has), dict(outputs or {})
        self.calls, self.lines, self.now, self.restarts = [], [], 0.0, 0
        self.sssd_up_after, self.getent_ok = sssd_up_after, getent_ok

    def log(self, line):
        self.lines.append(line)

    def which(self, name):
        return f"/usr/bin/{name}" if name in self.has else None

    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds

    def _sssd(self):
        up = self.sssd_up_after is not None and self.restarts >= self.sssd_up_after
        pidfile = os.path.join(self.root, "run", "sssd.pid")
        if up:  # a real process named sssd: /proc/<pid>/comm says so
            os.makedirs(os.path.dirname(pidfile), exist_ok=True)
            with open(pidfile, "w") as f:
                f.write(f"{os.getpid()}\n")
        elif os.path.exists(pidfile):
            os.unlink(pidfile)

    def run(self, argv, env=None, quiet=False):
        self.calls.append((argv, env))
        if argv[-2:] == ["restart", "sssd"]:
            self.restarts += 1
        self._sssd()
        if argv[0] == "getent":
            return 0 if self.getent_ok else 2
        line = " ".join(argv)
        return next((rc for word, rc in self.rc.items() if word in line), 0)

    def output(self, argv):
        self.calls.append((argv, None))
        return self.outputs.get(argv[0], "")

    def argvs(self, name=None):
        return [a for a, _ in self.calls if name is None or name in a]


@pytest.fixture
def comm_sssd(monkeypatch, tmp_path):
    """/proc/<pid>/comm of our own pid reads "sssd" (sssd_running reads a proc root we pass)."""
    proc = tmp_path / "proc"
    (proc / str(os.getpid())).mkdir(parents=True)
    (proc / str(os.getpid()) / "comm").write_text("sssd\n")
    real = sssd_service.sssd_running
    monkeypatch.setattr(sssd_service, "sssd_running", lambda root, proc_=str(proc): real(root, proc_))
    return proc


# --- PAM -------------------------------------------------------------------------------------------------------------

def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.parametrize("capability_conf, unused", [
    (None, True),
    ("# comments only\n\n", True),
    ("none *\n", True),
    ("  none   *  \n# x\n", True),
    ("cap_net_raw alice\n", False),
])
def test_pam_cap_dropped_only_when_capability_conf_grants_nothing(tmp_path, capability_conf, unused):
    write(tmp_path / "etc/pam.d/common-auth", "auth optional pam_cap.so\n")
    if capability_conf is not None:
        write(tmp_path / "etc/security/capability.conf", capability_conf)
    lines = []
    assert pam.pam_cap_unused(str(tmp_path), "debian", lines.append) is unused
    assert lines[0].startswith("pam: dropping pam_cap" if unused else "pam: keeping pam_cap")


def test_pam_cap_untouched_off_debian_or_when_absent(tmp_path):
    assert not pam.pam_cap_unused(str(tmp_path), "debian", print)  # no common-auth
    write(tmp_path / "etc/pam.d/common-auth", "auth optional pam_cap.so\n")
    assert not pam.pam_cap_unused(str(tmp_path), "rhel", print)


def test_one_pam_auth_update_for_both_changes_then_mkhomedir_alone_when_it_fails(tmp_path):
    write(tmp_path / "etc/pam.d/common-auth", "auth optional pam_cap.so\n")
    node = FakeNode(str(tmp_path), rc={"capability": 1})
    assert pam.debian_pam_update(node, str(tmp_path))
    quiet = {"DEBIAN_FRONTEND": "noninteractive"}
    assert node.calls == [(["pam-auth-update", "--disable", "capability", "--enable", "mkhomedir"], quiet),
                          (["pam-auth-update", "--enable", "mkhomedir"], quiet)]
    assert any(line.startswith("WARNING: pam-auth-update --disable capability") for line in node.lines)


def test_debian_mkhomedir_is_skipped_when_the_background_update_did_it_and_fails_with_exit_9(tmp_path):
    node = FakeNode(str(tmp_path))
    pam.enable_mkhomedir(node, str(tmp_path), "debian", pam_updated=True)
    assert node.calls == []
    failing = FakeNode(str(tmp_path), rc={"pam-auth-update": 1})
    with pytest.raises(NodeError, match="pam-auth-update --enable mkhomedir failed") as err:
        pam.enable_mkhomedir(failing, str(tmp_path), "debian", pam_updated=False)
    assert err.value.code == 9 and len(failing.calls) == 1  # no pam_cap here: no second try


@pytest.mark.parametrize("current, want", [
    ("Profile ID: sssd\nEnabled features:\n- with-sudo", ["authselect", "enable-feature", "with-mkhomedir"]),
    ("No existing configuration detected.", ["authselect", "select", "sssd", "with-mkhomedir", "--force"]),
])
def test_rhel_keeps_an_sssd_profile_and_starts_oddjobd(tmp_path, current, want):
    node = FakeNode(str(tmp_path), has={"authselect"}, outputs={"authselect": current})
    pam.enable_mkhomedir(node, str(tmp_path), "rhel", pam_updated=False)
    assert node.argvs() == [["authselect", "current"], want, ["systemctl", "enable", "--now", "oddjobd.service"]]


@pytest.mark.parametrize("has, rc, message", [
    ({"authselect"}, {"select": 1}, "authselect select sssd with-mkhomedir failed"),
    (set(), {"authconfig": 1}, "authconfig --enablemkhomedir failed"),
    (set(), {"oddjobd": 1}, r"could not enable and start oddjobd \(home creation\)"),
])
def test_rhel_failures_name_the_tool(tmp_path, has, rc, message):
    with pytest.raises(NodeError, match=message):
        pam.enable_mkhomedir(FakeNode(str(tmp_path), has=has, rc=rc), str(tmp_path), "rhel", pam_updated=False)


# --- sssd's cache in memory ------------------------------------------------------------------------------------------

def test_cache_unit_keeps_the_directory_owner_and_mode_and_mounts_nothing_under_a_test_root(tmp_path):
    db = tmp_path / "var/lib/sss/db"
    db.mkdir(parents=True)
    db.chmod(0o700)
    node = FakeNode(str(tmp_path))
    sssd_service.cache_in_memory(node, str(tmp_path))
    unit = (tmp_path / "etc/systemd/system/var-lib-sss-db.mount").read_text()
    st = db.stat()
    assert f"Options=uid={st.st_uid},gid={st.st_gid},mode=700,size=512m,noexec,nosuid,nodev\n" in unit
    assert "Where=/var/lib/sss/db\n" in unit and "Before=sssd.service\n" in unit
    dropin = tmp_path / "etc/systemd/system/sssd.service.d/50-pcluster-ad-cache-in-memory.conf"
    assert dropin.read_text() == "[Unit]\nRequiresMountsFor=/var/lib/sss/db\n"
    assert node.argvs() == [["timeout", "-k", "10", "60", "systemctl", "daemon-reload"]]
    assert node.lines == [f"sssd: test root {tmp_path}: the unit is written, nothing is mounted"]


def test_cache_selinux_context_when_selinux_is_on(tmp_path):
    node = FakeNode(str(tmp_path), has={"selinuxenabled"})
    sssd_service.cache_in_memory(node, str(tmp_path))
    assert ",context=system_u:object_r:sssd_var_lib_t:s0\n" in (
        tmp_path / "etc/systemd/system/var-lib-sss-db.mount").read_text()


def test_cache_on_the_real_root_stops_sssd_then_mounts_or_fails_with_exit_9(monkeypatch, tmp_path):
    """Root "" (a node): the fake answers stat and mount; files go to a redirected /etc (never the machine's)."""
    calls = []
    monkeypatch.setattr(sssd_service, "SSSD_DB", str(tmp_path / "db"))
    monkeypatch.setattr(sssd_service, "SYSTEMD_DIR", str(tmp_path / "systemd"))
    monkeypatch.setattr(sssd_service, "sssd_running", lambda root: calls.append(root) or True)
    node = FakeNode("", outputs={"stat": "ext2/ext3\n"})
    sssd_service.cache_in_memory(node, "")
    assert (tmp_path / "systemd" / "var-lib-sss-db.mount").exists()
    assert node.argvs()[-2:] == [["timeout", "-k", "10", "60", "systemctl", "stop", "sssd"],
                                 ["mount", "-t", "tmpfs", "-o", node.argvs()[-1][4], "tmpfs", str(tmp_path / "db")]]
    assert node.lines[-1].startswith("sssd: cache in memory (")
    already = FakeNode("", outputs={"stat": "tmpfs\n"})
    sssd_service.cache_in_memory(already, "")
    assert not already.argvs("mount") and already.lines[-1].startswith("sssd: cache already in memory")
    with pytest.raises(NodeError, match="cannot mount a tmpfs on"):
        sssd_service.cache_in_memory(FakeNode("", rc={"mount": 32}, outputs={"stat": "xfs"}), "")


# --- sssd started and verified ---------------------------------------------------------------------------------------

def test_start_enables_restarts_and_verifies(tmp_path, comm_sssd):
    node = FakeNode(str(tmp_path), sssd_up_after=1)
    sssd_service.start(node, str(tmp_path), "debian", True, "Domain Users", "idmap", 300)
    assert node.argvs() == [["timeout", "-k", "10", "60", "systemctl", "enable", "sssd"],
                            ["timeout", "-k", "10", "120", "systemctl", "restart", "sssd"],
                            ["getent", "-s", "sss", "group", "Domain Users"]]
    assert node.lines == ["sssd: restarting",
                          "verified: sssd is running and the domain answers ('Domain Users' resolves)"]


def test_sssd_not_up_is_restarted_once_more_after_10_s(tmp_path, comm_sssd):
    node = FakeNode(str(tmp_path), sssd_up_after=2)
    sssd_service.start(node, str(tmp_path), "debian", True, "Domain Users", "idmap", 300)
    assert node.restarts == 2 and "sssd is not running; restarting it once more" in node.lines
    assert 10 <= node.now <= 14  # counted clock: the second restart after 10 s, then found at the next 2 s turn


def test_sssd_never_up_fails_at_the_deadline_with_exit_9(tmp_path, comm_sssd):
    node = FakeNode(str(tmp_path), sssd_up_after=None)
    with pytest.raises(NodeError, match="sssd is not running after the join") as err:
        sssd_service.start(node, str(tmp_path), "debian", True, "Domain Users", "idmap", 30)
    assert err.value.code == 9 and node.restarts == 2 and 30 <= node.now <= 32


def test_the_wait_is_capped_at_120_s_and_a_lookup_failure_names_the_group_and_the_rfc2307_hint(tmp_path, comm_sssd):
    node = FakeNode(str(tmp_path), getent_ok=False)
    with pytest.raises(NodeError, match=r"group 'hpc-admins' does not resolve through sssd \(getent group\) within "
                                        r"120s \(--id-mode rfc2307: a group resolves only with a gidNumber"):
        sssd_service.start(node, str(tmp_path), "debian", True, "hpc-admins", "rfc2307", 3600)
    assert 120 <= node.now <= 122


def test_sssd_running_needs_a_live_process_named_sssd(tmp_path, comm_sssd):
    run_dir = tmp_path / "root" / "run"
    run_dir.mkdir(parents=True)
    assert not sssd_service.sssd_running(str(tmp_path / "root"))
    (run_dir / "sssd.pid").write_text("not-a-pid\n")
    assert not sssd_service.sssd_running(str(tmp_path / "root"))
    (run_dir / "sssd.pid").write_text(f"{os.getpid()}\n")
    assert sssd_service.sssd_running(str(tmp_path / "root"))
    (comm_sssd / str(os.getpid()) / "comm").write_text("python3\n")
    assert not sssd_service.sssd_running(str(tmp_path / "root"))


def test_the_command_lines_log_the_error_and_exit_with_its_code(tmp_path):
    """Through the real entry (python -I, the agent folder first on sys.path), as the script's pyhelper runs it."""
    agent = os.path.join(os.path.dirname(pam.__file__), os.pardir)
    boot = "import sys; sys.path.insert(0, sys.argv.pop(1)); from node_agent.__main__ import main; main()"
    env = dict(os.environ, PATH=str(tmp_path))  # no pam-auth-update: the command cannot run
    res = subprocess.run([sys.executable, "-I", "-c", boot, agent, "pam-update", str(tmp_path)], env=env,
                         capture_output=True, text=True)
    assert res.returncode == 9 and res.stdout.strip().splitlines()[-1] == (
        "ERROR: pam-auth-update --enable mkhomedir failed"), res


# --- the join itself (node_agent/join.py) ----------------------------------------------------------------------------

class JoinNode(FakeNode):
    """adcli's answers per attempt (rc, and whether the key is in the keytab afterwards)."""

    def __init__(self, root, answers, attempt_seconds=1):
        super().__init__(root)
        self.answers, self.keytab, self.inputs, self.attempt_seconds = list(answers), "", [], attempt_seconds

    def run(self, argv, env=None, quiet=False, input=None):
        self.calls.append((argv, env))
        self.inputs.append(input)
        self.now += self.attempt_seconds
        rc, key = self.answers.pop(0)
        if key:
            self.keytab = "   2 NODE01$@TEST.DOMAIN (aes256-cts-hmac-sha1-96)\n"
        return rc

    def output(self, argv):
        assert argv == ["klist", "-k", self.root + "/etc/krb5.keytab"]
        return self.keytab or "klist: Key table file not found\n"


def adcli(node, deadline=300, cap=120):
    join.adcli_join(node, "One-Time-Pw", "test.domain", "TEST.DOMAIN", "NODE01", "ip-10-0-0-12.test.domain",
                    node.root, deadline, 300, cap)


def test_adcli_gets_the_password_on_stdin_only_and_each_attempt_is_capped(tmp_path):
    node = JoinNode(str(tmp_path), [(0, True)])
    adcli(node, cap=45)
    argv = node.argvs()[0]
    assert argv[:5] == ["timeout", "-k", "10", "45", "adcli"] and not any("One-Time-Pw" in a for a in argv)
    assert argv[5:] == ["join", "--verbose", "--login-type=computer", "--stdin-password", "--domain=test.domain",
                        "--domain-realm=TEST.DOMAIN", "--computer-name=NODE01", "--host-fqdn=ip-10-0-0-12.test.domain"]
    assert node.inputs == ["One-Time-Pw\n"]
    assert node.lines == ["adcli: joining test.domain as NODE01 (attempt 1, max 45s)", "joined test.domain as NODE01"]


def test_a_failed_attempt_is_retried_after_a_jittered_backoff_and_a_key_despite_the_status_counts(tmp_path):
    node = JoinNode(str(tmp_path), [(1, False), (1, True)])
    adcli(node)
    assert len(node.argvs()) == 2 and 1 + 5 + 1 <= node.now <= 1 + 7 + 1  # 5 s plus up to 2 s of jitter
    assert "adcli: the host key is in the keytab despite adcli's exit status" in node.lines


def test_three_failures_exit_8_with_the_hint(tmp_path):
    node = JoinNode(str(tmp_path), [(1, False)] * 3)
    with pytest.raises(NodeError, match=r"adcli join test.domain failed \(see the adcli output above; 'Couldn't "
                                        r"find a domain controller'") as err:
        adcli(node)
    assert err.value.code == 8 and len(node.argvs()) == 3


def test_the_deadline_stops_the_attempts_and_no_attempt_runs_past_it(tmp_path):
    node = JoinNode(str(tmp_path), [(1, False)] * 3, attempt_seconds=20)
    with pytest.raises(NodeError, match=r"deadline \(300 s\) reached before the join to test.domain succeeded"):
        adcli(node, deadline=30)
    # attempt 1 may take all 30 s; after it (20 s) and the backoff (5-7 s) attempt 2 gets what is left; then none
    assert [int(a[3]) for a in node.argvs()][0] == 30 and 3 <= int(node.argvs()[1][3]) <= 5
    assert len(node.argvs()) == 2


def test_a_zero_status_without_the_key_is_an_error(tmp_path):
    with pytest.raises(NodeError, match=r"adcli joined, but the keytab holds no key of NODE01\$@TEST.DOMAIN"):
        adcli(JoinNode(str(tmp_path), [(0, False)]))


@pytest.mark.parametrize("value, cap", [("", 120), ("30", 30), ("0", 120), ("-5", 120), ("x", 120), ("010", 120)])
def test_the_attempt_cap_hook_takes_positive_integers_only(value, cap):
    assert join.attempt_cap({"PCLUSTER_AD_TEST_JOIN_ATTEMPT_SECONDS": value}) == cap
