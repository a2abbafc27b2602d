"""Who may log in and who gets sudo (issues 12, 16, 18): sssd's access and fresh-identity drop-ins, the sudoers drop-in
of the admin groups, sudo.conf's group source, the ssh key hook (ssh_keys); after the join, the lookup of the
configured groups.

Commands take NAME=VALUE words (no secret among them): root (the PCLUSTER_AD_ROOT prefix), domain, allowed, admin
(comma-separated group lists), stack_users, stack_admins (the stack's groups), service (the accounts that never log
in), vpc_cidr. Side effects go through `run` (a command's exit code; root never runs anything of a user here) and
`which`; the log through `out`. A failure is the script's `die 11`: "ERROR: ..." on stdout, exit code 11.
"""

import os
import re
import sys

from .common import NodeError
from .files import fill, lines_of, read_text, temp_beside
from .node import Node

ACCESS_CONF = "/etc/sssd/conf.d/50-pcluster-ad-access.conf"
SUDOERS_FILE = "/etc/sudoers.d/50-pcluster-ad-admins"
# sssd's cached view of a user, kept as fresh as the directory at every login and for sudo in open sessions.
FRESH_CONF = "/etc/sssd/conf.d/50-pcluster-ad-fresh.conf"
SUDO_CONF = "/etc/sudo.conf"
SUDO_CONF_MARK = "# pcluster-ad: sudo asks NSS (sssd) for the user's groups at each call, not the session's list"
SPACE = " \t\n\v\f\r"  # [[:space:]] in the C locale
# Disabled (the DC's word at each login, whatever sssd has cached of the entry) and locked-out accounts.
STATE_FILTER = "(!(userAccountControl:1.2.840.113556.1.4.803:=2))(!(lockoutTime>=1))"
# GPO-based access control is off: sssd >= 1.14 enforces the domain's GPO logon rights by default, and a directory's
# GPOs (Simple AD's defaults) are not the site's. ad_enable_gc = False: sssd would send the access filter to the
# Global Catalog first and take its "allowed" as final, and a Windows GC does not hold lockoutTime (not in the
# partial attribute set): a locked-out account would pass there (attack finding 2 of issue 18). The domain's own LDAP
# holds every attribute; the directories the product serves are single-domain forests, so the GC adds nothing else.
AD_OPTIONS = "ad_gpo_access_control = disabled\nad_enable_gc = False\n"


# The node's log and commands (node.Node); each step takes them as parameters for the tests' fakes.
log = Node().log
run_command = Node().run


def split_groups(value):
    # "a, b ,c" -> one trimmed name each, empty ones dropped (AD group names cannot hold commas); like `read`, the
    # first line only.
    return [g.strip(SPACE) for g in value.split("\n")[0].split(",") if g.strip(SPACE)]


def access_section(root, domain):
    # The domain section sssd reads: realm's in sssd.conf once joined (its spelling), else [domain/<domain>].
    try:
        text = read_text(root + "/etc/sssd/sssd.conf")
    except OSError:
        text = ""
    m = re.search(re.escape("[domain/" + domain + "]"), text, re.I | re.A)
    return m.group(0)[1:-1] if m else "domain/" + domain


def new_file_beside(path, dir_mode=None):
    # PATH's folder (made if missing; DIR_MODE set), and a new private file in it to fill, check and rename over PATH.
    d = os.path.dirname(path)
    try:
        os.makedirs(d, exist_ok=True)
        if dir_mode is not None:
            os.chmod(d, dir_mode)
    except OSError:
        raise NodeError("access: cannot create " + d, 11) from None
    try:
        return temp_beside(path)
    except OSError:
        raise NodeError("access: cannot write in " + d, 11) from None


def write_snippet(path, body):
    # An sssd conf.d snippet, atomically (0600, directory 0711). sssd reads only conf.d/*.conf files that do not
    # start with a dot, so the temporary file is never read.
    tmp = new_file_beside(path, dir_mode=0o711)
    try:
        fill(tmp, body, 0o600)
        os.replace(tmp, path)
    except OSError:
        os.unlink(tmp)
        raise NodeError("access: cannot write " + path, 11) from None


