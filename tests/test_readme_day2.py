"""The README's commands against the real tools, offline (issue 19, item 10).

Every `aws <service> <operation> --param` the README shows must be an operation of the AWS CLI's service model
(botocore, the models the CLI itself is generated from) with those parameter names, and a complete code-block
command gives every required one; a JSON document piped into `--cli-input-json` has exactly the operation's members.
Every `pcluster <command> --flag` must be in that command's own `--help` (the pinned CLI in .venv-pcluster, run
here). Every `pulumi config set pcluster-ad:<key>` must name a key stack_config.py knows, and a concrete value must
be one it accepts. Commands are read from the README's code blocks and inline code, generically; a deliberately
wrong sample of each kind shows that the checks fail.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import subprocess
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import pytest

from pcluster_ad.stack_config import AWS_PROVIDER_KEYS, PROJECT, SECRET_KEYS, ConfigError, settings_from_values
from pcluster_ad.tools.mocks import values_from_stack_file
from pcluster_ad.tools.pcluster_schema import pcluster_python
from tests.conftest import ROOT, stack_doc

README = ROOT / "README.md"

SEPARATORS = {"|", "||", "&", "&&", ";", "(", ")", "\n"}
REDIRECTIONS = {"<", ">", ">>", "<<", "<<<", ">&", "<&", "&>"}
# The AWS CLI's own options, valid for every operation (`aws help`), and its high-level S3 commands, which are
# not operations of any service model.
AWS_GLOBAL_OPTIONS = {
    "region", "profile", "output", "query", "endpoint-url", "debug", "no-paginate", "no-verify-ssl", "no-sign-request",
    "color", "ca-bundle", "cli-read-timeout", "cli-connect-timeout", "no-cli-pager", "cli-auto-prompt",
    "no-cli-auto-prompt", "cli-input-json", "cli-input-yaml", "generate-cli-skeleton", "cli-binary-format",
    "page-size", "max-items", "starting-token",
}
AWS_S3_COMMANDS = {"cp", "mv", "rm", "sync", "ls", "mb", "rb", "presign", "website"}
# AWS CLI v2 commands that are customizations, not service operations, with their own options (awscli's
# customizations/logs/tail.py).
AWS_CLI_CUSTOMIZATIONS = {("logs", "tail"): {"follow", "since", "format", "filter-pattern", "log-stream-names",
                                             "log-stream-name-prefix"}}
# CLI command names that differ from botocore's service names (the CLI renames these services).
AWS_CLI_SERVICE_NAMES = {"s3api": "s3", "configservice": "config", "deploy": "codedeploy"}
# A value a reader fills in: a shell variable, an <angle-bracket> or `...` placeholder.
PLACEHOLDER = re.compile(r"^(\$|<|\.\.\.)|\.\.\.$")
# A good enough directory admin password for `pulumi config set --secret` lines that take it on stdin.
SAMPLE_SECRET = "Corr3ct-Horse-Battery-9"


@dataclass
class Command:
    words: list[str]
    complete: bool  # from a code block: meant to be run as written (required parameters checked)
    where: str  # for messages
    stdin_json: dict[str, Any] | None = field(default=None)  # a printf JSON template piped into it


# ------------------------------------------------------------------ reading commands out of markdown


def _tokens(line: str) -> list[str]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    return list(lexer)


def _printf_json(words: list[str]) -> dict[str, Any] | None:
    """`printf '{"A": "%s"}' ...`: the JSON document it prints (each %s as "x"), else None."""
    if words[:1] != ["printf"] or len(words) < 2 or not words[1].lstrip().startswith("{"):
        return None
    return json.loads(words[1].replace("%s", "x"))


def commands_in(line: str, *, complete: bool, where: str) -> list[Command]:
    """The simple commands of one shell line: split at |, ;, &&, ||, ( and ), also inside $(...); leading
    VAR=value assignments and redirections dropped; a printf JSON template piped into a command kept with it."""
    found: list[Command] = []
    words: list[str] = []
    piped: dict[str, Any] | None = None
    line = re.sub(r"<[A-Za-z][^<>\s]*>", "PLACEHOLDER", line)  # <region>, <your-key.pem>: words, not redirections
    tokens = _tokens(line) + ["\n"]
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token in SEPARATORS:
            if words:
                found.append(Command(words, complete, where, piped))
            piped = _printf_json(words) if token == "|" and words else None
            words = []
        elif token in REDIRECTIONS:
            i += 1  # and its target
        elif not words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", token):
            pass  # an assignment before the command (`X=$(`: its command follows the `(`)
        else:
            words.append(token)
        i += 1
    return found


def readme_commands(text: str) -> list[Command]:
    """Every command in the README's shell code blocks (joined at backslash-newlines, here-documents skipped) and
    in its inline code."""
    result: list[Command] = []
    outside: list[str] = []
    pos = 0
    for block in re.finditer(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M):
        outside.append(text[pos:block.start()])
        pos = block.end()
        if block.group(1) not in ("bash", "sh", "shell"):
            continue
        logical, heredoc, first = "", None, 0
        for n, raw in enumerate(block.group(2).split("\n"), text.count("\n", 0, block.start()) + 2):
            if heredoc is not None:
                heredoc = None if raw.strip() == heredoc else heredoc
                continue
            first = first if logical else n
            if raw.endswith("\\"):
                logical += raw[:-1] + " "
                continue
            logical += raw
            result.extend(commands_in(logical, complete=True, where=f"README.md:{first}"))
            marker = re.search(r"<<-?\s*['\"]?(\w+)", logical)
            heredoc = marker.group(1) if marker else None
            logical = ""
    outside.append(text[pos:])
    for chunk in outside:
        for span in re.finditer(r"`([^`]+)`", chunk):
            code = " ".join(span.group(1).split())
            if re.match(r"^(aws \w|\S*pcluster [a-z]|pulumi config set)", code):
                result.extend(commands_in(code, complete=False, where=f"README inline `{code}`"))
    return result


# ------------------------------------------------------------------ the checks, one per tool


@cache
def _botocore_session():
    import botocore.session

    return botocore.session.get_session()


def check_aws(cmd: Command) -> list[str]:
    """An `aws` command against botocore's service model: [] when it is right, else what is wrong."""
    from botocore import xform_name
    from botocore.exceptions import UnknownServiceError

    words = cmd.words
    if len(words) < 3:
        return [f"{cmd.where}: `{' '.join(words)}` names no operation"]
    service, operation = words[1], words[2]
    options = {w[2:].split("=", 1)[0] for w in words[3:] if w.startswith("--")}
    if service == "s3":
        return [] if operation in AWS_S3_COMMANDS else [f"{cmd.where}: `aws s3 {operation}` is no aws s3 command"]
    if (service, operation) in AWS_CLI_CUSTOMIZATIONS:
        allowed = AWS_CLI_CUSTOMIZATIONS[service, operation]
        return [f"{cmd.where}: `aws {service} {operation}` has no option --{o}"
                for o in sorted(options - allowed - AWS_GLOBAL_OPTIONS)]
    try:
        model = _botocore_session().get_service_model(AWS_CLI_SERVICE_NAMES.get(service, service))
    except UnknownServiceError:
        return [f"{cmd.where}: `aws {service}` is no service of the AWS CLI"]
    by_cli_name = {xform_name(op, "-"): op for op in model.operation_names}
    if operation not in by_cli_name:
        return [f"{cmd.where}: `aws {service} {operation}` is no operation of {service}"]
    shape = model.operation_model(by_cli_name[operation]).input_shape
    shape_members = shape.members if shape else {}
    members = {xform_name(m, "-"): m for m in shape_members}
    booleans = {f"no-{cli}" for cli, m in members.items() if shape_members[m].type_name == "boolean"}
    problems = [f"{cmd.where}: `aws {service} {operation}` has no parameter --{o} (it has: "
                f"{', '.join('--' + m for m in sorted(members))})"
                for o in sorted(options - set(members) - booleans - AWS_GLOBAL_OPTIONS)]
    if cmd.stdin_json is not None:
        unknown = set(cmd.stdin_json) - set(shape_members)
        missing = set(shape.required_members if shape else ()) - set(cmd.stdin_json)
        if unknown or missing:
            problems.append(f"{cmd.where}: the JSON piped into `aws {service} {operation}` has unknown keys "
                            f"{sorted(unknown)} and lacks {sorted(missing)}")
    elif cmd.complete and not options & {"cli-input-json", "cli-input-yaml", "generate-cli-skeleton"}:
        missing = [m for m in (shape.required_members if shape else ()) if xform_name(m, "-") not in options]
        if missing:
            problems.append(f"{cmd.where}: `aws {service} {operation}` lacks required "
                            f"{', '.join('--' + xform_name(m, '-') for m in missing)}")
    return problems


