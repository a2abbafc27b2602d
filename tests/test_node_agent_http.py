"""The node agent's HTTP (issue 21): IMDSv2 (imds.py), the signed requests to the join function with their retries,
busy waits and deadline (join_client.py), and urllib underneath (httpc.py). The modules take `http`, `sleep`,
`clock` and `rand` as parameters: here they are fakes (no real sleep, no clock race); httpc itself talks to a server
on 127.0.0.1 that the test starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pcluster_ad.bootstrap.node_agent import httpc, imds, join_client, sigv4
from tests.adlab import sigv4 as lab_sigv4
from tests.bootstrap_sandbox.sandbox import node_agent_argv
from tests.bootstrap_sandbox.servers import FakeFunctionUrl, FakeImds, join_answer
from tests.test_node_agent import PYTHONS

EP = "http://127.0.0.9:8081"
URL = "https://abcdefghijklmnopqrstuvwxyz012345.lambda-url.eu-west-1.on.aws/"
CREDS = {"Code": "Success", "AccessKeyId": "ASIAFAKE0001", "SecretAccessKey": "sEcReT/key+1", "Token": "tOkEn/2=="}
PASSWORD = 'one "time" pw'
GOOD = (200, {"domain": "corp.example", "realm": "CORP.EXAMPLE", "computerName": "PCAD-1",
              "hostFqdn": "ip-10-0-0-9.corp.example", "oneTimePassword": PASSWORD, "serviceAccounts": ["svc-join"]})


class World:
    """Fake IMDS and function URL behind one `http` callable, a fake clock that only sleep moves, a fixed rand."""

    def __init__(self, answers=(GOOD,), closes=((200, {"closed": True}),), imds_down=0, pick=1.0):
        self.answers, self.closes, self.imds_down, self.pick = list(answers), list(closes), imds_down, pick
        self.t, self.slept, self.lines, self.calls, self.posts = 1000.0, [], [], [], []

    def http(self, method, url, headers=None, data=None, timeout=None, proxies=None, connect_timeout=None):
        self.calls.append({"method": method, "url": url, "headers": dict(headers), "timeout": timeout,
                           "proxies": proxies, "connect_timeout": connect_timeout})
        if url.startswith(EP):
            if self.imds_down:
                self.imds_down -= 1
                raise httpc.TransportError("ConnectionRefusedError: [Errno 111] Connection refused")
            path = url[len(EP):]
            if method == "PUT":
                assert path == "/latest/api/token" and headers == {"X-aws-ec2-metadata-token-ttl-seconds": "21600"}
                return 200, b"imds-session"
            assert headers == {"X-aws-ec2-metadata-token": "imds-session"}
            return {"/latest/meta-data/instance-id": (200, b"i-0abc\n"),
                    "/latest/meta-data/iam/security-credentials/": (200, b"node-role\n"),
                    "/latest/meta-data/iam/security-credentials/node-role": (200, json.dumps(CREDS).encode()),
                    }.get(path, (404, b"Not Found"))
        assert url == URL and method == "POST"
        body = json.loads(data)
        self.posts.append({"body": body, "headers": headers, "timeout": timeout, "t": self.t})
        queue = self.closes if "joined" in body else self.answers
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(answer, Exception):
            raise answer
        code, doc = answer
        return code, (doc if isinstance(doc, str) else json.dumps(doc)).encode()

    def clock(self):
        return self.t

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.t += seconds

    def rand(self, low, high):
        return low + (high - low) * self.pick

    def client(self, remaining=600, elapsed=3, no_backoff=False):
        return join_client.Client(URL, "eu-west-1", EP, 600, remaining, elapsed, http=self.http, sleep=self.sleep,
                                  clock=self.clock, rand=self.rand, out=self.lines.append, no_backoff=no_backoff)

    def log(self):
        return "\n".join(self.lines)


def assert_no_secret(world):
    text = world.log()
    for secret in (CREDS["SecretAccessKey"], CREDS["Token"], PASSWORD, "imds-session", "Signature="):
        assert secret not in text


# --- IMDS ----------------------------------------------------------------------------------------------------------


def test_imds_reads_token_instance_role_and_credentials_without_a_proxy():
    w = World()
    assert imds.role_credentials(EP, w.http) == ("i-0abc", "node-role", ("ASIAFAKE0001", "sEcReT/key+1", "tOkEn/2=="))
    assert [c["method"] for c in w.calls] == ["PUT", "GET", "GET", "GET"]
    # As the script's curl: --noproxy '*', 2 s to connect, 5 s in all.
    assert all(c["proxies"] == {} and c["timeout"] == 5.0 and c["connect_timeout"] == 2.0 for c in w.calls)


@pytest.mark.parametrize(("change", "message"), [
    ({"/latest/meta-data/instance-id": (404, b"")}, "IMDS GET meta-data/instance-id: HTTP 404"),
    ({"/latest/meta-data/iam/security-credentials/": (200, b"")}, "IMDS names no instance role"),
    ({"/latest/meta-data/iam/security-credentials/node-role": (200, json.dumps({**CREDS, "Code": "Expired"}).encode())},
     "as 'Expired'"),
])
def test_imds_failures_are_one_clear_error(change, message):
    w = World()

    def http(method, url, **kw):
        return change.get(url[len(EP):]) or w.http(method, url, **kw)

    with pytest.raises(imds.ImdsError, match=message):
        imds.role_credentials(EP, http)


# --- the join request ----------------------------------------------------------------------------------------------


def test_a_join_answer_is_signed_returned_and_logged_without_the_secret():
    w = World()
    answer = w.client().fetch_join()
    assert answer == ("i-0abc", "corp.example", "CORP.EXAMPLE", "PCAD-1", "ip-10-0-0-9.corp.example", "svc-join",
                      PASSWORD)
    (post,) = w.posts
    assert set(post["body"]) == {"proof"} and post["timeout"] == 90.0
    assert "Credential=ASIAFAKE0001/" in post["headers"]["authorization"]
    assert post["headers"]["x-amz-security-token"] == CREDS["Token"]
    assert w.lines == ["IMDS: instance i-0abc, instance role node-role",
                       f"join function: attempt 1 (POST {URL}, max 90s)",
                       "join function: HTTP 200 after 3s: domain corp.example, realm CORP.EXAMPLE, computer account "
                       "PCAD-1 (created for instance i-0abc, one-time password)"]
    assert_no_secret(w)


def test_failures_back_off_doubling_with_jitter_and_fresh_credentials_each_attempt():
    w = World(answers=[(500, {"error": "internal"}), httpc.TransportError("timeout: timed out"), (408, {}), GOOD])
    w.client().fetch_join()
    assert len(w.posts) == 4 and [c["method"] for c in w.calls].count("PUT") == 4
    # delay + up to half of it (rand picks the top: delay // 2), 1, 2, 4 s
    assert w.slept == [1, 3, 6]
    assert "join function: attempt 1 failed: HTTP 500: internal; retrying in ~1s" in w.lines
    assert "join function: attempt 2 failed: request failed (timeout: timed out); retrying in ~2s" in w.lines
    assert "join function: attempt 3 failed: HTTP 408: (no error message); retrying in ~4s" in w.lines
    assert w.log().count("IMDS: instance") == 1


def test_busy_answers_are_waited_out_with_full_jitter_not_counted_as_failures():
    busy = (429, {"error": "busy", "retryAfter": 3})
    w = World(answers=[busy, (503, {}), GOOD], pick=0.5)
    w.client().fetch_join()
    assert [line for line in w.lines if "busy" in line] == [
        "join function busy, retrying in 3.0 s (attempt 2; HTTP 429)",
                            "join function busy, retrying in 2.0 s (attempt 3; HTTP 503)"]
    assert w.slept == [3.0, 2.0] and "failed" not in w.log()


def test_the_test_hook_logs_the_waits_without_sleeping():
    w = World(answers=[(429, {"retryAfter": 3}), (500, {}), GOOD])
    w.client(no_backoff=True).fetch_join()
    assert w.slept == [] and "join function busy, retrying in 3.0 s" in w.log() and "retrying in ~1s" in w.log()


@pytest.mark.parametrize(("answers", "code", "message"), [
    ([(403, {"error": "window closed"})], 6, "the join function refused this node (HTTP 403: window closed). Not "
                                            "retrying: check that instance i-0abc carries the tag"),
    ([(404, {"Message": "nope"})], 5, "the join function answered HTTP 404: nope; not retryable"),
    ([(301, "")], 5, "the join function answered HTTP 301: (no error message); not retryable"),
    ([(200, {**GOOD[1], "computerName": "node_1"})], 7, "invalid answer from the join function (HTTP 200)"),
    ([(200, "not json")], 7, "invalid answer from the join function (HTTP 200)"),
])
def test_final_answers_end_with_the_scripts_exit_codes(answers, code, message):
    w = World(answers=answers)
    with pytest.raises(join_client.Exit) as e:
        w.client().fetch_join()
    assert (e.value.code, len(w.posts)) == (code, 1) and str(e.value).startswith(message)
    assert_no_secret(w)


def test_the_deadline_cuts_each_request_and_gives_up_with_exit_5():
    w = World(answers=[(500, {"error": "internal"})])
    with pytest.raises(join_client.Exit) as e:
        w.client(remaining=6, elapsed=0).fetch_join()
    assert e.value.code == 5 and str(e.value).startswith("giving up after 4 attempts in 5s (deadline 600 s)")
    assert [p["timeout"] for p in w.posts] == [6.0, 5.0, 2.0, 1.0]  # min(left, 90) at each attempt
    assert w.slept == [1, 3, 1]  # 1, 2 + 1, and 4 + 2 cut to 1 s before the deadline


def test_imds_not_ready_is_retried_then_exit_4_at_the_deadline():
    w = World(imds_down=2)
    w.client().fetch_join()
    assert w.log().count("IMDS not ready (instance role credentials unavailable); retrying in ~") == 2
    w = World(imds_down=100)
    with pytest.raises(join_client.Exit) as e:
        w.client(remaining=20).fetch_join()
    assert e.value.code == 4 and f"from IMDSv2 at {EP} before the deadline (600 s)" in str(e.value)
    assert w.posts == [] and max(w.slept) <= 10 + 5


# --- the close -----------------------------------------------------------------------------------------------------


def test_the_close_posts_joined_with_the_computer_name_and_logs_closed():
    w = World()
    c = w.client()
    assert c.close_window("PCAD-1") is True
    (post,) = w.posts
    assert list(post["body"]) == ["joined", "computerName", "proof"] and post["body"]["computerName"] == "PCAD-1"
    assert post["timeout"] == 20.0
    assert w.lines[-1] == "join window closed: the join function refuses instance i-0abc from now on"
    assert f"join window: closing (attempt 1, POST {URL}, computer PCAD-1, max 20s)" in w.lines


@pytest.mark.parametrize(("closes", "posts", "err"), [
    ([(403, {"error": "closed"})], 1, "HTTP 403: closed"),
    ([(200, {"closed": "yes"})], 1, "HTTP 200: (no error message)"),
    ([(500, {"error": "internal"})], 3, "HTTP 500: internal"),
    ([httpc.TransportError("URLError: refused")], 3, "request failed (URLError: refused)"),
])
def test_a_close_that_fails_is_a_warning(closes, posts, err):
    w = World(closes=closes)
    assert w.client().close_window("PCAD-1") is False
    assert len(w.posts) == posts
    assert w.lines[-1].startswith(f"WARNING: join window NOT closed ({err}); the node is joined all the same")


def test_a_busy_close_is_waited_out_within_its_60_seconds():
    w = World(closes=[(429, {})] * 5 + [(200, {"closed": True})], pick=0.1)
    assert w.client().close_window("PCAD-1") is True
    assert len(w.posts) == 6 and w.log().count("join function busy, retrying in") == 5
    assert w.posts[-1]["t"] - w.posts[0]["t"] <= 60


def test_a_close_without_time_left_is_not_tried():
    w = World()
    assert w.client(remaining=0).close_window("PCAD-1") is False
    assert w.posts == [] and w.lines[0].startswith("WARNING: join window NOT closed: no time left")


# --- SigV4 and urllib ----------------------------------------------------------------------------------------------


def test_the_signature_verifies_for_a_port_a_path_and_a_query():
    url = "http://127.0.0.1:8443/a%20b/c?z=1&a=x%2Fy&a=b"
    headers, data = sigv4.signed_post(url, "eu-west-1", {"k": "v"}, ("AKIDEXAMPLE", "secret/key", "tok"))
    assert headers["host"] == "127.0.0.1:8443"
    secret = lab_sigv4.Secret("AKIDEXAMPLE", "secret/key", "tok")
    assert lab_sigv4.verify(method="POST", url=url, headers=list(headers.items()), body=data, region="eu-west-1",
                            lookup=lambda ak: secret if ak == "AKIDEXAMPLE" else None) == secret


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.seen.append((self.path, dict(self.headers.items()), body))
        code, body, extra = {"/ok": (200, b"fine", {}), "/err": (429, b'{"retryAfter": 2}', {}),
                             "/moved": (302, b"", {"Location": "/ok"})}[self.path]
        self.send_response(code)
        for k, v in extra.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.seen = []
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_httpc_answers_errors_with_their_body_and_follows_no_redirect(server, monkeypatch):
    base = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")  # no proxy at all for IMDS (proxies={})
    ok = httpc.request("POST", base + "/ok", {"host": "x.example", "a": "b"}, b"data", 5, proxies={})
    assert ok == (200, b"fine")
    assert server.seen[0][1]["Host"] == "x.example" and server.seen[0][2] == b"data"  # the signed Host is sent
    assert httpc.request("POST", base + "/err", {}, b"", 5, proxies={}) == (429, b'{"retryAfter": 2}')
    assert httpc.request("POST", base + "/moved", {}, b"", 5, proxies={})[0] == 302
    assert [p for p, _, _ in server.seen] == ["/ok", "/err", "/moved"]


def test_httpc_no_answer_is_a_transport_error():
    port = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    dead = f"http://127.0.0.1:{port.server_address[1]}/ok"
    port.server_close()
    with pytest.raises(httpc.TransportError, match="Connection ?[Rr]efused|Errno 111"):
        httpc.request("GET", dead, {}, None, 5, proxies={})


# --- the commands, as the script runs them ------------------------------------------------------------------------


@pytest.mark.parametrize("python", [sys.executable, *PYTHONS])
def test_fetch_join_and_close_window_commands_against_the_stand_ins(python):
    """On every Python the nodes may have (down to 3.6: urllib, http.client's connection hook)."""
    env = {"PATH": os.environ["PATH"], "PCLUSTER_AD_TEST_NO_BACKOFF": "1"}
    agent = [python, *node_agent_argv()[1:]]
    with FakeImds() as fake_imds, FakeFunctionUrl([(500, {"error": "x"}), join_answer()]) as fn:
        fetch = subprocess.run([*agent, "fetch-join", fn.url, "eu-west-1", fake_imds.url, "600", "600",
                                "2"], capture_output=True, text=True, env=env, timeout=60)
        close = subprocess.run([*agent, "close-window", fn.url, "eu-west-1", fake_imds.url, "600", "500",
                                "PCAD-NODE-7F3A9"], capture_output=True, text=True, env=env, timeout=60)
    assert fetch.returncode == 0, fetch.stderr
    lines = fetch.stdout.split("\n")
    assert lines[:6] == ["i-0123456789abcdef0", "test.domain", "TEST.DOMAIN", "PCAD-NODE-7F3A9",
                         "ip-10-0-0-12.test.domain", "svc-pcad-join"] and len(lines) == 7
    assert lines[6] not in fetch.stderr and "attempt 1 failed: HTTP 500: x; retrying in ~1s" in fetch.stderr
    assert close.returncode == 0 and close.stdout == "" and "join window closed" in close.stderr
    assert "IMDS: instance" in fetch.stderr and "IMDS: instance" not in close.stderr  # logged once, as before
    assert all(r["verified"] and r["proof_verified"] for r in fn.requests) and len(fn.requests) == 3
    with FakeImds() as fake_imds, FakeFunctionUrl([(403, {"error": "forbidden"})]) as fn:
        refused = subprocess.run([*agent, "fetch-join", fn.url, "eu-west-1", fake_imds.url, "600", "600",
                                  "0"], capture_output=True, text=True, env=env, timeout=60)
    assert (refused.returncode, refused.stdout) == (6, "")
    assert "ERROR: the join function refused this node (HTTP 403: forbidden)" in refused.stderr


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    """An HTTPS server on 127.0.0.1 with a self-signed certificate for that address (what the lab's CA does)."""
    import ssl

    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(d / "key.pem"), "-out",
                    str(d / "cert.pem")], check=True, capture_output=True)
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.seen = []
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(d / "cert.pem", d / "key.pem")
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv, d / "cert.pem"
    srv.shutdown()
    srv.server_close()


