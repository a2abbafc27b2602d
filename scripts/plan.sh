#!/usr/bin/env bash
# The offline plan in one command, as any user (no root, no Pulumi CLI, no AWS credentials):
#   bash scripts/plan.sh STACK [--out DIR]                  (reads Pulumi.STACK.yaml; DIR defaults to plan-out/STACK)
#   bash scripts/plan.sh --config-file FILE [--out DIR]
# Sets up the program's venv (venv/ in the checkout, from the hash-checked requirements.lock, as
# scripts/deploy.sh does; only the first time or after the lock changed), then runs tools.plan.
# Relative FILE and DIR are taken from the directory you run it in.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"

case "${1:-}" in
  "" | -h | --help | help)
    cat <<'EOF'
usage: bash scripts/plan.sh STACK [--out DIR]
       bash scripts/plan.sh --config-file FILE [--out DIR]

Validates a stack's config offline (every problem at once) and writes what `pulumi up` would declare to
DIR (default plan-out/STACK): resources.json and cluster-config.yaml. Needs Python 3.11+ with venv, and
neither root, nor the Pulumi CLI, nor AWS credentials. The first run installs the program's venv/ from
requirements.lock (pinned, hash-checked; about a minute).
EOF
    [ -n "${1:-}" ] && exit 0
    exit 2
    ;;
esac

# ensure_venv works on paths relative to the checkout; the plan itself runs where the caller is.
(cd "$root" && ensure_venv requirements.lock)
PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" exec "$root/venv/bin/python" -m pcluster_ad.tools.plan "$@"
