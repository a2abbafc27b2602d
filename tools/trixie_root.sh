#!/usr/bin/env bash
# Build (once) and print the path of a cached Debian 13 (trixie) root filesystem for the AD lab's
# second node generation (tests/adlab, Lab.add_nodes(..., os="debian13") or ADLAB_NODE_OS=debian13).
# The lab mounts it read-only as the lower dir of each debian13 node's overlay root.
#
# Idempotent: the root lives in $ADLAB_ROOTS_DIR/trixie-<hash of the package list and mirrors>; when it
# exists the script prints its path and does nothing else (no network). A lock serializes builds.
# stdout: the path only; progress and timing go to stderr. Run as root on Debian 12 or 13.
set -euo pipefail

ROOTS_DIR=${ADLAB_ROOTS_DIR:-/var/cache/pcluster-ad-adlab}
MIRROR=${ADLAB_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${ADLAB_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
SUITE=trixie

# The node side of tools/install_adlab_deps.sh (the DC, the client and the sandbox-only tools stay on
# the machine). No packagekit: the product's realm join runs with --install=/ and says packagekit is not
# needed (bootstrap/join-domain.sh install_packages); a Debian 13 node without it proves that.
NODE_PACKAGES=(
  sssd sssd-ad sssd-tools realmd adcli krb5-user libnss-sss libpam-sss libpam-modules libpam-runtime
  polkitd dbus openssh-server openssh-client
  # as on the Debian 12 machine and cloud images: systemd's logind and PAM module (else polkitd pulls
  # elogind); systemd is not PID 1 in a lab host, its systemctl is the lab's shim
  systemd libpam-systemd
  sudo
  bind9-dnsutils iproute2 util-linux procps psmisc curl ca-certificates
  iptables
  python3 jq hostname
  # pam_cap in common-auth, as on the Debian 12 machine and Debian/Ubuntu images (libcap2-bin recommends
  # it): the product drops it when it grants nothing
  libcap2-bin libpam-cap
  # the attacker's compiler: test_access.py's user builds her LD_PRELOAD library on the node
  gcc libc6-dev
  # the attacker's LDAP client: root on a node writes to the directory as the node's computer account
  # (ldapmodify/ldapdelete -Y GSSAPI), as on a Debian 12 node. Not ldb-tools: Debian 13's is built without
  # Samba's credential options (no --use-kerberos)
  ldap-utils libsasl2-modules-gssapi-mit
)
# The lab's systemctl shim drives /etc/init.d scripts (no systemd as PID 1 in a lab host): Debian 13's
# sssd-common, openssh-server and dbus still ship theirs.

log() { echo "trixie root: $*" >&2; }

if [[ "$(id -u)" != 0 ]]; then
  log "must run as root (debootstrap, chroot)"
  exit 1
fi

t0=$(date +%s.%N)
# Bump when the build steps below change what ends up in the root (the package list is hashed anyway).
BUILD_FORMAT=1
hash=$(echo "$BUILD_FORMAT $SUITE $MIRROR $SECURITY_MIRROR ${NODE_PACKAGES[*]}" | sha256sum | cut -c1-12)
dest="$ROOTS_DIR/$SUITE-$hash"
elapsed() { awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

if [[ -f "$dest/etc/adlab-root-versions" ]]; then
  log "cached ($(elapsed) s): $dest"
  echo "$dest"
  exit 0
fi

mkdir -p "$ROOTS_DIR"
exec 9>"$ROOTS_DIR/.$SUITE.lock"
flock 9
if [[ -f "$dest/etc/adlab-root-versions" ]]; then # built by another run while we waited
  log "cached, built by a concurrent run ($(elapsed) s): $dest"
  echo "$dest"
  exit 0
fi

for tool in debootstrap chroot unshare; do
  if ! command -v "$tool" >/dev/null; then
    log "$tool missing: apt-get install debootstrap (tools/install_adlab_deps.sh installs it)"
    exit 1
  fi
done

build="$ROOTS_DIR/.build-$SUITE-$hash-$$"
cleanup() { rm -rf --one-file-system "$build"; }
trap cleanup EXIT
rm -rf --one-file-system "$ROOTS_DIR/.build-$SUITE-"* # left by a killed build (we hold the lock)

log "debootstrap --variant=minbase $SUITE from $MIRROR into $build"
debootstrap --variant=minbase --include=ca-certificates "$SUITE" "$build" "$MIRROR" >"$ROOTS_DIR/.$SUITE-debootstrap.log" 2>&1 || {
  tail -n 30 "$ROOTS_DIR/.$SUITE-debootstrap.log" >&2
  log "debootstrap failed (full log: $ROOTS_DIR/.$SUITE-debootstrap.log)"
  exit 1
}
t_boot=$(elapsed)
log "minbase done after $t_boot s"

cat >"$build/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main
EOF
# No daemon may start during the install (postinst scripts): they would run in this machine's network.
printf '#!/bin/sh\nexit 101\n' >"$build/usr/sbin/policy-rc.d"
chmod 0755 "$build/usr/sbin/policy-rc.d"

# In private mount + PID namespaces: /proc and /dev for the chroot vanish with it, and so would anything
# a postinst left running.
# shellcheck disable=SC2016 # expanded by the inner shell
unshare --mount --pid --fork --propagation private -- /bin/bash -euo pipefail -c '
  root=$1; shift
  mount -t proc proc "$root/proc"
  mount --rbind /dev "$root/dev"
  mount -t tmpfs tmpfs "$root/run"
  chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 \
    /bin/bash -euo pipefail -c "apt-get -q update && apt-get -q -y install --no-install-recommends \
      -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \"\$@\" && apt-get clean" _ "$@"
' _ "$build" "${NODE_PACKAGES[@]}" >"$ROOTS_DIR/.$SUITE-apt.log" 2>&1 || {
  tail -n 30 "$ROOTS_DIR/.$SUITE-apt.log" >&2
  log "package install failed (full log: $ROOTS_DIR/.$SUITE-apt.log)"
  exit 1
}
rm -f "$build/usr/sbin/policy-rc.d"
# Each lab node writes its own (Lab: base_setup); an image ships none.
: >"$build/etc/machine-id"
rm -f "$build/var/lib/dbus/machine-id"

# shellcheck disable=SC2016 # dpkg-query format
chroot "$build" dpkg-query -W -f='${Package} ${Version}\n' sssd adcli realmd openssh-server krb5-user python3 curl \
  >"$build/etc/adlab-root-versions.tmp"
mv "$build/etc/adlab-root-versions.tmp" "$build/etc/adlab-root-versions"
mv "$build" "$dest"
trap - EXIT
log "built in $(elapsed) s (debootstrap $t_boot s): $dest"
for other in "$ROOTS_DIR/$SUITE-"*; do
  [[ "$other" == "$dest" ]] || log "note: an older root is still there (rm -rf it when no lab uses it): $other"
done
sed 's/^/trixie root:   /' "$dest/etc/adlab-root-versions" >&2
echo "$dest"
