"""The AD lab: a real Samba AD DC and "nodes" in their own namespaces, on one machine, as root.

Topology (all of it in namespaces the lab creates; the host's own network namespace is never
touched, and no namespace has a default route, so nothing can leave the lab):

    switch netns  <id>-sw : bridge br0 = SERVICES_IP (.1) + labsvc.py (fake IMDSv2, function URL)
    DC           <id>-dc : dc1, Samba AD DC for TEST.DOMAIN at DC_IP (.2)
    client       <id>-cl : ssh/curl client (.5)
    node k       <id>-nK : a cluster node (.10+k)

Every host has its own network, mount, UTS and PID namespaces; /etc, /var, /home and /root are
overlays on the host's (upper dirs under the lab folder), /run and /tmp are private tmpfs. The
PID namespace's init is a tiny reaper; killing it kills everything in the host.

Node generations (NODE_OS): "debian12" nodes are the machine's own file system as above; "debian13"
nodes pivot_root into an overlay whose lower dir is a cached Debian 13 root (tools/trixie_root.sh).
Lab.add_nodes(specs) takes "os" per spec; the default is ADLAB_NODE_OS (unset: the machine's generation).

Harness-only shims (never in the product): a systemctl shim bind-mounted over /usr/bin/systemctl,
and DAEMON_OPTS="-D" in /etc/default/sssd (Debian 12 and 13 ship "-D -f", which sssd 2.8/2.10 reject).
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import datetime
import ipaddress
import json
import os
import re
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SHIM_SYSTEMCTL = HERE / "shims" / "systemctl"
TRIXIE_ROOT_TOOL = REPO / "tools" / "trixie_root.sh"
# Node generations: "debian12" = the machine's own file system (tools/install_adlab_deps.sh);
# "debian13" = a cached Debian 13 root built by tools/trixie_root.sh.
NODE_OS = ("debian12", "debian13")
# The node scripts under test; ADLAB_BOOTSTRAP_DIR points the lab at a work-in-progress copy.
BOOTSTRAP_DIR = Path(os.environ.get("ADLAB_BOOTSTRAP_DIR") or REPO / "bootstrap")
NS_PREFIX = "adl"
NS_RE = re.compile(rf"^{NS_PREFIX}(\d+)x(\d+)-")
NODE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BASE_ENV = {
    "PATH": NODE_PATH,
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "USER": "root",
    "LOGNAME": "root",
    "SHELL": "/bin/bash",
    "TERM": "dumb",
}

# Executables the lab needs on the machine (installed by tools/install_adlab_deps.sh).
REQUIRED_TOOLS = [
    "/usr/sbin/samba",
    "/usr/bin/samba-tool",
    "/usr/sbin/realm",
    "/usr/sbin/adcli",
    "/usr/sbin/sssd",
    "/usr/sbin/sshd",
    "/usr/bin/sshpass",
    "/usr/bin/ssh",
    "/usr/bin/dbus-daemon",
    "/usr/libexec/realmd",
    "/usr/libexec/packagekitd",
    "/usr/bin/dig",
    "/usr/bin/ldbsearch",
    "/usr/bin/ldapmodify",  # the attack tests: root on a node writes as its computer account (-Y GSSAPI)
    "/usr/bin/klist",
    "/usr/sbin/pam-auth-update",
    "/usr/bin/curl",
    "/usr/bin/jq",
    "/usr/bin/nsenter",
    "/usr/bin/unshare",
    "/usr/sbin/ip",
    "/usr/sbin/iptables",
    "/usr/sbin/ip6tables",
    "/usr/bin/setpriv",
    "/usr/bin/python3",
    "/usr/lib/x86_64-linux-gnu/security/pam_sss.so",
    "/usr/lib/x86_64-linux-gnu/libnss_sss.so.2",
]
REAPER = (
    "import os,signal,time\n"
    "signal.signal(signal.SIGTERM, lambda *a: os._exit(0))\n"
    "while True:\n"
    "    try:\n"
    "        os.waitpid(-1, 0)\n"
    "    except ChildProcessError:\n"
    "        time.sleep(0.5)\n"
)


def domain_dn(domain: str) -> str:
    return ",".join(f"DC={part}" for part in domain.split("."))


def computer_prefix(cluster_name: str) -> str:
    sys.path.insert(0, str(REPO))
    from pcluster_ad.lambda_src.directory_admin import computer_prefix as prefix

    return prefix(cluster_name)


class LabError(RuntimeError):
    pass


def missing_deps() -> list[str]:
    """What the lab needs and the machine lacks (empty when ready)."""
    missing = [p for p in REQUIRED_TOOLS if not os.path.exists(p)]
    py = lab_python()
    if subprocess.run([py, "-c", "import moto, boto3, botocore"], capture_output=True).returncode != 0:
        missing.append(f"{py}: python modules moto/boto3/botocore")
    return missing


def lab_python() -> str:
    venv = REPO / "venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def machine_os(os_release: str = "/etc/os-release") -> str | None:
    """The machine's own generation ("debian12", "debian13"), or None when it is neither."""
    fields = {}
    with contextlib.suppress(OSError):
        for line in Path(os_release).read_text().splitlines():
            k, _, v = line.partition("=")
            fields[k] = v.strip().strip('"')
    name = f"{fields.get('ID')}{fields.get('VERSION_ID')}"
    return name if name in NODE_OS else None


def default_node_os() -> str:
    """ADLAB_NODE_OS: the generation of nodes whose spec names none (whole-module runs); unset: the machine's."""
    value = os.environ.get("ADLAB_NODE_OS") or machine_os() or "debian12"
    if value not in NODE_OS:
        raise LabError(f"ADLAB_NODE_OS={value!r} is not a node generation: use one of {', '.join(NODE_OS)}")
    return value


_IMAGES: dict[str, Path] = {}


