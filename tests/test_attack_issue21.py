"""Attack review of issue 21 (the node side in a Python node agent), with fakes and the bootstrap sandbox.

Attackers: (1) a local or AD user with a shell or a job on a node, before, during and after a join or a re-run of
join-domain.sh (root); (2) root on one compute node; (3) whoever starts an instance with the cluster's instance
profile. A finding's test is `xfail(strict=True)`: it fails today and says what the fix must make true. A refused
attack's test passes and guards against a regression.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from pcluster_ad.bootstrap.node_agent import access, files
from pcluster_ad.components.bootstrap_scripts import bake_node_agent
from tests.bootstrap_sandbox.sandbox import AGENT_DIR, JOIN_SCRIPT, node_agent_argv
from tests.bootstrap_sandbox.servers import FakeFunctionUrl, FakeImds
from tests.test_bootstrap_scripts import GOOD, sandbox  # noqa: F401  (fixture)

DOMAIN = "corp.example"
SECRET = "Otp-$(touch /tmp/x);`id`'\"\\ 42"


def shared_dir(path: Path) -> Path:
    # What /tmp is: every user may create entries (sticky, world-writable).
    path.mkdir()
    path.chmod(0o1777)
    return path


def plant(path: Path, marker: Path, body: str = "") -> None:
    # A module another user left there: it records that it ran (as whoever imported it).
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"open({str(marker)!r}, 'a').write(__name__ + '\\n')\n{body}")


# --- finding 1: a checkout copy's folder fallback trusts a shared directory ---------------------------------------
# ParallelCluster downloads an OnNodeStart script with tempfile.NamedTemporaryFile (aws-parallelcluster-cookbook,
# custom_action_executor.py), i.e. into /tmp; the README's manual re-run is `sudo bash join-domain.sh` in the current
# directory. A copy whose NODE_AGENT_ZIP line is empty (not baked by the stack) takes `dirname $0` as the folder that
# holds node_agent/ and puts it FIRST on root's sys.path. In /tmp, another user's node_agent/__main__.py passes the
# script's only check (-f) and runs as root; with a genuine node_agent/ beside it, any standard module the agent
# imports later (json, hmac...) is found in that directory first.


def test_a_checkout_copy_in_a_shared_directory_never_runs_a_planted_agent(sandbox, tmp_path):  # noqa: F811
    shared = shared_dir(tmp_path / "shared")
    script = shared / "join-domain.sh"
    shutil.copy(JOIN_SCRIPT, script)
    marker = tmp_path / "ran-as-root"
    plant(shared / "node_agent" / "__init__.py", marker)
    plant(shared / "node_agent" / "__main__.py", marker, "import sys\ndef main():\n    sys.exit(3)\n")
    box = sandbox()
    with FakeImds() as fake_imds, FakeFunctionUrl([GOOD]) as fn:
        result = box.run(script, ["--function-url", fn.url, "--region", "eu-west-1"], box.env(fake_imds.url))
    assert not marker.exists(), f"root imported another user's code from {shared}:\n{result.output}"
    assert result.rc == 3 and fn.requests == []


def test_a_checkout_folder_in_a_shared_directory_never_shadows_a_standard_module(sandbox, tmp_path):  # noqa: F811
    shared = shared_dir(tmp_path / "shared")
    script = shared / "join-domain.sh"
    shutil.copy(JOIN_SCRIPT, script)
    shutil.copytree(AGENT_DIR, shared / "node_agent", ignore=shutil.ignore_patterns("__pycache__"))
    marker = tmp_path / "ran-as-root"
    for name in ("json", "hmac"):  # sigv4 imports both at the first request
        plant(shared / f"{name}.py", marker, "import os\nos._exit(3)\n")
    box = sandbox()
    with FakeImds() as fake_imds, FakeFunctionUrl([GOOD]) as fn:
        result = box.run(script, ["--function-url", fn.url, "--region", "eu-west-1", "--timeout", "5"],
                         box.env(fake_imds.url))
    assert not marker.exists(), f"root imported another user's module from {shared}:\n{result.output}"
    assert result.rc == 3 and fn.requests == []


def test_the_baked_copy_in_a_shared_directory_ignores_what_lies_beside_it(sandbox, tmp_path):  # noqa: F811
    # Refused: the stack's upload (the zip baked in) never looks beside itself, wherever ParallelCluster put it.
    shared = shared_dir(tmp_path / "shared")
    script = shared / "join-domain.sh"
    script.write_text(bake_node_agent(JOIN_SCRIPT.read_text(), AGENT_DIR))
    marker = tmp_path / "ran-as-root"
    plant(shared / "node_agent" / "__init__.py", marker)
    plant(shared / "node_agent" / "__main__.py", marker, "def main():\n    pass\n")
    for name in ("json", "hmac", "tempfile", "subprocess", "random"):
        plant(shared / f"{name}.py", marker, "import os\nos._exit(3)\n")
    box = sandbox()
    with FakeImds() as fake_imds, FakeFunctionUrl([GOOD]) as fn:
        result = box.run(script, ["--function-url", fn.url, "--region", "eu-west-1"], box.env(fake_imds.url))
    assert result.rc == 0, result.output
    assert not marker.exists()


# --- refused: what a user can make `python3 -I` import ----------------------------------------------------------


def test_the_agents_python_ignores_a_users_environment_home_and_current_directory(tmp_path):
    # The root process's environment is ParallelCluster's, but a re-run by an admin inherits some of a shell's (sudo
    # keeps a few variables; `sudo -E` all): PYTHON* variables, the user site of HOME and the current directory
    # must not bring code into the agent.
    evil = shared_dir(tmp_path / "evil")
    marker = tmp_path / "ran"
    for name in ("json", "re", "sitecustomize", "usercustomize", "node_agent/__init__"):
        plant(evil / f"{name}.py", marker)
    plant(evil / "startup.py", marker)
    home = tmp_path / "home"
    v = sys.version_info
    plant(home / ".local" / "lib" / f"python{v.major}.{v.minor}" / "site-packages" / "usercustomize.py", marker)
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "PYTHONPATH": str(evil), "PYTHONSTARTUP":
           str(evil / "startup.py"), "PYTHONUSERBASE": str(home / ".local"), "PYTHONINSPECT": "1",
           "PYTHONSAFEPATH": "", "LC_ALL": "C"}
    # imds-address imports re (through urllib.parse): a re.py in the current directory would be found first
    proc = subprocess.run([*node_agent_argv(), "imds-address", "http://10.98.1.1:8081"], capture_output=True,
                          text=True, env=env, cwd=evil, timeout=60)
    assert (proc.returncode, proc.stdout) == (0, "4 10.98.1.1 8081\n"), proc.stderr
    assert not marker.exists()


def test_the_decoded_agent_lies_in_a_fresh_private_directory(tmp_path):
    # mktemp -d under TMPDIR (a shared directory): a name nobody can guess or create first, 0700, so no user can swap
    # the zip that python3 reads again at each import.
    baked = bake_node_agent(JOIN_SCRIPT.read_text(), AGENT_DIR)
    zip_line = re.search(r"^NODE_AGENT_ZIP='.+'$", baked, re.M).group(0)
    func = re.search(r"^start_node_agent\(\) \{\n.*?^\}\n", baked, re.M | re.S).group(0)
    shared = shared_dir(tmp_path / "shared")
    prog = (f'die() {{ echo "$2"; exit "$1"; }}\n{zip_line}\nNODE_AGENT=""\nNODE_AGENT_TMP=""\n{func}'
            'start_node_agent\nstat -c "%a %u" -- "$NODE_AGENT_TMP" "$NODE_AGENT"\nprintf "%s\\n" "$NODE_AGENT"\n')
    proc = subprocess.run(["bash", "-c", prog], capture_output=True, text=True, env={**os.environ,
                          "TMPDIR": str(shared)}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    dir_mode, file_mode, agent = proc.stdout.splitlines()
    assert dir_mode == f"700 {os.geteuid()}"
    assert int(file_mode.split()[0], 8) & 0o022 == 0
    assert Path(agent).parent.parent == shared and Path(agent).parent.name.startswith("tmp.")


# --- refused: files root writes where a user could race it ------------------------------------------------------


class Run:
    def __init__(self):
        self.checked: list[tuple[int, bool]] = []

    def __call__(self, argv, quiet=False):
        if argv[0] == "visudo":
            st = os.lstat(argv[-1])
            self.checked.append((stat.S_IMODE(st.st_mode), stat.S_ISREG(st.st_mode)))
        return 0


def test_drop_ins_replace_a_planted_symlink_instead_of_writing_through_it(tmp_path):
    # The sudoers drop-in and sssd's snippets go through a fresh temporary dot-file (mkstemp: O_EXCL, 0600) and a
    # rename: a symlink at the final name is replaced, its target never written; the file visudo checks is 0440 and
    # regular.
    root = tmp_path / "root"
    target = tmp_path / "elsewhere"
    target.write_text("untouched\n")
    for rel in (access.SUDOERS_FILE, access.ACCESS_CONF, access.FRESH_CONF):
        link = root / rel.lstrip("/")
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target)
    cfg = access.settings([f"root={root}", f"domain={DOMAIN}", "admin=hpc-admins"])
    run = Run()
    access.login_access(cfg, out=lambda _: None)
    access.admin_access(cfg, out=lambda _: None, run=run, which=lambda _: "/usr/sbin/visudo")
    assert target.read_text() == "untouched\n"
    assert run.checked == [(0o440, True)]
    for rel in (access.SUDOERS_FILE, access.ACCESS_CONF, access.FRESH_CONF):
        path = root / rel.lstrip("/")
        assert path.is_file() and not path.is_symlink()
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == (0 if rel != access.SUDOERS_FILE else 0o040)
        assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []


def test_a_temporary_file_beside_a_drop_in_is_new_and_private(tmp_path):
    # A name planted in advance cannot be the temporary file (mkstemp makes a new one, O_EXCL), and it is 0600 until
    # its content is complete.
    d = tmp_path / "sudoers.d"
    d.mkdir()
    tmp = Path(files.temp_beside(str(d / "50-pcluster-ad-admins")))
    try:
        assert tmp.name.startswith(".pcluster-ad.") and stat.S_IMODE(tmp.stat().st_mode) == 0o600
        assert tmp.stat().st_size == 0
    finally:
        tmp.unlink()


# --- refused: the one-time password reaches adcli on stdin only (argv, environment: /proc of root processes) -------


def test_the_one_time_password_is_in_no_argv_environment_or_log_of_the_join(tmp_path):
    # Any local user reads /proc/<pid>/cmdline of root's processes (and root's environ only as root): the agent gets
    # the secret on stdin and hands it to adcli on stdin, never as an argument or a variable; its log lines and
    # errors never show it.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    rec = tmp_path / "rec"
    rec.mkdir()
    (bindir / "adcli").write_text(
        "#!/bin/sh\n"
        f'printf "%s\\n" "$@" >"{rec}/argv"\nenv >"{rec}/env"\ncat >"{rec}/stdin"\n'
        f'for p in $(pgrep -f node_agent); do tr "\\0" " " </proc/$p/cmdline >>"{rec}/agent-cmdline"; done\n'
        "exit 0\n")
    (bindir / "klist").write_text("#!/bin/sh\necho '   2 NODE01$@CORP.EXAMPLE (aes256-cts-hmac-sha1-96)'\n")
    for f in bindir.iterdir():
        f.chmod(0o755)
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "LC_ALL": "C", "PCLUSTER_AD_TEST_NO_BACKOFF": "1"}
    proc = subprocess.run([*node_agent_argv(), "adcli-join", DOMAIN, "CORP.EXAMPLE", "NODE01",
                           "ip-10-0-0-12.corp.example", str(tmp_path), "60", "600"], input=SECRET + "\n",
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (rec / "stdin").read_text() == SECRET + "\n"
    assert "adcli-join" in (rec / "agent-cmdline").read_text(), "the agent's own command line was read"
    for name in ("argv", "env", "agent-cmdline"):
        text = (rec / name).read_text() if (rec / name).exists() else ""
        assert "Otp-" not in text, name
    assert "Otp-" not in proc.stdout + proc.stderr


# --- branch agent-http (IMDS and the signed requests in Python, urllib): these tests run once it is merged -----------


def _agent_http():
    from pcluster_ad.bootstrap.node_agent import imds
    if not hasattr(imds, "role_credentials"):
        pytest.skip("IMDS in the node agent (branch agent-http) is not merged")
    return imds


class _Recorder:
    """A loopback HTTP server that records each request line and answers from `answer(method, path)`."""

    def __init__(self, answer):
        import http.server
        import threading
        seen = self.seen = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def _any(self):
                seen.append(f"{self.command} {self.path}")
                body = answer(self.command, self.path)
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_PUT = do_POST = _any

            def log_message(self, *args):
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_imds_is_asked_directly_whatever_proxy_the_environment_names(monkeypatch):
    # Refused: the role's credentials never pass through a proxy (curl's --noproxy '*' before).
    imds = _agent_http()
    creds = (b'{"Code": "Success", "AccessKeyId": "AKIDEXAMPLE", "SecretAccessKey": "s3cr3t", '
             b'"Token": "tok"}')
    server = _Recorder(lambda m, p: {"/latest/api/token": b"T0K3N",
                                     "/latest/meta-data/instance-id": b"i-0123456789abcdef0",
                                     "/latest/meta-data/iam/security-credentials/": b"node-role"}.get(p, creds))
    proxy = _Recorder(lambda m, p: b"")
    try:
        for name in ("http_proxy", "HTTP_PROXY", "all_proxy"):
            monkeypatch.setenv(name, proxy.url)
        monkeypatch.delenv("no_proxy", raising=False)
        monkeypatch.delenv("NO_PROXY", raising=False)
        assert imds.role_credentials(server.url)[0] == "i-0123456789abcdef0"
    finally:
        server.close()
        proxy.close()
    assert proxy.seen == [] and len(server.seen) == 4


def test_an_unusable_imds_token_is_never_printed():
    imds = _agent_http()
    server = _Recorder(lambda m, p: b"IMDS-SESSION-TOKEN-123\rX" if p == "/latest/api/token" else b"i-1")
    try:
        with pytest.raises(imds.ImdsError) as err:
            imds.role_credentials(server.url)
    finally:
        server.close()
    assert "IMDS-SESSION-TOKEN" not in str(err.value), str(err.value)
