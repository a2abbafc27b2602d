#!/usr/bin/env python3
"""remap-home-owners.py: keep /home's files with their owners across a change of how UIDs/GIDs are found
(pcluster-ad:identity.mode idmap -> rfc2307, issue 18). Run as root on ONE node that mounts /home (the head node).

    remap-home-owners.py record [--root /home] > owners.json   # BEFORE the switch (names resolve to old numbers)
    remap-home-owners.py apply owners.json [--root /home] [--dry-run]   # AFTER it (names resolve to new numbers)

record: one walk of the tree, without following symlinks or leaving its file system; every UID and GID that owns
something is resolved to its name through the node's NSS (sssd) and written as JSON, with each user's primary GID.
No file is changed. apply: the same names are resolved again; each entry whose owner or group changed number is
lchown'ed to the new one (a symlink itself, never its target). A group that no longer resolves (e.g. "domain users"
has no gidNumber under rfc2307) becomes the owner's new primary group when it was the owner's old primary group;
otherwise it is left as it is and reported. Numbers that resolve to nobody are left alone. Idempotent: a second
apply finds nothing to change. Exit 0: done (report on stderr); 2: usage or bad input, nothing changed.
"""

from __future__ import annotations

import argparse
import ctypes
import grp
import json
import os
import pwd
import stat
import sys
from collections.abc import Callable, Iterator
from typing import Any

FORMAT = "pcluster-ad home owners v1"


Entry = tuple[int, str, str, os.stat_result]  # (directory fd, name in it, path for messages, lstat)
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def walk(root: str) -> Iterator[Entry]:
    """Every entry below root (root itself first) on root's file system, each relative to an open descriptor of
    its directory: a user who swaps a directory for a symlink while the walk runs (it walks trees users own) gets
    ENOTDIR/ELOOP, never a walk or a chown elsewhere (O_NOFOLLOW, *at() calls, no path is resolved twice)."""
    parent = os.open(os.path.dirname(os.path.abspath(root)) or "/", DIR_FLAGS)
    name = os.path.basename(os.path.abspath(root)) or "."
    try:
        top = os.stat(name, dir_fd=parent, follow_symlinks=False)
        yield parent, name, root, top
        if not stat.S_ISDIR(top.st_mode):
            return
        fd = os.open(name, DIR_FLAGS, dir_fd=parent)
    finally:
        os.close(parent)
    stack = [(fd, root, iter(os.scandir(fd)))]
    try:
        while stack:
            fd, path, entries = stack[-1]
            entry = next(entries, None)
            if entry is None:
                os.close(fd)
                stack.pop()
                continue
            try:
                st = os.stat(entry.name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue  # gone meanwhile
            child = os.path.join(path, entry.name)
            yield fd, entry.name, child, st
            if stat.S_ISDIR(st.st_mode) and st.st_dev == top.st_dev:
                try:
                    sub = os.open(entry.name, DIR_FLAGS, dir_fd=fd)
                except OSError as exc:  # replaced by a symlink or a file since the stat: not followed
                    print(f"skipped {child}: {exc.strerror}", file=sys.stderr)
                    continue
                if (os.fstat(sub).st_ino, os.fstat(sub).st_dev) != (st.st_ino, st.st_dev):
                    os.close(sub)  # another directory than the one just stated (swapped): not this walk's
                    print(f"skipped {child}: changed during the walk", file=sys.stderr)
                    continue
                stack.append((sub, child, iter(os.scandir(sub))))
    finally:
        for fd, _, _ in stack:
            os.close(fd)


AT_EMPTY_PATH = 0x1000  # linux/fcntl.h: fchownat on the descriptor itself (an O_PATH one included)
_libc = ctypes.CDLL(None, use_errno=True)


def chown_at(dir_fd: int, name: str, seen: os.stat_result, uid: int, gid: int) -> bool:
    """Chown the entry the decision was made on, or nothing: the name is opened without following it (O_PATH, a
    symlink itself too), and only when the inode and its owner are still the ones `seen` (the walk's lstat) is
    THAT inode chowned, through its descriptor. A user who swaps the entry meanwhile (a hardlink to a file of
    someone else, a symlink) gets her swap skipped: False."""
    try:
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    try:
        now = os.fstat(fd)
        if (now.st_dev, now.st_ino, now.st_uid, now.st_gid) != (seen.st_dev, seen.st_ino, seen.st_uid, seen.st_gid):
            return False
        if _libc.fchownat(fd, b"", uid, gid, AT_EMPTY_PATH) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), name)
        return True
    finally:
        os.close(fd)


def record(root: str, getpwuid: Callable[[int], Any] = pwd.getpwuid,
           getgrgid: Callable[[int], Any] = grp.getgrgid) -> dict[str, Any]:
    uids, gids = set(), set()
    for _, _, _, st in walk(root):
        uids.add(st.st_uid)
        gids.add(st.st_gid)
    users, groups, unknown = {}, {}, {"uids": [], "gids": []}
    for uid in sorted(uids):
        try:
            pw = getpwuid(uid)
            users[str(uid)] = {"name": pw.pw_name, "gid": pw.pw_gid}
        except KeyError:
            unknown["uids"].append(uid)
    for gid in sorted(gids):
        try:
            groups[str(gid)] = getgrgid(gid).gr_name
        except KeyError:
            unknown["gids"].append(gid)
    return {"format": FORMAT, "root": os.path.abspath(root), "users": users, "groups": groups, "unresolved": unknown}


