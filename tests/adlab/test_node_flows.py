"""The network judge's node flows against real traffic: which ports does a node really open to the directory?

A lab node counts, in its own network namespace, every new connection (conntrack NEW) it opens to the domain
controller, per protocol and port, while the product's join-domain.sh joins it (adcli), sssd resolves users and
groups, and an AD user logs in over ssh with a password (Kerberos). The ports it used must all be among the
node flows tools/network_judge.py declares toward the directory (NODE_FLOWS: DNS, Kerberos, LDAP, CLDAP, kpasswd,
Global Catalog), and nothing may go to any other port of the DC: a port missing from the declaration would be a
flow no security group is judged for.
"""

from __future__ import annotations

import re

import pytest

from tools.network_judge import NODE_FLOWS

from .conftest import JOIN_TIMEOUT, USERS, describe
from .lab import SSH_OPTS

pytestmark = pytest.mark.adlab

CHAIN = "PCADFLOWS"
# The directory's ports (AWS's directory controllers group) and the other AD ports a client might use.
CANDIDATES = sorted({("tcp", p) for p in (53, 88, 135, 139, 389, 445, 464, 636, 3268, 3269, 9389)}
                    | {("udp", p) for p in (53, 88, 123, 137, 138, 389, 464)})
DECLARED = {(proto, port) for f in NODE_FLOWS if f["target"] in ("resolver", "domain-controllers")
            for proto, port in f["ports"]}


def _counters(node) -> dict[str, int]:
    """Packets per rule comment of the counting chain."""
    out = node.run(["iptables", "-L", CHAIN, "-v", "-n", "-x"]).stdout
    counts = {}
    for line in out.splitlines():
        m = re.match(r"\s*(\d+)\s+\d+\s+.*/\* (\S+) \*/", line)
        if m:
            counts[m.group(2)] = int(m.group(1))
    return counts


def test_a_real_join_and_login_use_only_declared_directory_ports(lab):
    (node,) = lab.add_nodes([{}])
    dc = lab.dc_ip
    node.run(["iptables", "-N", CHAIN])
    node.run(["iptables", "-I", "OUTPUT", "1", "-j", CHAIN])
    for proto, port in CANDIDATES:
        node.run(["iptables", "-A", CHAIN, "-d", dc, "-p", proto, "--dport", str(port), "-m", "conntrack",
                  "--ctstate", "NEW", "-m", "comment", "--comment", f"{proto}/{port}"])
    for proto in ("tcp", "udp", "icmp"):  # every new connection of the protocol, declared or not
        node.run(["iptables", "-A", CHAIN, "-d", dc, "-p", proto, "-m", "conntrack", "--ctstate", "NEW",
                  "-m", "comment", "--comment", f"{proto}/all"])

    res = node.start_bootstrap(timeout_arg=JOIN_TIMEOUT).wait()
    assert res.rc == 0, describe(res)
    node.run(["id", "alice"])
    node.run(["getent", "group", "hpc-users"])
    ssh_on = node.run_action("enable-ssh-password-auth.sh")
    assert ssh_on.rc == 0, describe(ssh_on)
    login = lab.client.run(["sshpass", "-e", "ssh", *SSH_OPTS, f"alice@{node.ip}", "id -un"], check=False,
                           env={"SSHPASS": USERS["alice"]}, timeout=90)
    assert login.returncode == 0 and "alice" in login.stdout, login

    counts = _counters(node)
    used = {(proto, port) for proto, port in CANDIDATES if counts.get(f"{proto}/{port}", 0) > 0}
    print(f"\nnew connections to the DC per port: "
          f"{ {k: v for k, v in counts.items() if v} }; declared: {sorted(DECLARED)}")
    for proto in ("tcp", "udp"):
        named = sum(counts.get(f"{p}/{port}", 0) for p, port in CANDIDATES if p == proto)
        assert counts.get(f"{proto}/all", 0) == named, f"{proto} to ports outside the candidates: {counts}"
    assert used <= DECLARED, f"undeclared ports a real node uses: {sorted(used - DECLARED)}"
    # The join, the lookups and the login did reach the directory on these (measured: DNS, Kerberos, LDAP, kpasswd
    # for adcli's machine password, the Global Catalog for sssd's lookups, SMB for sssd's GPO check at login).
    assert {("udp", 53), ("tcp", 389), ("tcp", 464), ("tcp", 3268), ("tcp", 445)} <= used, used
    assert ("udp", 88) in used or ("tcp", 88) in used, used
