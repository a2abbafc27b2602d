"""Benchmarks of the join chain and of AD lookups, on the real-AD lab (tests/adlab/lab.py).

    sudo venv/bin/python -m bench.adlab_bench [--sequential 10] [--burst 20] [--users 10000]
                                              [--results bench/RESULTS.md]

Prints a markdown table (no asserts). Needs root and tools/install_adlab_deps.sh, like the lab.
All figures come from the product's real pieces: join-domain.sh on each node, the real join
handler behind the SigV4-checked function URL, realm/adcli/sssd against Samba AD.

1. join latency: one node at a time, from the start of join-domain.sh to the first successful
   `getent passwd` of an AD user (packages preinstalled, as on a ParallelCluster AMI);
2. burst: N nodes start join-domain.sh at the same moment;
3. a directory of --users users (bulk add, no passwords), one user in 200 groups and a group
   of 1,000 members: getent/id cold (sssd caches emptied) and warm, with the sssd.conf the
   product writes and then with settings tuned for large directories.
4. --compare-with REV: REV's join chain against today's, side by side (cold `id`, cold ssh login, join p50), and
   issue 21's yardsticks in the same rounds (bench/yardsticks.py): the floor of a join and ParallelCluster's own
   DirectoryService mode (the peer), each with its product / yardstick ratio and goal.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench import yardsticks
from tests.adlab.lab import (
    BOOTSTRAP_DIR,
    NODE_OS,
    REPO,
    SSH_OPTS,
    Lab,
    LabConfig,
    LabError,
    Node,
    RunResult,
    default_node_os,
    missing_deps,
)

DOMAIN_SECTION = "[domain/test.domain]"
# sssd settings for large directories, measured cumulatively (each variant adds to the previous).
VARIANTS = [
    ("product sssd.conf", {}),
    (
        "+ ignore_group_members",
        {
            # Do not fetch member lists of groups: the main cost of group lookups and of resolving
            # the groups of a user (initgroups at login, `id`). getent group then lists no members.
            "ignore_group_members": "True",
        },
    ),
    (
        "+ referrals off, no GC, no GPO",
        {
            # Do not chase LDAP referrals (AD returns them for the forest's other partitions).
            "ldap_referrals": "False",
            # Single-domain forest: ask the DC's LDAP, not the Global Catalog, for memberships.
            "ad_enable_gc": "False",
            # Access by group membership instead of GPO evaluation (an SMB fetch at each login).
            "ad_gpo_access_control": "disabled",
        },
    ),
]
# Stated defaults, kept as they are in every variant: ldap_use_tokengroups = True (a user's groups
# from one tokenGroups read), enumerate = False (never list the whole directory).
TUNED = {k: v for _, opts in VARIANTS for k, v in opts.items()}


MANY_PW = "M4ny-Pw-2026!x"
WHO = {
    "product": "join-domain.sh"
    + ("" if BOOTSTRAP_DIR == REPO / "bootstrap" else f" from ADLAB_BOOTSTRAP_DIR={BOOTSTRAP_DIR}"),
    "reference": "harness reference join, NOT the product",
}


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def timed(node: Node, cmd: list[str]) -> tuple[float, int, str]:
    """Run cmd in the node; time it inside the node (excludes nsenter overhead)."""
    script = 'S=$(date +%s%N); "$@" >/tmp/bench.out 2>&1; rc=$?; E=$(date +%s%N); echo "$rc $((E-S))"'
    res = node.run(["/bin/bash", "-c", script, "_", *cmd], check=False, timeout=600)
    rc, ns = res.stdout.split()
    out = node.read("/tmp/bench.out")
    return int(ns) / 1e9, int(rc), out


def wait_lookup(node: Node, user: str, timeout: float = 120) -> float:
    """Seconds until `getent passwd user` first succeeds (from now)."""
    script = (
        f"S=$(date +%s%N); for i in $(seq 1 {int(timeout * 20)}); do getent passwd {user} >/dev/null && "
        "break; sleep 0.05; done; E=$(date +%s%N); getent passwd " + user + " >/dev/null || exit 1; echo $((E-S))"
    )
    res = node.run(["/bin/bash", "-c", script], check=False, timeout=timeout + 30)
    if res.returncode != 0:
        raise LabError(f"{node.key}: {user} never resolved")
    return int(res.stdout.strip()) / 1e9


def cold_restart(node: Node, warm_user: str) -> None:
    """Empty sssd's caches, restart it, and warm only the connection (one unrelated lookup)."""
    node.sh(
        "systemctl stop sssd; rm -f /var/lib/sss/db/*.ldb /var/lib/sss/mc/*; systemctl start sssd",
        timeout=120,
    )
    wait_lookup(node, warm_user, timeout=60)


