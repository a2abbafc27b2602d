#!/usr/bin/env bash
# Sets up everything the tests need (from scratch on a fresh machine) and runs ALL tests:
#   sudo bash scripts/test.sh            # everything, including the real-AD lab (root)
#   bash scripts/test.sh -m 'not adlab'  # extra arguments go to pytest
# Steps: Debian packages (lab + shellcheck deps), the project venv (venv/, pinned), the
# ParallelCluster CLI's own venv (.venv-pcluster/, pinned), then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/lib.sh
. scripts/lib.sh

if [ "$(id -u)" -eq 0 ]; then
  log "installing Debian packages for the AD lab"
  bash tools/install_adlab_deps.sh
else
  log "not root: skipping Debian packages (the adlab tests will tell you what is missing)"
fi

ensure_venv requirements-dev.lock

log "ensuring the ParallelCluster CLI venv (.venv-pcluster/, with moto for the full validation)"
bash tools/pcluster_venv.sh --with-moto >/dev/null

log "ruff"
venv/bin/ruff check .

log "pytest $*"
set +e
venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  log "pytest collected no tests: failing"
  exit 1
fi
exit "$rc"
