"""Local stand-ins for AWS endpoints, on 127.0.0.1 only (test-only code).

* FakeImds: IMDSv2 (a session token is required on every GET) with fake role credentials.
* FakeFunctionUrl: the join function URL. It VERIFIES the SigV4 signature of every request by
  recomputing it with botocore's SigV4Auth from the fake secret key, over exactly the headers the
  client signed, and answers what the test scripts (``responses``: a list used in order, the last one
  repeated). A request that does not verify gets 403 like AWS and is recorded as such. A close request
  (body ``{"joined": true, ...}``, the join window contract) is answered from ``close_responses``
  instead (default ``200 {"closed": true}``), in order, the last one repeated. ``join_answer`` builds the
  200 body of a credential request (issue 16: the computer object the function created, with a one-time
  password).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

ACCESS_KEY = "ASIAFAKEBOOTSTRAP001"
SECRET_KEY = "fAkE/SeCrEt+KeY=bootstrap/0123456789abcdefXYZ"
SESSION_TOKEN = "FwoGZXIvYXdzEFAKEsessionTOKEN/with+chars=" + "Q" * 40
INSTANCE_ID = "i-0123456789abcdef0"
ROLE_NAME = "pcluster-ad-node-role"
# The one-time password of the computer object the fake function "created" (the adcli stand-in expects it).
ONE_TIME_PASSWORD = 'Pa$$ w0rd "q" \\b`t`!#%'
# Any valid name when the node runs without --computer-prefix (deliberately not derived from the host name).
DEFAULT_COMPUTER_NAME = "PCAD-NODE-7F3A9"


def derived_computer_name(prefix: str, instance_id: str = INSTANCE_ID) -> str:
    """The name the join function gives with --computer-prefix: (prefix + sha256 hex of the id)[:15], upper."""
    return (prefix + hashlib.sha256(instance_id.encode()).hexdigest()).upper()[:15]


def join_answer(computer_prefix: str | None = None, **fields) -> tuple[int, dict]:
    """The join function's 200 answer (issue 16 shape); ``fields`` override or add keys (None removes one)."""
    doc = {"domain": "test.domain", "realm": "TEST.DOMAIN",
           "computerName": derived_computer_name(computer_prefix) if computer_prefix else DEFAULT_COMPUTER_NAME,
           "hostFqdn": "ip-10-0-0-12.test.domain", "oneTimePassword": ONE_TIME_PASSWORD}
    doc.update(fields)
    return 200, {k: v for k, v in doc.items() if v is not None}

_AUTH_RE = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=(?P<ak>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/(?P<service>[^/]+)/aws4_request,"
    r"\s*SignedHeaders=(?P<signed>[a-z0-9;-]+),\s*Signature=(?P<sig>[0-9a-f]{64})$"
)


class _Server(ThreadingHTTPServer):
    daemon_threads = True


def _start(handler_cls, owner) -> tuple[_Server, threading.Thread]:
    handler = type(handler_cls.__name__, (handler_cls,), {"owner": owner})
    srv = _Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    return srv, thread


