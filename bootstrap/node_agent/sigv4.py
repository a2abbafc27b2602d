"""SigV4 (docs.aws.amazon.com/IAM/latest/UserGuide/reference_sigv-create-signed-request.html): the instance role's
credentials from IMDS, the signed POST to the join function URL (what `curl --aws-sigv4` did), and the STS caller
proof in its body. The credentials stay in this process: never argv, environment, a file or a log."""

import datetime
import hashlib
import hmac
import json
from urllib.parse import parse_qsl, quote, urlsplit

from .common import one_line


def credentials(text):
    # IMDS's credentials document -> (access key id, secret key, session token); ValueError with a message that
    # shows no part of it.
    try:
        doc = json.loads(text)
        code = doc.get("Code", "Success")
        akid, secret, token = doc["AccessKeyId"], doc["SecretAccessKey"], doc.get("Token", "")
    except Exception:
        raise ValueError("the instance credentials from IMDS are not valid JSON with AccessKeyId/SecretAccessKey") \
            from None
    if code != "Success":
        raise ValueError(f"IMDS reports the instance credentials as {str(code)[:40]!r}")
    if not (one_line(akid) and one_line(secret)) or ":" in akid or (token and not one_line(token)):
        raise ValueError("the instance credentials from IMDS are malformed")
    return akid, secret, token or ""


def signed_post(url, region, body, creds, service="lambda", now=None):
    # The headers of a POST of BODY (a dict: the caller proof is added) to URL, and the bytes sent. BODY's keys
    # keep their order, "proof" last; compact JSON as the script's curl config carried it.
    akid, secret, token = creds
    data = dict(body)
    data["proof"] = sts_proof(region, akid, secret, token, now=now)
    payload = json.dumps(data, separators=(",", ":")).encode()
    u = urlsplit(url)
    headers = {"content-type": "application/json", "host": u.netloc.lower()}
    if token:
        headers["x-amz-security-token"] = token
    return sign("POST", u.path or "/", u.query, headers, payload, region, service, akid, secret, now), payload


def sts_proof(region, akid, secret, token, now=None):
    # POST https://sts.<region>.amazonaws.com/ Action=GetCallerIdentity, with the function's audience header signed
    # (lambda_src/join_handler.py PROOF_*). Returns the headers the function sends on to STS.
    headers = {"content-type": "application/x-www-form-urlencoded; charset=utf-8",
               "host": f"sts.{region}.amazonaws.com",
               "x-pcluster-ad-audience": "pcluster-ad-join-function"}
    if token:
        headers["x-amz-security-token"] = token
    signed = sign("POST", "/", "", headers, b"Action=GetCallerIdentity&Version=2011-06-15", region, "sts", akid,
                  secret, now)
    return {"authorization": signed["authorization"], "x-amz-date": signed["x-amz-date"],
            "x-amz-security-token": token}


def sign(method, path, query, headers, payload, region, service, akid, secret, now=None):
    # HEADERS (lower-case names, host included) plus x-amz-date and authorization, every given header signed.
    now = now or datetime.datetime.now(datetime.timezone.utc)
    amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    headers = dict(headers, **{"x-amz-date": amz_date})
    names = sorted(headers)
    signed = ";".join(names)
    # The path as sent, encoded once more (all services but S3), and the query's pairs sorted (as botocore does).
    pairs = sorted((quote(k, safe="-_.~"), quote(v, safe="-_.~")) for k, v in parse_qsl(query, True))
    canonical = "\n".join([method, quote(path, safe="/~"), "&".join(f"{k}={v}" for k, v in pairs)]
                          + ["{}:{}".format(k, " ".join(headers[k].split())) for k in names]
                          + ["", signed, hashlib.sha256(payload).hexdigest()])
    scope = f"{day}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("AWS4" + secret).encode()
    for part in (day, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={akid}/{scope}, SignedHeaders={signed}, "
                                f"Signature={signature}")
    return headers
