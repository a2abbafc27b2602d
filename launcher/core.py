"""Drive the ParallelCluster 3 `pcluster` CLI for the ClusterLauncher Command resource.

`Launcher` implements create / update / delete on top of an injected pcluster runner, clock and sleep,
so the waiting logic is testable without AWS and without real time passing. See docs/design.md
("Launcher") for the command-line contract and launcher/cli.py for the entry point.

Decisions:
- create on an existing cluster: CREATE_COMPLETE / UPDATE_COMPLETE / UPDATE_FAILED (stack rolled back,
  cluster usable) is adopted and then converged to the given config through the update path, so a
  re-run create leaves the cluster matching the config (a no-change update is success). *_IN_PROGRESS
  is waited for first; CREATE_FAILED / DELETE_FAILED stop with an error naming the delete command.
- create-cluster runs with `--rollback-on-failure false` (override: PCLUSTER_AD_ROLLBACK_ON_FAILURE=true):
  a failed cluster must be deleted before a retry either way (a rolled-back stack is still CREATE_FAILED),
  and keeping the head node lets the operator read the custom-action (AD join) logs. pcluster reports
  CREATE_FAILED as soon as the rollback STARTS: the launcher waits until the CloudFormation stack settles.
- update refusals are judged per field: the compute fleet is stopped (and started again) only when every
  refusal is one a fleet stop fixes; a field ParallelCluster cannot change in place fails at once, naming
  the fields (they need a new cluster: Pulumi replaces it for such changes, see update_policy.py).
- a compute fleet in PROTECTED (ParallelCluster stopped launching nodes after repeated bootstrap
  failures) or UNKNOWN state is reported and never stopped or started: a start would clear PROTECTED.
- an update refused because login nodes run in a pool (LoginNodes.Pools[] settings other than Count): the
  launcher does what ParallelCluster asks, on the CURRENT config (describe-cluster's clusterConfiguration):
  that pool's Count 0, update, wait until the pool has no node, then applies the given config.
- missing or invalid AWS credentials fail at once (exit 4), without retries.
- after a create or update, list-cluster-log-streams names the cluster's CloudWatch log group (describe-cluster
  does not) for the final line; a failure there only leaves that field empty.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

PROGRESS_SECONDS = 30.0
DEFAULT_TIMEOUT = 3600.0
DEFAULT_POLL = 30.0
MAX_DESCRIBE_ERRORS = 5
REPO_DIR = Path(__file__).resolve().parent.parent
PCLUSTER_VERSION = (REPO_DIR / "pcluster_version.txt").read_text(encoding="utf-8").strip()


def is_checkout(repo_dir: Path = REPO_DIR) -> bool:
    """The package runs from a checkout (pcluster_ad/ is the checkout's stand-in for the package), not from an
    installed wheel."""
    return (repo_dir / "pcluster_ad" / "__init__.py").is_file()


def venv_home(env: Mapping[str, str], repo_dir: Path = REPO_DIR) -> Path:
    """Where the ParallelCluster venvs live by default: beside the code in a checkout (.venv-pcluster); for an
    installed package (a wheel in site-packages) in the user's data directory, never inside site-packages."""
    if is_checkout(repo_dir):
        return repo_dir
    data = env.get("XDG_DATA_HOME") or ""
    if not Path(data).is_absolute():  # the XDG base directory spec: a relative path is invalid, to be ignored
        data = str(Path(env.get("HOME") or Path.home()) / ".local" / "share")
    return Path(data) / "pcluster-ad"

# Exit codes of `python -m launcher`.
EXIT_OK = 0
EXIT_FAILED = 1  # pcluster refused the request, or the cluster ended in a *_FAILED state
EXIT_USAGE = 2  # bad arguments or unusable config input
EXIT_TIMEOUT = 3  # --timeout elapsed before the cluster reached a final state
EXIT_SETUP = 4  # no usable pcluster executable (venv creation failed, Node.js missing), no AWS credentials
EXIT_INTERRUPTED = 130

STABLE_OK = {"CREATE_COMPLETE", "UPDATE_COMPLETE"}
IN_PROGRESS = {"CREATE_IN_PROGRESS", "UPDATE_IN_PROGRESS", "DELETE_IN_PROGRESS"}

_NO_NODE_RE = re.compile(r"unable to find node executable", re.IGNORECASE)
_NO_CREDENTIALS_RE = re.compile(
    r"unable to locate credentials|security token included in the request is (invalid|expired)"
    r"|ExpiredToken|InvalidClientTokenId|credentials? (have|has) expired",
    re.IGNORECASE,
)
_OTHER_VERSION_RE = re.compile(r"only with the same ParallelCluster version \(([^)]*)\)", re.IGNORECASE)
# Fleet states the launcher must not stop/start its way out of (a START_REQUESTED clears PROTECTED).
_FLEET_NEEDS_OPERATOR = {
    "PROTECTED": "ParallelCluster stopped launching compute nodes after repeated bootstrap failures "
    "(see the node logs: pcluster list-cluster-log-streams, /var/log/parallelcluster/ and "
    "/var/log/pcluster-ad/join-domain.log on a failed node); fix the cause, then start the fleet with "
    "`pcluster update-compute-fleet -n {name} -r {region} --status START_REQUESTED` and re-run",
    "UNKNOWN": "ParallelCluster cannot tell the compute fleet's state (its status table is unreadable); check "
    "`pcluster describe-compute-fleet -n {name} -r {region}` and the head node, then re-run",
}
_NO_CHANGES_RE = re.compile(r"no changes found", re.IGNORECASE)
# A log stream's ARN (CloudWatch Logs DescribeLogStreams `arn`); group names hold no ':'.
_LOG_STREAM_ARN_RE = re.compile(r"^arn:[^:]+:logs:[^:]*:[^:]*:log-group:(?P<group>[^:]+):log-stream:")
_FLEET_STOP_RE = re.compile(r"stop the compute fleet|compute nodes must be stopped", re.IGNORECASE)
# Update errors that stopping the compute fleet alone does not fix.
_NOT_FLEET_FIXABLE_RE = re.compile(r"login nodes|--force-update|head node must be", re.IGNORECASE)
# ParallelCluster's "needs a new cluster" refusals (pcluster/config/update_policy.py fail reasons).
_UNSUPPORTED_RE = re.compile(
    r"not currently supported|Update currently not supported|read only parameter|cannot be changed during an "
    r"update|head node must be in a stopped state|creating a new cluster",
    re.IGNORECASE,
)


# LOGIN_NODES_POOL_STOP / LOGIN_NODES_STOP refusals (pcluster/config/update_policy.py FAIL_REASONS). The combined
# "compute or login nodes" one (COMPUTE_AND_LOGIN_NODES_STOP) cannot come from this product's changes: no field it
# renders carries that policy (tests/test_update_policy.py); from anyone else's it is reported, not fixed.
_LOGIN_STOP_RE = re.compile(r"not supported when login nodes (?:in (?P<pool>\S+) )?are running", re.IGNORECASE)


def _login_pools_to_stop(errors: list) -> set[str] | None:
    """The pools whose stop fixes these refusals ("*": every pool), when every refusal is fixed by stopping login
    pools or the compute fleet and at least one needs a pool stopped; else None."""
    pools: set[str] = set()
    for error in errors:
        message = str(error.get("message") or "")
        m = _LOGIN_STOP_RE.search(message)
        if m:
            pools.add(m.group("pool") or "*")
        elif not _is_fleet_fixable(message):
            return None
    return pools or None


def fetch_https(url: str, timeout: float = 60.0) -> str:
    """GET a presigned https URL (describe-cluster's clusterConfiguration.url)."""
    if not url.startswith("https://"):
        raise LauncherError(f"refusing to fetch the cluster configuration from a non-https URL: {url!r}")
    with urllib.request.urlopen(url, timeout=timeout) as answer:  # https only, checked above
        return answer.read().decode("utf-8")


def _is_fleet_fixable(message: str) -> bool:
    return bool(_FLEET_STOP_RE.search(message)) and not _NOT_FLEET_FIXABLE_RE.search(message)


class LauncherError(Exception):
    """A failure the launcher reports and turns into an exit code."""

    exit_code = EXIT_FAILED


class LauncherTimeout(LauncherError):
    exit_code = EXIT_TIMEOUT


class SetupError(LauncherError):
    exit_code = EXIT_SETUP


class UsageError(LauncherError):
    exit_code = EXIT_USAGE


@dataclass
class PclusterResult:
    returncode: int
    stdout: str
    stderr: str = ""

    @property
    def data(self) -> dict:
        """The JSON object pcluster printed, or {} when stdout is not JSON."""
        try:
            value = json.loads(self.stdout) if self.stdout.strip() else {}
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}

    @property
    def message(self) -> str:
        msg = self.data.get("message")
        if msg:
            return str(msg)
        tail = (self.stderr or self.stdout).strip().splitlines()[-3:]
        if tail:
            return " | ".join(tail)
        return "pcluster failed without output (see ~/.parallelcluster/pcluster-cli.log)"


