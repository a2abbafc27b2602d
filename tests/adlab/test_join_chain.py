"""The whole join chain against a real Samba AD DC, with the product's real pieces:

node (IMDSv2, curl --aws-sigv4) -> function URL (SigV4 verified) -> join_handler.handle (moto)
-> join-domain.sh (realm/adcli/sssd) -> enable-ssh-password-auth.sh -> ssh as an AD user.

The scenario nodes all boot at once (fixture ``chain``); tests then look at each outcome.
Tests run in file order; the slow failure cases come last so their waits overlap the rest.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from .conftest import JOIN_TIMEOUT, REFUSED_TIMEOUT, SLACK, UNREACHABLE_TIMEOUT, USERS, describe
from .lab import REPO, SSH_OPTS, computer_prefix

pytestmark = pytest.mark.adlab



def ssh(lab, node, user: str, password: str, command: str = "id; pwd; klist") -> subprocess.CompletedProcess:
    """ssh from the client namespace; the password reaches sshpass through its environment."""
    return lab.client.run(
        ["sshpass", "-e", "ssh", *SSH_OPTS, f"{user}@{node.ip}", command],
        check=False,
        env={"SSHPASS": password},
        timeout=60,
    )


def joined(node, domain: str) -> bool:
    """`realm list` from a freshly started realmd (a realmd that was already running can show a
    stale view, see the lab notes), plus the machine account's keys in the keytab."""
    node.run(["pkill", "-x", "realmd"], check=False)
    listed = domain in node.run(["realm", "list", "--name-only"], check=False).stdout.split()
    keytab = node.run(["klist", "-k", "/etc/krb5.keytab"], check=False).stdout
    return listed and f"$@{domain.upper()}" in keytab


def computer_name(lab, node) -> str:
    """The node's computer account as the join function derives it from the instance id."""
    from pcluster_ad.lambda_src.join_handler import computer_name as derive

    return derive(computer_prefix(lab.cfg.cluster_name), node.instance_id)


def dc_ldb(lab, *args: str) -> subprocess.CompletedProcess:
    """ldbsearch on the DC's own database (the harness's view of the directory)."""
    return lab.dc.run(["ldbsearch", "-H", "/var/lib/samba/private/sam.ldb", *args], check=False, timeout=60)


def sssd_running(node) -> bool:
    return node.run(["pgrep", "-x", "sssd"], check=False).returncode == 0


# --- nodes of the cluster join -----------------------------------------------------------


def test_cluster_nodes_join(chain):
    lab = chain.lab
    for node in chain.good:
        res = chain.result(node)
        assert res.rc == 0, f"{node.key}: join-domain.sh failed\n{describe(res)}"
        assert res.elapsed < JOIN_TIMEOUT
        assert joined(node, lab.cfg.domain), node.run(["realm", "list"], check=False).stdout
        assert sssd_running(node)
        log = node.read("/var/log/pcluster-ad/join-domain.log")
        assert re.search(r"finished.*node joined", log), log[-2000:]


def test_function_url_saw_signed_calls_from_each_node(chain):
    reqs = chain.lab.requests()
    for node in chain.good:
        mine = [r for r in reqs if r["source_ip"] == node.ip]
        assert mine, f"no function URL call from {node.key}"
        # One credential request, then the close request after the verified join; both answered 200.
        assert [(r["kind"], r["status"]) for r in mine] == [("credentials", 200), ("close", 200)], mine
        # The identity the handler saw is the one the node's instance-role credentials carry.
        assert all(r["signer_instance"] == node.instance_id for r in mine)
        # The function created the object under the name derived from the instance id (never one the node
        # chose), and the record keeps no TTL: it holds while the instance lives.
        window = chain.lab.svc_call("window", instance_id=node.instance_id)["window"]
        assert window.get("closedAt") and window.get("issuedAt"), window
        assert window.get("computerName") == computer_name(chain.lab, node), window
        assert "expiresAt" not in window, window
        assert window.get("answers") == "1", window