def node_image(node_os: str) -> Path | None:
    """The root file system a node of this generation starts from: None for the machine's own file system
    (the generation the machine runs), else a cached root: debian13 from tools/trixie_root.sh, built on first
    use (minutes), then only named (~0 s)."""
    if node_os not in NODE_OS:
        raise LabError(f"node os {node_os!r} is not a node generation: use one of {', '.join(NODE_OS)}")
    if node_os == machine_os():
        return None
    if node_os != "debian13":
        raise LabError(
            f"{node_os} nodes need a cached {node_os} root on this {machine_os() or 'non-Debian-12/13'} machine, "
            f"and only debian13 roots are built ({TRIXIE_ROOT_TOOL.name}): run the lab with ADLAB_NODE_OS=debian13"
        )
    if node_os not in _IMAGES:
        res = run(["bash", str(TRIXIE_ROOT_TOOL)], timeout=1800, check=False)
        if res.returncode != 0:
            raise LabError(f"cannot build the {node_os} node root ({TRIXIE_ROOT_TOOL}):\n{res.stderr[-3000:]}")
        path = Path(res.stdout.strip().splitlines()[-1])
        if not (path / "etc" / "adlab-root-versions").is_file():
            raise LabError(f"{TRIXIE_ROOT_TOOL} named {path}, which is not a finished root")
        _IMAGES[node_os] = path
    return _IMAGES[node_os]


