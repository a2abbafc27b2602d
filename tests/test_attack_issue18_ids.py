"""Attack review of issue 18's identities (README "Stable UIDs", docs/design.md "Identities (issue 18)"): what the
stack and the node side allow with numbers that meet local accounts, and bootstrap/remap-home-owners.py run as root
over trees that users own and change while it runs. The directory side (the ledger's DACL, users and computer
accounts writing numbers) and the node side against sssd: tests/adlab/test_attack_issue18_ids.py.

Each attack is a test: refused, a plain test; a finding, xfail(strict) until it is fixed. Findings 1-4 were fixed
in 9d19b71: their tests are plain now (a comment names the finding)."""

from __future__ import annotations

import json
import os

import pytest

from pcluster_ad.lambda_src import directory_admin as da
from tests.test_access_script import box, join  # noqa: F401 - fixture
from tests.test_id_mode import domain_section
from tests.test_identity_config import problems, raw
from tests.test_identity_ledger import Dir, site
from tests.test_remap_home_owners import NEW, OLD, Nss, tool

# The default user of every ParallelCluster AMI (ec2-user on Amazon Linux and RHEL, ubuntu, rocky) has UID 1000 and
# passwordless sudo; whoever else is UID 1000 on a node owns its home and ~/.ssh/authorized_keys: root.
DEFAULT_USER_UID = 1000


# -- finding 1: numbers from the directory that are local accounts' and groups' ----------------------------------

# attack finding 1: fixed in 9d19b71 (a strict xfail until then)
def test_rfc2307_nodes_ignore_directory_numbers_of_local_accounts(box):  # noqa: F811
    result = join(box, "--id-mode", "rfc2307")
    assert result.rc == 0, result.output
    assert int(domain_section(box).get("min_id", "1")) > DEFAULT_USER_UID


def test_rfc2307_nodes_search_only_groups_above_local_gids(box):  # noqa: F811
    result = join(box, "--id-mode", "rfc2307")
    assert result.rc == 0, result.output
    section = domain_section(box)
    assert f"(gidNumber>={section.get('min_id')})" in section.get("ldap_group_search_base", ""), section


# -- finding 2: the stack itself hands out the default user's UID ------------------------------------------------

# attack finding 2: fixed in 9d19b71 (a strict xfail until then)
@pytest.mark.parametrize("where", ["pin", "range"])
def test_the_stack_never_gives_the_default_users_uid(where):
    if where == "pin":
        r = raw(users=[{"name": "alice", "uid": DEFAULT_USER_UID}])
    else:
        r = raw(identity={"mode": "rfc2307", "idRange": {"min": DEFAULT_USER_UID, "max": 5000}})
    assert any(str(DEFAULT_USER_UID) in p for p in problems(r))


def test_a_pin_below_1000_is_refused():
    assert any("999" in p for p in problems(raw(users=[{"name": "alice", "uid": 999}])))


# attack finding 2: fixed in 9d19b71 (a strict xfail until then)
@pytest.mark.parametrize("number", [0, DEFAULT_USER_UID])
def test_the_ledger_never_adopts_a_local_accounts_number(number):
    d = Dir(site())
    with pytest.raises(da.IdentityRefused):
        d.identity("user", "alice", current=number,
                   object_dn=f"CN=alice,OU=Users,OU=pcluster-ad-dev,{d.layout.base_dn}")
    assert da.LEDGER_NAME not in json.dumps(list(d.server.entries))


# -- remap-home-owners.py as root on trees users own -------------------------------------------------------------

def tree(tmp_path):
    """/home with alice's home (a file of hers) and, in a shared directory, a file of bob's that alice may read and
    write (group-writable): what protected_hardlinks (fs.protected_hardlinks = 1) lets her hardlink."""
    home = tmp_path / "home"
    (home / "alice").mkdir(parents=True)
    (home / "shared").mkdir()
    a_uid, a_gid = OLD["users"]["alice"]
    b_uid, b_gid = OLD["users"]["bob"]
    mine = home / "alice" / "notes"
    mine.write_text("alice")
    theirs = home / "shared" / "bobs-results"
    theirs.write_text("bob")
    for p, u, g in ((home / "alice", a_uid, a_gid), (mine, a_uid, a_gid), (home / "shared", b_uid, b_gid),
                    (theirs, b_uid, b_gid)):
        os.chown(p, u, g)
    return home, mine, theirs


def record_and_plan(home):
    old = Nss(OLD)
    return tool.record(str(home), old.getpwuid, old.getgrgid)


def test_a_hardlink_made_before_the_walk_keeps_its_owner(tmp_path):
    """A hardlink of bob's file planted in alice's home is bob's file: it gets bob's new number, not alice's."""
    home, _mine, theirs = tree(tmp_path)
    os.link(theirs, home / "alice" / "mine-now")
    saved = record_and_plan(home)
    new = Nss(NEW)
    tool.apply(saved, str(home), getpwnam=new.getpwnam, getgrnam=new.getgrnam)
    assert os.lstat(home / "alice" / "mine-now").st_uid == NEW["users"]["bob"][0]
    assert os.lstat(home / "alice" / "notes").st_uid == NEW["users"]["alice"][0]


def test_a_directory_swapped_for_a_symlink_during_the_walk_is_not_followed(tmp_path):
    """alice swaps her directory for a symlink to bob's tree right after the walk stated it: nothing of bob's (nor
    outside /home) changes owner to alice."""
    home, _mine, theirs = tree(tmp_path)
    (home / "alice" / "d").mkdir()
    os.chown(home / "alice" / "d", *OLD["users"]["alice"])
    saved = record_and_plan(home)

    def swap():
        os.rmdir(home / "alice" / "d")
        os.symlink(home / "shared", home / "alice" / "d")

    apply_racing(saved, home, "d", swap)
    assert os.lstat(home / "shared").st_uid == NEW["users"]["bob"][0]  # bob's (by his own entry), never alice's
    assert os.lstat(theirs).st_uid == NEW["users"]["bob"][0]


def apply_racing(saved, home, at: str, swap) -> None:
    """apply() while the user wins a race: `swap` runs right after the walk looked at the entry named `at`."""
    real = tool.walk

    def racing(root):
        for entry in real(root):
            if entry[1] == at:
                swap()
            yield entry

    new = Nss(NEW)
    try:
        tool.walk = racing
        tool.apply(saved, str(home), getpwnam=new.getpwnam, getgrnam=new.getgrnam)
    finally:
        tool.walk = real


# attack finding 3: fixed in 9d19b71 (a strict xfail until then)
def test_an_entry_swapped_for_a_hardlink_between_stat_and_chown_keeps_the_other_owner(tmp_path):
    home, mine, theirs = tree(tmp_path)
    saved = record_and_plan(home)

    def swap():  # alice wins the race: after the walk's stat of "notes", before apply's chown
        os.unlink(mine)
        os.link(theirs, mine)

    apply_racing(saved, home, "notes", swap)
    assert os.lstat(theirs).st_uid != NEW["users"]["alice"][0], "bob's file was given to alice"


# -- finding 4: the ledger's name key ----------------------------------------------------------------------------

# attack finding 4: fixed in 9d19b71 (a strict xfail until then)
def test_a_look_alike_name_does_not_get_anothers_number():
    d = Dir(site())
    kate = d.identity("user", "kate")["number"]
    assert "\u212aate".lower() == "kate"  # what the key is made with
    try:
        other = d.identity("user", "\u212aate")["number"]
    except da.IdentityRefused:
        return
    assert other != kate
