"""IMDSv2: the session token, the instance id and the instance role's credentials (the lock-down of IMDS is
imds_lockdown's)."""

# --- IMDSv2: the session token, the instance id and the instance role's credentials --------------------------------
# Each request as the script's curl made it: no proxy (--noproxy '*'), 2 s to connect, then 5 s for each wait on
# the answer (curl's --max-time 5 bounded the whole request; IMDS's answers are a few hundred bytes); any HTTP error
# fails (-f). `http` is httpc.request's shape (tests pass a fake).

TOKEN_TTL = "21600"


class ImdsError(Exception):
    """IMDS gave no usable answer (not ready yet right after boot, no role, bad credentials)."""


def _http():
    from .httpc import request
    return request


def get(endpoint, path, token, http=None):
    status, body = _call(http, "GET", endpoint + "/latest/" + path, {"X-aws-ec2-metadata-token": token})
    return body


def token(endpoint, http=None):
    status, body = _call(http, "PUT", endpoint + "/latest/api/token",
                         {"X-aws-ec2-metadata-token-ttl-seconds": TOKEN_TTL})
    if not body:
        raise ImdsError("IMDS answered an empty session token")
    # A header value: visible ASCII only (never quoted in an error: attack finding 2 of issue 21).
    if not all("!" <= c <= "~" for c in body):
        raise ImdsError("IMDS answered an unusable session token (not visible ASCII)")
    return body


def _call(http, method, url, headers):
    from .httpc import TransportError
    try:
        status, body = (http or _http())(method, url, headers=headers, data=b"" if method == "PUT" else None,
                                         timeout=5.0, proxies={}, connect_timeout=2.0)
    except TransportError as e:
        raise ImdsError("IMDS {} {}: {}".format(method, url.rsplit("/latest/", 1)[-1], e)) from None
    if status >= 400:
        raise ImdsError("IMDS {} {}: HTTP {}".format(method, url.rsplit("/latest/", 1)[-1], status))
    # What $(curl ...) kept: the text without its trailing newlines.
    return status, body.decode("utf-8", "replace").rstrip("\n")


def role_credentials(endpoint, http=None):
    # One try: (instance id, role name, (access key id, secret key, token)); ImdsError when any step fails.
    from .sigv4 import credentials
    session = token(endpoint, http)
    instance_id = get(endpoint, "meta-data/instance-id", session, http)
    role = get(endpoint, "meta-data/iam/security-credentials/", session, http).split("\n", 1)[0]
    if not role:
        raise ImdsError("IMDS names no instance role")
    try:
        creds = credentials(get(endpoint, "meta-data/iam/security-credentials/" + role, session, http))
    except ValueError as e:
        raise ImdsError(str(e)) from None
    return instance_id, role, creds
