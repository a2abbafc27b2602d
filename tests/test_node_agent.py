"""The node agent (bootstrap/node_agent/): each module with fakes for what it touches; the zipapp the stack bakes into
the join script runs and answers as the checkout's package does, on every Python the nodes may have (down to 3.6),
and is the same bytes at every bake; the script removes it at exit."""

from __future__ import annotations

import ast
import base64
import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pcluster_ad.bootstrap.node_agent import __main__ as cli
from pcluster_ad.bootstrap.node_agent import files, function_api, imds_lockdown, sigv4, sssd_config
from pcluster_ad.components.bootstrap_scripts import (
    NODE_AGENT_LINE,
    NODE_AGENT_MODULES,
    bake_function_url,
    bake_id_mode,
    bake_node_agent,
    node_agent_zip,
)
from tests.bootstrap_sandbox.sandbox import AGENT_DIR, JOIN_SCRIPT, node_agent_argv
from tests.bootstrap_sandbox.servers import FakeFunctionUrl, FakeImds
from tests.test_bootstrap_scripts import GOOD, run_join, sandbox  # noqa: F401  (fixture)

# The oldest python3 of a ParallelCluster 3 AMI (docs/design.md, "The node agent's interpreter"): RHEL 8 / Rocky 8.
OLDEST = (3, 6)
PYENV = Path(os.environ.get("PYENV_ROOT", "/root/.pyenv")) / "versions"
# Every interpreter this machine has between the oldest and ours: the agent must give the same answers on each.
PYTHONS = sorted({str(p) for v in ("3.6", "3.7", "3.9", "3.10", "3.12") for p in PYENV.glob(f"{v}.*/bin/python3")})


def run(module_fn, *args, stdin: str = ""):
    """Call a command function as __main__ does, with stdin/stdout faked: (exit code, stdout, stderr)."""
    old = sys.stdin, sys.stdout, sys.stderr
    sys.stdin, sys.stdout, sys.stderr = io.StringIO(stdin), io.StringIO(), io.StringIO()
    code = 0
    try:
        module_fn(*args)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        out, err = sys.stdout.getvalue(), sys.stderr.getvalue()
        sys.stdin, sys.stdout, sys.stderr = old
    return code, out, err


# --- the modules -------------------------------------------------------------------------------------------------


def test_signed_post_puts_credentials_token_and_proof_in_the_request_only():
    creds = sigv4.credentials(json.dumps({"Code": "Success", "AccessKeyId": "AKIAEXAMPLE",
                                          "SecretAccessKey": "s3cr\"et\\", "Token": "tok"}))
    headers, data = sigv4.signed_post("https://fn.example/", "eu-west-1", {"a": 1}, creds)
    assert headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIAEXAMPLE/")
    assert "/eu-west-1/lambda/aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-security-token," \
        in headers["authorization"]
    assert headers["x-amz-security-token"] == "tok" and headers["host"] == "fn.example"
    assert "s3cr" not in json.dumps(headers) + data.decode()  # the secret key signs, it is never sent
    body = json.loads(data)
    assert body["a"] == 1 and set(body["proof"]) == {"authorization", "x-amz-date", "x-amz-security-token"}
    assert "Credential=AKIAEXAMPLE/" in body["proof"]["authorization"]
    assert "/eu-west-1/sts/aws4_request" in body["proof"]["authorization"]
    assert "SignedHeaders=content-type;host;x-amz-date;x-amz-security-token;x-pcluster-ad-audience" \
        in body["proof"]["authorization"]


@pytest.mark.parametrize(("creds", "message"), [
    ("not json", "not valid JSON with AccessKeyId/SecretAccessKey"),
    ('{"Code": "Expired", "AccessKeyId": "A", "SecretAccessKey": "S"}', "IMDS reports the instance credentials as"),
    ('{"AccessKeyId": "A:B", "SecretAccessKey": "S\\""}', "are malformed"),
])
def test_bad_credentials_are_refused_without_echoing_them(creds, message):
    with pytest.raises(ValueError, match=message) as e:
        sigv4.credentials(creds)
    assert 'S"' not in str(e.value)


def test_sts_proof_without_a_token_signs_no_token_header():
    proof = sigv4.sts_proof("us-east-1", "AKID", "secret", "")
    assert "x-amz-security-token" not in proof["authorization"]
    assert proof["x-amz-security-token"] == ""


