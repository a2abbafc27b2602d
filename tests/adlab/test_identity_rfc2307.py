"""Stable POSIX identities on real nodes (issue 18): join-domain.sh --id-mode rfc2307 against the Samba DC, with sssd
reading uidNumber/gidNumber; and the migration of a home made under ID mapping (bootstrap/remap-home-owners.py).

Directory: posixa (uidNumber 150001, gidNumber 150001: her private group), plainb (no RFC 2307 attributes),
pgrp (gidNumber 150100) and npgrp (none), both with posixa; migr (a user who logs in under ID mapping first and
gets her numbers afterwards, as DirectoryAdmin gives them)."""

from __future__ import annotations

import json

import pytest

from .conftest import JOIN_TIMEOUT, describe, running_lab
from .lab import BOOTSTRAP_DIR, SSH_OPTS
from .test_directory_admin import allow_simple_binds

pytestmark = pytest.mark.adlab

PW = {"posixa": "Posixa-Pw-2026!x", "plainb": "Plainb-Pw-2026!x", "migr": "Migr-Pw-2026!xy"}
TOOL = "/usr/local/sbin/remap-home-owners.py"
# As the stack bakes it: rfc2307 comes with DirectoryAdmin's admins group, which has a gidNumber (the join's check
# that the domain answers looks that group up: Domain Users has no gidNumber).
RFC2307 = ["--id-mode", "rfc2307", "--stack-admins-group", "pgrp"]


@pytest.fixture(scope="module")
def lab():
    """The lab of conftest.py (join services, client), with the DC configured like Simple AD: simple binds, which
    the directory-admin function uses (the last test declares users through it)."""
    with running_lab(after_start=allow_simple_binds) as lab:
        yield lab


@pytest.fixture(scope="module")
def ids(lab):
    lab.populate({"users": [{"name": u, "password": p} for u, p in PW.items()],
                  "groups": [{"name": "pgrp", "members": ["posixa"]}, {"name": "npgrp", "members": ["posixa"]}]})
    lab.dc.run(["samba-tool", "user", "addunixattrs", "posixa", "150001", "--gid-number", "150001"])
    lab.dc.run(["samba-tool", "group", "addunixattrs", "pgrp", "150100"])
    rfc, idm = lab.add_nodes([{}, {}])
    for node, extra in ((rfc, RFC2307), (idm, [])):
        res = node.start_bootstrap(timeout_arg=JOIN_TIMEOUT, args=[*default_args(node), *extra]).wait()
        assert res.rc == 0, describe(res)
        assert node.run_action("enable-ssh-password-auth.sh").rc == 0
        node.write(TOOL, (BOOTSTRAP_DIR / "remap-home-owners.py").read_bytes(), mode="0755")
    return lab, rfc, idm


def default_args(node) -> list[str]:
    from pcluster_ad.lambda_src.directory_admin import computer_prefix
    return ["--function-url", node.lab.function_url, "--region", node.lab.cfg.region, "--timeout", str(JOIN_TIMEOUT),
            "--computer-prefix", computer_prefix(node.lab.cfg.cluster_name)]


def ssh(lab, node, user, cmd):
    return lab.client.run(["sshpass", "-e", "ssh", *SSH_OPTS, "-o", "PubkeyAuthentication=no", f"{user}@{node.ip}",
                           cmd], env={"SSHPASS": PW[user]}, check=False, timeout=120)


