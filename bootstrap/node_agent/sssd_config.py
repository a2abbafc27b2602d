"""sssd.conf, krb5.conf and /etc/default/sssd as a join leaves them; the node's existing join."""

import os
import re
import sys

from .common import fail
from .files import write_atomic

SECTION_RE = re.compile(r"^\s*\[\s*([^\]]*?)\s*\]\s*$")
KEY_RE = re.compile(r"^\s*([A-Za-z0-9_]+)\s*=")

# How a user's UID/GID are found (--id-mode; issue 18): "idmap" derives them from the SID (sssd's ID mapping:
# a new directory or a re-created account gives new numbers); "rfc2307" reads uidNumber/gidNumber, which
# DirectoryAdmin allocates once per name (users and groups without them are not seen), with a private group
# per user (gidNumber = uidNumber, no group object: auto_private_groups = hybrid). Homes stay /home/<name>: with
# RFC 2307 sssd takes a user's unixHomeDirectory (a site's, or samba-tool's /home/<DOMAIN>/<name>) before
# fallback_homedir, which would move a home that ID mapping put at /home/<name> (measured in the lab).
ID_MODES = {"idmap": {"ldap_id_mapping": "True"},
            "rfc2307": {"ldap_id_mapping": "False", "auto_private_groups": "hybrid", "override_homedir": "/home/%u",
                        # Directory numbers below 2000 are the AMIs' local accounts (the default user 1000, its
                        # group, sudo's group 27...): ignored, so none shadows one (attack finding 1 of issue 18).
                        "min_id": "2000",
                        # min_id hides such a group from getent but not from a member's group list (sssd 2.8.2:
                        # `id` still showed gidNumber 27, and Debian's %sudo rule gave root; attack finding 1b):
                        # groups below 2000 are not searched at all. {dn}: the domain's naming context.
                        "ldap_group_search_base": "{dn}??(gidNumber>=2000)"}}


def sssd_conf(path, domain, id_mode="idmap"):
    # Set keys in [domain/<domain>] of sssd.conf, keeping everything else. Idempotent. True when the ID mode
    # changed (sssd's cached users then carry the other mode's numbers).
    settings = {"use_fully_qualified_names": "False", "fallback_homedir": "/home/%u",
                # Measured in tests/adlab (bench/RESULTS.md): a user in 200 groups logs in in ~2 s
                # instead of ~4 s cold; group member lists are no longer fetched (id, logins and
                # group-based access are unaffected). Referrals only slow AD lookups down.
                "ignore_group_members": "True", "ldap_referrals": "False", **ID_MODES[id_mode]}
    dn = ",".join(f"DC={part}" for part in domain.split("."))
    settings = {k: v.replace("{dn}", dn) for k, v in settings.items()}
    # A switch back: the other mode's own keys go (sssd's defaults again).
    dropped = {k for mode in ID_MODES.values() for k in mode} - set(ID_MODES[id_mode])
    try:
        lines = open(path).read().splitlines()
    except OSError as e:
        fail(f"cannot read {path}: {e.strerror}")
    sections = []  # (name, header index, end index exclusive)
    for i, line in enumerate(lines):
        m = SECTION_RE.match(line)
        if m:
            if sections:
                sections[-1][2] = i
            sections.append([m.group(1), i, len(lines)])
    domains = [s for s in sections if s[0].lower().startswith("domain/")]
    target = [s for s in domains if s[0].lower() == "domain/" + domain.lower()]
    if not target and len(domains) == 1:
        print(f"note: no [domain/{domain}] in {path}; editing its only domain section [{domains[0][0]}]")
        target = domains
    if not target:
        fail(f"no [domain/{domain}] section in {path}")
    name, start, end = target[0]
    body = lines[start + 1 : end]
    seen, out = set(), []
    before = {}
    for line in body:
        m = KEY_RE.match(line)
        key = m.group(1).lower() if m else None
        if key == "ldap_id_mapping":
            before[key] = line.split("=", 1)[1].strip().lower()
        if key in dropped:
            continue
        if key in settings:
            if key in seen:
                continue
            seen.add(key)
            out.append(f"{key} = {settings[key]}")
        else:
            out.append(line)
    missing = [k for k in settings if k not in seen]
    if missing:
        at = len(out)
        while at > 0 and not out[at - 1].strip():
            at -= 1
        out[at:at] = [f"{k} = {settings[k]}" for k in missing]
    new = lines[: start + 1] + out + lines[end:]
    # sssd's own default is ID mapping on for the ad provider: absent counts as "true".
    changed = before.get("ldap_id_mapping", "true") != settings["ldap_id_mapping"].lower()
    if new == lines:
        print(f"{path}: [{name}] already has " + ", ".join(f"{k} = {v}" for k, v in settings.items()))
        return changed
    write_atomic(path, "\n".join(new) + "\n", path)
    print(f"{path}: set in [{name}]: " + ", ".join(f"{k} = {v}" for k, v in settings.items()))
    return changed