def test_the_join_answer_gives_the_fields_in_order_and_refuses_a_bad_answer_by_field():
    answer = {"domain": "Corp.Example", "computerName": "NODE-1", "hostFqdn": "Ip-10-0-0-1.corp.example",
              "oneTimePassword": "pw d", "serviceAccounts": ["svc-join"]}
    assert function_api.parse_join_answer(json.dumps(answer)) == [
        "corp.example", "CORP.EXAMPLE", "NODE-1", "ip-10-0-0-1.corp.example", "svc-join", "pw d"]
    with pytest.raises(ValueError, match="no valid 'computerName'"):
        function_api.parse_join_answer(json.dumps({**answer, "computerName": "node_1"}))
    with pytest.raises(ValueError, match="not a JSON object"):
        function_api.parse_join_answer("[]")


def test_error_text_and_retry_after():
    assert function_api.error_field_text('{"error": "window\\nclosed"}') == "window?closed"
    assert function_api.error_field_text("<html>") == "(no error message)"
    assert function_api.retry_after('{"retryAfter": 7}') == 7
    assert function_api.retry_after('{"retryAfter": true}') == 0 and function_api.retry_after("x") == 0


def test_imds_address_default_and_stand_in_endpoints():
    assert run(imds_lockdown.imds_address, "http://169.254.169.254")[1] == "4 169.254.169.254\n6 fd00:ec2::254\n"
    assert run(imds_lockdown.imds_address, "http://10.98.1.1:8081")[1] == "4 10.98.1.1 8081\n"
    code, _, err = run(imds_lockdown.imds_address, "https://10.98.1.1")
    assert code == 1 and "cannot lock it down" in err


def test_write_atomic_keeps_the_mode_of_the_file_it_replaces_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "sssd.conf"
    files.write_atomic(str(target), "new\n", None)
    assert target.read_text() == "new\n" and stat.S_IMODE(target.stat().st_mode) == 0o600
    target.chmod(0o640)
    files.write_atomic(str(target), "newer\n", str(target))
    assert target.read_text() == "newer\n" and stat.S_IMODE(target.stat().st_mode) == 0o640
    with pytest.raises(TypeError):
        files.write_atomic(str(target), b"not text", str(target))  # a failed write: the old file stays, no temp
    assert target.read_text() == "newer\n" and sorted(p.name for p in tmp_path.iterdir()) == ["sssd.conf"]


def test_node_config_writes_sssd_and_krb5_and_drops_the_cache_when_the_id_mode_changes(tmp_path):
    conf, krb5 = tmp_path / "sssd" / "sssd.conf", tmp_path / "krb5.conf"
    db, mc = tmp_path / "db", tmp_path / "mc"
    db.mkdir()
    mc.mkdir()
    krb5.write_text("[libdefaults]\n    dns_lookup_realm = false\n[realms]\n")
    args = (str(conf), "corp.example", "CORP.EXAMPLE", str(krb5))
    code, out, _ = run(sssd_config.node_config, *args, "idmap", str(db), str(mc))
    assert code == 0 and "sssd configured for corp.example" in out
    text = conf.read_text()
    assert "[domain/corp.example]" in text and "ldap_id_mapping = True" in text and "domains = corp.example" in text
    assert krb5.read_text() == \
        "[libdefaults]\n    dns_lookup_realm = false\n    default_realm = CORP.EXAMPLE\n[realms]\n"
    (db / "cache_corp.example.ldb").write_text("x")
    (mc / "passwd").write_text("x")
    code, out, _ = run(sssd_config.node_config, *args, "rfc2307", str(db), str(mc))
    assert code == 0 and "cache dropped (cache_corp.example.ldb, passwd)" in out
    assert "ldap_id_mapping = False" in conf.read_text() and "min_id = 2000" in conf.read_text()
    assert list(db.iterdir()) == [] and list(mc.iterdir()) == []
    before = conf.read_text()
    code, out, _ = run(sssd_config.node_config, *args, "rfc2307", str(db), str(mc))
    assert code == 0 and "already has" in out and conf.read_text() == before  # idempotent
    code, _, err = run(sssd_config.node_config, *args, "uids", str(db), str(mc))
    assert code == 1 and "unknown ID mode 'uids'" in err


def test_daemon_opts_drops_only_the_f_option(tmp_path):
    path = tmp_path / "sssd"
    path.write_text('# Debian\nDAEMON_OPTS="-D -f"\n')
    code, out, _ = run(sssd_config.daemon_opts, str(path))
    assert code == 0 and path.read_text() == '# Debian\nDAEMON_OPTS="-D"\n' and "removed the -f option" in out
    assert run(sssd_config.daemon_opts, str(tmp_path / "absent")) == (0, "", "")


