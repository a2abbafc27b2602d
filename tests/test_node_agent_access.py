"""The node agent's access concern (bootstrap/node_agent/access.py, ssh_keys.py) with fakes: a temporary root for the
files, a recording `run` for the commands (visudo, getent) and a fake `which`. The sandbox
(tests/test_access_script.py) runs the same code through join-domain.sh with real visudo; the AD lab proves the files
with real sssd, sudo and sshd."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from pcluster_ad.bootstrap.node_agent import access, ssh_keys
from pcluster_ad.bootstrap.node_agent.common import NodeError
from tests.bootstrap_sandbox.sandbox import node_agent_argv
from tests.test_node_agent import PYTHONS

DOMAIN = "corp.example"
STATE = "(!(userAccountControl:1.2.840.113556.1.4.803:=2))(!(lockoutTime>=1))"
USERS_DN = "CN=pca-dev-users,OU=Users,DC=corp,DC=example"


def cfg(root: Path, **over: str) -> dict[str, str]:
    c = access.settings([f"root={root}", f"domain={DOMAIN}"])
    c.update(over)
    return c


class Run:
    """A fake `run`: records argv (and, for visudo, the checked file's text and mode), answers from a table."""

    def __init__(self, codes: dict[str, int] | None = None):
        self.calls: list[list[str]] = []
        self.checked: list[tuple[str, int]] = []
        self.codes = codes or {}

    def __call__(self, argv, quiet=False):
        self.calls.append(list(argv))
        if argv[0] == "visudo":
            f = Path(argv[-1])
            self.checked.append((f.read_text(), stat.S_IMODE(f.stat().st_mode)))
        return self.codes.get(argv[-1], 0)


def lines(path: Path) -> list[str]:
    return [x for x in path.read_text().splitlines() if not x.startswith("#")]


def dot_files(d: Path) -> list[str]:
    return [p.name for p in d.iterdir() if p.name.startswith(".")]


# --- the pieces --------------------------------------------------------------------------------------------------


def test_split_groups_trims_drops_empty_names_and_reads_the_first_line_only():
    assert access.split_groups(" hpc-users ,Domain Admins,, \t") == ["hpc-users", "Domain Admins"]
    assert access.split_groups("") == [] and access.split_groups("a\nb") == ["a"]


def test_service_filter_escapes_rfc4515_specials():
    assert access.service_filter("svc, a*b(c)\\d") == \
        "(!(sAMAccountName=svc))(!(sAMAccountName=a\\2ab\\28c\\29\\5cd))"
    assert access.service_filter("") == ""


def test_sudoers_word_escapes_every_ascii_special_and_keeps_other_characters():
    assert access.sudoers_word("R&D (old) #1!") == "R\\&D\\ \\(old\\)\\ \\#1\\!"
    assert access.sudoers_word("ops_a.b-c") == "ops_a.b-c"
    assert access.sudoers_word("é-ü\\%") == "é-ü\\\\\\%"


def test_access_section_takes_realms_spelling_from_sssd_conf(tmp_path):
    assert access.access_section(str(tmp_path), DOMAIN) == "domain/corp.example"  # no sssd.conf yet
    (tmp_path / "etc" / "sssd").mkdir(parents=True)
    (tmp_path / "etc" / "sssd" / "sssd.conf").write_text("[sssd]\n[domain/CORP.Example]\nid_provider = ad\n")
    assert access.access_section(str(tmp_path), DOMAIN) == "domain/CORP.Example"


# --- sssd's drop-ins ---------------------------------------------------------------------------------------------


def test_login_access_with_lists_uses_the_simple_provider_and_denies_computers_and_service_accounts(tmp_path):
    out: list[str] = []
    access.login_access(cfg(tmp_path, allowed="hpc, Domain Admins", service="svc-join,a*b"), out.append)
    conf = tmp_path / "etc" / "sssd" / "conf.d" / "50-pcluster-ad-access.conf"
    assert lines(conf) == ["[domain/corp.example]", "access_provider = simple",
                           "simple_allow_groups = hpc, Domain Admins", "simple_deny_groups = Domain Computers",
                           "simple_deny_users = svc-join,a*b"]
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600 and stat.S_IMODE(conf.parent.stat().st_mode) == 0o711
    assert out[0] == "access: only members of these AD groups may log in: hpc, Domain Admins; computer accounts and " \
                     f"svc-join,a*b never ({conf})"
    fresh = conf.parent / "50-pcluster-ad-fresh.conf"
    assert lines(fresh) == ["[domain/corp.example]", "entry_cache_user_timeout = 30", "", "[pam]",
                            "pam_initgroups_scheme = always", "", "[pac]", "pac_lifetime = 0", "", "[nss]",
                            "memcache_size_initgroups = 0"]
    assert out[1].startswith("access: sssd refreshes a user from the directory at every login") and len(out) == 2
    assert dot_files(conf.parent) == []


def test_login_access_without_lists_filters_at_the_dc_and_with_the_stack_group_by_membership(tmp_path):
    out: list[str] = []
    access.login_access(cfg(tmp_path, service="a*b"), out.append)
    conf = tmp_path / "etc" / "sssd" / "conf.d" / "50-pcluster-ad-access.conf"
    assert lines(conf) == ["[domain/corp.example]", "access_provider = ad",
                           f"ad_access_filter = DOM:corp.example:(&(!(objectClass=computer)){STATE}"
                           "(!(sAMAccountName=a\\2ab)))", "ad_gpo_access_control = disabled", "ad_enable_gc = False"]
    assert out[0] == "access: every domain user may log in (no allowed groups configured); disabled, expired, " \
                     f"locked-out and computer accounts and a*b never ({conf})"
    out.clear()
    access.login_access(cfg(tmp_path, allowed="physics", stack_users=USERS_DN), out.append)
    assert lines(conf)[2] == f"ad_access_filter = DOM:corp.example:(&(memberOf:1.2.840.113556.1.4.1941:={USERS_DN})" \
                             f"(!(objectClass=computer)){STATE})"
    assert out[0].startswith(f"access: only in-chain members of the stack's group {USERS_DN} (allowed groups: physics)")
    access.login_access(cfg(tmp_path, stack_users=USERS_DN), out.append)
    assert "(allowed groups: none: every user account of the domain, kept in the group by the stack)" in out[2]


def test_a_snippet_that_cannot_be_written_is_exit_11_and_leaves_no_temporary_file(tmp_path):
    conf_d = tmp_path / "etc" / "sssd" / "conf.d"
    (conf_d / "50-pcluster-ad-access.conf").mkdir(parents=True)  # a directory where the file goes
    with pytest.raises(NodeError) as e:
        access.login_access(cfg(tmp_path), [].append)
    assert e.value.code == 11 and str(e.value) == f"access: cannot write {conf_d / '50-pcluster-ad-access.conf'}"
    assert dot_files(conf_d) == []


# --- sudo ----------------------------------------------------------------------------------------------------------


def test_admin_access_installs_only_what_visudo_accepted(tmp_path):
    run, out = Run(), []
    access.admin_access(cfg(tmp_path, admin="Domain Admins, R&D"), out.append, run, which=lambda n: "/usr/sbin/" + n)
    sudoers = tmp_path / "etc" / "sudoers.d" / "50-pcluster-ad-admins"
    assert lines(sudoers) == ["%Domain\\ Admins ALL=(ALL:ALL) ALL", "%R\\&D ALL=(ALL:ALL) ALL"]
    assert stat.S_IMODE(sudoers.stat().st_mode) == 0o440
    # visudo checked the dot-file, with its final text and mode, before the rename.
    (argv,) = run.calls
    assert argv[:4] == ["visudo", "-c", "-q", "-f"] and Path(argv[4]).parent == sudoers.parent
    assert Path(argv[4]).name.startswith(".") and run.checked == [(sudoers.read_text(), 0o440)]
    assert out == [f"access: sudo (with password) for members of: Domain Admins, R&D ({sudoers})"]
    # The stack's admins group replaces the lists.
    access.admin_access(cfg(tmp_path, admin="ops", stack_admins="pca-dev-admins"), out.append, run, lambda n: n)
    assert lines(sudoers) == ["%pca-dev-admins ALL=(ALL:ALL) ALL"]


def test_a_refused_drop_in_is_exit_11_and_the_old_one_stays(tmp_path):
    sudoers = tmp_path / "etc" / "sudoers.d" / "50-pcluster-ad-admins"
    sudoers.parent.mkdir(parents=True)
    sudoers.write_text("%old ALL=(ALL:ALL) ALL\n")

    class Refuse(Run):
        def __call__(self, argv, quiet=False):
            super().__call__(argv, quiet)
            return 1

    with pytest.raises(NodeError) as e:
        access.admin_access(cfg(tmp_path, admin="ops"), [].append, Refuse(), lambda n: n)
    assert e.value.code == 11 and "visudo refuses the sudoers drop-in" in str(e.value)
    assert sudoers.read_text() == "%old ALL=(ALL:ALL) ALL\n" and dot_files(sudoers.parent) == []
    with pytest.raises(NodeError, match="visudo not found"):
        access.admin_access(cfg(tmp_path, admin="ops"), [].append, Run(), lambda n: None)
    # No admin group: the drop-in goes, and nothing runs.
    run = Run()
    access.admin_access(cfg(tmp_path), [].append, run, lambda n: None)
    assert not sudoers.exists() and run.calls == []


MARK = access.SUDO_CONF_MARK


def test_sudo_conf_gets_our_line_last_keeping_everything_else_and_its_mode(tmp_path):
    conf = tmp_path / "etc" / "sudo.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text(f"Plugin x\n{MARK}\nSet group_source dynamic\nSet  group_source  Static # site\n\n")
    conf.chmod(0o640)
    out: list[str] = []
    access.sudo_group_source_dynamic(cfg(tmp_path), out.append, which=lambda n: None)
    assert conf.read_text() == f"Plugin x\nSet  group_source  Static # site\n{MARK}\nSet group_source dynamic\n"
    assert stat.S_IMODE(conf.stat().st_mode) == 0o640 and "(it had group_source static)" in out[0]
    before = conf.read_text()
    access.sudo_group_source_dynamic(cfg(tmp_path), out.append, which=lambda n: None)
    assert conf.read_text() == before and out[1].endswith(f"({conf}: group_source dynamic)")


def test_sudo_conf_is_created_only_when_sudo_is_installed(tmp_path):
    (tmp_path / "etc").mkdir()
    out: list[str] = []
    access.sudo_group_source_dynamic(cfg(tmp_path), out.append, which=lambda n: None)
    assert out == ["access: sudo is not installed: /etc/sudo.conf left alone"]
    assert not (tmp_path / "etc" / "sudo.conf").exists()
    access.sudo_group_source_dynamic(cfg(tmp_path), out.append, which=lambda n: "/usr/bin/sudo")
    conf = tmp_path / "etc" / "sudo.conf"
    assert conf.read_text() == f"{MARK}\nSet group_source dynamic\n" and stat.S_IMODE(conf.stat().st_mode) == 0o644


# --- after the join: the groups looked up --------------------------------------------------------------------------


def test_check_groups_warns_per_missing_group_and_when_no_allowed_group_exists():
    run, out = Run({"hpc": 2, "ops": 2}), []
    access.check_groups({"allowed": "hpc, Domain Users", "admin": "ops", "domain": DOMAIN}, out.append, run)
    assert run.calls == [["getent", "group", "hpc"], ["getent", "group", "Domain Users"], ["getent", "group", "ops"]]
    assert out == [f"WARNING: access: AD group 'hpc' (pcluster-ad:access.allowedGroups) was not found in {DOMAIN}: its "
                   "members get no access through it. Check the name (pre-Windows 2000 group name), or create the "
                   "group. Local accounts are not affected.",
                   f"WARNING: access: AD group 'ops' (pcluster-ad:access.adminGroups) was not found in {DOMAIN}: its "
                   "members get no access through it. Check the name (pre-Windows 2000 group name), or create the "
                   "group. Local accounts are not affected."]
    out.clear()
    access.check_groups({"allowed": "hpc", "admin": "", "domain": DOMAIN}, out.append, Run({"hpc": 2}))
    assert out[-1] == "WARNING: access: none of the allowed groups exists: no AD user can log in to this node until " \
                      "one does (local accounts still can)"


# --- the ssh key hook ----------------------------------------------------------------------------------------------


def test_ssh_key_hook_writes_the_script_and_sshrc_and_removes_the_old_root_hook(tmp_path):
    pam = tmp_path / "etc" / "pam.d" / "sshd"
    pam.parent.mkdir(parents=True)
    pam.write_text(f"@include common-auth\n{ssh_keys.OLD_PAM_COMMENT}\n"
                   f"session optional pam_exec.so quiet {ssh_keys.OLD_HOOK}\n")
    pam.chmod(0o640)
    old = tmp_path / ssh_keys.OLD_HOOK.lstrip("/")
    old.parent.mkdir(parents=True)
    old.symlink_to("/nonexistent")  # a dangling link goes too
    (tmp_path / "etc" / "ssh").mkdir()
    out: list[str] = []
    ssh_keys.install(str(tmp_path), "10.1.0.0/16", out.append)
    assert pam.read_text() == "@include common-auth\n" and stat.S_IMODE(pam.stat().st_mode) == 0o640
    assert not os.path.lexists(old)
    hook = tmp_path / ssh_keys.HOOK.lstrip("/")
    assert stat.S_IMODE(hook.stat().st_mode) == 0o755 and "\nvpc_cidr='10.1.0.0/16'\n" in hook.read_text()
    sshrc = tmp_path / "etc" / "ssh" / "sshrc"
    assert sshrc.read_text() == f"{ssh_keys.SSHRC_HEADER}\n{ssh_keys.SSHRC_TEXT}{ssh_keys.SSHRC_LINE}\n"
    assert stat.S_IMODE(sshrc.stat().st_mode) == 0o644
    assert out == [f"access: removed the old root ssh key hook (pam_exec) from {ssh_keys.OLD_HOOK} in {pam}",
                   f"access: removed the old root ssh key hook {ssh_keys.OLD_HOOK}",
                   f"access: AD users get an ssh key between nodes at their first ssh login ({ssh_keys.HOOK}, run "
                   "as the user by /etc/ssh/sshrc)",
                   'access: that key opens the account only from the VPC: from="10.1.0.0/16"']
    out.clear()
    ssh_keys.install(str(tmp_path), "", out.append)  # a re-run: nothing to remove, sshrc rewritten as ours
    assert "removed" not in " ".join(out) and "\nvpc_cidr=''\n" in hook.read_text()
    assert sshrc.read_text().startswith(ssh_keys.SSHRC_HEADER + "\n") and "no VPC CIDR" in out[-1]


@pytest.mark.parametrize("own", ["#!/bin/sh\n# site\nexit 0\n", "# site\nexit 0\n\n\n", ""])
def test_a_sites_sshrc_is_kept_with_our_one_line_first(tmp_path, own):
    sshrc = tmp_path / "etc" / "ssh" / "sshrc"
    sshrc.parent.mkdir(parents=True)
    sshrc.write_text(own)
    sshrc.chmod(0o600)
    for _ in range(2):
        out: list[str] = []
        ssh_keys.install(str(tmp_path), "", out.append)
        want = own.rstrip("\n").split("\n") if own else []
        at = 1 if own.startswith("#!") else 0
        want[at:at] = [ssh_keys.SSHRC_LINE]
        assert sshrc.read_text() == "\n".join(want) + "\n"
        assert stat.S_IMODE(sshrc.stat().st_mode) == 0o600
        assert out[0] == f"access: {ssh_keys.SSHRC} was there already: kept, with one added line that runs " \
                         f"{ssh_keys.HOOK}"


def test_without_etc_ssh_the_key_script_is_written_but_no_sshrc(tmp_path):
    out: list[str] = []
    ssh_keys.install(str(tmp_path), "", out.append)
    assert (tmp_path / ssh_keys.HOOK.lstrip("/")).exists() and not (tmp_path / "etc" / "ssh").exists()
    assert out == ["access: no /etc/ssh (sshd is not installed): no ssh key between nodes"]


# --- the command line ----------------------------------------------------------------------------------------------


def agent(python: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """The agent as join-domain.sh runs it (-I, LC_ALL=C), with a fake visudo that accepts and copies what it checked
    and a fake getent that knows no group."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    (bindir / "visudo").write_text(f'#!/bin/sh\ncp "$4" {tmp_path}/checked\n')
    (bindir / "getent").write_text("#!/bin/sh\nexit 2\n")
    for f in bindir.iterdir():
        f.chmod(0o755)
    return subprocess.run([python, *node_agent_argv()[1:], *args], capture_output=True, timeout=60,
                          env={"PATH": f"{bindir}:/usr/bin:/bin", "LC_ALL": "C"}, stdin=subprocess.DEVNULL)


OLDEST = [p for p in PYTHONS if "/3.6." in p]


@pytest.mark.parametrize("python", [sys.executable, *OLDEST])
def test_the_commands_keep_any_bytes_of_a_name_under_the_c_locale(tmp_path, python):
    """Python 3.6 under LC_ALL=C decodes argv as ASCII (surrogate escapes): a non-ASCII group name must still reach
    sudoers, sssd and the log as the same UTF-8 bytes."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    proc = agent(python, tmp_path, "access", f"root={root}", f"domain={DOMAIN}", "allowed=équipe,hpc",
                 "admin=Ü ops")
    assert proc.returncode == 0, proc.stderr.decode()
    sudoers = (root / "etc" / "sudoers.d" / "50-pcluster-ad-admins").read_bytes()
    assert sudoers.endswith("%Ü\\ ops ALL=(ALL:ALL) ALL\n".encode()) and (tmp_path / "checked").read_bytes() == sudoers
    assert "simple_allow_groups = équipe, hpc\n".encode() in \
        (root / "etc" / "sssd" / "conf.d" / "50-pcluster-ad-access.conf").read_bytes()
    assert "may log in: équipe, hpc;".encode() in proc.stdout
    checked = agent(python, tmp_path, "check-access-groups", f"domain={DOMAIN}", "allowed=équipe")
    assert checked.returncode == 0 and "AD group 'équipe' (pcluster-ad".encode() in checked.stdout


def test_a_failure_is_error_on_stdout_and_exit_11(tmp_path):
    root = tmp_path / "root"
    (root / "etc" / "sssd" / "conf.d" / "50-pcluster-ad-access.conf").mkdir(parents=True)
    proc = agent(sys.executable, tmp_path, "login-access", f"root={root}", f"domain={DOMAIN}")
    assert proc.returncode == 11 and proc.stderr == b""
    assert proc.stdout.decode().splitlines() == [
        f"ERROR: access: cannot write {root}/etc/sssd/conf.d/50-pcluster-ad-access.conf"]
    with pytest.raises(ValueError, match="unknown setting 'colour=red'"):
        access.settings(["colour=red"])