def service_filter(service):
    # The ad_access_filter part that excludes the service accounts ("" without any), RFC 4515 escapes: each name is
    # a value inside the filter.
    out = ""
    for name in split_groups(service):
        for c, esc in (("\\", "\\5c"), ("*", "\\2a"), ("(", "\\28"), (")", "\\29")):
            name = name.replace(c, esc)
        out += "(!(sAMAccountName=" + name + "))"
    return out


def login_access(cfg, out=log):
    # Who passes PAM's account phase, for ssh and every other service. Local accounts are not sssd's: pam_sss answers
    # "user unknown" and the local admin keeps access. Computer accounts and the stack's service accounts never log
    # in, whatever the settings (issue 16): denied at the account phase, which password, key and GSSAPI logins pass.
    # The ad provider refuses disabled and expired accounts itself (sssd-ad(5): ldap_account_expire_policy = ad) on
    # its cached copy of the user (a key or su login does not refresh it; password logins: the KDC refuses at once);
    # the filter makes the DC refuse disabled and locked-out accounts (lockoutTime set: cleared by an unlock or the
    # next successful password logon after the lockout duration) at every login while online.
    conf = cfg["root"] + ACCESS_CONF
    service, stack_users = cfg["service"], cfg["stack_users"]
    groups = split_groups(cfg["allowed"])
    listed = ", ".join(groups)
    section = access_section(cfg["root"], cfg["domain"])
    # DOM:<domain>: before the filter: sssd reads a colon as the start of that keyword, so a filter with extensible
    # matches (memberOf:<in-chain OID>:=, userAccountControl:<bit-and OID>:=) must carry it (sssd-ad(5),
    # ad_access_filter; without it sssd logs "could not be parsed" and refuses everyone).
    dom = "DOM:" + (section[len("domain/"):] if section.startswith("domain/") else section) + ":"
    never = " and " + service if service else ""
    if stack_users:
        # With the stack's group, one filter for every allowedGroups, empty included (DirectoryAdmin then keeps every
        # user account of the domain in the group): a later allowedGroups closes this node without a re-run (issue
        # 18, attack finding 1).
        body = (f"# pcluster-ad (pcluster-ad:access.allowedGroups, as the stack's group {stack_users}): only its "
                "members\n# (nested groups count; the DC decides at each login) may log in; never a disabled, "
                "expired or locked-out account,\n# a computer account or a service account. allowedGroups empty: "
                "the stack keeps every user account in the group.\n"
                f"[{section}]\naccess_provider = ad\nad_access_filter = {dom}(&(memberOf:1.2.840.113556.1.4.1941:="
                f"{stack_users})(!(objectClass=computer)){STATE_FILTER}{service_filter(service)})\n{AD_OPTIONS}")
        msg = (f"access: only in-chain members of the stack's group {stack_users} (allowed groups: "
               f"{listed or 'none: every user account of the domain, kept in the group by the stack'}) may log in, "
               f"checked by the DC at each login; disabled, expired, locked-out and computer accounts{never} never "
               f"({conf})")
    elif not groups:
        body = ("# pcluster-ad: every domain user may log in, but no disabled, expired or locked-out account, no "
                "computer\n# account and no service account.\n"
                f"[{section}]\naccess_provider = ad\nad_access_filter = {dom}(&(!(objectClass=computer))"
                f"{STATE_FILTER}{service_filter(service)})\n{AD_OPTIONS}")
        msg = (f"access: every domain user may log in (no allowed groups configured); disabled, expired, locked-out "
               f"and computer accounts{never} never ({conf})")
    else:
        # sssd's simple provider: members of the allowed groups (nested membership counts: sssd resolves the user's
        # groups through tokenGroups); it compares names, so the service accounts go in as they are.
        body = ("# pcluster-ad (pcluster-ad:access.allowedGroups): only members of these AD groups may log in; "
                "never a\n# computer account or a service account.\n"
                f"[{section}]\naccess_provider = simple\nsimple_allow_groups = {listed}\n"
                "simple_deny_groups = Domain Computers\n" + (f"simple_deny_users = {service}\n" if service else ""))
        msg = f"access: only members of these AD groups may log in: {listed}; computer accounts{never} never ({conf})"
    write_snippet(conf, body)
    out(msg)
    fresh_identity(cfg, section, out)