def test_joined_realm_from_realm_list_or_from_disk_with_a_fake_klist(tmp_path, monkeypatch):
    listing = "corp.example\n  type: kerberos\n  realm-name: CORP.EXAMPLE\n  domain-name: corp.example\n" \
              "  configured: kerberos-member\n"
    assert run(sssd_config.joined_realm, "/absent", "/absent", stdin=listing)[:2] == (0, "corp.example\nCORP.EXAMPLE\n")
    conf = tmp_path / "sssd.conf"
    conf.write_text("[sssd]\ndomains = corp.example\n[domain/corp.example]\nkrb5_realm = CORP.EXAMPLE\n")
    klist = tmp_path / "bin" / "klist"
    klist.parent.mkdir()
    klist.write_text("#!/bin/sh\necho 'Keytab name: FILE:'\"$2\"\necho '   2 NODE-1$@CORP.EXAMPLE'\n")
    klist.chmod(0o755)
    monkeypatch.setenv("PATH", f"{klist.parent}:{os.environ['PATH']}")
    assert run(sssd_config.joined_realm, str(conf), "/etc/krb5.keytab")[:2] == (0, "corp.example\nCORP.EXAMPLE\n")
    assert run(sssd_config.joined_realm, str(tmp_path / "absent.conf"), "/k")[0] == 1


def test_the_command_line_dispatches_every_command_to_a_function():
    for cmd, (module, name) in cli.COMMANDS.items():
        assert callable(getattr(__import__(f"pcluster_ad.bootstrap.node_agent.{module}", fromlist=[name]), name)), cmd
    with pytest.raises(KeyError):
        cli.main(["node-agent", "no-such-command"])


# --- the interpreter ---------------------------------------------------------------------------------------------

# Standard-library names and keyword arguments newer than 3.6 that the grammar check cannot see.
NEWER_THAN_36 = {"removeprefix", "removesuffix", "UTC", "fromisoformat", "isascii", "breakpoint", "cache", "prod",
                 "dataclasses", "contextvars", "zoneinfo", "graphlib", "tomllib"}
NEWER_KEYWORDS = {"capture_output", "text"}  # subprocess.run's, 3.7


@pytest.mark.parametrize("module", NODE_AGENT_MODULES)
def test_every_module_parses_with_the_oldest_grammar_and_names_no_newer_api(module):
    source = (AGENT_DIR / module).read_text()
    tree = ast.parse(source, filename=module, feature_version=OLDEST)  # walrus, positional-only, match... refused
    names = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    names |= {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)
              for a in n.names} | {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    names |= {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    assert names & NEWER_THAN_36 == set(), f"{module} uses {sorted(names & NEWER_THAN_36)}: newer than Python 3.6"
    keywords = {k.arg for n in ast.walk(tree) if isinstance(n, ast.Call) for k in n.keywords}
    assert keywords & NEWER_KEYWORDS == set(), f"{module} passes {sorted(keywords & NEWER_KEYWORDS)}: Python 3.7"
    # No annotations evaluated at run time (list[str] fails before 3.9), no __future__ imports (3.6 knows few).
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.arg | ast.AnnAssign) and n.annotation is not None]
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.returns is not None]


def test_the_module_list_the_stack_bakes_is_the_folder():
    assert sorted(NODE_AGENT_MODULES) == sorted(p.name for p in AGENT_DIR.glob("*.py"))


# --- the zipapp the stack bakes ----------------------------------------------------------------------------------


def baked_script() -> str:
    url = "https://abcdefghijklmnopqrstuvwxyz012345.lambda-url.eu-west-1.on.aws/"
    return bake_node_agent(bake_function_url(bake_id_mode(JOIN_SCRIPT.read_text(), "idmap"), url), AGENT_DIR)


def baked_zip(script: str) -> bytes:
    (line,) = [x for x in script.splitlines() if x.startswith("NODE_AGENT_ZIP=")]
    assert re.fullmatch(r"NODE_AGENT_ZIP='[A-Za-z0-9+/=]+'", line), line[:80]
    return base64.b64decode(line.split("'")[1])


