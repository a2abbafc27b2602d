"""PAM: home directories made at first login (mkhomedir), and on Debian/Ubuntu an unused pam_cap dropped.

Debian family: pam-auth-update (both changes in ONE run: each run rewrites every common-* file); RHEL family:
authselect (or authconfig where there is none) and oddjobd, which makes the homes there.
"""

import os
import re

from .common import NodeError
from .node import Node


def pam_cap_unused(root, os_family, log):
    # Debian and Ubuntu's common-auth runs pam_cap, which resolves every group of the user again at each login
    # (1.7 s of a 5 s cold login for a user in 200 groups). It grants nothing unless capability.conf says so:
    # dropped only then.
    if os_family != "debian":
        return False
    try:
        with open(root + "/etc/pam.d/common-auth", errors="replace") as f:
            if "pam_cap.so" not in f.read():
                return False
    except OSError:
        return False
    conf = root + "/etc/security/capability.conf"
    if os.path.exists(conf):
        with open(conf, errors="replace") as f:
            grants = [line for line in f.read().splitlines()
                      if not re.match(r"\s*(#|$)", line) and not re.match(r"\s*none\s+\*\s*$", line)]
        if grants:
            log(f"pam: keeping pam_cap ({conf} grants capabilities)")
            return False
    log(f"pam: dropping pam_cap from common-auth ({conf} grants nothing)")
    return True


def debian_pam_update(node, root):
    """True when mkhomedir is on (pam_cap dropped too if unused; if that combined run fails, mkhomedir alone)."""
    args = (["--disable", "capability"] if pam_cap_unused(root, "debian", node.log) else []) + ["--enable", "mkhomedir"]
    node.log(f"pam: enabling mkhomedir (pam-auth-update {' '.join(args)})")
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    if node.run(["pam-auth-update"] + args, env=env) == 0:
        return True
    if len(args) <= 2:
        return False
    node.log(f"WARNING: pam-auth-update {' '.join(args)} failed; enabling mkhomedir alone (pam_cap stays: logins "
             "stay slower)")
    return node.run(["pam-auth-update", "--enable", "mkhomedir"], env=env) == 0


def enable_mkhomedir(node, root, os_family, pam_updated):
    if os_family == "debian":
        if pam_updated:
            return  # done while the join ran (the script's start_pam_update)
        if not debian_pam_update(node, root):
            raise NodeError("pam-auth-update --enable mkhomedir failed")
        return
    if node.which("authselect"):
        if "Profile ID: sssd" in node.output(["authselect", "current"]):
            node.log("pam: authselect profile sssd is active; enabling feature with-mkhomedir")
            if node.run(["authselect", "enable-feature", "with-mkhomedir"]) != 0:
                raise NodeError("authselect enable-feature with-mkhomedir failed")
        else:
            node.log("pam: authselect select sssd with-mkhomedir")
            if node.run(["authselect", "select", "sssd", "with-mkhomedir", "--force"]) != 0:
                raise NodeError("authselect select sssd with-mkhomedir failed")
    else:
        node.log("pam: authconfig --enablemkhomedir")
        if node.run(["authconfig", "--enablesssd", "--enablesssdauth", "--enablemkhomedir", "--update"]) != 0:
            raise NodeError("authconfig --enablemkhomedir failed")
    if node.run(["systemctl", "enable", "--now", "oddjobd.service"]) != 0:
        raise NodeError("could not enable and start oddjobd (home creation)")


def pam_update_cli(root):
    # Debian family, in the background while the join runs (realmd leaves PAM alone on that family).
    node = Node()

    def update():
        if not debian_pam_update(node, root):
            raise NodeError("pam-auth-update --enable mkhomedir failed")

    node.main(update)