class _Quiet(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner = None

    def log_message(self, fmt, *args):  # keep pytest output clean
        pass

    def _send(self, code: int, body: str, ctype: str = "text/plain") -> None:
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _ImdsHandler(_Quiet):
    def do_PUT(self):
        imds = self.owner
        ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
        imds.requests.append(("PUT", self.path, ttl))
        if self.path != "/latest/api/token" or not ttl or not ttl.isdigit():
            return self._send(400, "Bad Request")
        token = secrets.token_urlsafe(32)
        imds.tokens.add(token)
        return self._send(200, token)

    def do_GET(self):
        imds = self.owner
        token = self.headers.get("X-aws-ec2-metadata-token")
        imds.requests.append(("GET", self.path, token))
        if token not in imds.tokens:
            return self._send(401, "Unauthorized")
        if not imds.available:
            return self._send(404, "Not Found")
        md = "/latest/meta-data/"
        answers = {
            md + "instance-id": INSTANCE_ID,
            md + "placement/region": imds.region,
            md + "iam/security-credentials/": ROLE_NAME,
            md + f"iam/security-credentials/{ROLE_NAME}": json.dumps({
                "Code": "Success", "Type": "AWS-HMAC", "AccessKeyId": ACCESS_KEY, "SecretAccessKey": SECRET_KEY,
                "Token": SESSION_TOKEN, "Expiration": "2099-01-01T00:00:00Z", "LastUpdated": "2026-01-01T00:00:00Z",
            }),
        }
        if self.path in answers:
            return self._send(200, answers[self.path])
        return self._send(404, "Not Found")


@dataclass
class FakeImds:
    region: str = "eu-west-1"
    available: bool = True
    requests: list = field(default_factory=list)
    tokens: set = field(default_factory=set)

    def __enter__(self) -> FakeImds:
        self._srv, self._thread = _start(_ImdsHandler, self)
        self.url = f"http://127.0.0.1:{self._srv.server_address[1]}"
        return self

    def __exit__(self, *exc) -> None:
        self._srv.shutdown()
        self._srv.server_close()


def verify_sigv4(method: str, url: str, headers: dict[str, str], body: bytes, *, region: str,
                 service: str = "lambda") -> dict:
    """Raise ValueError unless the request is validly signed with the fake credentials; return details."""
    hdrs = {k.lower(): v for k, v in headers.items()}
    m = _AUTH_RE.match(hdrs.get("authorization", ""))
    if not m:
        raise ValueError("no or malformed SigV4 Authorization header")
    if m["ak"] != ACCESS_KEY:
        raise ValueError(f"unknown access key {m['ak']!r}")
    if (m["region"], m["service"]) != (region, service):
        raise ValueError(f"credential scope {m['region']}/{m['service']}, expected {region}/{service}")
    amz_date = hdrs.get("x-amz-date", "")
    when = dt.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    if abs((dt.datetime.now(dt.UTC) - when).total_seconds()) > 300 or m["date"] != amz_date[:8]:
        raise ValueError("signature date out of range")
    signed = m["signed"].split(";")
    for needed in ("host", "x-amz-date"):
        if needed not in signed:
            raise ValueError(f"{needed} is not signed")
    if hdrs.get("x-amz-security-token") != SESSION_TOKEN:
        raise ValueError("missing or wrong x-amz-security-token")
    request = AWSRequest(method=method, url=url, data=body, headers={h: hdrs[h] for h in signed})
    request.context["timestamp"] = amz_date
    signer = SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), service, region)
    canonical = signer.canonical_request(request)
    expected = signer.signature(signer.string_to_sign(request, canonical), request)
    if signer.signed_headers(signer.headers_to_sign(request)) != m["signed"]:
        raise ValueError("signed header list differs")
    if not hmac.compare_digest(expected, m["sig"]):
        raise ValueError("signature mismatch")
    return {"signed_headers": signed, "token_signed": "x-amz-security-token" in signed}


class _FunctionHandler(_Quiet):
    def do_POST(self):
        fn = self.owner
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        rec = {"t": time.monotonic(), "method": self.command, "path": self.path, "body": body,
               "headers": dict(self.headers.items())}
        try:
            rec.update(verify_sigv4(self.command, f"http://{self.headers.get('Host')}{self.path}",
                                    dict(self.headers.items()), body, region=fn.region))
            rec["verified"] = True
        except ValueError as exc:
            rec["verified"] = False
            rec["error"] = str(exc)
        try:
            rec["close"] = isinstance(doc := json.loads(body or b"null"), dict) and "joined" in doc
        except ValueError:
            rec["close"] = False
        with fn.lock:
            fn.requests.append(rec)
            if not rec["verified"]:
                return self._send(403, json.dumps({"Message": "The request signature we calculated does not match"}),
                                  "application/json")
            if rec["close"]:
                n, answers = len(fn.closes), fn.close_responses
            else:
                n, answers = len(fn.fetches), fn.responses
            code, doc = answers[min(n - 1, len(answers) - 1)]
        body_out = doc if isinstance(doc, str) else json.dumps(doc)
        return self._send(code, body_out, "application/json")

    do_GET = do_PUT = do_POST


@dataclass
class FakeFunctionUrl:
    responses: list  # [(status, dict-or-raw-string), ...]; the last one repeats
    region: str = "eu-west-1"
    requests: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    close_responses: list = field(default_factory=lambda: [(200, {"closed": True})])

    @property
    def fetches(self) -> list:
        """The credential requests (everything but close requests)."""
        return [r for r in self.requests if not r["close"]]

    @property
    def closes(self) -> list:
        """The close requests (body {"joined": true, ...})."""
        return [r for r in self.requests if r["close"]]

    def __enter__(self) -> FakeFunctionUrl:
        self._srv, self._thread = _start(_FunctionHandler, self)
        self.url = f"http://127.0.0.1:{self._srv.server_address[1]}/"
        return self

    def __exit__(self, *exc) -> None:
        self._srv.shutdown()
        self._srv.server_close()
