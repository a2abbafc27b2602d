"""The network judge's node flows against real traffic: which ports does a node really open to the directory?

A lab node counts, in its own network namespace, every new connection (conntrack NEW) it opens to the domain
controller, per protocol and port, while the product's join-domain.sh joins it (adcli), sssd resolves users and
groups, and an AD user logs in over ssh with a password (Kerberos). The ports it used must all be among the
node flows tools/network_judge.py declares toward the directory (NODE_FLOWS: DNS, Kerberos, LDAP, CLDAP, kpasswd,
Global Catalog, SMB), and nothing may go to any other port of the DC: a port missing from the declaration would be
a flow no security group is judged for.

Meanwhile the lab enforces, with iptables and conntrack (stateful, as security groups are), the groups the judge
evaluates: on the DC, the directory controllers group as modelled (DIRECTORY_CONTROLLER_INGRESS from the lab subnet,
the lab's "VPC"); in the switch namespace, where the real join handler runs, the plan's own join-function-sg egress
rules (from the program under Pulumi's mocks, the DC's placeholder replaced by the lab DC's address). The join and the
login must succeed under them and neither drops a packet.
"""

from __future__ import annotations

import re

import pytest

from pcluster_ad.tools.network_judge import DIRECTORY_CONTROLLER_INGRESS, NODE_FLOWS

from .conftest import JOIN_TIMEOUT, USERS, describe
from .lab import SSH_OPTS, run

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


def _enforce(iptables, chain: str, hook: list[str], accepts: list[list[str]]) -> None:
    """A stateful filter: replies and `accepts` pass, everything else in `hook` is dropped (and counted)."""
    iptables(["-N", chain])
    iptables(["-I", *hook, "-j", chain])
    iptables(["-A", chain, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"])
    for rule in accepts:
        iptables(["-A", chain, *rule, "-j", "ACCEPT"])
    iptables(["-A", chain, "-m", "comment", "--comment", "dropped", "-j", "DROP"])


def _dropped(out: str) -> int:
    return sum(int(m.group(1)) for m in re.finditer(r"^\s*(\d+)\s+\d+\s+DROP.*dropped", out, re.M))


def test_a_real_join_and_login_use_only_declared_directory_ports(lab, run_stack):
    (node,) = lab.add_nodes([{}])
    dc = lab.dc_ip
    # The directory controllers group as the judge models it, on the DC.
    _enforce(lambda a: lab.dc.run(["iptables", *a]), "PCADDCSG", ["INPUT", "1", "!", "-i", "lo"],
             [["-s", lab.cfg.subnet, "-p", proto, "--dport", f"{low}:{high}"]
              for proto, low, high in DIRECTORY_CONTROLLER_INGRESS])
    # The plan's join-function-sg, where the real join handler runs (only its traffic to the DC is filtered: the
    # switch namespace also serves IMDS and the function URL).
    egress = run_stack().named("join-function-sg").inputs["egress"]
    rules = [["-p", r["protocol"], "--dport", f"{int(r['fromPort'])}:{int(r['toPort'])}",
              "-d", re.sub(r"<after-deploy:directory-ad\.dnsIpAddresses\[\d\]>", dc, cidr)]
             for r in egress for cidr in r["cidrBlocks"]]
    assert any(f"{dc}/32" in r for r in rules) and len(rules) == 7, rules  # LDAP + DNS x2 to each DC (one here), HTTPS

    def sw(a):
        return run(["ip", "netns", "exec", lab.sw_ns, "iptables", *a])

    _enforce(sw, "PCADFNSG", ["OUTPUT", "1", "-d", dc], rules)
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

    dc_dropped = _dropped(lab.dc.run(["iptables", "-L", "PCADDCSG", "-v", "-n", "-x"]).stdout)
    fn_dropped = _dropped(sw(["-L", "PCADFNSG", "-v", "-n", "-x"]).stdout)
    assert (dc_dropped, fn_dropped) == (0, 0), "the modelled groups dropped real traffic"
    # The handler's LDAP went through the function's filter (it is the traffic under judgment).
    fn_rules = sw(["-L", "PCADFNSG", "-v", "-n", "-x"]).stdout
    assert any(int(m.group(1)) > 0 for m in re.finditer(r"^\s*(\d+)\s+\d+\s+ACCEPT\s+6\b.*dpt:389", fn_rules, re.M)), \
        fn_rules

    counts = _counters(node)
    used = {(proto, port) for proto, port in CANDIDATES if counts.get(f"{proto}/{port}", 0) > 0}
    print(f"\nnew connections to the DC per port: "
          f"{ {k: v for k, v in counts.items() if v} }; declared: {sorted(DECLARED)}")
    for proto in ("tcp", "udp"):
        named = sum(counts.get(f"{p}/{port}", 0) for p, port in CANDIDATES if p == proto)
        assert counts.get(f"{proto}/all", 0) == named, f"{proto} to ports outside the candidates: {counts}"
    assert used <= DECLARED, f"undeclared ports a real node uses: {sorted(used - DECLARED)}"
    # The join, the lookups and the login did reach the directory on these (measured: DNS, Kerberos, LDAP, kpasswd
    # for adcli's machine password). SMB 445 was sssd's GPO check at login: with ad_gpo_access_control = disabled
    # (issue 18) no login uses it any more; the Global Catalog (3268) was sssd's user and group lookups: with
    # ad_enable_gc = False (attack finding 2 of issue 18) they go to LDAP 389. Both flows stay declared (a site may
    # turn either on).
    assert {("udp", 53), ("tcp", 389), ("tcp", 464)} <= used, used
    assert ("tcp", 445) not in used and ("tcp", 3268) not in used, used
    assert ("udp", 88) in used or ("tcp", 88) in used, used
