"""join-domain.sh's access and speed steps (issue 12) in the sandbox: the REAL script with stand-in system
commands under PCLUSTER_AD_ROOT (tests/bootstrap_sandbox). The AD lab (tests/adlab/test_access.py) proves the
same files work with real sssd, sudo and sshd; these tests cover the file contents, the order, the failure paths
and the baked lists. visudo is the real one (sudo must be installed)."""

from __future__ import annotations

import concurrent.futures
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from pcluster_ad.components.bootstrap_scripts import (
    bake_access_groups,
    bake_node_agent,
    bake_stack_access_groups,
    bake_vpc_cidr,
)
from tests.bootstrap_sandbox.sandbox import AGENT_DIR, JOIN_SCRIPT, Sandbox
from tests.bootstrap_sandbox.servers import SERVICE_ACCOUNT, FakeFunctionUrl, FakeImds, join_answer
from tests.test_bootstrap_scripts import GOOD, REGION, assert_request, run_join, shellcheck

ACCESS = "etc/sssd/conf.d/50-pcluster-ad-access.conf"
SUDOERS = "etc/sudoers.d/50-pcluster-ad-admins"
HOOK = "usr/local/libexec/pcluster-ad-user-ssh-key"
SSHRC = "etc/ssh/sshrc"
OLD_HOOK = "usr/local/sbin/pcluster-ad-user-ssh-key"
OLD_PAM_LINES = ["# pcluster-ad: ssh key between cluster nodes for AD users (first login)",
                 "session optional pam_exec.so quiet /usr/local/sbin/pcluster-ad-user-ssh-key"]
DEBIAN_SSHD_PAM = ["@include common-auth", "account    required     pam_nologin.so", "@include common-session",
                   "session    required     pam_env.so user_readenv=1 envfile=/etc/default/locale"]


@pytest.fixture
def box(tmp_path):
    if shutil.which("visudo") is None:
        pytest.fail("visudo not found: install sudo (tools/install_adlab_deps.sh does)", pytrace=False)
    b = Sandbox(tmp_path / "box", "debian12")
    pam = b.root / "etc" / "pam.d"
    pam.mkdir(parents=True)
    (pam / "sshd").write_text("\n".join(DEBIAN_SSHD_PAM) + "\n")
    (b.root / "etc" / "ssh").mkdir(parents=True)
    (pam / "common-auth").write_text("auth [success=1 default=ignore] pam_unix.so nullok\n"
                                     "auth optional pam_cap.so\n")
    (b.root / "etc" / "security").mkdir(parents=True)
    (b.root / "etc" / "security" / "capability.conf").write_text("# none by default\nnone  *\n")
    (b.root / "var" / "lib" / "sss" / "db").mkdir(parents=True)
    yield b
    b.cleanup()


def join(box: Sandbox, *extra: str, script: Path = JOIN_SCRIPT, answer: tuple[int, dict] = GOOD):
    with FakeImds() as imds, FakeFunctionUrl([answer]) as fn:
        if script == JOIN_SCRIPT:
            result = run_join(box, imds, fn, "--timeout", "60", *extra)
        else:
            result = box.run(script, ["--function-url", fn.url, "--region", REGION, "--timeout", "60", *extra],
                             box.env(imds.url))
    # Whatever the request (join, close), the function got the contract's body with a valid caller proof.
    for req in fn.requests:
        assert_request(req, {"joined": True, "computerName": answer[1]["computerName"]} if req["close"] else {})
    return result


def access_lines(box: Sandbox) -> list[str]:
    """The access drop-in without its comment lines."""
    return [line for line in (box.root / ACCESS).read_text().splitlines() if not line.startswith("#")]


# Disabled (the DC's word at each login) and locked-out accounts; expired ones: sssd's ad expire check.
STATE_FILTER = "(!(userAccountControl:1.2.840.113556.1.4.803:=2))(!(lockoutTime>=1))"


def every_user(*service: str) -> list[str]:
    """The drop-in without allowed groups: the ad provider, no computer account, none of SERVICE (escaped)."""
    return ["[domain/test.domain]", "access_provider = ad",
            "ad_access_filter = DOM:test.domain:(&(!(objectClass=computer))" + STATE_FILTER
            + "".join(f"(!(sAMAccountName={n}))" for n in service)
            + ")", "ad_gpo_access_control = disabled", "ad_enable_gc = False"]


def only_groups(groups: str, *service: str) -> list[str]:
    """The drop-in with allowed groups: the simple provider, Domain Computers and SERVICE denied."""
    return ["[domain/test.domain]", "access_provider = simple", f"simple_allow_groups = {groups}",
            "simple_deny_groups = Domain Computers", *([f"simple_deny_users = {','.join(service)}"] if service else [])]