def test_ad_users_resolve_by_short_name(chain):
    for node in chain.good:
        pw = node.run(["getent", "passwd", "alice"], check=False)
        assert pw.returncode == 0, pw.stderr
        fields = pw.stdout.strip().split(":")
        assert fields[0] == "alice" and fields[5] == "/home/alice", pw.stdout
        ident = node.run(["id", "alice"], check=False).stdout
        assert "hpc-users" in ident and "lab-admins" in ident, ident
        assert "lab-admins" not in node.run(["id", "bob"], check=False).stdout
        # The group resolves; its member list stays empty by design (the join script sets
        # ignore_group_members: membership comes per user, as `id` above shows).
        grp = node.run(["getent", "group", "hpc-users"], check=False)
        assert grp.returncode == 0 and grp.stdout.startswith("hpc-users:"), grp.stdout
        assert "hpc-users" in node.run(["id", "bob"], check=False).stdout
        assert node.run(["getent", "passwd", "nosuchuser"], check=False).returncode != 0


def test_enable_ssh_password_auth(chain):
    for node in chain.good:
        before = node.run(["sshd", "-T"], check=False).stdout
        assert "passwordauthentication no" in before  # the image's cloud-init default
        res = node.run_action("enable-ssh-password-auth.sh")
        assert res.rc == 0, describe(res)
        after = node.run(["sshd", "-T"], check=False).stdout
        assert "passwordauthentication yes" in after
        chain.ssh_enabled[node.key] = True


def test_ssh_login_as_ad_user_creates_home(chain):
    lab = chain.lab
    node = chain.good[0]
    assert chain.ssh_enabled.get(node.key), "enable-ssh-password-auth.sh did not run"
    assert node.run(["test", "-e", "/home/alice"], check=False).returncode != 0
    res = ssh(lab, node, "alice", USERS["alice"])
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].startswith("uid=") and "(alice)" in lines[0] and "hpc-users" in lines[0], res.stdout
    assert lines[1] == "/home/alice"
    assert "krbtgt/TEST.DOMAIN@TEST.DOMAIN" in res.stdout  # sssd got a Kerberos TGT at login
    owner = node.run(["stat", "-c", "%U", "/home/alice"]).stdout.strip()
    assert owner == "alice"
    # The second node takes the other user.
    res = ssh(lab, chain.good[1], "bob", USERS["bob"], "pwd")
    assert res.returncode == 0 and res.stdout.strip() == "/home/bob", res.stdout + res.stderr


def test_ssh_wrong_password_and_unknown_user_refused(chain):
    lab = chain.lab
    node = chain.good[0]
    # sshpass exit 5: the server refused the password (not a connection or host-key problem)
    bad = ssh(lab, node, "alice", "not-" + USERS["alice"], "true")
    assert bad.returncode == 5, bad
    unknown = ssh(lab, node, "nosuchuser", USERS["alice"], "true")
    assert unknown.returncode == 5, unknown
    assert ssh(lab, node, "alice", USERS["alice"], "true").returncode == 0  # and the right one works


def test_rerun_on_joined_node_is_harmless(chain):
    """A re-run (what a reboot does) of a joined node: no request to the function URL at all."""
    lab = chain.lab
    node = chain.good[0]
    before = [r for r in lab.requests() if r["source_ip"] == node.ip]
    res = node.start_bootstrap(timeout_arg=120).wait()
    assert res.rc == 0, describe(res)
    assert "no request to the join function" in res.output, describe(res)
    assert [r for r in lab.requests() if r["source_ip"] == node.ip] == before
    assert joined(node, lab.cfg.domain) and sssd_running(node)
    assert node.run(["getent", "passwd", "alice"], check=False).returncode == 0
    again = node.run_action("enable-ssh-password-auth.sh")
    assert again.rc == 0 and "no file changed" in again.output, describe(again)
    assert ssh(lab, node, "alice", USERS["alice"], "true").returncode == 0


# --- the attack of issue 8: a local process on a joined node asks for the join password ---------

