"""Issue 18 in the real-AD lab: access as directory data, account state at every login.

DirectoryAdmin's real handler (tests/adlab/dirsvc.py, as in test_directory_admin.py) keeps the stack's two groups
(pca-adlab-users / pca-adlab-admins) with the configured groups as members; two nodes (head and compute stand-ins)
run the product's join-domain.sh ONCE with the stack's groups (as the stack bakes them). Then only the directory
changes: a group leaves and comes back (the access Invocation's update), accounts are disabled, expired, locked
out and restored. Every login is tried by password, by ssh key, and by `su` on the node; the time from the
handler's answer to the first refused login is measured and printed. An expired account is refused for password
logins by the KDC and for key and `su` logins by sssd's expiry check, on the user entry that the login's refresh
reads from LDAP (join-domain.sh: pac_lifetime = 0, pam_initgroups_scheme = always).

Directory: phil in team-p, a member of physics (nested); chem in chemistry; dis, exp, lok in physics (the accounts
whose state changes); physics and chemistry are allowedGroups, ops adminGroups.
"""

from __future__ import annotations

import time

import pytest

from pcluster_ad.lambda_src.directory_admin import access_group_names

from .conftest import describe
from .lab import SSH_OPTS
from .test_directory_admin import BASE, COMPUTERS_DN, JOIN_USER, PEOPLE_DN, STACK, dc_search, env, lab  # noqa: F401
from .test_join_chain import KEY_OPTS, PLANT_KEY

pytestmark = pytest.mark.adlab

NAMES = access_group_names(STACK)
USERS_DN = f"CN={NAMES['users']},{PEOPLE_DN}"
PW = {u: f"{u.capitalize()}-Pw-2026!x" for u in ("phil", "chem", "dis", "exp", "lok", "opal")}
REVOCATION_BOUND_S = 30  # what the README states: the DC decides at the next login (measured: seconds)


def access_event(allowed: list[str], admins: list[str], action: str = "update") -> dict:
    return {"resource": "access", "allowedGroups": allowed, "adminGroups": admins,
            "tf": {"action": action, "prev_input": {}}}


class Site:
    def __init__(self, env, nodes):  # noqa: F811
        self.env, self.lab, self.nodes = env, env.lab, nodes
        self.source = env.lab.client_ip  # the client's address that logins come from (ssh -b)
        self.dropped = 0  # logins that a node's sshd dropped for the source's penalty (moved to a new source)


def client_ssh(site, argv: list[str], password: str | None = None):
    """ssh from the lab client (argv after `ssh`). These tests refuse logins on purpose; OpenSSH >= 9.8 (Debian 13
    nodes) then drops every connection from that source address for a while (PerSourcePenalties), before the key
    exchange, which is no access decision at all. Such a drop moves the client to a fresh address and tries again:
    what is asserted is always the node's answer to a login."""
    for _ in range(4):
        cmd = ["ssh", "-b", site.source, *argv]
        res = site.lab.client.run(["sshpass", "-e", *cmd] if password else cmd, check=False, timeout=90,
                                  env={"SSHPASS": password} if password else None)
        if "kex_exchange_identification" not in res.stderr:
            return res
        site.dropped += 1
        site.source = site.lab.client_source()
    raise AssertionError(f"four sources dropped in a row: {res.stderr}")


