"""The node's own join: adcli with the one-time password of the computer object the function created.

The password reaches adcli on stdin only (never a command line, where `realm join --one-time-password` would put it).
adcli sets a machine password of its own at once, so the one-time password is dead afterwards; a failed attempt
before that may retry with it. Each attempt is capped: a hanging join (unreachable DC) is killed and retried instead
of eating the whole deadline.
"""

import os
import random
import sys

from .common import NodeError, one_line
from .node import Node

ATTEMPTS = 3
ATTEMPT_CAP_SECONDS = 120
EXIT_JOIN = 8
# The hint for every join failure, the deadline included (issue 9 finding 8).
REALM_HINT = ("(see the adcli output above; 'Couldn't find a domain controller' or 'Couldn't lookup domain' means this "
              "node cannot reach the domain controllers: check that the node resolves the domain (the VPC's DHCP "
              "options, or in an existing VPC the Route 53 Resolver rule for the domain) and reaches the domain "
              "controllers' ports)")


def attempt_cap(env):
    # PCLUSTER_AD_TEST_JOIN_ATTEMPT_SECONDS: a test hook (docs/design.md); anything but a positive integer is ignored.
    value = env.get("PCLUSTER_AD_TEST_JOIN_ATTEMPT_SECONDS", "")
    return int(value) if value.isdigit() and not value.startswith("0") else ATTEMPT_CAP_SECONDS


def host_key_present(node, keytab, name, realm):
    return f"{name}$@{realm}".lower() in node.output(["klist", "-k", keytab]).lower()


def backoff(node, delay, remaining, no_backoff, rand=random.randint):
    # DELAY plus up to half of it as jitter, never past the deadline (1 s left).
    delay = min(delay + rand(0, delay // 2), remaining - 1)
    if not no_backoff and delay > 0:
        node.sleep(delay)


def adcli_join(node, password, domain, realm, name, fqdn, root, deadline, timeout, cap, no_backoff=False):
    """deadline: the script's, on node.clock(); timeout: its --timeout (for the message)."""
    args = ["join", "--verbose", "--login-type=computer", "--stdin-password", f"--domain={domain}",
            f"--domain-realm={realm}", f"--computer-name={name}", f"--host-fqdn={fqdn}"]
    keytab = root + "/etc/krb5.keytab"
    for attempt in range(1, ATTEMPTS + 1):
        left = int(deadline - node.clock())
        if left <= 0:
            raise NodeError(f"deadline ({timeout} s) reached before the join to {domain} succeeded {REALM_HINT}",
                            EXIT_JOIN)
        left = min(left, cap)
        node.log(f"adcli: joining {domain} as {name} (attempt {attempt}, max {left}s)")
        if node.run(["timeout", "-k", "10", str(left), "adcli"] + args, input=password + "\n") == 0:
            break
        if host_key_present(node, keytab, name, realm):
            node.log("adcli: the host key is in the keytab despite adcli's exit status")
            break
        if attempt == ATTEMPTS:
            raise NodeError(f"adcli join {domain} failed {REALM_HINT}", EXIT_JOIN)
        remaining = int(deadline - node.clock())
        if remaining > 5:
            backoff(node, 5 * attempt, remaining, no_backoff)
    if not host_key_present(node, keytab, name, realm):
        raise NodeError(f"adcli joined, but the keytab holds no key of {name}$@{realm}", EXIT_JOIN)
    node.log(f"joined {domain} as {name}")


def adcli_join_cli(domain, realm, name, fqdn, root, remaining, timeout):
    # stdin: the one-time password (one line). Never echoed, never in an argument or a file.
    node = Node()
    password = sys.stdin.readline().rstrip("\n")
    deadline = node.clock() + int(remaining)

    def work():
        if not one_line(password):
            raise NodeError("no one-time password on stdin", EXIT_JOIN)
        adcli_join(node, password, domain, realm, name, fqdn, root, deadline, timeout, attempt_cap(os.environ),
                   os.environ.get("PCLUSTER_AD_TEST_NO_BACKOFF") == "1")

    node.main(work)
