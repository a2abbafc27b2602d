"""The join function's answers (join_client's): the join secret, error texts, busy (429/503) waits."""

import json
import re

from .common import one_line


def parse_join_answer(text):
    # The function's 200 body -> [domain, realm, computer name, host FQDN, service accounts (comma-separated),
    # one-time password]; ValueError naming the bad field (never its value).
    try:
        doc = json.loads(text)
        if not isinstance(doc, dict):
            raise ValueError
    except Exception:
        raise ValueError("the join function's answer is not a JSON object") from None
    domain, realm = doc.get("domain"), doc.get("realm") or ""
    name, fqdn, password = doc.get("computerName"), doc.get("hostFqdn"), doc.get("oneTimePassword")
    label = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"  # DNS: 63 characters a label
    label_re = re.compile(rf"^{label}(?:\.{label})*$")
    if not isinstance(domain, str) or not label_re.match(domain) or len(domain) > 253:
        raise ValueError("the join function's answer has no valid 'domain'")
    if not isinstance(realm, str) or (realm and not label_re.match(realm)):
        raise ValueError("the join function's answer has an invalid 'realm'")
    realm = (realm or domain).upper()
    if not isinstance(name, str) or not re.fullmatch(r"[A-Z0-9](?:[A-Z0-9-]{0,13}[A-Z0-9])?", name):
        raise ValueError("the join function's answer has no valid 'computerName' (1-15 upper-case letters, digits, "
                         "'-')")
    if not isinstance(fqdn, str) or not label_re.match(fqdn) or len(fqdn) > 253:
        raise ValueError("the join function's answer has no valid 'hostFqdn'")
    if not one_line(password) or not password.isprintable():
        raise ValueError("the join function's answer has no valid 'oneTimePassword' (empty, or with a control "
                         "character)")
    # The stack's service accounts (the function's own adding account): no login on any node. Optional (an older
    # function answers none); sAMAccountNames hold no comma.
    service = doc.get("serviceAccounts", [])
    if not isinstance(service, list) or not all(
            isinstance(n, str) and 0 < len(n) <= 20 and n.isprintable() and "," not in n and n.strip() == n
            for n in service):
        raise ValueError("the join function's answer has an invalid 'serviceAccounts' (a list of account names)")
    return [domain.lower(), realm, name, fqdn.lower(), ",".join(service), password]


def error_field_text(text):
    try:
        doc = json.loads(text)
        msg = doc.get("error") or doc.get("message") or doc.get("Message") or ""
    except Exception:
        msg = ""
    msg = re.sub(r"[^ -~]", "?", str(msg))[:200]
    return msg if msg else "(no error message)"


def busy_delay(busy, retry_after, remaining, rand, base=1.0, cap=30.0):
    # AWS's "full jitter" (Exponential Backoff And Jitter, AWS Architecture Blog): a random wait in
    # [0, min(cap, base * 2^busy)] so that nodes sent away together do not come back together; never shorter than
    # the function's Retry-After; never past the deadline (1 s left for the last attempt).
    # (2 ** 30 s is past any cap: a long run of busy answers never reaches an int too large for a float.)
    delay = max(float(retry_after), rand(0.0, min(cap, base * 2 ** min(busy, 30))))
    return max(0.0, min(delay, remaining - 1.0))


def retry_after(text):
    # The function's 429 body carries retryAfter (seconds), as its Retry-After header does (the body, since the
    # script's curl before 7.84 could not print a header). 0 when absent (Lambda's own throttling).
    try:
        value = json.loads(text).get("retryAfter", 0)
    except Exception:
        return 0
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 600 else 0


def busy_wait(busy, attempt, remaining, code, text, sleep=None, rand=None, out=print):
    # Log the wait, then wait (sleep and rand injectable: tests pass fakes). Returns the delay.
    import random
    import time
    delay = busy_delay(busy, retry_after(text), remaining, rand or random.uniform)
    out(f"join function busy, retrying in {delay:.1f} s (attempt {attempt}; HTTP {code})", flush=True)
    (sleep or time.sleep)(delay)
    return delay
