"""Attack review of issue 18 against the lab's real Samba DC: the stack's access groups (pca-<stack>-users /
-admins) decide who logs in on every node (ad_access_filter, in-chain membership) and who gets sudo. Only the
stack's admin (DirectoryAdmin's admin account) may write their `member`: not an ordinary directory user, not the
computer-adding account (the join function's; the node role can reach that function), not a computer account an
ordinary user created through ms-DS-MachineAccountQuota.

The product's real handler (dirsvc) makes the groups. Attacks refused today are plain tests; findings would be
xfail(strict=True) (the unit side: tests/test_attack_issue18.py)."""

from __future__ import annotations

import pytest

from pcluster_ad.lambda_src.directory_admin import access_group_names, everyone_description, members_description

from .test_directory_admin import BASE, COMPUTERS_DN, JOIN_USER, PEOPLE_DN, STACK, dc_as, dc_search, env, lab, ldap_as  # noqa: F401

pytestmark = pytest.mark.adlab

NAMES = access_group_names(STACK)
USERS_DN = f"CN={NAMES['users']},{PEOPLE_DN}"
ADMINS_DN = f"CN={NAMES['admins']},{PEOPLE_DN}"
MALLORY, MALLORY_PW = "mallory", "Mall0ry-Pw-2026!x"
MALLORY_DN = f"CN={MALLORY},CN=Users,{BASE}"


@pytest.fixture(scope="module")
def groups(env):  # noqa: F811
    env.lab.populate({"users": [{"name": MALLORY, "password": MALLORY_PW}],
                      "groups": [{"name": "physics18", "members": []}, {"name": "ops18", "members": []}]})
    out = env.svc.ok("handle", event={"resource": "access", "allowedGroups": ["physics18"], "adminGroups": ["ops18"],
                                      "tf": {"action": "create", "prev_input": {}}})["result"]
    assert out["users"]["dn"].lower() == USERS_DN.lower() and out["admins"]["dn"].lower() == ADMINS_DN.lower(), out
    (me,) = dc_search(env.lab, BASE, f"(sAMAccountName={MALLORY})", ["distinguishedName"])
    return {"mallory_dn": me["dn"]}


def members(env, dn: str) -> list[str]:  # noqa: F811
    (hit,) = dc_search(env.lab, dn, "(objectClass=group)", ["member"], scope="base")
    return [m.lower() for m in hit.get("member", [])]


@pytest.mark.parametrize("target", ["users", "admins"])
def test_refused_an_ordinary_user_cannot_add_herself_to_a_stack_group(env, groups, target):  # noqa: F811
    """Attacker (4): mallory, an ordinary directory user, adds herself (the Self-Membership validated write) to the
    stack's users / admins group. Refused: only the stack's admin writes those groups."""
    dn = USERS_DN if target == "users" else ADMINS_DN
    (got,) = ldap_as(env, MALLORY, MALLORY_PW, [{"op": "add_member", "dn": dn, "member": groups["mallory_dn"]}])
    assert got["ok"] is False and got["result"] == "insufficientAccessRights", got
    assert groups["mallory_dn"].lower() not in members(env, dn)


@pytest.mark.parametrize("target", ["users", "admins"])
def test_refused_the_computer_adding_account_cannot_write_a_stack_group(env, groups, target):  # noqa: F811
    """Attacker (3): the node role reaches the join function, whose account adds computers. That account cannot
    add anything to the stack's groups (its one ACE is on OU=Computers)."""
    dn = USERS_DN if target == "users" else ADMINS_DN
    (got,) = ldap_as(env, JOIN_USER, env.join_password,
                     [{"op": "add_member", "dn": dn, "member": groups["mallory_dn"]}])
    assert got["ok"] is False and got["result"] in ("insufficientAccessRights", "noSuchObject"), got
    assert groups["mallory_dn"].lower() not in members(env, dn)