def test_rfc2307_node_takes_the_directory_numbers(ids):
    lab, rfc, _ = ids
    conf = rfc.read("/etc/sssd/sssd.conf")
    assert "ldap_id_mapping = False" in conf and "auto_private_groups = hybrid" in conf, conf
    out = rfc.run(["id", "posixa"], check=False)
    assert out.returncode == 0, out.stderr
    # Her private group (gidNumber = uidNumber, no group object) and the POSIX group; npgrp (no gidNumber) is not
    # a POSIX group here.
    assert out.stdout.startswith("uid=150001(posixa) gid=150001(posixa)"), out.stdout
    assert "150100(pgrp)" in out.stdout and "npgrp" not in out.stdout, out.stdout
    # A user without RFC 2307 attributes does not exist for the node (sssd skips her): no login.
    assert rfc.run(["getent", "passwd", "plainb"], check=False).returncode == 2
    assert ssh(lab, rfc, "plainb", "id -u").returncode != 0
    # samba-tool gave her unixHomeDirectory /home/TEST/posixa: the cluster's home stays /home/<name>.
    res = ssh(lab, rfc, "posixa", "id -u; echo $HOME; stat -c %u:%g $HOME")
    assert res.returncode == 0 and res.stdout.split() == ["150001", "/home/posixa", "150001:150001"], (
        res.stdout, res.stderr)


def test_idmap_home_migrates_to_rfc2307_with_its_files(ids):
    lab, _, node = ids
    # Under ID mapping: migr logs in (home made by pam_mkhomedir) and leaves files; one in a shared directory.
    node.sh("mkdir -p /home/shared && chmod 1777 /home/shared")
    res = ssh(lab, node, "migr", "id -u; id -g; echo hi > ~/f; mkdir ~/d; echo x > ~/d/g; ln -s /etc/hostname ~/l;"
                                 " echo s > /home/shared/by-migr")
    assert res.returncode == 0, res.stderr
    old_uid, old_gid = map(int, res.stdout.split()[:2])
    assert old_uid >= 200000, old_uid  # sssd's ID mapping range
    record = node.run(["python3", TOOL, "record", "--root", "/home"])
    saved = json.loads(record.stdout)
    assert saved["users"][str(old_uid)] == {"name": "migr", "gid": old_gid}, saved
    node.write("/root/owners.json", record.stdout, mode="0600")
    # DirectoryAdmin gives her numbers; the node switches (a re-run of the join script: no request, cache dropped).
    lab.dc.run(["samba-tool", "user", "addunixattrs", "migr", "150002", "--gid-number", "150002"])
    rerun = node.start_bootstrap(timeout_arg=JOIN_TIMEOUT, args=[*default_args(node), *RFC2307]).wait()
    assert rerun.rc == 0, describe(rerun)
    assert "ID mode changed: cache dropped" in rerun.output and "no request to the join function" in rerun.output
    assert node.run(["id", "-u", "migr"]).stdout.strip() == "150002"
    # Before the remap her files carry a number that is nobody's now.
    assert node.run(["stat", "-c", "%u", "/home/migr/f"]).stdout.strip() == str(old_uid)
    # Everything of hers: the home (with pam_mkhomedir's skeleton files), her files, the link, the shared file.
    count = node.run(["/bin/sh", "-c", f"find /home -xdev \\( -uid {old_uid} -o -gid {old_gid} \\) | wc -l"])
    mine = int(count.stdout)
    assert mine >= 6, count.stdout
    dry = node.run(["python3", TOOL, "apply", "/root/owners.json", "--dry-run"])
    assert f"would change the owner of {mine} entries" in dry.stderr, dry.stderr
    assert node.run(["stat", "-c", "%u", "/home/migr/f"]).stdout.strip() == str(old_uid)
    applied = node.run(["python3", TOOL, "apply", "/root/owners.json"])
    assert f"changed the owner of {mine} entries" in applied.stderr, applied.stderr
    assert node.run(["/bin/sh", "-c", f"find /home -xdev \\( -uid {old_uid} -o -gid {old_gid} \\) | wc -l"]
                    ).stdout.strip() == "0"
    owners = node.run(["stat", "-c", "%n %u:%g", "/home/migr", "/home/migr/f", "/home/migr/d", "/home/migr/d/g",
                       "/home/shared/by-migr"]).stdout.split("\n")
    assert [line.split()[-1] for line in owners if line] == ["150002:150002"] * 5, owners
    assert node.run(["stat", "-c", "%u", "--", "/home/migr/l"]).stdout.strip() == "150002"  # the link itself
    assert node.run(["stat", "-L", "-c", "%u", "/etc/hostname"]).stdout.strip() == "0"  # never its target
    # She logs in and has her files, and can write.
    res = ssh(lab, node, "migr", "id -u; cat ~/f ~/d/g /home/shared/by-migr; touch ~/new && echo wrote")
    assert res.returncode == 0 and res.stdout.split() == ["150002", "hi", "x", "s", "wrote"], (res.stdout, res.stderr)
    again = node.run(["python3", TOOL, "apply", "/root/owners.json"])
    assert "changed the owner of 0 entries" in again.stderr, again.stderr


