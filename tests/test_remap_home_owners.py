"""bootstrap/remap-home-owners.py with fake NSS answers on a real tree (root: real lchown). The same tool on a lab
node against sssd and the Samba DC, idmap -> rfc2307: tests/adlab/test_identity_rfc2307.py."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

TOOL = Path(__file__).resolve().parent.parent / "bootstrap" / "remap-home-owners.py"
spec = importlib.util.spec_from_file_location("remap_home_owners", TOOL)
tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool)

if os.geteuid() != 0:
    pytest.fail("these tests chown files: run them as root (the README's test command does)", pytrace=False)

# Under idmap: alice 1234801104 (primary "domain users" 1234800513), bob 1234801105, group physics 1234801200.
OLD = {"users": {"alice": (1234801104, 1234800513), "bob": (1234801105, 1234800513)},
       "groups": {"domain users": 1234800513, "physics": 1234801200}}
# Under rfc2307: alice 100001 (private group 100001), bob 100002; physics 100100; "domain users" has no gidNumber.
NEW = {"users": {"alice": (100001, 100001), "bob": (100002, 100002)}, "groups": {"physics": 100100}}


class Nss:
    def __init__(self, world):  # root resolves as on any node
        self.world = {"users": {"root": (0, 0), **world["users"]}, "groups": {"root": 0, **world["groups"]}}

    def getpwuid(self, uid):
        for name, (u, g) in self.world["users"].items():
            if u == uid:
                return SimpleNamespace(pw_name=name, pw_uid=u, pw_gid=g)
        raise KeyError(uid)

    def getpwnam(self, name):
        if name not in self.world["users"]:
            raise KeyError(name)
        u, g = self.world["users"][name]
        return SimpleNamespace(pw_name=name, pw_uid=u, pw_gid=g)

    def getgrgid(self, gid):
        for name, g in self.world["groups"].items():
            if g == gid:
                return SimpleNamespace(gr_name=name, gr_gid=g)
        raise KeyError(gid)

    def getgrnam(self, name):
        if name not in self.world["groups"]:
            raise KeyError(name)
        return SimpleNamespace(gr_name=name, gr_gid=self.world["groups"][name])


@pytest.fixture
def home(tmp_path):
    root = tmp_path / "home"
    a, b = OLD["users"]["alice"], OLD["users"]["bob"]
    for path, owner, kind in (("alice", a, "d"), ("alice/notes.txt", a, "f"), ("alice/data", a, "d"),
                              ("alice/data/run.out", (a[0], OLD["groups"]["physics"]), "f"),
                              ("bob", b, "d"), ("bob/x", b, "f"), ("shared", (0, 0), "d"),
                              ("shared/by-alice", a, "f"), ("shared/stranger", (4242, 4242), "f")):
        p = root / path
        p.parent.mkdir(parents=True, exist_ok=True)
        p.mkdir() if kind == "d" else p.write_text(path)
        os.lchown(p, *owner)
    os.lchown(root, 0, 0)
    outside = tmp_path / "outside"
    outside.write_text("not below /home")
    (root / "alice" / "link").symlink_to(outside)
    os.lchown(root / "alice" / "link", *a)
    return root


def owners(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.lstat().st_uid, p.lstat().st_gid) for p in sorted(root.rglob("*"))}


def test_record_then_apply_gives_every_name_its_new_numbers(home, tmp_path):
    old, new = Nss(OLD), Nss(NEW)
    saved = tool.record(str(home), old.getpwuid, old.getgrgid)
    assert saved["users"] == {"0": {"name": "root", "gid": 0}, "1234801104": {"name": "alice", "gid": 1234800513},
                              "1234801105": {"name": "bob", "gid": 1234800513}}
    assert saved["unresolved"] == {"uids": [4242], "gids": [4242]}
    outside = tmp_path / "outside"
    before = outside.lstat()
    result = tool.apply(saved, str(home), getpwnam=new.getpwnam, getgrnam=new.getgrnam)
    got = owners(home)
    assert got["alice"] == got["alice/notes.txt"] == got["alice/data"] == (100001, 100001)  # primary -> private
    assert got["alice/data/run.out"] == (100001, 100100)  # physics by name
    assert got["bob"] == got["bob/x"] == (100002, 100002)
    assert got["shared"] == (0, 0) and got["shared/by-alice"] == (100001, 100001)
    assert got["shared/stranger"] == (4242, 4242)  # nobody's: left alone
    assert got["alice/link"] == (100001, 100001)  # the link itself...
    after = outside.lstat()
    assert (after.st_uid, after.st_gid) == (before.st_uid, before.st_gid)  # ...never its target
    assert result["changed"] == 8 and result["uids"] == {"1234801104": 100001, "1234801105": 100002}
    assert any("domain users" in n for n in result["notes"])
    # Idempotent: nothing left to change.
    assert tool.apply(saved, str(home), getpwnam=new.getpwnam, getgrnam=new.getgrnam)["changed"] == 0


def test_dry_run_changes_nothing(home):
    old, new = Nss(OLD), Nss(NEW)
    saved = tool.record(str(home), old.getpwuid, old.getgrgid)
    before = owners(home)
    assert tool.apply(saved, str(home), dry_run=True, getpwnam=new.getpwnam, getgrnam=new.getgrnam)["changed"] == 8
    assert owners(home) == before


def test_a_user_that_no_longer_resolves_keeps_its_files(home):
    old = Nss(OLD)
    saved = tool.record(str(home), old.getpwuid, old.getgrgid)
    gone = Nss({"users": {"alice": NEW["users"]["alice"]}, "groups": NEW["groups"]})
    result = tool.apply(saved, str(home), getpwnam=gone.getpwnam, getgrnam=gone.getgrnam)
    assert owners(home)["bob/x"] == OLD["users"]["bob"]
    assert any("user bob" in n for n in result["notes"])


def test_overlapping_numbers_are_refused_before_any_change(home):
    old = Nss(OLD)
    saved = tool.record(str(home), old.getpwuid, old.getgrgid)
    # bob's new UID is alice's old one: the walk's order would decide who owns what.
    swapped = Nss({"users": {"alice": (100001, 100001), "bob": (OLD["users"]["alice"][0], 100002)},
                   "groups": NEW["groups"]})
    before = owners(home)
    with pytest.raises(ValueError, match="old numbers of some names and new numbers of others"):
        tool.apply(saved, str(home), getpwnam=swapped.getpwnam, getgrnam=swapped.getgrnam)
    assert owners(home) == before


def test_cli_refuses_a_foreign_file_and_a_missing_root(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps({"format": "something else"}))
    res = subprocess.run([sys.executable, str(TOOL), "apply", str(bad), "--root", str(tmp_path)],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "not a record of this tool" in res.stderr and "nothing changed" in res.stderr
    res = subprocess.run([sys.executable, str(TOOL), "record", "--root", str(tmp_path / "nope")],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "is not a directory" in res.stderr


def test_a_directory_swapped_for_a_symlink_during_the_walk_is_not_followed(home, tmp_path):
    """An attacker owns the tree being walked: right after the tool looked at her directory she replaces it with a
    symlink to somewhere else (here a directory holding another file of an old UID): the walk must not go there."""
    old, new = Nss(OLD), Nss(NEW)
    saved = tool.record(str(home), old.getpwuid, old.getgrgid)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    victim = elsewhere / "not-in-home"
    victim.write_text("x")
    os.lchown(victim, *OLD["users"]["bob"])

    def chown_then_swap(dir_fd, name, seen, uid, gid):
        assert tool.chown_at(dir_fd, name, seen, uid, gid)
        if name == "data":  # alice/data was just seen (and chowned) as a directory: now it is a symlink
            target = home / "alice" / "data"
            os.rename(target, home / "alice" / "data.moved")
            target.symlink_to(elsewhere)

    tool.apply(saved, str(home), chown=chown_then_swap, getpwnam=new.getpwnam, getgrnam=new.getgrnam)
    assert (victim.lstat().st_uid, victim.lstat().st_gid) == OLD["users"]["bob"]
    assert owners(home)["alice/notes.txt"] == (100001, 100001)  # the rest of the walk went on
