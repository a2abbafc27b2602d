"""Embed the stack in your own Python with Pulumi's Automation API.

    from pcluster_ad import automation      # in the checkout, after `pip install -e <checkout>`, or from a wheel

    config = {
        "aws:region": "eu-west-1",
        "pcluster-ad:directory": {"type": "SimpleAD", "domainName": "test.domain", "shortName": "TEST"},
        "pcluster-ad:cluster": {"name": "hpc-dev", "allowedSshCidr": "203.0.113.0/24",   # your office/VPN range
                                "queues": [{"name": "compute", "instanceType": "c5.large",
                                            "minCount": 0, "maxCount": 10}]},
    }
    automation.preview("dev", config)
    result = automation.up("dev", config, secrets={"pcluster-ad:adminPassword": "..."})
    print(automation.outputs("dev")["sshCommand"])
    automation.destroy("dev")

What deploys is exactly what was validated:
- `config` + `secrets` are validated together (`stack_config.settings_from_values`, every problem at once,
  `stack_config.ConfigError`) before the Pulumi CLI is even looked up.
- The stack lives in its own workspace directory, never in the checkout: `work_dir=`, default
  `$PCLUSTER_AD_WORKSPACES/<stack>` or `~/.pcluster-ad/workspaces/<stack>`. It holds a generated `Pulumi.yaml` and the
  stack file `Pulumi.<stack>.yaml`. Each preview/up REPLACES that stack file's `config:` with exactly the caller's
  values (the repo's sample stacks and earlier runs never leak in); only the secrets-provider fields the CLI wrote
  (`secretsprovider`, `encryptedkey`, `encryptionsalt`) are kept, so existing secrets stay readable.
- Plain values are written to the stack file as YAML; secrets go through `pulumi config set --secret` on stdin,
  never on a command line.

`preview` and `up` then run ParallelCluster's full create validation on the config's offline plan (`full_validation`,
tools/full_validation.py: what `pcluster create-cluster --dryrun` judges, in moto) and raise its refusals as
`tools.full_validation.FullValidationFailed`, a `stack_config.ConfigError`. That needs the ParallelCluster venv of the
stack's `pclusterVersion` with moto (`bash tools/pcluster_venv.sh --with-moto`), checked with the rest below.

- `plan(name, config, secrets)` is the offline plan (tools/plan.py's `plan`): what `up` would declare, with no
  Pulumi CLI, no AWS and nothing created.

Prerequisites on this machine, checked before any stack is touched, all reported at once in one
`MissingPrerequisites` (`PulumiCliMissing` when the CLI is among them, listed first): the Pulumi CLI on PATH (every
entry point but `plan`); for `preview`, `up` and `destroy` the ParallelCluster venv of the stack's
`pclusterVersion` (`bash tools/pcluster_venv.sh --with-moto`); for `up` and `destroy`, which run the cluster
command, also the checkout's `venv/` (the command runs `venv/bin/python -m launcher` in the checkout:
`bash scripts/plan.sh dev` makes it; installed from a wheel, the command runs with this interpreter from
`program_dir`, nothing to set up). Beyond this machine: AWS
credentials, a Pulumi backend (`pulumi login ...` or `env_vars={"PULUMI_BACKEND_URL": ...}`) and, with the
default passphrase secrets provider, PULUMI_CONFIG_PASSPHRASE (or `secrets_provider="awskms://..."`).
`ERRORS` are the exceptions that mean "fix your input or this machine" (each message names the key or the
command); a failing `pulumi` command raises `pulumi.automation.CommandError` after its output was shown.
"""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pcluster_ad import stack_config
from pcluster_ad.components.cluster_launcher import LAUNCHER
from pcluster_ad.launcher.core import is_checkout
from pcluster_ad.program import pulumi_program
from pcluster_ad.tools import stack_file as engine_yaml

