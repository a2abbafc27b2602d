"""--restrict-imds: the instance metadata service (IMDS) for root only, now and at every boot.

ParallelCluster's own head-node rules (cookbook imds-access.sh: chain PARALLELCLUSTER_IMDS, ACCEPT for uid 0, REJECT
for everyone else), written as a small /bin/sh script that a oneshot unit runs again at every boot (a reboot starts
with empty tables). Applied before any domain user can log in: from then on a user's process could take the instance
role's credentials. The join script (root) still reaches IMDS.
"""

import ipaddress
import os
import sys
from urllib.parse import urlsplit

from .common import NodeError
from .node import Node

LOCKDOWN_SCRIPT = "/usr/local/sbin/pcluster-ad-imds-lockdown"
LOCKDOWN_UNIT = "pcluster-ad-imds-lockdown.service"
EXIT_CODE = 10  # the join script's exit code for the lock-down (docs/design.md)
EC2_IMDS = ("169.254.169.254", "fd00:ec2::254")

# The lockdown script's fixed part; one `lock` line per IMDS address follows. Idempotent and without a gap: only
# missing rules are added, ACCEPT always ahead of REJECT.
LOCKDOWN_BODY = """#!/bin/sh
# pcluster-ad: the instance metadata service (IMDS) for root (uid 0) only. Written by join-domain.sh
# --restrict-imds, run by it and at every boot by pcluster-ad-imds-lockdown.service. The rules of
# ParallelCluster's head-node lockdown (cookbook imds-access.sh): chain PARALLELCLUSTER_IMDS, jumped
# to from OUTPUT for the IMDS address, ACCEPT for the allowed owner, REJECT for everyone else.
# Idempotent and without a gap: only missing rules are added, ACCEPT always ahead of REJECT.
set -eu
PATH="${PATH:-/usr/bin:/bin}:/usr/sbin:/sbin"
C=PARALLELCLUSTER_IMDS
lock() {
    ipt=$1
    shift
    if [ "$ipt" = ip6tables ] && [ ! -e /proc/net/if_inet6 ]; then
        echo "IPv6 is disabled on this node: no IPv6 IMDS to lock down"
        return 0
    fi
    $ipt -w -N "$C" 2>/dev/null || true
    $ipt -w -C "$C" "$@" -m owner --uid-owner 0 -j ACCEPT 2>/dev/null \\
        || $ipt -w -I "$C" 1 "$@" -m owner --uid-owner 0 -j ACCEPT
    $ipt -w -C "$C" "$@" -j REJECT 2>/dev/null || $ipt -w -A "$C" "$@" -j REJECT
    $ipt -w -C OUTPUT "$@" -j "$C" 2>/dev/null || $ipt -w -I OUTPUT 1 "$@" -j "$C"
}
"""

UNIT_AFTER = ("network-pre.target iptables.service ip6tables.service firewalld.service netfilter-persistent.service"
              " nftables.service")
UNIT_TEXT = """[Unit]
Description=pcluster-ad: instance metadata (IMDS) for root only
# After the firewall services (restoring a saved rule set would drop these rules), before anyone can
# log in or run a job.
After=""" + UNIT_AFTER + """
Before=ssh.service sshd.service slurmd.service systemd-user-sessions.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/pcluster-ad-imds-lockdown

[Install]
WantedBy=multi-user.target
"""


class LockdownError(NodeError):
    """Why IMDS could not be locked down (the join script's exit 10)."""

    def __init__(self, message):
        super().__init__(message, EXIT_CODE)


def imds_addresses(endpoint):
    """[(family, address, port or None)] to lock down. EC2's IMDS on both families, whole address (as ParallelCluster
    does); any other endpoint from AWS_EC2_METADATA_SERVICE_ENDPOINT (a lab's stand-in) on its TCP port only (80 by
    default)."""
    bad = LockdownError(f"the IMDS endpoint {endpoint!r} is not http://<IP address>[:port]: cannot lock it down")
    # (raised from None: the ValueError adds nothing the message does not say)
    u = urlsplit(endpoint)
    try:
        port = u.port
        addr = ipaddress.ip_address(u.hostname or "")
    except ValueError:
        raise bad from None
    if u.scheme != "http":
        raise bad
    if str(addr) in EC2_IMDS and port in (None, 80):
        return [(4, EC2_IMDS[0], None), (6, EC2_IMDS[1], None)]
    return [(addr.version, str(addr), port or 80)]