@pytest.fixture(scope="module")
def site(env):  # noqa: F811
    lab = env.lab  # noqa: F811
    lab.populate({"users": [{"name": u, "password": p} for u, p in PW.items()],
                  "groups": [{"name": "team-p", "members": ["phil"]},
                             {"name": "physics", "members": ["dis", "exp", "lok"]},
                             {"name": "chemistry", "members": ["chem"]}, {"name": "ops", "members": ["opal"]}]})
    lab.dc.run(["samba-tool", "group", "addmembers", "physics", "team-p"])  # nested: phil via team-p
    out = env.svc.ok("handle", event=access_event(["physics", "chemistry"], ["ops"], "create"))["result"]
    assert out["users"]["result"] == "created" and out["users"]["missing"] == [], out
    nodes = lab.add_nodes([{}, {}])
    runs = [n.start_bootstrap(args=[
        "--function-url", lab.function_url, "--region", lab.cfg.region, "--timeout", "240",
        "--computer-ou", COMPUTERS_DN, "--computer-prefix", env.prefix,
        "--allowed-groups", "physics,chemistry", "--admin-groups", "ops",
        "--stack-users-group", USERS_DN, "--stack-admins-group", NAMES["admins"]]) for n in nodes]
    for node, run in zip(nodes, runs, strict=True):
        res = run.wait()
        assert res.rc == 0, describe(res)
        assert node.run_action("enable-ssh-password-auth.sh").rc == 0
    lab.client.run(["rm", "-f", "/root/.ssh/plant", "/root/.ssh/plant.pub"], check=False)
    lab.client.run(["mkdir", "-p", "/root/.ssh"])
    lab.client.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", "/root/.ssh/plant"])
    pub = lab.client.read("/root/.ssh/plant.pub").strip()
    for node in nodes:
        for user in (*PW, JOIN_USER):
            planted = node.run(["/bin/bash", "-c", PLANT_KEY, "plant", user, pub], check=False).stdout.strip()
            assert planted == f"planted {user}", planted
    site = Site(env, nodes)
    yield site
    print(f"\nlogins dropped by a node's per-source penalty (moved to a new client address): {site.dropped}")


def by_password(site, node, user, password=None):
    return client_ssh(site, [*SSH_OPTS, "-o", "PubkeyAuthentication=no", "-o", "ConnectTimeout=10",
                             f"{user}@{node.ip}", "id -un"], password or PW[user])


def by_key(site, node, user):
    return client_ssh(site, [*KEY_OPTS, f"{user}@{node.ip}", "id -un"])


def by_su(node, user):
    # root's su: no password asked (pam_rootok), but PAM's account phase runs: sssd's access decision.
    return node.run(["su", "-", user, "-c", "id -un"], check=False, timeout=90)


def logins(site, node, user) -> dict[str, bool]:
    """{way: logged in as the user} for password, key and su."""
    out = {}
    for way, res in (("password", by_password(site, node, user)), ("key", by_key(site, node, user)),
                     ("su", by_su(node, user))):
        out[way] = res.returncode == 0 and res.stdout.strip().splitlines()[-1:] == [user]
    return out


ALL_IN = {"password": True, "key": True, "su": True}
ALL_OUT = {"password": False, "key": False, "su": False}


def test_node_config_names_the_stack_group_not_the_lists(site):
    for node in site.nodes:
        conf = node.read("/etc/sssd/conf.d/50-pcluster-ad-access.conf")
        assert f"= DOM:test.domain:(&(memberOf:1.2.840.113556.1.4.1941:={USERS_DN})" in conf, conf
        assert "physics" not in conf, conf
        assert "ad_gpo_access_control = disabled" in conf and "access_provider = ad" in conf, conf
        assert f"%{NAMES['admins']} ALL=(ALL:ALL) ALL" in node.read("/etc/sudoers.d/50-pcluster-ad-admins")
    members = dc_search(site.lab, USERS_DN, attrs=["member"], scope="base")[0]["member"]
    assert sorted(m.split(",")[0] for m in members) == ["CN=chemistry", "CN=physics"], members


def test_nested_member_and_direct_member_log_in_everywhere(site):
    for node in site.nodes:
        assert logins(site, node, "phil") == ALL_IN
        assert by_password(site, node, "chem").returncode == 0


def wait_until(check, bound: float) -> float:
    """Seconds until check() is true (checked in a loop); fails after `bound`."""
    t0 = time.monotonic()
    while True:
        if check():
            return round(time.monotonic() - t0, 1)
        assert time.monotonic() - t0 < bound, f"not within {bound} s"
        time.sleep(1)


