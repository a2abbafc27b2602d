"""A recording stand-in for the `pulumi` CLI (the real one cannot be installed here).

It answers the few commands the Automation API and scripts/deploy.sh run, like the real CLI would, and appends one
JSON line per call to $PULUMI_CALLS: argv, cwd, stdin when the command reads it (`config set` without a value) and,
for `up`/`preview`, the stack file as it was at that moment (what the engine would deploy). Stack existence and login
state live in $PULUMI_STANDIN_STATE (a directory). $PULUMI_STANDIN_WHOAMI=fail makes `whoami` fail (not logged in).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

SCRIPT = r'''#!{python}
import json, os, sys
from pathlib import Path

import yaml

args = sys.argv[1:]
words = [a for a in args if not a.startswith("-")]
state = Path(os.environ["PULUMI_STANDIN_STATE"])
state.mkdir(parents=True, exist_ok=True)
record = {"argv": args, "cwd": os.getcwd()}


def opt(name):
    return args[args.index(name) + 1] if name in args else None


def stack_path(stack):
    return Path.cwd() / f"Pulumi.{stack}.yaml"


def done(code=0, out="", err=""):
    with open(os.environ["PULUMI_CALLS"], "a") as fh:
        fh.write(json.dumps(record) + "\n")
    sys.stdout.write(out)
    sys.stderr.write(err)
    sys.exit(code)


cmd = words[:2]
if words[:1] == ["version"]:
    done(0, "v3.200.0\n")
if words[:1] == ["whoami"]:
    if os.environ.get("PULUMI_STANDIN_WHOAMI") == "fail" and not (state / "logged-in").exists():
        done(255, err="error: PULUMI_ACCESS_TOKEN must be set for login during non-interactive CLI sessions\n")
    done(0, "stand-in-user\n")
if words[:1] == ["login"]:
    (state / "logged-in").write_text(" ".join(args))
    done(0, "Logged in\n")
if cmd == ["stack", "select"]:
    stack = opt("--stack") or opt("-s") or words[2]
    if (state / f"stack-{stack}").exists() or "--create" in args:
        (state / f"stack-{stack}").touch()
        done(0)
    done(255, err=f"error: no stack named '{stack}' found\n")
if cmd == ["stack", "init"]:
    stack = words[2]
    (state / f"stack-{stack}").touch()
    path = stack_path(stack)
    if not path.exists():  # the real CLI writes the passphrase provider's salt here
        path.write_text("encryptionsalt: v1:standin-salt\n")
    done(0)
if words[:2] == ["config", "set"] and "--secret" in args:
    stack, key = opt("--stack"), words[-1]
    value = sys.stdin.read()
    record["stdin"] = value
    path = stack_path(stack)
    doc = yaml.safe_load(path.read_text()) if path.exists() else {}
    doc = doc or {}
    doc.setdefault("config", {})[key] = {"secure": "v1:standin:" + str(len(value))}
    path.write_text(yaml.safe_dump(doc))
    done(0)
if words[:1] in (["up"], ["preview"], ["destroy"]):
    stack = opt("--stack")
    path = stack_path(stack)
    record["stack_file"] = yaml.safe_load(path.read_text()) if path.exists() else None
    if words[:1] == ["destroy"]:
        (state / f"deployed-{stack}").unlink(missing_ok=True)
    elif words[:1] == ["up"]:
        (state / f"deployed-{stack}").touch()
    else:  # preview: the SDK wants the engine's summary event in the event log (a file, before CLI 3.206)
        with open(opt("--event-log"), "a") as log:
            log.write(json.dumps({"sequence": 0, "timestamp": 0, "summaryEvent": {"resourceChanges": {}}}) + "\n")
    done(0, f"stand-in {words[0]} of {stack}\n")
if cmd == ["stack", "output"]:
    stack = opt("--stack")
    outputs = {"sshCommand": "ssh <ad-user>@203.0.113.10", "directoryAdminPassword": "generated-secret"}
    if "--show-secrets" not in args:
        outputs["directoryAdminPassword"] = "[secret]"
    done(0, json.dumps(outputs if (state / f"deployed-{stack}").exists() else {}))
if cmd == ["stack", "history"]:
    done(0, json.dumps([{"kind": "update", "startTime": "2026-01-01T00:00:00.000Z", "message": "",
                         "environment": {}, "config": {}, "result": "succeeded",
                         "endTime": "2026-01-01T00:00:01.000Z", "version": 1, "resourceChanges": {}}]))
done(2, err="stand-in pulumi: unexpected command: " + " ".join(args) + "\n")
'''


def install(bin_dir: Path, python: str = sys.executable) -> Path:
    """Write the stand-in as bin_dir/pulumi (run by `python`, which must have PyYAML)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    exe = bin_dir / "pulumi"
    exe.write_text(SCRIPT.replace("{python}", python, 1))
    exe.chmod(0o755)
    return exe


def env(tmp_path: Path, bin_dir: Path) -> dict[str, str]:
    """Variables the stand-in needs, on top of a PATH with bin_dir first."""
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PULUMI_CALLS": str(tmp_path / "calls.jsonl"),
            "PULUMI_STANDIN_STATE": str(tmp_path / "standin-state")}


def calls(tmp_path: Path) -> list[dict]:
    path = tmp_path / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def words(call: dict) -> list[str]:
    """A recorded call's argv without the flags the SDK adds everywhere."""
    return [a for a in call["argv"] if a != "--non-interactive"]
