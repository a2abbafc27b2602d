"""Issue 12 in the real-AD lab: who may log in, who is admin, ssh between nodes for MPI.

The product's join-domain.sh runs on three lab nodes with access lists (as the stack bakes them; here
through --allowed-groups / --admin-groups, the same variables):

- head and compute stand-ins share /home (as the cluster's EFS home): allowed "hpc-users, Domain Admins,
  no-such-group", admins "Domain Admins, no-such-admins";
- a third node whose only allowed group does not exist (then re-run with no list: every domain user);
- issue 16 (the ssh key for MPI is made by sshd's /etc/ssh/sshrc AS THE USER, never by a root process):
  a node whose /etc/pam.d/sshd is an authselect-style RHEL 9 stack ("rhel", its own /home, the join script
  as the stack bakes it, with the lab subnet as the VPC CIDR), and a node set back to what versions before
  issue 16 left ("old": the root pam_exec hook) to show the attack there and its removal by a re-run.
  Head and compute get the lab subnet as --vpc-cidr.

Directory: alice in hpc-users; erin in team-a, a member of hpc-users (nested); dave in "Domain Admins"
(a name with a space); carol in no allowed group; mallory, trudy and oscar (attackers, no sudo) and bob
in hpc-users. Each node also has a local admin account (ec2-user).
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

from pcluster_ad.components.bootstrap_scripts import bake_vpc_cidr

from .conftest import JOIN_TIMEOUT, describe
from .lab import BOOTSTRAP_DIR, SSH_OPTS, BootstrapRun, as_uploaded

pytestmark = pytest.mark.adlab

EXTRA_USERS = {"carol": "C4rol-Pw-2026!x", "dave": "D4ve-Pw-2026!xy", "erin": "Er1n-Pw-2026!xz",
               "mallory": "M4llory-Pw-2026!", "trudy": "Trudy-Pw-2026!x", "oscar": "0scar-Pw-2026!x"}
ATTACKERS = ("mallory", "trudy", "oscar")
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
        self.rhel = self.old = None
        self.cidr = lab.cfg.subnet


@pytest.fixture(scope="module")
def site(lab):
    if shutil.which("visudo") is None:
        pytest.fail("sudo (visudo) is not installed on this machine: run `sudo bash tools/install_adlab_deps.sh`",
                    pytrace=False)
    lab.populate({"users": [{"name": u, "password": p} for u, p in EXTRA_USERS.items()],
                  "groups": [{"name": "team-a", "members": ["erin"]}]})
    lab.dc.run(["samba-tool", "group", "addmembers", "hpc-users", "team-a"])  # nested: erin via team-a
    lab.dc.run(["samba-tool", "group", "addmembers", "Domain Admins", "dave"])
    lab.dc.run(["samba-tool", "group", "addmembers", "hpc-users", ",".join(ATTACKERS)])
    head, compute, lone, rhel, old = lab.add_nodes([{}, {}, {}, {}, {}])
    # /home shared by head and compute node, as the cluster's EFS: a host directory outside every overlay.
    shared = Path("/srv") / f"{lab.id}-home"
    shared.mkdir(parents=True)
    subnet = lab.cfg.subnet.rsplit(".", 1)[0] + ".*"
    rhel_pam(rhel)
    for node in (head, compute, lone, rhel, old):
        # Lab nodes see the host's /usr: give each its own /usr/local (the key script goes to
        # /usr/local/libexec, with the node's own VPC CIDR), as separate machines have.
        node.sh("mkdir -p /run/adlab-usr-local && mount -t tmpfs adlab-usr-local /run/adlab-usr-local && "
                "mkdir /run/adlab-usr-local/upper /run/adlab-usr-local/work && "
                "mount -t overlay adlab-usr-local -o lowerdir=/usr/local,upperdir=/run/adlab-usr-local/upper,"
                "workdir=/run/adlab-usr-local/work /usr/local")
        if node in (head, compute):
            node.sh(f"mount --bind {shared} /home")
        node.write("/etc/ssh/ssh_config.d/99-adlab-cookbook-standin.conf",
                   f"Host {subnet}\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n")
        node.sh(f"useradd -m -s /bin/bash {LOCAL_ADMIN[0]} && usermod -aG sudo {LOCAL_ADMIN[0]}")
        node.run(["chpasswd"], input=f"{LOCAL_ADMIN[0]}:{LOCAL_ADMIN[1]}\n")
        res = node.run_action("enable-ssh-password-auth.sh")
        assert res.rc == 0, describe(res)

    def argv(allowed: str | None, admins: str | None, cidr: str | None = None) -> list[str]:
        path = "/tmp/pcluster-ad-actions/join-domain.sh"
        args = [path, "--function-url", lab.function_url, "--region", lab.cfg.region, "--timeout", str(JOIN_TIMEOUT)]
        if allowed is not None:
            args += ["--allowed-groups", allowed]
        if admins is not None:
            args += ["--admin-groups", admins]
        if cidr is not None:
            args += ["--vpc-cidr", cidr]
        return args[1:]

    # The rhel node runs the script as the stack uploads it: the VPC CIDR baked in, no --vpc-cidr.
    baked = "/tmp/pcluster-ad-actions/join-domain-baked.sh"
    rhel.write(baked, as_uploaded(bake_vpc_cidr((BOOTSTRAP_DIR / "join-domain.sh").read_text(), lab.cfg.subnet)),
               mode="0755")
    runs = {
        "head": head.start_bootstrap(args=argv(ALLOWED, ADMINS, lab.cfg.subnet)),
        "compute": compute.start_bootstrap(args=argv(ALLOWED, ADMINS, lab.cfg.subnet)),
        "lone": lone.start_bootstrap(args=argv("no-such-group", None)),
        "rhel": BootstrapRun(rhel, [baked, *argv(ALLOWED, None)], JOIN_TIMEOUT + 60),
        "old": old.start_bootstrap(args=argv(ALLOWED, None, lab.cfg.subnet)),
    }
    results = {k: r.wait() for k, r in runs.items()}
    for key, res in results.items():
        assert res.rc == 0, f"{key}: {describe(res)}"
    s = Site(lab, head, compute, lone, results, shared)
    s.rhel, s.old = rhel, old
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
    assert first_rule < out.index("adcli: joining"), out
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
    # Her own key only, and only from inside the VPC (the lab subnet, given as --vpc-cidr).
    assert keys == [f'from="{site.cidr}" ' + head.read("/home/alice/.ssh/id_ed25519.pub").strip()]


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
    # No group rule any more; only computer and service accounts stay out (issue 16).
    conf = lone.read("/etc/sssd/conf.d/50-pcluster-ad-access.conf")
    assert "simple_allow_groups" not in conf and "access_provider = ad" in conf, conf
    assert "ad_access_filter = DOM:test.domain:(&(!(objectClass=computer))" in conf, conf
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


# --- issue 16: the ssh key for MPI is made as the user; no root process runs anything of hers -----------

# An authselect-style RHEL 9 sshd stack (`authselect select sssd with-mkhomedir`: sshd, password-auth,
# postlogin), adapted to Debian 12's modules: pam_mkhomedir for pam_oddjob_mkhomedir (no oddjobd on Debian).
# Its point here: no `pam_env user_readenv`, and no include of Debian's common-* files.
RHEL_SSHD_PAM = """#%PAM-1.0
auth       substack     password-auth
auth       include      postlogin
account    required     pam_sepermit.so
account    required     pam_nologin.so
account    include      password-auth
password   include      password-auth
session    required     pam_selinux.so close
session    required     pam_loginuid.so
session    required     pam_selinux.so open env_params
session    required     pam_namespace.so
session    optional     pam_keyinit.so force revoke
session    optional     pam_motd.so
session    include      password-auth
session    include      postlogin
"""
RHEL_PASSWORD_AUTH = """auth        required                                     pam_env.so
auth        required                                     pam_faildelay.so delay=2000000
auth        [default=1 ignore=ignore success=ok]         pam_usertype.so isregular
auth        [default=1 ignore=ignore success=ok]         pam_localuser.so
auth        sufficient                                   pam_unix.so nullok
auth        [default=1 ignore=ignore success=ok]         pam_usertype.so isregular
auth        sufficient                                   pam_sss.so forward_pass
auth        required                                     pam_deny.so
account     required                                     pam_unix.so
account     sufficient                                   pam_localuser.so
account     sufficient                                   pam_usertype.so issystem
account     [default=bad success=ok user_unknown=ignore] pam_sss.so
account     required                                     pam_permit.so
password    requisite                                    pam_pwquality.so local_users_only
password    sufficient                                   pam_unix.so yescrypt shadow nullok use_authtok
password    [success=1 default=ignore]                   pam_localuser.so
password    sufficient                                   pam_sss.so use_authtok
password    required                                     pam_deny.so
session     optional                                     pam_keyinit.so revoke
session     required                                     pam_limits.so
-session    optional                                     pam_systemd.so
session     optional                                     pam_mkhomedir.so umask=0077
session     [success=1 default=ignore]                   pam_succeed_if.so service in crond quiet use_uid
session     required                                     pam_unix.so
session     optional                                     pam_sss.so
"""
RHEL_POSTLOGIN = """session     optional                   pam_umask.so silent
session     [success=1 default=ignore] pam_succeed_if.so service !~ gdm* service !~ su* quiet
session     [default=1]                pam_lastlog.so nowtmp showfailed
session     optional                   pam_lastlog.so silent noupdate showfailed
"""


def rhel_pam(node) -> None:
    node.write("/etc/pam.d/sshd", RHEL_SSHD_PAM)
    node.write("/etc/pam.d/password-auth", RHEL_PASSWORD_AUTH)
    node.write("/etc/pam.d/postlogin", RHEL_POSTLOGIN)


# What versions before issue 16 installed (join-domain.sh at 2190aff): this hook, run as root by pam_exec.
OLD_HOOK_PATH = "/usr/local/sbin/pcluster-ad-user-ssh-key"
OLD_PAM_LINES = "# pcluster-ad: ssh key between cluster nodes for AD users (first login)\n" \
                f"session optional pam_exec.so quiet {OLD_HOOK_PATH}\n"
OLD_HOOK = r"""#!/bin/sh
[ "$PAM_TYPE" = open_session ] || exit 0
user=$PAM_USER
[ -n "$user" ] && [ "$user" != root ] || exit 0
entry=$(getent -s sss passwd "$user") || exit 0
uid=$(printf '%s' "$entry" | cut -d: -f3)
gid=$(printf '%s' "$entry" | cut -d: -f4)
home=$(printf '%s' "$entry" | cut -d: -f6)
[ -n "$uid" ] && [ "$uid" -ge 1000 ] && [ -d "$home" ] || exit 0
[ -e "$home/.ssh/id_ed25519" ] && exit 0
work='umask 077
cd "$HOME" || exit 0
[ -e .ssh/id_ed25519 ] && exit 0
mkdir -p .ssh && chmod 700 .ssh || exit 1
ssh-keygen -q -t ed25519 -N "" -C "$(id -un)@pcluster-ad cluster-internal" -f .ssh/id_ed25519 </dev/null || exit 1
cat .ssh/id_ed25519.pub >>.ssh/authorized_keys && chmod 600 .ssh/authorized_keys'
if command -v setpriv >/dev/null 2>&1; then
    exec setpriv --reuid="$uid" --regid="$gid" --init-groups --reset-env /bin/sh -c "$work"
