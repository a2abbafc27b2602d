#!/usr/bin/env bash
# Create (idempotently) the ParallelCluster CLI's own virtual environment and print the pcluster path.
#
#   tools/pcluster_venv.sh [--with-moto] [VERSION]
#
# --with-moto also installs moto (pinned, in-process AWS emulator) for tools/validate_cluster_full.py, the
# tests' full ParallelCluster validation; deployments do not need it.
# VERSION defaults to the pinned aws-parallelcluster in pcluster_version.txt, installed from the hash-checked lock
# tools/pcluster-venv.lock (tools/pcluster-venv-moto.lock with --with-moto; both made by tools/lock.sh), so every
# transitive dependency is pinned too. Another VERSION is installed without a lock (its dependencies unpinned; a
# warning says so). The venv lives at <repo>/.venv-pcluster (an installed package: ~/.local/share/pcluster-ad/), or
# at $PCLUSTER_AD_PCLUSTER_VENV. It is kept apart from the project's venv on purpose: pcluster pins packaging~=25.0
# while pulumi needs packaging>=26, and pip resolves that silently to an old pcluster.
#
# Progress goes to stderr; the only stdout line is the absolute path of the pcluster executable.
# Exit codes: 0 ready, 2 usage, 3 Node.js missing, 4 python missing, 5 install failed.
set -euo pipefail

script_dir="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
repo_dir="$(cd -- "${script_dir}/.." && pwd)"
DEFAULT_VERSION="$(<"${repo_dir}/pcluster_version.txt")"
readonly DEFAULT_VERSION
readonly MOTO_VERSION="5.2.5" # same pin as requirements-dev.txt

usage() {
    echo "usage: $0 [--with-moto] [VERSION]   (default aws-parallelcluster==${DEFAULT_VERSION})" >&2
}

log() {
    echo "pcluster_venv: $*" >&2
}

with_moto=false
if [[ "${1:-}" == "--with-moto" ]]; then
    with_moto=true
    shift