def test_refused_an_ordinary_user_cannot_plant_a_group_in_the_stack_ou_or_create_one(env, groups):  # noqa: F811
    """Attacker (4): mallory tries to create a group in the stack's OU=Users (where the stack's DN is), and a group
    named like the stack's users group elsewhere (CN=Users): both refused (no create-child for ordinary users; the
    name is taken anyway, sAMAccountName is unique, and the filter names the DN, not the name)."""
    got = ldap_as(env, MALLORY, MALLORY_PW, [
        {"op": "add", "dn": f"CN=evil18,{PEOPLE_DN}", "classes": ["top", "group"],
         "attrs": {"sAMAccountName": "evil18"}},
        {"op": "add", "dn": f"CN={NAMES['users']},CN=Users,{BASE}", "classes": ["top", "group"],
         "attrs": {"sAMAccountName": "pca18-lookalike"}},
    ])
    assert all(g["ok"] is False for g in got), got
    assert not dc_search(env.lab, BASE, "(|(sAMAccountName=evil18)(sAMAccountName=pca18-lookalike))")


def test_refused_a_machine_account_quota_computer_cannot_join_a_stack_group(env, groups):  # noqa: F811
    """Attacker (4): by default any user may add computer accounts (ms-DS-MachineAccountQuota = 10). mallory adds
    one in CN=Computers and then tries to put it into the stack's users group: refused.
    (Even inside, the filter's (!(objectClass=computer)) keeps it out: tests/test_attack_issue18.py.)"""
    comp = f"CN=MAL18PC,CN=Computers,{BASE}"
    got = ldap_as(env, MALLORY, MALLORY_PW, [
        {"op": "add", "dn": comp, "classes": ["top", "person", "organizationalPerson", "user", "computer"],
         "attrs": {"sAMAccountName": "MAL18PC$", "userAccountControl": "4096"}},
        {"op": "add_member", "dn": USERS_DN, "member": comp},
    ])
    # Samba 4.17 refuses this add over a simple bind (a computer needs more than these attributes, or LDAPS for
    # its password); whether it exists or not, the write to the stack's group is refused.
    assert got[1]["ok"] is False, got
    assert got[1]["result"] in ("insufficientAccessRights", "noSuchObject"), got
    (again,) = ldap_as(env, MALLORY, MALLORY_PW, [{"op": "add_member", "dn": USERS_DN, "member": groups["mallory_dn"]}])
    assert again["ok"] is False and again["result"] == "insufficientAccessRights", again
    assert comp.lower() not in members(env, USERS_DN)


def test_the_stack_groups_hold_exactly_the_configured_groups(env, groups):  # noqa: F811
    """After the attacks: the users group holds physics18 only, the admins group ops18 only."""
    assert [m.split(",")[0] for m in members(env, USERS_DN)] == ["cn=physics18"]
    assert [m.split(",")[0] for m in members(env, ADMINS_DN)] == ["cn=ops18"]


# -- a node with DirectoryAdmin but allowedGroups empty ("every domain user, but no disabled or locked-out one") -----

LOK, LOK_PW = "lok18", "L0k18-Pw-2026!x"


@pytest.fixture(scope="module")
def open_node(env, groups):  # noqa: F811
    """One node joined as the stack bakes it with DirectoryAdmin and no allowedGroups: since attack finding 1's fix
    the same filter as with a list (in-chain members of the stack's users group), every_account below fills the group.
    sssd's ad access provider asks the Global Catalog first (ad_gc_conn_list) and takes its 'allowed' as final;
    lockoutTime is not in the GC's partial attribute set (MS-ADSC; Samba's ad-schema)."""
    from .lab import SSH_OPTS  # noqa: F401
    from .test_directory_admin import COMPUTERS_DN
    from .test_join_chain import PLANT_KEY

    lab = env.lab  # noqa: F811
    lab.populate({"users": [{"name": LOK, "password": LOK_PW}]})
    (node,) = lab.add_nodes([{}])
    res = node.start_bootstrap(args=[
        "--function-url", lab.function_url, "--region", lab.cfg.region, "--timeout", "240",
        "--computer-ou", COMPUTERS_DN, "--computer-prefix", env.prefix,
        "--stack-users-group", USERS_DN, "--stack-admins-group", NAMES["admins"]]).wait()
    assert res.rc == 0, res
    lab.client.run(["rm", "-f", "/root/.ssh/plant", "/root/.ssh/plant.pub"], check=False)
    lab.client.run(["mkdir", "-p", "/root/.ssh"])
    lab.client.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", "/root/.ssh/plant"])
    pub = lab.client.read("/root/.ssh/plant.pub").strip()
    planted = node.run(["/bin/bash", "-c", PLANT_KEY, "plant", LOK, pub], check=False).stdout.strip()
    assert planted == f"planted {LOK}", planted
    return node



