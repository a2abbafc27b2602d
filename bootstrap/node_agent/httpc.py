"""One HTTP request with urllib (no curl): the default `http` of imds.py and join_client.py, which tests replace.

request(method, url, headers, data, timeout, proxies) -> (status, body bytes) for any HTTP answer, errors
included (urllib raises those as HTTPError: the body is read from it); TransportError when no answer came
(refused, timed out, TLS, a broken answer). Never follows a redirect (curl without -L did not either): a 3xx is
an answer like any other. The connection is given CONNECT_TIMEOUT s, every later wait `timeout` s (a socket
timeout: a server that trickles bytes could take longer in all, where curl's --max-time bounded the whole request).
"""

import http.client
import socket
import urllib.error
import urllib.request

CONNECT_TIMEOUT = 10.0  # curl --connect-timeout 10, what the script gave the function URL


class TransportError(Exception):
    """No HTTP answer (the curl errors of the script's days)."""


def _connect_within(limit):
    def create(address, timeout, source_address=None):
        sock = socket.create_connection(address, min(limit, timeout), source_address)
        sock.settimeout(timeout)
        return sock
    return create


def _connection(base, limit):
    # http.client opens its socket through the instance's _create_connection (3.6 to 3.13): a shorter connect
    # timeout than the answer's, so an unreachable host is retried soon, as with curl's --connect-timeout.
    class Connection(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._create_connection = _connect_within(limit)
    return Connection


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # urllib then raises the 3xx as an HTTPError: an answer


def _opener(proxies, connect_timeout):
    plain, tls = _connection(http.client.HTTPConnection, connect_timeout), \
        _connection(http.client.HTTPSConnection, connect_timeout)

    class Plain(urllib.request.HTTPHandler):
        def http_open(self, req):
            return self.do_open(plain, req)

    class Tls(urllib.request.HTTPSHandler):
        def https_open(self, req):
            return self.do_open(tls, req, context=self._context)

    # proxies: None = the environment's (https_proxy, no_proxy: what curl honoured), {} = none (IMDS, --noproxy).
    return urllib.request.build_opener(urllib.request.ProxyHandler(proxies), Plain, Tls, _NoRedirect)


def request(method, url, headers=None, data=None, timeout=10.0, proxies=None, connect_timeout=CONNECT_TIMEOUT,
            limit=1 << 20):
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        try:
            with _opener(proxies, connect_timeout).open(req, timeout=timeout) as resp:
                return resp.status, resp.read(limit)
        except urllib.error.HTTPError as e:
            try:
                return e.code, e.read(limit)
            finally:
                e.close()
    except (OSError, http.client.HTTPException, ValueError) as e:
        raise TransportError(_reason(e)) from None


def _reason(e):
    # Short and free of the request (no header, no body): the class and the socket's or urllib's reason.
    # A plain ValueError's text may quote a header value (http.client: "Invalid header value b'<token>'"): its class
    # only. (ssl's errors are ValueErrors too, and OSErrors: their text says why a certificate was refused.)
    reason = getattr(e, "reason", None) or e
    quotes_request = isinstance(reason, ValueError) and not isinstance(reason, OSError)
    text = f"{type(reason).__name__}: {reason}" if str(reason) and not quotes_request else type(reason).__name__
    return "".join(c if " " <= c <= "~" else "?" for c in text)[:200]