@dataclass(frozen=True)
class PclusterHelp:
    aliases: dict[str, frozenset[str]]  # every spelling of an option -> all of its spellings
    required: tuple[frozenset[str], ...]


@cache
def pcluster_help(command: str) -> PclusterHelp | None:
    """What `pcluster <command> --help` (the pinned CLI, offline) says its options are; None: no such command."""
    pcluster = pcluster_python().parent / "pcluster"
    proc = subprocess.run([str(pcluster), command, "--help"], capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "AWS_EC2_METADATA_DISABLED": "true"},
                          check=False)
    if proc.returncode != 0:
        assert "invalid choice" in proc.stderr, proc.stderr  # anything else: the CLI itself is broken
        return None
    usage, _, rest = proc.stdout.partition("\n\n")
    aliases: dict[str, frozenset[str]] = {}
    for line in rest.splitlines():
        if re.match(r"^\s{2}-", line):
            spellings = frozenset(re.findall(r"(?:^|,\s)(--?[A-Za-z][\w-]*)", line.strip()))
            for s in spellings:
                aliases[s] = spellings
    required, depth = [], 0
    for token in re.findall(r"\[|\]|\{[^}]*\}|[^\s\[\]]+", usage):
        depth += {"[": 1, "]": -1}.get(token, 0)
        if depth == 0 and re.match(r"^--?[A-Za-z]", token):
            required.append(aliases.get(token, frozenset({token})))
    return PclusterHelp(aliases, tuple(required))