SET_OPTIONS_PY = """
import re, sys
path, opts = "/etc/sssd/sssd.conf", dict(a.split("=", 1) for a in sys.argv[1:])
out, section = [], None
for line in open(path).read().splitlines():
    m = re.match(r"\\s*\\[(.*)\\]\\s*$", line)
    if m:
        if section and section.startswith("domain/"):
            out += [f"{k} = {v}" for k, v in opts.items()]
            opts = {}
        section = m.group(1)
    else:
        key = re.match(r"\\s*(\\w+)\\s*=", line)
        if section and section.startswith("domain/") and key and key.group(1) in opts:
            continue
    out.append(line)
out += [f"{k} = {v}" for k, v in opts.items()]
open(path, "w").write("\\n".join(out) + "\\n")
"""


def set_sssd_options(node: Node, options: dict[str, str]) -> None:
    """Set options in the (single) [domain/...] section of the node's sssd.conf."""
    node.run(["/usr/bin/python3", "-c", SET_OPTIONS_PY, *[f"{k}={v}" for k, v in options.items()]])


class ReferenceRun:
    """The harness' reference join (realm join + the product's sssd settings), in a thread, for
    capacity figures of the AD side when the product script cannot be measured. NOT the product."""

    def __init__(self, node: Node):
        self.t0 = time.monotonic()
        self.result: RunResult | None = None
        self.thread = threading.Thread(target=self._go, args=(node,), daemon=True)
        self.thread.start()

    def _go(self, node: Node) -> None:
        try:
            node.reference_join()
            ok = node.run(["getent", "passwd", "alice"], check=False).returncode == 0
            self.result = RunResult(0 if ok else 1, time.monotonic() - self.t0, "" if ok else "ERROR: no lookup")
        except Exception as exc:  # noqa: BLE001 - reported as a failed join
            self.result = RunResult(1, time.monotonic() - self.t0, f"ERROR: {exc}")

    def wait(self) -> RunResult:
        self.thread.join()
        assert self.result is not None
        return self.result


def start_join(node: Node, mode: str, timeout_arg: int):
    return node.start_bootstrap(timeout_arg=timeout_arg) if mode == "product" else ReferenceRun(node)


def join_product(lab: Lab, node: Node, timeout_arg: int = 300, mode: str = "product") -> dict:
    run = start_join(node, mode, timeout_arg)
    res = run.wait()
    out = {"rc": res.rc, "script_s": res.elapsed}
    if res.rc == 0:
        out["first_lookup_s"] = res.elapsed + wait_lookup(node, "alice")
    else:
        out["error"] = [line for line in res.output.splitlines() if "ERROR" in line][-1:] or res.output[-300:]
    return out


def bench_sequential(lab: Lab, n: int, rows: list, raw: dict, mode: str) -> None:
    lat, script, fails = [], [], []
    for _ in range(n):
        (node,) = lab.add_nodes([{}])
        r = join_product(lab, node, mode=mode)
        if r["rc"] == 0:
            lat.append(r["first_lookup_s"])
            script.append(r["script_s"])
        else:
            fails.append(r)
        lab.remove_host(node)
    raw["sequential"] = {"latency": lat, "script": script, "failures": fails}
    who = WHO[mode]
    rows.append(
        (f"Join latency, start to first AD lookup, p50 [{who}]", f"{pct(lat, 0.5):.2f} s", f"{len(lat)}/{n} ok")
    )
    rows.append((f"Join latency, start to first AD lookup, p95 [{who}]", f"{pct(lat, 0.95):.2f} s", ""))
    rows.append((f"join run time alone, p50 / max [{who}]", f"{pct(script, 0.5):.2f} / {max(script or [0]):.2f} s", ""))
    if fails:
        rows.append(("sequential joins failed", str(len(fails)), str(fails[0].get("error"))[:160]))


def bench_burst(lab: Lab, n: int, rows: list, raw: dict, mode: str) -> None:
    nodes = lab.add_nodes([{} for _ in range(n)])
    t0 = time.monotonic()
    runs = [start_join(node, mode, 600) for node in nodes]
    results = [r.wait() for r in runs]
    wall = time.monotonic() - t0
    ok = [r for r in results if r.rc == 0]
    joined = sum(1 for node in nodes if node.run(["getent", "passwd", "alice"], check=False).returncode == 0)
    per = [r.elapsed for r in ok]
    raw["burst"] = {"wall": wall, "per_node": [r.elapsed for r in results], "rcs": [r.rc for r in results]}
    who = WHO[mode]
    rows.append(
        (f"Burst of {n} nodes at once [{who}]: wall time until all finished", f"{wall:.1f} s", f"{len(ok)}/{n} ok")
    )
    rows.append(
        (
            f"Burst of {n}: per-node script time p50 / p95 / max",
            f"{pct(per, 0.5):.1f} / {pct(per, 0.95):.1f} / {max(per or [0]):.1f} s",
            "",
        )
    )
    rows.append((f"Burst of {n}: nodes resolving AD users afterwards", f"{joined}/{n}", ""))
    errs = sorted(
        {
            (r.rc, ([ln for ln in r.output.splitlines() if "ERROR" in ln][-1:] or [""])[0][-120:])
            for r in results
            if r.rc != 0
        }
    )
    for rc, msg in errs[:3]:
        rows.append((f"Burst failure (rc={rc})", "", msg))
    for node in nodes:
        lab.remove_host(node)