def sssd_domain(path, domain, realm):
    # The sssd configuration of a join (what realmd writes after its adcli join: this script runs adcli itself,
    # so that the one-time password stays off every command line). Adds [sssd] domains/services and the
    # [domain/<domain>] section when missing; keeps everything else. Idempotent.
    base = {"id_provider": "ad", "access_provider": "ad", "ad_domain": domain, "krb5_realm": realm,
            "realmd_tags": "manages-system joined-with-adcli", "cache_credentials": "True",
            "krb5_store_password_if_offline": "True", "default_shell": "/bin/bash", "ldap_id_mapping": "True",
            "use_fully_qualified_names": "False", "fallback_homedir": "/home/%u"}
    try:
        lines = open(path).read().splitlines()
    except FileNotFoundError:
        lines = []
    except OSError as e:
        fail(f"cannot read {path}: {e.strerror}")
    names = [m.group(1).lower() for m in map(SECTION_RE.match, lines) if m]
    out = list(lines)
    if "sssd" not in names:
        out = ["[sssd]", f"domains = {domain}", "config_file_version = 2", "services = nss, pam", ""] + out
    else:
        section, found, header = None, False, 0
        for i, line in enumerate(out):
            m = SECTION_RE.match(line)
            if m:
                section = m.group(1).lower()
                header = i if section == "sssd" else header
                continue
            k = KEY_RE.match(line)
            if section == "sssd" and k and k.group(1).lower() == "domains":
                found = True
                doms = [d.strip() for d in line.split("=", 1)[1].split(",") if d.strip()]
                if domain.lower() not in [d.lower() for d in doms]:
                    out[i] = "domains = " + ", ".join(doms + [domain])
        if not found:
            out.insert(header + 1, f"domains = {domain}")
    if "domain/" + domain.lower() not in names:
        while out and not out[-1].strip():
            out.pop()
        out += ([""] if out else []) + [f"[domain/{domain}]"] + [f"{k} = {v}" for k, v in base.items()]
    if out == lines:
        return
    os.makedirs(os.path.dirname(path) or ".", mode=0o711, exist_ok=True)
    write_atomic(path, "\n".join(out) + "\n", path if lines else None)
    print(f"{path}: sssd configured for {domain}")

def krb5_default_realm(path, realm):
    # What realmd sets in krb5.conf after its join: [libdefaults] default_realm, so that a user's plain `kinit`
    # (and GSSAPI tools) name the domain. Everything else in the file stays. Idempotent.
    try:
        lines = open(path).read().splitlines()
    except FileNotFoundError:
        lines = []
    out, section, done, header = [], None, False, None
    for line in lines:
        m = SECTION_RE.match(line)
        if m:
            if section == "libdefaults" and not done:
                out.append(f"    default_realm = {realm}")
                done = True
            section = m.group(1).strip().lower()
            header = len(out) if section == "libdefaults" else header
        elif section == "libdefaults" and re.match(r"^\s*default_realm\s*=", line):
            if done:
                continue
            line, done = f"    default_realm = {realm}", True
        out.append(line)
    if not done:
        if header is None:
            out = ["[libdefaults]", f"    default_realm = {realm}", *([""] if out else []), *out]
        else:
            out.append(f"    default_realm = {realm}")
    if out == lines:
        return
    write_atomic(path, "\n".join(out) + "\n", path if lines else None)
    if not lines:
        os.chmod(path, 0o644)
    print(f"{path}: default_realm = {realm}")