ROOT = Path(__file__).resolve().parent
PROJECT = stack_config.PROJECT
SECRET_KEYS = stack_config.SECRET_KEYS
# Fields of a stack file that belong to the secrets provider: kept when the config is replaced.
SECRETS_PROVIDER_FIELDS = ("secretsprovider", "encryptedkey", "encryptionsalt")
CLI_MISSING = ("the Pulumi CLI ('pulumi') is not on PATH: install it (https://www.pulumi.com/docs/install/);"
               " the Automation API drives it. Without a CLI, `automation.plan(name, config)` still validates and"
               " plans a stack offline")


class MissingPrerequisites(RuntimeError):
    """Something this machine needs for the command is missing; `problems` lists each with its fix (the Pulumi CLI
    first). Raised before any stack is touched."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        if len(self.problems) == 1:
            message = self.problems[0]
        else:
            lines = "\n".join(f"  - {p}" for p in self.problems)
            message = f"{len(self.problems)} prerequisites are missing on this machine; nothing was touched:\n{lines}"
        super().__init__(message)


class PulumiCliMissing(MissingPrerequisites):
    """The Pulumi CLI is not installed (or not on PATH), and whatever else `others` names."""

    def __init__(self, others: Sequence[str] = ()) -> None:
        super().__init__([CLI_MISSING, *others])


# What an embedding program catches to report a problem without a traceback: every problem at once, each naming
# the key or the command that fixes it (ValueError: a secret in `config` or a work_dir inside the checkout).
ERRORS = (stack_config.ConfigError, MissingPrerequisites, ValueError)


def inline_program() -> None:
    """The whole program as an Automation API inline program."""
    pulumi_program()


def engine_config(config: Mapping[str, Any], secrets: Mapping[str, str] | None = None) -> dict[str, tuple[str, bool]]:
    """A config dict (nested objects as Python values) -> {full key: (the string the engine hands the program, is
    secret)}: the config as `write_config` writes it and the engine reads that file back (tools/stack_file.py)."""
    for key in config:
        if key in SECRET_KEYS:
            raise ValueError(f"{key} is a secret: pass it in secrets=, not in config")
    out = {key: (text, False) for key, text in engine_yaml.config_of(config, project=PROJECT).config.items()}
    for key, value in (secrets or {}).items():
        if key not in SECRET_KEYS:
            raise ValueError(f"{key} is not a secret key; secrets are {', '.join(SECRET_KEYS)}")
        if "\n" in value or "\r" in value:  # the CLI would drop a trailing one: not what was validated
            raise ValueError(f"{key} contains a line break: give the password without it")
        out[key] = (value, True)
    return out


def validate(config: Mapping[str, Any], secrets: Mapping[str, str] | None = None, stack: str = "dev"
             ) -> stack_config.Settings:
    """Raise stack_config.ConfigError with every problem (ValueError for a secret in the wrong argument, or a
    value the engine cannot load), before anything is touched. What is validated is what the program will read:
    the config as written to the stack file and read back by the engine."""
    values = {key: text for key, (text, _) in engine_config(config, secrets).items()}
    return stack_config.settings_from_values(stack_config.program_values(values), stack=stack)


def default_work_dir(stack: str) -> Path:
    base = os.environ.get("PCLUSTER_AD_WORKSPACES") or Path.home() / ".pcluster-ad" / "workspaces"
    return Path(base) / stack


def require_cli() -> str:
    """The Pulumi CLI's path, or PulumiCliMissing: one explanation for every entry point."""
    found = shutil.which("pulumi")
    if found is None:
        raise PulumiCliMissing()
    return found