# runner(args, timeout) runs `pcluster *args` and returns its result; timeout in seconds or None.
Runner = Callable[[Sequence[str], "float | None"], PclusterResult]


def subprocess_runner(executable: str | os.PathLike) -> Runner:
    """The real runner: `executable *args` as a subprocess, stdout/stderr captured, no stdin."""

    def run(args: Sequence[str], timeout: float | None = None) -> PclusterResult:
        try:
            proc = subprocess.run(
                [os.fspath(executable), *args],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise LauncherTimeout(f"pcluster {args[0]} did not return within {timeout:.0f} s") from exc
        except OSError as exc:
            raise SetupError(f"cannot run {executable}: {exc}") from exc
        return PclusterResult(proc.returncode, proc.stdout, proc.stderr)

    return run


def resolve_pcluster(
    env: dict | None = None,
    repo_dir: Path = REPO_DIR,
    log: Callable[[str], None] = lambda _m: None,
) -> str:
    """Path of the pcluster executable: $PCLUSTER_AD_PCLUSTER, else the pinned venv.

    The version is $PCLUSTER_AD_PCLUSTER_VERSION (the stack's `cluster.pclusterVersion`), default
    PCLUSTER_VERSION; a non-default version gets its own venv, `.venv-pcluster-<version>`. Nothing is installed
    here: a deployment must not pip-install (unreviewed code, network, minutes inside `pulumi up`), so a missing
    or wrong venv is a SetupError naming the setup command (scripts/deploy.sh runs it before `pulumi up`)."""
    env = os.environ if env is None else env
    explicit = env.get("PCLUSTER_AD_PCLUSTER")
    if explicit:
        if not (os.path.isfile(explicit) and os.access(explicit, os.X_OK)):
            raise SetupError(f"PCLUSTER_AD_PCLUSTER={explicit} is not an executable file")
        return explicit
    version = env.get("PCLUSTER_AD_PCLUSTER_VERSION") or PCLUSTER_VERSION
    if not re.fullmatch(r"\d+\.\d+\.\d+", version):
        raise SetupError(f"PCLUSTER_AD_PCLUSTER_VERSION={version!r} is not a version such as {PCLUSTER_VERSION}")
    default_venv = ".venv-pcluster" if version == PCLUSTER_VERSION else f".venv-pcluster-{version}"
    venv = Path(env.get("PCLUSTER_AD_PCLUSTER_VENV") or venv_home(env, repo_dir) / default_venv)
    pcluster = venv / "bin" / "pcluster"
    pinned = list(venv.glob(f"lib/python3*/site-packages/aws_parallelcluster-{version}.dist-info"))
    if os.access(pcluster, os.X_OK) and pinned:
        return str(pcluster)
    what = f"is not aws-parallelcluster {version}" if os.access(pcluster, os.X_OK) else "is missing"
    command = f"bash {repo_dir / 'tools' / 'pcluster_venv.sh'}"
    if version != PCLUSTER_VERSION or env.get("PCLUSTER_AD_PCLUSTER_VENV") or venv_home(env, repo_dir) != repo_dir:
        command = f"PCLUSTER_AD_PCLUSTER_VENV={venv} {command} {version}"
    raise SetupError(f"{pcluster} {what}; the launcher does not install anything during a deployment: run"
                     f" `{command}` (scripts/deploy.sh does this before `pulumi up`), then run the deployment again")


@contextlib.contextmanager
def private_config_file(text: str) -> Iterator[str]:
    """Write the config to a 0600 file in a fresh 0700 directory; remove both on exit, even on error."""
    directory = tempfile.mkdtemp(prefix="pcluster-ad-")
    try:
        path = os.path.join(directory, "cluster-config.yaml")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        yield path
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    minutes, secs = divmod(seconds, 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def stack_status(info: dict) -> str | None:
    """The CloudFormation stack status: describe-cluster spells it cloudFormationStackStatus, create-cluster
    and update-cluster cloudformationStackStatus."""
    return info.get("cloudFormationStackStatus") or info.get("cloudformationStackStatus")


def stack_settled(info: dict) -> bool:
    return not (stack_status(info) or "").endswith("_IN_PROGRESS")


def is_not_found(result: PclusterResult, cluster_name: str) -> bool:
    """pcluster's NotFound answer: "Cluster 'NAME' does not exist or belongs to an incompatible ..." (not, say,
    "Invalid cluster configuration: The subnet ID '...' does not exist")."""
    pattern = rf"\bcluster '?{re.escape(cluster_name)}'? does not exist"
    return result.returncode != 0 and re.search(pattern, result.message, re.IGNORECASE) is not None


class Launcher:
    """create / update / delete one cluster through the pcluster CLI. Progress goes to `err`."""

    def __init__(
        self,
        cluster_name: str,
        region: str,
        run: Runner,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        err: TextIO | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        poll_seconds: float = DEFAULT_POLL,
        progress_seconds: float = PROGRESS_SECONDS,
        rollback_on_failure: bool = False,
        fetch: Callable[[str], str] = fetch_https,
    ):
        self.name = cluster_name
        self.region = region
        self._run = run
        self._clock = clock
        self._sleep = sleep
        self._err = err if err is not None else sys.stderr
        self.timeout = float(timeout)
        self.poll = max(0.001, float(poll_seconds))
        self.progress_seconds = float(progress_seconds)
        self.rollback_on_failure = rollback_on_failure
        self._fetch = fetch
        self._start = clock()
        self._deadline = self._start + self.timeout
        self.last: dict = {}  # last describe-cluster answer
        self.deleted = False
        self.log_group: str | None = None  # the cluster's CloudWatch log group (find_log_group)

    # ----------------------------------------------------------------- output
    def log(self, message: str) -> None:
        elapsed = format_duration(self._clock() - self._start)
        print(f"launcher [{elapsed}] {self.name}: {message}", file=self._err, flush=True)

    def summary(self) -> dict:
        """The final JSON line's object."""
        if self.deleted:
            return {"clusterName": self.name, "status": "DELETED", "headNodePublicIp": None, "headNodePrivateIp": None,
                    "loginNodesAddress": None, "headNodeInstanceId": None, "pclusterVersion": None,
                    "clusterLogGroup": None}
        head = self.last.get("headNode") or {}
        # Users log in through the login pool's load balancer when there is one.
        login = [p.get("address") for p in self.last.get("loginNodes") or [] if p.get("address")]
        return {
            "clusterName": self.name,
            "status": self.last.get("clusterStatus"),
            "headNodePublicIp": head.get("publicIpAddress"),
            "headNodePrivateIp": head.get("privateIpAddress"),
            "loginNodesAddress": login[0] if login else None,
            "headNodeInstanceId": head.get("instanceId"),
            "pclusterVersion": self.last.get("version"),  # the version the cluster was created with
            "clusterLogGroup": self.log_group,
        }

    def find_log_group(self) -> None:
        """The cluster's CloudWatch log group, `/aws/parallelcluster/<cluster>-<UTC minute of its creation>`.
        describe-cluster does not give it (ParallelCluster keeps it in its stack's ClusterCWLogGroup parameter);
        list-cluster-log-streams does, in each stream's ARN. Never fails the operation: without CloudWatch logging,
        with no stream yet or on an error, the output stays empty and a line says where to look."""
        try:
            result = self.pcluster("list-cluster-log-streams", "-n", self.name)
        except LauncherError as exc:
            result = PclusterResult(1, "", str(exc))
        if result.returncode == 0:
            for stream in result.data.get("logStreams") or []:
                m = _LOG_STREAM_ARN_RE.match(str(stream.get("logStreamArn") or ""))
                if m:
                    self.log_group = m["group"]
                    return
            why = "the cluster has no CloudWatch log stream yet (or CloudWatch logging is off)"
        else:
            why = f"list-cluster-log-streams failed: {result.message}"
        self.log(f"clusterLogGroup left empty: {why}; `pcluster list-cluster-log-streams -n {self.name} -r "
                 f"{self.region}` shows the streams and their group later")

    def _report_failure(self, info: dict) -> None:
        self.log(
            f"cluster status {info.get('clusterStatus')}, CloudFormation stack status "
            f"{info.get('cloudFormationStackStatus')}"
        )
        if info.get("failureReason"):
            self.log(f"  reason: {info['failureReason']}")
        for failure in info.get("failures") or []:
            self.log(f"  failure {failure.get('failureCode')}: {failure.get('failureReason')}")
        self.log(
            f"  details: pcluster get-cluster-stack-events -n {self.name} -r {self.region}; "
            "node logs in CloudWatch (pcluster list-cluster-log-streams)"
        )

    def _report_error(self, what: str, result: PclusterResult, headline: bool = True) -> None:
        data = result.data
        if headline:
            self.log(f"{what} failed: {result.message}")
        for item in data.get("configurationValidationErrors") or []:
            self.log(f"  config {item.get('level', '?')} [{item.get('type', '?')}]: {item.get('message')}")
        for item in data.get("updateValidationErrors") or []:
            self.log(
                f"  update refused for {item.get('parameter')}: {item.get('currentValue')} -> "
                f"{item.get('requestedValue')}: {item.get('message')}"
            )
        if data.get("changeSet"):
            self._report_changes(data["changeSet"], "requested changes")
        if result.stderr.strip() and not data:
            for line in result.stderr.strip().splitlines()[-10:]:
                self.log(f"  pcluster: {line}")

    def _report_changes(self, change_set: list, title: str = "changes") -> None:
        self.log(f"{title} ({len(change_set)}):")
        for change in change_set:
            self.log(f"  {change.get('parameter')}: {change.get('currentValue')} -> {change.get('requestedValue')}")

    def _report_validation_messages(self, data: dict) -> None:
        for item in data.get("validationMessages") or []:
            self.log(f"  validation {item.get('level', '?')} [{item.get('type', '?')}]: {item.get('message')}")

    # ----------------------------------------------------------------- pcluster calls
    def _remaining(self) -> float:
        return self._deadline - self._clock()

    def _check_deadline(self, waiting_for: str) -> None:
        if self._remaining() <= 0:
            raise LauncherTimeout(
                f"timed out after {format_duration(self.timeout)} waiting for {waiting_for} "
                f"(last status {self.last.get('clusterStatus')}, CloudFormation "
                f"{self.last.get('cloudFormationStackStatus')}); the operation continues in AWS; "
                "re-run the same command to keep waiting"
            )

    def pcluster(self, *args: str) -> PclusterResult:
        # A single pcluster call may not run past the deadline by more than a grace minute.
        result = self._run([*args, "-r", self.region], max(60.0, self._remaining() + 60.0))
        if result.returncode != 0 and _NO_NODE_RE.search(result.message):
            raise SetupError(f"pcluster {args[0]}: {result.message} (install Node.js 20+ and retry)")
        if result.returncode != 0 and _NO_CREDENTIALS_RE.search(result.message):
            # Retrying cannot help: say so at once.
            raise SetupError(
                f"pcluster {args[0]}: {result.message}: no usable AWS credentials for region {self.region}. "
                "Configure them for the process running Pulumi (AWS_PROFILE, AWS_ACCESS_KEY_ID/"
                "AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN, or `aws sso login`) and retry"
            )
        return result

    def describe(self) -> dict | None:
        """describe-cluster; None when the cluster does not exist. Retries transient errors."""
        errors = 0
        while True:
            result = self.pcluster("describe-cluster", "-n", self.name)
            if result.returncode == 0 and result.data.get("clusterStatus"):
                self.last = result.data
                return result.data
            if is_not_found(result, self.name):
                return None
            errors += 1
            self.log(f"describe-cluster failed ({errors}/{MAX_DESCRIBE_ERRORS}): {result.message}")
            if errors >= MAX_DESCRIBE_ERRORS:
                raise LauncherError(f"describe-cluster keeps failing: {result.message}")
            self._check_deadline("describe-cluster to answer")
            self._sleep(max(0.0, min(self.poll, self.progress_seconds, self._remaining())))

    def _progress(self, info: dict | None) -> str:
        if info is None:
            return "not found"
        head = info.get("headNode") or {}
        text = (
            f"{info.get('clusterStatus')} (CloudFormation {info.get('cloudFormationStackStatus')}, "
            f"compute fleet {info.get('computeFleetStatus')}"
        )
        if head.get("state"):
            text += f", head node {head['state']}"
        return text + f"), elapsed {format_duration(self._clock() - self._start)}"

    def wait(self, done: Callable[[dict | None], bool], waiting_for: str) -> dict | None:
        """Poll describe-cluster until done(info) (info None: the cluster does not exist)."""
        return self._poll(self.describe, done, self._progress, waiting_for)

    def _poll(self, fetch, done, render, waiting_for: str):
        """Call fetch() every poll seconds until done(value); a progress line at least every progress_seconds
        (and on every change); LauncherTimeout at the deadline."""
        last_key = last_print = None
        next_poll = self._clock()
        value = None
        while True:
            if self._clock() >= next_poll:
                value = fetch()
                if done(value):
                    return value
                next_poll = self._clock() + self.poll
            now = self._clock()
            line = render(value)
            key = line.rsplit(", elapsed", 1)[0]
            if last_print is None or key != last_key or now - last_print >= self.progress_seconds:
                self.log(f"waiting for {waiting_for}: {line}")
                last_key, last_print = key, now
            self._check_deadline(waiting_for)
            wake = min(next_poll, last_print + self.progress_seconds, self._deadline)
            self._sleep(max(0.0, wake - self._clock()))

    def _wait_out(self, in_progress: str, complete: str, doing: str) -> dict:
        """Wait while the cluster is `in_progress` and until its CloudFormation stack settles (pcluster says
        CREATE_FAILED while the stack is still ROLLBACK_IN_PROGRESS); its final describe answer, with the
        failures printed when it ended other than `complete`. Raises if the cluster disappeared meanwhile."""
        info = self.wait(
            lambda i: i is None or (i.get("clusterStatus") != in_progress and stack_settled(i)),
            complete,
        )
        if info is None:
            raise LauncherError(f"the cluster disappeared while it was being {doing} (deleted by someone else?)")
        if info.get("clusterStatus") != complete:
            self._report_failure(info)
        return info

    def wait_stable(self, info: dict) -> dict | None:
        """Wait out any *_IN_PROGRESS status, the cluster's or its CloudFormation stack's (a rollback);
        returns the stable describe answer, None if the cluster went away."""
        if info.get("clusterStatus") not in IN_PROGRESS and stack_settled(info):
            return info
        return self.wait(
            lambda i: i is None or (i.get("clusterStatus") not in IN_PROGRESS and stack_settled(i)),
            f"{info.get('clusterStatus')} (CloudFormation {stack_status(info)}) to finish",
        )

    # ----------------------------------------------------------------- commands
    def create(self, config_path: str) -> None:
        self._create(config_path)
        self.find_log_group()

    def update(self, config_path: str) -> None:
        self._update(config_path)
        self.find_log_group()

    def _create(self, config_path: str) -> None:
        info = self.describe()
        if info is not None:
            self.log(f"cluster exists: {self._progress(info)}")
            info = self.wait_stable(info)
        if info is None:
            self._create_new(config_path)
            return
        status = info.get("clusterStatus")
        if status in ("CREATE_FAILED", "DELETE_FAILED"):
            self._report_failure(info)
            raise LauncherError(
                f"an earlier cluster named {self.name} is in {status}; delete it first "
                f"(python -m launcher delete --cluster-name {self.name} --region {self.region}) and retry"
            )
        self.log(f"adopting the existing cluster ({status}) and applying the config to it")
        self._converge(config_path, info)

    def _update(self, config_path: str) -> None:
        info = self.describe()
        if info is not None:
            info = self.wait_stable(info)
        if info is None:
            self.log("cluster does not exist (deleted outside Pulumi?); creating it")
            self._create_new(config_path)
            return
        if info.get("clusterStatus") in ("CREATE_FAILED", "DELETE_FAILED"):
            self._report_failure(info)
            raise LauncherError(
                f"cannot update a cluster in {info.get('clusterStatus')}; delete it "
                f"(python -m launcher delete --cluster-name {self.name} --region {self.region}) and create it again"
            )
        self._converge(config_path, info)

    def delete(self) -> None:
        info = self.describe()
        if info is not None and (info.get("clusterStatus") == "UPDATE_IN_PROGRESS"
                                 or stack_status(info) == "ROLLBACK_IN_PROGRESS"):
            # CloudFormation refuses DeleteStack during an update or a rollback.
            info = self.wait_stable(info)
        if info is None:
            self.log("cluster does not exist; nothing to delete")
            self.deleted = True
            return
        if info.get("clusterStatus") != "DELETE_IN_PROGRESS":
            self.log(f"deleting the cluster ({info.get('clusterStatus')})")
            result = self.pcluster("delete-cluster", "-n", self.name)
            if is_not_found(result, self.name):
                self.log("cluster does not exist; nothing to delete")
                self.deleted = True
                return
            if result.returncode != 0:
                self._report_error("delete-cluster", result, headline=False)
                raise LauncherError(f"delete-cluster failed: {result.message}")
        final = self.wait(lambda i: i is None or i.get("clusterStatus") == "DELETE_FAILED", "the cluster to be deleted")
        if final is not None:
            self._report_failure(final)
            raise LauncherError(
                "deletion failed (DELETE_FAILED); fix the resource CloudFormation could not delete and run delete again"
            )
        self.log("cluster deleted")
        self.deleted = True

    # ----------------------------------------------------------------- helpers
    def _create_new(self, config_path: str) -> None:
        rollback = "true" if self.rollback_on_failure else "false"
        self.log(f"creating the cluster (pcluster create-cluster, rollback-on-failure {rollback})")
        result = self.pcluster("create-cluster", "-n", self.name, "-c", config_path, "--rollback-on-failure", rollback)
        if result.returncode != 0:
            if re.search(rf"\bcluster '?{re.escape(self.name)}'? already exists", result.message, re.IGNORECASE):
                # Lost a race with another create: adopt what is there.
                self.log("create-cluster says the cluster already exists; adopting it")
                info = self.describe()
                if info is not None:
                    info = self.wait_stable(info)
                if info is not None and info.get("clusterStatus") not in ("CREATE_FAILED", "DELETE_FAILED"):
                    self._converge(config_path, info)
                    return
            self._report_error("create-cluster", result, headline=False)
            raise LauncherError(f"create-cluster failed: {result.message}")
        self._report_validation_messages(result.data)
        cluster = result.data.get("cluster") or {}
        self.log(f"create-cluster accepted: stack {cluster.get('cloudformationStackArn')}")
        info = self._wait_out("CREATE_IN_PROGRESS", "CREATE_COMPLETE", "created")
        if info.get("clusterStatus") != "CREATE_COMPLETE":
            raise LauncherError(
                f"cluster creation ended in {info.get('clusterStatus')}; delete it "
                f"(python -m launcher delete --cluster-name {self.name} --region {self.region}) before retrying"
            )
        self.log(f"cluster created: {self._progress(info)}")
        self._warn_fleet_state(info)

    def _converge(self, config_path: str, info: dict, *, pools_stopped: bool = False) -> None:
        """Apply config_path with update-cluster; stop login pools (Count 0) and stop/start the compute fleet
        when the update needs it."""
        if info.get("clusterStatus") == "UPDATE_FAILED":
            self.log("the previous update failed and was rolled back; applying the config again")
        result = self._update_cluster(config_path)
        if result is None:
            return
        if result.returncode != 0:
            pools = _login_pools_to_stop(result.data.get("updateValidationErrors") or [])
            if pools and not pools_stopped:
                self._report_error("update-cluster", result)
                self._stop_login_pools(pools)
                self._converge(config_path, self.last, pools_stopped=True)
                return
            self._refuse_unfixable(result)
            if self._needs_fleet_stop(result):
                self._report_error("update-cluster", result)
                self._update_with_fleet_stopped(config_path)
                return
        self._finish_update(result)

    def _refuse_unfixable(self, result: PclusterResult) -> None:
        """Raise, with a clear message, for update refusals that no fleet stop fixes."""
        version = _OTHER_VERSION_RE.search(result.message)
        if version:
            self.log(f"update-cluster failed: {result.message}")
            raise LauncherError(
                f"the cluster was created with ParallelCluster {version.group(1)} and update-cluster works only "
                "with that version; set pcluster-ad:cluster.pclusterVersion to it, or replace the cluster (a new "
                "pclusterVersion replaces it on `pulumi up`; the /home storage is kept)"
            )
        errors = result.data.get("updateValidationErrors") or []
        blocking = [e for e in errors if not _is_fleet_fixable(str(e.get("message") or ""))]
        if not blocking:
            return
        self._report_error("update-cluster", result, headline=False)
        fields = ", ".join(str(e.get("parameter")) for e in blocking)
        if any(_UNSUPPORTED_RE.search(str(e.get("message") or "")) for e in blocking):
            raise LauncherError(
                f"ParallelCluster cannot change {fields} in place, even with the compute fleet stopped: this "
                "needs a NEW cluster (the compute fleet was left as it is). `pulumi up` replaces the cluster "
                "itself for such changes (update_policy.py); reaching this means the cluster differs from what "
                "this stack last deployed (changed outside Pulumi?). To replace it: python -m launcher delete "
                f"--cluster-name {self.name} --region {self.region}, then `pulumi up` (homes are kept)"
            )
        raise LauncherError(f"update-cluster refused changes to {fields}; see the update errors above")

    def _stop_login_pools(self, pools: set[str]) -> None:
        """ParallelCluster's way to change a login pool: its Count to 0 in the CURRENT config, update, wait until
        the pool has no node. The caller then applies the wanted config (with the wanted Count)."""
        info = self.describe() or {}
        url = (info.get("clusterConfiguration") or {}).get("url")
        if not url:
            raise LauncherError("the update needs login nodes stopped, but describe-cluster gives no configuration URL")
        import yaml  # the project venv's; only needed here

        current = yaml.safe_load(self._fetch(url)) or {}
        pool_list = ((current.get("LoginNodes") or {}).get("Pools")) or []
        names = [p.get("Name") for p in pool_list if "*" in pools or p.get("Name") in pools]
        if not names:
            raise LauncherError(f"the update needs login pools {sorted(pools)} stopped, but the cluster's current "
                                "configuration has no such pool")
        for pool in pool_list:
            if pool.get("Name") in names:
                pool["Count"] = 0
        self.log(f"the update needs login pool(s) {', '.join(names)} stopped: setting Count 0 (then the config "
                 "brings them back); users logged in there are disconnected")
        with private_config_file(yaml.safe_dump(current, sort_keys=False)) as path:
            result = self._update_cluster(path)
        if result is not None:
            self._finish_update(result)
        self._poll(self.describe, lambda i: not self._login_nodes_left(i, names),
                   lambda i: f"{self._login_nodes_left(i, names)} login node(s) left, elapsed "
                             f"{format_duration(self._clock() - self._start)}",
                   f"login pool(s) {', '.join(names)} to have no node")
        self.log(f"login pool(s) {', '.join(names)} stopped")

    @staticmethod
    def _login_nodes_left(info: dict | None, names: list[str]) -> int:
        pools = [p for p in (info or {}).get("loginNodes") or [] if p.get("poolName") in names]
        return sum(int(p.get("healthyNodes") or 0) + int(p.get("unhealthyNodes") or 0) for p in pools)

    def _update_with_fleet_stopped(self, config_path: str) -> None:
        previous = self._fleet_status()
        if previous == "STOPPED":
            raise LauncherError(
                "the update is refused although the compute fleet is already STOPPED; see the update errors above"
            )
        if previous in _FLEET_NEEDS_OPERATOR:
            # Stopping and starting again would clear PROTECTED and hide the failing nodes.
            hint = _FLEET_NEEDS_OPERATOR[previous].format(name=self.name, region=self.region)
            raise LauncherError(
                f"the update needs the compute fleet stopped, but the fleet is {previous}, which the launcher "
                f"leaves to you: {hint}"
            )
        # Someone else already stopping the fleet: wait for it, and leave it stopped afterwards.
        restart = previous not in ("STOP_REQUESTED", "STOPPING")
        self.log(
            f"the update needs the compute fleet stopped (it is {previous}): stopping it, updating"
            + (", starting it again" if restart else "")
        )
        if restart:
            self._set_fleet("STOP_REQUESTED", "STOPPED")
        else:
            self._wait_fleet("STOPPED")
        try:
            result = self._update_cluster(config_path)
            if result is not None:
                self._finish_update(result)
        except LauncherError as exc:
            # Leave the cluster as we found it (fleet running), but keep the original error.
            if not restart:
                pass
            elif isinstance(exc, LauncherTimeout) or self._remaining() <= 0:
                self._warn_fleet_stopped()
            else:
                try:
                    self._set_fleet("START_REQUESTED", "RUNNING")
                except LauncherError as start_exc:
                    self.log(f"could not start the compute fleet again: {start_exc}")
                    self._warn_fleet_stopped()
            raise
        if restart:
            try:
                self._set_fleet("START_REQUESTED", "RUNNING")
            except LauncherError:
                self._warn_fleet_stopped()
                raise

    def _warn_fleet_stopped(self) -> None:
        self.log(
            "WARNING: the compute fleet was left STOPPED; start it with: pcluster update-compute-fleet "
            f"-n {self.name} -r {self.region} --status START_REQUESTED"
        )

    def _update_cluster(self, config_path: str) -> PclusterResult | None:
        """Run update-cluster; None means there was nothing to change."""
        self.log("updating the cluster (pcluster update-cluster)")
        result = self.pcluster("update-cluster", "-n", self.name, "-c", config_path)
        if result.returncode != 0 and _NO_CHANGES_RE.search(result.message):
            self.log("no changes: the cluster already matches the config")
            return None
        return result

    def _finish_update(self, result: PclusterResult) -> None:
        if result.returncode != 0:
            self._report_error("update-cluster", result, headline=False)
            raise LauncherError(f"update-cluster failed: {result.message}")
        self._report_changes(result.data.get("changeSet") or [], "applying changes")
        self._report_validation_messages(result.data)
        info = self._wait_out("UPDATE_IN_PROGRESS", "UPDATE_COMPLETE", "updated")
        if info.get("clusterStatus") != "UPDATE_COMPLETE":
            raise LauncherError(
                f"the update ended in {info.get('clusterStatus')} "
                f"(CloudFormation {info.get('cloudFormationStackStatus')}); the stack was rolled back"
            )
        self.log(f"cluster updated: {self._progress(info)}")
        self._warn_fleet_state(info)

    def _warn_fleet_state(self, info: dict) -> None:
        status = info.get("computeFleetStatus")
        if status in _FLEET_NEEDS_OPERATOR:
            hint = _FLEET_NEEDS_OPERATOR[status].format(name=self.name, region=self.region)
            self.log(f"WARNING: the compute fleet is {status}: {hint}")

    @staticmethod
    def _needs_fleet_stop(result: PclusterResult) -> bool:
        """Every refusal is one that stopping the compute fleet fixes."""
        errors = result.data.get("updateValidationErrors") or []
        return bool(errors) and all(_is_fleet_fixable(str(e.get("message") or "")) for e in errors)

    def _fleet_status(self) -> str | None:
        result = self.pcluster("describe-compute-fleet", "-n", self.name)
        if result.returncode != 0:
            raise LauncherError(f"describe-compute-fleet failed: {result.message}")
        return result.data.get("status")

    def _set_fleet(self, request: str, target: str) -> None:
        result = self.pcluster("update-compute-fleet", "-n", self.name, "--status", request)
        if result.returncode != 0:
            self._report_error(f"update-compute-fleet --status {request}", result, headline=False)
            raise LauncherError(f"update-compute-fleet --status {request} failed: {result.message}")
        if result.data.get("status") != target:
            self._wait_fleet(target)
        self.log(f"compute fleet {target}")

    def _wait_fleet(self, target: str) -> None:
        status = self._poll(
            self._fleet_status,
            lambda status: status == target or status in _FLEET_NEEDS_OPERATOR,
            lambda status: f"compute fleet {status}, elapsed {format_duration(self._clock() - self._start)}",
            f"the compute fleet to be {target}",
        )
        if status != target:
            hint = _FLEET_NEEDS_OPERATOR[status].format(name=self.name, region=self.region)
            raise LauncherError(f"the compute fleet became {status} instead of {target}: {hint}")
