"""join-domain.sh --computer-ou / --computer-prefix: refused when malformed, before anything else runs.
(The AD lab runs the script with both against a real DC: tests/adlab/test_directory_admin.py.)"""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import ROOT

SCRIPT = ROOT / "bootstrap" / "join-domain.sh"
BASE = ["--function-url", "https://abc.lambda-url.eu-west-1.on.aws/", "--region", "eu-west-1"]


@pytest.mark.parametrize("args,message", [
    (["--computer-prefix", "1AB"], "--computer-prefix must be 1-6 upper-case letters or digits"),
    (["--computer-prefix", "ABCDEFG"], "--computer-prefix must be"),
    (["--computer-prefix", "ab"], "--computer-prefix must be"),
    (["--computer-ou", "CN=Computers,DC=test,DC=domain"], "--computer-ou must be a DN of OU=... and DC=... parts"),
    (["--computer-ou", "OU=Computers"], "--computer-ou must be a DN"),
    (["--computer-ou"], "argument --computer-ou requires a value"),
])
def test_malformed_values_are_usage_errors(args, message):
    res = subprocess.run(["bash", str(SCRIPT), *BASE, *args], capture_output=True, text=True, timeout=30,
                         env={"PATH": "/usr/bin:/bin", "PCLUSTER_AD_LOG": "/dev/null"})
    assert res.returncode == 2 and message in res.stderr, (res.returncode, res.stderr)


def test_usage_documents_both_options():
    res = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0
    assert "--computer-ou DN" in res.stdout and "--computer-prefix" in res.stdout