@pytest.fixture
def every_account(env, open_node):  # noqa: F811
    """allowedGroups empty: DirectoryAdmin keeps every user account in the users group (attack finding 1's fix);
    closed again (physics18) afterwards, as the tests below expect."""
    out = access(env, [], ["ops18"])
    assert out["users"]["mode"] == "every user account", out
    yield open_node
    access(env, ["physics18"], ["ops18"])

GC_READ = r"""
import json, sys
from ldap3 import SIMPLE, Connection, Server
q = json.load(sys.stdin)
conn = Connection(Server(q["server"], port=q["port"], connect_timeout=5), user=q["user"], password=q["password"],
                  authentication=SIMPLE, raise_exceptions=False)
conn.bind()
conn.search(q["base"], "(sAMAccountName=%s)" % q["sam"], attributes=["lockoutTime", "userAccountControl"])
print(json.dumps({k: [str(x) for x in v] if isinstance(v, list) else str(v)
                  for e in conn.response if e.get("type") == "searchResEntry" for k, v in e["attributes"].items()}))
"""


def gc_read(lab, port: int, sam: str) -> dict:  # noqa: F811
    import json
    import subprocess

    from .lab import HERE, lab_python
    probe = subprocess.run(["ip", "netns", "exec", lab.sw_ns, lab_python(), "-c", GC_READ], input=json.dumps(
        {"server": lab.dc_ip, "port": port, "user": f"Administrator@{lab.cfg.domain}", "password": lab.admin_password,
         "base": BASE, "sam": sam}), capture_output=True, text=True, timeout=60, cwd=str(HERE))
    return json.loads(probe.stdout) if probe.returncode == 0 and probe.stdout else {"error": probe.stderr[-500:]}


def by_key(env, node, user):  # noqa: F811
    from .test_join_chain import KEY_OPTS
    return env.lab.client.run(["ssh", *KEY_OPTS, f"{user}@{node.ip}", "id -un"], check=False, timeout=90)


def by_su(node, user):
    return node.run(["su", "-", user, "-c", "id -un"], check=False, timeout=90)


def test_probe_lockouttime_on_ldap_and_on_the_global_catalog(env, every_account):  # noqa: F811
    """Lock lok18 out (bad passwords under a lockout policy) and read lockoutTime on LDAP (389) and on the GC
    (3268), where the node's sssd asks first: printed (finding 2's evidence: Samba's GC has it, a Windows GC not)."""
    lab = env.lab  # noqa: F811
    node = every_account
    assert by_key(env, node, LOK).returncode == 0  # allowed before (every domain user)
    res = lab.dc.run(["samba-tool", "domain", "passwordsettings", "set", "--account-lockout-threshold=3",
                      "--account-lockout-duration=30", "--reset-account-lockout-after=30"], check=False)
    assert res.returncode == 0, res.stderr
    for _ in range(4):
        node.run(["kinit", LOK], input="wrong-password\n", check=False)
    (hit,) = dc_search(lab, BASE, f"(sAMAccountName={LOK})", ["lockoutTime"])
    assert int(hit.get("lockoutTime", ["0"])[0]) > 0, hit
    gc = {port: gc_read(lab, port, LOK) for port in (389, 3268)}
    print(f"lockoutTime of {LOK} on LDAP / GC: {gc}")
    assert gc[389].get("lockoutTime"), gc