def test_access_files_are_written_before_realm_join(box):
    result = join(box, "--allowed-groups", " hpc-users ,Domain Admins,, ", "--admin-groups",
                  "Domain Admins,R&D (old) #1!")
    assert result.rc == 0, result.output
    out = result.stdout
    # The adcli join (then sssd's restart with the domain): every access file is in place before it starts.
    assert out.index("access: only members of these AD groups may log in: hpc-users, Domain Admins; computer "
                     f"accounts and {SERVICE_ACCOUNT} never ({box.root / ACCESS})") \
        < out.index("adcli: joining test.domain")
    assert len([c for c in box.calls("adcli") if c["argv"][:1] == ["join"]]) == 1
    assert out.index("access: sudo (with password) for members of: Domain Admins") < out.index("adcli: joining")
    assert out.index("access: AD users get an ssh key between nodes") < out.index("adcli: joining")
    conf = box.root / ACCESS
    assert conf.read_text().splitlines()[2:] == only_groups("hpc-users, Domain Admins", SERVICE_ACCOUNT)
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    sudoers = box.root / SUDOERS
    assert sudoers.read_text().splitlines()[1:] == ["%Domain\\ Admins ALL=(ALL:ALL) ALL",
                                                    "%R\\&D\\ \\(old\\)\\ \\#1\\! ALL=(ALL:ALL) ALL"]
    assert stat.S_IMODE(sudoers.stat().st_mode) == 0o440
    assert subprocess.run(["visudo", "-c", "-q", "-f", str(sudoers)]).returncode == 0
    assert not [p.name for p in sudoers.parent.iterdir() if p.name.startswith(".")]
    # The stand-in directory knows no group: each missing one is a WARNING, the join still succeeds.
    for group, key in (("hpc-users", "allowedGroups"), ("Domain Admins", "allowedGroups"),
                       ("R&D (old) #1!", "adminGroups")):
        assert f"WARNING: access: AD group '{group}' (pcluster-ad:access.{key}) was not found in test.domain" in out
    assert "none of the allowed groups exists: no AD user can log in" in out


def installed(box: Sandbox, *extra: str, script: Path = JOIN_SCRIPT, runs: int = 1):
    """join-domain.sh on an already joined node (a re-run: no request to the join function), `runs` times. The
    ssh key part is the same in the first-join path (test_access_files_are_written_before_realm_join)."""
    box.mark_joined()
    for _ in range(runs):
        result = join(box, *extra, script=script)
        assert result.rc == 0, result.output
    return result