def lock_lines(addresses):
    """The script's `lock` lines and the commands they need."""
    lines, commands = [], []
    for family, addr, port in addresses:
        ipt = "ip6tables" if family == 6 else "iptables"
        commands.append(ipt)
        lines.append("lock {} -d {}{}".format(ipt, addr, "" if port is None else f" -p tcp --dport {port}"))
    return lines, commands


def ensure_iptables(commands, os_family, remaining, run, which, log):
    if all(which(c) for c in commands):
        return
    log("imds: {} missing; installing iptables".format(" ".join(commands)))
    if remaining <= 0:
        raise LockdownError("--restrict-imds: iptables is not installed and the deadline is reached")
    limit = ["timeout", "-k", "10", str(remaining)]
    if os_family == "debian":
        argv = limit + ["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "-q", "-y", "-o",
                        "DPkg::Lock::Timeout=300", "install", "--no-install-recommends", "iptables"]
        tool = "apt-get install iptables"
    elif which("dnf"):
        argv, tool = limit + ["dnf", "-y", "-q", "install", "iptables-nft"], "dnf install iptables-nft"
    else:
        argv, tool = limit + ["yum", "-y", "-q", "install", "iptables"], "yum install iptables"
    if run(argv) != 0:
        raise LockdownError(f"--restrict-imds: {tool} failed")
    if not all(which(c) for c in commands):
        raise LockdownError("--restrict-imds: {} still missing after installing iptables".format(" ".join(commands)))


def write_file(path, text, mode, what):
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)
    except OSError as e:
        raise LockdownError(f"--restrict-imds: cannot write {path} ({e.strerror or what})") from None


def restrict_imds(endpoint, root, os_family, remaining, run, which, log):
    """Writes the script and the unit under ROOT, runs the script, enables the unit."""
    addresses = imds_addresses(endpoint)
    lines, commands = lock_lines(addresses)
    ensure_iptables(commands, os_family, remaining, run, which, log)
    script = root + LOCKDOWN_SCRIPT
    write_file(script, LOCKDOWN_BODY + "".join(line + "\n" for line in lines), 0o755, "script")
    write_file(root + "/etc/systemd/system/" + LOCKDOWN_UNIT, UNIT_TEXT, 0o644, "unit")
    shown = "".join("{} {}{};".format(f, a, "" if p is None else f" {p}") for f, a, p in addresses)
    log(f"imds: allowing IMDS ({shown}) to root only: {LOCKDOWN_SCRIPT}")
    if run([script]) != 0:
        raise LockdownError("--restrict-imds: the iptables rules were refused (see above)")
    if run(["timeout", "-k", "10", "60", "systemctl", "daemon-reload"]) != 0:
        log("WARNING: systemctl daemon-reload failed")
    if run(["timeout", "-k", "10", "60", "systemctl", "enable", LOCKDOWN_UNIT]) != 0:
        raise LockdownError(
            f"--restrict-imds: could not enable {LOCKDOWN_UNIT} (the lockdown would not survive a reboot)")
    log(f"imds: only root can reach IMDS now; {LOCKDOWN_UNIT} applies the same rules at every boot")


def restrict_imds_cli(endpoint, root, os_family, remaining):
    # exit 10 with the join script's "ERROR: ..." line, as its die does
    node = Node()
    node.main(lambda: restrict_imds(endpoint, root, os_family, int(remaining), node.run, node.which, node.log))


def imds_address(endpoint):
    # stdout: one line "<4|6> <address> [port]" per address to lock down (what the lock-down covers, for a reader).
    try:
        addresses = imds_addresses(endpoint)
    except LockdownError as e:
        print(e, file=sys.stderr)
        sys.exit(1)
    for family, addr, port in addresses:
        print(family, addr, *([] if port is None else [port]))
