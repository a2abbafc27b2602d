"""Embed the stack in your own Python with Pulumi's Automation API.

    from pcluster_ad import automation      # after `pip install -e <checkout>`; `import automation` in the checkout

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
stack's `pclusterVersion` with moto (`bash tools/pcluster_venv.sh --with-moto`; else `launcher.core.SetupError` naming
the command), before any stack is touched.
Needs the Pulumi CLI on PATH (every entry point raises `PulumiCliMissing` with the same message otherwise), AWS
credentials, a Pulumi backend (`pulumi login ...` or `env_vars={"PULUMI_BACKEND_URL": ...}`) and, with the
default passphrase secrets provider, PULUMI_CONFIG_PASSPHRASE (or `secrets_provider="awskms://..."`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import stack_config
from program import pulumi_program
from tools import stack_file as engine_yaml

ROOT = Path(__file__).resolve().parent
PROJECT = stack_config.PROJECT
SECRET_KEYS = stack_config.SECRET_KEYS
# Fields of a stack file that belong to the secrets provider: kept when the config is replaced.
SECRETS_PROVIDER_FIELDS = ("secretsprovider", "encryptedkey", "encryptionsalt")
CLI_MISSING = ("the Pulumi CLI ('pulumi') is not on PATH: install it (https://www.pulumi.com/docs/install/);"
               " the Automation API drives it. Without a CLI, `python -m tools.plan STACK --out DIR` still"
               " validates and plans a stack offline")


class PulumiCliMissing(RuntimeError):
    """The Pulumi CLI is not installed (or not on PATH)."""

    def __init__(self) -> None:
        super().__init__(CLI_MISSING)


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
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    settings = auto.ProjectSettings(name=PROJECT, runtime="python", main=str(ROOT),
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


def require_pcluster(settings: stack_config.Settings) -> str:
    """The pcluster executable `up` will run (launcher.core.resolve_pcluster), or launcher.core.SetupError naming
    the setup command: the launcher never installs during a deployment, so a missing venv is found here, before
    the stack is touched, not twenty minutes into `up`."""
    from launcher.core import resolve_pcluster

    return resolve_pcluster({**os.environ, "PCLUSTER_AD_PCLUSTER_VERSION": settings.cluster.pcluster_version})


def full_validation(name: str, config: Mapping[str, Any], secrets: Mapping[str, str] | None = None) -> dict:
    """ParallelCluster's full create validation of exactly this config's offline plan (tools/full_validation.py):
    raises its FullValidationFailed (a stack_config.ConfigError, one problem per refusal) or launcher.core.SetupError
    (no ParallelCluster venv with moto for the stack's version). Creates nothing."""
    from tools.full_validation import check_config

    return check_config(config, secrets, stack=name)


def up(name: str, config: Mapping[str, Any], secrets: Mapping[str, str] | None = None,
       on_output: Callable[[str], Any] = print, **kwargs: Any) -> Any:
    settings = validate(config, secrets, stack=name)
    require_cli()  # the cheap checks first: the full validation takes seconds
    require_pcluster(settings)
    full_validation(name, config, secrets)
    return select_stack(name, config, secrets, **kwargs).up(on_output=on_output, show_secrets=False)


def preview(name: str, config: Mapping[str, Any], secrets: Mapping[str, str] | None = None,
            on_output: Callable[[str], Any] = print, **kwargs: Any) -> Any:
    validate(config, secrets, stack=name)
    require_cli()
    full_validation(name, config, secrets)
    return select_stack(name, config, secrets, **kwargs).preview(on_output=on_output)


def destroy(name: str, on_output: Callable[[str], Any] = print, *, work_dir: str | Path | None = None,
            env_vars: Mapping[str, str] | None = None) -> Any:
    return _existing(name, work_dir, env_vars).destroy(on_output=on_output, show_secrets=False)


def outputs(name: str, *, show_secrets: bool = False, work_dir: str | Path | None = None,
            env_vars: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Stack outputs as plain values; secret outputs stay masked unless show_secrets."""
    return {k: (v.value if show_secrets or not v.secret else "[secret]")
            for k, v in _existing(name, work_dir, env_vars).outputs().items()}