# Run on a node as the given user: read the node role's credentials from IMDS (as any process can
# on EC2), make the request exactly as join-domain.sh does (its own node agent, the zipapp baked into the script on
# the node: sigv4.signed_post signs the request and the caller proof, httpc.request sends it), print the
# HTTP status. The attacker is as capable as the product. Never prints the answer's body.
ATTACK = r"""set -euo pipefail
ep=$1 url=$2 region=$3 body=$4 script=$5 SEND=$6
t=$(curl -sf -X PUT -H "X-aws-ec2-metadata-token-ttl-seconds: 60" "$ep/latest/api/token")
role=$(curl -sf -H "X-aws-ec2-metadata-token: $t" "$ep/latest/meta-data/iam/security-credentials/")
creds=$(curl -sf -H "X-aws-ec2-metadata-token: $t" "$ep/latest/meta-data/iam/security-credentials/$role")
echo "imds: credentials for $(jq -r .AccessKeyId <<<"$creds")"
agent=$(mktemp -d)
sed -n "s/^NODE_AGENT_ZIP='\(.*\)'\$/\1/p" "$script" | base64 -d >"$agent/node-agent.pyz"
printf '%s' "$creds" | python3 -I -c "$SEND" "$agent/node-agent.pyz" "$url" "$region" "$body"
"""
# The product's own signing and HTTP (bootstrap/node_agent/sigv4.py, httpc.py), credentials on stdin.
SEND = """import json, sys
sys.path.insert(0, sys.argv[1])
from node_agent import httpc, sigv4
creds = sigv4.credentials(sys.stdin.read())
headers, data = sigv4.signed_post(sys.argv[2], sys.argv[3], json.loads(sys.argv[4]), creds)
print("status", httpc.request("POST", sys.argv[2], headers, data, 20.0)[0])
"""


def attack(lab, node, user: str, body: str = "{}") -> subprocess.CompletedProcess:
    prefix = [] if user == "root" else ["setpriv", "--reuid", user, "--regid", user, "--clear-groups"]
    script = node.install_action("join-domain.sh")
    return node.run(
        [*prefix, "/bin/bash", "-c", ATTACK, "attack", lab.imds_endpoint, lab.function_url, lab.cfg.region, body,
         script, SEND],
        check=False,
        env={"HOME": "/tmp"},
        timeout=60,
    )


def _last_request(lab, node) -> dict:
    return [r for r in lab.requests() if r["source_ip"] == node.ip][-1]


def test_unprivileged_user_on_a_joined_node_gets_403(chain):
    """IMDS hands the node role's credentials to any local process (as EC2 does); the signature is
    valid, yet the function refuses: the node's join window closed after its join."""
    lab = chain.lab
    node = chain.good[1]
    res = attack(lab, node, "65534")  # nobody
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"imds: credentials for {node.node_info['access_key']}" in res.stdout  # IMDS served nobody
    assert "status 403" in res.stdout, res.stdout
    last = _last_request(lab, node)
    # Refused by the handler (a valid signature of the node's role), not by the signature check.
    assert last["status"] == 403 and last["signer_instance"] == node.instance_id and "error" not in last, last
    assert last["body"] == '{"error": "forbidden"}' or "forbidden" in last["body"], last
    # A refused request for a closed window is a WARNING naming the instance (someone on it tried).
    warnings = [ln for ln in lab.handler_log().splitlines() if " WARNING " in ln and node.instance_id in ln]
    assert warnings, lab.handler_log()[-2000:]
    # A second close (someone replaying the node's close) is refused too.
    again = attack(lab, node, "65534", json.dumps({"joined": True, "computerName": computer_name(lab, node)}))
    assert "status 403" in again.stdout, again.stdout


def test_root_after_the_window_closed_gets_403(chain):
    lab = chain.lab
    node = chain.good[1]
    res = attack(lab, node, "root")
    assert res.returncode == 0 and "status 403" in res.stdout, res.stdout + res.stderr
    assert _last_request(lab, node)["status"] == 403


def test_restrict_imds_leaves_imds_to_root_only(chain):
    """--restrict-imds on a fresh node: locked down before the join (no domain user can log in while IMDS is
    open), the join and close still work as root; afterwards root still reads IMDS, an unprivileged user cannot
    even reach it; the node's own iptables rules decide (the stand-in answers every process alike)."""
    lab = chain.lab
    (node,) = lab.add_nodes([{}])
    argv = ["--function-url", lab.function_url, "--region", lab.cfg.region, "--timeout", str(JOIN_TIMEOUT),
            "--restrict-imds"]
    res = node.start_bootstrap(args=argv, timeout_arg=JOIN_TIMEOUT).wait()
    assert res.rc == 0, describe(res)
    assert "join window closed" in res.output and "only root can reach IMDS now" in res.output, describe(res)
    assert res.output.index("only root can reach IMDS now") < res.output.index("joined "), describe(res)
    rules = node.run(["iptables", "-S"]).stdout
    port = str(lab.cfg.imds_port)
    assert f"-A PARALLELCLUSTER_IMDS -d {lab.services_ip}/32 -p tcp -m tcp --dport {port} -m owner --uid-owner 0" \
        " -j ACCEPT" in rules, rules
    nobody = attack(lab, node, "65534")
    assert nobody.returncode != 0 and "imds: credentials" not in nobody.stdout, nobody.stdout + nobody.stderr
    root = attack(lab, node, "root")
    assert f"imds: credentials for {node.node_info['access_key']}" in root.stdout, root.stdout + root.stderr
    assert "status 403" in root.stdout  # and the window is closed
    # Re-run (a reboot): no request, rules unchanged.
    before = [r for r in lab.requests() if r["source_ip"] == node.ip]
    again = node.start_bootstrap(args=argv, timeout_arg=JOIN_TIMEOUT).wait()
    assert again.rc == 0, describe(again)
    assert [r for r in lab.requests() if r["source_ip"] == node.ip] == before
    assert node.run(["iptables", "-S"]).stdout == rules


