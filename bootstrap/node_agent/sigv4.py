"""The signed request to the join function: curl's config (credentials, body) and the STS caller proof.

Secrets come in on stdin only and leave on stdout, as the curl config curl reads on its stdin."""

import json
import sys

from .common import fail, one_line


def quote_curl(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def sigv4_config(region, body):
    # stdin: IMDS credentials JSON. stdout: curl config: user = key:secret, the security token header, and the
    # request body: BODY (a JSON object) plus "proof", the headers of an STS GetCallerIdentity request signed with
    # the same credentials, which the function has STS check (who asks, unforgeable by an event). The body goes in
    # the config, never in curl's argv: the proof is valid for 15 minutes.
    try:
        doc = json.loads(sys.stdin.read())
        code = doc.get("Code", "Success")
        akid, secret, token = doc["AccessKeyId"], doc["SecretAccessKey"], doc.get("Token", "")
    except Exception:
        fail("the instance credentials from IMDS are not valid JSON with AccessKeyId/SecretAccessKey")
    if code != "Success":
        fail(f"IMDS reports the instance credentials as {str(code)[:40]!r}")
    if not (one_line(akid) and one_line(secret)) or ":" in akid or (token and not one_line(token)):
        fail("the instance credentials from IMDS are malformed")
    data = json.loads(body)
    data["proof"] = sts_proof(region, akid, secret, token)
    print("user = " + quote_curl(akid + ":" + secret))
    if token:
        print("header = " + quote_curl("x-amz-security-token: " + token))
    print("data-binary = " + quote_curl(json.dumps(data, separators=(",", ":"))))


def sts_proof(region, akid, secret, token):
    # SigV4 (docs.aws.amazon.com/IAM/latest/UserGuide/reference_sigv-create-signed-request.html) of
    # POST https://sts.<region>.amazonaws.com/ Action=GetCallerIdentity, with the function's audience header
    # signed (lambda_src/join_handler.py PROOF_*). Returns the headers the function sends on to STS.
    import datetime
    import hashlib
    import hmac
    now = datetime.datetime.now(datetime.timezone.utc)
    amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    host = f"sts.{region}.amazonaws.com"
    payload = "Action=GetCallerIdentity&Version=2011-06-15"
    headers = {"content-type": "application/x-www-form-urlencoded; charset=utf-8", "host": host,
               "x-amz-date": amz_date, "x-amz-security-token": token,
               "x-pcluster-ad-audience": "pcluster-ad-join-function"}
    if not token:
        del headers["x-amz-security-token"]
    signed = ";".join(sorted(headers))
    canonical = "\n".join(["POST", "/", "", *(f"{k}:{headers[k]}" for k in sorted(headers)), "", signed,
                           hashlib.sha256(payload.encode()).hexdigest()])
    scope = f"{day}/{region}/sts/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("AWS4" + secret).encode()
    for part in (day, region, "sts", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return {"authorization": f"AWS4-HMAC-SHA256 Credential={akid}/{scope}, SignedHeaders={signed}, "
                             f"Signature={signature}",
            "x-amz-date": amz_date, "x-amz-security-token": token}
