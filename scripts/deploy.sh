#!/usr/bin/env bash
# One command from a fresh clone to a deployed stack:
#   bash scripts/deploy.sh [STACK] [pulumi up flags...]      (STACK defaults to dev)
# 1. checks the prerequisites (Pulumi CLI, Node.js, AWS credentials hint, passphrase),
# 2. installs the program's venv (venv/) and the ParallelCluster CLI's own (.venv-pcluster/),
# 3. validates the stack config offline (tools.plan: every problem at once, nothing created),
# 4. logs in to local state (~/.pulumi) unless a backend is already configured (PULUMI_BACKEND_URL or a login),
# 5. selects (or creates) the stack and runs `pulumi up`, which previews and asks before changing anything.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

usage() {
  cat <<'EOF'
usage: bash scripts/deploy.sh [STACK] [pulumi up flags...]     (STACK defaults to dev)

Deploys the stack described by Pulumi.STACK.yaml: checks the prerequisites (Pulumi CLI, Node.js 20+,
PULUMI_CONFIG_PASSPHRASE, AWS credentials), installs venv/ and .venv-pcluster/ (pinned, hash-checked),
validates the stack config offline, then runs `pulumi up --stack STACK [flags]`, which previews and asks
before changing anything (--yes skips the question).

State: the backend you are logged in to (`pulumi login s3://...`) or PULUMI_BACKEND_URL; with neither, it
logs in to local files (`pulumi login --local`, ~/.pulumi). README "Team state" shows S3 + KMS.

Without a Pulumi CLI or AWS credentials, the offline plan still validates a stack and shows every
resource it would create (it sets up venv/ first; no root needed):
  bash scripts/plan.sh STACK

Examples:
  bash scripts/deploy.sh dev
  bash scripts/deploy.sh prod --yes
EOF
}

case "${1:-}" in
  -h | --help | help)
    usage
    exit 0
    ;;
  -*)
    log "error: the first argument is the stack name, not '$1' (pulumi flags come after it)"
    usage >&2
    exit 2
    ;;
esac

stack=${1:-dev}
[ $# -gt 0 ] && shift
if [ ! -f "Pulumi.$stack.yaml" ]; then
  stacks=$(for f in Pulumi.*.yaml; do f=${f#Pulumi.}; printf '%s ' "${f%.yaml}"; done)
  log "error: Pulumi.$stack.yaml not found; stacks here: $stacks"
  exit 2
fi

missing=0
if ! command -v pulumi >/dev/null; then
  log "error: the Pulumi CLI is not installed: https://www.pulumi.com/docs/install/ (curl -fsSL https://get.pulumi.com | sh)"
  missing=1
fi
if ! command -v node >/dev/null; then
  log "error: Node.js is not installed: the ParallelCluster CLI needs it (Node.js 20 or newer)"
  missing=1
fi
# A stack with its own secrets provider (`secretsprovider: awskms://...`) needs no passphrase.
if ! grep -Eq '^secretsprovider: *(awskms|azurekeyvault|gcpkms|hashivault)://' "Pulumi.$stack.yaml" \
    && [ -z "${PULUMI_CONFIG_PASSPHRASE:-}" ] && [ -z "${PULUMI_CONFIG_PASSPHRASE_FILE:-}" ]; then
  log "error: set PULUMI_CONFIG_PASSPHRASE (or PULUMI_CONFIG_PASSPHRASE_FILE): it encrypts this stack's secrets"
  missing=1
fi
if [ -z "${AWS_PROFILE:-}${AWS_ACCESS_KEY_ID:-}" ] && [ ! -f "${AWS_SHARED_CREDENTIALS_FILE:-$HOME/.aws/credentials}" ] \
    && [ ! -f "${AWS_CONFIG_FILE:-$HOME/.aws/config}" ]; then
  log "warning: no AWS credentials found in the environment or ~/.aws; pulumi will fail if none are available"
fi
[ "$missing" -eq 0 ] || exit 2

ensure_venv requirements.lock
log "ensuring the ParallelCluster CLI venv (.venv-pcluster/)"
bash tools/pcluster_venv.sh >/dev/null

log "validating Pulumi.$stack.yaml offline"
venv/bin/python -m tools.plan "$stack" --out "plan-out/$stack" >/dev/null

# The launcher never installs during `pulumi up`: a stack on another ParallelCluster version gets its venv now.
pcluster_version=$(venv/bin/python - "$stack" <<'PY'
import sys

import yaml

import stack_config

cluster = (yaml.safe_load(open(f"Pulumi.{sys.argv[1]}.yaml")).get("config") or {}).get("pcluster-ad:cluster") or {}
print(cluster.get("pclusterVersion") or stack_config.DEFAULT_PCLUSTER_VERSION)
PY
)
if [ "$pcluster_version" != "$(cat pcluster_version.txt)" ]; then
  log "ensuring the ParallelCluster CLI venv for $pcluster_version (.venv-pcluster-$pcluster_version/)"
  PCLUSTER_AD_PCLUSTER_VENV=".venv-pcluster-$pcluster_version" bash tools/pcluster_venv.sh "$pcluster_version" >/dev/null
fi

# No backend pinned in Pulumi.yaml, so a team's `pulumi login s3://...` applies; local files only as the fallback.
if [ -z "${PULUMI_BACKEND_URL:-}" ] && ! pulumi whoami --non-interactive </dev/null >/dev/null 2>&1; then
  log "no Pulumi backend configured: using local state (pulumi login --local, ~/.pulumi)"
  pulumi login --local
fi

pulumi stack select --create "$stack"
log "pulumi up --stack $stack $*"
pulumi up --stack "$stack" "$@"