def workspace(name: str, *, work_dir: str | Path | None = None, env_vars: Mapping[str, str] | None = None,
              secrets_provider: str | None = None) -> Any:
    """A LocalWorkspace in the stack's own directory (outside the checkout) running the inline program."""
    require_cli()
    from pulumi import automation as auto

    directory = Path(work_dir) if work_dir is not None else default_work_dir(name)
    resolved = directory.resolve()
    if resolved == ROOT or ROOT in resolved.parents:
        raise ValueError(f"work_dir={directory} is inside the checkout {ROOT}: its stack files are tracked;"
                         " give a directory outside it (default ~/.pcluster-ad/workspaces/<stack>)")
    directory = resolved  # the engine never follows a symlink that someone could point elsewhere later
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    settings = auto.ProjectSettings(name=PROJECT, runtime="python", main=str(program_dir(directory)),
                                    description="pcluster-ad through the Automation API (generated; do not edit)")
    try:
        return auto.LocalWorkspace(work_dir=str(directory), program=inline_program, env_vars=dict(env_vars or {}),
                                   secrets_provider=secrets_provider, project_settings=settings)
    except FileNotFoundError as exc:  # the SDK runs `pulumi version` first
        raise PulumiCliMissing() from exc


def stack_file(ws: Any, name: str) -> Path:
    return Path(ws.work_dir) / f"Pulumi.{name.split('/')[-1]}.yaml"


def write_config(ws: Any, name: str, config: Mapping[str, Any]) -> None:
    """Replace the stack file's config with exactly `config` (plain values), keeping the secrets provider."""
    path = stack_file(ws, name)
    current = engine_yaml.load(path.read_text(encoding="utf-8")) if path.exists() else None
    doc = {k: v for k, v in (current or {}).items() if k in SECRETS_PROVIDER_FIELDS}
    doc["config"] = {key: value for key, value in config.items()}
    path.write_text(engine_yaml.dump(doc), encoding="utf-8")  # strings quoted where the engine would read a number


def set_secret(ws: Any, name: str, key: str, value: str) -> None:
    """`pulumi config set --secret KEY` with the value on stdin (never in argv or the environment): with no value
    argument and a non-terminal stdin the CLI reads stdin (dropping one trailing newline, which a valid password
    does not have)."""
    proc = subprocess.run(
        [require_cli(), "config", "set", "--secret", "--stack", name, "--non-interactive", key],
        input=value, cwd=ws.work_dir, env={**os.environ, **ws.env_vars}, capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"pulumi config set --secret {key} failed (exit {proc.returncode}): {proc.stderr.strip()}")


def select_stack(name: str, config: Mapping[str, Any], secrets: Mapping[str, str] | None = None, *,
                 work_dir: str | Path | None = None, env_vars: Mapping[str, str] | None = None,
                 secrets_provider: str | None = None) -> Any:
    """Validate config + secrets, then create or select the stack in its own workspace and give it exactly
    that config."""
    validate(config, secrets, stack=name)
    from pulumi import automation as auto

    ws = workspace(name, work_dir=work_dir, env_vars=env_vars, secrets_provider=secrets_provider)
    stack = auto.Stack.create_or_select(name, ws)
    write_config(ws, name, config)
    for key, value in (secrets or {}).items():
        set_secret(ws, name, key, value)
    return stack


def _existing(name: str, work_dir: str | Path | None, env_vars: Mapping[str, str] | None) -> Any:
    from pulumi import automation as auto

    return auto.Stack.select(name, workspace(name, work_dir=work_dir, env_vars=env_vars))


def program_dir(directory: Path) -> Path:
    """The project's main directory, where the engine runs the cluster command (`venv/bin/python -m launcher`,
    components/cluster_launcher.py). In a checkout, the checkout. For an installed package, `program/` in the stack's
    workspace `directory`: venv/bin/python hands over to this interpreter, launcher/ is the package's. The command
    line is in the stack's state, and its `create` part changing would REPLACE the cluster: so it is the same line
    for both, and a stack moves between a checkout and an installed package without a diff."""
    if is_checkout(ROOT):
        return ROOT
    # Resolved: the engine gets a path without symlinks, which nobody can point elsewhere after these checks.
    directory = directory.resolve()
    _no_one_else_can_rename(directory)
    main = directory / "program"
    bin_dir = main / "venv" / "bin"
    for path in (directory, main, main / "venv", bin_dir):  # it will hold what the cluster command executes
        _own_private_dir(path)
    # exec keeps the venv: Python finds its venv from the path it was started as (sys.executable is that path).
    # Written beside and renamed over: a planted symlink is replaced, never followed.
    wrapper = bin_dir / ".python.new"
    wrapper.unlink(missing_ok=True)
    fd = os.open(wrapper, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o755)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    os.replace(wrapper, bin_dir / "python")
    link = main / ".launcher.new"
    link.unlink(missing_ok=True)
    link.symlink_to(ROOT / "launcher", target_is_directory=True)
    os.replace(link, main / "launcher")
    return main