# -- end to end: DirectoryAdmin's numbers on rfc2307 nodes (needs the identity ledger) --------------------------------

def test_a_redeclared_user_keeps_her_uid_and_files_and_a_second_stack_gives_the_same(ids):
    """The issue's proof: a declared user removed and declared again keeps her UID/GID and her files; a second
    stack (another OU and function on the same directory) gives her the same numbers, so the same home stays hers."""
    from pcluster_ad.lambda_src.directory_admin import access_group_names

    from .test_identity_ledger import Stack

    lab, _, _ = ids
    one, two = Stack(lab, "ids-n"), Stack(lab, "ids-m")
    for st in (one, two):
        st.handle({"resource": "access", "allowedGroups": [], "adminGroups": [], "identityVersion": 1})
    first = one.user("olga")
    uid = first["uidNumber"]
    nodes = lab.add_nodes([{}, {}])
    for node, st in zip(nodes, (one, two), strict=True):
        res = node.start_bootstrap(timeout_arg=JOIN_TIMEOUT, args=[
            *default_args(node), "--id-mode", "rfc2307",
            "--stack-admins-group", access_group_names(st.name)["admins"]]).wait()
        assert res.rc == 0, describe(res)

    def as_olga(node, cmd):  # root's su: PAM's account phase (sssd's access decision) without her password
        return node.run(["su", "-", "olga", "-c", cmd], check=False, timeout=90)

    head = nodes[0]
    res = as_olga(head, "id -u; id -g; echo mine > ~/f")
    assert res.returncode == 0 and res.stdout.split() == [str(uid), str(uid)], (res.stdout, res.stderr)
    # Removed from the stack: her account goes (the home stays).
    assert one.user("olga", "delete")["result"] == "deleted"
    head.run(["sss_cache", "-E"])
    assert head.run(["id", "olga"], check=False).returncode != 0
    # Declared again: a new account (new SID; ID mapping would give a new UID), the same numbers, her file.
    again = one.user("olga")
    assert (again["uidNumber"], again["gidNumber"]) == (uid, uid), again
    head.run(["sss_cache", "-E"])
    res = as_olga(head, "id -u; cat ~/f; stat -c %u:%g ~/f")
    assert res.returncode == 0 and res.stdout.split() == [str(uid), "mine", f"{uid}:{uid}"], (res.stdout, res.stderr)
    # The second stack: she leaves the first and is declared there; its node sees the same numbers, and her home
    # (carried over with its numeric owners, as a shared /home would be) is hers there.
    one.user("olga", "delete")
    moved = two.user("olga")
    assert moved["uidNumber"] == uid, moved
    other = nodes[1]
    packed = head.run(["/bin/sh", "-c", "tar -C /home --numeric-owner -cf - olga | base64 -w0"]).stdout
    other.write("/tmp/olga.b64", packed, mode="0600")
    other.run(["/bin/sh", "-c", "base64 -d /tmp/olga.b64 | tar -C /home --numeric-owner -xpf -"])
    res = as_olga(other, "id -u; cat ~/f; echo more >> ~/f && echo wrote")
    assert res.returncode == 0 and res.stdout.split() == [str(uid), "mine", "wrote"], (res.stdout, res.stderr)
    for node in nodes:
        lab.remove_host(node)