def fresh_identity(cfg, section, out=log):
    # What a login and sudo see of a user must be the directory's, within a stated time (issue 18, attack findings
    # 3 and 4 and the expired account; measured in tests/adlab/test_attack_issue18.py, test_access_directory.py):
    # - pac_lifetime = 0: after any Kerberos login (a password login, a sudo with the AD password) sssd keeps the
    #   ticket's PAC and, while it is valid (300 s by default), refreshes a user's groups FROM IT instead of from
    #   LDAP, and without re-reading the user entry (sssd ad_id.c: check_if_pac_is_available, ad_pac.c): a key
    #   login then kept a removed admin's group and an expired account's old accountExpires. With 0 every refresh
    #   reads LDAP.
    # - pam_initgroups_scheme = always: sssd's PAM responder refreshes the user (entry and groups, online) at each
    #   PAM request (pamsrv_cmd.c, pam_check_user_search_next); by default it skips that when the user has any
    #   process on the node (a running job), and a new login there would use the cache as it was.
    # - entry_cache_user_timeout = 30, memcache_size_initgroups = 0 (and sudo's group_source dynamic): sudo in a
    #   session opened before asks NSS for the user's groups; sssd answers from its cache while the entry is younger
    #   than 30 s (older: refreshed online), and with no fast-cache copy of group lists (it would be served by the
    #   NSS client itself for memcache_timeout, 300 s, whatever sssd knows).
    conf = cfg["root"] + FRESH_CONF
    write_snippet(conf, "# pcluster-ad: group memberships and account state as the directory has them, at every "
                        "login (the next one)\n# and for sudo in sessions opened before (within "
                        "entry_cache_user_timeout). See join-domain.sh.\n"
                        f"[{section}]\nentry_cache_user_timeout = 30\n\n[pam]\npam_initgroups_scheme = always\n\n"
                        "[pac]\npac_lifetime = 0\n\n[nss]\nmemcache_size_initgroups = 0\n")
    out("access: sssd refreshes a user from the directory at every login (no PAC shortcut) and her group list "
        f"after 30 s ({conf})")


def sudo_group_source_dynamic(cfg, out=log, which=None):
    # sudo's default group source (adaptive) is the kernel's list of the session, fixed when the user logged in: an
    # admin removed from the admins group kept sudo in every session she had open. "Set group_source dynamic"
    # (sudo.conf(5)) makes sudo ask NSS at each call. sudo uses the LAST such line: ours is appended, everything else
    # in the file stays (an earlier line of ours is replaced). sudo reads the file at each call.
    import shutil
    conf = cfg["root"] + SUDO_CONF
    exists = os.path.exists(conf)
    if not exists and not (which or shutil.which)("sudo"):
        out(f"access: sudo is not installed: {SUDO_CONF} left alone")
        return
    body, last, mode = "", "", 0o644
    if exists:
        try:
            body = read_text(conf).rstrip("\n")
            mode = os.stat(conf).st_mode & 0o7777
        except OSError:
            raise NodeError("access: cannot read " + conf, 11) from None
        for line in lines_of(body):
            if re.match(r"[ \t\n\v\f\r]*Set[ \t\n\v\f\r]+group_source[ \t\n\v\f\r]", line, re.I | re.A):
                words = re.split("[ \t]+", line.strip(" \t"))  # awk's fields
                last = words[2].lower() if len(words) > 2 else ""
    if last == "dynamic":
        out(f"access: sudo asks NSS for the user's groups at each call ({conf}: group_source dynamic)")
        return
    kept, skip = [], False
    for line in lines_of(body):
        if skip:
            skip = False
            if line == "Set group_source dynamic":
                continue
        if line == SUDO_CONF_MARK:
            skip = True
            continue
        kept.append(line)
    text = "".join(x + "\n" for x in kept) + SUDO_CONF_MARK + "\nSet group_source dynamic\n"
    try:
        tmp = temp_beside(conf)
    except OSError:
        raise NodeError("access: cannot write next to " + conf, 11) from None
    try:
        fill(tmp, text, mode)
        os.replace(tmp, conf)
    except OSError:
        os.unlink(tmp)
        raise NodeError("access: cannot write " + conf, 11) from None
    out(f"access: sudo asks NSS for the user's groups at each call: 'Set group_source dynamic' in {conf}"
        + (f" (it had group_source {last})" if last else ""))