def check_pcluster(cmd: Command) -> list[str]:
    words = cmd.words
    if len(words) < 2:
        return []
    help_ = pcluster_help(words[1])
    if help_ is None:
        return [f"{cmd.where}: `pcluster {words[1]}` is no pcluster command"]
    used = [w.split("=", 1)[0] for w in words[2:] if re.match(r"^--?[A-Za-z]", w)]
    problems = [f"{cmd.where}: `pcluster {words[1]}` has no option {u} (it has: {', '.join(sorted(help_.aliases))})"
                for u in used if u not in help_.aliases]
    if cmd.complete:
        problems += [f"{cmd.where}: `pcluster {words[1]}` lacks required {'/'.join(sorted(r))}"
                     for r in help_.required if not r & set(used) and r != {"-h", "--help"}]
    return problems


def _path(key: str) -> list[str | int]:
    """Pulumi's config path syntax: `a.b[0].c` (and `["x.y"]`)."""
    parts: list[str | int] = []
    for name, quoted, index in re.findall(r'([^.\[\]"]+)|\["([^"]+)"\]|\[(\d+)\]', key):
        parts.append(int(index) if index else (quoted or name))
    return parts


def _typed(value: str) -> Any:
    """How `pulumi config set --path` stores a value: "true"/"false" booleans, integers numbers, else strings."""
    if value in ("true", "false"):
        return value == "true"
    return int(value) if re.fullmatch(r"-?\d+", value) else value


def check_pulumi_config_set(cmd: Command, stack: str = "dev") -> list[str]:
    """Apply the `pulumi config set` to the sample stack's values and let stack_config judge them."""
    words, flags, positional = cmd.words[3:], set(), []
    for w in words:
        if w.startswith("--"):
            flags.add(w)
        else:
            positional.append(w)
    if "--type" in flags:
        return [f"{cmd.where}: --type is not handled by this check; extend it"]
    if not positional:
        return []  # prose mentioning the command, no key
    key, value = positional[0], (positional[1] if len(positional) > 1 else None)
    namespace, _, name = key.partition(":")
    path = _path(name) if "--path" in flags else [name]
    if namespace == "aws":
        return [] if path[0] in AWS_PROVIDER_KEYS else [f"{cmd.where}: aws:{path[0]} is no AWS provider key"]
    if namespace != PROJECT:
        return [f"{cmd.where}: {key} is in no namespace the program reads ({PROJECT}:, aws:)"]
    placeholder = value is None or bool(PLACEHOLDER.search(value))
    values, secret_keys = values_from_stack_file(copy.deepcopy(stack_doc(stack)))
    full = f"{PROJECT}:{path[0]}"
    if "--secret" in flags:
        secret_keys = [*secret_keys, full]
        if value is None and full in SECRET_KEYS:  # read from stdin: judge a good one
            value, placeholder = SAMPLE_SECRET, False
    if len(path) == 1:
        values[full] = value if not placeholder else "placeholder"  # top-level entries are always strings
    else:
        node = values.setdefault(full, {})
        for part, following in zip(path[1:-1], path[2:], strict=True):
            empty: Any = [] if isinstance(following, int) else {}
            if isinstance(part, int):
                while len(node) <= part:
                    node.append(copy.deepcopy(empty))
                node = node[part]
            else:
                node = node.setdefault(part, empty)
        last = path[-1]
        stored = "placeholder" if placeholder else _typed(value)
        if isinstance(last, int):
            while len(node) <= last:
                node.append(None)
        node[last] = stored
    try:
        settings_from_values(values, stack=stack, secret_keys=secret_keys)
    except ConfigError as err:
        wrong = [str(p) for p in err.problems
                 if not placeholder or p.message.startswith(("unknown key", "unknown namespace"))]
        return [f"{cmd.where}: `{' '.join(cmd.words)}`: {w}" for w in wrong]
    return []


