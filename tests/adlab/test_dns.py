"""Name resolution on a node with the VPC's DHCP options as components/directory.py sets them:
ONE domain (the region's EC2 internal domain) and the directory's DNS servers (issue 9, finding 3).

Lab nodes get resolv.conf as the DHCP client writes it (`search <ec2 domain>`, `nameserver <DC>`),
their EC2 host names (ip-a-b-c-d), and the DC's DNS answers for the EC2 internal domain and the
cluster's Route 53 zone as the AD DNS does on AWS by forwarding to the VPC resolver (stand-in zones,
tests/adlab/README.md). The AD domain is in no search list: everything that needs it uses its full name.

The last test runs the real systemd-networkd (the DHCP client of Amazon Linux 2023 and Ubuntu) as
DHCP client and server, and shows what it makes of the old two-domain value: a search domain
`test.domain\\032eu-west-1.compute.internal` that breaks short names, where the new value works.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from pcluster_ad.stack_config import ec2_internal_domain

from .conftest import JOIN_TIMEOUT, USERS, describe
from .lab import SSH_OPTS, LabError, run

pytestmark = pytest.mark.adlab

NETWORKD = "/lib/systemd/systemd-networkd"
# The cluster's Route 53 private zone is <cluster name>.pcluster; Slurm node names live there.
SLURM_NODES = ["compute-dy-c5large-1", "compute-dy-c5large-2"]


def ssh(lab, node, user: str, password: str, command: str) -> subprocess.CompletedProcess:
    """ssh from the client namespace; the password reaches sshpass through its environment."""
    return lab.client.run(
        ["sshpass", "-e", "ssh", *SSH_OPTS, f"{user}@{node.ip}", command],
        check=False,
        env={"SSHPASS": password},
        timeout=60,
    )


def getent(node, name: str, resolv_conf: str | None = None) -> tuple[int, list[str]]:
    """`getent hosts NAME` on the node: (exit code, addresses). With resolv_conf, that file replaces
    /etc/resolv.conf for this one lookup only (a private mount namespace), the node keeps its own."""
    cmd = ["getent", "hosts", name]
    if resolv_conf is not None:
        cmd = ["unshare", "--mount", "--propagation", "private", "/bin/bash", "-c",
               'printf "%s" "$1" >/tmp/adlab-resolv.conf && mount --bind /tmp/adlab-resolv.conf /etc/resolv.conf '
               '&& exec getent hosts "$2"', "_", resolv_conf, name]
    res = node.run(cmd, check=False, timeout=30)
    return res.returncode, [line.split()[0] for line in res.stdout.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def dns(lab):
    """Two nodes with VPC-like DNS, the cluster's zone with Slurm node names; the product's join
    script runs on both (the tests look at the outcome, then at resolution on the joined nodes)."""
    a, b = lab.add_nodes([{}, {}])
    zone = f"{lab.cfg.cluster_name.lower()}.pcluster"
    lab.dns_zone(zone)
    for name, node in zip(SLURM_NODES, (a, b), strict=True):
        lab.dns_add(zone, name, node.ip)
    runs = [n.start_bootstrap(timeout_arg=JOIN_TIMEOUT) for n in (a, b)]
    results = [r.wait() for r in runs]
    return {"lab": lab, "a": a, "b": b, "zone": zone, "results": results}


def test_join_and_ad_login_with_vpc_dns(dns):
    lab, a, b = dns["lab"], dns["a"], dns["b"]
    for node, res in zip((a, b), dns["results"], strict=True):
        assert res.rc == 0, f"{node.key}: join-domain.sh failed with VPC DNS\n{describe(res)}"
    # The machine account is the one the join function created for the instance (name from its instance id,
    # host name <name>.<AD domain>: never the EC2 name, whose IP comes back with another instance); its keys are in
    # the keytab.
    from pcluster_ad.lambda_src.join_handler import computer_name

    from .lab import computer_prefix

    name = computer_name(computer_prefix(lab.cfg.cluster_name), a.instance_id)
    keytab = a.run(["klist", "-k", "/etc/krb5.keytab"]).stdout
    assert f"{name}$@TEST.DOMAIN" in keytab, keytab
    assert f"host/{name.lower()}.{lab.cfg.domain}@TEST.DOMAIN" in keytab, keytab
    assert a.run_action("enable-ssh-password-auth.sh").rc == 0
    res = ssh(lab, a, "alice", USERS["alice"], "id; klist")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "(alice)" in res.stdout.splitlines()[0]
    assert "krbtgt/TEST.DOMAIN@TEST.DOMAIN" in res.stdout  # KDC found through the node's DNS


def test_node_resolv_conf_is_what_the_dhcp_options_give(dns):
    lab, a = dns["lab"], dns["a"]
    # The lab's domain is the one program.py hands to components/directory.py for this region.
    assert lab.cfg.ec2_domain == ec2_internal_domain(lab.cfg.region) == "eu-west-1.compute.internal"
    conf = a.read("/etc/resolv.conf").splitlines()
    assert [ln for ln in conf if ln.startswith("search")] == [f"search {lab.cfg.ec2_domain}"]
    assert [ln for ln in conf if ln.startswith("nameserver")] == [f"nameserver {lab.dc_ip}"]
    assert a.run(["hostname"]).stdout.strip() == "ip-" + a.ip.replace(".", "-")  # as EC2 names it


def test_ad_domain_resolves_without_a_search_entry(dns):
    lab, a = dns["lab"], dns["a"]
    d = lab.cfg.domain
    for srv in (f"_ldap._tcp.{d}", f"_kerberos._tcp.{d}", f"_kerberos._udp.{d}", f"_ldap._tcp.dc._msdcs.{d}"):
        out = a.run(["dig", "+short", "+time=2", "+tries=2", "SRV", srv], check=False).stdout
        assert f"dc1.{d}." in out.split(), f"{srv}: {out!r}"
    assert getent(a, f"dc1.{d}") == (0, [lab.dc_ip])
    # realmd finds the domain from the node's DNS alone (what `realm join` does first).
    disc = a.run(["realm", "discover", d], check=False, timeout=60)
    assert disc.returncode == 0 and "realm-name: TEST.DOMAIN" in disc.stdout, disc.stdout + disc.stderr
    # Nothing depends on the AD domain being a search domain; its short names do not resolve.
    assert getent(a, "dc1")[0] != 0


def test_ec2_host_names_resolve_short_and_fqdn(dns):
    lab, a, b = dns["lab"], dns["a"], dns["b"]
    for node in (a, b):
        fqdn = f"{node.hostname}.{lab.cfg.ec2_domain}"
        for name in (node.hostname, fqdn):
            assert getent(a, name) == (0, [node.ip]), f"{name} from {a.hostname}"
    # The other node comes from DNS (a's /etc/hosts has only its own line); a's own name too.
    assert b.hostname not in a.read("/etc/hosts")
    own = a.run(["dig", "+search", "+short", a.hostname], check=False).stdout.split()
    assert own == [a.ip]


def test_slurm_node_names_resolve_in_the_cluster_zone(dns):
    a, b = dns["a"], dns["b"]
    # With Dns.UseEc2Hostnames Slurm reaches nodes by NodeAddr (their IP); the managed zone still
    # names them <slurm node>.<cluster>.pcluster, which the directory's DNS forwards to the VPC resolver.
    for name, node in zip(SLURM_NODES, (a, b), strict=True):
        assert getent(a, f"{name}.{dns['zone']}") == (0, [node.ip])


# --- the bug: what systemd-networkd makes of a space-separated DHCP domain -------------------


class NetworkdPair:
    """systemd-networkd as DHCP server (sending option 15 = domain_name, as the VPC does) and as
    DHCP client, each in its own network and mount namespace, linked by a veth pair and nothing else."""

    def __init__(self, lab, tag: str, domain_name: str):
        self.lab = lab
        self.tag = tag
        self.ns = {k: f"{lab.id}-{tag}{k}" for k in ("s", "c")}
        self.procs: dict[str, subprocess.Popen] = {}
        for ns in self.ns.values():
            run(["ip", "netns", "add", ns])
            lab.netns.append(ns)  # the lab's teardown removes (and checks) these too
            lab.netns_inodes[ns] = Path(f"/run/netns/{ns}").stat().st_ino
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
        run(["ip", "-n", self.ns["s"], "link", "add", "eth0", "type", "veth", "peer", "name", "eth0",
             "netns", self.ns["c"]])
        server_ip = str(lab.net.network_address + 250)
        common = "[Match]\nName=eth0\n[Network]\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n"
        configs = {
            "s": common + f"Address={server_ip}/{lab.net.prefixlen}\nDHCPServer=yes\n"
                 f"[DHCPServer]\nPoolOffset=100\nPoolSize=20\nEmitRouter=no\nEmitDNS=yes\nDNS={lab.dc_ip}\n"
                 f"SendOption=15:string:{domain_name}\n",
            "c": common + "DHCP=ipv4\n[DHCPv4]\nUseDomains=yes\nUseDNS=yes\n",
        }
        for k, ns in self.ns.items():
            # Private /run (networkd's state and config: /run/systemd/network), and /sys read-only,
            # which tells networkd there is no udev to wait for (as in a container).
            script = (
                "set -e; mount -t tmpfs adlab-run /run; mount -o bind,remount,ro /sys; "
                "mkdir -p /run/systemd/network /run/systemd/netif; "
                "chown systemd-network:systemd-network /run/systemd/netif 2>/dev/null || true; "
                'printf "%s" "$1" >/run/systemd/network/10-eth0.network; '
                f"exec {NETWORKD}"
            )
            log = open(lab.root / f"networkd-{tag}{k}.log", "wb")
            p = subprocess.Popen(
                ["ip", "netns", "exec", ns, "unshare", "--mount", "--propagation", "private",
                 "/bin/bash", "-c", script, "_", configs[k]],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
            log.close()
            lab.procs.append(p)
            self.procs[k] = p

    def client_link(self, timeout: float = 90) -> dict[str, str]:
        """The client's link state file once its lease has DNS domains (generous deadline: waits on
        the lease, never on a fixed delay)."""
        p = self.procs["c"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if p.poll() is not None:
                break
            for f in Path(f"/proc/{p.pid}/root/run/systemd/netif/links").glob("*"):
                with_values = dict(ln.split("=", 1) for ln in f.read_text().splitlines() if "=" in ln)
                if with_values.get("DOMAINS"):
                    return with_values
            time.sleep(0.2)
        logs = "".join((self.lab.root / f"networkd-{n}.log").read_text(errors="replace")[-1500:]
                       for n in (f"{self.tag}s", f"{self.tag}c"))
        raise LabError(f"systemd-networkd gave the client no DNS domains within {timeout}s\n{logs}")

    def close(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
            p.wait(timeout=30)
        for ns in self.ns.values():
            self.lab._del_netns(ns)


def test_two_domain_dhcp_value_breaks_short_names_under_systemd_networkd(dns):
    lab, a, b = dns["lab"], dns["a"], dns["b"]
    if not Path(NETWORKD).exists():
        pytest.fail(f"{NETWORKD} is missing (Debian package systemd): run tools/install_adlab_deps.sh",
                    pytrace=False)
    old_value = f"{lab.cfg.domain} {lab.cfg.ec2_domain}"  # what components/directory.py used to set
    new_value = ec2_internal_domain(lab.cfg.region)  # what it sets now
    domains = {}
    for tag, value in (("old", old_value), ("new", new_value)):
        pair = NetworkdPair(lab, f"dh{tag[0]}", value)
        try:
            link = pair.client_link()
        finally:
            pair.close()
        assert link.get("DNS") == lab.dc_ip
        domains[tag] = link["DOMAINS"]
    # sd-dhcp-lease.c lease_parse_domain() -> dns_name_normalize(): the space is escaped as \032
    # inside ONE label, so the lease holds one made-up domain instead of two.
    assert domains["old"] == f"{lab.cfg.domain}\\032{lab.cfg.ec2_domain}"
    assert domains["new"] == lab.cfg.ec2_domain
    # systemd-resolved writes the lease's domains as resolv.conf's search line; resolve the other
    # node's short name with each, against the same DNS server.
    results = {tag: getent(a, b.hostname, f"search {d}\nnameserver {lab.dc_ip}\n") for tag, d in domains.items()}
    assert results["new"] == (0, [b.ip])
    assert results["old"][0] == 2, results  # 2: not found
    # Only the search list breaks: full names still resolve with the old value.
    old_conf = f"search {domains['old']}\nnameserver {lab.dc_ip}\n"
    assert getent(a, f"{b.hostname}.{lab.cfg.ec2_domain}", old_conf) == (0, [b.ip])
    assert re.fullmatch(r"[^\s]+", domains["old"])  # one word: nothing splits it back
