"""sssd as a service: its cache in memory, its start with the domain (after PAM's mkhomedir), and the check that it
answers for the domain. The files it reads are sssd_config's."""

import os

from .common import NodeError
from .node import Node
from .pam import enable_mkhomedir

SSSD_DB = "/var/lib/sss/db"
SSSD_DB_UNIT = "var-lib-sss-db.mount"
SYSTEMD_DIR = "/etc/systemd/system"
CACHE_DROPIN = "sssd.service.d/50-pcluster-ad-cache-in-memory.conf"
VERIFY_CAP_SECONDS = 120
VERIFY_INTERVAL_SECONDS = 2
RESTART_AFTER_SECONDS = 10  # sssd not up this long after the restart: restart it once more


def sssd_running(root, proc="/proc"):
    for pidfile in (root + "/run/sssd.pid", root + "/var/run/sssd.pid"):
        try:
            with open(pidfile) as f:
                pid = f.readline().strip()
            if not pid.isdigit():
                continue
            with open(f"{proc}/{pid}/comm") as f:
                if f.read().strip() == "sssd":
                    return True
        except OSError:
            continue
    return False


def _write(path, text):
    try:
        with open(path, "w") as f:
            f.write(text)
    except OSError:
        raise NodeError(f"cannot write {path}") from None


def cache_in_memory(node, root):
    """sssd's cache on tmpfs: a cold `id` of a user in 200 groups writes ~400 cache entries, each synced to disk.
    Trade-off: the cache (and cached logins while the directory is unreachable) does not survive a reboot. A mount
    unit mounts it again at every boot, before sssd (RequiresMountsFor in a drop-in)."""
    db = root + SSSD_DB
    unit = root + SYSTEMD_DIR + "/" + SSSD_DB_UNIT
    dropin = root + SYSTEMD_DIR + "/" + CACHE_DROPIN
    try:
        os.makedirs(db, exist_ok=True)
    except OSError:
        raise NodeError(f"cannot create {db}") from None
    st = os.stat(db)  # the owner and mode as the package made them (sssd runs as root or as user sssd)
    opts = f"uid={st.st_uid},gid={st.st_gid},mode={st.st_mode & 0o7777:o},size=512m,noexec,nosuid,nodev"
    if node.which("selinuxenabled") and node.run(["selinuxenabled"]) == 0:
        opts += ",context=system_u:object_r:sssd_var_lib_t:s0"
    try:
        os.makedirs(os.path.dirname(unit), exist_ok=True)
        os.makedirs(os.path.dirname(dropin), exist_ok=True)
    except OSError:
        raise NodeError("cannot create systemd unit directories") from None
    _write(unit, "[Unit]\nDescription=pcluster-ad: sssd cache in memory (fast lookups in big directories)\n"
                 f"Before=sssd.service\n\n[Mount]\nWhat=tmpfs\nWhere={SSSD_DB}\nType=tmpfs\nOptions={opts}\n")
    _write(dropin, f"[Unit]\nRequiresMountsFor={SSSD_DB}\n")
    if node.run(["timeout", "-k", "10", "60", "systemctl", "daemon-reload"]) != 0:
        node.log("WARNING: systemctl daemon-reload failed")
    if root:
        node.log(f"sssd: test root {root}: the unit is written, nothing is mounted")
        return
    if node.output(["stat", "-f", "-c", "%T", "--", db]).strip() == "tmpfs":
        node.log(f"sssd: cache already in memory ({SSSD_DB})")
        return
    if sssd_running(root) and node.run(["timeout", "-k", "10", "60", "systemctl", "stop", "sssd"]) != 0:
        node.log("WARNING: systemctl stop sssd failed")
    if node.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", db]) != 0:
        raise NodeError(f"cannot mount a tmpfs on {db}")
    node.log(f"sssd: cache in memory ({SSSD_DB} on tmpfs; {SSSD_DB_UNIT} mounts it at every boot)")


def verify(node, root, group, id_mode, remaining):
    """sssd runs and resolves GROUP, within min(remaining, 120) s; bounded retries, as the domain can be offline for a
    moment right after a restart, and one more restart when sssd did not come up at all."""
    limit = max(1, min(remaining, VERIFY_CAP_SECONDS))
    start = node.clock()
    until, restarted_at = start + limit, start
    while True:
        running = lookup = False
        if sssd_running(root):
            running = True
            if node.run(["getent", "-s", "sss", "group", group], quiet=True) == 0:
                lookup = True
                break
        elif (restarted_at is not None and node.clock() - restarted_at >= RESTART_AFTER_SECONDS
              and until - node.clock() > 5):
            node.log("sssd is not running; restarting it once more")
            if node.run(["timeout", "-k", "10", "60", "systemctl", "restart", "sssd"]) != 0:
                node.log("WARNING: systemctl restart sssd failed")
            restarted_at = None
        if node.clock() >= until:
            break
        node.sleep(VERIFY_INTERVAL_SECONDS)
    if not running:
        raise NodeError("sssd is not running after the join (realm join exits 0 even when sssd fails to start): see "
                        "/var/log/sssd/ and 'systemctl status sssd'")
    if not lookup:
        hint = (" (--id-mode rfc2307: a group resolves only with a gidNumber; DirectoryAdmin gives the stack's groups "
                "one, pcluster-ad:identity.mode)") if id_mode == "rfc2307" else ""
        raise NodeError(f"sssd runs but the group '{group}' does not resolve through sssd (getent group) within "
                        f"{limit}s{hint}: see /var/log/sssd/")
    node.log(f"verified: sssd is running and the domain answers ('{group}' resolves)")


def start(node, root, os_family, pam_updated, group, id_mode, remaining):
    """After the sssd configuration is written: mkhomedir, sssd enabled at boot and restarted, then verified."""
    deadline = node.clock() + remaining
    enable_mkhomedir(node, root, os_family, pam_updated)
    # realmd enabled sssd when it ran the join; adcli does not: sssd must start at every boot.
    if node.run(["timeout", "-k", "10", "60", "systemctl", "enable", "sssd"]) != 0:
        node.log("WARNING: systemctl enable sssd failed")
    node.log("sssd: restarting")
    if node.run(["timeout", "-k", "10", "120", "systemctl", "restart", "sssd"]) != 0:
        node.log("WARNING: systemctl restart sssd failed")
    verify(node, root, group, id_mode, int(deadline - node.clock()))


def cache_in_memory_cli(root):
    node = Node()
    node.main(lambda: cache_in_memory(node, root))


def start_cli(root, os_family, pam_updated, group, id_mode, remaining):
    node = Node()
    node.main(lambda: start(node, root, os_family, pam_updated == "1", group, id_mode, int(remaining)))
