# shellcheck shell=bash
# Shared set-up steps for scripts/test.sh and scripts/deploy.sh (sourced, not run).

log() { printf '[%s %s] %s\n' "${0##*/}" "$(date +%H:%M:%S)" "$*"; }

# A Python 3.11+ with a complete standard library (some distributions split parts off).
find_python() {
  local candidate
  for candidate in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
    [ -n "$candidate" ] || continue
    command -v "$candidate" >/dev/null || continue
    if "$candidate" -c 'import sys, unicodedata, ensurepip, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null
    then
      command -v "$candidate"
      return 0
    fi
  done
  log "error: no Python 3.11+ with venv and a full standard library found (set PYTHON=/path/to/python3)"
  return 1
}

# venv/ with the hash-checked lock file given ($1: requirements.lock or requirements-dev.lock, made by
# tools/lock.sh). Installs again when that file changed; never re-creates an existing venv (that would swap its
# interpreter under running tools).
ensure_venv() {
  local requirements=$1 marker="venv/.installed-${1//\//_}" python
  if [ -x venv/bin/python ] && cmp -s "$requirements" "$marker"; then
    return 0
  fi
  if [ ! -x venv/bin/python ]; then
    python=$(find_python)
    log "creating venv/ with $python"
    "$python" -m venv venv
  fi
  log "installing $requirements into venv/ (pinned; about a minute the first time)"
  venv/bin/pip install --quiet --disable-pip-version-check --require-hashes -r "$requirements"
  cp "$requirements" "$marker"
}