# --- nodes that must not get the secret ------------------------------------------------------


def _refused(chain, node, limit):
    res = chain.result(node)
    assert res.rc not in (0, None), f"{node.key} should have been refused\n{describe(res)}"
    assert res.elapsed <= limit + SLACK, describe(res)
    assert not joined(node, chain.lab.cfg.domain)
    mine = [r for r in chain.lab.requests() if r["source_ip"] == node.ip]
    assert mine and all(r["status"] == 403 for r in mine), mine
    return res


def test_untagged_node_is_refused(chain):
    res = _refused(chain, chain.untagged, REFUSED_TIMEOUT)
    print(f"untagged: rc={res.rc} after {res.elapsed:.1f}s: {[ln for ln in res.output.splitlines() if 'ERROR' in ln]}")
    assert re.search(r"403|refused|forbidden", res.output, re.I), describe(res)


def test_impostor_session_is_refused(chain):
    """A role that names its session after a real node's instance id does not get the secret."""
    res = _refused(chain, chain.impostor, REFUSED_TIMEOUT)
    assert chain.impostor.node_info["session"] == chain.good[0].instance_id
    assert re.search(r"403|refused|forbidden", res.output, re.I), describe(res)


def test_bad_signature_is_rejected_by_the_endpoint(chain):
    """The lab endpoint is no rubber stamp: a request signed with a wrong secret gets 403."""
    lab = chain.lab
    info = chain.good[0].node_info
    wrong = "wrong" + info["secret_key"][5:]
    cfg = f'user = "{info["access_key"]}:{wrong}"\nheader = "x-amz-security-token: {info["token"]}"\n'
    before = len(lab.requests())
    out = lab.client.run(
        [
            "curl",
            "-sS",
            "-K",
            "-",
            "--aws-sigv4",
            f"aws:amz:{lab.cfg.region}:lambda",
            "-X",
            "POST",
            "-w",
            "\n%{http_code}",
            lab.function_url,
        ],
        input=cfg,
        check=False,
    )
    assert out.stdout.strip().splitlines()[-1] == "403", out.stdout + out.stderr
    new = lab.requests()[before:]
    assert new and new[-1]["status"] == 403 and new[-1]["error"].startswith("sigv4:"), new


def test_fake_imds_requires_a_token_and_answers_per_node(chain):
    lab = chain.lab
    node = chain.good[1]
    ep = lab.imds_endpoint
    no_token = node.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"{ep}/latest/meta-data/instance-id"])
    assert no_token.stdout == "401"
    script = (
        f'T=$(curl -sf -X PUT -H "X-aws-ec2-metadata-token-ttl-seconds: 60" {ep}/latest/api/token) && '
        f'curl -sf -H "X-aws-ec2-metadata-token: $T" {ep}/latest/meta-data/instance-id'
    )
    assert node.sh(script).stdout == node.instance_id
    # a host that is no node of the emulated EC2 gets nothing
    assert (
        lab.client.run(
            [
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-X",
                "PUT",
                "-H",
                "X-aws-ec2-metadata-token-ttl-seconds: 60",
                f"{ep}/latest/api/token",
            ]
        ).stdout
        == "403"
    )


# --- no secret leaks ---------------------------------------------------------------------------


