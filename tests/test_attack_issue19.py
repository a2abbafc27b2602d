"""Attack review of issue 19 item 8 (one import package, an installed wheel, automation.program_dir).

Threat: another local user on the operator's machine (who holds AWS credentials and stack secrets). What runs as
the operator must come from the operator's own files: the interpreter the cluster command runs (program/ in the
stack's workspace), the modules an embedder imports, the ParallelCluster venv.

Findings with a test that fails on main e153e52 (severity in the test's docstring):
- F1 medium: program_dir checked the workspace directory itself, not the directories above it: whoever can write a
  parent (a team directory, a directory someone pre-made under /tmp that `mkdir(parents=True)` accepts) renames the
  checked workspace away later and puts their own venv/bin/python there, which `pulumi up`/destroy then runs.
- F2 low: importing pcluster_ad.tools.full_validation (automation.require_prerequisites, automation.full_validation)
  put site-packages/pcluster_ad at sys.path[0]: the package's program.py, tools/, launcher/ ... became top-level
  names again and shadowed the embedder's own (issue 19 item 8's bug, back at run time).
- F3 low: the wheel has no pcluster_ad/__init__.py: an implicit namespace package, which any regular `pcluster_ad`
  package anywhere on sys.path (even after site-packages) replaces, and into which a `pcluster_ad/` directory
  without __init__.py merges. setup.py now writes the wheel's __init__.py.
- F4 low: the README runs `python -m pcluster_ad.tools.plan STACK` in the directory that holds the stack files:
  `-m` puts that directory first on sys.path, so a `pcluster_ad/` someone else put there runs as the operator. A
  console script (`pcluster-ad-plan`) does not put the current directory on sys.path.
- F5 low: a relative XDG_DATA_HOME (the XDG spec says: ignore it) put the ParallelCluster venv, which the tools
  execute, relative to the current directory.
- F6 low: the wheel carried whatever else sits in the checkout: every top-level *.py, everything in bootstrap/,
  tools/*.json|*.sh|*.lock (a working checkout holds files of the user's own).
"""

from __future__ import annotations

import grp
import os
import pwd
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pcluster_ad import automation
from pcluster_ad.launcher import core
from tests.conftest import ROOT, copy_checkout
from tests.test_wheel import run, site_package, venv, wheel  # noqa: F401 - the wheel fixtures

NOBODY = 65534


# F1 ------------------------------------------------------------------------------------------------------------


def test_f1_a_workspace_below_a_directory_others_can_write_is_refused(installed_package, tmp_path):
    """F1 (medium). The workspace itself is the operator's, 0700: but `team/` above it is world-writable (no sticky
    bit), so anyone can `mv team/ws team/old; mkdir -p team/ws/program/venv/bin` with their own `python`, after
    program_dir checked ws and before the engine runs `venv/bin/python -m launcher` there as the operator."""
    team = tmp_path / "team"
    team.mkdir()
    team.chmod(0o777)
    with pytest.raises(ValueError, match=r"team \(above the workspace .*nobody else may write"):
        automation.program_dir(team / "ws")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a directory of another user")
def test_f1_a_workspace_in_another_users_directory_is_refused(installed_package, tmp_path):
    """F1. A directory someone else made (e.g. /tmp/pcad, pre-made before the operator's work_dir=/tmp/pcad/ws;
    `mkdir(parents=True, exist_ok=True)` takes it as it is): its owner renames whatever is in it."""
    theirs = tmp_path / "pcad"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, NOBODY, NOBODY)
    with pytest.raises(ValueError, match=r"pcad"):
        automation.program_dir(theirs / "ws")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a symlink of another user")
def test_f1_the_engine_gets_the_resolved_path_never_a_symlink_someone_can_repoint(installed_package, tmp_path):
    """F1. work_dir through a symlink of someone else's in a sticky directory (/tmp/link -> the operator's dir): the
    link passes every check today, and its owner points it elsewhere before the engine runs the command."""
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = sticky / "link"
    link.symlink_to(real)
    os.lchown(link, NOBODY, NOBODY)
    main = automation.program_dir(link / "ws")
    assert main == real / "ws" / "program"