def test_revocation_reaches_running_nodes_without_a_rerun(site):
    head, compute = site.nodes
    before = [n.read("/etc/sssd/conf.d/50-pcluster-ad-access.conf") for n in site.nodes]
    out = site.env.svc.ok("handle", event=access_event(["chemistry"], ["ops"]))["result"]
    assert [d.split(",")[0] for d in out["users"]["removed"]] == ["CN=physics"], out
    took = {n.key: wait_until(lambda n=n: by_key(site, n, "phil").returncode != 0, REVOCATION_BOUND_S)
            for n in site.nodes}
    print(f"\nissue 18: removal reached the next key login after {took} s")
    for node in site.nodes:
        assert logins(site, node, "phil") == ALL_OUT
        assert by_password(site, node, "chem").returncode == 0  # the other group: untouched
    site.env.svc.ok("handle", event=access_event(["physics", "chemistry"], ["ops"]))
    took = {n.key: wait_until(lambda n=n: by_key(site, n, "phil").returncode == 0, REVOCATION_BOUND_S)
            for n in site.nodes}
    print(f"issue 18: re-admission reached the next key login after {took} s")
    for node in site.nodes:
        assert logins(site, node, "phil") == ALL_IN
    # No node was re-run: the same files as at the join.
    assert [n.read("/etc/sssd/conf.d/50-pcluster-ad-access.conf") for n in site.nodes] == before
    assert compute is not head


def test_empty_allowed_groups_admit_every_user_and_a_later_list_closes_running_nodes(site):
    """Attack finding 1 of issue 18 (fixed): allowedGroups empty puts every user account of the domain in the stack's
    users group (the nodes' filter stays the same), a user created later gets in after the schedule's sync, and
    setting allowedGroups again closes the RUNNING nodes at the next login, without a re-run."""
    before = [n.read("/etc/sssd/conf.d/50-pcluster-ad-access.conf") for n in site.nodes]
    out = site.env.svc.ok("handle", event=access_event([], ["ops"]))["result"]
    assert out["users"]["mode"] == "every user account", out
    member_names = {m.split(",")[0].removeprefix("CN=").lower()
                    for m in dc_search(site.lab, USERS_DN, attrs=["member"], scope="base")[0]["member"]}
    assert {"opal", "chem", "phil"} <= member_names, member_names
    assert not member_names & {JOIN_USER.lower(), "administrator", "krbtgt"}, member_names
    took = {n.key: wait_until(lambda n=n: by_key(site, n, "opal").returncode == 0, REVOCATION_BOUND_S)
            for n in site.nodes}  # opal is in no allowed group: in only because the list is empty
    print(f"\nissue 18: every user admitted after {took} s")
    for node in site.nodes:
        assert by_key(site, node, JOIN_USER).returncode != 0  # the adding account: never
    # A user the site creates in the directory afterwards: in after the schedule's run.
    newbie_pw = "Newbie-Pw-2026!x"
    site.lab.dc.run(["samba-tool", "user", "create", "newbie", newbie_pw])
    try:
        assert by_password(site, site.nodes[0], "newbie", newbie_pw).returncode != 0  # not a member yet
        sync = site.env.svc.ok("handle", event={"op": "access-sync"})["result"]
        assert [d.split(",")[0] for d in sync["added"]] == ["CN=newbie"], sync
        for node in site.nodes:
            wait_until(lambda node=node: by_password(site, node, "newbie", newbie_pw).returncode == 0,
                       REVOCATION_BOUND_S)
        # The site closes the cluster: only the groups' members, on the running nodes.
        out = site.env.svc.ok("handle", event=access_event(["physics", "chemistry"], ["ops"]))["result"]
        now = dc_search(site.lab, USERS_DN, attrs=["member"], scope="base")[0]["member"]
        assert sorted(m.split(",")[0] for m in now) == ["CN=chemistry", "CN=physics"], out
        took = {n.key: wait_until(lambda n=n: by_key(site, n, "opal").returncode != 0, REVOCATION_BOUND_S)
                for n in site.nodes}
        print(f"issue 18: closing reached the running nodes after {took} s")
        for node in site.nodes:
            assert logins(site, node, "opal") == ALL_OUT
            assert by_password(site, node, "newbie", newbie_pw).returncode != 0
            assert logins(site, node, "phil") == ALL_IN
        # The schedule's next run writes nothing now.
        sync = site.env.svc.ok("handle", event={"op": "access-sync"})["result"]
        assert sync["result"].startswith("members of the configured groups"), sync
    finally:
        site.lab.dc.run(["samba-tool", "user", "delete", "newbie"], check=False)
    assert [n.read("/etc/sssd/conf.d/50-pcluster-ad-access.conf") for n in site.nodes] == before  # no re-run


def dc(site, *argv: str):
    return site.lab.dc.run(["samba-tool", *argv], check=False, timeout=60)