def run(
    argv: list[str], *, check: bool = True, timeout: float = 120, input: str | bytes | None = None, text: bool = True
):
    res = subprocess.run(argv, capture_output=True, timeout=timeout, input=input, text=text)
    if check and res.returncode != 0:
        out = (res.stdout or "") + (res.stderr or "") if text else b""
        raise LabError(f"command failed ({res.returncode}): {' '.join(map(str, argv))[:300]}\n{str(out)[-3000:]}")
    return res


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _pid_running(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _netns_inode(name: str) -> int | None:
    try:
        return os.stat(f"/run/netns/{name}").st_ino
    except FileNotFoundError:
        return None


def _pids_in_netns(inode: int) -> list[int]:
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            if os.stat(f"/proc/{d}/ns/net").st_ino == inode:
                pids.append(int(d))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return pids


def as_uploaded(script: str, agent_dir: Path | None = None) -> str:
    """A join script's text as the stack uploads it: its node agent (BOOTSTRAP_DIR/node_agent) baked in as the
    zipapp (components/bootstrap_scripts.py). A script from before the node agent (bench --compare-with) carries
    its Python in a here-document: unchanged. agent_dir: another revision's node_agent folder (bench --compare-with:
    a script needs the commands of its own agent), every module in it."""
    import base64
    import io
    import zipfile

    from pcluster_ad.components.bootstrap_scripts import (
        NODE_AGENT_DIR,
        NODE_AGENT_LINE,
        NODE_AGENT_ZIPAPP_MAIN,
        bake_node_agent,
    )

    if NODE_AGENT_LINE + "\n" not in script:
        return script
    if agent_dir is None:
        return bake_node_agent(script, BOOTSTRAP_DIR / NODE_AGENT_DIR)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("__main__.py", NODE_AGENT_ZIPAPP_MAIN)
        for module in sorted(agent_dir.glob("*.py")):
            zf.writestr(f"node_agent/{module.name}", module.read_bytes())
    encoded = base64.b64encode(buf.getvalue()).decode("ascii")
    return script.replace(NODE_AGENT_LINE + "\n", f"NODE_AGENT_ZIP='{encoded}'\n", 1)


@dataclasses.dataclass
class LabConfig:
    subnet: str = dataclasses.field(default_factory=lambda: os.environ.get("ADLAB_SUBNET", "10.99.0.0/24"))
    realm: str = "TEST.DOMAIN"
    netbios: str = "TEST"
    region: str = "eu-west-1"
    stack: str = "adlab"
    cluster_name: str = "adlab-cluster"
    imds_port: int = 80
    url_port: int = 8443
    # The function URL is https (as on AWS) with a lab CA the nodes trust; False serves plain http
    # and sets the product's documented lab switch PCLUSTER_AD_ALLOW_HTTP=1 for the node script.
    url_tls: bool = True
    # The join function's MAX_JOINS_IN_PROGRESS (admission control, issue 20); None: the handler's default.
    max_joins_in_progress: int | None = None
    keep: bool = dataclasses.field(default_factory=lambda: os.environ.get("ADLAB_KEEP") == "1")
    # Generation of nodes whose spec names none (NODE_OS); the DC and the client stay on the machine's.
    node_os: str = dataclasses.field(default_factory=default_node_os)
    # Older join handlers served beside the current one, by URL path prefix ("/before/": handler file), for
    # bench --compare-with: an older join-domain.sh then calls the function of its own time.
    path_handlers: dict = dataclasses.field(default_factory=dict)

    @property
    def domain(self) -> str:
        return self.realm.lower()

    @property
    def ec2_domain(self) -> str:
        """The region's EC2 internal domain: the ONE domain of the VPC's DHCP options (components/directory.py)."""
        return "ec2.internal" if self.region == "us-east-1" else f"{self.region}.compute.internal"


@dataclasses.dataclass
class RunResult:
    rc: int | None
    elapsed: float
    output: str
    timed_out: bool = False


class Host:
    """One lab machine: network + mount + UTS + PID namespaces, overlay /etc /var /home /root."""

    def __init__(self, lab: Lab, key: str, hostname: str, ip: str, node_os: str | None = None):
        self.lab = lab
        self.key = key
        # None (the DC, the client): the machine's own file system, whatever its generation
        self.os = node_os or machine_os() or "machine"
        self.image = node_image(node_os) if node_os else None  # None: the machine's own file system
        self.ns = f"{lab.id}-{key}"
        self.hostname = hostname
        self.ip = ip
        self.root = lab.root / key
        self.proc: subprocess.Popen | None = None
        self.pid: int | None = None  # host-side PID of the namespace's init
        self.netns_inode: int | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    def create_netns(self, *, drop_to: list[str] | None = None) -> None:
        lab = self.lab
        run(["ip", "netns", "add", self.ns])
        lab.netns.append(self.ns)
        self.netns_inode = _netns_inode(self.ns)
        lab.netns_inodes[self.ns] = self.netns_inode
        run(["ip", "-n", self.ns, "link", "set", "lo", "up"])
        veth = f"v{self.key}"[:15]
        run(["ip", "-n", lab.sw_ns, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", self.ns])
        run(["ip", "-n", lab.sw_ns, "link", "set", veth, "master", "br0", "up"])
        run(["ip", "netns", "exec", self.ns, "sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=1"])
        run(["ip", "-n", self.ns, "addr", "add", f"{self.ip}/{lab.net.prefixlen}", "dev", "eth0"])
        run(["ip", "-n", self.ns, "link", "set", "eth0", "up"])
        for dst in drop_to or []:
            # Silently drop traffic to dst, as a security group would: a permanent neighbour entry
            # with a MAC nobody has, so frames to dst go out and vanish (no ICMP, no ARP failure).
            run(
                [
                    "ip",
                    "-n",
                    self.ns,
                    "neigh",
                    "replace",
                    dst,
                    "lladdr",
                    "02:00:5e:00:de:ad",
                    "dev",
                    "eth0",
                    "nud",
                    "permanent",
                ]
            )

    def spawn(self) -> None:
        """Start the namespace init (does not wait; see wait_ready)."""
        script = self._image_script() if self.image else self._host_fs_script()
        self._start_init(script)

    def _image_script(self) -> str:
        """Init script of a host on a cached root (debian13): one overlay over the whole root, the machine's
        /dev and /sys as the debian12 hosts see them, then pivot_root, so that nsenter -m lands in it."""
        r = self.root / "rootfs"
        for d in (r, self.root / "upper" / "rootfs", self.root / "work" / "rootfs"):
            d.mkdir(parents=True, exist_ok=True)
        return f"""set -euo pipefail
hostname {self.hostname}
mount -t overlay adlab-root -o "lowerdir={self.image},upperdir={self.root}/upper/rootfs" \
  -o "workdir={self.root}/work/rootfs" {r}
mount --rbind /dev {r}/dev
mount --rbind /sys {r}/sys
mount -t proc proc {r}/proc
mount -t tmpfs -o mode=0755,size=512m adlab-run {r}/run
mount -t tmpfs -o mode=1777,size=1g adlab-tmp {r}/tmp
# the machine's /srv, as a debian12 host sees it: where tests keep directories shared between hosts
mount --bind /srv {r}/srv
[ -e {r}/usr/bin/systemctl ] || touch {r}/usr/bin/systemctl
mount --bind {SHIM_SYSTEMCTL} {r}/usr/bin/systemctl
# the checkout at the same path inside (after the tmpfs mounts: CI clones under /tmp)
mkdir -p {r}{REPO}
mount --bind {REPO} {r}{REPO}
cd {r}
mkdir -p .adlab-oldroot
pivot_root . .adlab-oldroot
cd /
umount -l /.adlab-oldroot
rmdir /.adlab-oldroot
mkdir -p /run/lock /run/dbus /run/sshd /run/user
echo READY
exec /usr/bin/python3 -c "$ADLAB_REAPER" </dev/null >/dev/null 2>&1
"""

    def _host_fs_script(self) -> str:
        """Init script of a host on the machine's own file system (debian12 nodes, the DC, the client)."""
        for d in ("etc", "var", "home", "root"):
            (self.root / "upper" / d).mkdir(parents=True, exist_ok=True)
            (self.root / "work" / d).mkdir(parents=True, exist_ok=True)
        return f"""set -euo pipefail
hostname {self.hostname}
for d in etc var home root; do
  mount -t overlay "adlab-$d" -o "lowerdir=/$d,upperdir={self.root}/upper/$d,workdir={self.root}/work/$d" "/$d"
done
# The checkout may itself live under /tmp (CI clones there): keep it reachable at the same path
# inside the host once /tmp and /run become private (via a bind parked in the private /root).
mount --bind {SHIM_SYSTEMCTL} /usr/bin/systemctl
mkdir -p /root/.adlab-repo
mount --bind {REPO} /root/.adlab-repo
mount -t tmpfs -o mode=0755,size=512m adlab-run /run
mount -t tmpfs -o mode=1777,size=1g adlab-tmp /tmp
if [ ! -d {REPO}/tests/adlab ]; then
  mkdir -p {REPO}
  mount --bind /root/.adlab-repo {REPO}
fi
mkdir -p /run/lock /run/dbus /run/sshd /run/user
echo READY
exec /usr/bin/python3 -c "$ADLAB_REAPER" </dev/null >/dev/null 2>&1
"""

    def _start_init(self, script: str) -> None:
        log = open(self.root / "init.log", "wb")
        self.proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.ns,
                "unshare",
                "--mount",
                "--uts",
                "--pid",
                "--fork",
                "--mount-proc",
                "--propagation",
                "private",
                "/bin/bash",
                "-c",
                script,
            ],
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.DEVNULL,
            env={**BASE_ENV, "ADLAB_REAPER": REAPER},
            start_new_session=True,
        )
        log.close()
        self.lab.procs.append(self.proc)

    def wait_ready(self, timeout: float = 30) -> None:
        assert self.proc and self.proc.stdout
        deadline = time.monotonic() + timeout
        line = b""
        while time.monotonic() < deadline:
            r, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if r:
                line = self.proc.stdout.readline()
                break
            if self.proc.poll() is not None:
                break
        if line.strip() != b"READY":
            err = (self.root / "init.log").read_text(errors="replace")
            raise LabError(f"host {self.key} did not start: {line!r} {err[-2000:]}")
        self.proc.stdout.close()
        children = []
        for _ in range(50):
            with contextlib.suppress(FileNotFoundError):
                children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
            if children:
                break
            time.sleep(0.02)
        if not children:
            raise LabError(f"host {self.key}: cannot find its namespace init")
        self.pid = int(children[0])
        self.lab.init_pids.append(self.pid)

    def kill(self) -> None:
        if self.pid and _pid_alive(self.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        if self.proc:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)

    # -- running things inside -----------------------------------------------------------------
    def argv(self, cmd: list[str], env: dict | None = None) -> list[str]:
        if not self.pid:
            raise LabError(f"host {self.key} is not running")
        e = {**BASE_ENV, **(env or {})}
        return [
            "nsenter",
            "-t",
            str(self.pid),
            "-m",
            "-u",
            "-n",
            "-p",
            # a cached-root host's / is not the machine's: take the working directory of its init (its /)
            "--wd" if self.image else "--wd=/",
            "--",
            "/usr/bin/env",
            "-i",
            *[f"{k}={v}" for k, v in e.items()],
            *cmd,
        ]

    def run(self, cmd: list[str], *, check: bool = True, timeout: float = 120, input=None, env=None, text=True):
        return run(self.argv(cmd, env), check=check, timeout=timeout, input=input, text=text)

    def sh(self, script: str, **kw):
        return self.run(["/bin/bash", "-c", script], **kw)

    def popen(
        self, cmd: list[str], *, env=None, stdout=None, stderr=None, stdin=subprocess.DEVNULL
    ) -> subprocess.Popen:
        p = subprocess.Popen(self.argv(cmd, env), stdout=stdout, stderr=stderr, stdin=stdin, start_new_session=True)
        self.lab.procs.append(p)
        return p

    def write(self, path: str, content: str | bytes, mode: str = "0644") -> None:
        data = content.encode() if isinstance(content, str) else content
        self.run(
            ["/bin/bash", "-c", 'mkdir -p "$(dirname "$1")" && cat >"$1" && chmod "$2" "$1"', "_", path, mode],
            input=data,
            text=False,
        )

    def read(self, path: str) -> str:
        res = self.run(["/bin/cat", path], check=False)
        return res.stdout if res.returncode == 0 else ""

    def upper_dirs(self) -> list[Path]:
        """Everything the host wrote to disk (its overlays' upper dirs; tmpfs /run and /tmp aside)."""
        if self.image:
            return [self.root / "upper" / "rootfs"]
        return [self.root / "upper" / d for d in ("etc", "var", "home", "root")]


class Node(Host):
    """A cluster node: its instance in the emulated EC2, IMDS credentials, and the product scripts."""

    instance_id: str | None = None
    node_info: dict | None = None

    def base_setup(self) -> None:
        """What the node's image gives before the bootstrap runs (not the product's job)."""
        lab = self.lab
        c = lab.cfg
        fqdn = f"{self.hostname}.{c.ec2_domain}"
        # DNS as on a VPC node: the host name EC2 gives (ip-a-b-c-d); /etc/hosts with the node's own
        # line only (what ParallelCluster's init_dns writes); resolv.conf as the DHCP client writes it
        # from the VPC's DHCP options: ONE search domain, the directory's DNS as name server. Every
        # other name (other nodes, the AD domain) comes from the DC's DNS (see Lab.add_ec2_dns).
        self.sh(
            f"""set -euo pipefail
echo {self.hostname} >/etc/hostname
printf '127.0.0.1 localhost\\n{self.ip} {fqdn} {self.hostname}\\n' >/etc/hosts
printf 'search {c.ec2_domain}\\nnameserver {lab.dc_ip}\\n' >/etc/resolv.conf
dbus-uuidgen >/etc/machine-id
mkdir -p /var/lib/dbus && cp /etc/machine-id /var/lib/dbus/machine-id
# harness shim for Debian 12 pitfall 1 (sssd 2.8 and 2.10 reject -f, both Debians ship it); not product code
sed -i 's/^DAEMON_OPTS=.*/DAEMON_OPTS="-D"/' /etc/default/sssd
# cloud images ship password logins off; enable-ssh-password-auth.sh must win over this
printf 'PasswordAuthentication no\\n' >/etc/ssh/sshd_config.d/50-cloud-init.conf
dbus-daemon --system --fork
systemctl start ssh >/dev/null  # the shim returns once sshd listens (as systemd does)
"""
        )
        lab.trust_ca(self)

    def install_action(self, name: str) -> str:
        """Put a product script on the node as ParallelCluster does (downloaded, chmod +x): the bytes the stack
        uploads (the join script with its node agent baked in, as_uploaded), otherwise unchanged."""
        src = BOOTSTRAP_DIR / name
        if not src.exists():
            raise LabError(f"product script missing: {src}")
        dst = f"/tmp/pcluster-ad-actions/{name}"
        self.write(dst, as_uploaded(src.read_text()).encode() if name == "join-domain.sh" else src.read_bytes(),
                   mode="0755")
        return dst

    def start_bootstrap(
        self, *, timeout_arg: int = 120, args: list[str] | None = None, hard_timeout: float | None = None
    ) -> BootstrapRun:
        path = self.install_action("join-domain.sh")
        argv = [
            path,
            "--function-url",
            self.lab.function_url,
            "--region",
            self.lab.cfg.region,
            "--timeout",
            str(timeout_arg),
            # As the stack renders it into the cluster config: the node checks the answered name against it.
            "--computer-prefix",
            computer_prefix(self.lab.cfg.cluster_name),
        ]
        if args is not None:
            argv = [path, *args]
        return BootstrapRun(self, argv, hard_timeout or timeout_arg + 60)

    def reference_join(self) -> None:
        """Harness-side join (realm join + the sssd settings the product applies), for the
        LOOKUP benchmarks only, when the product's script fails on a node; tests never use it."""
        lab = self.lab
        self.run(
            [
                "realm",
                "join",
                "--install=/",
                "--client-software=sssd",
                "--membership-software=adcli",
                "-U",
                lab.join_user,
                lab.cfg.domain,
            ],
            input=lab.join_password + "\n",
            check=False,
            timeout=120,
        )
        self.sh(
            "sed -i -e 's/^use_fully_qualified_names.*/use_fully_qualified_names = False/' "
            "-e 's|^fallback_homedir.*|fallback_homedir = /home/%u|' /etc/sssd/sssd.conf && "
            "DEBIAN_FRONTEND=noninteractive pam-auth-update --enable mkhomedir && systemctl restart sssd",
            timeout=120,
        )

    def run_action(self, name: str, args: list[str] | None = None, timeout: float = 120) -> RunResult:
        path = self.install_action(name)
        return BootstrapRun(self, [path, *(args or [])], timeout).wait()


class BootstrapRun:
    """A product script running on a node in the background; wait() gives its RunResult."""

    def __init__(self, node: Node, argv: list[str], hard_timeout: float):
        self.node = node
        self.t0 = time.monotonic()
        self.start_wall = time.time()
        self.hard_timeout = hard_timeout
        self.out_path = node.root / f"run-{int(self.t0 * 1000)}-{secrets.token_hex(3)}.out"
        self._out = open(self.out_path, "wb")
        env = {"AWS_EC2_METADATA_SERVICE_ENDPOINT": node.lab.imds_endpoint}
        if not node.lab.cfg.url_tls:
            env["PCLUSTER_AD_ALLOW_HTTP"] = "1"  # the product's documented test-lab switch
        self.proc = node.popen(argv, env=env, stdout=self._out, stderr=subprocess.STDOUT)
        self.result: RunResult | None = None
        self.end: float | None = None
        self.timed_out = False
        # Reap in a thread so that the end time is when the script ended, not when we looked.
        self._reaper = threading.Thread(target=self._reap, daemon=True)
        self._reaper.start()

    def _reap(self) -> None:
        try:
            self.proc.wait(timeout=self.hard_timeout)
        except subprocess.TimeoutExpired:
            self.timed_out = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.end = time.monotonic()

    def done(self) -> bool:
        return self.end is not None

    def wait(self) -> RunResult:
        if self.result:
            return self.result
        self._reaper.join()
        timed_out = self.timed_out
        self._out.close()
        self.result = RunResult(
            rc=None if timed_out else self.proc.returncode,
            elapsed=self.end - self.t0,
            output=self.out_path.read_text(errors="replace"),
            timed_out=timed_out,
        )
        return self.result


class ArgvWatch(threading.Thread):
    """Samples every process's argv (/proc/*/cmdline) for secrets while the lab runs."""

    def __init__(self, needles: dict[str, bytes], interval: float = 0.05):
        super().__init__(daemon=True)
        self.needles = {k: v for k, v in needles.items() if v}
        self.interval = interval
        self.hits: list[dict] = []
        self.samples = 0
        self._stop_evt = threading.Event()

    def add(self, label: str, needle: bytes) -> None:
        self.needles = {**self.needles, label: needle}

    def run(self) -> None:
        me = os.getpid()
        while not self._stop_evt.is_set():
            for d in os.listdir("/proc"):
                if not d.isdigit() or int(d) == me:
                    continue
                try:
                    with open(f"/proc/{d}/cmdline", "rb") as f:
                        cmd = f.read()
                except OSError:
                    continue
                for label, needle in self.needles.items():
                    if needle in cmd:
                        exe = cmd.split(b"\0", 1)[0].decode(errors="replace")
                        self.hits.append({"pid": int(d), "secret": label, "exe": exe})
            self.samples += 1
            self._stop_evt.wait(self.interval)

    def stop(self) -> None:
        self._stop_evt.set()
        self.join(timeout=5)


class Lab:
    """The whole lab. Use as a context manager, or call start() / teardown() (teardown is safe to repeat)."""

    _counter = 0

    def __init__(self, cfg: LabConfig | None = None):
        self.cfg = cfg or LabConfig()
        Lab._counter += 1
        self.id = f"{NS_PREFIX}{os.getpid()}x{Lab._counter}"
        self.net = ipaddress.ip_network(self.cfg.subnet)
        hosts = list(self.net.hosts())
        if len(hosts) < 40:
            raise LabError(f"lab subnet {self.cfg.subnet} is too small (need a /26 or larger)")
        self._hosts = hosts
        self.services_ip = str(hosts[0])
        self.dc_ip = str(hosts[1])
        self.client_ip = str(hosts[4])
        self.sw_ns = f"{self.id}-sw"
        self.root = Path(tempfile.mkdtemp(prefix=f"{self.id}-", dir="/tmp"))
        self.netns: list[str] = []
        self.netns_inodes: dict[str, int | None] = {}
        self.procs: list[subprocess.Popen] = []
        self.init_pids: list[int] = []
        self.hosts: dict[str, Host] = {}
        self.nodes: list[Node] = []
        self.svc: subprocess.Popen | None = None
        self._svc_lock = threading.Lock()
        self.dc: Host | None = None
        self.client: Host | None = None
        self.timings: dict[str, float] = {}
        self.admin_password = "Adm1n-" + secrets.token_hex(6) + "!"
        # A classic join account (create/delete + full control on CN=Computers): the benchmarks' reference
        # `realm join` only. The product's chain uses the computer-adding account below.
        self.join_user = "svc-pcjoin"
        self.join_password = "J0in-" + secrets.token_urlsafe(12).replace("-", "x").replace("_", "y") + "#"
        # The account the join function adds computer objects with (issue 16): "create computer objects" on
        # the stack's Computers OU, nothing else. Nodes never see its password.
        self.add_user = "svc-pcadd"
        self.add_password = "Add-" + secrets.token_urlsafe(12).replace("-", "x").replace("_", "y") + "#"
        self.computer_ou = f"OU=Computers,OU=pcluster-ad-{self.cfg.stack},{domain_dn(self.cfg.domain)}"
        self.users: dict[str, str] = {}
        # The admin password is the lab's own (provisioning takes it in argv); the join and adding passwords
        # and the nodes' AWS secrets belong to the product's chain and must never show up in any argv.
        self.watch = ArgvWatch({"join password": self.join_password.encode(),
                                "adding account password": self.add_password.encode(),
                                # realm join would carry a one-time password in its argv: never used
                                "one-time password option": b"one-time-password"})
        self._node_index = 9  # hosts[9] is .10
        self._torn_down = False
        self.leftovers: list[str] = []
        scheme = "https" if self.cfg.url_tls else "http"
        self.function_url = f"{scheme}://{self.services_ip}:{self.cfg.url_port}/"
        self.ca_pem = b""
        self.imds_endpoint = f"http://{self.services_ip}" + (
            "" if self.cfg.imds_port == 80 else f":{self.cfg.imds_port}"
        )
        atexit.register(self.teardown)

    # -- context manager -------------------------------------------------------------------------
    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc) -> None:
        self.teardown()

    def _time(self, key: str, t0: float) -> None:
        self.timings[key] = round(time.monotonic() - t0, 2)

    # -- bring-up --------------------------------------------------------------------------------
    def start(self, *, dc: bool = True, services: bool = True) -> Lab:
        if os.geteuid() != 0:
            raise LabError("the AD lab needs root (network/mount namespaces, overlays)")
        missing = missing_deps()
        if missing:
            raise LabError(
                "AD lab dependencies missing: run `sudo tools/install_adlab_deps.sh`. Missing: " + ", ".join(missing)
            )
        cleanup_stale()
        self.watch.start()
        t0 = time.monotonic()
        run(["ip", "netns", "add", self.sw_ns])
        self.netns.append(self.sw_ns)
        self.netns_inodes[self.sw_ns] = _netns_inode(self.sw_ns)
        run(["ip", "-n", self.sw_ns, "link", "set", "lo", "up"])
        run(["ip", "-n", self.sw_ns, "link", "add", "br0", "type", "bridge"])
        run(["ip", "netns", "exec", self.sw_ns, "sysctl", "-qw", "net.ipv6.conf.br0.disable_ipv6=1"])
        run(["ip", "-n", self.sw_ns, "addr", "add", f"{self.services_ip}/{self.net.prefixlen}", "dev", "br0"])
        run(["ip", "-n", self.sw_ns, "link", "set", "br0", "up"])
        self._time("network_s", t0)
        if dc:
            self.start_dc()
        if services:
            self.start_services()
        return self

    def add_host(self, key: str, hostname: str, ip: str, cls=Host, drop_to=None, node_os: str | None = None) -> Host:
        h = cls(self, key, hostname, ip, node_os=node_os)
        self.hosts[key] = h
        h.create_netns(drop_to=drop_to)
        h.spawn()
        h.wait_ready()
        return h

    def start_dc(self) -> None:
        c = self.cfg
        t0 = time.monotonic()
        dc = self.dc = self.add_host("dc", "dc1", self.dc_ip)
        dc.sh(
            f"""set -euo pipefail
printf '127.0.0.1 localhost\\n{self.dc_ip} dc1.{c.domain} dc1\\n' >/etc/hosts
echo dc1 >/etc/hostname
rm -f /etc/samba/smb.conf
samba-tool domain provision --use-rfc2307 --realm={c.realm} --domain={c.netbios} --server-role=dc \\
  --dns-backend=SAMBA_INTERNAL --adminpass="$ADMINPASS" --host-name=dc1 --host-ip={self.dc_ip} \\
  --option='interfaces = lo eth0' --option='bind interfaces only = yes' >/var/log/provision.log 2>&1
sed -i '/dns forwarder/d' /etc/samba/smb.conf
cp /var/lib/samba/private/krb5.conf /etc/krb5.conf
printf 'search {c.domain}\\nnameserver {self.dc_ip}\\n' >/etc/resolv.conf
""",
            env={"ADMINPASS": self.admin_password},
            timeout=180,
        )
        self._time("dc_provision_s", t0)
        t1 = time.monotonic()
        self.samba_log = open(dc.root / "samba.log", "wb")
        dc.popen(
            ["/usr/sbin/samba", "--foreground", "--no-process-group", "--debug-stdout"],
            stdout=self.samba_log,
            stderr=subprocess.STDOUT,
        )
        self.wait_dc_ready()
        self.dns_zone(c.ec2_domain)
        self._time("dc_start_s", t1)
        t2 = time.monotonic()
        self.populate(
            {
                "users": [{"name": self.join_user, "password": self.join_password},
                          {"name": self.add_user, "password": self.add_password}],
                "delegate_join": {"user": self.join_user},
                "delegate_add": {"user": self.add_user,
                                 "ou": self.computer_ou[: -len(domain_dn(self.cfg.domain)) - 1]},
            }
        )
        self._time("dc_join_user_s", t2)

    def wait_dc_ready(self, timeout: float = 60) -> None:
        c = self.cfg
        probe = (
            f"dig +short +time=1 +tries=1 @{self.dc_ip} SRV _ldap._tcp.{c.domain} | grep -q dc1 && "
            f"timeout 1 bash -c '</dev/tcp/{self.dc_ip}/389' && timeout 1 bash -c '</dev/tcp/{self.dc_ip}/88' && "
            f"timeout 1 bash -c '</dev/tcp/{self.dc_ip}/445'"
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.dc.sh(probe, check=False, timeout=10).returncode == 0:
                return
            time.sleep(0.25)
        raise LabError("DC did not become ready: " + (self.dc.root / "samba.log").read_text(errors="replace")[-3000:])

    def dns_zone(self, zone: str) -> None:
        """A zone in the DC's DNS. Stand-in for what the AD DNS forwards to the VPC resolver on AWS
        (the EC2 internal domain, a cluster's Route 53 private zone): tests/adlab/README.md."""
        self.dc.run(["samba-tool", "dns", "zonecreate", "127.0.0.1", zone, "-U", "Administrator"],
                    env={"PASSWD": self.admin_password}, timeout=60)

    def dns_add(self, zone: str, name: str, ip: str) -> None:
        """An A record in a zone of the DC's DNS (the password travels in the environment, not argv)."""
        self.dc.run(["samba-tool", "dns", "add", "127.0.0.1", zone, name, "A", ip, "-U", "Administrator"],
                    env={"PASSWD": self.admin_password}, timeout=60)

    def add_ec2_dns(self, nodes: list[Host]) -> None:
        """The EC2 host names of nodes, as the VPC resolver answers them (ip-a-b-c-d.<ec2 domain>)."""
        for node in nodes:
            self.dns_add(self.cfg.ec2_domain, node.hostname, node.ip)

    def populate(self, spec: dict, timeout: float = 1800) -> dict:
        spec = {"realm": self.cfg.realm, **spec}
        res = self.dc.run(["/usr/bin/python3", str(HERE / "dctool.py"), "-"], input=json.dumps(spec), timeout=timeout)
        for u in spec.get("users", []):
            self.users[u["name"]] = u["password"]
        return json.loads(res.stdout.strip().splitlines()[-1])

    def start_services(self) -> None:
        c = self.cfg
        t0 = time.monotonic()
        conf = {
            "region": c.region,
            "stack": c.stack,
            "cluster_name": c.cluster_name,
            "domain": c.domain,
            "join_user": self.add_user,
            "join_password": self.add_password,
            "dc_ip": self.dc_ip,
            "computer_ou": self.computer_ou,
            "computer_prefix": computer_prefix(c.cluster_name),
            "services_ip": self.services_ip,
            "imds_port": c.imds_port,
            "url_port": c.url_port,
            "url_id": "adlab" + secrets.token_hex(11),
            "handler_path": str(REPO / "lambda_src" / "join_handler.py"),
            "path_handlers": dict(c.path_handlers),
            **({"classic_join_user": self.join_user, "classic_join_password": self.join_password}
               if c.path_handlers else {}),
            "handler_log": str(self.root / "handler.log"),
        }
        if c.max_joins_in_progress is not None:
            conf["max_joins_in_progress"] = c.max_joins_in_progress
        if c.url_tls:
            self.ca_pem, cert, key = make_tls(self.root, self.services_ip)
            conf.update(tls_cert=str(cert), tls_key=str(key))
        cpath = self.root / "labsvc.json"
        cpath.write_text(json.dumps(conf))
        os.chmod(cpath, 0o600)
        self.svc_log = open(self.root / "labsvc.log", "wb")
        self.svc = subprocess.Popen(
            ["ip", "netns", "exec", self.sw_ns, lab_python(), str(HERE / "labsvc.py"), str(cpath)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.svc_log,
            cwd=str(REPO),
            text=True,
            start_new_session=True,
        )
        self.procs.append(self.svc)
        ready = self._svc_read(timeout=60)
        if not ready.get("ok"):
            raise LabError(f"lab services failed: {ready}")
        self.services_info = ready
        self._time("services_s", t0)

    def _svc_read(self, timeout: float) -> dict:
        assert self.svc and self.svc.stdout
        r, _, _ = select.select([self.svc.stdout], [], [], timeout)
        line = self.svc.stdout.readline() if r else ""
        if not line:
            err = (self.root / "labsvc.log").read_text(errors="replace")
            raise LabError(f"lab services did not answer: {err[-4000:]}")
        return json.loads(line)

    def svc_call(self, op: str, **kw) -> dict:
        with self._svc_lock:
            assert self.svc and self.svc.stdin
            self.svc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
            self.svc.stdin.flush()
            out = self._svc_read(timeout=60)
        if not out.get("ok"):
            raise LabError(f"lab services: {op} failed: {out.get('error')}")
        return out

    def requests(self) -> list[dict]:
        return self.svc_call("requests")["requests"]

    def handler_log(self) -> str:
        p = self.root / "handler.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def add_client(self) -> Host:
        self.client = self.add_host("cl", "client1", self.client_ip)
        self.trust_ca(self.client)
        return self.client

    def client_source(self) -> str:
        """A further address of the ssh client (from the nodes' pool, on its eth0): a fresh source for logins.
        OpenSSH >= 9.8 (Debian 13 nodes) drops every connection from an address that caused a few failed
        authentications (PerSourcePenalties); a test that refuses logins on purpose moves its later logins to a
        new source (`ssh -b`), as different users behind different addresses would be."""
        assert self.client is not None, "add_client() first"
        ip = self.next_ip()[1]
        self.client.run(["ip", "addr", "add", f"{ip}/{self.net.prefixlen}", "dev", "eth0"])
        return ip

    def trust_ca(self, host: Host) -> None:
        """Add the lab CA to the host's system bundle (what curl uses), as an AMI with a private CA would."""
        if self.ca_pem:
            host.write("/tmp/adlab-ca.pem", self.ca_pem)
            host.sh("cat /tmp/adlab-ca.pem >>/etc/ssl/certs/ca-certificates.crt")

    def next_ip(self) -> tuple[int, str]:
        i = self._node_index
        self._node_index += 1
        if i >= len(self._hosts):
            raise LabError("lab subnet exhausted")
        return i, str(self._hosts[i])

    def add_nodes(self, specs: list[dict]) -> list[Node]:
        """Create nodes (their namespaces start in parallel). Spec keys, all optional: tagged, vpc
        ("cluster"/"other"), state, profile, creds_role, session_of (another Node), dc_unreachable,
        launch_template ("cluster", "foreign": made by hand outside the cluster's stack, "none"),
        os (NODE_OS; default cfg.node_os, i.e. ADLAB_NODE_OS)."""
        made: list[Node] = []
        for spec in specs:
            i, ip = self.next_ip()
            hostname = "ip-" + ip.replace(".", "-")
            node = Node(self, f"n{i}", hostname, ip, node_os=spec.get("os") or self.cfg.node_os)
            self.hosts[node.key] = node
            node.create_netns(drop_to=[self.dc_ip] if spec.get("dc_unreachable") else None)
            node.spawn()
            made.append(node)
        for node in made:
            node.wait_ready()
        self.add_ec2_dns(made)
        for node, spec in zip(made, specs, strict=True):
            node.base_setup()
            req = {k: spec[k] for k in ("tagged", "vpc", "state", "creds_role", "profile", "launch_template")
                   if k in spec}
            if spec.get("session_of") is not None:
                req["session_name"] = spec["session_of"].instance_id
            info = self.svc_call("add_node", name=node.hostname, ip=node.ip, **req)["node"]
            node.instance_id = info["instance_id"]
            node.node_info = info
            self.watch.add(f"secret key of {node.key}", info["secret_key"].encode())
            self.watch.add(f"session token of {node.key}", info["token"].encode())
            self.nodes.append(node)
        return made

    def add_node(self, **spec) -> Node:
        """One node; keys as for add_nodes, e.g. add_node(os="debian13")."""
        return self.add_nodes([spec])[0]

    def remove_host(self, host: Host) -> None:
        host.kill()
        self._del_netns(host.ns)

    # -- teardown --------------------------------------------------------------------------------
    def _del_netns(self, ns: str) -> None:
        inode = self.netns_inodes.get(ns)
        # Only while the name still holds that namespace: once it is gone its inode can be reused by
        # another lab's namespace (seen with two labs at once), whose processes must live.
        if inode and _netns_inode(ns) == inode:
            for pid in _pids_in_netns(inode):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if _netns_inode(ns) is not None:
            run(["ip", "netns", "del", ns], check=False)

    def teardown(self) -> list[str]:
        """Stop everything the lab started; return (and remember) whatever is still left."""
        if self._torn_down:
            return self.leftovers
        self._torn_down = True
        with contextlib.suppress(Exception):
            self.watch.stop()
        if self.svc and self.svc.poll() is None:
            with contextlib.suppress(Exception):
                self.svc.stdin.close()
            try:
                self.svc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.svc.kill()
        for h in self.hosts.values():
            if h.pid and _pid_alive(h.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(h.pid, signal.SIGKILL)
        # Let each unshare reap its namespace init (killing unshare first would leave a zombie).
        for h in self.hosts.values():
            if h.proc:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    h.proc.wait(timeout=10)
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
        for p in self.procs:
            with contextlib.suppress(Exception):
                p.wait(timeout=10)
        for ns in reversed(self.netns):
            self._del_netns(ns)
        for f in ("samba_log", "svc_log"):
            with contextlib.suppress(Exception):
                getattr(self, f).close()
        self.leftovers = self.check_clean()
        if not self.cfg.keep and not self.leftovers:
            shutil.rmtree(self.root, ignore_errors=True)
        with contextlib.suppress(Exception):
            atexit.unregister(self.teardown)
        return self.leftovers

    def check_clean(self) -> list[str]:
        """Everything the lab may leave behind: processes, namespaces, mounts, bridges, interfaces."""
        left: list[str] = []
        deadline = time.monotonic() + 10
        while True:
            left = []
            for p in self.procs:
                if p.poll() is None:
                    left.append(f"process {p.pid} ({' '.join(map(str, p.args))[:80]}) still running")
            for pid in self.init_pids:
                if _pid_running(pid):
                    left.append(f"namespace init {pid} still running")
            for ns, inode in self.netns_inodes.items():
                if _netns_inode(ns) is not None:
                    left.append(f"netns {ns} still exists")
                if inode:
                    pids = _pids_in_netns(inode)
                    if pids:
                        left.append(f"processes {pids} still in netns {ns}")
            ours = [n for n in run(["ip", "netns", "list"]).stdout.split() if n.startswith(self.id + "-")]
            left += [f"netns {n} listed" for n in ours if f"netns {n} still exists" not in left]
            mi = Path("/proc/self/mountinfo").read_text()
            for line in mi.splitlines():
                if str(self.root) in line or f"/run/netns/{self.id}-" in line:
                    left.append(f"mount left: {line[:200]}")
            links = run(["ip", "-o", "link", "show"]).stdout
            for line in links.splitlines():
                name = line.split(":")[1].strip().split("@")[0]
                if name.startswith(self.id) or name == "br0" or re.fullmatch(r"v(n\d+|dc|cl)", name):
                    left.append(f"interface {name} in the host namespace")
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.2)


def make_tls(root: Path, ip: str) -> tuple[bytes, Path, Path]:
    """A lab CA and a server certificate for the function URL's IP; returns (CA PEM, cert, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "adlab test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ip)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_pem = ca.public_bytes(serialization.Encoding.PEM)
    cert_path, key_path = root / "url-cert.pem", root / "url-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    os.chmod(key_path, 0o600)
    return ca_pem, cert_path, key_path


def cleanup_stale() -> list[str]:
    """Remove namespaces and folders of labs whose owning process is gone (a killed earlier run)."""
    removed = []
    names = run(["ip", "netns", "list"], check=False).stdout.split()
    for name in names:
        m = NS_RE.match(name)
        if not m or _pid_alive(int(m.group(1))):
            continue
        inode = _netns_inode(name)
        if inode:
            for pid in _pids_in_netns(inode):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        run(["ip", "netns", "del", name], check=False)
        removed.append(name)
    for d in Path("/tmp").glob(f"{NS_PREFIX}*x*-*"):
        m = NS_RE.match(d.name)
        if m and not _pid_alive(int(m.group(1))) and d.is_dir():
            shutil.rmtree(d, ignore_errors=True)
            removed.append(str(d))
    return removed


# ssh options for password logins from the lab client: the lab's host keys are new every run.
SSH_OPTS = [
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "LogLevel=ERROR",
    "-o",
    "PubkeyAuthentication=no",
    "-o",
    "PreferredAuthentications=password,keyboard-interactive",
    "-o",
    "NumberOfPasswordPrompts=1",
    "-o",
    "ConnectTimeout=10",
]