def _no_one_else_can_rename(path: Path) -> None:
    """Every directory above `path` (resolved) is root's or this user's and nobody else can write it, or it is sticky
    (/tmp: nobody renames what is not theirs). Otherwise whoever can write one of them renames the checked workspace
    away after this check and puts their own venv/bin/python in its place, for the engine to run as this user."""
    uid = os.geteuid()
    for parent in path.parents:
        info = parent.stat()
        others_write = info.st_mode & 0o002 or (info.st_mode & 0o020 and not _private_group(info.st_gid, uid))
        if info.st_uid not in (0, uid) or (others_write and not info.st_mode & stat.S_ISVTX):
            raise ValueError(f"{parent} (above the workspace {path}) must be root's or yours, and nobody else may write"
                             " it (unless sticky, as /tmp): whoever can would swap the workspace, which holds the"
                             " interpreter the cluster command runs; give a work_dir below your home directory")


def _private_group(gid: int, uid: int) -> bool:
    """`gid` is the user's own group (user private groups, umask 002): their primary group, with no other member."""
    import grp
    import pwd

    try:
        user, group = pwd.getpwuid(uid), grp.getgrgid(gid)
    except KeyError:
        return False
    return user.pw_gid == gid and set(group.gr_mem) <= {user.pw_name}