def test_the_checkout_copy_carries_no_agent_and_the_baked_copy_carries_it_once():
    assert JOIN_SCRIPT.read_text().count(NODE_AGENT_LINE + "\n") == 1
    script = baked_script()
    assert NODE_AGENT_LINE not in script and script.count("\nNODE_AGENT_ZIP=") == 1
    assert "PYHELPER" not in JOIN_SCRIPT.read_text()
    with pytest.raises(ValueError, match="exactly once"):
        bake_node_agent(script, AGENT_DIR)


def test_the_baked_zip_is_the_same_bytes_at_every_bake_and_holds_exactly_the_agent(tmp_path):
    first, second = baked_zip(baked_script()), baked_zip(baked_script())
    assert first == second
    zf = zipfile.ZipFile(io.BytesIO(first))
    names = zf.namelist()
    assert names == sorted(names) == ["__main__.py", *sorted(f"node_agent/{m}" for m in NODE_AGENT_MODULES)]
    assert {i.date_time for i in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    for m in NODE_AGENT_MODULES:
        assert zf.read(f"node_agent/{m}") == (AGENT_DIR / m).read_bytes()
    # A touched file (new mtime) changes nothing; a changed one changes the zip.
    copy = tmp_path / "node_agent"
    copy.mkdir()
    for m in NODE_AGENT_MODULES:
        (copy / m).write_bytes((AGENT_DIR / m).read_bytes())
    assert node_agent_zip(copy) == first
    (copy / "imds.py").write_text((AGENT_DIR / "imds.py").read_text() + "\n# v2\n")
    assert node_agent_zip(copy) != first
    (copy / "imds.py").unlink()
    with pytest.raises(ValueError, match="node agent module .*imds.py is missing"):
        node_agent_zip(copy)


CASES = [
    (["imds-address", "http://169.254.169.254"], ""),
    (["imds-address", "http://10.98.1.1:8081"], ""),
    (["imds-address", "ftp://x"], ""),
    (["joined-realm", "/nonexistent/sssd.conf", "/nonexistent/keytab"], ""),
    (["no-such-command"], ""),
]


def answers(argv: list[str]) -> list[tuple[int, str, str]]:
    out = []
    for args, stdin in CASES:
        proc = subprocess.run([*argv, *args], input=stdin, capture_output=True, text=True, timeout=60,
                              env={"PATH": os.environ["PATH"], "PCLUSTER_AD_TEST_NO_BACKOFF": "1"})
        err = proc.stderr if proc.returncode == 0 or "Traceback" not in proc.stderr else proc.stderr.splitlines()[-1]
        out.append((proc.returncode, proc.stdout, err))
    return out


@pytest.mark.parametrize("python", [sys.executable, *PYTHONS])
def test_the_baked_zipapp_answers_as_the_checkout_package_on_every_python(tmp_path, python):
    pyz = tmp_path / "node-agent.pyz"
    pyz.write_bytes(baked_zip(baked_script()))
    checkout = answers(node_agent_argv())
    # The script's way (BOOT, the zip first on sys.path) and the zipapp's own entry give the same answers.
    boot = node_agent_argv(pyz)
    assert answers([python, *boot[1:]]) == checkout
    assert answers([python, "-I", str(pyz)]) == checkout
    assert checkout[0] == (0, "4 169.254.169.254\n6 fd00:ec2::254\n", "")
    assert checkout[-1][0] == 1 and "KeyError: 'no-such-command'" in checkout[-1][2]


def test_the_oldest_python_runs_the_on_disk_join_check(tmp_path):
    """joined-realm runs klist: with Python 3.7's capture_output it failed on RHEL 8's python3 (3.6)."""
    oldest = [p for p in PYTHONS if "/3.6." in p]
    if not oldest:
        pytest.skip(f"no Python 3.6 under {PYENV}")
    conf = tmp_path / "sssd.conf"
    conf.write_text("[domain/corp.example]\n")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "klist").write_text("#!/bin/sh\necho '   2 NODE-1$@CORP.EXAMPLE'\n")
    (bindir / "klist").chmod(0o755)
    proc = subprocess.run([oldest[0], *node_agent_argv()[1:], "joined-realm", str(conf), "/k"], input="",
                          capture_output=True, text=True, env={"PATH": f"{bindir}:/usr/bin:/bin"}, timeout=60)
    assert (proc.returncode, proc.stdout) == (0, "corp.example\nCORP.EXAMPLE\n"), proc.stderr


# --- the script ----------------------------------------------------------------------------------------------------