fi
exec runuser -u "$user" -- /bin/sh -c "$work"
"""

# Loaded into every process of hers once ~/.pam_environment sets LD_PRELOAD: records who ran what, and as
# root also leaves a file in /root.
EVIL_C = r"""#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
__attribute__((constructor)) static void pwn(void) {
    char path[256], cmd[512] = {0};
    int fd = open("/proc/self/cmdline", O_RDONLY);
    ssize_t n = fd >= 0 ? read(fd, cmd, sizeof cmd - 1) : 0;
    if (fd >= 0) close(fd);
    for (ssize_t i = 0; i < n; i++) if (!cmd[i]) cmd[i] = ' ';
    snprintf(path, sizeof path, "/tmp/pwn-%s/euid-%d.pid-%d", PWN_USER, (int)geteuid(), (int)getpid());
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) { (void)!write(fd, cmd, strlen(cmd)); close(fd); }
    if (geteuid() == 0) { fd = open("/root/pwned-by-" PWN_USER, O_WRONLY | O_CREAT, 0644); if (fd >= 0) close(fd); }
}
"""
# Her own id/getent/cut/ssh-keygen first on her PATH: log who ran them, then do the real thing.
WRAPPER = """#!/bin/sh
me=$(/usr/bin/id -u)
echo "$me $(/usr/bin/basename "$0")" >>/tmp/pwn-{user}/wrappers.log
[ "$me" = 0 ] && : >/root/pwned-by-{user}-via-path
exec /usr/bin/$(/usr/bin/basename "$0") "$@"
"""


def read_user_env_at_ssh_login(node) -> bool:
    """Arm the attack's way in: sshd's PAM stack reading ~/.pam_environment (pam_env user_readenv=1), as Debian 12's
    openssh-server and Ubuntu 22.04/24.04's ship it. Debian 13's no longer does (openssh 1:9.7p1-6, Debian bug
    #1018260; upstream Linux-PAM deprecated the option), but its pam_env (Linux-PAM 1.7) still honours it: on such a
    node the option is set as those OSes have it, so that the payload is live and what is proved is the product's
    part (nothing of hers runs as root), not the OS's. Returns whether the node's own stack already read it."""
    pam = node.read("/etc/pam.d/sshd")
    if "user_readenv=1" in pam:
        return True
    node.sh(r"sed -i 's|^\(session\s\+required\s\+pam_env.so envfile=/etc/default/locale\)$|\1 user_readenv=1|' "
            "/etc/pam.d/sshd")
    assert "pam_env.so envfile=/etc/default/locale user_readenv=1" in node.read("/etc/pam.d/sshd"), pam
    return False


def uid_of(node, user: str) -> int:
    return int(node.run(["id", "-u", user]).stdout.strip())


def arm_env_attack(site, node, user: str) -> None:
    """She logs in, compiles her LD_PRELOAD library, puts her wrappers first on PATH through her
    ~/.pam_environment, and removes her ~/.ssh: her next ssh login makes a new key under the attack."""
    pw = site.pw[user]
    assert ssh(site.lab, node, user, pw, "true").returncode == 0  # first login: home (and a key) made
    files = {f"/home/{user}/evil.c": EVIL_C.replace("PWN_USER", f'"{user}"')}
    for cmd in ("id", "getent", "cut", "ssh-keygen"):
        files[f"/home/{user}/bin/{cmd}"] = WRAPPER.replace("{user}", user)
    for path, text in files.items():
        node.write(path, text, mode="0755")
    node.run(["chown", "-R", f"{user}:", f"/home/{user}/evil.c", f"/home/{user}/bin"])
    res = ssh(site.lab, node, user, pw,
              f"set -e; mkdir -p -m 0777 /tmp/pwn-{user}; gcc -shared -fPIC -o evil.so evil.c; "
              f"printf 'PATH DEFAULT=/home/{user}/bin:/usr/local/bin:/usr/bin:/bin\\n"
              f"LD_PRELOAD DEFAULT=/home/{user}/evil.so\\n' >.pam_environment; rm -rf .ssh")
    assert res.returncode == 0, res


def attack_evidence(node, user: str) -> dict:
    """Who ran what: markers of the LD_PRELOAD library (euid, command line), the wrappers' log, the owners of
    everything in her marker directory, and what appeared in /root."""
    markers = node.sh(f"cd /tmp/pwn-{user} && for f in euid-*; do [ -e \"$f\" ] && "
                      "printf '%s %s %s\\n' \"$(stat -c %u \"$f\")\" \"$f\" \"$(cat \"$f\")\"; done; true").stdout
    owners = node.sh(f"stat -c '%u %n' /tmp/pwn-{user}/* 2>/dev/null; true").stdout.split("\n")
    return {"markers": [m for m in markers.splitlines() if m],
            "wrappers": node.read(f"/tmp/pwn-{user}/wrappers.log").splitlines(),
            "owners": [o for o in owners if o],
            "root": node.run(["ls", "-A", "/root"]).stdout.split()}


def assert_nothing_ran_as_root(ev: dict, user: str) -> None:
    assert not [m for m in ev["markers"] if m.split()[1].startswith("euid-0.") or m.startswith("0 ")], ev
    assert not [w for w in ev["wrappers"] if w.startswith("0 ")], ev
    assert not [o for o in ev["owners"] if o.startswith("0 ")], ev
    assert not [f for f in ev["root"] if f.startswith("pwned-by-")], ev


def assert_own_key(site, node, user: str) -> None:
    st = node.run(["stat", "-c", "%U %a", f"/home/{user}/.ssh", f"/home/{user}/.ssh/id_ed25519",
                   f"/home/{user}/.ssh/authorized_keys"]).stdout.splitlines()
    assert st == [f"{user} 700", f"{user} 600", f"{user} 600"], st
    pub = node.read(f"/home/{user}/.ssh/id_ed25519.pub").strip()
    assert pub.endswith(f" {user}@pcluster-ad cluster-internal"), pub
    assert node.read(f"/home/{user}/.ssh/authorized_keys").splitlines() == [f'from="{site.cidr}" {pub}']


@pytest.mark.parametrize("where", ["debian", "rhel"])
def test_pam_environment_attack_runs_nothing_of_hers_as_root(site, where):
    """mallory's ~/.pam_environment puts her own id/getent/cut/ssh-keygen first on PATH and preloads her
    library into every process; then she logs in by ssh (her key is made in that session).

    Debian node (head): pam_env user_readenv=1 hands both to the session: her library and wrappers DO run in
    the key script (the markers prove the payload is live), and only ever with her uid. RHEL-style node: that
    stack has no user_readenv, so her file is not read at all; what this proves there is that the key is made
    without Debian's PAM stack (sshrc does not depend on it) and that nothing runs as root. It does not prove
    anything about RHEL's own sshd build, SELinux or authselect itself (the lab is Debian 12 with RHEL's PAM
    files)."""
    node = site.head if where == "debian" else site.rhel
    user = "mallory"
    if where == "debian":
        own = read_user_env_at_ssh_login(node)
        # Debian 13's openssh-server (1:10.0p1) ships without it, Debian 12's (1:9.2p1) with it.
        assert own == (node.os == "debian12"), (node.os, own)
    arm_env_attack(site, node, user)
    uid = uid_of(node, user)
    res = ssh(site.lab, node, user, site.pw[user], "id -un")
    assert res.returncode == 0 and res.stdout.strip() == user, res
    ev = attack_evidence(node, user)
    assert_nothing_ran_as_root(ev, user)
    assert_own_key(site, node, user)
    if where == "debian":
        # The attack reached the key script, as her: her library was loaded into it, her wrappers ran for it.
        assert [m for m in ev["markers"] if m.startswith(f"{uid} euid-{uid}.") and "pcluster-ad-user-ssh-key" in m], ev
        for cmd in ("id", "getent", "cut", "ssh-keygen"):
            assert f"{uid} {cmd}" in ev["wrappers"], (cmd, ev)
    else:
        assert ev["markers"] == [] and ev["wrappers"] == [], ev  # her ~/.pam_environment is never read there


def test_old_root_hook_is_exploitable_and_a_rerun_removes_it(site):
    """Control and migration. A node set back to what versions before issue 16 left (the root pam_exec hook
    after pam_env user_readenv=1): the same attack runs her library as root, the lab reproduces the issue.
    Then the product's join script runs again (an already joined node): the pam_exec line and the old hook are
    gone, and the attack no longer runs anything of hers as root."""
    lab, node, user = site.lab, site.old, "mallory"
    node.sh("rm -f /etc/ssh/sshrc /usr/local/libexec/pcluster-ad-user-ssh-key")
    node.write(OLD_HOOK_PATH, OLD_HOOK, mode="0755")
    node.run(["/bin/sh", "-c", "cat >>/etc/pam.d/sshd"], input=OLD_PAM_LINES)
    read_user_env_at_ssh_login(node)
    arm_env_attack(site, node, user)
    assert ssh(lab, node, user, site.pw[user], "true").returncode == 0
    ev = attack_evidence(node, user)
    assert [m for m in ev["markers"] if m.startswith("0 euid-0.")], ev  # her code ran as root
    assert "pwned-by-mallory" in ev["root"], ev

    run = node.start_bootstrap(args=["--function-url", lab.function_url, "--region", lab.cfg.region,
                                     "--timeout", str(JOIN_TIMEOUT), "--allowed-groups", ALLOWED,
                                     "--vpc-cidr", lab.cfg.subnet]).wait()
    assert run.rc == 0, describe(run)
    assert "access: removed the old root ssh key hook (pam_exec)" in run.output, run.output
    assert "pcluster-ad" not in node.read("/etc/pam.d/sshd") and not node.read(OLD_HOOK_PATH)
    node.sh(f"rm -rf /tmp/pwn-{user}/* /root/pwned-by-* /home/{user}/.ssh")
    assert ssh(lab, node, user, site.pw[user], "true").returncode == 0
    ev = attack_evidence(node, user)
    assert_nothing_ran_as_root(ev, user)
    assert ev["markers"], ev  # the payload is still live, only as her now
    assert_own_key(site, node, user)


def snapshot(node, *paths: str) -> str:
    """Owner, mode, size, mtime and content hash of everything under paths (that root can see)."""
    return node.sh("find " + " ".join(paths) + " -xdev -printf '%p %u %m %s %T@\\n' 2>/dev/null | sort; "
                   "find " + " ".join(paths) + " -xdev -type f -exec sha256sum {} + 2>/dev/null | sort; true").stdout


@pytest.mark.parametrize("where", ["debian", "rhel"])
def test_symlinked_ssh_dir_gets_her_nothing_and_changes_no_other_account(site, where):
    lab, user = site.lab, "trudy"
    node = site.head if where == "debian" else site.rhel
    assert ssh(lab, node, "bob", site.pw["bob"], "true").returncode == 0  # bob has his key and .ssh
    node.sh("mkdir -p -m 0700 /root/.ssh && echo 'ssh-ed25519 AAAAroot admin' >>/root/.ssh/authorized_keys")
    before = snapshot(node, "/home/bob", "/root/.ssh")
    assert ssh(lab, node, user, site.pw[user], "true").returncode == 0  # her first login: her own key
    for target in ("/home/bob/.ssh", "/root/.ssh"):
        res = ssh(lab, node, user, site.pw[user], f"rm -rf .ssh && ln -s {target} .ssh && echo ok")
        assert res.stdout.strip() == "ok", res
        res = ssh(lab, node, user, site.pw[user], "id -un")  # a session with the symlink in place
        assert res.returncode == 0 and res.stdout.strip() == user, res
        assert snapshot(node, "/home/bob", "/root/.ssh") == before, target
    # Back to a directory of her own: her own key, authorized for her only.
    assert ssh(lab, node, user, site.pw[user], "rm -f .ssh").returncode == 0
    assert ssh(lab, node, user, site.pw[user], "true").returncode == 0
    assert_own_key(site, node, user)
    assert snapshot(node, "/home/bob", "/root/.ssh") == before


@pytest.mark.parametrize("where", ["debian", "rhel"])
def test_home_owned_by_another_account_gets_nothing(site, where):
    """oscar's home directory exists but belongs to bob (a leftover of another account): his login works,
    the key script (running as oscar) can write nothing there, and nothing of bob's changes."""
    lab, user = site.lab, "oscar"
    node = site.head if where == "debian" else site.rhel
    assert ssh(lab, node, "bob", site.pw["bob"], "true").returncode == 0
    node.sh(f"mkdir -p -m 0755 /home/{user} && chown bob: /home/{user} && echo hi >/home/{user}/notes && "
            f"chown bob: /home/{user}/notes")
    node.sh("mkdir -p -m 0700 /root/.ssh && touch /root/.ssh/authorized_keys")
    before = snapshot(node, "/home/bob", f"/home/{user}", "/root/.ssh")
    res = ssh(lab, node, user, site.pw[user], "id -un")
    assert res.returncode == 0 and res.stdout.strip() == user, res
    assert snapshot(node, "/home/bob", f"/home/{user}", "/root/.ssh") == before
    node.sh(f"rm -rf /home/{user}")  # the other parametrization (shared /home) starts clean