def _own_private_dir(path: Path) -> None:
    """Make `path` (mode 0700) or accept it only as a real directory of this user that nobody else can write."""
    path.mkdir(mode=0o700, exist_ok=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
        raise ValueError(f"{path} must be a directory of your own that nobody else can write (not a symlink, not"
                         " group- or world-writable): it holds the interpreter the cluster command runs; give another"
                         " work_dir or `chmod go-w` it")


def launcher_python() -> Path:
    """The interpreter the cluster command runs: the checkout's venv/bin/python (the engine runs the command in the
    project's main directory, the checkout); an installed package runs it with this interpreter (`program_dir`)."""
    return ROOT / LAUNCHER.split()[0] if is_checkout(ROOT) else Path(sys.executable)


def require_prerequisites(pcluster_version: str | None = None, env_vars: Mapping[str, str] | None = None, *,
                          launcher: bool = True, moto: bool = False) -> None:
    """Raise MissingPrerequisites listing everything missing for a command, the Pulumi CLI first. With a
    `pcluster_version` also the ParallelCluster venv of that version (`moto`: with moto, for the full validation of
    preview/up) and, with `launcher` (up, destroy: they run the cluster command), the checkout's venv/: the launcher
    installs nothing during a deployment, so a missing venv is found here, before the stack is touched, not after
    the directory was built."""
    from pcluster_ad.launcher.core import SetupError, resolve_pcluster
    from pcluster_ad.tools.full_validation import venv_python

    problems = [] if shutil.which("pulumi") else [CLI_MISSING]
    if pcluster_version is not None:
        python = launcher_python()
        if launcher and not os.access(python, os.X_OK):
            problems.append(f"{python} is missing: the cluster command runs `{LAUNCHER}` in the checkout; set it up"
                            f" with `bash {ROOT / 'scripts' / 'plan.sh'} dev` (installs venv/ from the hash-checked"
                            " requirements.lock, then plans the sample stack offline)")
        env = {**os.environ, **(env_vars or {})}  # what the command will see: the engine passes on env_vars
        try:
            if moto:
                venv_python(pcluster_version, env)
            else:
                resolve_pcluster({**env, "PCLUSTER_AD_PCLUSTER_VERSION": pcluster_version})
        except SetupError as exc:
            problems.append(str(exc))
    if problems and problems[0] == CLI_MISSING:
        raise PulumiCliMissing(problems[1:])
    if problems:
        raise MissingPrerequisites(problems)


def deployed_pcluster_version(name: str, work_dir: str | Path | None) -> str:
    """The `pclusterVersion` in the workspace's stack file (what the last preview/up wrote), else the default."""
    path = (Path(work_dir) if work_dir is not None else default_work_dir(name)) / f"Pulumi.{name.split('/')[-1]}.yaml"
    try:
        doc = engine_yaml.load(path.read_text(encoding="utf-8")) or {}
        version = doc["config"]["pcluster-ad:cluster"]["pclusterVersion"]
    except (OSError, engine_yaml.StackFileError, KeyError, TypeError):
        return stack_config.DEFAULT_PCLUSTER_VERSION
    return str(version)


def plan(name: str, config: Mapping[str, Any], secrets: Mapping[str, str] | None = None, *,
         out: str | Path | None = None) -> dict[str, Any]:
    """The offline plan of `config` + `secrets` as stack `name` (tools/plan.py's `plan`, the program under Pulumi's
    mocks): {"resources": [...], "outputs": {...}, "files": {"resources.json": ..., "cluster-config.yaml": ...},
    "warnings": [...]}, secrets shown as "[secret]"; `out` also writes the files there. No Pulumi CLI, no AWS,
    nothing created; raises stack_config.ConfigError with every problem (or pulumi.RunError from a check that needs
    the program)."""
    from pcluster_ad.tools import plan as offline

    engine_config(config, secrets)
    result = offline.plan({**config, **(secrets or {})}, list(secrets or {}), name)
    if out is not None:
        offline.write_files(result, Path(out))
    return result


def full_validation(name: str, config: Mapping[str, Any], secrets: Mapping[str, str] | None = None) -> dict:
    """ParallelCluster's full create validation of exactly this config's offline plan (tools/full_validation.py):
    raises its FullValidationFailed (a stack_config.ConfigError, one problem per refusal) or launcher.core.SetupError
    (no ParallelCluster venv with moto for the stack's version). Creates nothing."""
    from pcluster_ad.tools.full_validation import check_config

    return check_config(config, secrets, stack=name)


def up(name: str, config: Mapping[str, Any], secrets: Mapping[str, str] | None = None,
       on_output: Callable[[str], Any] = print, **kwargs: Any) -> Any:
    settings = validate(config, secrets, stack=name)
    require_prerequisites(settings.cluster.pcluster_version, kwargs.get("env_vars"), moto=True)  # before the validation
    full_validation(name, config, secrets)
    return select_stack(name, config, secrets, **kwargs).up(on_output=on_output, show_secrets=False)


def preview(name: str, config: Mapping[str, Any], secrets: Mapping[str, str] | None = None,
            on_output: Callable[[str], Any] = print, **kwargs: Any) -> Any:
    settings = validate(config, secrets, stack=name)
    # The full validation runs in the ParallelCluster venv: checked with the CLI, all at once.
    require_prerequisites(settings.cluster.pcluster_version, kwargs.get("env_vars"), launcher=False, moto=True)
    full_validation(name, config, secrets)
    return select_stack(name, config, secrets, **kwargs).preview(on_output=on_output)


def destroy(name: str, on_output: Callable[[str], Any] = print, *, work_dir: str | Path | None = None,
            env_vars: Mapping[str, str] | None = None) -> Any:
    require_prerequisites(deployed_pcluster_version(name, work_dir), env_vars)
    return _existing(name, work_dir, env_vars).destroy(on_output=on_output, show_secrets=False)


def outputs(name: str, *, show_secrets: bool = False, work_dir: str | Path | None = None,
            env_vars: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Stack outputs as plain values; secret outputs stay masked unless show_secrets."""
    return {k: (v.value if show_secrets or not v.secret else "[secret]")
            for k, v in _existing(name, work_dir, env_vars).outputs().items()}