@pytest.mark.parametrize("user,spoil,restore", [
    ("dis", [("user", "disable", "dis")], [("user", "enable", "dis")]),
    ("exp", [("user", "setexpiry", "exp", "--days=0")], [("user", "setexpiry", "exp", "--noexpiry")]),
    ("lok", None, None),
], ids=["disabled", "expired", "locked-out"])
def test_account_state_is_checked_at_every_login(site, user, spoil, restore):
    head, compute = site.nodes
    assert logins(site, head, user) == ALL_IN
    if spoil is None:  # locked out by bad passwords, as an attacker would: the domain's lockout policy
        res = dc(site, "domain", "passwordsettings", "set", "--account-lockout-threshold=3",
                 "--account-lockout-duration=30", "--reset-account-lockout-after=30")
        assert res.returncode == 0, res.stderr
        for _ in range(4):
            head.run(["kinit", user], input="wrong-password\n", check=False)
        locked = dc_search(site.lab, BASE, f"(sAMAccountName={user})", ["lockoutTime"])[0]
        assert int(locked.get("lockoutTime", ["0"])[0]) > 0, locked
        restore = [("user", "unlock", user)]
    else:
        for argv in spoil:
            res = dc(site, *argv)
            assert res.returncode == 0, res.stderr
    bound = REVOCATION_BOUND_S
    took = {n.key: wait_until(lambda n=n: by_key(site, n, user).returncode != 0, bound) for n in (head, compute)}
    print(f"\nissue 18: {user} refused at the next key login after {took} s")
    for node in (head, compute):
        assert logins(site, node, user) == ALL_OUT, node.key
    for argv in restore:
        res = dc(site, *argv)
        assert res.returncode == 0, res.stderr
    took = {n.key: wait_until(lambda n=n: by_key(site, n, user).returncode == 0, bound) for n in (head, compute)}
    print(f"issue 18: {user} admitted again after {took} s")
    for node in (head, compute):
        assert logins(site, node, user) == ALL_IN, node.key


def test_adding_account_and_computer_account_are_refused(site):
    env = site.env  # noqa: F811
    for node in site.nodes:
        assert by_password(site, node, JOIN_USER, env.join_password).returncode != 0
        assert by_key(site, node, JOIN_USER).returncode != 0
        assert by_su(node, JOIN_USER).returncode != 0
    # The other node's computer account, with a key planted in its home by root.
    head, compute = site.nodes
    machine = compute.run(["bash", "-c", "klist -k /etc/krb5.keytab | awk '/\\$@/ {print $2; exit}'"]).stdout
    machine = machine.strip().split("@")[0]
    assert machine.endswith("$"), machine
    pub = site.lab.client.read("/root/.ssh/plant.pub").strip()
    planted = head.run(["/bin/bash", "-c", PLANT_KEY, "plant", machine, pub], check=False).stdout.strip()
    assert planted == f"planted {machine}", planted
    assert by_key(site, head, machine).returncode != 0
    assert by_su(head, machine).returncode != 0


def sudo_as(site, node, user):
    """A password login that runs sudo with the same password (read from stdin): "0" when sudo granted it."""
    cmd = f"printf '%s\\n' '{PW[user]}' | sudo -S -p '' id -u"
    return client_ssh(site, [*SSH_OPTS, "-o", "PubkeyAuthentication=no", f"{user}@{node.ip}", cmd], PW[user])


def test_sudo_follows_the_admins_group(site):
    """opal (ops) gets sudo through pca-adlab-admins; ops removed from adminGroups: sudo refused at a new login."""
    head = site.nodes[0]
    site.env.svc.ok("handle", event=access_event(["physics", "chemistry", "ops"], ["ops"]))
    res = sudo_as(site, head, "opal")
    assert res.returncode == 0 and res.stdout.strip() == "0", res
    site.env.svc.ok("handle", event=access_event(["physics", "chemistry", "ops"], []))
    took = wait_until(lambda: sudo_as(site, head, "opal").stdout.strip() != "0", REVOCATION_BOUND_S)
    print(f"\nissue 18: sudo withdrawn at a new login after {took} s")
    assert by_password(site, head, "opal").returncode == 0  # still allowed to log in
    site.env.svc.ok("handle", event=access_event(["physics", "chemistry"], ["ops"]))