def test_baked_cidr_and_key_logins_between_rhel_stack_nodes(site):
    run = site.runs["rhel"]
    assert f'access: that key opens the account only from the VPC: from="{site.cidr}"' in run.output, run.output
    assert "pam_exec" not in site.rhel.read("/etc/pam.d/sshd")
    # erin's key made there (password login, RHEL-style PAM) opens her account on the rhel node itself.
    res = ssh(site.lab, site.rhel, "erin", site.pw["erin"], f"ssh -o BatchMode=yes {site.rhel.ip} id -un")
    assert res.returncode == 0 and res.stdout.strip() == "erin", res


def test_generated_key_opens_the_account_only_from_inside_the_vpc(site):
    """alice's key from the client host: from its lab-subnet address it logs in; from a second address outside
    the VPC CIDR (TEST-NET-2, routed on the same link) sshd refuses it (from="<CIDR>")."""
    lab, head = site.lab, site.head
    assert ssh(lab, head, "alice", site.pw["alice"], "test -e .ssh/id_ed25519").returncode == 0
    outside = "198.51.100.7"
    client = lab.client
    client.sh(f"ip addr add {outside}/32 dev eth0")
    head.sh(f"ip route add {outside}/32 dev eth0")
    try:
        client.write("/tmp/alice-key", head.read("/home/alice/.ssh/id_ed25519"), mode="0600")
        opts = ["-i", "/tmp/alice-key", "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=10"]
        inside = client.run(["ssh", *opts, f"alice@{head.ip}", "id -un"], check=False, timeout=60)
        assert inside.returncode == 0 and inside.stdout.strip() == "alice", inside
        out = client.run(["ssh", *opts, "-b", outside, f"alice@{head.ip}", "id -un"], check=False, timeout=60)
        assert out.returncode == 255 and "Permission denied" in out.stderr, out
        assert "alice" not in out.stdout
    finally:
        client.run(["rm", "-f", "/tmp/alice-key"], check=False)
        head.run(["ip", "route", "del", f"{outside}/32", "dev", "eth0"], check=False)
        client.run(["ip", "addr", "del", f"{outside}/32", "dev", "eth0"], check=False)
