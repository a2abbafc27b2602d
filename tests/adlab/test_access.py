"""Issue 12 in the real-AD lab: who may log in, who is admin, ssh between nodes for MPI.

The product's join-domain.sh runs on three lab nodes with access lists (as the stack bakes them; here
through --allowed-groups / --admin-groups, the same variables):

- head and compute stand-ins share /home (as the cluster's EFS home): allowed "hpc-users, Domain Admins,
  no-such-group", admins "Domain Admins, no-such-admins";
- a third node whose only allowed group does not exist (then re-run with no list: every domain user).

Directory: alice in hpc-users; erin in team-a, a member of hpc-users (nested); dave in "Domain Admins"
(a name with a space); carol in no allowed group. Each node also has a local admin account (ec2-user).
Host keys between nodes: ParallelCluster's cookbook sets `StrictHostKeyChecking no` for targets in the VPC
(`Match exec "ssh_target_checker.sh %h"` in /etc/ssh/ssh_config); the harness writes the same for the lab
subnet (not product code).
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import JOIN_TIMEOUT, describe
from .lab import SSH_OPTS

pytestmark = pytest.mark.adlab

EXTRA_USERS = {"carol": "C4rol-Pw-2026!x", "dave": "D4ve-Pw-2026!xy", "erin": "Er1n-Pw-2026!xz"}
ALLOWED = "hpc-users, Domain Admins, no-such-group"
ADMINS = "Domain Admins,no-such-admins"
LOCAL_ADMIN = ("ec2-user", "L0cal-Adm1n-Pw!")


def ssh(lab, node, user: str, password: str, command: str = "id -un") -> subprocess.CompletedProcess:
    """Password ssh from the client namespace; the password reaches sshpass through its environment."""
    return lab.client.run(["sshpass", "-e", "ssh", *SSH_OPTS, f"{user}@{node.ip}", command],
                          check=False, env={"SSHPASS": password}, timeout=90)


def assert_refused_at_account_phase(lab, node, user: str, password: str) -> None:
    """The password is accepted, then PAM's account phase (sssd's access provider) refuses: sshd closes the
    connection (ssh exit 255, "Connection closed by"), where a wrong password would be asked for again."""
    opts = [o for o in SSH_OPTS if o != "LogLevel=ERROR"]
    opts = [o for i, o in enumerate(opts) if not (o == "-o" and (i + 1 == len(opts) or opts[i + 1] == "-o"))]
    res = lab.client.run(["sshpass", "-e", "ssh", *opts, "-o", "LogLevel=INFO", f"{user}@{node.ip}", "id -un"],
                         check=False, env={"SSHPASS": password}, timeout=90)
    assert res.returncode == 255 and f"Connection closed by {node.ip} port 22" in res.stderr, res
    assert user not in res.stdout, res


class Site:
    def __init__(self, lab, head, compute, lone, runs, shared: Path):
        self.lab, self.head, self.compute, self.lone, self.runs, self.shared = lab, head, compute, lone, runs, shared
        self.pw = {**lab.users}


@pytest.fixture(scope="module")
def site(lab):
    if shutil.which("visudo") is None:
        pytest.fail("sudo (visudo) is not installed on this machine: run `sudo bash tools/install_adlab_deps.sh`",
                    pytrace=False)
    lab.populate({"users": [{"name": u, "password": p} for u, p in EXTRA_USERS.items()],
                  "groups": [{"name": "team-a", "members": ["erin"]}]})
    lab.dc.run(["samba-tool", "group", "addmembers", "hpc-users", "team-a"])  # nested: erin via team-a
    lab.dc.run(["samba-tool", "group", "addmembers", "Domain Admins", "dave"])
    head, compute, lone = lab.add_nodes([{}, {}, {}])
    # /home shared by head and compute node, as the cluster's EFS: a host directory outside every overlay.
    shared = Path("/srv") / f"{lab.id}-home"
    shared.mkdir(parents=True)
    subnet = lab.cfg.subnet.rsplit(".", 1)[0] + ".*"
    for node in (head, compute, lone):
        if node is not lone:
            node.sh(f"mount --bind {shared} /home")
        node.write("/etc/ssh/ssh_config.d/99-adlab-cookbook-standin.conf",
                   f"Host {subnet}\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n")
        node.sh(f"useradd -m -s /bin/bash {LOCAL_ADMIN[0]} && usermod -aG sudo {LOCAL_ADMIN[0]}")
        node.run(["chpasswd"], input=f"{LOCAL_ADMIN[0]}:{LOCAL_ADMIN[1]}\n")
        res = node.run_action("enable-ssh-password-auth.sh")
        assert res.rc == 0, describe(res)

    def argv(allowed: str | None, admins: str | None) -> list[str]:
        path = "/tmp/pcluster-ad-actions/join-domain.sh"
        args = [path, "--function-url", lab.function_url, "--region", lab.cfg.region, "--timeout", str(JOIN_TIMEOUT)]
        if allowed is not None:
            args += ["--allowed-groups", allowed]
        if admins is not None:
            args += ["--admin-groups", admins]
        return args[1:]

    runs = {
        "head": head.start_bootstrap(args=argv(ALLOWED, ADMINS)),
        "compute": compute.start_bootstrap(args=argv(ALLOWED, ADMINS)),
        "lone": lone.start_bootstrap(args=argv("no-such-group", None)),
    }
    results = {k: r.wait() for k, r in runs.items()}
    for key, res in results.items():
        assert res.rc == 0, f"{key}: {describe(res)}"
    s = Site(lab, head, compute, lone, results, shared)
    s.pw.update(EXTRA_USERS)
    yield s
    for node in (head, compute):
        node.run(["umount", "-l", "/home"], check=False)
    with contextlib.suppress(OSError):
        shutil.rmtree(shared)
    # Again once the lab's processes are gone (a node process can still hold a file here now).
    atexit.register(shutil.rmtree, shared, True)


# --- who may log in ----------------------------------------------------------------------------


def test_access_is_in_place_before_the_join_starts_sssd(site):
    out = site.runs["head"].output
    first_rule = out.index("access: only members of these AD groups may log in: hpc-users, Domain Admins,"
                           " no-such-group")
    assert first_rule < out.index("realm: joining"), out
    conf = site.head.read("/etc/sssd/conf.d/50-pcluster-ad-access.conf")
    assert "access_provider = simple" in conf and \
        "simple_allow_groups = hpc-users, Domain Admins, no-such-group" in conf, conf
    mode = site.head.run(["stat", "-c", "%a %U", "/etc/sssd/conf.d/50-pcluster-ad-access.conf"]).stdout.split()
    assert mode == ["600", "root"]  # sssd ignores snippets with other modes


def test_member_of_an_allowed_group_logs_in(site):
    res = ssh(site.lab, site.head, "alice", site.pw["alice"])
    assert res.returncode == 0 and res.stdout.strip() == "alice", res


def test_nested_membership_counts(site):
    groups = site.head.run(["id", "-Gn", "erin"]).stdout
    assert "team-a" in groups and "hpc-users" in groups, groups  # hpc-users only through team-a
    res = ssh(site.lab, site.head, "erin", site.pw["erin"])
    assert res.returncode == 0 and res.stdout.strip() == "erin", res


def test_group_name_with_a_space_grants_login(site):
    res = ssh(site.lab, site.head, "dave", site.pw["dave"])
    assert res.returncode == 0 and res.stdout.strip() == "dave", res


def test_user_outside_every_allowed_group_is_refused(site):
    # Her password is right (Kerberos accepts it), she resolves, and yet she may not log in.
    kinit = site.head.run(["kinit", "carol"], input=site.pw["carol"] + "\n", check=False)
    assert kinit.returncode == 0, kinit.stderr
    assert site.head.run(["getent", "passwd", "carol"], check=False).returncode == 0
    for node in (site.head, site.compute, site.lone):
        assert_refused_at_account_phase(site.lab, node, "carol", site.pw["carol"])
    # Not a password problem: a wrong password is refused differently (asked again: sshpass exit 5).
    assert ssh(site.lab, site.head, "carol", "wrong-" + site.pw["carol"]).returncode == 5


def test_missing_groups_are_logged_and_local_admin_keeps_access(site):
    out = site.runs["head"].output
    assert "WARNING: access: AD group 'no-such-group' (pcluster-ad:access.allowedGroups) was not found" in out
    assert "WARNING: access: AD group 'no-such-admins' (pcluster-ad:access.adminGroups) was not found" in out
    assert "none of the allowed groups exists" not in out
    lone = site.runs["lone"].output
    assert "none of the allowed groups exists: no AD user can log in" in lone, lone
    assert_refused_at_account_phase(site.lab, site.lone, "alice", site.pw["alice"])
    for node in (site.head, site.lone):
        res = ssh(site.lab, node, *LOCAL_ADMIN)
        assert res.returncode == 0 and res.stdout.strip() == LOCAL_ADMIN[0], res


# --- who is admin ------------------------------------------------------------------------------


def test_admin_group_member_gets_sudo_with_password(site):
    pw = site.pw["dave"]
    res = ssh(site.lab, site.head, "dave", pw, f"printf '%s\\n' '{pw}' | sudo -S -p '' id -un")
    assert res.returncode == 0 and res.stdout.strip() == "root", res
    # With a password only: non-interactive sudo is refused.
    res = ssh(site.lab, site.head, "dave", pw, "sudo -n true")
    assert res.returncode != 0 and "password is required" in res.stderr, res


def test_plain_user_gets_no_sudo(site):
    pw = site.pw["alice"]
    res = ssh(site.lab, site.head, "alice", pw, f"printf '%s\\n' '{pw}' | sudo -S -p '' true")
    assert res.returncode != 0 and "not in the sudoers file" in res.stderr, res


def test_sudoers_drop_in_is_validated_and_escaped(site):
    text = site.head.read("/etc/sudoers.d/50-pcluster-ad-admins")
    assert "%Domain\\ Admins ALL=(ALL:ALL) ALL" in text and "%no-such-admins ALL=(ALL:ALL) ALL" in text, text
    assert site.head.run(["visudo", "-c", "-q", "-f", "/etc/sudoers.d/50-pcluster-ad-admins"]).returncode == 0
    assert site.head.run(["stat", "-c", "%a", "/etc/sudoers.d/50-pcluster-ad-admins"]).stdout.strip() == "440"
    leftovers = site.head.run(["ls", "-A", "/etc/sudoers.d"]).stdout.split()
    assert not [f for f in leftovers if f.startswith(".pcluster-ad.")], leftovers


# --- ssh between nodes for MPI -----------------------------------------------------------------


def test_ad_user_ssh_between_nodes_without_password(site):
    lab, head, compute = site.lab, site.head, site.compute
    # The first login (password, on the head node) makes the key pair in the shared home.
    cmd = f"ssh -o BatchMode=yes {compute.ip} 'hostname; id -un'"
    res = ssh(lab, head, "alice", site.pw["alice"], cmd)
    assert res.returncode == 0, res
    assert res.stdout.split() == [compute.hostname, "alice"], res.stdout
    # ... and back, from the compute node to the head node (what mpirun between nodes does).
    res = ssh(lab, compute, "alice", site.pw["alice"], f"ssh -o BatchMode=yes {head.ip} hostname")
    assert res.returncode == 0 and res.stdout.strip() == head.hostname, res
    st = head.run(["stat", "-c", "%U %a", "/home/alice/.ssh", "/home/alice/.ssh/id_ed25519",
                   "/home/alice/.ssh/authorized_keys"]).stdout.splitlines()
    assert st == ["alice 700", "alice 600", "alice 600"], st
    keys = head.read("/home/alice/.ssh/authorized_keys").splitlines()
    assert keys == [head.read("/home/alice/.ssh/id_ed25519.pub").strip()]  # her own key only


def test_ad_user_cannot_ssh_as_another_user(site):
    lab, head, compute = site.lab, site.head, site.compute
    assert ssh(lab, head, "erin", site.pw["erin"], "true").returncode == 0  # erin has her own key now
    for target in ("alice", "erin", "dave", "root", LOCAL_ADMIN[0]):
        if target == "erin":
            continue
        res = ssh(lab, head, "erin", site.pw["erin"], f"ssh -o BatchMode=yes {target}@{compute.ip} id -un")
        assert res.returncode != 0 and "Permission denied" in res.stderr, (target, res)
    # Another user's key cannot be read either.
    res = ssh(lab, head, "erin", site.pw["erin"], "cat /home/alice/.ssh/id_ed25519")
    assert res.returncode != 0 and "Permission denied" in res.stderr, res


def test_local_admin_gets_no_generated_key(site):
    assert site.head.run(["test", "-e", f"/home/{LOCAL_ADMIN[0]}/.ssh/id_ed25519"], check=False).returncode != 0


# --- re-run without lists: every domain user, as before -----------------------------------------


def test_rerun_without_groups_lets_every_domain_user_in(site):
    lab, lone = site.lab, site.lone
    run = lone.start_bootstrap(args=["--function-url", lab.function_url, "--region", lab.cfg.region,
                                     "--timeout", str(JOIN_TIMEOUT)]).wait()
    assert run.rc == 0, describe(run)
    assert "access: every domain user may log in (no allowed groups configured)" in run.output
    assert lone.run(["test", "-e", "/etc/sssd/conf.d/50-pcluster-ad-access.conf"], check=False).returncode != 0
    res = ssh(lab, lone, "carol", site.pw["carol"])
    assert res.returncode == 0 and res.stdout.strip() == "carol", res


# --- fast logins: sssd cache in memory, no unused pam_cap ----------------------------------------


def test_sssd_cache_is_in_memory_and_mounted_again_at_boot(site):
    head = site.head
    assert head.run(["stat", "-f", "-c", "%T", "/var/lib/sss/db"]).stdout.strip() == "tmpfs"
    unit = head.read("/etc/systemd/system/var-lib-sss-db.mount")
    assert "Where=/var/lib/sss/db" in unit and "Type=tmpfs" in unit, unit
    dropin = head.read("/etc/systemd/system/sssd.service.d/50-pcluster-ad-cache-in-memory.conf")
    assert "RequiresMountsFor=/var/lib/sss/db" in dropin, dropin
    # The same owner and mode as the package's directory (sssd may run as its own user elsewhere).
    assert head.run(["stat", "-c", "%a", "/var/lib/sss/db"]).stdout.strip() == "700"


def test_unused_pam_cap_is_dropped_and_logins_still_work(site):
    common_auth = site.head.read("/etc/pam.d/common-auth")
    assert "pam_sss.so" in common_auth and "pam_cap.so" not in common_auth, common_auth
    assert "pam: dropping pam_cap from common-auth" in site.runs["head"].output
