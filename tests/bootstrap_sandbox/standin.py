"""Stand-ins for the system commands the bootstrap scripts run (test-only, never product code).

Invoked as ``python -I standin.py NAME ARGS...`` by the small wrappers that Sandbox writes into its
bin/ directory, which is first on the scripts' PATH. Every call is recorded (name, argv, stdin) as one
JSON file in $PCLUSTER_AD_SANDBOX/rec/. Behaviour comes from $PCLUSTER_AD_SANDBOX/scenario.json.
Files the real commands would touch live under $PCLUSTER_AD_SANDBOX/root (the scripts' PCLUSTER_AD_ROOT).
"""

from __future__ import annotations

import glob
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

SANDBOX = ROOT = STATE = Path("/nonexistent")
SCENARIO: dict = {}

REALM_SSSD_CONF = """[sssd]
domains = {domain}
config_file_version = 2
services = nss, pam

[domain/{domain}]
default_shell = /bin/bash
krb5_store_password_if_offline = True
cache_credentials = True
krb5_realm = {realm}
realmd_tags = manages-system joined-with-adcli
id_provider = ad
fallback_homedir = /home/%u@%d
ad_domain = {domain}
use_fully_qualified_names = True
ldap_id_mapping = True
access_provider = ad
"""


def record(name: str, argv: list[str], stdin: str) -> None:
    rec = {"name": name, "argv": argv, "stdin": stdin, "t": time.time()}
    path = SANDBOX / "rec" / f"{time.time_ns()}-{name}-{uuid.uuid4().hex[:8]}.json"
    path.write_text(json.dumps(rec))


def sssd_running() -> bool:
    try:
        pid = int((ROOT / "run" / "sssd.pid").read_text().split()[0])
        return Path(f"/proc/{pid}/comm").read_text().strip() == "sssd"
    except (OSError, ValueError, IndexError):
        return False


def sssd_conf_short_names(domain: str) -> bool:
    """True when [domain/<domain>] of sssd.conf says use_fully_qualified_names = False."""
    try:
        text = (ROOT / "etc" / "sssd" / "sssd.conf").read_text()
    except OSError:
        return False
    section = None
    for line in text.splitlines():
        m = re.match(r"^\s*\[(.*)\]\s*$", line)
        if m:
            section = m.group(1).strip().lower()
            continue
        m = re.match(r"^\s*use_fully_qualified_names\s*=\s*(\S+)", line)
        if m and section == f"domain/{domain}":
            return m.group(1).lower() == "false"
    return False


def realm(args: list[str], stdin: str) -> int:
    joined = STATE / "joined"
    if args[:1] == ["join"] and SCENARIO.get("realm_join_hangs", 0):
        # A hanging join (unreachable DC, stuck realmd): the first N attempts never return.
        counter = STATE / "join-attempts"
        n = int(counter.read_text()) + 1 if counter.exists() else 1
        counter.write_text(str(n))
        if n <= SCENARIO["realm_join_hangs"]:
            time.sleep(3600)
    if args[:1] == ["list"]:
        if SCENARIO.get("realm_list_rc", 0):
            print("realm: Couldn't connect to realm service", file=sys.stderr)
            return SCENARIO["realm_list_rc"]
        if joined.exists() and not SCENARIO.get("realm_list_stale"):
            domain = joined.read_text().strip()
            print(f"{domain}\n  type: kerberos\n  realm-name: {domain.upper()}\n  domain-name: {domain}\n"
                  "  configured: kerberos-member\n  server-software: active-directory\n  client-software: sssd")
        return 0
    if args[:1] == ["join"]:
        domain = args[-1].lower()
        if joined.exists():
            print("realm: Already joined to this domain", file=sys.stderr)
            return 1
        print(f" * Resolving: _ldap._tcp.{domain}\n * Performing LDAP DSE lookup on: 10.99.0.1")
        if SCENARIO.get("realm_join_rc", 0):
            print("realm: Couldn't join realm: Insufficient permissions to join the domain", file=sys.stderr)
            return SCENARIO["realm_join_rc"]
        conf = ROOT / "etc" / "sssd" / "sssd.conf"
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(REALM_SSSD_CONF.format(domain=domain, realm=domain.upper()))
        conf.chmod(0o600)
        joined.write_text(domain)
        print(" * Successfully enrolled machine in realm")
        return 0
    return 2


def klist(args: list[str]) -> int:
    """`klist -k KEYTAB`: the host key that realm join leaves in the node's keytab."""
    joined = STATE / "joined"
    if args[:1] != ["-k"] or not joined.exists() or args[-1] != str(ROOT / "etc" / "krb5.keytab"):
        print("klist: Key table file not found", file=sys.stderr)
        return 1
    realm_name = joined.read_text().strip().upper()
    print(f"Keytab name: FILE:{args[-1]}\nKVNO Principal\n---- ----\n   2 NODE1$@{realm_name}")
    return 0


