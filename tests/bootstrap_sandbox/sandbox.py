"""A sandbox that runs the REAL bootstrap scripts with stand-in system commands (test-only code).

Layout under one temporary directory:
  bin/      first on PATH: recording stand-ins (adcli, realm, systemctl, getent, pam-auth-update, apt-get, dnf, ...)
            and recording pass-through wrappers that exec the REAL curl, python3 and timeout
  root/     the scripts' PCLUSTER_AD_ROOT (etc/os-release, etc/sssd/sssd.conf, etc/default/sssd, run/sssd.pid)
  rec/      one record per command call (argv, and stdin for stand-ins)
  daemon/   sssd: a copy of sleep, so that /proc/<pid>/comm says "sssd" (started by the systemctl stand-in)
  state/    stand-in state (joined domain, started pids)
  log/      the scripts' log directory (created by the scripts)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.bootstrap_sandbox.servers import ONE_TIME_PASSWORD
from tests.bootstrap_sandbox.standin import REALM_SSSD_CONF

REPO = Path(__file__).resolve().parents[2]
JOIN_SCRIPT = REPO / "bootstrap" / "join-domain.sh"
AGENT_DIR = REPO / "bootstrap" / "node_agent"  # the node agent the stack bakes into the uploaded join script
SSH_SCRIPT = REPO / "bootstrap" / "enable-ssh-password-auth.sh"
STANDIN = Path(__file__).resolve().parent / "standin.py"

STANDINS = ["realm", "klist", "systemctl", "getent", "hostname", "pam-auth-update", "apt-get", "dnf", "yum",
            "authselect", "authconfig", "adcli", "kinit", "sssd", "oddjobd", "sshd", "iptables", "ip6tables"]
PASS_THROUGH = ["curl", "python3", "timeout"]

OS_RELEASE = {
    "debian12": 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\nID=debian\n',
    "ubuntu2204": 'PRETTY_NAME="Ubuntu 22.04.4 LTS"\nNAME="Ubuntu"\nVERSION_ID="22.04"\nID=ubuntu\nID_LIKE=debian\n',
    "alinux2023": 'NAME="Amazon Linux"\nVERSION="2023"\nID="amzn"\nID_LIKE="fedora"\nVERSION_ID="2023"\n'
                  'PRETTY_NAME="Amazon Linux 2023.6.20241121"\n',
    "rocky9": 'NAME="Rocky Linux"\nVERSION_ID="9.4"\nID="rocky"\nID_LIKE="rhel centos fedora"\n'
              'PRETTY_NAME="Rocky Linux 9.4 (Blue Onyx)"\n',
}


def node_agent_argv(agent: Path = REPO / "bootstrap") -> list[str]:
    """The command line join-domain.sh's pyhelper runs (its NODE_AGENT_BOOT, read from the script) with this Python:
    the node agent from `agent`, the folder that holds node_agent/ (the checkout's) or a baked zipapp."""
    boot = re.search(r"^readonly NODE_AGENT_BOOT='([^']*)'$", JOIN_SCRIPT.read_text(), re.M)
    assert boot, "join-domain.sh has no NODE_AGENT_BOOT line"
    return [sys.executable, "-I", "-c", boot.group(1), str(agent)]


def real_executable(name: str) -> str:
    """Absolute path of the real program (resolving e.g. a pyenv shim for python3)."""
    if name == "python3":
        out = subprocess.run(["python3", "-c", "import sys; print(sys.executable)"], capture_output=True, text=True,
                             check=True)
        return out.stdout.strip()
    path = shutil.which(name)
    if not path:
        raise RuntimeError(f"{name} is not installed")
    return os.path.realpath(path)


@dataclass
class Result:
    rc: int
    stdout: str
    stderr: str
    elapsed: float

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


class Sandbox:
    def __init__(self, base: Path, os_name: str = "debian12", **scenario):
        self.base = base
        self.bin = base / "bin"
        self.root = base / "root"
        self.rec = base / "rec"
        self.state = base / "state"
        self.daemon = base / "daemon"
        self.tmp = base / "tmp"
        self.log = base / "log" / "pcluster-ad" / "join-domain.log"
        for d in (self.bin, self.root / "etc" / "sssd", self.root / "etc" / "default", self.root / "run",
                  self.rec, self.state, self.daemon, self.tmp, base / "home"):
            d.mkdir(parents=True, exist_ok=True)
        (self.root / "etc" / "os-release").write_text(OS_RELEASE[os_name])
        if os_name.startswith(("debian", "ubuntu")):
            (self.root / "etc" / "default" / "sssd").write_text(
                '# Defaults for sssd\n# This is only used for /etc/init.d/sssd\nDAEMON_OPTS="-D -f"\n'
                "#DEBUG_LOGGER=--logger=journald\n")
        shutil.copy(real_executable("sleep"), self.daemon / "sssd")
        self.scenario = {"domain": "test.domain", "one_time_password": ONE_TIME_PASSWORD, **scenario}
        omit = set(self.scenario.pop("omit_commands", []))
        # iptables_netns: the REAL iptables/ip6tables, run inside that network namespace (recorded).
        netns = self.scenario.pop("iptables_netns", None)
        for name in STANDINS:
            if name in omit:
                continue
            if netns and name in ("iptables", "ip6tables"):
                # Not realpath: xtables-nft-multi picks its personality from argv[0].
                real = shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")
                self._write(name, f'printf \'%s\\0\' {name} "$@" >"$PCLUSTER_AD_SANDBOX/rec/$$.$RANDOM.{name}.argv"\n'
                                  f'exec ip netns exec {netns} "{real}" "$@"', shell="/bin/bash")
            else:
                self._write(name, f'exec "{sys.executable}" -I "{STANDIN}" {name} "$@"')
        for name in PASS_THROUGH:
            real = real_executable(name)
            # Record argv (NUL-separated) with bash builtins only, then run the real program.
            self._write(name, f'printf \'%s\\0\' {name} "$@" >"$PCLUSTER_AD_SANDBOX/rec/$$.$RANDOM.{name}.argv"\n'
                              f'exec "{real}" "$@"', shell="/bin/bash")

    def _write(self, name: str, body: str, shell: str = "/bin/sh") -> None:
        path = self.bin / name
        path.write_text(f"#!{shell}\n{body}\n")
        path.chmod(0o755)

    def env(self, imds_url: str, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and not k.startswith(("PCLUSTER_AD",
                                                                                                    "AWS_"))}
        env.update({
            "PATH": f"{self.bin}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "PCLUSTER_AD_SANDBOX": str(self.base),
            "PCLUSTER_AD_ROOT": str(self.root),
            "PCLUSTER_AD_LOG": str(self.log),
            "AWS_EC2_METADATA_SERVICE_ENDPOINT": imds_url,
            "TMPDIR": str(self.tmp),
            "HOME": str(self.base / "home"),
        })
        env.update(extra)
        return env

    def run(self, script: Path, args: list[str], env: dict[str, str], *, prefix: list[str] | None = None,
            shell: tuple[str, ...] = ("bash",), timeout: float = 120) -> Result:
        (self.base / "scenario.json").write_text(json.dumps(self.scenario))
        t0 = time.monotonic()
        proc = subprocess.run([*(prefix or []), *shell, str(script), *args], env=env, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout, cwd=self.base)
        return Result(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - t0)

    def calls(self, name: str | None = None) -> list[dict]:
        """Every recorded call (stand-ins and pass-through wrappers), in order."""
        out = []
        for path in self.rec.iterdir():
            if path.suffix == ".json":
                rec = json.loads(path.read_text())
                out.append({"name": rec["name"], "argv": rec["argv"], "stdin": rec["stdin"], "t": rec["t"],
                            "key": path.name})
            elif path.suffix == ".argv":
                words = path.read_bytes().decode(errors="replace").split("\0")[:-1]
                out.append({"name": words[0], "argv": words[1:], "stdin": None, "t": path.stat().st_mtime,
                            "key": path.name})
        out.sort(key=lambda c: c["t"])
        return [c for c in out if name is None or c["name"] == name]

    def clear_calls(self) -> None:
        for path in self.rec.iterdir():
            path.unlink()

    def sssd_conf(self) -> Path:
        return self.root / "etc" / "sssd" / "sssd.conf"

    def mark_joined(self, domain: str = "test.domain") -> None:
        (self.state / "joined").write_text(domain)
        self.sssd_conf().write_text(REALM_SSSD_CONF.format(domain=domain, realm=domain.upper()))
        self.sssd_conf().chmod(0o600)
        (self.root / "etc" / "krb5.keytab").write_bytes(b"\x05\x02stand-in keytab: NODE1$@" + domain.upper().encode())

    def cleanup(self) -> None:
        pids = self.state / "pids"
        if pids.exists():
            for line in pids.read_text().split():
                try:
                    os.kill(int(line), signal.SIGKILL)
                except (OSError, ValueError):
                    pass