def check(cmd: Command) -> list[str]:
    first = cmd.words[0]
    if first == "aws":
        return check_aws(cmd)
    if first == "pcluster" or first.endswith("/pcluster"):
        return check_pcluster(cmd)
    if cmd.words[:3] == ["pulumi", "config", "set"]:
        return check_pulumi_config_set(cmd)
    return []


def checked(cmds: list[Command]) -> list[Command]:
    return [c for c in cmds if c.words[0] in ("aws", "pcluster") or c.words[0].endswith("/pcluster")
            or c.words[:3] == ["pulumi", "config", "set"]]


def sample(text: str) -> list[Command]:
    return checked(readme_commands(f"```bash\n{text}\n```\n"))


# ------------------------------------------------------------------ the README itself


def test_the_readme_has_the_commands_of_every_kind():
    """The parser finds what the README shows (an empty list would make the checks below vacuous)."""
    cmds = checked(readme_commands(README.read_text()))
    kinds = {(c.words[0].rsplit("/", 1)[-1], c.words[1]) for c in cmds}
    assert {("aws", "ds"), ("aws", "ssm"), ("aws", "backup"), ("aws", "efs"), ("pulumi", "config"),
            ("pcluster", "describe-compute-fleet"), ("pcluster", "update-compute-fleet")} <= kinds, kinds
    day2 = README.read_text().split("\n## Day 2\n", 1)[1].split("\n## ", 1)[0]
    ops = {" ".join(c.words[:3]) for c in checked(readme_commands(day2))}
    assert {"aws ds reset-user-password", "aws ssm get-parameter", "aws backup start-restore-job",
            "aws backup list-recovery-points-by-resource", "aws efs describe-file-systems",
            "pulumi config set"} <= ops, ops
    piped = [c for c in cmds if c.stdin_json is not None]
    assert len(piped) >= 3 and all(c.words[:3] == ["aws", "ds", "reset-user-password"] for c in piped), piped


def test_every_aws_command_in_the_readme_matches_the_service_models():
    problems = [p for c in checked(readme_commands(README.read_text())) if c.words[0] == "aws" for p in check_aws(c)]
    assert not problems, "\n".join(problems)


def test_every_pcluster_command_in_the_readme_matches_its_help():
    problems = [p for c in checked(readme_commands(README.read_text()))
                if c.words[0].endswith("pcluster") for p in check_pcluster(c)]
    assert not problems, "\n".join(problems)


def test_every_pulumi_config_set_in_the_readme_names_a_key_stack_config_knows():
    cmds = [c for c in checked(readme_commands(README.read_text())) if c.words[0] == "pulumi"]
    keys = {w for c in cmds for w in c.words if w.startswith("pcluster-ad:")}
    assert {"pcluster-ad:cluster.queues[0].maxCount", "pcluster-ad:adminPassword",
            "pcluster-ad:cluster.pclusterVersion"} <= keys, keys
    problems = [p for c in cmds for p in check_pulumi_config_set(c)]
    assert not problems, "\n".join(problems)


def test_the_sample_stack_parses_before_any_change():
    """The pulumi check edits Pulumi.dev.yaml's values; they must be valid to begin with."""
    values, secret_keys = values_from_stack_file(stack_doc("dev"))
    settings_from_values(values, stack="dev", secret_keys=secret_keys)