def test_refused_on_samba_a_locked_out_account_by_key_and_su_in_every_user_mode(env, every_account):  # noqa: F811
    """Refused in the lab: Samba's GC (3268) returns lockoutTime (printed by the probe above: it does not trim to the
    partial attribute set), so sssd's GC-first check sees it. A Windows DC's GC (AWS Managed AD) does not hold
    lockoutTime: there the GC answers 'allowed' and sssd does not ask LDAP again -- finding 2, shown on the unit side
    (tests/test_attack_issue18.py::test_finding_2_...)."""
    node = every_account
    (hit,) = dc_search(env.lab, BASE, f"(sAMAccountName={LOK})", ["lockoutTime"])
    assert int(hit.get("lockoutTime", ["0"])[0]) > 0, hit  # locked by the probe above
    try:
        key, su = by_key(env, node, LOK), by_su(node, LOK)
        print(f"locked-out {LOK}: key rc={key.returncode} su rc={su.returncode}")
        assert key.returncode != 0 and su.returncode != 0, (key.stdout, su.stdout)
    finally:
        env.lab.dc.run(["samba-tool", "user", "unlock", LOK], check=False)


# -- a node in the stack's mode (allowedGroups set): fail-closed paths and sudo in a session opened before ---------

ADM, ADM_PW, USR, USR_PW = "adm18", "Adm18-Pw-2026!x", "usr18", "Usr18-Pw-2026!x"


@pytest.fixture(scope="module")
def stack_node(env, groups):  # noqa: F811
    from .test_directory_admin import COMPUTERS_DN
    from .test_join_chain import PLANT_KEY

    lab = env.lab  # noqa: F811
    lab.populate({"users": [{"name": ADM, "password": ADM_PW}, {"name": USR, "password": USR_PW}]})
    lab.dc.run(["samba-tool", "group", "addmembers", "physics18", f"{ADM},{USR}"])
    lab.dc.run(["samba-tool", "group", "addmembers", "ops18", ADM])
    (node,) = lab.add_nodes([{}])
    res = node.start_bootstrap(args=[
        "--function-url", lab.function_url, "--region", lab.cfg.region, "--timeout", "240",
        "--computer-ou", COMPUTERS_DN, "--computer-prefix", env.prefix, "--allowed-groups", "physics18",
        "--admin-groups", "ops18", "--stack-users-group", USERS_DN, "--stack-admins-group", NAMES["admins"]]).wait()
    assert res.rc == 0, res
    lab.client.run(["mkdir", "-p", "/root/.ssh"])
    if lab.client.run(["test", "-e", "/root/.ssh/plant"], check=False).returncode != 0:
        lab.client.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", "/root/.ssh/plant"])
    pub = lab.client.read("/root/.ssh/plant.pub").strip()
    for user in (ADM, USR):
        planted = node.run(["/bin/bash", "-c", PLANT_KEY, "plant", user, pub], check=False).stdout.strip()
        assert planted == f"planted {user}", planted
    return node


def access(env, allowed, admins):  # noqa: F811
    return env.svc.ok("handle", event={"resource": "access", "allowedGroups": allowed, "adminGroups": admins,
                                       "tf": {"action": "update", "prev_input": {}}})["result"]