def start_fake_sssd() -> None:
    pidfile = ROOT / "run" / "sssd.pid"
    try:
        os.kill(int(pidfile.read_text()), signal.SIGTERM)
    except (OSError, ValueError):
        pass
    seconds = str(SCENARIO.get("sssd_daemon_seconds", 300))
    proc = subprocess.Popen([str(SANDBOX / "daemon" / "sssd"), seconds], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    with open(STATE / "pids", "a") as f:
        f.write(f"{proc.pid}\n")
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    pidfile.write_text(f"{proc.pid}\n")


def systemctl(args: list[str]) -> int:
    words = [a for a in args if not a.startswith("-")]
    verb, units = (words[0], [u.removesuffix(".service") for u in words[1:]]) if words else ("", [])
    if verb == "restart" and units == ["sssd"]:
        counter = STATE / "sssd-restarts"
        count = int(counter.read_text()) + 1 if counter.exists() else 1
        counter.write_text(str(count))
        if SCENARIO.get("sssd_starts", True) and count >= SCENARIO.get("sssd_starts_at_restart", 1):
            start_fake_sssd()
        return SCENARIO.get("sssd_restart_rc", 0)
    if verb == "reload" and units and units[0] in ("ssh", "sshd"):
        return SCENARIO.get("ssh_reload_rc", 0)
    if verb == "restart" and units and units[0] in ("ssh", "sshd"):
        return SCENARIO.get("ssh_restart_rc", 0)
    if verb == "is-active":
        return SCENARIO.get("is_active_rc", 0)
    return 0


def getent(args: list[str]) -> int:
    if args[:2] == ["-s", "sss"]:
        args = args[2:]
    if len(args) != 2 or args[0] != "passwd" or SCENARIO.get("getent_fails"):
        return 2
    name = args[1]
    domain = SCENARIO["domain"]
    # Like the real thing: a short name resolves only through a running sssd configured for short names.
    if name == SCENARIO["join_user_bare"] and sssd_running() and sssd_conf_short_names(domain):
        print(f"{name}:*:1082001104:1082000513:{name}:/home/{name}:/bin/bash")
        return 0
    return 2


def package_manager(name: str, args: list[str]) -> int:
    if "install" in args:
        for cmd in SCENARIO.get("install_provides", []):
            write_wrapper(cmd)
    return SCENARIO.get("install_rc", 0)


def write_wrapper(cmd: str) -> None:
    path = SANDBOX / "bin" / cmd
    path.write_text(f'#!/bin/sh\nexec "{sys.executable}" -I "{Path(__file__).resolve()}" {cmd} "$@"\n')
    path.chmod(0o755)


# --- a small sshd: -t validates, -T prints the effective values (first value wins, Include globs sorted).

SSHD_DEFAULTS = {"passwordauthentication": "yes", "kbdinteractiveauthentication": "yes", "usepam": "no"}
SSHD_KNOWN = {"include", "passwordauthentication", "kbdinteractiveauthentication", "challengeresponseauthentication",
              "usepam", "x11forwarding", "printmotd", "acceptenv", "subsystem", "match", "hostkey",
              "permitrootlogin", "port"}


def sshd_read(path: str, values: dict, errors: list, depth: int = 0) -> None:
    if depth > 8:
        errors.append(f"{path}: too many includes")
        return
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        errors.append(f"{path}: {e.strerror}")
        return
    in_match = False
    for n, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([^\s=]+)(?:\s*=\s*|\s+)(.*)$", line)
        key, rest = (m.group(1).lower(), m.group(2)) if m else (line.lower(), "")
        if key not in SSHD_KNOWN:
            errors.append(f"{path} line {n}: Bad configuration option: {m.group(1) if m else line}")
            continue
        if key == "match":
            in_match = True
            continue
        if key == "include":
            for pattern in rest.split():
                if not pattern.startswith("/"):
                    pattern = "/etc/ssh/" + pattern
                for inc in sorted(glob.glob(pattern)):
                    sshd_read(inc, values, errors, depth + 1)
            continue
        if key == "challengeresponseauthentication":
            key = "kbdinteractiveauthentication"
        if not in_match and key not in values:
            values[key] = rest.split()[0].lower() if rest else ""


def sshd(args: list[str]) -> int:
    config = args[args.index("-f") + 1] if "-f" in args else "/etc/ssh/sshd_config"
    privsep = SCENARIO.get("sshd_privsep_dir")
    if privsep and not os.path.isdir(privsep):
        print(f"Missing privilege separation directory: {privsep}", file=sys.stderr)
        return 255
    values: dict = {}
    errors: list = []
    sshd_read(config, values, errors)
    if SCENARIO.get("sshd_t_fails"):
        errors.append(SCENARIO["sshd_t_fails"])
    if errors:
        for e in errors:
            print(e, file=sys.stderr)
        return 255
    if "-T" in args:
        for key, default in SSHD_DEFAULTS.items():
            print(f"{key} {values.get(key, default)}")
    return 0


def main() -> int:
    global SANDBOX, ROOT, STATE, SCENARIO
    SANDBOX = Path(os.environ["PCLUSTER_AD_SANDBOX"])
    ROOT, STATE = SANDBOX / "root", SANDBOX / "state"
    SCENARIO = json.loads((SANDBOX / "scenario.json").read_text())
    name, args = sys.argv[1], sys.argv[2:]
    stdin = "" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.read()
    record(name, args, stdin)
    if name == "realm":
        return realm(args, stdin)
    if name == "klist":
        return klist(args)
    if name == "systemctl":
        return systemctl(args)
    if name == "getent":
        return getent(args)
    if name == "hostname":
        print(SCENARIO.get("hostname", "ip-10-0-0-12"))
        return 0
    if name in ("apt-get", "dnf", "yum"):
        return package_manager(name, args)
    if name == "authselect":
        if args[:1] == ["current"]:
            print(SCENARIO.get("authselect_current", "No existing configuration detected."))
        return 0
    if name == "sshd":
        return sshd(args)
    if name == "pam-auth-update":
        return int(SCENARIO.get("pam_auth_update_rc", 0))
    if name in ("iptables", "ip6tables"):
        return 1 if "-C" in args else 0  # record only; -C (check): the rule is not there yet
    return 0  # adcli, kinit, oddjobd, authconfig, sssd: record only


if __name__ == "__main__":
    sys.exit(main())