# ------------------------------------------------------------------ the checks catch wrong commands


@pytest.mark.parametrize("bad, expected", [
    ("aws ds reset-user-passwd --directory-id d-1 --user-name bob --new-password x", "no operation"),
    ("aws ds reset-user-password --directory-id d-1 --user-name bob --new-pasword x", "no parameter --new-pasword"),
    ("aws ds reset-user-password --directory-id d-1 --user-name bob", "lacks required --new-password"),
    ("aws dss describe-directories", "no service"),
    ("aws s3 copy a b", "no aws s3 command"),
    ("aws logs tail /aws/parallelcluster/x --folow", "has no option --folow"),
    ("printf '{\"DirectoryId\": \"%s\", \"User\": \"bob\", \"NewPassword\": \"%s\"}' \"$D\" \"$P\" \\\n"
     "  | aws ds reset-user-password --cli-input-json file:///dev/stdin", "unknown keys ['User']"),
    ("JOB=$(aws backup start-restore-job --recovery-point-arn \"$RP\" --metadat file://m.json)",
     "no parameter --metadat"),
])
def test_a_wrong_aws_command_fails(bad, expected):
    problems = [p for c in sample(bad) for p in check(c)]
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize("bad, expected", [
    (".venv-pcluster/bin/pcluster update-compute-fleet --cluster-name c --region r --state STOP_REQUESTED",
     "no option --state"),
    ("pcluster update-compute-fleet --region r --status STOP_REQUESTED", "lacks required --cluster-name/-n"),
    ("pcluster describe-clusters -n c", "no pcluster command"),
])
def test_a_wrong_pcluster_command_fails(bad, expected):
    problems = [p for c in sample(bad) for p in check(c)]
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize("bad, expected", [
    ("pulumi config set --path 'pcluster-ad:cluster.queues[0].maxCnt' 20", "unknown key (did you mean 'maxCount'?)"),
    ("pulumi config set --secret pcluster-ad:adminPasword", "unknown key"),
    ("pulumi config set --path 'pcluster-ad:cluster.queues[0].maxCount' 1", "maxCount"),  # below minCount 2
    ("pulumi config set --path 'pcluster-ad:cluster.pclusterVersin' \"$NEW\"", "unknown key"),
    ("pulumi config set pcluster-ed:cluster x", "no namespace"),
])
def test_a_wrong_pulumi_config_set_fails(bad, expected):
    problems = [p for c in sample(bad) for p in check(c)]
    assert any(expected in p for p in problems), problems


def test_right_samples_pass():
    """The same kinds of line, right: no problem (so the failures above are the typos, nothing else)."""
    good = """\
printf '{"DirectoryId": "%s", "UserName": "bob", "NewPassword": "%s"}' "$D" "$P" \\
  | aws ds reset-user-password --cli-input-json file:///dev/stdin; unset P
JOB=$(aws backup start-restore-job --recovery-point-arn "$RP" --metadata file://m.json --query RestoreJobId)
.venv-pcluster/bin/pcluster update-compute-fleet -n c --region r --status STOP_REQUESTED
pulumi config set --path 'pcluster-ad:cluster.queues[0].minCount' 0
pulumi config set --path 'pcluster-ad:cluster.pclusterVersion' "$NEW"
printf '%s' "$PW" | pulumi config set --secret pcluster-ad:adminPassword
"""
    cmds = sample(good)
    assert len(cmds) == 6, [c.words for c in cmds]
    assert [p for c in cmds for p in check(c)] == []


@pytest.mark.parametrize("right, wrong", [
    ('--resource-arn "$FS_ARN"', '--resource-arns "$FS_ARN"'),
    ("queues[0].maxCount' 20", "queues[0].maxCnt' 20"),
    ("describe-compute-fleet --cluster-name hpc-dev", "describe-compute-fleet --cluster hpc-dev"),
    ('"UserName": "Administrator"', '"Username": "Administrator"'),
])
def test_a_typo_in_the_readme_itself_is_caught(right, wrong):
    """The whole path, README text to verdict: one wrong word in a Day 2 command makes the README fail."""
    text = README.read_text()
    assert text.count(right) == 1, right
    problems = [p for c in checked(readme_commands(text.replace(right, wrong))) for p in check(c)]
    assert problems, wrong