def test_no_directory_password_on_any_node_disk(chain):
    """Neither the adding account's password (the function's only) nor any one-time password (used once by
    adcli, on its stdin) is on any node's disk or in the function's log."""
    lab = chain.lab
    for node in [*chain.good, chain.untagged, chain.impostor, *chain.outsiders, chain.unreachable]:
        chain.result(node)  # every join (and refusal) of the scenario has finished
    scanned = list(lab.nodes)
    one_time = lab.svc_call("one_time_passwords")["passwords"]
    # One per node the function answered, none for the refused ones.
    answered = [r["source_ip"] for r in lab.requests() if r.get("kind") == "credentials" and r["status"] == 200]
    assert len(one_time) == len(answered) == len(set(answered)), (one_time, answered)
    assert {n.ip for n in chain.good} <= set(answered)
    assert not {n.ip for n in (chain.untagged, chain.impostor, *chain.outsiders)} & set(answered)
    secrets = [lab.add_password, lab.join_password, *one_time]
    hits = []
    for node in scanned:
        for upper in node.upper_dirs():
            for path in upper.rglob("*"):
                if path.is_file() and not path.is_symlink():
                    try:
                        data = path.read_bytes()
                    except OSError:
                        continue
                    hits += [str(path) for secret in secrets if secret.encode() in data]
        # tmpfs /run and /tmp inside the node (patterns on stdin: never in an argv)
        res = node.run(
            ["grep", "-rlsF", "-D", "skip", "-f", "-", "/run", "/tmp"], input="\n".join(secrets) + "\n", check=False
        )
        hits += [f"{node.key}:{p}" for p in res.stdout.split()]
    assert not hits, f"a directory password found in: {hits}"
    assert not any(secret in lab.handler_log() for secret in secrets)


def test_no_secret_in_any_process_argv(chain):
    lab = chain.lab
    assert lab.watch.samples > 20
    assert not lab.watch.hits, lab.watch.hits[:10]


def test_no_default_route_in_any_lab_namespace(chain):
    for ns in chain.lab.netns:
        out = subprocess.run(["ip", "-n", ns, "route", "show", "default"], capture_output=True, text=True).stdout
        assert not out.strip(), f"{ns} has a default route: {out}"


# --- last: the slowest case ---------------------------------------------------------------------


def test_dc_unreachable_fails_within_its_limit(chain):
    res = chain.result(chain.unreachable)
    assert res.rc not in (0, None), describe(res)
    assert res.elapsed <= UNREACHABLE_TIMEOUT + SLACK, describe(res)
    errors = [line for line in res.output.splitlines() if "ERROR" in line]
    lines = res.output.splitlines()
    print(
        f"unreachable DC: rc={res.rc} after {res.elapsed:.1f}s (limit {UNREACHABLE_TIMEOUT}s):", *lines[-12:], sep="\n"
    )
    assert errors, describe(res)
    assert chain.lab.cfg.domain in errors[-1] or "realm" in errors[-1], errors
    assert not joined(chain.unreachable, chain.lab.cfg.domain)


# --- README "Your first AD user", Simple AD path, as written ------------------------------------

# Stand-in for `aws ds reset-user-password` (AWS: sets the password and enables a disabled user).
_RESET_USER_PASSWORD = """
import json, sys
from samba.auth import system_session
from samba.param import LoadParm
from samba.samdb import SamDB
req = json.load(sys.stdin)
lp = LoadParm(); lp.load_default()
db = SamDB(url=lp.samdb_url(), session_info=system_session(), lp=lp)
flt = "(sAMAccountName=%s)" % req["UserName"]
db.setpassword(flt, req["NewPassword"], force_change_at_next_login=False)
db.enable_account(flt)
"""


