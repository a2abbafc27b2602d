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


def realm(args: list[str], stdin: str) -> int:
    """`realm list` only: the script joins with adcli itself (issue 16); a `realm join` is refused here."""
    joined = STATE / "joined"
    if args[:1] == ["list"]:
        if SCENARIO.get("realm_list_rc", 0):
            print("realm: Couldn't connect to realm service", file=sys.stderr)
            return SCENARIO["realm_list_rc"]
        if joined.exists() and not SCENARIO.get("realm_list_stale"):
            domain = joined.read_text().strip()
            print(f"{domain}\n  type: kerberos\n  realm-name: {domain.upper()}\n  domain-name: {domain}\n"
                  "  configured: kerberos-member\n  server-software: active-directory\n  client-software: sssd")
        return 0
    print(f"realm stand-in: unexpected call realm {' '.join(args)}", file=sys.stderr)
    return 2


def adcli(args: list[str], stdin: str) -> int:
    """`adcli join --stdin-password ...` with the one-time password of the object the function created.

    Checks what the real adcli needs (--stdin-password, --login-type=computer, --domain=, --computer-name=,
    --host-fqdn=) and that stdin is the one-time password the fake function answered (scenario
    one_time_password) followed by a line break. On success it leaves what adcli leaves: the host key in the
    keytab (the file, and state/ that the klist stand-in reads). It never writes sssd.conf (the script does).
    Knobs: adcli_join_hangs (the first N attempts never return), adcli_join_rc (every attempt fails),
    adcli_join_rc_with_key (fails, but the key is in the keytab)."""
    if args[:1] != ["join"]:
        return 0  # other adcli verbs: record only
    counter = STATE / "adcli-join-attempts"
    n = int(counter.read_text()) + 1 if counter.exists() else 1
    counter.write_text(str(n))
    if n <= SCENARIO.get("adcli_join_hangs", 0):
        time.sleep(3600)  # a hanging join (unreachable DC): the first N attempts never return
    opts = dict(a[2:].split("=", 1) for a in args[1:] if a.startswith("--") and "=" in a)
    if "--stdin-password" not in args or opts.get("login-type") != "computer":
        print("adcli: stand-in: expected --login-type=computer --stdin-password", file=sys.stderr)
        return 2
    for needed in ("domain", "computer-name", "host-fqdn"):
        if not opts.get(needed):
            print(f"adcli: stand-in: missing --{needed}=", file=sys.stderr)
            return 2
    domain, name = opts["domain"].lower(), opts["computer-name"]
    print(f" * Using domain name: {domain}\n * Calculated computer account name from fqdn: {name}")
    if stdin != SCENARIO.get("one_time_password", "") + "\n":
        print(f"adcli: Couldn't join computer: Couldn't authenticate as: {name}$@{domain.upper()}: "
              "Preauthentication failed", file=sys.stderr)
        return 5
    if SCENARIO.get("adcli_join_rc", 0):
        print("adcli: Couldn't join computer: Couldn't find a domain controller", file=sys.stderr)
        return SCENARIO["adcli_join_rc"]
    keytab = ROOT / "etc" / "krb5.keytab"
    keytab.parent.mkdir(parents=True, exist_ok=True)
    keytab.write_bytes(b"\x05\x02stand-in keytab: " + f"{name}$@{domain.upper()}".encode())
    keytab.chmod(0o600)
    (STATE / "joined").write_text(domain)
    (STATE / "computer").write_text(name)
    if SCENARIO.get("adcli_join_rc_with_key", 0):
        return SCENARIO["adcli_join_rc_with_key"]
    print(f" * Wrote out krb5.conf snippet\n * Added the entries to the keytab: {name}$@{domain.upper()}")
    return 0


def klist(args: list[str]) -> int:
    """`klist -k KEYTAB`: the host key that the join (adcli) leaves in the node's keytab."""
    joined = STATE / "joined"
    if args[:1] != ["-k"] or not joined.exists() or args[-1] != str(ROOT / "etc" / "krb5.keytab"):
        print("klist: Key table file not found", file=sys.stderr)
        return 1
    realm_name = joined.read_text().strip().upper()
    computer = STATE / "computer"
    name = computer.read_text().strip() if computer.exists() else "NODE1"
    print(f"Keytab name: FILE:{args[-1]}\nKVNO Principal\n---- ----\n   2 {name}$@{realm_name}")
    return 0


def sssd_conf_has_domain(domain: str) -> bool:
    try:
        text = (ROOT / "etc" / "sssd" / "sssd.conf").read_text()
    except OSError:
        return False
    return any(re.match(rf"^\s*\[domain/{re.escape(domain)}\]\s*$", line, re.I) for line in text.splitlines())


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
    if len(args) != 2 or args[0] not in ("passwd", "group") or SCENARIO.get("getent_fails"):
        return 2
    name = args[1]
    domain = SCENARIO["domain"]
    if args[0] == "group":
        # "Domain Users" (every AD domain has it) resolves once joined (the host key) through a running sssd
        # whose sssd.conf has the domain section.
        joined = STATE / "joined"
        if (name == "Domain Users" and joined.exists() and joined.read_text().strip() == domain
                and sssd_running() and sssd_conf_has_domain(domain)):
            print("domain users:*:1082000513:")
            return 0
        return 2
    return 2  # passwd: no AD user resolves here (the ssh key tests bring their own getent)


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
    if name == "adcli":
        return adcli(args, stdin)
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
    return 0  # kinit, oddjobd, authconfig, sssd: record only


if __name__ == "__main__":
    sys.exit(main())