class Plan:
    """What apply does: old -> new UIDs and GIDs by name, and each owner's (old primary GID, new primary GID) for
    entries whose group no longer resolves."""

    def __init__(self, saved: dict[str, Any], getpwnam: Callable[[str], Any] = pwd.getpwnam,
                 getgrnam: Callable[[str], Any] = grp.getgrnam):
        if saved.get("format") != FORMAT:
            raise ValueError(f"not a record of this tool (format {saved.get('format')!r}, expected {FORMAT!r})")
        self.uids: dict[int, int] = {}
        self.gids: dict[int, int] = {}
        self.primary: dict[int, tuple[int, int]] = {}
        self.gone: set[int] = {int(g) for g in saved["unresolved"]["gids"]}
        self.notes: list[str] = []
        for old, user in saved["users"].items():
            try:
                pw = getpwnam(user["name"])
            except KeyError:
                self.notes.append(f"user {user['name']} (was {old}) does not resolve now: its files keep UID {old}")
                continue
            if pw.pw_uid != int(old):
                self.uids[int(old)] = pw.pw_uid
            self.primary[int(old)] = (int(user["gid"]), pw.pw_gid)
        for old, name in saved["groups"].items():
            try:
                new = getgrnam(name).gr_gid
            except KeyError:
                self.gone.add(int(old))
                self.notes.append(f"group {name} (was {old}) does not resolve now: an entry of an owner whose primary"
                                  " group it was gets the owner's new primary group, others keep it")
                continue
            if new != int(old):
                self.gids[int(old)] = new
        # A number that is both an old and a new one would make the result depend on the walk's order: refused.
        for kind, m in (("UID", self.uids), ("GID", self.gids)):
            both = set(m) & set(m.values())
            if both:
                raise ValueError(f"{kind}s {sorted(both)} are old numbers of some names and new numbers of others:"
                                 " refusing (the rfc2307 range must not overlap the ID-mapped numbers)")

    def owner(self, uid: int, gid: int) -> tuple[int, int]:
        new_gid = self.gids.get(gid)
        if new_gid is None:
            old_primary, now_primary = self.primary.get(uid, (None, None))
            new_gid = now_primary if gid == old_primary and gid in self.gone else gid
        return self.uids.get(uid, uid), new_gid


def apply(saved: dict[str, Any], root: str, *, dry_run: bool = False,
          chown: Callable[[int, str, os.stat_result, int, int], bool] = chown_at,
          getpwnam: Callable[[str], Any] = pwd.getpwnam, getgrnam: Callable[[str], Any] = grp.getgrnam
          ) -> dict[str, Any]:
    p = Plan(saved, getpwnam, getgrnam)
    changed, skipped = 0, []
    for dir_fd, name, path, st in walk(root):
        new = p.owner(st.st_uid, st.st_gid)
        if new == (st.st_uid, st.st_gid):
            continue
        if dry_run or chown(dir_fd, name, st, *new):
            changed += 1
        else:
            skipped.append(path)
            print(f"skipped {path}: changed since it was looked at (run apply again)", file=sys.stderr)
    return {"changed": changed, "skipped": skipped, "dryRun": dry_run,
            "uids": {str(k): v for k, v in sorted(p.uids.items())},
            "gids": {str(k): v for k, v in sorted(p.gids.items())}, "notes": p.notes}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    rec = sub.add_parser("record", help="write the owners of everything under --root as JSON (stdout)")
    rec.add_argument("--root", default="/home")
    app = sub.add_parser("apply", help="give everything under --root the recorded owners' current numbers")
    app.add_argument("record_file")
    app.add_argument("--root", default=None, help="default: the root of the record")
    app.add_argument("--dry-run", action="store_true", help="count what would change, change nothing")
    args = ap.parse_args(argv)
    if args.cmd == "record":
        if not os.path.isdir(args.root):
            print(f"error: --root {args.root} is not a directory", file=sys.stderr)
            return 2
        out = record(args.root)
        json.dump(out, sys.stdout, indent=1, sort_keys=True)
        print()
        print(f"recorded {len(out['users'])} users, {len(out['groups'])} groups under {out['root']};"
              f" unresolved: {out['unresolved']}", file=sys.stderr)
        return 0
    try:
        with open(args.record_file) as f:
            saved = json.load(f)
        root = args.root or saved["root"]
        result = apply(saved, root, dry_run=args.dry_run)
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: {exc}; nothing changed", file=sys.stderr)
        return 2
    for note in result["notes"]:
        print(f"note: {note}", file=sys.stderr)
    verb = "would change" if args.dry_run else "changed"
    print(f"{verb} the owner of {result['changed']} entries under {root}; UIDs {result['uids']}, GIDs {result['gids']}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
