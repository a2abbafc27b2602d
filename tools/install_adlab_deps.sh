#!/usr/bin/env bash
# Install the Debian packages the AD lab (tests/adlab, bench/adlab_bench.py) and the node-script
# sandbox tests (strace, openssh-server, iptables for join-domain.sh --restrict-imds) need.
# The node packages are mirrored in tools/trixie_root.sh (the lab's Debian 13 nodes): keep both in step.
# Idempotent: does nothing (and touches no network) when everything is already installed.
# Run as root on Debian 12. Daemons are kept from starting on this host during the install.
set -euo pipefail

PACKAGES=(
  samba-ad-dc samba-ad-provision samba winbind ldb-tools smbclient krb5-user
  sssd sssd-ad sssd-tools realmd adcli libnss-sss libpam-sss libpam-modules libpam-runtime
  polkitd packagekit dbus openssh-server openssh-client sshpass
  sudo
  bind9-dnsutils iproute2 util-linux procps psmisc curl
  strace iptables
  # the attack tests' LDAP writes from a node as its computer account (ldapmodify -Y GSSAPI), both generations
  ldap-utils libsasl2-modules-gssapi-mit
  debootstrap # tools/trixie_root.sh: the Debian 13 node root
)

missing=()
for p in "${PACKAGES[@]}"; do
  if [[ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)" != "installed" ]]; then
    missing+=("$p")
  fi
done
if ((${#missing[@]} == 0)); then
  echo "adlab deps: all ${#PACKAGES[@]} packages already installed"
  exit 0
fi
if [[ "$(id -u)" != 0 ]]; then
  echo "adlab deps: must run as root to install: ${missing[*]}" >&2
  exit 1
fi

echo "adlab deps: installing ${missing[*]}"
# Keep services from starting on the host during the install (restore any existing policy).
policy=/usr/sbin/policy-rc.d
backup=""
if [[ -e "$policy" ]]; then
  backup="$(mktemp)"
  cp -p "$policy" "$backup"
fi
restore_policy() {
  if [[ -n "$backup" ]]; then
    cp -p "$backup" "$policy"
    rm -f "$backup"
  else
    rm -f "$policy"
  fi
}
trap restore_policy EXIT
printf '#!/bin/sh\nexit 101\n' >"$policy"
chmod 0755 "$policy"

export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends \
  -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${PACKAGES[@]}"

# Make sure nothing the packages may have started is left running on the host.
for d in samba smbd nmbd winbindd sssd sshd realmd packagekitd polkitd; do
  if pgrep -x "$d" >/dev/null 2>&1; then
    echo "adlab deps: note: $d is running on the host (started outside this script?)" >&2
  fi
done
echo "adlab deps: done"
