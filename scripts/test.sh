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

# pytest_status NAME RC: pytest's exit code, with "no tests collected" (5) a failure.
pytest_status() {
  if [ "$2" -eq 5 ]; then
    log "$1: pytest collected no tests: failing"
    return 1
  fi
  return "$2"
}

set +e
if [ "$#" -gt 0 ] || [ "$(id -u)" -ne 0 ]; then
  log "pytest $*"
  venv/bin/python -m pytest "$@"
  pytest_status pytest $?
  exit $?
fi
# Everything, as root: the AD lab (tests/adlab, mostly waiting on its DC and nodes) runs beside the rest (mostly
# CPU), two pytest processes, so the two cores are both used (issue 21: CI time). The lab's output goes to a file,
# printed when it ends; the rest prints as it goes.
lab_log=$(mktemp /tmp/pcluster-ad-lab-XXXXXX.log)
log "pytest tests/adlab in the background (its log: $lab_log), and the rest here"
venv/bin/python -m pytest tests/adlab >"$lab_log" 2>&1 &
lab_pid=$!
# A background job of a script ignores Ctrl-C: say so, rather than leave it unseen (it ends and tears its lab down
# by itself; killing it midway could leave the lab's namespaces and mounts behind).
trap 'log "interrupted: the lab'"'"'s tests go on in the background (pid $lab_pid) until they end and clean up; log: $lab_log"; exit 130' INT
venv/bin/python -m pytest --ignore=tests/adlab
pytest_status "pytest (all but the lab)" $?
rest=$?
log "waiting for the lab's tests"
wait "$lab_pid"
pytest_status "pytest tests/adlab" $?
lab=$?
log "the lab's tests (tests/adlab):"
cat "$lab_log"
rm -f "$lab_log"
set -e
if [ "$rest" -ne 0 ] || [ "$lab" -ne 0 ]; then
  log "FAILED: all but the lab: exit $rest; the lab: exit $lab"
  exit 1
fi
exit 0
