#!/usr/bin/env bash
# One command from a fresh clone to a deployed stack:
#   bash scripts/deploy.sh [STACK] [pulumi up flags...]      (STACK defaults to dev)
# 1. checks the prerequisites (Pulumi CLI, Node.js 20+, AWS credentials hint, and the passphrase when the stack's
#    secrets are passphrase-encrypted),
# 2. installs the program's venv (venv/) and the ParallelCluster CLI's own (.venv-pcluster/),
# 3. validates the stack config offline (tools.plan: every problem at once, nothing created), then runs
#    ParallelCluster's full create validation on the plan (tools.full_validation: moto, no AWS account),
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
AWS credentials, and PULUMI_CONFIG_PASSPHRASE for a passphrase-encrypted stack: not for a stack with a KMS
or other `secretsprovider:`, nor a new one on Pulumi Cloud), installs venv/ and .venv-pcluster/ (pinned, hash-checked),
validates the stack config offline and with ParallelCluster's full create validation (in moto, no AWS
account), then runs `pulumi up --stack STACK [flags]`, which previews and asks before changing anything
(--yes skips the question).

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

# The backend `pulumi` will use: PULUMI_BACKEND_URL, else the login's ("Backend URL:" of `whoami --verbose`);
# empty when there is neither (step 4 then logs in to local files).
current_backend() {
  local whoami
  if [ -n "${PULUMI_BACKEND_URL:-}" ]; then
    printf '%s\n' "$PULUMI_BACKEND_URL"
  elif command -v pulumi >/dev/null && whoami=$(pulumi whoami --verbose --non-interactive </dev/null 2>/dev/null); then
    whoami=$(printf '%s\n' "$whoami" | sed -n 's/^Backend URL: //p')
    printf '%s\n' "${whoami:-a backend whoami did not name}"
  fi
}

# A top-level key of the stack file (Pulumi writes them unquoted; quotes are tolerated).
stack_file_key() {
  sed -n "s/^$1:[[:space:]]*[\"']\{0,1\}\([^\"'[:space:]]*\).*/\1/p" "Pulumi.$stack.yaml" | head -n 1
}

# Why this stack needs PULUMI_CONFIG_PASSPHRASE (empty: it does not), decided as the CLI picks the secrets
# manager (pulumi/pulumi pkg/cmd/pulumi/stack/secrets.go): a `secretsprovider:` other than passphrase/default
# (awskms://, azurekeyvault://, gcpkms://, hashivault://, ...) wins; else an `encryptionsalt:` means the
# passphrase; else the backend's default for the stack (`stack select --create` passes no --secrets-provider):
# Pulumi Cloud (an http(s) backend) keeps the secrets itself, a DIY backend (file://, s3://, gs://, azblob://,
# or the local login of step 4) uses the passphrase.
passphrase_reason() {
  local provider salt
  provider=$(stack_file_key secretsprovider)
  salt=$(stack_file_key encryptionsalt)
  if [ -n "$provider" ] && [ "$provider" != passphrase ] && [ "$provider" != default ]; then
    return 0
  elif [ -n "$salt" ]; then
    echo "Pulumi.$stack.yaml has an encryptionsalt: the stack's secrets are passphrase-encrypted"
  else
    case "$backend" in
      http://* | https://*) ;;
      "") echo "with local state (no backend configured), the stack's secrets are passphrase-encrypted" ;;
      *) echo "on $backend (not Pulumi Cloud), the stack's secrets are passphrase-encrypted" ;;
    esac
  fi
}

missing=0
if ! command -v pulumi >/dev/null; then
  log "error: the Pulumi CLI is not installed: https://www.pulumi.com/docs/install/ (curl -fsSL https://get.pulumi.com | sh)"
  missing=1
