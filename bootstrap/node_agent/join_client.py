"""The signed requests to the join function: the join secret (fetch-join) and the close of the join window
(close-window), with IMDS's credentials, the retries, backoffs and deadline the script had, and its log lines.

Logs go to stderr (the script's log); the one answer a command gives, on stdout. Side effects are parameters
(`http`: httpc.request's shape, `sleep`, `clock`, `rand`): tests/test_node_agent_http.py passes fakes.
"""

import json
import os
import sys

from .function_api import busy_wait, error_field_text, parse_join_answer

JOIN_MAX_TIME = 90  # longer than the function may run (60 s): a node never gives up on an object it may get
CLOSE_MAX_TIME = 20
CLOSE_WINDOW = 60


class Exit(Exception):
    """The command ends with this exit code after this ERROR line (the script's die)."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


def log(line):
    print(line, file=sys.stderr, flush=True)


class Client:
    """One run's context: where to ask, the deadline, and the side effects."""

    def __init__(self, url, region, imds_endpoint, timeout, remaining, elapsed=0, http=None, sleep=None,
                 clock=None, rand=None, out=log, no_backoff=False):
        import random
        import time

        from .httpc import request
        self.url, self.region, self.imds, self.timeout = url, region, imds_endpoint, int(timeout)
        self.http, self.sleep, self.clock = http or request, sleep or time.sleep, clock or time.monotonic
        self.rand, self.out, self.no_backoff = rand or random.uniform, out, no_backoff
        self.start = self.clock()
        self.deadline, self.elapsed_at_start = self.start + int(remaining), int(elapsed)
        self.instance_id, self.logged = "", False

    def remaining(self):
        return int(self.deadline - self.clock())

    def elapsed(self):
        return self.elapsed_at_start + int(self.clock() - self.start)

    def sleep_backoff(self, delay):
        # DELAY s plus up to half of it again, never past the deadline (1 s left); none under the test hook.
        delay = min(delay + min(int(self.rand(0, delay // 2 + 1)), delay // 2), self.remaining() - 1)
        if not self.no_backoff and delay > 0:
            self.sleep(delay)

    def busy_wait(self, busy, attempt, remaining, code, text):
        busy_wait(busy, attempt, remaining, code, text, sleep=(lambda _: None) if self.no_backoff else self.sleep,
                  rand=self.rand, out=lambda line, **_: self.out(line))

    # --- IMDS

    def credentials(self):
        # One try: the role's credentials (fresh each request: they rotate); None when IMDS fails.
        from .imds import ImdsError, role_credentials
        try:
            self.instance_id, role, creds = role_credentials(self.imds, self.http)
        except ImdsError as e:
            self.out(str(e))
            return None
        if not self.logged:
            self.out(f"IMDS: instance {self.instance_id}, instance role {role}")
            self.logged = True
        return creds

    def read_imds(self):
        # credentials() with bounded retries: IMDS and the instance profile can lag right after boot.
        delay = 1
        while True:
            creds = self.credentials()
            if creds:
                return creds
            if self.remaining() <= 1:
                raise Exit(4, "could not read the instance id and role credentials from IMDSv2 at "
                              f"{self.imds} before the deadline ({self.timeout} s)")
            self.out(f"IMDS not ready (instance role credentials unavailable); retrying in ~{delay}s")
            self.sleep_backoff(delay)
            delay = min(delay * 2, 10)

    # --- the function

    def post(self, body, creds, max_time):
        # (None, status, text) or (reason, None, "") when no answer came. The request is signed at once (its
        # x-amz-date and the proof's are now); the credentials go nowhere else.
        from .httpc import TransportError
        from .sigv4 import signed_post
        headers, data = signed_post(self.url, self.region, body, creds)
        try:
            status, raw = self.http("POST", self.url, headers=headers, data=data, timeout=float(max_time))
        except TransportError as e:
            return str(e), None, ""
        return None, status, raw.decode("utf-8", "replace")

    def fetch_join(self):
        # The join secret: (instance id, domain, realm, computer name, host FQDN, service accounts, password).
        attempt, delay, err, busy = 0, 1, "none", 0
        while True:
            busy_body = None
            creds = self.read_imds()
            left = self.remaining()
            if left <= 0:
                raise self.giving_up(attempt, err)
            attempt += 1
            max_time = min(left, JOIN_MAX_TIME)
            self.out(f"join function: attempt {attempt} (POST {self.url}, max {max_time}s)")
            failed, code, text = self.post({}, creds, max_time)
            creds = None
            if failed:
                err = f"request failed ({failed})"
            elif code == 200:
                try:
                    answer = parse_join_answer(text)
                except ValueError as e:
                    self.out(str(e))
                    raise Exit(7, "invalid answer from the join function (HTTP 200)") from None
                domain, realm, name = answer[:3]
                self.out(f"join function: HTTP 200 after {self.elapsed()}s: domain {domain}, realm {realm}, "
                         f"computer account {name} (created for instance {self.instance_id}, one-time password)")
                return (self.instance_id,) + tuple(answer)
            else:
                err = f"HTTP {code}: {error_field_text(text)}"
                if code == 403:
                    raise Exit(6, f"the join function refused this node ({err}). Not retrying: check that "
                                  f"instance {self.instance_id} carries the tag parallelcluster:cluster-name of "
                                  "the cluster, runs in the cluster's VPC, and that its instance role may call the "
                                  "function URL (lambda:InvokeFunctionUrl and, for URLs created since October 2025, "
                                  "lambda:InvokeFunction)")
                if code in (429, 503):
                    # Busy (the joins in progress are at their cap, issue 20) or throttled: full jitter, at least
                    # the function's retryAfter. The body is an error: no secret.
                    busy_body = text or "{}"
                elif not (code == 408 or 500 <= code <= 599):
                    raise Exit(5, f"the join function answered {err}; not retryable")
            if self.remaining() <= 1:
                raise self.giving_up(attempt, err)
            if busy_body is not None:
                busy += 1
                self.busy_wait(busy, attempt + 1, self.remaining(), code, busy_body)
                continue
            self.out(f"join function: attempt {attempt} failed: {err}; retrying in ~{delay}s")
            self.sleep_backoff(delay)
            delay = min(delay * 2, 30)

    def giving_up(self, attempt, err):
        return Exit(5, f"giving up after {attempt} attempts in {self.elapsed()}s (deadline {self.timeout} s); "
                       f"last error: {err}")

    def close_window(self, computer_name):
        # From now on the function refuses this instance. Never fails: a WARNING, and the window closes by itself.
        attempt = failures = busy = 0
        delay, err = 1, "none"
        left = min(self.remaining(), CLOSE_WINDOW)
        if left < 1:
            self.out(f"WARNING: join window NOT closed: no time left before the deadline ({self.timeout} s); "
                     "it closes by itself after the function's windowMinutes")
            return False
        until = self.clock() + left
        body = {"joined": True, "computerName": computer_name}
        # 3 failures at most; a busy answer (429/503: Lambda throttling) is no failure but a full-jitter wait, so
        # that a busy function does not use up the close's tries within seconds (the close also frees the node's
        # admission slot).
        while failures < 3 and attempt < 10:
            attempt += 1
            left = int(until - self.clock())
            if left < 1:
                break
            busy_body = None
            creds = self.credentials()
            if not creds:
                err = "IMDS credentials unavailable"
            else:
                max_time = min(left, CLOSE_MAX_TIME)
                self.out(f"join window: closing (attempt {attempt}, POST {self.url}, computer {computer_name}, "
                         f"max {max_time}s)")
                failed, code, text = self.post(body, creds, max_time)
                creds = None
                if failed:
                    err = f"request failed ({failed})"
                elif code == 200 and closed(text):
                    self.out(f"join window closed: the join function refuses instance {self.instance_id} from now on")
                    return True
                else:
                    err = f"HTTP {code}: {error_field_text(text)}"
                    if code in (429, 503):
                        busy_body = text or "{}"
                    elif not (code == 408 or 500 <= code <= 599):
                        break  # 403 (closed already, or refused), a 200 that does not say closed: final
            if busy_body is not None:
                busy += 1
                if until - self.clock() > 1:
                    self.busy_wait(busy, attempt + 1, int(until - self.clock()), code, busy_body)
                continue
            failures += 1
            if failures < 3 and until - self.clock() > 1:
                self.sleep_backoff(delay)
            delay *= 2
        self.out(f"WARNING: join window NOT closed ({err}); the node is joined all the same. The window closes "
                 "by itself after the function's windowMinutes or maxAnswers")
        return False


def closed(text):
    try:
        doc = json.loads(text)
    except Exception:
        return False
    return isinstance(doc, dict) and doc.get("closed") is True


def _client(url, region, imds_endpoint, timeout, remaining, elapsed="0"):
    return Client(url, region, imds_endpoint, timeout, remaining, elapsed,
                  no_backoff=os.environ.get("PCLUSTER_AD_TEST_NO_BACKOFF") == "1")


def fetch_join_cli(url, region, imds_endpoint, timeout, remaining, elapsed):
    # stdout: instance id, domain, realm, computer name, host FQDN, service accounts, one-time password, one a line
    # (the script reads them into shell variables: the password goes on to adcli's stdin only).
    try:
        answer = _client(url, region, imds_endpoint, timeout, remaining, elapsed).fetch_join()
    except Exit as e:
        log(f"ERROR: {e}")
        sys.exit(e.code)
    sys.stdout.write("\n".join(answer))


def close_window_cli(url, region, imds_endpoint, timeout, remaining, computer_name):
    # Exit 0 whatever happens: closing the window never changes the script's exit code. The join's request logged
    # the instance and role already.
    client = _client(url, region, imds_endpoint, timeout, remaining)
    client.logged = True
    client.close_window(computer_name)