@pytest.mark.parametrize("python", [sys.executable, *PYTHONS])
def test_httpc_speaks_tls_with_the_systems_trust_and_refuses_an_unknown_certificate(tls_server, python):
    """The function URL is https: the OS's CA bundle decides (SSL_CERT_FILE stands in for it here), on every Python
    the nodes may have."""
    srv, cert = tls_server
    url = f"https://127.0.0.1:{srv.server_address[1]}/ok"
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from node_agent import httpc\n"
            "try:\n    print(httpc.request('POST', sys.argv[2], {}, b'x', 5, proxies={}))\n"
            "except httpc.TransportError as e:\n    print('no answer:', e)\n")
    agent = node_agent_argv()[-1]
    trusted = subprocess.run([python, "-I", "-c", code, agent, url], capture_output=True, text=True, timeout=60,
                             env={"PATH": os.environ["PATH"], "SSL_CERT_FILE": str(cert)})
    assert trusted.stdout == "(200, b'fine')\n", trusted.stderr
    unknown = subprocess.run([python, "-I", "-c", code, agent, url], capture_output=True, text=True, timeout=60,
                             env={"PATH": os.environ["PATH"], "SSL_CERT_FILE": "/nonexistent"})
    assert unknown.stdout.startswith("no answer:") and "CERTIFICATE_VERIFY_FAILED" in unknown.stdout, unknown.stdout
