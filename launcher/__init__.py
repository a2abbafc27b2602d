"""`python -m launcher create|update|delete`: drives the ParallelCluster 3 CLI for the ClusterLauncher resource.

See docs/design.md ("Launcher") and launcher/core.py.
"""

from pcluster_ad.launcher.core import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_SETUP,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    Launcher,
    LauncherError,
    PclusterResult,
    resolve_pcluster,
    subprocess_runner,
)

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_SETUP",
    "EXIT_TIMEOUT",
    "EXIT_USAGE",
    "Launcher",
    "LauncherError",
    "PclusterResult",
    "resolve_pcluster",
    "subprocess_runner",
]
