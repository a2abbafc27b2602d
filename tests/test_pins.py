"""One ParallelCluster version (pcluster_version.txt) and hash-checked locks that agree with the top-level pins.

When a test here fails after a pin changed: run `bash tools/lock.sh` and commit the lock files."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from tests.conftest import ROOT

VERSION = (ROOT / "pcluster_version.txt").read_text().strip()
LOCKS = {
    "requirements.lock": ["requirements.txt"],
    "requirements-dev.lock": ["requirements.txt", "requirements-dev.txt"],
    "tools/pcluster-venv.lock": [],
    "tools/pcluster-venv-moto.lock": [],
}
_PIN_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)", re.M)


def pins(path: str) -> dict[str, str]:
    text = (ROOT / path).read_text()
    return {re.sub(r"[-_.]+", "-", name).lower(): version for name, version in _PIN_RE.findall(text)}


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return [name for name in out.split("\0") if name and (ROOT / name).is_file()]


def test_the_pcluster_version_is_written_once():
    """Code reads pcluster_version.txt; only tests, docs, the generated locks and snapshot may name the version."""
    assert re.fullmatch(r"\d+\.\d+\.\d+", VERSION)
    allowed = re.compile(r"^(pcluster_version\.txt|tests/.*|.*\.md|.*\.lock|tools/update_policy\.json)$")
    stray = []
    for name in tracked_files():
        if allowed.match(name):
            continue
        try:
            text = (ROOT / name).read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        stray += [f"{name}:{n}" for n, line in enumerate(text.splitlines(), 1) if VERSION in line]
    assert stray == [], f"ParallelCluster {VERSION} written outside pcluster_version.txt: {stray}"


def test_generated_files_name_the_current_version():
    snapshot = json.loads((ROOT / "tools" / "update_policy.json").read_text())
    assert snapshot["pclusterVersion"] == VERSION, "regenerate it: tools/update_policy_snapshot.py"
    readme = (ROOT / "README.md").read_text()
    assert set(re.findall(r"aws-parallelcluster==(\d+\.\d+\.\d+)", readme)) <= {VERSION}


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_every_lock_entry_is_pinned_and_hashed(lock):
    text = (ROOT / lock).read_text()
    entries = re.split(r"\n(?=[A-Za-z0-9])", text[text.index("\n") + 1:].strip())
    assert entries
    for entry in entries:
        assert _PIN_RE.match(entry), f"{lock}: not an exact pin: {entry[:80]}"
        assert "--hash=sha256:" in entry, f"{lock}: no hash for {entry.split()[0]}"


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_locks_agree_with_the_top_level_pins(lock):
    locked = pins(lock)
    for source in LOCKS[lock]:
        for name, version in pins(source).items():
            assert locked.get(name) == version, f"{source} pins {name}=={version}, {lock} has {locked.get(name)}:" \
                                                " run bash tools/lock.sh"


def test_the_pcluster_locks_pin_this_version_and_agree():
    plain, moto = pins("tools/pcluster-venv.lock"), pins("tools/pcluster-venv-moto.lock")
    assert plain["aws-parallelcluster"] == moto["aws-parallelcluster"] == VERSION
    motoversion = re.search(r'^readonly MOTO_VERSION="([^"]+)"', (ROOT / "tools" / "pcluster_venv.sh").read_text(),
                            re.M).group(1)
    assert moto["moto"] == motoversion
    assert {k: moto[k] for k in plain} == plain  # the moto lock only adds


def test_dev_lock_keeps_the_runtime_lock_versions():
    runtime, dev = pins("requirements.lock"), pins("requirements-dev.lock")
    assert {k: dev.get(k) for k in runtime} == runtime


def test_installs_use_the_locks_with_hashes():
    lib = (ROOT / "scripts" / "lib.sh").read_text()
    assert "--require-hashes" in lib
    assert "ensure_venv requirements.lock" in (ROOT / "scripts" / "deploy.sh").read_text()
    assert "ensure_venv requirements-dev.lock" in (ROOT / "scripts" / "test.sh").read_text()
    assert '--require-hashes -r "$lock"' in (ROOT / "tools" / "pcluster_venv.sh").read_text()
