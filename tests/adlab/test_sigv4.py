"""Unit tests of the lab endpoint's SigV4 verifier (no root, no lab): botocore signs, we verify."""

from __future__ import annotations

import datetime as dt

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from .sigv4 import Secret, SignatureError, verify

AK, SK, TOKEN = "ASIAEXAMPLEEXAMPLE12", "s3cr3t/KEY+example0123456789abcdefghijkl", "tok3n=="
URL = "https://10.99.0.1:8443/"


def _signed(body=b"{}", secret=SK, region="eu-west-1", service="lambda"):
    req = AWSRequest(method="POST", url=URL, data=body, headers={"content-type": "application/json"})
    SigV4Auth(Credentials(AK, secret, TOKEN), service, region).add_auth(req)
    headers = [(k, v) for k, v in req.headers.items()] + [("Host", "10.99.0.1:8443"), ("User-Agent", "curl/7.88.1")]
    return headers


def _lookup(ak):
    return Secret(AK, SK, TOKEN) if ak == AK else None


def _verify(headers, body=b"{}", **kw):
    return verify(method="POST", url=URL, headers=headers, body=body, lookup=_lookup, region="eu-west-1", **kw)


def test_valid_signature_is_accepted():
    assert _verify(_signed()).access_key == AK


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda h, b: (h, b"{ }"), "signature"),  # body changed
        (lambda h, b: ([(k, v) for k, v in h if k.lower() != "authorization"], b), "Missing"),
        (lambda h, b: ([(k, "other" if k.lower() == "x-amz-security-token" else v) for k, v in h], b), "token"),
        (lambda h, b: ([(k, "10.99.0.2:8443" if k.lower() == "host" else v) for k, v in h], b), "signature"),
    ],
)
def test_tampering_is_rejected(mutate, message):
    headers, body = mutate(_signed(), b"{}")
    with pytest.raises(SignatureError, match=message):
        _verify(headers, body)


def test_wrong_secret_region_service_and_age_are_rejected():
    with pytest.raises(SignatureError, match="signature"):
        _verify(_signed(secret="x" + SK[1:]))
    with pytest.raises(SignatureError, match="scoped"):
        _verify(_signed(region="us-east-1"))
    with pytest.raises(SignatureError, match="scoped"):
        _verify(_signed(service="execute-api"))
    later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=20)
    with pytest.raises(SignatureError, match="expired"):
        _verify(_signed(), now=later)


def test_unknown_access_key_is_rejected():
    headers = [(k, v.replace(AK, "ASIAUNKNOWNUNKNOWN00")) for k, v in _signed()]
    with pytest.raises(SignatureError, match="invalid"):
        _verify(headers)
