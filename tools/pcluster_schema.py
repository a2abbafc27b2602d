"""Offline ParallelCluster 3 schema check, callable from the project venv.

    from pcluster_ad.tools.pcluster_schema import validate, validate_many
    errors = validate(yaml_text, cluster_name="pcluster-ad-dev", region="us-east-1")   # [] when valid
    per_config = validate_many([(yaml_text, "pcluster-ad-dev", "us-east-1"), ...])     # one subprocess

ParallelCluster cannot live in the project venv (it pins packaging~=25.0, pulumi needs >=26), so this runs
tools/validate_cluster_config.py with the ParallelCluster venv's python as a subprocess, creating that venv
with tools/pcluster_venv.sh on first use. No AWS calls are made. A call costs about a second (interpreter
start plus importing pcluster, ~0.4-1 s); each further config in validate_many about 20 ms. The first call
may also spend ~40 s creating the venv.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from pcluster_ad.launcher.core import venv_home

ROOT = Path(__file__).resolve().parent.parent
VALIDATOR = ROOT / "tools" / "validate_cluster_config.py"
VENV_SCRIPT = ROOT / "tools" / "pcluster_venv.sh"
PCLUSTER_VERSION = (ROOT / "pcluster_version.txt").read_text(encoding="utf-8").strip()


class SchemaToolError(RuntimeError):
    """The validator could not run (venv missing and not creatable, crash); not a config error."""


def venv_dir() -> Path:
    return Path(os.environ.get("PCLUSTER_AD_PCLUSTER_VENV") or venv_home(os.environ, ROOT) / ".venv-pcluster")


def pcluster_python() -> Path:
    """The ParallelCluster venv's interpreter; runs tools/pcluster_venv.sh when it is missing or not the pin."""
    python = venv_dir() / "bin" / "python"
    pinned = list(venv_dir().glob(f"lib/python3*/site-packages/aws_parallelcluster-{PCLUSTER_VERSION}.dist-info"))
    if (venv_dir() / "bin" / "pcluster").exists() and python.exists() and pinned:
        return python
    proc = subprocess.run(
        ["bash", str(VENV_SCRIPT), PCLUSTER_VERSION],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0 or not python.exists():
        raise SchemaToolError(f"tools/pcluster_venv.sh failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return python


def validate(yaml_text: str, cluster_name: str, region: str, *, timeout: float = 120) -> list[str]:
    """Schema errors of a cluster config as 'Path.To[0].Field: message' lines; [] when it is valid."""
    return validate_many([(yaml_text, cluster_name, region)], timeout=timeout)[0]


def validate_many(configs: list[tuple[str, str, str]], *, timeout: float = 300) -> list[list[str]]:
    """validate() for several (yaml_text, cluster_name, region) at once, in one subprocess."""
    items = [{"text": text, "cluster_name": name, "region": region} for text, name, region in configs]
    proc = subprocess.run(
        [str(pcluster_python()), str(VALIDATOR), "--batch"],
        input=json.dumps(items),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "AWS_EC2_METADATA_DISABLED": "true"},
    )
    if proc.returncode not in (0, 1):
        raise SchemaToolError(f"validate_cluster_config.py exit {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    try:
        results = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise SchemaToolError(f"validate_cluster_config.py printed no JSON: {proc.stdout!r} {proc.stderr!r}") from None
    if not isinstance(results, list) or len(results) != len(items):
        raise SchemaToolError(f"validate_cluster_config.py answered {len(results)} results for {len(items)} configs")
    return [list(errors) for errors in results]


FULL_VALIDATOR = ROOT / "tools" / "validate_cluster_full.py"


def full_validation_python() -> Path:
    """The ParallelCluster venv's interpreter with moto in it (tools/pcluster_venv.sh --with-moto)."""
    python = pcluster_python()
    if list(venv_dir().glob("lib/python3*/site-packages/moto-5.2.5.dist-info")):  # tools/pcluster_venv.sh pin
        return python
    proc = subprocess.run(["bash", str(VENV_SCRIPT), "--with-moto", PCLUSTER_VERSION], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SchemaToolError(f"tools/pcluster_venv.sh --with-moto failed (exit {proc.returncode}): "
                              f"{proc.stderr.strip()[-2000:]}")
    return python


def validate_full(plan_dir: Path, cluster_name: str, *, timeout: float = 300, python: Path | None = None) -> dict:
    """ParallelCluster's full create validation of a `tools.plan` output directory, in a moto world built
    from the plan (tools/validate_cluster_full.py): {"ok", "failures": [{level, type, message}], "seconds",
    "ids", "blocked_network", "not_checked"}. `python`: the ParallelCluster venv's interpreter to run it with
    (tools/full_validation.py: the stack's version, never installed); default full_validation_python()."""
    proc = subprocess.run(
        [str(python or full_validation_python()), str(FULL_VALIDATOR), str(plan_dir), "--cluster-name", cluster_name,
         "--json"],
        capture_output=True, text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if not k.startswith("AWS_")},  # never a real account
    )
    if proc.returncode not in (0, 1):
        raise SchemaToolError(f"validate_cluster_full.py exit {proc.returncode}: {proc.stderr.strip()[-3000:]}")
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise SchemaToolError(f"validate_cluster_full.py printed no JSON: {proc.stdout!r} {proc.stderr!r}") from None
