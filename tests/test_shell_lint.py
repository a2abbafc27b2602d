"""Every shell script in the repository is shellcheck clean."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

SCRIPTS = sorted({*ROOT.glob("bootstrap/*.sh"), *ROOT.glob("scripts/*.sh"), *ROOT.glob("tools/*.sh"),
                  *ROOT.glob("tests/**/*.sh"), *ROOT.glob("bench/*.sh"), ROOT / ".ci" / "run"})


def shellcheck() -> str:
    return shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")


def test_all_shell_scripts_are_shellcheck_clean():
    assert len(SCRIPTS) >= 6
    result = subprocess.run([shellcheck(), "-x", *map(str, SCRIPTS)], cwd=ROOT, capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr
