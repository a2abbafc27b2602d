"""The per-user ssh key for MPI: the key script that sshd runs AS THE USER through /etc/ssh/sshrc (issue 16: never
as root), /etc/ssh/sshrc itself, and the removal of the root pam_exec hook of versions before issue 16.

Root writes these files only; it never runs the key script nor anything else of a user (docs/design.md, "SSH between
nodes for AD users")."""

import os

from .common import NodeError
from .files import lines_of, read_text, replace_file

HOOK = "/usr/local/libexec/pcluster-ad-user-ssh-key"
SSHRC = "/etc/ssh/sshrc"
# What versions before issue 16 installed: a root pam_exec hook in sshd's PAM session stack (removed on a re-run).
OLD_HOOK = "/usr/local/sbin/pcluster-ad-user-ssh-key"
OLD_PAM_COMMENT = "# pcluster-ad: ssh key between cluster nodes for AD users (first login)"

# The per-user key script. sshd runs /etc/ssh/sshrc, which calls it, AS THE USER (ParallelCluster's
# GenerateSshKeysForUsers, but never as root: issue 16). @VPC_CIDR@ becomes the quoted CIDR when installed.
HOOK_TEXT = r"""#!/bin/sh
# pcluster-ad-user-ssh-key (installed by join-domain.sh): ssh between cluster nodes (MPI) for AD users.
# /etc/ssh/sshrc runs it at every ssh session, and sshd runs that file AS THE USER: after dropping
# privileges, before the user's shell or command (sshd(8), SSHRC). It makes ~/.ssh/id_ed25519 (no
# passphrase) if there is none and adds its public key to the user's OWN ~/.ssh/authorized_keys, usable
# only from the cluster's VPC (from="CIDR"); the home is shared by all nodes. A key the user already has
# stays as it is. Nothing for root, system accounts or users that sssd does not know; nothing on stdout
# (scp and sftp sessions run it too); a failure never blocks a login. The user's own environment (PATH...)
# is used as it is: it runs with the user's rights only, like anything else in the session.
vpc_cidr=@VPC_CIDR@
[ -n "$HOME" ] && [ -e "$HOME/.ssh/id_ed25519" ] && exit 0
uid=$(id -u) || exit 0
[ "$uid" -ge 1000 ] 2>/dev/null || exit 0
entry=$(getent -s sss passwd "$uid") || exit 0
user=$(printf '%s\n' "$entry" | cut -d: -f1)
home=$(printf '%s\n' "$entry" | cut -d: -f6)
[ -n "$home" ] && cd "$home" 2>/dev/null || exit 0
[ -e .ssh/id_ed25519 ] && exit 0
umask 077
mkdir -p .ssh 2>/dev/null && chmod 700 .ssh 2>/dev/null || exit 0
tmp=$(mktemp -d .ssh/.pcluster-ad-key.XXXXXX 2>/dev/null) || exit 0
# ln refuses when a parallel session (this node or another) made the key first: that key is kept.
if ssh-keygen -q -t ed25519 -N "" -C "$user@pcluster-ad cluster-internal" -f "$tmp/key" </dev/null >/dev/null 2>&1 \
    && ln "$tmp/key" .ssh/id_ed25519 2>/dev/null; then
    mv -f "$tmp/key.pub" .ssh/id_ed25519.pub
    line=$(cat .ssh/id_ed25519.pub)
    [ -n "$vpc_cidr" ] && line="from=\"$vpc_cidr\" $line"
    if [ -s .ssh/authorized_keys ] && [ -n "$(tail -c 1 .ssh/authorized_keys)" ]; then
        printf '\n' >>.ssh/authorized_keys
    fi
    printf '%s\n' "$line" >>.ssh/authorized_keys && chmod 600 .ssh/authorized_keys
fi
rm -rf "$tmp"
exit 0
"""

# /etc/ssh/sshrc when the node has none: sshd then skips its own xauth call, so X11 cookies are added here,
# as the example in sshd(8) does. The marked line that calls the key script follows it.
SSHRC_HEADER = "# pcluster-ad: /etc/ssh/sshrc, installed by join-domain.sh (a re-run rewrites it)."
SSHRC_TEXT = """# sshd runs this file with /bin/sh AS THE USER, after dropping privileges and before the user's shell or
# command, at every session, unless the user has an own ~/.ssh/rc (sshd(8), SSHRC). As it exists, sshd
# does not run xauth itself: X11 forwarding cookies are added here (the example in sshd(8)).
if read -r proto cookie && [ -n "$DISPLAY" ]; then
\tif [ "$(echo "$DISPLAY" | cut -c1-10)" = 'localhost:' ]; then
\t\t# X11UseLocalhost=yes
\t\techo add "unix:$(echo "$DISPLAY" | cut -c11-)" "$proto" "$cookie"
\telse
\t\t# X11UseLocalhost=no
\t\techo add "$DISPLAY" "$proto" "$cookie"
\tfi | xauth -q -
fi
"""
SSHRC_MARK = "# pcluster-ad-user-ssh-key"
SSHRC_LINE = HOOK + " </dev/null >/dev/null 2>&1 || true " + SSHRC_MARK + " (ssh key for MPI, join-domain.sh)"


def remove_old_hook(root, out):
    # Nodes set up before issue 16 ran the key hook as root from sshd's PAM session stack (pam_exec, after Debian's
    # `pam_env user_readenv=1`: the user's ~/.pam_environment reached a root process). Both go.
    pam, old = root + "/etc/pam.d/sshd", root + OLD_HOOK
    try:
        lines = lines_of(read_text(pam)) if os.path.isfile(pam) else []
    except OSError:
        lines = []
    if any("pam_exec" in line and OLD_HOOK in line for line in lines):
        kept = [x for x in lines if not ("pam_exec" in x and OLD_HOOK in x) and x != OLD_PAM_COMMENT]
        try:
            mode = os.stat(pam).st_mode & 0o7777
        except OSError:
            raise NodeError("access: cannot read " + pam, 11) from None
        try:
            replace_file(pam, "\n".join(kept).rstrip("\n") + "\n", mode)
        except OSError:
            raise NodeError("access: cannot edit " + pam, 11) from None
        out(f"access: removed the old root ssh key hook (pam_exec) from {OLD_HOOK} in {pam}")
    if os.path.lexists(old):
        try:
            os.remove(old)
        except OSError:
            raise NodeError("access: cannot remove " + old, 11) from None
        out("access: removed the old root ssh key hook " + OLD_HOOK)


def first_line(path):
    try:
        with open(path, "rb") as f:
            return f.readline().decode("utf-8", "surrogateescape").rstrip("\n")
    except OSError:
        return None


def install(root, vpc_cidr, out):
    # The key script (VPC_CIDR checked by the script's valid_ipv4_cidr: digits, dots and a slash) and the line of
    # /etc/ssh/sshrc that runs it.
    hook, sshrc = root + HOOK, root + SSHRC
    remove_old_hook(root, out)
    try:
        os.makedirs(os.path.dirname(hook), exist_ok=True)
        replace_file(hook, HOOK_TEXT.replace("@VPC_CIDR@", f"'{vpc_cidr}'", 1), 0o755)
    except OSError:
        raise NodeError("access: cannot write " + hook, 11) from None
    if not os.path.isdir(root + "/etc/ssh"):
        out("access: no /etc/ssh (sshd is not installed): no ssh key between nodes")
        return
    if not os.path.exists(sshrc) or first_line(sshrc) == SSHRC_HEADER:
        try:
            replace_file(sshrc, SSHRC_HEADER + "\n" + SSHRC_TEXT + SSHRC_LINE + "\n", 0o644)
        except OSError:
            raise NodeError("access: cannot write " + sshrc, 11) from None
    else:
        # The node's own sshrc stays: our one marked line goes first (after a #! line), where no exit can skip it.
        try:
            body = "\n".join(x for x in lines_of(read_text(sshrc)) if SSHRC_MARK not in x).rstrip("\n")
            mode = os.stat(sshrc).st_mode & 0o7777
        except OSError:
            raise NodeError("access: cannot read " + sshrc, 11) from None
        first, _, rest = body.partition("\n")
        if first.startswith("#!"):
            body = first + "\n" + SSHRC_LINE + ("\n" + rest if rest else "")
        else:
            body = SSHRC_LINE + ("\n" + body if body else "")
        try:
            replace_file(sshrc, body + "\n", mode)
        except OSError:
            raise NodeError("access: cannot edit " + sshrc, 11) from None
        out(f"access: {SSHRC} was there already: kept, with one added line that runs {HOOK}")
    out(f"access: AD users get an ssh key between nodes at their first ssh login ({HOOK}, run as the user by {SSHRC})")
    if vpc_cidr:
        out(f'access: that key opens the account only from the VPC: from="{vpc_cidr}"')
    else:
        out("access: no VPC CIDR (none baked into this copy, no --vpc-cidr): that key is not limited to the VPC "
            "(no from= restriction)")
