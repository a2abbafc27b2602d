"""Local stand-ins for AWS endpoints, on 127.0.0.1 only (test-only code).

* FakeImds: IMDSv2 (a session token is required on every GET) with fake role credentials: always the same
  ones, or (``rotate=True``) new ones at every read, like instance-role credentials that rotate. Every set
  handed out is in ``issued``, in order.
* FakeFunctionUrl: the join function URL. It VERIFIES the SigV4 signature of every request by
  recomputing it with botocore's SigV4Auth from the fake secret key (of the credentials a FakeImds
  handed out), over exactly the headers the client signed, and answers what the test scripts
  (``responses``: a list used in order, the last one repeated). A request that does not verify gets 403
  like AWS and is recorded as such. It then checks the body as the join function does: a JSON object with
  the caller proof (``"proof"``: the headers of an STS GetCallerIdentity request, lambda_src/join_handler.py
  PROOF_*). The proof is verified like STS would (``verify_proof``: the SigV4 signature recomputed for
  sts in the function's region, the audience header signed, fresh) and must be signed with the credentials
  that signed the request itself; no proof or a malformed body gets 400, a proof that does not verify 403,
  like the function. A close request (``{"joined": true, "computerName": N, "proof": {...}}``, the join
  window contract) is answered from ``close_responses`` instead (default ``200 {"closed": true}``), in
  order, the last one repeated. ``join_answer`` builds the 200 body of a credential request (issue 16: the
  computer object the function created, with a one-time password).
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

from pcluster_ad.lambda_src import join_handler as contract
from tests.adlab import sigv4

ACCESS_KEY = "ASIAFAKEBOOTSTRAP001"
SECRET_KEY = "fAkE/SeCrEt+KeY=bootstrap/0123456789abcdefXYZ"
SESSION_TOKEN = "FwoGZXIvYXdzEFAKEsessionTOKEN/with+chars=" + "Q" * 40
INSTANCE_ID = "i-0123456789abcdef0"
ROLE_NAME = "pcluster-ad-node-role"
# The one-time password of the computer object the fake function "created" (the adcli stand-in expects it).
ONE_TIME_PASSWORD = 'Pa$$ w0rd "q" \\b`t`!#%'
# Any valid name when the node runs without --computer-prefix (deliberately not derived from the host name).
DEFAULT_COMPUTER_NAME = "PCAD-NODE-7F3A9"


# How far an x-amz-date may be from now: the proof is made for each request (STS itself allows 15 minutes).
PROOF_MAX_AGE = 300


@dataclass(frozen=True)
class RoleCredentials:
    access_key: str
    secret_key: str
    token: str


DEFAULT_CREDENTIALS = RoleCredentials(ACCESS_KEY, SECRET_KEY, SESSION_TOKEN)
# Every set of credentials any FakeImds handed out, by access key id: what "AWS" (the function URL's
# signature check, STS for the proof) knows.
_ISSUED = {ACCESS_KEY: DEFAULT_CREDENTIALS}
_ISSUED_LOCK = threading.Lock()


def known_credentials(access_key: str) -> RoleCredentials | None:
    with _ISSUED_LOCK:
        return _ISSUED.get(access_key)


def new_credentials() -> RoleCredentials:
    """Fresh role credentials (rotation), known from now on."""
    creds = RoleCredentials("ASIAFAKEROTATED" + secrets.token_hex(5).upper(),
                            "rOtAtEd/" + secrets.token_urlsafe(24) + "+=",
                            "FwoGZXIvYXdzROTATEDsessionTOKEN/" + secrets.token_urlsafe(30) + "+=")
    with _ISSUED_LOCK:
        _ISSUED[creds.access_key] = creds
    return creds


def derived_computer_name(prefix: str, instance_id: str = INSTANCE_ID) -> str:
    """The name the join function gives with --computer-prefix: (prefix + sha256 hex of the id)[:15], upper."""
    return (prefix + hashlib.sha256(instance_id.encode()).hexdigest()).upper()[:15]


# The join function's adding account, which it answers as "serviceAccounts" (no login on any node).
SERVICE_ACCOUNT = "svc-pcad-join"


def join_answer(computer_prefix: str | None = None, **fields) -> tuple[int, dict]:
    """The join function's 200 answer (issue 16 shape, with serviceAccounts as lambda_src/join_handler.py answers
    it); ``fields`` override or add keys (None removes one: serviceAccounts=None is an older function's answer)."""
    doc = {"domain": "test.domain", "realm": "TEST.DOMAIN",
           "computerName": derived_computer_name(computer_prefix) if computer_prefix else DEFAULT_COMPUTER_NAME,
           "hostFqdn": "ip-10-0-0-12.test.domain", "oneTimePassword": ONE_TIME_PASSWORD,
           "serviceAccounts": [SERVICE_ACCOUNT]}
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
        if self.path == md + f"iam/security-credentials/{ROLE_NAME}":
            creds = new_credentials() if imds.rotate else DEFAULT_CREDENTIALS
            imds.issued.append(creds)
            return self._send(200, json.dumps({
                "Code": "Success", "Type": "AWS-HMAC", "AccessKeyId": creds.access_key,
                "SecretAccessKey": creds.secret_key, "Token": creds.token, "Expiration": "2099-01-01T00:00:00Z",
                "LastUpdated": "2026-01-01T00:00:00Z",
            }))
        answers = {
            md + "instance-id": INSTANCE_ID,
            md + "placement/region": imds.region,
            md + "iam/security-credentials/": ROLE_NAME,
        }
        if self.path in answers:
            return self._send(200, answers[self.path])
        return self._send(404, "Not Found")


@dataclass
class FakeImds:
    region: str = "eu-west-1"
    available: bool = True
    rotate: bool = False  # new credentials at every read
    requests: list = field(default_factory=list)
    tokens: set = field(default_factory=set)
    issued: list = field(default_factory=list)  # the RoleCredentials handed out, in order

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
    creds = known_credentials(m["ak"])
    if creds is None:
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
    if hdrs.get("x-amz-security-token") != creds.token:
        raise ValueError("missing or wrong x-amz-security-token")
    request = AWSRequest(method=method, url=url, data=body, headers={h: hdrs[h] for h in signed})
    request.context["timestamp"] = amz_date
    signer = SigV4Auth(Credentials(creds.access_key, creds.secret_key), service, region)
    canonical = signer.canonical_request(request)
    expected = signer.signature(signer.string_to_sign(request, canonical), request)
    if signer.signed_headers(signer.headers_to_sign(request)) != m["signed"]:
        raise ValueError("signed header list differs")
    if not hmac.compare_digest(expected, m["sig"]):
        raise ValueError("signature mismatch")
    return {"signed_headers": signed, "token_signed": "x-amz-security-token" in signed, "access_key": creds.access_key}


def verify_proof(proof, *, region: str, now: dt.datetime | None = None) -> RoleCredentials:
    """Raise ValueError unless PROOF is a valid caller proof for the join function in REGION; return the
    credentials that signed it.

    What STS would check of the GetCallerIdentity request the function sends on (lambda_src/join_handler.py
    sts_caller_identity: POST https://sts.<region>.amazonaws.com/, the fixed body, content type and audience
    header, the proof's three headers): the SigV4 signature recomputed with botocore (tests/adlab/sigv4.py) from
    the secret key of the access key it names, scoped to sts in REGION, the session token of those credentials;
    and what the function requires: exactly the proof headers, the audience header signed. Stricter than both:
    exactly the headers the contract names are signed, and the date is at most PROOF_MAX_AGE s away."""
    if not isinstance(proof, dict) or set(proof) != set(contract.PROOF_HEADERS) \
            or not all(isinstance(v, str) and v for v in proof.values()):
        raise ValueError(f"the proof must hold exactly {contract.PROOF_HEADERS} (non-empty strings)")
    m = _AUTH_RE.match(proof["authorization"])
    if not m:
        raise ValueError("the proof's authorization is not a SigV4 Authorization value")
    if m["signed"] != ";".join(sorted(contract.PROOF_SIGNED)):
        raise ValueError(f"the proof signs {m['signed']}, not {';'.join(sorted(contract.PROOF_SIGNED))}")
    now = now or dt.datetime.now(dt.UTC)
    try:
        when = dt.datetime.strptime(proof["x-amz-date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        raise ValueError("the proof's x-amz-date is malformed") from None
    if abs((now - when).total_seconds()) > PROOF_MAX_AGE:
        raise ValueError("the proof is not fresh")
    host = f"sts.{region}.amazonaws.com"
    headers = [("Content-Type", contract.PROOF_CONTENT_TYPE), ("Host", host),
               (contract.PROOF_AUDIENCE_HEADER, contract.PROOF_AUDIENCE), ("X-Amz-Date", proof["x-amz-date"]),
               ("X-Amz-Security-Token", proof["x-amz-security-token"]), ("Authorization", proof["authorization"])]

    def lookup(access_key: str) -> sigv4.Secret | None:
        creds = known_credentials(access_key)
        return creds and sigv4.Secret(creds.access_key, creds.secret_key, creds.token)

    try:
        sigv4.verify(method="POST", url=f"https://{host}/", headers=headers, body=contract.PROOF_BODY.encode(),
                     lookup=lookup, region=region, service="sts", now=now)
    except sigv4.SignatureError as exc:
        raise ValueError(f"the proof does not verify: {exc}") from None
    return known_credentials(m["ak"])


class _FunctionHandler(_Quiet):
    def do_POST(self):
        fn = self.owner
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        rec = {"t": time.monotonic(), "received": dt.datetime.now(dt.UTC), "method": self.command,
               "path": self.path, "body": body, "headers": dict(self.headers.items())}
        try:
            rec.update(verify_sigv4(self.command, f"http://{self.headers.get('Host')}{self.path}",
                                    dict(self.headers.items()), body, region=fn.region))
            rec["verified"] = True
        except ValueError as exc:
            rec["verified"] = False
            rec["error"] = str(exc)
        try:
            doc = json.loads(body or b"null")
        except ValueError:
            doc = None
        rec["close"] = isinstance(doc, dict) and "joined" in doc
        # The body as the function reads it: the request (everything but the proof, in order) and the proof.
        rec["rest"] = {k: v for k, v in doc.items() if k != "proof"} if isinstance(doc, dict) else None
        rec["proof"] = doc.get("proof") if isinstance(doc, dict) else None
        rec["proof_verified"] = False
        if rec["verified"]:
            try:
                creds = verify_proof(rec["proof"], region=fn.region)
                rec["proof_access_key"] = creds.access_key
                if creds.access_key != rec["access_key"]:
                    raise ValueError("the proof is signed with other credentials than the request")
                rec["proof_verified"] = True
            except ValueError as exc:
                rec["proof_error"] = str(exc)
        with fn.lock:
            fn.requests.append(rec)
            if not rec["verified"]:
                return self._send(403, json.dumps({"Message": "The request signature we calculated does not match"}),
                                  "application/json")
            if not isinstance(rec["proof"], dict):
                return self._send(400, json.dumps({"error": "body must carry the caller proof"}), "application/json")
            if not rec["proof_verified"]:
                return self._send(403, json.dumps({"error": "forbidden"}), "application/json")
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