def sudoers_word(s):
    # One sudoers word: every ASCII character other than letters, digits, '_', '.', '-' backslash-escaped (spaces in
    # "Domain Admins", and the characters sudoers gives a meaning: ! ( ) # , : = % ...); other characters as they are.
    return "".join(c if ord(c) > 127 or c.isalnum() or c in "_.-" else "\\" + c for c in s)


def admin_access(cfg, out=log, run=run_command, which=None):
    # Members of the admin groups may run any command as any user, with their own (AD) password. The file is checked
    # with visudo before it is installed: a broken drop-in would break sudo for everyone.
    import shutil
    path = cfg["root"] + SUDOERS_FILE
    # With the stack's admins group, sudo follows its membership (the directory's data): the one line, always.
    groups = [cfg["stack_admins"]] if cfg["stack_admins"] else split_groups(cfg["admin"])
    if not groups:
        if os.path.lexists(path):
            try:
                os.remove(path)
            except OSError:
                raise NodeError("access: cannot remove " + path, 11) from None
        return
    if not (which or shutil.which)("visudo"):
        raise NodeError("access: visudo not found (is sudo installed?): cannot give sudo to the admin groups", 11)
    body = "# pcluster-ad (pcluster-ad:access.adminGroups): members of these AD groups may run any command, with " \
           "their password.\n" + "".join(f"%{sudoers_word(g)} ALL=(ALL:ALL) ALL\n" for g in groups)
    # A name with a dot: sudo's includedir skips it while it is being written and checked.
    tmp = new_file_beside(path)
    try:
        fill(tmp, body, 0o440)
    except OSError:
        os.unlink(tmp)
        raise NodeError("access: cannot write " + tmp, 11) from None
    if run(["visudo", "-c", "-q", "-f", tmp]) != 0:
        os.unlink(tmp)
        raise NodeError("access: visudo refuses the sudoers drop-in for the admin groups; nothing installed", 11)
    try:
        os.replace(tmp, path)
    except OSError:
        os.unlink(tmp)
        raise NodeError("access: cannot install " + path, 11) from None
    out(f"access: sudo (with password) for members of: {', '.join(groups)} ({path})")


def check_groups(cfg, out=log, run=run_command):
    # Groups that do not resolve are logged (their members cannot log in / get no sudo); nothing else changes: local
    # accounts never depend on them.
    missing = found = 0
    for kind, value in (("allowedGroups", cfg["allowed"]), ("adminGroups", cfg["admin"])):
        for g in split_groups(value):
            if run(["getent", "group", g], quiet=True) == 0:
                found += kind == "allowedGroups"
            else:
                out(f"WARNING: access: AD group '{g}' (pcluster-ad:access.{kind}) was not found in {cfg['domain']}: "
                    "its members get no access through it. Check the name (pre-Windows 2000 group name), or create "
                    "the group. Local accounts are not affected.")
                missing += kind == "allowedGroups"
    if missing and not found:
        out("WARNING: access: none of the allowed groups exists: no AD user can log in to this node until one does "
            "(local accounts still can)")


KEYS = ("root", "domain", "allowed", "admin", "stack_users", "stack_admins", "service", "vpc_cidr")


def settings(words):
    cfg = dict.fromkeys(KEYS, "")
    for w in words:
        key, eq, value = w.partition("=")
        if not eq or key not in cfg:
            raise ValueError(f"access: unknown setting {w!r} (NAME=VALUE, NAME one of {', '.join(KEYS)})")
        cfg[key] = value
    return cfg


def configure(cfg, out=log, run=run_command, which=None):
    # Everything before the join (and on a re-run before sssd's restart), in the script's order.
    from . import ssh_keys
    login_access(cfg, out)
    admin_access(cfg, out, run, which)
    sudo_group_source_dynamic(cfg, out, which)
    ssh_keys.install(cfg["root"], cfg["vpc_cidr"], out)


def cli(step, *words):
    try:
        step(settings(words))
    except NodeError as e:
        log("ERROR: " + str(e))
        sys.exit(e.code)


def configure_cli(*words):
    cli(configure, *words)


def login_access_cli(*words):
    cli(login_access, *words)


def check_groups_cli(*words):
    # Never a failure (a WARNING): local accounts never depend on these groups, and a step may follow.
    try:
        check_groups(settings(words))
    except (NodeError, ValueError):
        log("WARNING: access: the configured groups could not be looked up")
