"""join-domain.sh's access and speed steps (issue 12) in the sandbox: the REAL script with stand-in system
commands under PCLUSTER_AD_ROOT (tests/bootstrap_sandbox). The AD lab (tests/adlab/test_access.py) proves the
same files work with real sssd, sudo and sshd; these tests cover the file contents, the order, the failure paths
and the baked lists. visudo is the real one (sudo must be installed)."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from components.bootstrap_scripts import bake_access_groups
from tests.bootstrap_sandbox.sandbox import JOIN_SCRIPT, Sandbox
from tests.bootstrap_sandbox.servers import FakeFunctionUrl, FakeImds
from tests.test_bootstrap_scripts import GOOD, REGION, run_join

ACCESS = "etc/sssd/conf.d/50-pcluster-ad-access.conf"
SUDOERS = "etc/sudoers.d/50-pcluster-ad-admins"
HOOK = "usr/local/sbin/pcluster-ad-user-ssh-key"


@pytest.fixture
def box(tmp_path):
    if shutil.which("visudo") is None:
        pytest.fail("visudo not found: install sudo (tools/install_adlab_deps.sh does)", pytrace=False)
    b = Sandbox(tmp_path / "box", "debian12")
    pam = b.root / "etc" / "pam.d"
    pam.mkdir(parents=True)
    (pam / "sshd").write_text("@include common-auth\n@include common-session\n")
    (pam / "common-auth").write_text("auth [success=1 default=ignore] pam_unix.so nullok\n"
                                     "auth optional pam_cap.so\n")
    (b.root / "etc" / "security").mkdir(parents=True)
    (b.root / "etc" / "security" / "capability.conf").write_text("# none by default\nnone  *\n")
    (b.root / "var" / "lib" / "sss" / "db").mkdir(parents=True)
    yield b
    b.cleanup()


def join(box: Sandbox, *extra: str, script: Path = JOIN_SCRIPT):
    with FakeImds() as imds, FakeFunctionUrl([GOOD]) as fn:
        if script == JOIN_SCRIPT:
            return run_join(box, imds, fn, "--timeout", "60", *extra)
        return box.run(script, ["--function-url", fn.url, "--region", REGION, "--timeout", "60", *extra],
                       box.env(imds.url))


def test_access_files_are_written_before_realm_join(box):
    result = join(box, "--allowed-groups", " hpc-users ,Domain Admins,, ", "--admin-groups",
                  "Domain Admins,R&D (old) #1!")
    assert result.rc == 0, result.output
    out = result.stdout
    # realm join restarts sssd with the domain at its end: every access file is in place before it starts.
    assert out.index("access: only members of these AD groups may log in: hpc-users, Domain Admins") \
        < out.index("realm: joining test.domain")
    assert out.index("access: sudo (with password) for members of: Domain Admins") < out.index("realm: joining")
    assert out.index("access: AD users get an ssh key between nodes") < out.index("realm: joining")
    conf = box.root / ACCESS
    assert conf.read_text().splitlines()[1:] == ["[domain/test.domain]", "access_provider = simple",
                                                 "simple_allow_groups = hpc-users, Domain Admins"]
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


def test_ssh_key_hook_is_installed_once_at_the_end_of_sshd_pam(box):
    for _ in range(2):
        result = join(box)
        assert result.rc == 0, result.output
        box.mark_joined()
    pam = (box.root / "etc" / "pam.d" / "sshd").read_text().splitlines()
    line = "session optional pam_exec.so quiet /usr/local/sbin/pcluster-ad-user-ssh-key"
    assert pam[-1] == line and pam.count(line) == 1
    hook = box.root / HOOK
    assert stat.S_IMODE(hook.stat().st_mode) == 0o755
    text = hook.read_text()
    assert "getent -s sss passwd" in text and "setpriv --reuid" in text
    assert subprocess.run(["sh", "-n", str(hook)]).returncode == 0


def test_no_lists_mean_every_domain_user_and_remove_earlier_files(box):
    assert join(box, "--allowed-groups", "hpc-users", "--admin-groups", "ops").rc == 0
    assert (box.root / ACCESS).exists() and (box.root / SUDOERS).exists()
    box.mark_joined()
    result = join(box)  # a re-run with empty lists (the stack's lists were emptied)
    assert result.rc == 0, result.output
    assert "access: every domain user may log in (no allowed groups configured)" in result.stdout
    assert not (box.root / ACCESS).exists() and not (box.root / SUDOERS).exists()


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
    result = join(box, script=baked)
    assert result.rc == 0, result.output
    assert "simple_allow_groups = O'Brien team, hpc-users" in (box.root / ACCESS).read_text()
    assert "%Domain\\ Admins ALL=(ALL:ALL) ALL" in (box.root / SUDOERS).read_text()
    # An argument overrides the baked list, also with an empty value.
    box.mark_joined()
    result = join(box, "--allowed-groups", "", script=baked)
    assert result.rc == 0, result.output
    assert not (box.root / ACCESS).exists()


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