fi
if [[ $# -gt 1 ]]; then
    usage
    exit 2
fi
case "${1:-}" in
    -h | --help)
        usage
        exit 0
        ;;
esac

version="${1:-$DEFAULT_VERSION}"
if [[ ! "$version" =~ ^[0-9]+(\.[0-9]+)*([a-z]+[0-9]*)?$ ]]; then
    log "invalid version '${version}'"
    usage
    exit 2
fi

# Beside the code in a checkout; an installed package (site-packages) keeps its venvs in the user's data directory.
if [ -f "${repo_dir}/pcluster_ad/__init__.py" ]; then
    venv_home="${repo_dir}"
else
    data_home="${XDG_DATA_HOME:-}"
    case "$data_home" in /*) ;; *) data_home="$HOME/.local/share" ;; esac # relative: invalid (XDG base dir spec)
    venv_home="${data_home}/pcluster-ad"
fi
venv_dir="${PCLUSTER_AD_PCLUSTER_VENV:-${venv_home}/.venv-pcluster}"
python_bin="${PCLUSTER_AD_PYTHON:-python3}"

# pcluster runs CDK (Node.js) even for --dryrun; fail early and clearly.
if ! command -v node >/dev/null 2>&1; then
    log "Node.js ('node') is not on PATH. The ParallelCluster CLI needs it, even for dry runs."
    log "Install Node.js 20 or newer (e.g. 'apt-get install nodejs') and run this again."
    exit 3
fi

pcluster_bin="${venv_dir}/bin/pcluster"
venv_python="${venv_dir}/bin/python"

# The lock for this install (none for a non-default version); a copy in the venv records what was installed.
lock=""
if [[ "$version" == "$DEFAULT_VERSION" ]]; then
    lock="${script_dir}/pcluster-venv.lock"
    [[ "$with_moto" == true ]] && lock="${script_dir}/pcluster-venv-moto.lock"
fi
lock_marker="${venv_dir}/.pcluster-ad-lock"

# The venv matches the lock (the moto lock is a superset of the plain one).
lock_ready() {
    [[ -z "$lock" ]] && return 0
    cmp -s "$lock" "$lock_marker" && return 0
    [[ "$with_moto" == false ]] && cmp -s "${script_dir}/pcluster-venv-moto.lock" "$lock_marker"
}

installed_version() {
    [[ -x "$venv_python" && -x "$pcluster_bin" ]] || return 1
    "$venv_python" - <<'PY' 2>/dev/null
from importlib.metadata import version
print(version("aws-parallelcluster"))
PY
}

moto_ready() {
    [[ "$with_moto" == false ]] && return 0
    [[ "$("$venv_python" -c 'from importlib.metadata import version; print(version("moto"))' 2>/dev/null)" \
        == "$MOTO_VERSION" ]]
}

ensure_moto() {
    moto_ready && return 0
    log "installing moto==${MOTO_VERSION} (for the full validation)"
    if ! "$venv_python" -m pip install -qq "moto==${MOTO_VERSION}" >&2 || ! moto_ready; then
        log "pip install moto==${MOTO_VERSION} failed"
        exit 5
    fi
}

current="$(installed_version || true)"
if [[ "$current" == "$version" ]] && moto_ready && lock_ready; then
    log "aws-parallelcluster ${version} already installed in ${venv_dir}"
    echo "$pcluster_bin"
    exit 0
fi

if ! command -v "$python_bin" >/dev/null 2>&1; then
    log "'${python_bin}' not found; set PCLUSTER_AD_PYTHON to a Python 3.9+ interpreter"
    exit 4
fi

# Serialise concurrent first uses (tests, parallel Pulumi operations) on one lock.
# The lock lives inside the venv directory, so nothing is left next to it.
mkdir -p -- "$venv_dir"
exec 9>"${venv_dir}/.pcluster-ad-install.lock"
if command -v flock >/dev/null 2>&1; then
    flock 9
fi

# Another process may have finished the install while we waited for the lock.
current="$(installed_version || true)"
if [[ "$current" == "$version" ]] && lock_ready; then
    ensure_moto
    log "aws-parallelcluster ${version} already installed in ${venv_dir}"
    echo "$pcluster_bin"
    exit 0
fi

start=$SECONDS
if [[ ! -x "$venv_python" ]]; then
    log "creating venv ${venv_dir}"
    "$python_bin" -m venv -- "$venv_dir" >&2 || {
        log "could not create the venv at ${venv_dir}"
        exit 5
    }
fi
if [[ "$current" == "$version" ]]; then
    log "aws-parallelcluster ${version} is installed but not from the current lock: installing the lock"
elif [[ -n "$current" ]]; then
    log "replacing aws-parallelcluster ${current} with ${version}"
fi
if [[ -n "$lock" ]]; then
    log "installing aws-parallelcluster==${version} from ${lock#"${repo_dir}"/} (hash-checked; about half a minute)"
    if ! "$venv_python" -m pip install -qq --require-hashes -r "$lock" >&2; then
        log "pip install --require-hashes -r ${lock} failed"
        exit 5
    fi
else
    log "warning: aws-parallelcluster ${version} is not the locked ${DEFAULT_VERSION}: its dependencies are not pinned"
    log "installing aws-parallelcluster==${version} (takes about half a minute)"
    if ! "$venv_python" -m pip install -qq "aws-parallelcluster==${version}" >&2; then
        log "pip install aws-parallelcluster==${version} failed"
        exit 5
    fi
fi

current="$(installed_version || true)"
if [[ "$current" != "$version" ]]; then
    log "after install the venv reports aws-parallelcluster '${current}', expected ${version}"
    exit 5
fi
ensure_moto
if [[ -n "$lock" ]]; then
    cp -- "$lock" "$lock_marker"
fi
log "installed aws-parallelcluster ${version} in $((SECONDS - start)) s"
echo "$pcluster_bin"