def drop_sssd_cache(db, mc):
    # sssd's cache and its fast (memory-mapped) cache hold every user's and group's numbers: after a switch of
    # the ID mode they are wrong, and sss_cache only marks entries expired (a cached UID is still served while
    # the DC is unreachable). sssd is restarted right after this, from an empty cache.
    import glob
    gone = []
    for pattern in (os.path.join(db, "cache_*.ldb"), os.path.join(db, "timestamps_*.ldb"), os.path.join(mc, "*")):
        for f in glob.glob(pattern):
            try:
                os.unlink(f)
                gone.append(os.path.basename(f))
            except FileNotFoundError:
                pass
    print("sssd: ID mode changed: cache dropped (" + (", ".join(sorted(gone)) or "it was empty") + ")")

def node_config(conf, domain, realm, krb5, id_mode="idmap", db="/var/lib/sss/db", mc="/var/lib/sss/mc"):
    if id_mode not in ID_MODES:
        fail(f"unknown ID mode {id_mode!r} (one of: {', '.join(ID_MODES)})")
    existed = os.path.exists(conf)
    sssd_domain(conf, domain, realm)
    if sssd_conf(conf, domain, id_mode) and existed:
        drop_sssd_cache(db, mc)
    krb5_default_realm(krb5, realm)

def daemon_opts(path):
    # Debian 12 ships DAEMON_OPTS="-D -f" for the sssd init script; sssd >= 2.8 rejects -f, so sssd
    # does not start through the init script (adlab pitfall 1). Drop the -f. No effect under systemd.
    try:
        lines = open(path).read().splitlines()
    except FileNotFoundError:
        return
    new = []
    for line in lines:
        m = re.match(r'^(\s*DAEMON_OPTS=)(["\']?)(.*?)\2\s*$', line)
        if m and "-f" in m.group(3).split():
            opts = " ".join(w for w in m.group(3).split() if w != "-f")
            line = f'{m.group(1)}"{opts}"'
        new.append(line)
    if new != lines:
        write_atomic(path, "\n".join(new) + "\n", path)
        print(f"{path}: removed the -f option that sssd >= 2.8 rejects")


def joined_realm(conf, keytab):
    # stdin: `realm list` output. stdout: domain and realm of this node's existing join, one per line;
    # exit 1 when the node is not joined. A realm realmd lists as configured counts; so does the on-disk
    # join (realmd can hold a stale view, see realm_configured in the shell): an sssd [domain/D] section plus a host
    # key NAME$@<realm of D> in the keytab.
    block = {}
    blocks = []
    for line in sys.stdin.read().splitlines():
        if line and not line[0].isspace():
            block = {"name": line.strip()}
            blocks.append(block)
        elif ":" in line:
            k, v = line.split(":", 1)
            block[k.strip().lower()] = v.strip()
    for b in blocks:
        if b.get("configured", "no") not in ("", "no") and b.get("domain-name"):
            print(b["domain-name"].lower())
            print((b.get("realm-name") or b["domain-name"]).upper())
            return
    domains = {}
    section = None
    try:
        lines = open(conf).read().splitlines()
    except OSError:
        sys.exit(1)
    for line in lines:
        m = SECTION_RE.match(line)
        if m:
            section = m.group(1).lower()
            if section.startswith("domain/"):
                domains[section[7:]] = section[7:].upper()
            continue
        m = re.match(r"^\s*krb5_realm\s*=\s*(\S+)", line)
        if m and section and section.startswith("domain/"):
            domains[section[7:]] = m.group(1).upper()
    if not domains:
        sys.exit(1)
    import subprocess
    try:
        # stdout/stderr=PIPE and universal_newlines: capture_output and text are Python 3.7 (RHEL 8's python3 is 3.6)
        out = subprocess.run(["klist", "-k", keytab], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             universal_newlines=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        sys.exit(1)
    principals = [w for w in out.split() if "$@" in w]
    for domain, realm in domains.items():
        if any(p.upper().endswith("$@" + realm) for p in principals):
            print(domain)
            print(realm)
            return
    sys.exit(1)