def test_the_baked_script_joins_and_removes_its_decoded_agent_at_exit(sandbox, tmp_path):  # noqa: F811
    script = tmp_path / "join-domain.sh"
    script.write_text(bake_node_agent(JOIN_SCRIPT.read_text(), AGENT_DIR))
    box = sandbox()
    with FakeImds() as fake_imds, FakeFunctionUrl([GOOD]) as fn:
        result = box.run(script, ["--function-url", fn.url, "--region", "eu-west-1"], box.env(fake_imds.url))
    assert result.rc == 0, result.output
    agents = {c["argv"][3] for c in box.calls("python3") if c["argv"][:2] == ["-I", "-c"]}
    assert len(agents) == 1 and agents.pop().startswith(str(box.tmp)), "one decoded zip, in TMPDIR, for every call"
    assert list(box.tmp.iterdir()) == [], "the decoded agent is removed at exit"


def test_a_lone_checkout_copy_says_where_the_agent_is_missing(sandbox, tmp_path):  # noqa: F811
    script = tmp_path / "join-domain.sh"
    script.write_text(JOIN_SCRIPT.read_text())
    box = sandbox()
    with FakeImds() as fake_imds, FakeFunctionUrl([GOOD]) as fn:
        result = box.run(script, ["--function-url", fn.url, "--region", "eu-west-1"], box.env(fake_imds.url))
    assert result.rc == 3 and f"no node agent: NODE_AGENT_ZIP is empty and {tmp_path}/node_agent/ is missing" \
        in result.output, result.output
    assert fn.requests == []


def test_the_checkout_copy_runs_the_folder_beside_it(sandbox):  # noqa: F811
    box = sandbox()
    with FakeImds() as fake_imds, FakeFunctionUrl([GOOD]) as fn:
        result = run_join(box, fake_imds, fn)
    assert result.rc == 0, result.output
    # A copy of the folder in the run's own private directory (attack finding 1 of issue 21: nothing else beside the
    # script reaches root's sys.path), removed at exit.
    (agent,) = {c["argv"][3] for c in box.calls("python3") if c["argv"][:2] == ["-I", "-c"]}
    assert agent != str(AGENT_DIR.parent) and agent.startswith(str(box.tmp)) and not os.path.exists(agent)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_a_checkout_copy_in_a_folder_another_user_owns_is_refused_naming_it(sandbox, tmp_path):  # noqa: F811
    """Attack finding 1 of issue 21: root runs the folder beside a checkout's copy only when nobody else can change
    it: a user's own directory (here uid 65534's) is refused, naming the path, before any request."""
    home = tmp_path / "home-of-a-user"
    (home / "node_agent").mkdir(parents=True)
    for module in AGENT_DIR.glob("*.py"):
        shutil.copy(module, home / "node_agent" / module.name)
    script = home / "join-domain.sh"
    script.write_text(JOIN_SCRIPT.read_text())
    os.chown(home, 65534, 65534)
    box = sandbox()
    with FakeImds() as fake_imds, FakeFunctionUrl([GOOD]) as fn:
        result = box.run(script, ["--function-url", fn.url, "--region", "eu-west-1"], box.env(fake_imds.url))
    assert result.rc == 3 and f"no node agent: {home} can be changed by a user other than root" in result.output, \
        result.output
    assert fn.requests == [] and list(box.tmp.iterdir()) == []


def test_steps_chained_with_then_run_in_order_and_the_first_failure_ends_the_chain(monkeypatch):
    """`A ARGS --then B ARGS`: one Python start for steps that follow each other; a failing step exits with its own
    code and the steps after it never run, as `a || exit $?; b` did in the script."""
    ran = []
    monkeypatch.setitem(cli.COMMANDS, "t-ok", ("common", "t_ok"))
    monkeypatch.setitem(cli.COMMANDS, "t-fail", ("common", "t_fail"))
    from pcluster_ad.bootstrap.node_agent import common
    monkeypatch.setattr(common, "t_ok", lambda *a: ran.append(a), raising=False)
    monkeypatch.setattr(common, "t_fail", lambda *a: (ran.append(a), sys.exit(9)), raising=False)
    cli.main(["agent", "t-ok", "a", "b", "--then", "t-ok", "c"])
    assert ran == [("a", "b"), ("c",)]
    ran.clear()
    with pytest.raises(SystemExit) as exited:
        cli.main(["agent", "t-ok", "1", "--then", "t-fail", "2", "--then", "t-ok", "3"])
    assert exited.value.code == 9 and ran == [("1",), ("2",)]
