"""Embed the stack in your own Python with Pulumi's Automation API.

    import automation

    config = {
        "aws:region": "eu-west-1",
        "pcluster-ad:directory": {"type": "SimpleAD", "domainName": "test.domain", "shortName": "TEST"},
        "pcluster-ad:cluster": {"name": "hpc-dev", "queues": [{"name": "compute", "instanceType": "c5.large",
                                                               "minCount": 0, "maxCount": 10}]},
    }
    automation.preview("dev", config)
    result = automation.up("dev", config, secrets={"pcluster-ad:adminPassword": "..."})
    print(automation.outputs("dev")["sshCommand"])
    automation.destroy("dev")

The config is validated (every problem at once, `stack_config.ConfigError`) before any stack
is selected or anything is created. Needs the Pulumi CLI on PATH (the SDK drives it), AWS
credentials, and PULUMI_CONFIG_PASSPHRASE for the default local backend.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import stack_config
from program import pulumi_program

ROOT = Path(__file__).resolve().parent
PROJECT = stack_config.PROJECT
SECRET_KEYS = stack_config.SECRET_KEYS


def inline_program() -> None:
    """The whole program as an Automation API inline program."""
    pulumi_program()


def engine_config(config: Mapping[str, Any], secrets: Mapping[str, str] | None = None) -> dict[str, tuple[str, bool]]:
    """A config dict (nested objects as Python values) -> {full key: (engine string, is secret)}."""
    out: dict[str, tuple[str, bool]] = {}
    for key, value in config.items():
        if key in SECRET_KEYS:
            raise ValueError(f"{key} is a secret: pass it in secrets=, not in config")
        out[key] = (stack_config.engine_value(value), False)
    for key, value in (secrets or {}).items():
        if key not in SECRET_KEYS:
            raise ValueError(f"{key} is not a secret key; secrets are {', '.join(SECRET_KEYS)}")
        out[key] = (value, True)
    return out


def validate(config: Mapping[str, Any], secrets: Mapping[str, str] | None = None, stack: str = "dev"
             ) -> stack_config.Settings:
    """Raise stack_config.ConfigError with every problem, before anything is touched."""
    return stack_config.settings_from_values({**config, **(secrets or {})}, stack=stack)


def select_stack(name: str, config: Mapping[str, Any], secrets: Mapping[str, str] | None = None, *,
                 work_dir: Path = ROOT, env_vars: Mapping[str, str] | None = None) -> Any:
    """Validate the config, then create or select the stack and write its config."""
    validate(config, secrets, stack=name)
    from pulumi import automation as auto

    if shutil.which("pulumi") is None:
        raise RuntimeError("the Pulumi CLI is not on PATH: install it (https://www.pulumi.com/docs/install/);"
                           " the Automation API drives it")
    stack = auto.create_or_select_stack(
        stack_name=name, project_name=PROJECT, program=inline_program,
        opts=auto.LocalWorkspaceOptions(work_dir=str(work_dir), env_vars=dict(env_vars or {})),
    )
    values = engine_config(config, secrets)
    stack.set_all_config({k: auto.ConfigValue(value=v, secret=secret) for k, (v, secret) in values.items()})
    return stack


def up(name: str, config: Mapping[str, Any], secrets: Mapping[str, str] | None = None,
       on_output: Callable[[str], Any] = print, **kwargs: Any) -> Any:
    return select_stack(name, config, secrets, **kwargs).up(on_output=on_output, show_secrets=False)


def preview(name: str, config: Mapping[str, Any], secrets: Mapping[str, str] | None = None,
            on_output: Callable[[str], Any] = print, **kwargs: Any) -> Any:
    return select_stack(name, config, secrets, **kwargs).preview(on_output=on_output)


def destroy(name: str, on_output: Callable[[str], Any] = print, *, work_dir: Path = ROOT) -> Any:
    from pulumi import automation as auto

    stack = auto.select_stack(stack_name=name, project_name=PROJECT, program=inline_program,
                              opts=auto.LocalWorkspaceOptions(work_dir=str(work_dir)))
    return stack.destroy(on_output=on_output)


def outputs(name: str, *, work_dir: Path = ROOT) -> dict[str, Any]:
    """Stack outputs as plain values; secret outputs stay masked."""
    from pulumi import automation as auto

    stack = auto.select_stack(stack_name=name, project_name=PROJECT, program=inline_program,
                              opts=auto.LocalWorkspaceOptions(work_dir=str(work_dir)))
    return {k: ("[secret]" if v.secret else v.value) for k, v in stack.outputs().items()}