def test_finding_3_sudo_is_revoked_in_a_session_opened_before(env, stack_node):  # noqa: F811
    """Attack finding 3 (closed): sudo took the group list of the session (sudo's default group source, the
    kernel's list fixed at login), so a session opened while she was an admin (a tmux, a running job) kept sudo
    after adminGroups dropped her. join-domain.sh sets `Set group_source dynamic` in sudo.conf (sudo asks NSS at
    each call) and sssd answers from a group list at most entry_cache_user_timeout (30 s) old, with no fast-cache
    copy (50-pcluster-ad-fresh.conf): sudo 36 s after the removal, in the session opened before, is refused."""
    import subprocess
    import time

    from .test_join_chain import KEY_OPTS
    node = stack_node
    # One ssh session: sleeps beyond the README's 30 s bound, then sudo with the password; adminGroups is emptied
    # while it sleeps (4 s in).
    proc = env.lab.client.popen(["ssh", *KEY_OPTS, f"{ADM}@{node.ip}",
                                 f"id -Gn; sleep 40; printf '%s\\n' '{ADM_PW}' | sudo -S -k -p '' id -u"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(4)
    try:
        out = access(env, ["physics18"], [])
        assert out["admins"]["removed"], out
        stdout, stderr = proc.communicate(timeout=90)
    finally:
        access(env, ["physics18"], ["ops18"])
    lines = stdout.decode().strip().splitlines()
    print(f"old session of {ADM}: {lines} {stderr.decode()[-300:]!r}")
    assert NAMES["admins"] in lines[0], lines  # she was an admin when the session opened
    assert lines[-1:] != ["0"], lines  # sudo after the removal: refused


def admin_again(env, node, cmd: str) -> None:  # noqa: F811
    """Wait until a new key login of ADM has sudo again (the test before gave adminGroups back: a login within
    pam_id_timeout, 5 s, of her last one still takes that one's lookup): within the README's 30 s."""
    import time

    from .test_join_chain import KEY_OPTS
    t0, lines = time.monotonic(), []
    while time.monotonic() - t0 < 30:
        res = env.lab.client.run(["ssh", *KEY_OPTS, f"{ADM}@{node.ip}", cmd], check=False, timeout=90)
        lines = res.stdout.strip().splitlines()
        if lines[-1:] == ["0"]:
            return
        time.sleep(1)
    raise AssertionError(f"{ADM} has no sudo 30 s after adminGroups gave it back: {lines}")


def test_finding_4_sudo_is_withdrawn_at_a_new_key_login_within_the_stated_bound(env, stack_node):  # noqa: F811
    """Attack finding 4 (closed): a NEW key login 35 s after the removal still had the admins group and sudo. The
    login did refresh her groups, but from the PAC of her last Kerberos logon (the sudo password above), which sssd
    prefers while it is valid (pac_lifetime, 300 s; ad_id.c check_if_pac_is_available): join-domain.sh sets
    pac_lifetime = 0, so the refresh reads LDAP (tokenGroups)."""
    import time

    from .test_join_chain import KEY_OPTS
    node = stack_node
    cmd = f"id -Gn; printf '%s\\n' '{ADM_PW}' | sudo -S -k -p '' id -u"
    admin_again(env, node, cmd)  # an admin now
    try:
        assert access(env, ["physics18"], [])["admins"]["removed"]
        time.sleep(35)
        after = env.lab.client.run(["ssh", *KEY_OPTS, f"{ADM}@{node.ip}", cmd], check=False, timeout=90)
    finally:
        access(env, ["physics18"], ["ops18"])
    lines = after.stdout.strip().splitlines()
    print(f"a key login of {ADM} 35 s after the removal: {lines}")
    assert lines[-1:] != ["0"], lines


def test_refused_sudo_at_a_new_key_login_while_a_session_of_hers_is_open(env, stack_node):  # noqa: F811
    """Finding 4 with a session of hers open on the node (a running job): sssd's PAM responder skips the online
    refresh when the user has a process there (pam_initgroups_scheme = no_session, the default; pamsrv_cmd.c
    pam_check_user_search_next), so the new login took the cached group list. join-domain.sh sets `always`: a new
    key login 8 s after the removal (beyond pam_id_timeout, 5 s, which caches one login's lookups) has no sudo."""
    import subprocess
    import time

    from .test_join_chain import KEY_OPTS
    node = stack_node
    cmd = f"id -Gn; printf '%s\\n' '{ADM_PW}' | sudo -S -k -p '' id -u"
    admin_again(env, node, cmd)  # an admin now
    held = env.lab.client.popen(["ssh", *KEY_OPTS, f"{ADM}@{node.ip}", "sleep 25"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    try:
        time.sleep(2)
        assert node.run(["pgrep", "-u", ADM, "-x", "sleep"], check=False).returncode == 0  # her session is there
        assert access(env, ["physics18"], [])["admins"]["removed"]
        t0 = time.monotonic()
        time.sleep(8)
        after = env.lab.client.run(["ssh", *KEY_OPTS, f"{ADM}@{node.ip}", cmd], check=False, timeout=90)
        took = round(time.monotonic() - t0, 1)
    finally:
        access(env, ["physics18"], ["ops18"])
        held.wait(timeout=60)
    lines = after.stdout.strip().splitlines()
    print(f"a key login of {ADM} {took} s after the removal, another session of hers open: {lines}")
    assert lines and NAMES["admins"] not in lines[0] and lines[-1:] != ["0"], lines


def test_refused_the_stack_users_group_deleted_means_nobody_logs_in(env, stack_node):  # noqa: F811
    """Fail-closed: the users group gone (deleted by someone, or a destroy racing the nodes): the in-chain clause
    names a DN that does not exist, and its members are refused; recreated by the function: allowed again."""
    node = stack_node
    assert by_key(env, node, USR).returncode == 0
    assert env.lab.dc.run(["samba-tool", "group", "delete", NAMES["users"]], check=False).returncode == 0
    try:
        res = by_key(env, node, USR)
        assert res.returncode != 0, res.stdout
        assert by_su(node, USR).returncode != 0
    finally:
        access(env, ["physics18"], ["ops18"])
    assert by_key(env, node, USR).returncode == 0


# -- allowedGroups empty: every user account kept in the users group (the fix of finding 1), attacked ---------------
# The mode is the users group's description (everyone_description); the schedule's {"op": "access-sync"} adds every
# normal user account (sAMAccountType 805306368) only while it says so, each write asserting it (delete + add of the
# value in the same modify). Attackers: mallory (an ordinary directory user, also a user with a shell on a node) and
# root on stack_node with its computer account's keytab (Kerberos LDAP as NODE$).

EVERYONE = everyone_description(STACK)
CLOSED = members_description(STACK, "allowedGroups")
MAL_PCS = {"MAL18SYN": "4096", "MAL18NRM": "512"}  # a workstation account, and one asking for a normal account
MAL_PC_PW = "Mpc-Pw-2026!x-18"

# Root on a node: LDAP as the node's computer account, from its keytab (Kerberos, sealed). One LDIF per argument;
# prints one line per change: 0 (done) or the LDAP result code that ldapmodify exits with (50:
# insufficientAccessRights); a failed bind or connection is an "error: ..." line, never a result code. OpenLDAP's
# ldapmodify -Y GSSAPI: every node generation has it (Debian 13's ldb-tools lacks Samba's --use-kerberos).
AS_NODE = r"""set -u
export KRB5CCNAME=FILE:/tmp/atk18.cc
me=$(klist -k /etc/krb5.keytab | awk '/\$@/ {print $2; exit}')
kinit -k -t /etc/krb5.keytab "$me" >/dev/null 2>&1 || { echo "kinit failed for $me"; exit 0; }
echo "$me"
for ldif in "$@"; do
    out=$(printf '%s\n' "$ldif" | ldapmodify -Q -N -Y GSSAPI -H ldap://dc1.test.domain 2>&1); rc=$?
    case $rc:$out in
        0:*) echo 0 ;;
        *ldap_sasl_interactive_bind*|255:*) echo "error: $(printf '%s' "$out" | tr -c '[:print:]' ' ' | cut -c1-120)" ;;
        *) echo "LDAP error $rc" ;;
    esac
done
kdestroy >/dev/null 2>&1 || true
"""


def sync(env):  # noqa: F811
    return env.svc.ok("handle", event={"op": "access-sync"})["result"]


def description(env, dn: str) -> list[str]:  # noqa: F811
    (hit,) = dc_search(env.lab, dn, "(objectClass=group)", ["description"], scope="base")
    return hit.get("description", [])


def as_node(node, *ldifs: str) -> list[str]:
    out = node.run(["/bin/bash", "-c", AS_NODE, "as-node", *ldifs], check=False, timeout=120).stdout
    return out.strip().splitlines()


def modify(dn: str, op: str, attr: str, value: str) -> str:
    return f"dn: {dn}\nchangetype: modify\n{op}: {attr}\n{attr}: {value}\n"


def test_refused_no_user_and_no_node_account_can_switch_a_closed_users_group_to_every_account(
        env, groups, stack_node):  # noqa: F811
    """The group closed (physics18): mallory, and root on a node as its computer account, write the everyone text
    into the group's description (then the schedule would add every account), its DACL, or themselves as member.
    All refused by the DC; the schedule's run then writes nothing."""
    assert description(env, USERS_DN) == [CLOSED]
    got = dc_as(env.lab, MALLORY, MALLORY_PW, [
        {"op": "modify", "dn": USERS_DN, "attr": "description", "value": EVERYONE},
        {"op": "write_dacl", "dn": USERS_DN, "sddl": "D:(A;;GA;;;WD)"},
        {"op": "add_member", "dn": USERS_DN, "member": groups["mallory_dn"]}])
    assert [g["result"] for g in got] == ["insufficientAccessRights"] * 3, got
    node_dn = dc_search(env.lab, COMPUTERS_DN, "(objectClass=computer)", ["distinguishedName"])
    lines = as_node(stack_node, modify(USERS_DN, "replace", "description", EVERYONE),
                    modify(USERS_DN, "add", "member", groups["mallory_dn"]))
    print(f"\nroot on the node, as its computer account: {lines}")
    assert lines[0].endswith(f"@{env.lab.cfg.realm}") and "$" in lines[0], lines  # the Kerberos bind worked
    assert lines[1:] == ["LDAP error 50"] * 2, lines
    assert node_dn  # the node's computer object is in the stack's Computers OU
    assert description(env, USERS_DN) == [CLOSED]
    assert sync(env)["result"].startswith("members of the configured groups")
    assert [m.split(",")[0] for m in members(env, USERS_DN)] == ["cn=physics18"]


def test_refused_no_computer_account_becomes_a_normal_user_account_that_the_sync_adds(env, groups, stack_node):  # noqa: F811
    """mallory adds computer accounts (ms-DS-MachineAccountQuota; sealed NTLM, with a password), one asking for a
    normal account's userAccountControl, then flips the other's to a normal account (512); root on the node flips its
    own. Had any become sAMAccountType 805306368, every-account mode would add it to the users group (the nodes'
    filter still refuses objectClass=computer). Then allowedGroups is emptied: no computer is a member."""
    made = dc_as(env.lab, MALLORY, MALLORY_PW, [
        {"op": "add", "dn": f"CN={pc},CN=Computers,{BASE}", "password": MAL_PC_PW,
         "attrs": {"objectClass": "computer", "sAMAccountName": f"{pc}$", "userAccountControl": uac}}
        for pc, uac in MAL_PCS.items()])
    flip = dc_as(env.lab, MALLORY, MALLORY_PW, [
        {"op": "modify", "dn": f"CN={pc},CN=Computers,{BASE}", "attr": "userAccountControl", "value": "512"}
        for pc in MAL_PCS])
    me = dc_search(env.lab, COMPUTERS_DN, "(objectClass=computer)", ["distinguishedName"])
    own = as_node(stack_node, *(modify(c["dn"], "replace", "userAccountControl", "512") for c in me))
    types = {c["dn"].split(",")[0]: c.get("sAMAccountType") for c in dc_search(
        env.lab, BASE, "(objectClass=computer)", ["sAMAccountType"])}
    print(f"\nmallory adds {[(m['dn'].split(',')[0], m['result']) for m in made]}, flips "
          f"{[(m['dn'].split(',')[0], m['result']) for m in flip]}; the node flips itself: {own}; types: {types}")
    try:
        assert all(x != "0" for x in own[1:]), own
        assert all(t == ["805306369"] for t in types.values()), types  # machine accounts, every one
        out = access(env, [], ["ops18"])
        assert out["users"]["mode"] == "every user account", out
        inside = dc_search(env.lab, BASE, f"(memberOf={USERS_DN})", ["objectClass", "sAMAccountName"])
        names = sorted(str(h["sAMAccountName"][0]).lower() for h in inside)
        print(f"every-account mode, members: {names}")
        assert not [h for h in inside if "computer" in [str(c).lower() for c in h["objectClass"]]], names
        assert MALLORY in names and not {JOIN_USER.lower(), "administrator", "krbtgt"} & set(names), names
    finally:
        access(env, ["physics18"], ["ops18"])
        for pc in MAL_PCS:
            env.lab.dc.run(["samba-tool", "computer", "delete", pc], check=False)
    assert [m.split(",")[0] for m in members(env, USERS_DN)] == ["cn=physics18"]


def test_refused_on_samba_a_sync_write_under_the_wrong_mode_writes_nothing(env, groups):  # noqa: F811
    """The guard itself on the real DC: the sync's modify (description: delete EVERYONE, add EVERYONE; member: add)
    on the CLOSED group fails as a whole (nothing added, the description stays); under the right guard the same
    shape is accepted and leaves the one description value as it was."""
    mal = groups["mallory_dn"]
    assert env.svc.ok("guarded", dn=USERS_DN, guard=EVERYONE, add=[mal])["written"] is False
    assert mal.lower() not in members(env, USERS_DN) and description(env, USERS_DN) == [CLOSED]
    try:
        assert env.svc.ok("guarded", dn=USERS_DN, guard=CLOSED, add=[mal])["written"] is True  # control
        assert mal.lower() in members(env, USERS_DN) and description(env, USERS_DN) == [CLOSED]
    finally:
        env.svc.ok("guarded", dn=USERS_DN, guard=CLOSED, remove=[mal])
    assert mal.lower() not in members(env, USERS_DN)


def test_refused_closing_every_account_mode_shuts_her_out_on_a_running_node_and_syncs_keep_it_shut(
        env, groups, stack_node):  # noqa: F811
    """closed -> every account -> closed on the running node (joined once, never re-run): mallory (in no allowed
    group) is out, then in, then out again; after the closing the schedule's run writes nothing, so she stays out."""
    import time

    from .test_join_chain import PLANT_KEY
    pub = env.lab.client.read("/root/.ssh/plant.pub").strip()
    planted = stack_node.run(["/bin/bash", "-c", PLANT_KEY, "plant", MALLORY, pub], check=False).stdout.strip()
    assert planted == f"planted {MALLORY}", planted

    def settles(want_in: bool) -> float:
        t0 = time.monotonic()
        while (by_key(env, stack_node, MALLORY).returncode == 0) != want_in:
            assert time.monotonic() - t0 < 30, f"mallory {'not ' if want_in else ''}admitted 30 s on"
            time.sleep(1)
        return round(time.monotonic() - t0, 1)

    assert by_key(env, stack_node, MALLORY).returncode != 0  # closed: physics18 only
    try:
        access(env, [], ["ops18"])
        took_in = settles(True)
    finally:
        out = access(env, ["physics18"], ["ops18"])
    assert out["users"]["removed"], out
    assert sync(env)["result"].startswith("members of the configured groups")
    took_out = settles(False)
    print(f"\nmallory admitted {took_in} s after opening, refused {took_out} s after closing")
    assert description(env, USERS_DN) == [CLOSED]
    assert [m.split(",")[0] for m in members(env, USERS_DN)] == ["cn=physics18"]
    assert by_key(env, stack_node, USR).returncode == 0  # a physics18 member: still in
