"""Command line of the launcher (contract: docs/design.md, "Launcher").

    python -m launcher create|update|delete --cluster-name NAME --region REGION
        [--config-file PATH|-] [--timeout SECONDS] [--poll-seconds N]

create/update read the cluster config from --config-file (default "-": stdin). Progress goes to stderr;
the last stdout line is JSON: {"clusterName", "status", "headNodePublicIp", "headNodePrivateIp",
"loginNodesAddress", "headNodeInstanceId", "pclusterVersion", "clusterLogGroup"}.
Exit codes: 0 done, 1 failed (pcluster refused, cluster *_FAILED), 2 usage/bad input, 3 timeout,
4 no usable pcluster (venv creation failed, Node.js missing) or no AWS credentials, 130 interrupted (SIGINT/SIGTERM).
Environment: PCLUSTER_AD_PCLUSTER (pcluster executable to use), PCLUSTER_AD_PCLUSTER_VENV (venv location),
PCLUSTER_AD_ROLLBACK_ON_FAILURE (true|false, default false).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import TextIO

from pcluster_ad.launcher.core import (
    DEFAULT_POLL,
    DEFAULT_TIMEOUT,
    EXIT_INTERRUPTED,
    EXIT_OK,
    Launcher,
    LauncherError,
    PclusterResult,
    Runner,
    UsageError,
    private_config_file,
    resolve_pcluster,
    subprocess_runner,
)

CLUSTER_NAME_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9-]{1,59}$")


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m launcher",
        description="Create, update or delete a ParallelCluster 3 cluster through the pcluster CLI.",
        epilog="Exit codes: 0 done, 1 failed, 2 usage, 3 timeout, 4 pcluster or AWS credentials unavailable, "
        "130 interrupted.",
    )
    parser.add_argument("command", choices=["create", "update", "delete"])
    parser.add_argument("--cluster-name", required=True, help="^[a-zA-Z][a-zA-Z0-9-]+$, at most 60 characters")
    parser.add_argument("--region", required=True)
    parser.add_argument("--config-file", default="-", help="cluster config YAML; '-' (default) reads stdin")
    parser.add_argument("--timeout", type=_positive, default=DEFAULT_TIMEOUT, help="overall seconds (3600)")
    parser.add_argument("--poll-seconds", type=_positive, default=DEFAULT_POLL, help="describe interval (30)")
    return parser


class _LazyRunner:
    """Resolves the pcluster executable (never installs it) only when a call is made."""

    def __init__(self, env, log: Callable[[str], None]):
        self._env = env
        self._log = log
        self._run: Runner | None = None

    def __call__(self, args: Sequence[str], timeout: float | None = None) -> PclusterResult:
        if self._run is None:
            self._run = subprocess_runner(resolve_pcluster(self._env, log=self._log))
        return self._run(args, timeout)


class _Terminated(BaseException):
    pass


def _on_sigterm(signum, frame):  # pragma: no cover - exercised through a real subprocess
    raise _Terminated()


def _read_config(path: str, stdin: TextIO) -> str:
    try:
        if path == "-":
            text = stdin.read()
        else:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
    except OSError as exc:
        raise UsageError(f"cannot read the cluster config {path}: {exc.strerror}") from None
    if not text.strip():
        source = "stdin" if path == "-" else path
        raise UsageError(f"the cluster config from {source} is empty")
    return text


def main(
    argv: Sequence[str] | None = None,
    *,
    runner: Runner | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    env: dict | None = None,
    install_signal_handlers: bool = False,
    fetch: Callable[[str], str] | None = None,
) -> int:
    stdin = stdin if stdin is not None else sys.stdin
    stdout = stdout if stdout is not None else sys.stdout
    stderr = stderr if stderr is not None else sys.stderr
    env = dict(os.environ if env is None else env)

    parser = build_parser()
    args = parser.parse_args(argv)
    if not CLUSTER_NAME_RE.match(args.cluster_name):
        parser.error(
            f"--cluster-name {args.cluster_name!r} must match ^[a-zA-Z][a-zA-Z0-9-]+$ and be at most 60 characters"
        )
    if install_signal_handlers:
        signal.signal(signal.SIGTERM, _on_sigterm)

    rollback = env.get("PCLUSTER_AD_ROLLBACK_ON_FAILURE", "false").strip().lower() in ("1", "true", "yes")
    if runner is None:
        runner = _LazyRunner(env, lambda message: launcher.log(message))
    launcher = Launcher(
        args.cluster_name,
        args.region,
        runner,
        clock=clock,
        sleep=sleep,
        err=stderr,
        timeout=args.timeout,
        poll_seconds=args.poll_seconds,
        rollback_on_failure=rollback,
        **({"fetch": fetch} if fetch is not None else {}),
    )

    code = EXIT_OK
    try:
        if args.command == "delete":
            launcher.delete()
        else:
            text = _read_config(args.config_file, stdin)
            with private_config_file(text) as path:
                getattr(launcher, args.command)(path)
        launcher.log(f"{args.command} done")
    except LauncherError as exc:
        launcher.log(f"ERROR: {exc}")
        code = exc.exit_code
    except (KeyboardInterrupt, _Terminated):
        launcher.log("interrupted; the operation may continue in AWS (re-run the same command to resume waiting)")
        code = EXIT_INTERRUPTED
    print(json.dumps(launcher.summary()), file=stdout, flush=True)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(install_signal_handlers=True))