def test_ssh_key_hook_is_run_by_sshrc_as_the_user_and_never_from_pam(box):
    result = installed(box, "--vpc-cidr", "10.1.0.0/16", runs=2)
    # Nothing in sshd's PAM stack (pam_exec would run it as root with the user's ~/.pam_environment).
    assert (box.root / "etc" / "pam.d" / "sshd").read_text().splitlines() == DEBIAN_SSHD_PAM
    sshrc = (box.root / SSHRC).read_text().splitlines()
    assert sshrc[0].startswith("# pcluster-ad: /etc/ssh/sshrc, installed by join-domain.sh")
    assert "if read -r proto cookie && [ -n \"$DISPLAY\" ]; then" in sshrc  # xauth, as sshd(8) shows
    calls = [line for line in sshrc if "pcluster-ad-user-ssh-key" in line and not line.startswith("#")]
    assert calls == ["/usr/local/libexec/pcluster-ad-user-ssh-key </dev/null >/dev/null 2>&1 || true"
                     " # pcluster-ad-user-ssh-key (ssh key for MPI, join-domain.sh)"], sshrc
    assert stat.S_IMODE((box.root / SSHRC).stat().st_mode) == 0o644
    hook = box.root / HOOK
    assert stat.S_IMODE(hook.stat().st_mode) == 0o755
    text = hook.read_text()
    assert "vpc_cidr='10.1.0.0/16'\n" in text and "@VPC_CIDR@" not in text
    assert "getent -s sss passwd" in text and "setpriv" not in text and "runuser" not in text
    assert "access: AD users get an ssh key between nodes at their first ssh login" in result.stdout
    assert 'access: that key opens the account only from the VPC: from="10.1.0.0/16"' in result.stdout
    lint = subprocess.run([shellcheck(), "-s", "sh", str(hook), str(box.root / SSHRC)], capture_output=True,
                          text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    leftovers = [p.name for d in (hook.parent, box.root / "etc" / "ssh", box.root / "etc" / "pam.d")
                 for p in d.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_rerun_on_an_older_node_removes_the_root_pam_exec_hook(box):
    pam = box.root / "etc" / "pam.d" / "sshd"
    pam.write_text("\n".join([*DEBIAN_SSHD_PAM, *OLD_PAM_LINES]) + "\n")
    pam.chmod(0o644)
    old = box.root / OLD_HOOK
    old.parent.mkdir(parents=True)
    old.write_text("#!/bin/sh\n# the hook of versions before issue 16, run as root by pam_exec\n")
    old.chmod(0o755)
    result = installed(box)
    assert pam.read_text().splitlines() == DEBIAN_SSHD_PAM
    assert stat.S_IMODE(pam.stat().st_mode) == 0o644
    assert not old.exists()
    assert "access: removed the old root ssh key hook (pam_exec)" in result.stdout
    assert (box.root / HOOK).exists() and (box.root / SSHRC).exists()
    # Idempotent: a second run finds nothing to remove and changes nothing.
    again = installed(box)
    assert "removed the old root ssh key hook" not in again.stdout
    assert pam.read_text().splitlines() == DEBIAN_SSHD_PAM


@pytest.mark.parametrize("shebang", [True, False])
def test_an_existing_sshrc_is_kept_with_one_marked_line_first(box, shebang):
    own = ["# site sshrc", "if read proto cookie; then echo \"add $DISPLAY $proto $cookie\" | xauth -q -; fi",
           "exit 0"]
    if shebang:
        own = ["#!/bin/sh", *own]
    sshrc = box.root / SSHRC
    sshrc.write_text("\n".join(own) + "\n")
    sshrc.chmod(0o640)
    result = installed(box, runs=2)
    lines = sshrc.read_text().splitlines()
    mark = [i for i, line in enumerate(lines) if "# pcluster-ad-user-ssh-key" in line]
    assert mark == [1 if shebang else 0], lines
    assert lines[mark[0]].startswith("/usr/local/libexec/pcluster-ad-user-ssh-key </dev/null >/dev/null 2>&1")
    assert [line for i, line in enumerate(lines) if i not in mark] == own  # before any exit; the rest unchanged
    assert stat.S_IMODE(sshrc.stat().st_mode) == 0o640
    assert "was there already: kept, with one added line" in result.stdout


def test_without_a_vpc_cidr_the_key_is_not_limited_and_the_log_says_so(box):
    result = installed(box)
    assert "vpc_cidr=''\n" in (box.root / HOOK).read_text()
    assert "access: no VPC CIDR (none baked into this copy, no --vpc-cidr): that key is not limited to the VPC" \
        in result.stdout


def test_baked_vpc_cidr_is_used_and_the_option_overrides_it(box, tmp_path):
    baked = tmp_path / "join-domain.sh"
    baked.write_text(bake_vpc_cidr(JOIN_SCRIPT.read_text(), "10.20.0.0/16"))
    baked.write_text(bake_node_agent(baked.read_text(), AGENT_DIR))  # as the stack uploads it
    installed(box, script=baked)
    assert "vpc_cidr='10.20.0.0/16'\n" in (box.root / HOOK).read_text()
    installed(box, "--vpc-cidr", "172.16.4.0/22", script=baked)
    assert "vpc_cidr='172.16.4.0/22'\n" in (box.root / HOOK).read_text()
    result = installed(box, "--vpc-cidr=", script=baked)  # explicitly none
    assert "vpc_cidr=''\n" in (box.root / HOOK).read_text()
    assert "no VPC CIDR" in result.stdout


@pytest.mark.parametrize("cidr", ["10.0.0.1/16", "10.0.0.0/33", "010.0.0.0/8", "10.0.0.0", "256.0.0.0/8",
                                  "fd00::/8", "10.0.0.0/16,192.0.2.0/24", "10.0.0.0/16'; touch /tmp/x; '",
                                  "10.0.0.0/16 "])
def test_bad_vpc_cidr_is_a_usage_error_naming_the_option(box, cidr):
    with FakeImds() as imds, FakeFunctionUrl([GOOD]) as fn:
        result = run_join(box, imds, fn, "--vpc-cidr", cidr)
        assert result.rc == 2, result.output
        assert "argument --vpc-cidr must be an IPv4 CIDR block" in result.stderr and "usage:" in result.stderr
        assert imds.requests == [] and fn.requests == []
    assert not (box.root / HOOK).exists()


def test_bad_baked_vpc_cidr_is_refused_too(box, tmp_path):
    baked = tmp_path / "join-domain.sh"
    baked.write_text(JOIN_SCRIPT.read_text().replace('BAKED_VPC_CIDR=""\n', "BAKED_VPC_CIDR='10.0.0.7/16'\n"))
    baked.write_text(bake_node_agent(baked.read_text(), AGENT_DIR))  # as the stack uploads it
    result = join(box, script=baked)
    assert result.rc == 2 and "argument --vpc-cidr must be an IPv4 CIDR block" in result.stderr, result.output


# --- the installed key script itself, run as sshrc runs it (the user's own process) ------------------------------

FAKE_ID = """#!/bin/sh
case "$1" in -u) echo "$FAKE_UID" ;; -un) echo alice ;; *) echo "uid=$FAKE_UID(alice)" ;; esac
"""
FAKE_GETENT = """#!/bin/sh
[ "$1 $2 $3 $4" = "-s sss passwd $FAKE_UID" ] && [ -n "$FAKE_AD" ] || exit 2
echo "alice:*:$FAKE_UID:$FAKE_UID:Alice:$FAKE_HOME:/bin/bash"
"""


@pytest.fixture
def hook(box, tmp_path):
    """The installed key script with stand-ins for `id` and `getent` first on PATH (the script uses the caller's
    PATH as sshd gives it: it runs with the user's rights only); real ssh-keygen, ln, mktemp."""
    installed(box, "--vpc-cidr", "10.1.0.0/16")
    fakes = tmp_path / "fakes"
    fakes.mkdir()
    for name, text in (("id", FAKE_ID), ("getent", FAKE_GETENT)):
        (fakes / name).write_text(text)
        (fakes / name).chmod(0o755)
    home = tmp_path / "alice"
    home.mkdir()

    def run(uid: int = 1500, ad: bool = True, fake: bool = True) -> subprocess.CompletedProcess:
        env = {"PATH": f"{fakes}:/usr/bin:/bin" if fake else "/usr/bin:/bin", "HOME": str(home),
               "FAKE_UID": str(uid), "FAKE_AD": "1" if ad else "", "FAKE_HOME": str(home)}
        return subprocess.run([str(box.root / HOOK)], env=env, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=60, cwd=home)

    run.home = home
    return run


def test_key_script_makes_a_key_authorized_from_the_vpc_only(hook):
    res = hook()
    assert res.returncode == 0 and res.stdout == "" and res.stderr == "", res
    ssh = hook.home / ".ssh"
    pub = (ssh / "id_ed25519.pub").read_text().strip()
    assert pub.startswith("ssh-ed25519 ") and pub.endswith(" alice@pcluster-ad cluster-internal")
    assert (ssh / "authorized_keys").read_text() == f'from="10.1.0.0/16" {pub}\n'
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (ssh, ssh / "id_ed25519", ssh / "authorized_keys")}
    assert modes == {".ssh": 0o700, "id_ed25519": 0o600, "authorized_keys": 0o600}
    assert sorted(p.name for p in ssh.iterdir()) == ["authorized_keys", "id_ed25519", "id_ed25519.pub"]
    # Every later session: nothing changes.
    before = (ssh / "authorized_keys").read_text()
    assert hook().returncode == 0 and (ssh / "authorized_keys").read_text() == before


def test_key_script_keeps_a_key_the_user_has(hook):
    ssh = hook.home / ".ssh"
    ssh.mkdir(mode=0o700)
    (ssh / "id_ed25519").write_text("her own key\n")
    assert hook().returncode == 0
    assert (ssh / "id_ed25519").read_text() == "her own key\n"
    assert sorted(p.name for p in ssh.iterdir()) == ["id_ed25519"]


def test_key_script_appends_on_a_line_of_its_own(hook):
    ssh = hook.home / ".ssh"
    ssh.mkdir(mode=0o700)
    (ssh / "authorized_keys").write_text("ssh-ed25519 AAAAexisting laptop")  # no newline at the end
    assert hook().returncode == 0
    lines = (ssh / "authorized_keys").read_text().splitlines()
    assert lines[0] == "ssh-ed25519 AAAAexisting laptop" and lines[1].startswith('from="10.1.0.0/16" ssh-ed25519 ')
    assert len(lines) == 2


@pytest.mark.parametrize("who", ["not in sssd", "system uid", "root"])
def test_key_script_does_nothing_for_other_accounts(hook, who):
    res = {"not in sssd": lambda: hook(ad=False), "system uid": lambda: hook(uid=999),
           "root": lambda: hook(fake=False)}[who]()  # "root": the real id (the tests run as root) or a real user
    assert res.returncode == 0 and res.stdout == "", res
    assert list(hook.home.iterdir()) == []


def test_key_script_parallel_first_sessions_make_one_key(hook):
    """mpirun's first fan-out can start many sessions at once: ln decides, one key and one line."""
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        procs = list(pool.map(lambda _: hook(), range(8)))
    assert all(p.returncode == 0 and p.stdout == "" for p in procs), procs
    ssh = hook.home / ".ssh"
    pub = (ssh / "id_ed25519.pub").read_text().strip()
    assert (ssh / "authorized_keys").read_text() == f'from="10.1.0.0/16" {pub}\n'
    assert sorted(p.name for p in ssh.iterdir()) == ["authorized_keys", "id_ed25519", "id_ed25519.pub"]


@pytest.mark.parametrize(("display", "expected"), [("localhost:10.0", "add unix:10.0 MIT-MAGIC-COOKIE-1 0123abcd"),
                                                   ("node1:11.0", "add node1:11.0 MIT-MAGIC-COOKIE-1 0123abcd"),
                                                   ("", None)])
def test_sshrc_adds_the_x11_cookie_as_sshd_would_and_runs_the_key_script(box, tmp_path, display, expected):
    installed(box)
    rec = tmp_path / "rec"
    rec.mkdir()
    fakes = tmp_path / "fakes"
    fakes.mkdir()
    (fakes / "xauth").write_text(f'#!/bin/sh\necho "$*" >>{rec}/xauth.argv\ncat >>{rec}/xauth.stdin\n')
    (fakes / "xauth").chmod(0o755)
    key_script = tmp_path / "key-script"
    key_script.write_text(f'#!/bin/sh\nread -r line || line=EOF\necho "ran with stdin: $line" >{rec}/key\n')
    key_script.chmod(0o755)
    text = (box.root / SSHRC).read_text().replace("/usr/local/libexec/pcluster-ad-user-ssh-key", str(key_script))
    env = {"PATH": f"{fakes}:/usr/bin:/bin", **({"DISPLAY": display} if display else {})}
    # sshd: popen("/bin/sh /etc/ssh/sshrc", "w"), then "proto cookie\n" on its stdin when X11 is forwarded.
    res = subprocess.run(["/bin/sh", "-c", text], input="MIT-MAGIC-COOKIE-1 0123abcd\n" if display else "",
                         env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout == "", res
    if expected:
        assert (rec / "xauth.argv").read_text() == "-q -\n"
        assert (rec / "xauth.stdin").read_text() == expected + "\n"
    else:
        assert not (rec / "xauth.argv").exists()
    assert (rec / "key").read_text() == "ran with stdin: EOF\n"  # never reads the cookie


def test_no_lists_mean_every_domain_user_and_remove_earlier_files(box):
    assert join(box, "--allowed-groups", "hpc-users", "--admin-groups", "ops").rc == 0
    assert (box.root / ACCESS).exists() and (box.root / SUDOERS).exists()
    box.mark_joined()
    result = join(box)  # a re-run with empty lists (the stack's lists were emptied)
    assert result.rc == 0, result.output
    # The access drop-in stays, now with the ad provider (no simple_allow_groups left): every domain user, never a
    # computer account nor the service account (from the first run's state file). The sudoers drop-in goes.
    assert "access: every domain user may log in (no allowed groups configured); disabled, expired, locked-out and " \
           "computer accounts and " \
           f"{SERVICE_ACCOUNT} never ({box.root / ACCESS})" in result.stdout
    assert access_lines(box) == every_user(SERVICE_ACCOUNT)
    assert "simple_allow_groups" not in (box.root / ACCESS).read_text()
    assert stat.S_IMODE((box.root / ACCESS).stat().st_mode) == 0o600
    assert not (box.root / SUDOERS).exists()


def test_visudo_refusal_exits_11_and_installs_nothing(box):
    (box.bin / "visudo").write_text("#!/bin/sh\necho 'visudo: parse error' >&2\nexit 1\n")
    (box.bin / "visudo").chmod(0o755)
    result = join(box, "--admin-groups", "ops")
    assert result.rc == 11, result.output
    assert "visudo refuses the sudoers drop-in for the admin groups; nothing installed" in result.output
    assert not (box.root / SUDOERS).exists()
    assert not list((box.root / "etc" / "sudoers.d").iterdir())


def test_baked_lists_are_used_without_arguments(box, tmp_path):
    baked = tmp_path / "join-domain.sh"
    baked.write_text(bake_access_groups(JOIN_SCRIPT.read_text(), ["O'Brien team", "hpc-users"], ["Domain Admins"]))
    baked.write_text(bake_node_agent(baked.read_text(), AGENT_DIR))  # as the stack uploads it
    result = join(box, script=baked)
    assert result.rc == 0, result.output
    assert access_lines(box) == only_groups("O'Brien team, hpc-users", SERVICE_ACCOUNT)
    assert "%Domain\\ Admins ALL=(ALL:ALL) ALL" in (box.root / SUDOERS).read_text()
    # An argument overrides the baked list, also with an empty value.
    box.mark_joined()
    result = join(box, "--allowed-groups", "", script=baked)
    assert result.rc == 0, result.output
    assert access_lines(box) == every_user(SERVICE_ACCOUNT)


def test_sssd_cache_unit_and_unused_pam_cap(box):
    result = join(box)
    assert result.rc == 0, result.output
    unit = (box.root / "etc" / "systemd" / "system" / "var-lib-sss-db.mount").read_text()
    assert "What=tmpfs" in unit and "Where=/var/lib/sss/db" in unit and "mode=" in unit
    dropin = box.root / "etc" / "systemd" / "system" / "sssd.service.d" / "50-pcluster-ad-cache-in-memory.conf"
    assert dropin.read_text() == "[Unit]\nRequiresMountsFor=/var/lib/sss/db\n"
    assert "the unit is written, nothing is mounted" in result.stdout  # under PCLUSTER_AD_ROOT
    # ONE pam-auth-update for both changes (each run rewrites every common-* file).
    pam = [c["argv"] for c in box.calls("pam-auth-update")]
    assert pam == [["--disable", "capability", "--enable", "mkhomedir"]], pam


def test_pam_cap_is_kept_when_it_grants_something(box):
    (box.root / "etc" / "security" / "capability.conf").write_text("cap_net_raw  alice\nnone  *\n")
    result = join(box)
    assert result.rc == 0, result.output
    assert "pam: keeping pam_cap" in result.stdout
    assert [c["argv"] for c in box.calls("pam-auth-update")] == [["--enable", "mkhomedir"]]


# Computer accounts and the stack's service accounts (the join function's adding account, answered as
# "serviceAccounts") never log in, whatever the access settings.

STATE = "var/lib/pcluster-ad/join-state"
# Names the answer may carry: the filter escapes the RFC 4515 specials; 20 characters is the longest name.
ODD_NAMES = ["svc-pcad-join", "a*b(c)\\d", "x" * 20]
ODD_ESCAPED = ["svc-pcad-join", "a\\2ab\\28c\\29\\5cd", "x" * 20]


@pytest.mark.parametrize("groups", [None, "hpc-users"], ids=["every-user", "allowed-groups"])
def test_service_accounts_from_the_answer_never_log_in_in_both_modes(box, groups):
    result = join(box, *(["--allowed-groups", groups] if groups else []),
                  answer=join_answer(serviceAccounts=ODD_NAMES))
    assert result.rc == 0, result.output
    conf = box.root / ACCESS
    listed = ",".join(ODD_NAMES)
    if groups:
        # The simple provider compares names: the names as they are, no filter escapes.
        assert access_lines(box) == only_groups("hpc-users", *ODD_NAMES)
        assert f"access: only members of these AD groups may log in: hpc-users; computer accounts and {listed} " \
               f"never ({conf})" in result.stdout
    else:
        assert access_lines(box) == every_user(*ODD_ESCAPED)
        assert "access: every domain user may log in (no allowed groups configured); disabled, expired, locked-out" \
               f" and computer accounts and {listed} never ({conf})" in result.stdout
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    # The state file keeps the names (no secret) for a re-run.
    assert (box.root / STATE).read_text().splitlines()[-1] == f"service={listed}"


@pytest.mark.parametrize("service", [None, []], ids=["no-field", "empty-list"])
def test_an_answer_without_service_accounts_joins_with_only_the_computer_rule(box, service):
    """An older join function answers no serviceAccounts: the node joins, computer accounts are still denied."""
    result = join(box, answer=join_answer(serviceAccounts=service))
    assert result.rc == 0, result.output
    assert access_lines(box) == every_user()
    assert "computer accounts never (" in result.stdout and "computer accounts and" not in result.stdout
    assert (box.root / STATE).read_text().splitlines()[-1] == "service="
    box.mark_joined()
    again = join(box, "--allowed-groups", "hpc-users")
    assert again.rc == 0, again.output
    assert access_lines(box) == only_groups("hpc-users")  # no simple_deny_users line


def test_a_rerun_keeps_the_service_accounts_from_the_state_file(box):
    first = join(box, answer=join_answer(serviceAccounts=ODD_NAMES))
    assert first.rc == 0, first.output
    state = (box.root / STATE).read_text()
    # Re-runs of the joined node ask no function (an answer with other names would show): the names come from the
    # state file, into either mode, and the state file stays as it was.
    with FakeImds() as imds, FakeFunctionUrl([join_answer(serviceAccounts=["other-svc"])]) as fn:
        again = run_join(box, imds, fn, "--timeout", "60", "--allowed-groups", "hpc-users")
        assert again.rc == 0, again.output
        assert not fn.requests and "already joined to test.domain" in again.stdout
        assert access_lines(box) == only_groups("hpc-users", *ODD_NAMES)
        third = run_join(box, imds, fn, "--timeout", "60")
        assert third.rc == 0, third.output
        assert not fn.requests
    assert access_lines(box) == every_user(*ODD_ESCAPED)
    assert (box.root / STATE).read_text() == state
    # A state file of an older version (no service line): only the computer rule.
    (box.root / STATE).write_text("domain=test.domain\nrealm=TEST.DOMAIN\ncomputer=NODE1\n")
    older = join(box)
    assert older.rc == 0, older.output
    assert access_lines(box) == every_user()


# -- issue 18: access as directory data (the stack's two groups, DirectoryAdmin) -----------------------------------

USERS_DN = "CN=pca-dev-users,OU=Users,OU=pcluster-ad-dev,DC=test,DC=domain"


def stack_groups_filter(*service: str) -> list[str]:
    return ["[domain/test.domain]", "access_provider = ad",
            "ad_access_filter = DOM:test.domain:"
            f"(&(memberOf:1.2.840.113556.1.4.1941:={USERS_DN})(!(objectClass=computer))"
            + STATE_FILTER + "".join(f"(!(sAMAccountName={n}))" for n in service) + ")",
            "ad_gpo_access_control = disabled", "ad_enable_gc = False"]


def test_stack_groups_make_the_node_config_independent_of_the_lists(box, tmp_path):
    baked = tmp_path / "join-domain.sh"
    baked.write_text(bake_stack_access_groups(bake_access_groups(JOIN_SCRIPT.read_text(), ["hpc-users"], []),
                                              USERS_DN, "pca-dev-admins"))
    baked.write_text(bake_node_agent(baked.read_text(), AGENT_DIR))  # as the stack uploads it
    result = join(box, script=baked)
    assert result.rc == 0, result.output
    # In-chain membership of the stack's users group, evaluated by the DC; the lists themselves appear nowhere.
    assert access_lines(box) == stack_groups_filter(SERVICE_ACCOUNT)
    assert f"access: only in-chain members of the stack's group {USERS_DN} (allowed groups: hpc-users)" \
        in result.stdout
    # sudo: the stack's admins group, even with no adminGroups configured (an empty group: nobody).
    sudoers = (box.root / SUDOERS).read_text().splitlines()[1:]
    assert sudoers == ["%pca-dev-admins ALL=(ALL:ALL) ALL"]
    # Other lists (a later `pulumi up` that only changed membership): the very same files.
    box.mark_joined()
    before = ((box.root / ACCESS).read_text(), (box.root / SUDOERS).read_text())
    again = join(box, "--allowed-groups", "physics,chemistry", "--admin-groups", "Domain Admins", script=baked)
    assert again.rc == 0, again.output
    assert ((box.root / ACCESS).read_text(), (box.root / SUDOERS).read_text()) == before


def test_stack_groups_without_allowed_groups_keep_the_stack_group_filter(box):
    """allowedGroups empty: the same filter as with groups (DirectoryAdmin then keeps every user account in the
    stack's users group), so a later allowedGroups closes the node without a re-run (issue 18, attack finding 1)."""
    result = join(box, "--stack-users-group", USERS_DN, "--stack-admins-group", "pca-dev-admins")
    assert result.rc == 0, result.output
    empty = access_lines(box)
    assert "(allowed groups: none: every user account of the domain, kept in the group by the stack)" in result.stdout
    box.mark_joined()
    result = join(box, "--allowed-groups", "hpc-users", "--stack-users-group", USERS_DN,
                  "--stack-admins-group", "pca-dev-admins")
    assert result.rc == 0, result.output
    assert access_lines(box) == empty and any(f"={USERS_DN})" in line for line in empty), empty
    assert "%pca-dev-admins ALL=(ALL:ALL) ALL" in (box.root / SUDOERS).read_text()


@pytest.mark.parametrize("opt,value", [("--stack-users-group", "pca-dev-users"),
                                       ("--stack-users-group", "CN=x)(objectClass=*),DC=test"),
                                       ("--stack-admins-group", "a b"), ("--stack-admins-group", "x" * 21)])
def test_bad_stack_groups_are_usage_errors(box, opt, value):
    result = join(box, opt, value)
    assert result.rc == 2 and f"argument {opt} must be" in result.stderr, result.output
    assert not (box.root / ACCESS).exists()


def test_baking_the_stack_groups_checks_them():
    text = JOIN_SCRIPT.read_text()
    assert bake_stack_access_groups(text, None, None) == text
    baked = bake_stack_access_groups(text, USERS_DN, "pca-dev-admins")
    assert f"BAKED_STACK_USERS_GROUP={USERS_DN}\n" in baked and "BAKED_STACK_ADMINS_GROUP=pca-dev-admins\n" in baked
    for users, admins in (("CN=a;b,DC=x", "pca-dev-admins"), (USERS_DN, "a'b"), (USERS_DN, None)):
        with pytest.raises(ValueError, match="not a stack"):
            bake_stack_access_groups(text, users, admins)


# -- issue 18: sssd's cached view as fresh as the directory, sudo's groups from NSS (attack findings 3, 4; expiry) --

FRESH = "etc/sssd/conf.d/50-pcluster-ad-fresh.conf"
SUDO_CONF = "etc/sudo.conf"
FRESH_LINES = ["[domain/test.domain]", "entry_cache_user_timeout = 30", "", "[pam]", "pam_initgroups_scheme = always",
               "", "[pac]", "pac_lifetime = 0", "", "[nss]", "memcache_size_initgroups = 0"]
MARK = "# pcluster-ad: sudo asks NSS (sssd) for the user's groups at each call, not the session's list"
DEBIAN_SUDO_CONF = ["# sudo.conf (Debian's, shortened)", "#Set group_source static",
                    "Plugin sudoers_policy sudoers.so", "Set disable_coredump false"]


def fresh_lines(box: Sandbox) -> list[str]:
    return [line for line in (box.root / FRESH).read_text().splitlines() if not line.startswith("#")]


@pytest.mark.parametrize("mode", ["stack", "lists", "every-user"])
def test_sssd_refreshes_from_ldap_at_every_login_in_every_mode(box, mode):
    """No PAC shortcut (pac_lifetime = 0), an online refresh at every PAM request also while the user has a
    session (pam_initgroups_scheme = always), group lists at most 30 s old and never from the fast cache; written
    before realm join, 0600 (sssd ignores a snippet others can write), in the domain section realm writes."""
    (box.root / "etc").mkdir(parents=True, exist_ok=True)
    (box.root / SUDO_CONF).write_text("\n".join(DEBIAN_SUDO_CONF) + "\n")
    args = {"stack": ["--allowed-groups", "hpc", "--stack-users-group", USERS_DN,
                      "--stack-admins-group", "pca-dev-admins"],
            "lists": ["--allowed-groups", "hpc", "--admin-groups", "ops"], "every-user": []}[mode]
    result = join(box, *args)
    assert result.rc == 0, result.output
    assert fresh_lines(box) == FRESH_LINES
    assert stat.S_IMODE((box.root / FRESH).stat().st_mode) == 0o600
    out = result.stdout
    assert out.index(f"access: sssd refreshes a user from the directory at every login (no PAC shortcut) and her "
                     f"group list after 30 s ({box.root / FRESH})") < out.index("adcli: joining test.domain")
    assert out.index("'Set group_source dynamic' in") < out.index("adcli: joining test.domain")
    # sudo.conf: everything it had, then our line, which is the last group_source line (the one sudo uses).
    assert (box.root / SUDO_CONF).read_text().splitlines() == [*DEBIAN_SUDO_CONF, MARK, "Set group_source dynamic"]


def test_a_rerun_keeps_sudo_conf_and_the_fresh_snippet_as_they_are(box):
    (box.root / "etc").mkdir(parents=True, exist_ok=True)
    (box.root / SUDO_CONF).write_text("\n".join(DEBIAN_SUDO_CONF) + "\n")
    (box.root / SUDO_CONF).chmod(0o640)
    result = installed(box, "--allowed-groups", "hpc", runs=2)
    assert "sudo asks NSS for the user's groups at each call (" in result.stdout  # the second run: nothing to do
    assert (box.root / SUDO_CONF).read_text().splitlines() == [*DEBIAN_SUDO_CONF, MARK, "Set group_source dynamic"]
    assert stat.S_IMODE((box.root / SUDO_CONF).stat().st_mode) == 0o640
    assert fresh_lines(box) == FRESH_LINES


def test_a_later_static_line_of_the_site_is_kept_and_ours_goes_last_again(box):
    (box.root / "etc").mkdir(parents=True, exist_ok=True)
    site = [*DEBIAN_SUDO_CONF, MARK, "Set group_source dynamic", "Set group_source static  # the site's"]
    (box.root / SUDO_CONF).write_text("\n".join(site) + "\n")
    result = installed(box)
    assert "(it had group_source static)" in result.stdout
    assert (box.root / SUDO_CONF).read_text().splitlines() == [
        *DEBIAN_SUDO_CONF, "Set group_source static  # the site's", MARK, "Set group_source dynamic"]


def test_a_sudo_conf_that_is_dynamic_already_is_not_touched(box):
    (box.root / "etc").mkdir(parents=True, exist_ok=True)
    (box.root / SUDO_CONF).write_text("set   group_source   DYNAMIC\n")
    installed(box)
    assert (box.root / SUDO_CONF).read_text() == "set   group_source   DYNAMIC\n"


RHEL_SUDO_CONF = ["#", "# Default /etc/sudo.conf file", "#", "#Set group_source static", "#Set probe_interfaces false"]


@pytest.mark.parametrize("os_name", ["rocky9", "alinux2023"])
def test_rhel_family_gets_the_same_fresh_snippet_and_sudo_conf(tmp_path, os_name):
    """RHEL family (authselect): the same snippet and sudo.conf line, on the first join and again on a re-run."""
    if shutil.which("visudo") is None:
        pytest.fail("visudo not found: install sudo (tools/install_adlab_deps.sh does)", pytrace=False)
    box = Sandbox(tmp_path / "box", os_name, authselect_current="Profile ID: sssd\nEnabled features:\n- with-sudo")
    try:
        (box.root / "etc").mkdir(parents=True, exist_ok=True)
        (box.root / SUDO_CONF).write_text("\n".join(RHEL_SUDO_CONF) + "\n")
        (box.root / "var" / "lib" / "sss" / "db").mkdir(parents=True)
        result = join(box, "--allowed-groups", "hpc", "--stack-users-group", USERS_DN,
                      "--stack-admins-group", "pca-dev-admins")
        assert result.rc == 0, result.output
        assert fresh_lines(box) == FRESH_LINES
        assert stat.S_IMODE((box.root / FRESH).stat().st_mode) == 0o600
        assert (box.root / SUDO_CONF).read_text().splitlines() == [*RHEL_SUDO_CONF, MARK, "Set group_source dynamic"]
        again = installed(box, "--allowed-groups", "hpc", "--stack-users-group", USERS_DN,
                          "--stack-admins-group", "pca-dev-admins")
        assert again.rc == 0, again.output
        assert fresh_lines(box) == FRESH_LINES
        assert (box.root / SUDO_CONF).read_text().splitlines() == [*RHEL_SUDO_CONF, MARK, "Set group_source dynamic"]
    finally:
        box.cleanup()