fi
# The ParallelCluster CLI (its CDK) needs Node.js 20 or newer; the hint installs 22 (LTS) without root.
node_hint="install Node.js 20 or newer, e.g. with nvm (no root): curl -o- https://raw.githubusercontent.com/nvm-sh/nvm/v0.40.3/install.sh | bash && . ~/.nvm/nvm.sh && nvm install 22"
if ! command -v node >/dev/null; then
  log "error: Node.js is not installed: the ParallelCluster CLI needs it; $node_hint"
  missing=1
else
  node_version=$(node --version 2>/dev/null || true)
  node_major=$(printf '%s\n' "$node_version" | sed -n 's/^v\([0-9][0-9]*\)\..*/\1/p')
  if [ -z "$node_major" ]; then
    log "error: \`node --version\` printed '$node_version', not a Node.js version: $node_hint"
    missing=1
  elif [ "$node_major" -lt 20 ]; then
    log "error: Node.js $node_version is too old for the ParallelCluster CLI; $node_hint"
    missing=1
  fi
fi
backend=$(current_backend)
reason=$(passphrase_reason)
if [ -n "$reason" ] && [ -z "${PULUMI_CONFIG_PASSPHRASE:-}" ] && [ -z "${PULUMI_CONFIG_PASSPHRASE_FILE:-}" ]; then
  log "error: set PULUMI_CONFIG_PASSPHRASE (or PULUMI_CONFIG_PASSPHRASE_FILE): $reason (README \"Team state\": KMS or Pulumi Cloud need none)"
  missing=1
fi
if [ -z "${AWS_PROFILE:-}${AWS_ACCESS_KEY_ID:-}" ] && [ ! -f "${AWS_SHARED_CREDENTIALS_FILE:-$HOME/.aws/credentials}" ] \
    && [ ! -f "${AWS_CONFIG_FILE:-$HOME/.aws/config}" ]; then
  log "warning: no AWS credentials found in the environment or ~/.aws; pulumi will fail if none are available"
fi
[ "$missing" -eq 0 ] || exit 2

ensure_venv requirements.lock
log "ensuring the ParallelCluster CLI venv (.venv-pcluster/, with moto for the full validation)"
bash tools/pcluster_venv.sh --with-moto >/dev/null

log "validating Pulumi.$stack.yaml offline"
venv/bin/python -m pcluster_ad.tools.plan "$stack" --out "plan-out/$stack" >/dev/null

# The launcher never installs during `pulumi up`: a stack on another ParallelCluster version gets its venv now.
pcluster_version=$(venv/bin/python - "$stack" <<'PY'
import sys

import yaml

from pcluster_ad import stack_config

cluster = (yaml.safe_load(open(f"Pulumi.{sys.argv[1]}.yaml")).get("config") or {}).get("pcluster-ad:cluster") or {}
print(cluster.get("pclusterVersion") or stack_config.DEFAULT_PCLUSTER_VERSION)
PY
)
if [ "$pcluster_version" != "$(cat pcluster_version.txt)" ]; then
  log "ensuring the ParallelCluster CLI venv for $pcluster_version (.venv-pcluster-$pcluster_version/)"
  PCLUSTER_AD_PCLUSTER_VENV=".venv-pcluster-$pcluster_version" bash tools/pcluster_venv.sh --with-moto "$pcluster_version" >/dev/null
fi

# What `pcluster create-cluster` would refuse (an instance type the region does not offer, ...), before the
# directory and the network exist: ParallelCluster's own validators on the plan, in moto.
log "ParallelCluster's full create validation of plan-out/$stack (offline; nothing is created)"
venv/bin/python -m pcluster_ad.tools.full_validation "plan-out/$stack" >/dev/null

# No backend pinned in Pulumi.yaml, so a team's `pulumi login s3://...` applies; local files only as the fallback.
if [ -z "$backend" ]; then
  log "no Pulumi backend configured: using local state (pulumi login --local, ~/.pulumi)"
  pulumi login --local
fi

pulumi stack select --create "$stack"
log "pulumi up --stack $stack $*"
pulumi up --stack "$stack" "$@"
