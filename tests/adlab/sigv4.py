"""SigV4 verification for the lab's stand-in of a Lambda function URL (AWS_IAM auth).

The signature the client sent is recomputed with botocore's SigV4Auth from the secret key the
lab knows for the access key id, over exactly the headers the client listed in SignedHeaders,
and compared in constant time. Used by labsvc.py; unit-tested in test_sigv4.py.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
from dataclasses import dataclass

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest, HTTPHeaders
from botocore.credentials import Credentials

_AUTH_RE = re.compile(
    r"^AWS4-HMAC-SHA256\s+"
    r"Credential=(?P<ak>[^/,\s]+)/(?P<date>\d{8})/(?P<region>[^/,\s]+)/(?P<service>[^/,\s]+)/aws4_request\s*,\s*"
    r"SignedHeaders=(?P<signed>[^,\s]+)\s*,\s*"
    r"Signature=(?P<sig>[0-9a-f]{64})\s*$"
)
MAX_SKEW = dt.timedelta(minutes=15)  # what AWS allows before "Signature expired"


class SignatureError(Exception):
    """The request is not validly signed (AWS answers 403)."""


@dataclass(frozen=True)
class Secret:
    access_key: str
    secret_key: str
    token: str | None


class _ExactHeadersSigV4(SigV4Auth):
    """SigV4Auth that signs exactly the headers the client listed (no botocore blacklist)."""

    def __init__(self, credentials, service_name, region_name, signed: list[str]):
        super().__init__(credentials, service_name, region_name)
        self._signed = signed

    def headers_to_sign(self, request):
        header_map = HTTPHeaders()
        for name in self._signed:
            header_map[name] = request.headers[name]
        return header_map


def verify(
    *,
    method: str,
    url: str,
    headers: list[tuple[str, str]],
    body: bytes,
    lookup,
    region: str,
    service: str = "lambda",
    now: dt.datetime | None = None,
) -> Secret:
    """Verify a SigV4-signed request; return the Secret that signed it or raise SignatureError.

    headers: the request headers as received (name, value) pairs, any case.
    lookup: access key id -> Secret or None.
    """
    hmap: dict[str, list[str]] = {}
    for name, value in headers:
        hmap.setdefault(name.lower(), []).append(value)

    auth = hmap.get("authorization")
    if not auth:
        raise SignatureError("Missing Authentication Token")
    m = _AUTH_RE.match(auth[0].strip())
    if not m:
        raise SignatureError("Authorization header is not a well-formed AWS4-HMAC-SHA256 value")
    if m["region"] != region or m["service"] != service:
        raise SignatureError(f"Credential should be scoped to a valid region/service ({region}/{service})")
    signed = m["signed"].split(";")
    if "host" not in signed:
        raise SignatureError("'Host' must be a signed header")
    if signed != sorted(signed):
        raise SignatureError("SignedHeaders are not sorted")
    missing = [h for h in signed if h not in hmap]
    if missing:
        raise SignatureError(f"signed headers missing from the request: {missing}")

    amz_date = (hmap.get("x-amz-date") or [""])[0]
    if "x-amz-date" not in signed:
        raise SignatureError("X-Amz-Date must be present and signed")
    try:
        when = dt.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    except ValueError as exc:
        raise SignatureError("X-Amz-Date is not in ISO8601 basic format") from exc
    if amz_date[:8] != m["date"]:
        raise SignatureError("Credential date does not match X-Amz-Date")
    now = now or dt.datetime.now(dt.UTC)
    if abs(now - when) > MAX_SKEW:
        raise SignatureError("Signature expired or not yet current")

    secret = lookup(m["ak"])
    if secret is None:
        raise SignatureError("The security token included in the request is invalid")
    if secret.token is not None:
        tok = (hmap.get("x-amz-security-token") or [None])[0]
        if tok != secret.token:
            raise SignatureError("The security token included in the request is invalid")

    content_sha = (hmap.get("x-amz-content-sha256") or [None])[0]
    if content_sha is not None and content_sha != hashlib.sha256(body).hexdigest():
        raise SignatureError("x-amz-content-sha256 does not match the body")

    req = AWSRequest(method=method, url=url, data=body)
    for name in signed:
        req.headers[name] = ",".join(v.strip() for v in hmap[name])
    req.context["timestamp"] = amz_date
    signer = _ExactHeadersSigV4(
        Credentials(secret.access_key, secret.secret_key, secret.token), service, region, signed
    )
    canonical = signer.canonical_request(req)
    expected = signer.signature(signer.string_to_sign(req, canonical), req)
    if not hmac.compare_digest(expected, m["sig"]):
        raise SignatureError(
            "The request signature we calculated does not match the signature you provided. "
            "Check your AWS Secret Access Key and signing method."
        )
    return secret