def test_readme_first_user_commands_work_as_written(chain):
    """The README's Simple AD commands, run as root on a joined node with the admin password on
    stdin, create a user and a group the node then resolves; after the reset-user-password
    stand-in the user logs in by ssh and is in the group."""
    lab, node = chain.lab, chain.good[0]
    assert chain.ssh_enabled.get(node.key), "enable-ssh-password-auth.sh did not run"
    readme = (REPO / "README.md").read_text()
    section = readme.split("### Your first AD user", 1)[1]
    block = next(b for b in section.split("```bash\n")[1:] if "adcli create-user" in b).split("```", 1)[0]
    # From the password prompt on (the ssh/sudo lines are how you get there); another name than
    # the lab's existing users.
    script = block[block.index("read -rsp"):].replace("alice", "carol").replace("hpc-users", "first-users")
    script = script.replace("DOMAIN=test.domain", f"DOMAIN={lab.cfg.domain}")
    res = node.run(["bash", "-euo", "pipefail", "-c", script], input=lab.admin_password + "\n", check=False,
                   timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert lab.admin_password not in res.stdout + res.stderr
    lab.dc.run(["/usr/bin/python3", "-c", _RESET_USER_PASSWORD], timeout=60,
               input=json.dumps({"UserName": "carol", "NewPassword": "C4rol-First-2026!"}))
    node.run(["sss_cache", "-E"], check=False)
    login = ssh(lab, node, "carol", "C4rol-First-2026!", "id -nG; pwd")
    assert login.returncode == 0, login.stdout + login.stderr
    groups, home = login.stdout.splitlines()[-2:]
    assert "first-users" in groups.split() and home == "/home/carol", login.stdout


# --- issue 16: a node holds a credential for its own computer object and nothing else -------------


def test_instances_outside_the_cluster_templates_get_nothing(chain):
    """Started with the cluster's instance profile and tag, but by hand or from a launch template that is not
    one of the cluster stack's: the function refuses, and no computer object exists for them."""
    lab = chain.lab
    for node in chain.outsiders:
        res = chain.result(node)
        assert res.rc == 6, describe(res)
        statuses = [r["status"] for r in lab.requests() if r["source_ip"] == node.ip]
        assert statuses and set(statuses) == {403}, statuses
        found = dc_ldb(lab, f"(sAMAccountName={computer_name(lab, node)}$)", "dn")
        assert "dn: " not in found.stdout, found.stdout
    log = lab.handler_log()
    assert "was not launched from a launch template" in log
    assert "is not one of cluster" in log


def test_one_time_password_is_dead_after_the_join(chain):
    """adcli replaced the one-time password at once: it no longer authenticates the computer account."""
    lab = chain.lab
    node = chain.good[0]
    assert chain.result(node).rc == 0
    name = computer_name(lab, node)
    one_time = lab.svc_call("one_time_passwords")["passwords"]
    for password in one_time:
        res = node.run(["kinit", f"{name}$@{lab.cfg.realm}"], input=password + "\n", check=False,
                       env={"KRB5CCNAME": "MEMORY:"}, timeout=60)
        assert res.returncode != 0, "a one-time password still authenticates " + name
    # The node's own machine password (in its keytab) does.
    ok = node.run(["kinit", "-k", f"{name}$@{lab.cfg.realm}"], check=False, env={"KRB5CCNAME": "MEMORY:"})
    assert ok.returncode == 0, ok.stderr


# Root on one node, with that node's machine credentials (its keytab), against ANOTHER node's computer object and
# against the OU: each change must be refused by the directory. OpenLDAP's ldapmodify/ldapdelete with SASL GSSAPI
# (sealed), a client every node generation has (Debian 13's ldb-tools lacks Samba's --use-kerberos); they exit with
# the LDAP result code: 50 insufficientAccessRights, 19 constraintViolation. Anything else (a failed bind: 49, the
# server unreachable: 255) is an ERROR, never a refusal.
MACHINE_ATTACK = r"""set -u
kinit -k -c /tmp/attack.cc "$1" || exit 90
export KRB5CCNAME=/tmp/attack.cc
# By the DC's name (Kerberos needs it; -N: no reverse lookup of it).
verdict() { case $2 in 0) echo "ALLOWED $1";; 50|19) echo "refused $1";; *) echo "ERROR $1: rc $2: $3";; esac; }
try() { local out rc; out=$(printf '%s\n' "$2" | ldapmodify -Q -N -Y GSSAPI -H "ldap://$DC" 2>&1); rc=$?
        verdict "$1" "$rc" "$out"; }
try spn "dn: $2
changetype: modify
add: servicePrincipalName
servicePrincipalName: host/evil.$3"
try description "dn: $2
changetype: modify
replace: description
description: owned"
try rbcd "dn: $2
changetype: modify
replace: msDS-AllowedToActOnBehalfOfOtherIdentity
msDS-AllowedToActOnBehalfOfOtherIdentity:: AQAEgBQAAAAAAAAAAAAAACQAAAABAgAAAAAABSAAAAAgAgAAAgAkAAEAAAAAA
 AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==
"
try password "dn: $2
changetype: modify
replace: unicodePwd
unicodePwd:: IgBPAHQAaABlAHIALQBQAHcALQAxADIAMwA0ADUANgAhACIA"
try create "dn: CN=EVIL01,$4
changetype: add
objectClass: computer
sAMAccountName: EVIL01$"
out=$(ldapdelete -Q -N -Y GSSAPI -H "ldap://$DC" "$2" 2>&1); verdict delete $? "$out"
# The control: the same bind reads the attacker's own object (Samba refuses anonymous searches and has no WhoAmI),
# so the refusals above were given to an authenticated computer account, not to a failed or anonymous bind.
ldapsearch -LLL -Q -N -Y GSSAPI -H "ldap://$DC" -b "$4" -s one "(sAMAccountName=${1%@*})" dn 2>&1 | sed 's/^/seen /'
rm -f /tmp/attack.cc
"""


def test_root_on_a_node_cannot_touch_another_computer_object(chain):
    lab = chain.lab
    attacker, victim = chain.good[1], chain.good[0]
    for node in (attacker, victim):
        assert chain.result(node).rc == 0
    victim_dn = f"CN={computer_name(lab, victim)},{lab.computer_ou}"
    before = dc_ldb(lab, "-b", victim_dn, "-s", "base", "servicePrincipalName", "description", "pwdLastSet").stdout
    res = attacker.run(["/bin/bash", "-c", MACHINE_ATTACK, "attack", f"{computer_name(lab, attacker)}$@{lab.cfg.realm}",
                        victim_dn, lab.cfg.domain, lab.computer_ou],
                       env={"DC": f"dc1.{lab.cfg.domain}"}, check=False, timeout=120)
    assert res.returncode != 90, "kinit with the node's keytab failed: " + res.stderr
    lines = res.stdout.split("\n")
    for what in ("spn", "description", "rbcd", "password", "create", "delete"):
        assert f"refused {what}" in lines, res.stdout + res.stderr
    own = f"seen dn: CN={computer_name(lab, attacker)},{lab.computer_ou}"
    assert own.lower() in [x.lower() for x in lines], res.stdout
    assert dc_ldb(lab, "-b", victim_dn, "-s", "base", "servicePrincipalName", "description",
                  "pwdLastSet").stdout == before


ADDING_ACCOUNT_ATTACK = r"""
import asyncio, json, sys
sys.path.insert(0, sys.argv[1])
import computer_account as ca
cfg = json.loads(sys.stdin.read())
async def main():
    d = ca.Directory([cfg["dc"]], cfg["domain"], cfg["ou"], cfg["user"], cfg["password"])
    conn = await ca._connect(d)
    out = {}
    dn = cfg["victim"]
    for what, change in (("description", {"description": [("replace", "owned")]}),
                         ("password", {"unicodePwd": [("replace", '"Other-Pw-123456!"')]}),
                         ("spn", {"servicePrincipalName": [("add", ["host/evil." + cfg["domain"]])]})):
        ok, err = await conn.modify(dn, change)
        out[what] = "ALLOWED" if ok else getattr(err, "resultname", type(err).__name__)
    ok, err = await conn.delete(dn)
    out["delete"] = "ALLOWED" if ok else getattr(err, "resultname", type(err).__name__)
    await conn.disconnect()
    print(json.dumps(out))
asyncio.run(main())
"""


def test_adding_account_keeps_no_right_on_the_objects_it_created(chain):
    """The function's own account (create computer objects in the OU, nothing else) cannot change, reset or
    delete a node's object it created: the object's descriptor has no creator entries, its owner is Domain
    Admins (Samba)."""
    lab = chain.lab
    assert chain.result(chain.good[0]).rc == 0
    victim_dn = f"CN={computer_name(lab, chain.good[0])},{lab.computer_ou}"
    cfg = {"dc": lab.dc_ip, "domain": lab.cfg.domain, "ou": lab.computer_ou, "user": lab.add_user,
           "password": lab.add_password, "victim": victim_dn}
    res = subprocess.run(["ip", "netns", "exec", lab.sw_ns, sys.executable, "-c", ADDING_ACCOUNT_ATTACK,
                          str(REPO / "lambda_src")], input=json.dumps(cfg), capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out == {"description": "insufficientAccessRights", "password": "insufficientAccessRights",
                   "spn": "insufficientAccessRights", "delete": "insufficientAccessRights"}, out
    owner = dc_ldb(lab, "-b", victim_dn, "-s", "base", "nTSecurityDescriptor")
    assert "O:DA" in owner.stdout, owner.stdout


def test_forged_direct_invocation_gets_nothing(chain):
    """Anyone in the account allowed lambda:InvokeFunction can invoke the function directly and write the event,
    claiming a booting node's identity (attack review, issue 16). Without a proof, or with a proof signed by other
    credentials (here: another node's), the function refuses and creates nothing; the real node then joins."""
    lab = chain.lab
    (victim,) = lab.add_nodes([{}])
    forged_by = chain.good[1]
    no_proof = lab.svc_call("invoke_direct", as_ip=victim.ip, proof_ip=None)["response"]
    assert no_proof["statusCode"] == 400, no_proof
    other_proof = lab.svc_call("invoke_direct", as_ip=victim.ip, proof_ip=forged_by.ip)["response"]
    assert other_proof["statusCode"] == 403, other_proof
    assert "oneTimePassword" not in json.dumps(other_proof)
    assert "the caller proof names another identity" in lab.handler_log()
    assert "dn: " not in dc_ldb(lab, f"(sAMAccountName={computer_name(lab, victim)}$)", "dn").stdout
    res = victim.start_bootstrap(timeout_arg=JOIN_TIMEOUT).wait()
    assert res.rc == 0, describe(res)
    assert "dn: " in dc_ldb(lab, f"(sAMAccountName={computer_name(lab, victim)}$)", "dn").stdout


# Root on a node can write any file in /home (shared by every node): here it puts an ssh key in the homes of a
# computer account and of the function's adding account on the target node, as it could on any node.
PLANT_KEY = r"""set -eu
user=$1 pub=$2
entry=$(getent passwd "$user") || { echo "unresolved $user"; exit 0; }
home=$(printf '%s' "$entry" | cut -d: -f6)
uid=$(printf '%s' "$entry" | cut -d: -f3)
gid=$(printf '%s' "$entry" | cut -d: -f4)
mkdir -p "$home/.ssh"
printf '%s\n' "$pub" >"$home/.ssh/authorized_keys"
chown -R "$uid:$gid" "$home"
chmod 700 "$home" "$home/.ssh"
chmod 600 "$home/.ssh/authorized_keys"
echo "planted $user"
"""


KEY_OPTS = ["-i", "/root/.ssh/plant", "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o",
            "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=10"]


def test_computer_and_service_accounts_never_log_in(chain):
    """Whatever the access settings (here: every domain user may log in), a computer account and the join
    function's adding account are refused at PAM's account phase: by key, and the adding account also with its
    real password. alice, with a key planted the same way, logs in (the control)."""
    lab = chain.lab
    target = chain.good[0]
    assert chain.result(target).rc == 0 and chain.ssh_enabled.get(target.key)
    lab.client.run(["rm", "-f", "/root/.ssh/plant", "/root/.ssh/plant.pub"], check=False)
    lab.client.run(["mkdir", "-p", "/root/.ssh"])
    lab.client.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", "/root/.ssh/plant"])
    pub = lab.client.read("/root/.ssh/plant.pub").strip()
    machine = f"{computer_name(lab, chain.good[1])}$"
    results = {}
    for user in ("alice", lab.add_user, machine):
        planted = target.run(["/bin/bash", "-c", PLANT_KEY, "plant", user, pub], check=False).stdout.strip()
        res = lab.client.run(["ssh", *KEY_OPTS, f"{user}@{target.ip}", "id -un"], check=False, timeout=60)
        results[user] = (planted, res.returncode, res.stdout.strip())
    assert results["alice"] == ("planted alice", 0, "alice"), results
    # The adding account resolves like any user (so its refusal is the access rule's, not an unknown user's).
    assert results[lab.add_user][0] == f"planted {lab.add_user}" and results[lab.add_user][1] != 0, results
    assert results[machine][1] != 0, results
    password = ssh(lab, target, lab.add_user, lab.add_password, "id -un")
    assert password.returncode != 0 and lab.add_user not in password.stdout, password.stdout + password.stderr
    conf = target.read("/etc/sssd/conf.d/50-pcluster-ad-access.conf")
    assert "(!(objectClass=computer))" in conf and f"(!(sAMAccountName={lab.add_user}))" in conf, conf
