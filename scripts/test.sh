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

# The lab's second node generation (issue 21): on a Debian 12 machine the lab's nodes are Debian 12 by default, and
# a second pass runs these modules (join chain, access, identity, attacks) on Debian 13 nodes. On a Debian 13 machine
# the default nodes are Debian 13 already, and Debian 12 nodes would need a cached bookworm root (not built yet).
# Only modules with nodes: test_identity_ledger, test_attack_identity and test_attack_issue17 start none (DC and
# function only), so a second pass of theirs would run the very same thing again.
DEB13_MODULES=(
  tests/adlab/test_join_chain.py tests/adlab/test_access.py tests/adlab/test_access_directory.py
  tests/adlab/test_identity_rfc2307.py tests/adlab/test_attack_issue18.py tests/adlab/test_attack_issue18_ids.py
)
machine_generation=$(. /etc/os-release && echo "${ID:-}${VERSION_ID:-}")

if [ "$(id -u)" -eq 0 ]; then
  log "installing Debian packages for the AD lab"
  bash tools/install_adlab_deps.sh
  if [ "$machine_generation" = debian12 ]; then
    log "the lab's Debian 13 node root (tools/trixie_root.sh; built once, 1-3 min, then cached)"
    bash tools/trixie_root.sh >/dev/null
  fi
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
# The lab lane: one lab at a time (a lab is a DC and its nodes; two would share the cores), pass after pass.
lab_lane() {
  local rc=0 t0=$SECONDS
  venv/bin/python -m pytest tests/adlab
  pytest_status "pytest tests/adlab" $? || rc=1
  log "lab pass 1 (tests/adlab, $machine_generation nodes): $((SECONDS - t0)) s"
  if [ "$machine_generation" = debian12 ]; then
    t0=$SECONDS
    ADLAB_NODE_OS=debian13 venv/bin/python -m pytest "${DEB13_MODULES[@]}"
    pytest_status "pytest (the lab on debian13 nodes)" $? || rc=1
    log "lab pass 2 (${#DEB13_MODULES[@]} modules, debian13 nodes): $((SECONDS - t0)) s"
  else
    log "lab pass 2 skipped on this $machine_generation machine: a second generation needs Debian 12 (no bookworm root yet)"
  fi
  return "$rc"
}
lab_log=$(mktemp /tmp/pcluster-ad-lab-XXXXXX.log)
log "the lab lane in the background (tests/adlab, then a second node generation; its log: $lab_log), and the rest here"
lab_lane >"$lab_log" 2>&1 &
lab_pid=$!
# A background job of a script ignores Ctrl-C: say so, rather than leave it unseen (it ends and tears its lab down
# by itself; killing it midway could leave the lab's namespaces and mounts behind).
trap 'log "interrupted: the lab'"'"'s tests go on in the background (pid $lab_pid) until they end and clean up; log: $lab_log"; exit 130' INT
venv/bin/python -m pytest --ignore=tests/adlab
pytest_status "pytest (all but the lab)" $?
rest=$?
log "waiting for the lab's tests"
wait "$lab_pid"
lab=$?
log "the lab's tests (tests/adlab, then a second node generation):"
cat "$lab_log"
rm -f "$lab_log"
set -e
if [ "$rest" -ne 0 ] || [ "$lab" -ne 0 ]; then
  log "FAILED: all but the lab: exit $rest; the lab: exit $lab"
  exit 1
fi
exit 0