def bench_large(lab: Lab, users: int, rows: list, raw: dict, reps: int) -> None:
    t0 = time.monotonic()
    stats = lab.populate(
        {
            "users": [{"name": "manyuser", "password": MANY_PW}],
            "bulk": {
                "users": users,
                "prefix": "buser",
                "big_group": {"name": "biggroup", "members": min(1000, users)},
                "many_groups": {"user": "manyuser", "count": 200, "prefix": "mgrp"},
            },
        }
    )
    rows.append(
        (
            f"Directory: bulk add of {users} users + 200 groups + 1 group of 1000",
            f"{time.monotonic() - t0:.1f} s",
            json.dumps(stats),
        )
    )
    (node,) = lab.add_nodes([{}])
    r = join_product(lab, node)
    tag = ""
    if r["rc"] != 0:
        # The lookup figures measure sssd against AD, not the script: complete the join in the
        # harness and say so in the table.
        node.reference_join()
        wait_lookup(node, "alice")
        tag = f" (product script failed rc={r['rc']}; node joined by the harness' reference join)"
        rows.append(("Large-directory node: join-domain.sh failed" + tag, "", str(r.get("error"))[:160]))
    mark = ", harness-joined node" if tag else ""
    ssh_ok = node.run_action("enable-ssh-password-auth.sh").rc == 0
    probe = f"buser{users // 2:05d}"
    many = " ".join(f"buser{i:05d}" for i in range(0, users, max(1, users // 200)))
    measures = [
        ("getent passwd (one user)", ["getent", "passwd", probe]),
        ("getent passwd of 200 users one by one", ["bash", "-c", f"for u in {many}; do getent passwd $u; done"]),
        ("id of a user in 200 groups", ["id", "manyuser"]),
        ("getent group of a 1,000-member group", ["getent", "group", "biggroup"]),
    ]
    raw["large"] = {}
    for label, options in VARIANTS:
        if options:
            set_sssd_options(node, options)
        res = {}
        for name, cmd in measures:
            colds, warms = [], []
            for _ in range(reps):
                cold_restart(node, "alice")
                c, rc_c, out_c = timed(node, cmd)
                w, rc_w, _ = timed(node, cmd)
                colds.append(c)
                warms.append(w)
            c, w = statistics.median(colds), statistics.median(warms)
            detail = ""
            if cmd[:2] == ["getent", "group"] and rc_c == 0:
                members = out_c.strip().split(":")[-1]
                detail = f"{len(members.split(',')) if members else 0} members listed"
            if cmd[0] == "id" and rc_c == 0:
                detail = f"{out_c.count(',') + 1} groups"
            if cmd[0] == "bash":
                detail = f"{len(out_c.splitlines())} found"
            res[name] = {"cold_s": colds, "warm_s": warms, "rc": [rc_c, rc_w], "detail": detail}
            rows.append(
                (
                    f"{name} [{label}{mark}] cold / warm",
                    f"{c * 1000:.0f} / {w * 1000:.0f} ms",
                    f"rc {rc_c}/{rc_w} {detail}",
                )
            )
        logins = []
        for _ in range(reps if lab.client and ssh_ok else 0):
            # ssh login of the user in 200 groups (PAM: initgroups, home creation), cold cache
            node.sh("rm -rf /home/manyuser")
            cold_restart(node, "alice")
            t = time.monotonic()
            rc = lab.client.run(
                ["sshpass", "-e", "ssh", *SSH_OPTS, f"manyuser@{node.ip}", "true"],
                env={"SSHPASS": MANY_PW},
                check=False,
                timeout=120,
            ).returncode
            logins.append((time.monotonic() - t, rc))
        if logins:
            login_ms = statistics.median(t for t, _ in logins) * 1000
            rcs = sorted({rc for _, rc in logins})
            res["ssh login"] = {"cold_s": [t for t, _ in logins], "rc": rcs}
            rows.append(
                (f"ssh login, user in 200 groups, cold cache [{label}{mark}]", f"{login_ms:.0f} ms", f"rc {rcs}")
            )
        raw["large"][label] = res


# --- before/after, side by side (issue 12): today's join script at a git revision vs the current one -------

OUTSIDER_PW = "0uts1der-Pw-2026!"
# sssd >= 2.9.1 (upstream commit "SYSDB: in case (ignore_group_members == true) group is actually complete", in
# AL2023's, RHEL 8.10/9's and Ubuntu 24.04's sssd, not in Debian 12's 2.8.2) stores the groups it learns during
# initgroups with expiry now + entry_cache_group_timeout instead of now - 1. Emulated on the lab's 2.8.2 after a
# `getent initgroups` by giving those cache entries (main and timestamp cache) that expiry, as the patch does.
EMULATE_SSSD_291 = r"""
now=$(date +%s); exp=$((now + 5400))
for db in /var/lib/sss/db/cache_*.ldb /var/lib/sss/db/timestamps_*.ldb; do
  ldbsearch -H "$db" "(&(objectCategory=group)(dataExpireTimestamp<=$now))" dn | sed -n 's/^dn: //p' \
    | while IFS= read -r dn; do
        printf 'dn: %s\nchangetype: modify\nreplace: dataExpireTimestamp\ndataExpireTimestamp: %s\n\n' "$dn" "$exp"
      done >/tmp/emulate-sssd-291.ldif
  [ -s /tmp/emulate-sssd-291.ldif ] && ldbmodify -H "$db" /tmp/emulate-sssd-291.ldif >/dev/null
done
rm -f /var/lib/sss/mc/*
"""
STACK_USERS_DN = "CN=pca-bench-users,CN=Users,DC=test,DC=domain"
GOALS = {"id": 0.50, "login": 0.35, "join": 0.70}  # after / before, at most


def _script_run(node: Node, lab: Lab, script: str, extra: list[str], timeout_arg: int = 300, url_path: str = "",
                agent_dir: Path | None = None):
    """Start a join script (its full text) on a node as ParallelCluster would: downloaded, chmod +x, run.
    agent_dir: the node agent of the script's revision (as_uploaded)."""
    from tests.adlab.lab import BootstrapRun, as_uploaded

    path = "/tmp/pcluster-ad-actions/join-domain-bench.sh"
    node.write(path, as_uploaded(script, agent_dir), mode="0755")
    argv = [path, "--function-url", lab.function_url + url_path, "--region", lab.cfg.region,
            "--timeout", str(timeout_arg), *extra]
    return BootstrapRun(node, argv, timeout_arg + 60)


def _first_lookup(node: Node, lab: Lab, script: str, extra: list[str], url_path: str = "",
                  agent_dir: Path | None = None) -> float | None:
    run = _script_run(node, lab, script, extra, url_path=url_path, agent_dir=agent_dir)
    res = run.wait()
    return res.elapsed + wait_lookup(node, "alice") if res.rc == 0 else None


BEFORE_PATH = "before/"  # the function URL path under which the lab serves the GIT_REV's join handler


def before_handler(rev: str, into: Path) -> dict:
    """The join handler of REV (its whole lambda_src, modules side by side), for LabConfig.path_handlers: the
    function's contract changed since (one-time passwords, caller proof), so REV's script needs REV's function."""
    import subprocess

    archive = subprocess.run(["git", "archive", rev, "lambda_src"], cwd=REPO, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return {"/" + BEFORE_PATH: str(into / "lambda_src" / "join_handler.py")}


STACK_GROUP_GOALS = {"id": 1.10, "login": 1.10, "join": 1.10}  # issue 18: the ad provider within 10% of the lists


def node_versions(node: Node) -> str:
    """The versions the goals hinge on, read on the node itself (sssd, adcli, realmd, OpenSSH)."""
    out = node.sh("dpkg-query -W -f='${Package} ${Version}\\n' sssd-common adcli realmd openssh-server 2>/dev/null"
                  " || true").stdout
    return "; ".join(line.strip() for line in out.splitlines() if line.strip())


PEER_RO_USER = "pcluster-ro"  # the peer's DomainReadOnlyUser: a plain domain user (read access is every user's)
PEER_CA = "/etc/sssd/pcluster-lab-dc-ca.pem"  # the peer's LdapTlsCaCert: the Samba DC's self-made CA


def setup_peer(lab: Lab, node: Node, ro_password: str) -> dict:
    """Issue 21's peer on a node that is not joined: ParallelCluster's DirectoryService mode, the sssd.conf its
    cookbook renders (bench/yardsticks.py) over ldaps with the DC's CA (ParallelCluster's default LdapTlsReqCert
    hard), the cookbook's Debian PAM step, then sssd (re)started as the recipe does. Returns the properties with
    the password masked."""
    dn = lab.dc.run(["ldbsearch", "-H", "/var/lib/samba/private/sam.ldb", f"(sAMAccountName={PEER_RO_USER})",
                     "dn"]).stdout
    bind_dn = next(line[4:].strip() for line in dn.splitlines() if line.startswith("dn: "))
    node.write(PEER_CA, lab.dc.read("/var/lib/samba/private/tls/ca.pem"))
    props = yardsticks.pcluster_domain_properties(
        domain_name=lab.cfg.domain, domain_addr=f"ldaps://dc1.{lab.cfg.domain}", read_only_user=bind_dn,
        password=ro_password, tls_req_cert="hard", tls_ca_cert=PEER_CA)
    # As the recipe writes it: root, 0600 (the read-only password is in it, as on every ParallelCluster node).
    node.write("/etc/sssd/sssd.conf", yardsticks.render_pcluster_sssd_conf(props), mode="0600")
    node.sh(yardsticks.PEER_PAM + " && systemctl restart sssd && (systemctl restart ssh || true)", timeout=120)
    if node.run_action("enable-ssh-password-auth.sh").rc != 0:  # the cookbook's sed would lose to the lab image's
        raise LabError("peer: enable-ssh-password-auth.sh failed")  # 50-cloud-init.conf; the product's action wins
    wait_lookup(node, "alice")
    return {**props, "ldap_default_authtok": "(the read-only user's password)"}


def floor_join(lab: Lab, node: Node) -> dict | None:
    """Issue 21's floor: bare `realm join` (password on stdin) + sssd start, then the first AD lookup. "total" in
    seconds from the start, as _first_lookup measures the product (host-side clock around the node command, +
    wait_lookup); the steps timed inside the node."""
    t0 = time.monotonic()
    res = node.run(yardsticks.floor_join_argv(lab.join_user, lab.cfg.domain), input=lab.join_password + "\n",
                   check=False, timeout=180)
    elapsed = time.monotonic() - t0
    if res.returncode != 0:
        return None
    realm_s, sssd_s = yardsticks.floor_steps(res.stdout)
    lookup_s = wait_lookup(node, yardsticks.floor_user("alice", lab.cfg.domain))
    return {"total": elapsed + lookup_s, "realm_join": realm_s, "sssd_start": sssd_s, "first_lookup": lookup_s}


def bench_compare(lab: Lab, users: int, reps: int, joins: int, before_ref: str, rows: list, raw: dict,
                  stack_groups: bool = False, yard_rows: list | None = None, same_access: bool = False) -> None:
    """yard_rows: a list to receive issue 21's yardstick table (the floor and the peer are measured only then)."""
    import secrets
    import subprocess

    before_script = subprocess.run(["git", "show", f"{before_ref}:bootstrap/join-domain.sh"], cwd=REPO, check=True,
                                   capture_output=True, text=True).stdout
    after_script = (BOOTSTRAP_DIR / "join-domain.sh").read_text()
    # REV's script runs with REV's node agent (its commands), not today's.
    agent_tmp = tempfile.TemporaryDirectory(prefix="pcad-bench-agent-")
    before_agent = Path(agent_tmp.name) / "bootstrap" / "node_agent"
    archive = subprocess.run(["git", "archive", before_ref, "bootstrap"], cwd=REPO, check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", agent_tmp.name], input=archive, check=True)
    if not before_agent.is_dir():
        before_agent = None  # a script from before the node agent
    # The product's access control stays on in "after": only these groups may log in.
    access = ["--allowed-groups", "hpc-users, mgrp0000"]
    before_access: list[str] = []
    goals = GOALS
    who = {"before": f"join-domain.sh and join function at {before_ref}",
           "after": WHO["product"] + " with allowedGroups"}
    if same_access:
        before_access = list(access)
        who["before"] += " with allowedGroups"
    if stack_groups:
        # Issue 18: the same allowed groups on both sides; before as sssd's simple provider with the lists (the
        # script at before_ref), after through the stack's users group (the ad provider's filter, which the DC
        # evaluates at each login: in-chain membership, account state), as DirectoryAdmin sets it up.
        before_access = list(access)
        access += ["--stack-users-group", STACK_USERS_DN, "--stack-admins-group", "pca-bench-admins"]
        goals = STACK_GROUP_GOALS
        who["after"] = WHO["product"] + " with the stack's access groups (ad provider)"
    yard = yard_rows is not None
    ro_password = "R0-" + secrets.token_urlsafe(12).replace("-", "x").replace("_", "y") + "#"
    if yard:
        lab.watch.add("peer read-only password", ro_password.encode())
    t0 = time.monotonic()
    lab.populate({
        "users": [{"name": "manyuser", "password": MANY_PW}, {"name": "outsider", "password": OUTSIDER_PW}]
        + ([{"name": PEER_RO_USER, "password": ro_password}] if yard else []),
        "bulk": {"users": users, "prefix": "buser", "big_group": {"name": "biggroup", "members": min(1000, users)},
                 "many_groups": {"user": "manyuser", "count": 200, "prefix": "mgrp"}},
    })
    rows.append((f"Directory: {users} users, manyuser in 200 groups", f"{time.monotonic() - t0:.1f} s", ""))
    if stack_groups:
        for group, members in (("pca-bench-users", ["hpc-users", "mgrp0000"]), ("pca-bench-admins", [])):
            lab.dc.run(["samba-tool", "group", "add", group])
            if members:
                lab.dc.run(["samba-tool", "group", "addmembers", group, ",".join(members)])
    before, after = lab.add_nodes([{}, {}])
    rows.append(("Node generation (both sides)", after.os, node_versions(after)))
    # On sssd >= 2.9.1 (Debian 13's 2.10) the groups are already stored valid: the emulation is then a no-op check.
    real_291 = after.os == "debian13"
    emulated = "REAL on this sssd" if real_291 else "EMULATED on 2.8.2"
    runs = {"before": _script_run(before, lab, before_script, before_access, url_path=BEFORE_PATH,
                                  agent_dir=before_agent),
            "after": _script_run(after, lab, after_script, access)}
    nodes = {"before": before, "after": after}
    for key, run in runs.items():
        res = run.wait()
        if res.rc != 0:
            raise LabError(f"{key} join failed rc={res.rc}: {res.output[-1500:]}")
        if nodes[key].run_action("enable-ssh-password-auth.sh").rc != 0:
            raise LabError(f"{key}: enable-ssh-password-auth.sh failed")
        wait_lookup(nodes[key], "alice")
    peer = None
    if yard:
        (peer,) = lab.add_nodes([{}])
        raw["peer_sssd_domain"] = setup_peer(lab, peer, ro_password)
    yres: dict = {"peer_id": [], "peer_login": [], "peer_id_out": "", "peer_id_rc": set(), "peer_login_rc": set(),
                  "floor_join": [], "floor_steps": []}

    def login(node: Node, user: str, pw: str) -> tuple[float, int]:
        t = time.monotonic()
        rc = lab.client.run(["sshpass", "-e", "ssh", *SSH_OPTS, f"{user}@{node.ip}", "true"], env={"SSHPASS": pw},
                            check=False, timeout=120).returncode
        return time.monotonic() - t, rc

    res: dict = {k: {"id": [], "initgroups": [], "id_after_initgroups": [], "id_sssd291": [], "login": [], "join": [],
                     "id_out": "", "id_rc": set(), "login_rc": set()} for k in nodes}
    for _ in range(reps):  # interleaved: the machine's noise hits both sides alike
        for key, node in nodes.items():
            cold_restart(node, "alice")
            t, rc, out = timed(node, ["id", "manyuser"])
            res[key]["id"].append(t)
            res[key]["id_rc"].add(rc)
            res[key]["id_out"] = out.strip()
        # Where a cold `id` goes: the user's groups (tokenGroups, one search per group SID), then `id`'s 201
        # getgrgid calls, each of which sssd sends back to the DC (it stores those groups already expired).
        for key, node in nodes.items():
            cold_restart(node, "alice")
            res[key]["initgroups"].append(timed(node, ["getent", "initgroups", "manyuser"])[0])
            res[key]["id_after_initgroups"].append(timed(node, ["id", "manyuser"])[0])
        # The same on sssd >= 2.9.1 (emulated, see EMULATE_SSSD_291): initgroups, then `id` from valid groups.
        for key, node in nodes.items():
            cold_restart(node, "alice")
            t_init = timed(node, ["getent", "initgroups", "manyuser"])[0]
            node.run(["/bin/bash", "-c", EMULATE_SSSD_291], timeout=120)
            t_id, _, out = timed(node, ["id", "manyuser"])
            res[key]["id_sssd291"].append(t_init + t_id)
            res[key]["id_sssd291_groups"] = sorted(out.strip().split(","))
        for key, node in nodes.items():
            node.sh("rm -rf /home/manyuser")
            cold_restart(node, "alice")
            t, rc = login(node, "manyuser", MANY_PW)
            res[key]["login"].append(t)
            res[key]["login_rc"].add(rc)
        if peer is not None:  # the same two measures on the peer, in the same round
            cold_restart(peer, "alice")
            t, rc, out = timed(peer, ["id", "manyuser"])
            yres["peer_id"].append(t)
            yres["peer_id_rc"].add(rc)
            yres["peer_id_out"] = out.strip()
            peer.sh("rm -rf /home/manyuser")
            cold_restart(peer, "alice")
            t, rc = login(peer, "manyuser", MANY_PW)
            yres["peer_login"].append(t)
            yres["peer_login_rc"].add(rc)
    for _ in range(joins):
        if yard:
            (node,) = lab.add_nodes([{}])
            f = floor_join(lab, node)
            if f is not None:
                yres["floor_join"].append(f["total"])
                yres["floor_steps"].append(f)
            lab.remove_host(node)
        for key, script in (("before", before_script), ("after", after_script)):
            (node,) = lab.add_nodes([{}])
            t = _first_lookup(node, lab, script, access if key == "after" else before_access,
                              url_path=BEFORE_PATH if key == "before" else "",
                              agent_dir=before_agent if key == "before" else None)
            if t is not None:
                res[key]["join"].append(t)
            lab.remove_host(node)
    outsider = {k: login(n, "outsider", OUTSIDER_PW)[1] for k, n in nodes.items()}
    same_id = res["before"]["id_out"] == res["after"]["id_out"]
    raw["compare"] = {k: {m: (sorted(v) if isinstance(v, set) else v) for m, v in r.items()} for k, r in res.items()}
    raw["compare"]["outsider_login_rc"] = outsider
    for measure, label in (("id", "cold `id` of a user in 200 groups"), ("login", "cold ssh login of that user"),
                           ("join", "join, script start to first AD lookup, p50")):
        b, a = statistics.median(res["before"][measure] or [float("nan")]), \
            statistics.median(res["after"][measure] or [float("nan")])
        n = len(res["after"][measure])
        rows.append((f"{label} [{who['before']}]", f"{b * 1000:.0f} ms", f"median of {len(res['before'][measure])}"))
        rows.append((f"{label} [{who['after']}]", f"{a * 1000:.0f} ms", f"median of {n}"))
        ratio = a / b if b else float("nan")
        verdict = "meets" if ratio <= goals[measure] else "misses"
        rows.append((f"{label}: after / before", f"{ratio:.0%}", f"goal <= {goals[measure]:.0%}: {verdict}"))
    for measure, label in (("initgroups", "cold `getent initgroups` of that user (its 200 groups)"),
                           ("id_after_initgroups", "`id` of that user right after it (201 getgrgid)")):
        b, a = (statistics.median(res[k][measure]) for k in ("before", "after"))
        rows.append((f"{label}, before / after", f"{b * 1000:.0f} / {a * 1000:.0f} ms",
                     f"median of {len(res['after'][measure])}; no goal, says where cold `id` goes"))
    b, a = (statistics.median(res[k]["id_sssd291"]) for k in ("before", "after"))
    same_groups = res["before"]["id_sssd291_groups"] == res["after"]["id_sssd291_groups"] == sorted(
        res["after"]["id_out"].split(","))
    rows.append((f"cold `id` of that user with sssd >= 2.9.1's cache ({emulated}: initgroups + `id`), "
                 "before / after", f"{b * 1000:.0f} / {a * 1000:.0f} ms = {a / b:.0%}",
                 f"median of {len(res['after']['id_sssd291'])}; same groups as the real cold `id`: "
                 f"{'yes' if same_groups else 'NO'}; "
                 + ("this sssd stores them valid itself: the emulation changes nothing here" if real_291 else
                    "a projection for AL2023/RHEL, not the goal's measure")))
    rows.append(("`id manyuser` output identical before / after", "yes" if same_id else "NO",
                 f"{res['after']['id_out'].count(',') + 1} groups; rc {sorted(res['after']['id_rc'])}"))
    rows.append(("ssh login of a user in no allowed group (exit code) before / after",
                 f"{outsider['before']} / {outsider['after']}", "0 = logged in, 255 = refused at the account phase"))
    if yard:
        yard_rows.extend(yardstick_rows(res["after"], yres, joins, reps))
        raw["yardsticks"] = {k: (sorted(v) if isinstance(v, set) else v) for k, v in yres.items()}
        lab.remove_host(peer)
    for node in nodes.values():
        lab.remove_host(node)


def yardstick_rows(after: dict, y: dict, joins: int, reps: int) -> list[tuple]:
    """Issue 21's table: the product ("after") against the floor (joins) and the peer (cold id, cold login)."""
    def med(v: list[float]) -> float:
        return statistics.median(v) if v else float("nan")

    g = yardsticks.GOALS
    rows = [
        yardsticks.yardstick_row(f"join p50, start to first AD lookup (product {len(after['join'])}/{joins} ok, "
                                 f"floor {len(y['floor_join'])}/{joins} ok)",
                                 pct(after["join"], 0.5), pct(y["floor_join"], 0.5), g["join"], "floor"),
        yardsticks.yardstick_row("join p95, start to first AD lookup", pct(after["join"], 0.95),
                                 pct(y["floor_join"], 0.95), None, "floor"),
        ("the floor's steps (medians): realm join / sssd start / first lookup", "-",
         " / ".join(f"{med([f[k] for f in y.get('floor_steps', [])]) * 1000:.0f}"
                    for k in ("realm_join", "sssd_start", "first_lookup")) + " ms", "-", "-", "no goal"),
        yardsticks.yardstick_row(f"cold `id` of the 200-group user (median of {reps}; peer rc "
                                 f"{sorted(y['peer_id_rc'])}, {y['peer_id_out'].count(',') + 1} groups, "
                                 f"{yardsticks.same_id(y['peer_id_out'], after['id_out'])})",
                                 med(after["id"]), med(y["peer_id"]), g["id"], "peer"),
        yardsticks.yardstick_row(f"cold ssh login of that user (median of {reps}; peer rc "
                                 f"{sorted(y['peer_login_rc'])})",
                                 med(after["login"]), med(y["peer_login"]), g["login"], "peer"),
    ]
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sequential", type=int, default=10)
    ap.add_argument("--burst", type=int, default=20)
    ap.add_argument("--users", type=int, default=10000)
    ap.add_argument("--reps", type=int, default=3, help="repetitions of each lookup/login figure (median shown)")
    ap.add_argument(
        "--join-with",
        choices=("product", "reference"),
        default="product",
        help="join nodes with the product's join-domain.sh (default) or the harness' reference join "
        "(AD-side capacity figures only; labelled as such)",
    )
    ap.add_argument("--compare-with", metavar="GIT_REV",
                    help="instead of the tuning variants: the join chain at GIT_REV (its join-domain.sh and its join"
                    " function, served beside today's) against the current one,"
                    " side by side (cold id, cold ssh login, join p50); --sequential joins of each")
    ap.add_argument("--stack-groups", action="store_true",
                    help="with --compare-with: both sides restrict logins to the same groups; the current script"
                    " through the stack's access groups (issue 18), goal within 10%%")
    ap.add_argument("--same-access", action="store_true",
                    help="with --compare-with: both sides run with the same --allowed-groups (a like-for-like"
                    " comparison of the two scripts, e.g. issue 21's 'as fast or faster' after a move into the agent)")
    ap.add_argument("--yardsticks", action=argparse.BooleanOptionalAction, default=None,
                    help="with --compare-with (on by default there): issue 21's yardsticks in the same run, the floor"
                    " of a join (bare realm join + sssd start, --sequential joins) and the peer (ParallelCluster's"
                    " DirectoryService sssd.conf: cold id and cold ssh login, --reps), with product / yardstick"
                    " ratios and goals; --no-yardsticks to skip them")
    ap.add_argument("--node-os", choices=NODE_OS, default=None,
                    help="generation of the lab's node hosts (default: ADLAB_NODE_OS, else the machine's)")
    ap.add_argument("--results", type=Path, help="also write the table (and raw JSON) to this markdown file")
    args = ap.parse_args(argv)
    if args.yardsticks and not args.compare_with:
        ap.error("--yardsticks needs --compare-with GIT_REV: the yardsticks are measured beside its product figures")
    # On by default with --compare-with: no side-by-side figure goes out without its distance to the best.
    yard = args.compare_with is not None and args.yardsticks is not False
    missing = missing_deps()
    if missing:
        print("AD lab dependencies missing; run tools/install_adlab_deps.sh: " + ", ".join(missing), file=sys.stderr)
        return 2
    rows: list[tuple[str, str, str]] = []
    yard_rows: list[tuple] = []
    raw: dict = {}
    t0 = time.monotonic()
    node_os = args.node_os or default_node_os()
    tmp = tempfile.TemporaryDirectory(prefix="pcad-bench-handler-")
    handlers = before_handler(args.compare_with, Path(tmp.name)) if args.compare_with else {}
    with tmp, Lab(LabConfig(node_os=node_os, path_handlers=handlers)) as lab:
        lab.start()
        lab.populate(
            {
                "users": [{"name": "alice", "password": "Al1ce-Pw-2026!x"}],
                "groups": [{"name": "hpc-users", "members": ["alice"]}],
            }
        )
        lab.add_client()
        rows.append(
            (
                "Lab bring-up (DC provision + start + services)",
                f"{sum(lab.timings.values()):.1f} s",
                json.dumps(lab.timings),
            )
        )
        if args.compare_with:
            bench_compare(lab, args.users, args.reps, args.sequential, args.compare_with, rows, raw,
                          stack_groups=args.stack_groups, yard_rows=yard_rows if yard else None,
                          same_access=args.same_access)
        else:
            if args.sequential:
                bench_sequential(lab, args.sequential, rows, raw, args.join_with)
            if args.burst:
                bench_burst(lab, args.burst, rows, raw, args.join_with)
            if args.users:
                bench_large(lab, args.users, rows, raw, args.reps)
        left = lab.teardown()
    rows.append(("Whole benchmark wall time", f"{time.monotonic() - t0:.0f} s", f"teardown left: {left or 'nothing'}"))
    table = ["| measure | value | notes |", "| --- | --- | --- |"] + [f"| {a} | {b} | {c} |" for a, b, c in rows]
    text = "\n".join(table)
    if yard:
        text += ("\n\nYardsticks (issue 21): the product = the after side above; the floor = bare `realm join` +"
                 " sssd start; the peer = ParallelCluster's DirectoryService sssd.conf (cookbook "
                 f"{yardsticks.PCLUSTER_COOKBOOK['commit'][:12]}), node not joined\n\n"
                 + yardsticks.markdown_table(yardsticks.YARD_HEADER, yard_rows))
    print(text)
    if args.results:
        args.results.write_text(
            "# AD lab benchmark results\n\n"
            "`venv/bin/python -m bench.adlab_bench"
            f" --sequential {args.sequential} --burst {args.burst} --users {args.users} --reps {args.reps}"
            f" --join-with {args.join_with}"
            + (f" --node-os {args.node_os}" if args.node_os else "")
            + (f" --compare-with {args.compare_with}" if args.compare_with else "")
            + (" --stack-groups" if args.stack_groups else "")
            + (" --same-access" if args.same_access else "")
            + (" --no-yardsticks" if args.compare_with and not yard else "")
            + f"` (node scripts: {WHO['product']})"
            " on the project machine (2 cores, Debian 12, Samba 4.17, sssd 2.8).\n\n"
            + text
            + ("" if args.compare_with else "\n\nTuning variants (cumulative, in the [domain/...] section):\n\n"
               + "\n".join(f"- {label}: " + ", ".join(f"`{k} = {v}`" for k, v in o.items())
                           for label, o in VARIANTS[1:]))
            + "\n\n<details><summary>raw</summary>\n\n```json\n"
            + json.dumps(raw, indent=1, default=str)
            + "\n```\n</details>\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