def test_f1_a_sticky_directory_and_the_default_workspace_still_work(installed_package, tmp_path):
    """Not a finding: /tmp-like parents (sticky: nobody renames what is not theirs) and a directory the operator's
    own private group may write (umask 002 distributions) are accepted."""
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    assert automation.program_dir(sticky / "ws") == sticky / "ws" / "program"
    user = pwd.getpwuid(os.geteuid())
    if set(grp.getgrgid(user.pw_gid).gr_mem) <= {user.pw_name}:
        upg = tmp_path / "upg"
        upg.mkdir()
        os.chown(upg, -1, user.pw_gid)
        upg.chmod(0o775)
        assert automation.program_dir(upg / "ws") == upg / "ws" / "program"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a directory to another group")
def test_f1_a_workspace_below_a_directory_another_group_can_write_is_refused(installed_package, tmp_path):
    team = tmp_path / "team"
    team.mkdir()
    os.chown(team, -1, NOBODY)
    team.chmod(0o775)
    with pytest.raises(ValueError, match=r"team \(above the workspace"):
        automation.program_dir(team / "ws")


# F2 ------------------------------------------------------------------------------------------------------------


def test_f2_an_embedders_own_modules_stay_theirs_after_the_prerequisites_check(tmp_path, venv):  # noqa: F811
    """F2 (low). The embedder's script beside its own program.py (issue 19 item 8's example), importing what
    automation.require_prerequisites imports: its `import program` must still be its own."""
    (tmp_path / "program.py").write_text("MINE = True\n")
    (tmp_path / "deploy.py").write_text(
        "import sys\n"
        "from pcluster_ad.tools import full_validation  # automation.require_prerequisites / full_validation\n"
        "import program\n"
        "print(program.__file__)\n"
        "print([p for p in sys.path if p.endswith('pcluster_ad')])\n")
    proc = run([str(venv / "bin" / "python"), "deploy.py"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    program_file, package_on_path = proc.stdout.splitlines()
    assert program_file == str(tmp_path / "program.py")
    assert package_on_path == "[]"


# F3 ------------------------------------------------------------------------------------------------------------


def test_f3_a_regular_package_later_on_the_path_does_not_replace_the_installed_one(tmp_path, venv):  # noqa: F811
    """F3 (low). A directory on sys.path AFTER site-packages (here through a .pth, as other editable installs add
    them) with a regular `pcluster_ad` package: Python prefers a regular package anywhere on the path over the
    portions of a namespace package, so `from pcluster_ad import automation` imports the other one."""
    other = tmp_path / "other"
    (other / "pcluster_ad").mkdir(parents=True)
    (other / "pcluster_ad" / "__init__.py").write_text("")
    (other / "pcluster_ad" / "automation.py").write_text("HIJACKED = True\n")
    pth = site_package(venv).parent / "zz-attack19-other.pth"
    pth.write_text(f"{other}\n")
    try:
        proc = run([str(venv / "bin" / "python"), "-c",
                    "from pcluster_ad import automation; print(getattr(automation, 'HIJACKED', False))"],
                   cwd=tmp_path)
    finally:
        pth.unlink()
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


# F4 ------------------------------------------------------------------------------------------------------------


def test_f4_planning_in_a_stack_directory_others_can_write_runs_only_the_installed_code(tmp_path, venv):  # noqa: F811
    """F4 (low). The installed package plans the stack file of the current directory; that directory (a team's
    stack repository) holds someone's `pcluster_ad/`. The console script runs the installed code only."""
    work = tmp_path / "stacks"
    (work / "pcluster_ad").mkdir(parents=True)
    marker = tmp_path / "ran-as-the-operator"
    planted = f"open({str(marker)!r}, 'w').write('x')\n"
    (work / "pcluster_ad" / "__init__.py").write_text(planted)
    (work / "pcluster_ad" / "stack_config.py").write_text(planted)
    (work / "Pulumi.team.yaml").write_bytes((ROOT / "Pulumi.dev.yaml").read_bytes())
    script = venv / "bin" / "pcluster-ad-plan"
    assert script.is_file(), "no console script: the only documented way is `python -m`, which imports from cwd"
    proc = run([str(script), "team", "--out", "plan-out"], cwd=work)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not marker.exists()
    assert (work / "plan-out" / "resources.json").is_file()


# F5 ------------------------------------------------------------------------------------------------------------


def test_f5_a_relative_xdg_data_home_is_ignored(tmp_path):
    """F5 (low). XDG base directory spec: "If an implementation encounters a relative path in any of these variables
    it should consider the path invalid and ignore it." Relative, the venv the tools execute would be found below
    whatever directory the operator runs them from."""
    installed = tmp_path / "site-packages" / "pcluster_ad"
    installed.mkdir(parents=True)
    home = tmp_path / "home"
    env = {"XDG_DATA_HOME": "shared/data", "HOME": str(home)}
    assert core.venv_home(env, installed) == home / ".local" / "share" / "pcluster-ad"
    absolute = {**env, "XDG_DATA_HOME": str(tmp_path / "xdg")}
    assert core.venv_home(absolute, installed) == tmp_path / "xdg" / "pcluster-ad"


def test_f5_the_venv_script_ignores_a_relative_xdg_data_home_too(tmp_path):
    """The script that makes (and first runs) the venv agrees with venv_home: with a relative XDG_DATA_HOME it used
    the venv below the current directory, and ran its bin/python (someone else's, in a directory they can write)."""
    version = (ROOT / "pcluster_version.txt").read_text().strip()
    package = tmp_path / "site-packages" / "pcluster_ad"
    (package / "tools").mkdir(parents=True)
    for name in ("tools/pcluster_venv.sh", "tools/pcluster-venv.lock", "pcluster_version.txt"):
        (package / name).write_bytes((ROOT / name).read_bytes())
    marker = tmp_path / "ran-as-the-operator"
    cwd, home, bin_dir = tmp_path / "cwd", tmp_path / "home", tmp_path / "bin"

    def fake_venv(where: Path, python: str) -> None:
        (where / "bin").mkdir(parents=True)
        for name, text in (("python", python), ("pcluster", "#!/bin/sh\nexit 0\n")):
            (where / "bin" / name).write_text(text)
            (where / "bin" / name).chmod(0o755)
        (where / ".pcluster-ad-lock").write_bytes((ROOT / "tools" / "pcluster-venv.lock").read_bytes())

    answer = f"cat >/dev/null\necho {version}\n"  # the version check reads its script on stdin
    fake_venv(home / ".local" / "share" / "pcluster-ad" / ".venv-pcluster", f"#!/bin/sh\n{answer}")
    fake_venv(cwd / "rel" / "pcluster-ad" / ".venv-pcluster", f"#!/bin/sh\ntouch {marker}\n{answer}")
    bin_dir.mkdir()
    (bin_dir / "node").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "node").chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(home), "XDG_DATA_HOME": "rel",
           "PCLUSTER_AD_PYTHON": "/nonexistent/python3"}
    proc = subprocess.run(["bash", str(package / "tools" / "pcluster_venv.sh")], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert not marker.exists(), "the venv below the current directory was run"
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(home / ".local" / "share" / "pcluster-ad" / ".venv-pcluster" / "bin" / "pcluster")


# Sanity: what the review compared (not findings) -----------------------------------------------------------------


def test_checkout_program_dir_is_the_checkout():
    assert automation.program_dir(Path("/nonexistent")) == automation.ROOT == ROOT
    assert sys.executable  # the wrapper execs it; empty in embedded interpreters (then no installed-package mode)


# F6 ------------------------------------------------------------------------------------------------------------


def test_f6_a_wheel_built_from_a_working_checkout_carries_only_the_packages_files(tmp_path):
    """F6 (low). The README builds the wheel from the checkout; a working one holds files of the user's own: a
    script beside the modules (the README's embed.py, a helper with a secret), notes in bootstrap/, a facts file in
    tools/. Today every top-level *.py, everything in bootstrap/ and every tools/*.json, *.sh, *.lock rides along."""
    source = copy_checkout(tmp_path / "src" / "pcluster-ad")
    (source / "embed_helper.py").write_text('PASSWORD = "not-for-a-wheel"\n')
    (source / "bootstrap" / "notes.txt").write_text("the lab's admin password is ...\n")
    (source / "tools" / "facts.json").write_text('{"account": "123456789012"}\n')
    (source / "Pulumi.mine.yaml").write_text("config: {}\n")
    out = tmp_path / "wheel"
    proc = run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
                "-w", str(out), str(source)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (built,) = out.glob("pcluster_ad-*.whl")
    names = set(zipfile.ZipFile(built).namelist())
    leaked = {n for n in names if any(s in n for s in ("embed_helper", "notes.txt", "facts.json", "Pulumi.", "setup"))}
    assert leaked == set()
    assert "pcluster_ad/__init__.py" in names  # F3: a regular package
