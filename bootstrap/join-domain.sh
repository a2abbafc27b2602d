#!/bin/bash
# join-domain.sh: ParallelCluster 3 OnNodeStart custom action. Joins this node to Active Directory.
#
#   join-domain.sh [--function-url URL] --region REGION [--timeout SECONDS] [--restrict-imds]
#                  [--computer-ou DN] [--computer-prefix PREFIX]
#
# Runs as root. Steps:
#   1. install sssd/realmd/adcli/... with the OS package manager, only if a needed command is missing;
#   2. already joined (reboot, re-run)? Then NO request to the join function at all: the node counts
#      as joined when `realm list` shows a configured realm, or on disk when sssd.conf has a
#      [domain/D] section and /etc/krb5.keytab holds a host key (NAME$@D upper-cased); only steps 5,
#      6 and 8 run;
#   3. read the instance role's credentials from IMDSv2 and POST to the join function URL (AWS_IAM
#      auth), SigV4-signed by the node agent (Python's urllib; no curl): the credentials stay in its
#      process, never argv, environment, disk or log; bounded retries with exponential backoff and
#      jitter, all within --timeout (default 600 s) counted from the start of the script; HTTP 403 is
#      final (the node's join window is closed, or the node is no node of this cluster); HTTP 429 (the
#      joins in progress against the directory are at the function's cap, or Lambda throttles) and 503
#      are waited out with full-jitter exponential backoff, never shorter than the answer's retryAfter: "join function busy, retrying in N s (attempt k)";
#   3b. access and speed, all BEFORE realm join, which restarts sssd with the domain at its end (so no moment
#      in which any AD user may log in): with allowed groups (baked by the stack, or --allowed-groups), an
#      sssd conf.d snippet that admits only their members: with the stack's groups (DirectoryAdmin, baked, or
#      --stack-users-group) the ad provider's filter on in-chain membership of the stack's users group, which the
#      DC evaluates at each login, else the simple provider with the lists (nested groups count); disabled and
#      locked-out accounts refused by the filter (ad provider); with admin groups, a sudoers drop-in checked by
#      visudo first (the stack's admins group when baked); /etc/ssh/sshrc, which sshd runs AS THE USER,
#      gives AD users an ssh key between nodes at their first ssh login (limited to the VPC CIDR baked by the
#      stack, or --vpc-cidr; an old root pam_exec hook is removed); sssd's cache on tmpfs. After the join: groups that do not
#      resolve are logged as WARNINGs;
#   4. `realm join` (the password on stdin only), each attempt capped at min(remaining, 120 s) so that a
#      hanging join is retried. On the Debian family, ONE pam-auth-update (home directories created at
#      first login; pam_cap dropped when it grants nothing) runs meanwhile: realmd leaves PAM alone there,
#      and adcli spends most of the join waiting on the DC;
#   5. sssd.conf: use_fully_qualified_names = False, fallback_homedir = /home/%u; RHEL family: home
#      directories created at first login (authselect/authconfig, after realm's own); restart sssd;
#   6. verify: sssd runs (its pid file names a live sssd process) and the join user resolves by short
#      name through sssd. `realm join` exits 0 even when sssd failed to start, so it is never trusted;
#   7. close this instance's join window as soon as realm join has succeeded (the node never needs the
#      secret again: a re-run finds the join on disk), in the background while steps 5-6 run, and
#      waited for before the script ends: a second signed POST, body
#      {"joined": true, "computerName": "<NAME>"} (NAME: the computer account the join used), up to 3
#      failed attempts (429/503 are waited out as in step 3 and not counted; 10 attempts at most) within
#      min(remaining, 60 s), fresh IMDS credentials each; it also frees the node's admission slot; from then on the function
#      refuses this instance for good. A failure is logged as a WARNING and does not fail the boot
#      (the window still closes by itself after the function's windowMinutes / maxAnswers);
#   8. --restrict-imds: IMDS for root (uid 0) only, as ParallelCluster locks its head node (iptables
#      chain PARALLELCLUSTER_IMDS from OUTPUT, owner match): rules for the IMDS address (IPv4
#      169.254.169.254 and IPv6 fd00:ec2::254, or the host[:port] of
#      AWS_EC2_METADATA_SERVICE_ENDPOINT when set), applied now and at every boot by the oneshot unit
#      pcluster-ad-imds-lockdown.service (/usr/local/sbin/pcluster-ad-imds-lockdown). Idempotent.
#
# The password lives only in shell variables and pipes: never argv, environment, disk or log.
#
# Exit codes: 0 joined and verified; 2 usage; 3 prerequisites (OS, packages, the node agent); 4 IMDS;
#   5 join function unreachable or failing (retries exhausted / deadline); 6 join function answered
#   403 forbidden; 7 invalid answer from the join function; 8 realm join failed (or the deadline hit
#   during the join); 9 sssd configuration or verification failed; 10 --restrict-imds could not lock
#   IMDS down (no iptables, rules refused); 11 access could not be configured (visudo refused the
#   sudoers drop-in, files not writable); 1 anything unexpected. Closing the join window never
#   changes the exit code.
#
# Environment:
#   PCLUSTER_AD_LOG                     log file (default /var/log/pcluster-ad/join-domain.log; dir 0700,
#                                       file 0600); everything is also written to stdout
#   AWS_EC2_METADATA_SERVICE_ENDPOINT   IMDS endpoint (default http://169.254.169.254)
#   PCLUSTER_AD_ALLOW_HTTP=1            test labs only: allow a plain http:// function URL to a non-loopback
#                                       host (default: https only, or http to 127.x/localhost/[::1])
#   PCLUSTER_AD_ROOT                    test hook only: prefix for the files this script edits or reads
#                                       directly (/etc/os-release, /etc/sssd/sssd.conf, /etc/default/sssd,
#                                       /etc/krb5.keytab, /run/sssd.pid, the --restrict-imds unit and
#                                       script). Default empty: the real system.
#   PCLUSTER_AD_TEST_NO_BACKOFF=1       test hook only: no sleep between retries (deterministic tests)
#   PCLUSTER_AD_TEST_JOIN_ATTEMPT_SECONDS  test hook only: cap of one realm join attempt (default 120)

# Never trace: a trace would print the secret.
set +o xtrace +o verbose
set -euo pipefail
# 022 for the commands this script runs (authselect, pam-auth-update, apt... write world-readable system
# files); the log is created 0600 in a 0700 directory explicitly.
umask 022
export LC_ALL=C

readonly PROG=join-domain
PATH="${PATH:-/usr/bin:/bin}:/usr/local/sbin:/usr/sbin:/sbin"
export PATH

readonly ROOT="${PCLUSTER_AD_ROOT:-}"
readonly DEFAULT_LOG=/var/log/pcluster-ad/join-domain.log
LOG_FILE="${PCLUSTER_AD_LOG:-$DEFAULT_LOG}"
IMDS_ENDPOINT="${AWS_EC2_METADATA_SERVICE_ENDPOINT:-http://169.254.169.254}"
IMDS_ENDPOINT="${IMDS_ENDPOINT%/}"

# The stack bakes the join function URL into the uploaded copy (components/bootstrap_scripts.py replaces
# this exact line), so a new URL changes the S3 object, not the cluster config; --function-url overrides it.
BAKED_FUNCTION_URL=""
# pcluster-ad:access, baked the same way (comma-separated: AD group names cannot hold commas);
# --allowed-groups / --admin-groups override them. Empty allowed groups: every domain user may log in.
BAKED_ALLOWED_GROUPS=""
BAKED_ADMIN_GROUPS=""
# The stack's own access groups (DirectoryAdmin, issue 18), baked the same way: the DN of the users group (members:
# the allowedGroups) and the name of the admins group (members: the adminGroups). Set: nodes admit in-chain members
# of the users group and give sudo to the admins group, so an access change is a membership change in the directory
# that every running node follows at the next login. Empty (no DirectoryAdmin): the lists above, as they are.
# --stack-users-group / --stack-admins-group override them.
BAKED_STACK_USERS_GROUP=""
BAKED_STACK_ADMINS_GROUP=""
STACK_USERS_GROUP=""
STACK_ADMINS_GROUP=""
STACK_USERS_GROUP_SET=""
STACK_ADMINS_GROUP_SET=""
# The cluster's VPC CIDR, baked the same way (--vpc-cidr overrides it): the ssh key made for MPI opens an
# account only from inside the VPC (from="CIDR"). Empty: no such restriction.
BAKED_VPC_CIDR=""
VPC_CIDR=""
VPC_CIDR_SET=""
# How UIDs/GIDs are found (issue 18), baked by the stack (pcluster-ad:identity.mode; --id-mode overrides it):
# idmap (from the SID, sssd's ID mapping) or rfc2307 (the directory's uidNumber/gidNumber, allocated once per name).
BAKED_ID_MODE=""
ID_MODE=""
ALLOWED_GROUPS=""
ADMIN_GROUPS=""
ALLOWED_GROUPS_SET=""
ADMIN_GROUPS_SET=""
FUNCTION_URL=""
REGION=""
TIMEOUT=600
RESTRICT_IMDS=""
COMPUTER_OU=""
COMPUTER_PREFIX=""
LOGGER_PID=""
# The secret: only ever in this shell variable (never exported) and in pipes. The instance role's credentials never
# reach the shell: the node agent reads and uses them in its own process.
ONE_TIME_PASSWORD=""

usage() {
    cat <<'EOF'
usage: join-domain.sh [--function-url URL] --region REGION [--timeout SECONDS] [--restrict-imds]
                      [--computer-ou DN] [--computer-prefix PREFIX] [--allowed-groups LIST]
                      [--admin-groups LIST] [--vpc-cidr CIDR] [--stack-users-group DN]
                      [--stack-admins-group NAME] [--id-mode idmap|rfc2307]

  --function-url URL   the join function URL (https://...; plain http only to a loopback address);
                       default: the URL the stack baked into this copy
  --region REGION      AWS region of the function, used to sign the request (e.g. eu-west-1)
  --timeout SECONDS    overall deadline for the whole join, default 600
  --allowed-groups LIST  comma-separated AD groups whose members (nested too) may log in; default: the
                       list baked into this copy; empty: every domain user
  --admin-groups LIST  comma-separated AD groups whose members get sudo (with their password)
  --stack-users-group DN  the stack's users group (DirectoryAdmin): with allowed groups, only its in-chain
                       members may log in (the directory decides at each login); default: baked; empty: the
                       allowed groups themselves (sssd's simple provider)
  --stack-admins-group NAME  the stack's admins group: its members get sudo instead of the admin groups'
  --id-mode MODE       how UIDs/GIDs are found: idmap (derived from each SID by sssd) or rfc2307 (the
                       directory's uidNumber/gidNumber; a switch drops sssd's cache); default: baked, else idmap
  --vpc-cidr CIDR      the VPC's IPv4 CIDR block (e.g. 10.0.0.0/16): the ssh key made for an AD user opens
                       the account only from there; default: the CIDR baked into this copy; empty: anywhere
  --restrict-imds      after the join, allow the instance metadata service (IMDS) to root only, now
                       and at every boot
  --computer-ou DN     create the computer object in this OU (OU=...,DC=...; the cluster's OU, where
                       the join account may create computers)
  --computer-prefix P  computer name = (P + sha256 hex of the instance id), upper case, cut to 15
                       characters: unique per node and per cluster (P: 1-6 letters/digits, a letter
                       first). Default: the host name (cut by a hash when longer than 15)
EOF
}

usage_error() {
    printf '%s: error: %s\n' "$PROG" "$1" >&2
    usage >&2
    exit 2
}

parse_args() {
    local opt value
    while (($#)); do
        opt=$1
        case $opt in
            -h | --help)
                usage
                exit 0
                ;;
            --restrict-imds)
                RESTRICT_IMDS=1
                shift
                continue
                ;;
            --function-url=* | --region=* | --timeout=* | --computer-ou=* | --computer-prefix=* \
                | --allowed-groups=* | --admin-groups=* | --vpc-cidr=* | --stack-users-group=* \
                | --stack-admins-group=* | --id-mode=*)
                value=${opt#*=}
                opt=${opt%%=*}
                shift
                ;;
            --function-url | --region | --timeout | --computer-ou | --computer-prefix | --allowed-groups \
                | --admin-groups | --vpc-cidr | --stack-users-group | --stack-admins-group | --id-mode)
                if (($# < 2)) || [[ $2 == --* ]]; then
                    usage_error "argument $opt requires a value"
                fi
                value=$2
                shift 2
                ;;
            *)
                usage_error "unknown argument: $opt"
                ;;
        esac
        case $opt in
            --function-url) FUNCTION_URL=$value ;;
            --region) REGION=$value ;;
            --timeout) TIMEOUT=$value ;;
            --allowed-groups) ALLOWED_GROUPS=$value ALLOWED_GROUPS_SET=1 ;;
            --admin-groups) ADMIN_GROUPS=$value ADMIN_GROUPS_SET=1 ;;
            --vpc-cidr) VPC_CIDR=$value VPC_CIDR_SET=1 ;;
            --stack-users-group) STACK_USERS_GROUP=$value STACK_USERS_GROUP_SET=1 ;;
            --stack-admins-group) STACK_ADMINS_GROUP=$value STACK_ADMINS_GROUP_SET=1 ;;
            --id-mode) ID_MODE=$value ;;
            --computer-ou) COMPUTER_OU=$value ;;
            --computer-prefix) COMPUTER_PREFIX=$value ;;
        esac
    done

    [[ -n $FUNCTION_URL ]] || FUNCTION_URL=$BAKED_FUNCTION_URL
    [[ -n $ALLOWED_GROUPS_SET ]] || ALLOWED_GROUPS=$BAKED_ALLOWED_GROUPS
    [[ -n $ADMIN_GROUPS_SET ]] || ADMIN_GROUPS=$BAKED_ADMIN_GROUPS
    [[ -n $VPC_CIDR_SET ]] || VPC_CIDR=$BAKED_VPC_CIDR
    [[ -n $STACK_USERS_GROUP_SET ]] || STACK_USERS_GROUP=$BAKED_STACK_USERS_GROUP
    [[ -n $STACK_ADMINS_GROUP_SET ]] || STACK_ADMINS_GROUP=$BAKED_STACK_ADMINS_GROUP
    [[ -n $ID_MODE ]] || ID_MODE=${BAKED_ID_MODE:-idmap}
    if [[ $ID_MODE != idmap && $ID_MODE != rfc2307 ]]; then
        usage_error "argument --id-mode must be idmap or rfc2307: '$ID_MODE'"
    fi
    if [[ -n $STACK_USERS_GROUP && ! $STACK_USERS_GROUP =~ ^CN=[A-Za-z0-9\ _.-]+(,(OU|CN)=[A-Za-z0-9\ _.-]+)*(,DC=[A-Za-z0-9-]+)+$ ]]; then
        usage_error "argument --stack-users-group must be a DN (CN=...,OU=...,DC=...; letters, digits, space, '_.-' in its values): '$STACK_USERS_GROUP'"
    fi
    if [[ -n $STACK_ADMINS_GROUP && ! $STACK_ADMINS_GROUP =~ ^[A-Za-z0-9][A-Za-z0-9_.-]{0,19}$ ]]; then
        usage_error "argument --stack-admins-group must be a group name (letters, digits, '_.-', at most 20): '$STACK_ADMINS_GROUP'"
    fi
    if [[ -n $VPC_CIDR ]] && ! valid_ipv4_cidr "$VPC_CIDR"; then
        usage_error "argument --vpc-cidr must be an IPv4 CIDR block such as 10.0.0.0/16 (no host bits set): '$VPC_CIDR'"
    fi
    [[ -n $FUNCTION_URL ]] || usage_error "missing argument --function-url URL (no URL is baked into this copy)"
    [[ -n $REGION ]] || usage_error "missing required argument --region REGION"
    # Plain http would expose the signed request and the password in the answer: only to a loopback
    # address, or anywhere when PCLUSTER_AD_ALLOW_HTTP=1 (test labs only).
    if [[ ! $FUNCTION_URL =~ ^https://[A-Za-z0-9.-]+(:[0-9]+)?(/[^[:space:]]*)?$ ]] \
        && [[ ! $FUNCTION_URL =~ ^http://(127\.[0-9]+\.[0-9]+\.[0-9]+|localhost|\[::1\])(:[0-9]+)?(/[^[:space:]]*)?$ ]] \
        && ! [[ ${PCLUSTER_AD_ALLOW_HTTP:-} == 1 && $FUNCTION_URL =~ ^http://[A-Za-z0-9.-]+(:[0-9]+)?(/[^[:space:]]*)?$ ]]; then
        usage_error "argument --function-url must be an https:// URL (plain http only to a loopback address, or with PCLUSTER_AD_ALLOW_HTTP=1): '$FUNCTION_URL'"
    fi
    if [[ ! $REGION =~ ^[a-z]{2}(-[a-z]+)+-[0-9]+$ ]]; then
        usage_error "argument --region is not an AWS region name: '$REGION'"
    fi
    if [[ ! $TIMEOUT =~ ^[0-9]+$ ]] || ((10#$TIMEOUT < 1 || 10#$TIMEOUT > 86400)); then
        usage_error "argument --timeout must be a whole number of seconds between 1 and 86400: '$TIMEOUT'"
    fi
    TIMEOUT=$((10#$TIMEOUT))
    if [[ -n $COMPUTER_OU && ! $COMPUTER_OU =~ ^(OU=[^,=]+,)+(DC=[A-Za-z0-9-]+,)*DC=[A-Za-z0-9-]+$ ]]; then
        usage_error "argument --computer-ou must be a DN of OU=... and DC=... parts: '$COMPUTER_OU'"
    fi
    if [[ -n $COMPUTER_PREFIX && ! $COMPUTER_PREFIX =~ ^[A-Z][A-Z0-9]{0,5}$ ]]; then
        usage_error "argument --computer-prefix must be 1-6 upper-case letters or digits, a letter first: '$COMPUTER_PREFIX'"
    fi
}

# ---------------------------------------------------------------------------------------------------
# Logging: every line of stdout and stderr, with a timestamp, to the log file and to stdout.

# The logging block below is the same in enable-ssh-password-auth.sh: ParallelCluster downloads each custom-action
# script on its own, so the two scripts cannot source a shared file. Change both together.
log() { printf '%s\n' "$*"; }

stamp_lines() {
    local line
    exec 4>>"$LOG_FILE"
    while IFS= read -r line || [[ -n $line ]]; do
        printf -v line '%(%Y-%m-%dT%H:%M:%S%z)T %s: %s' -1 "$PROG" "$line"
        printf '%s\n' "$line"
        printf '%s\n' "$line" >&4
    done
}

start_logging() {
    local dir
    dir=$(dirname -- "$LOG_FILE")
    if [[ ! -d $dir ]]; then
        mkdir -p -- "$(dirname -- "$dir")"
        mkdir -m 0700 -- "$dir"
    elif [[ $LOG_FILE == "$DEFAULT_LOG" ]]; then
        chmod 0700 -- "$dir"
    fi
    (umask 077 && : >>"$LOG_FILE")
    chmod 0600 -- "$LOG_FILE"
    exec > >(stamp_lines) 2>&1
    LOGGER_PID=$!
}

on_exit() {
    local rc=$? i
    set +e
    ONE_TIME_PASSWORD=""
    unset -v ONE_TIME_PASSWORD
    # Background work (start_pam_update, start_close_window) finishes and logs before the last line.
    [[ -n $PAM_PID ]] && wait "$PAM_PID"
    [[ -n $CLOSE_PID ]] && wait "$CLOSE_PID"
    [[ -n $NODE_AGENT_TMP ]] && rm -rf -- "$NODE_AGENT_TMP"
    if [[ -n $LOGGER_PID ]]; then
        if ((rc == 0)); then
            log "finished in $(elapsed)s: node joined to the domain and verified"
        else
            log "FAILED with exit code $rc (log: $LOG_FILE)"
        fi
        exec >&- 2>&-
        # Bounded wait for the last lines (a daemon started meanwhile could hold the pipe open).
        for ((i = 0; i < 500; i++)); do
            kill -0 "$LOGGER_PID" 2>/dev/null || break
            sleep 0.01
        done
    fi
    exit "$rc"
}

die() {
    local code=$1
    shift
    log "ERROR: $*"
    exit "$code"
}

# ---------------------------------------------------------------------------------------------------
# Deadline

START_SECONDS=$SECONDS
remaining() { printf '%d' $((START_SECONDS + TIMEOUT - SECONDS)); }
elapsed() { printf '%d' $((SECONDS - START_SECONDS)); }

# sleep_backoff DELAY: sleep DELAY seconds plus jitter, never past the deadline.
sleep_backoff() {
    local delay=$1 left
    delay=$((delay + RANDOM % (delay / 2 + 1)))
    left=$(remaining)
    ((delay > left - 1)) && delay=$((left - 1))
    [[ ${PCLUSTER_AD_TEST_NO_BACKOFF:-} == 1 ]] && delay=0
    ((delay > 0)) && sleep "$delay"
    return 0
}

# ---------------------------------------------------------------------------------------------------
# The node agent (bootstrap/node_agent/: Python, standard library only; secrets only ever come in on stdin).
# The uploaded copy carries it as a base64 zipapp on the marked line below, baked by components/bootstrap_scripts.py
# (bake_node_agent: one upload, one version); a checkout's copy (the line empty) runs the folder beside the script.
NODE_AGENT_ZIP=""
NODE_AGENT=""     # what goes first on python's sys.path: the decoded zip, or the folder that holds node_agent/
NODE_AGENT_TMP="" # the decoded zip's directory (root only, code and no secret): removed by on_exit
# -I: no environment, no user site-packages, no current directory on sys.path. The code is argv (no secret in it).
readonly NODE_AGENT_BOOT='import sys; sys.path.insert(0, sys.argv.pop(1)); from node_agent.__main__ import main; main()'

# start_node_agent: make the agent runnable, once (main, after the EXIT trap that removes it). Python imports a zip
# only from a seekable file: the zip is written once, not piped at every call.
start_node_agent() {
    if [[ -n $NODE_AGENT_ZIP ]]; then
        NODE_AGENT_TMP=$(mktemp -d) || die 3 "cannot create a temporary directory for the node agent"
        printf '%s' "$NODE_AGENT_ZIP" | base64 -d >"$NODE_AGENT_TMP/node-agent.pyz" ||
            die 3 "cannot write the node agent to $NODE_AGENT_TMP"
        NODE_AGENT=$NODE_AGENT_TMP/node-agent.pyz
    else
        NODE_AGENT=$(cd -- "$(dirname -- "$0")" && pwd -P)
        [[ -f $NODE_AGENT/node_agent/__main__.py ]] ||
            die 3 "no node agent: NODE_AGENT_ZIP is empty and $NODE_AGENT/node_agent/ is missing (upload the script as the stack bakes it, or keep bootstrap/node_agent/ beside it)"
    fi
}

pyhelper() { python3 -I -c "$NODE_AGENT_BOOT" "$NODE_AGENT" "$@"; }

# ---------------------------------------------------------------------------------------------------
# Operating system and packages

OS_FAMILY=""
OS_PRETTY=""

detect_os() {
    local file="$ROOT/etc/os-release" key value id="" like="" word
    [[ -r $file ]] || die 3 "cannot read $file: unsupported operating system"
    while IFS='=' read -r key value; do
        value=${value%\"}
        value=${value#\"}
        value=${value%\'}
        value=${value#\'}
        case $key in
            ID) id=$value ;;
            ID_LIKE) like=$value ;;
            PRETTY_NAME) OS_PRETTY=$value ;;
        esac
    done <"$file"
    for word in $id $like; do
        case $word in
            debian | ubuntu)
                OS_FAMILY=debian
                break
                ;;
            rhel | fedora | centos | amzn | rocky | almalinux | ol)
                OS_FAMILY=rhel
                break
                ;;
        esac
    done
    [[ -n $OS_FAMILY ]] || die 3 "unsupported operating system (ID=$id ID_LIKE=$like): need a Debian or RHEL family OS"
    log "operating system: ${OS_PRETTY:-$id} ($OS_FAMILY family)"
}

missing_commands() {
    local c
    local -a needed=(python3 realm adcli sssd kinit)
    if [[ $OS_FAMILY == debian ]]; then
        needed+=(pam-auth-update)
    else
        needed+=(oddjobd)
        if ! command -v authselect >/dev/null && ! command -v authconfig >/dev/null; then
            needed+=(authselect)
        fi
    fi
    for c in "${needed[@]}"; do
        command -v "$c" >/dev/null || printf '%s ' "$c"
    done
    return 0
}

install_packages() {
    local missing left
    local -a pkgs
    missing=$(missing_commands)
    if [[ -z $missing ]]; then
        log "packages: all needed commands are present, nothing to install"
        return 0
    fi
    log "packages: missing commands: $missing"
    left=$(remaining)
    ((left > 0)) || die 3 "deadline reached before installing packages"
    if [[ $OS_FAMILY == debian ]]; then
        # packagekit is not needed: realm join runs with --install=/ (see do_join).
        pkgs=(sssd sssd-ad sssd-tools realmd adcli krb5-user libnss-sss libpam-sss)
        [[ $missing == *"python3 "* ]] && pkgs+=(python3)
        log "packages: apt-get install ${pkgs[*]}"
        timeout -k 10 "$left" env DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=300 update </dev/null \
            || die 3 "apt-get update failed"
        left=$(remaining)
        ((left > 0)) || die 3 "deadline reached while installing packages"
        timeout -k 10 "$left" env DEBIAN_FRONTEND=noninteractive apt-get -q -y -o DPkg::Lock::Timeout=300 \
            install --no-install-recommends "${pkgs[@]}" </dev/null || die 3 "apt-get install failed"
    else
        local pm=dnf auth=authselect
        if ! command -v dnf >/dev/null; then
            pm=yum
            auth=authconfig # Amazon Linux 2 and other yum-only systems
        fi
        pkgs=(sssd sssd-ad sssd-tools realmd adcli krb5-workstation oddjob oddjob-mkhomedir "$auth")
        [[ $missing == *"python3 "* ]] && pkgs+=(python3)
        log "packages: $pm install ${pkgs[*]}"
        timeout -k 10 "$left" "$pm" -y -q install "${pkgs[@]}" </dev/null || die 3 "$pm install failed"
    fi
    missing=$(missing_commands)
    [[ -z $missing ]] || die 3 "still missing after installing packages: $missing"
}

# ---------------------------------------------------------------------------------------------------
# IMDSv2 and the join function: the node agent's join_client (Python's urllib). The instance role's credentials
# never leave its process; it logs as the script does (stderr) and answers on stdout.

INSTANCE_ID=""
AD_DOMAIN=""
AD_REALM=""
COMPUTER_NAME="" # this node's computer account, as the join function created it (never chosen here)
HOST_FQDN=""
SERVICE_ACCOUNTS="" # comma-separated: accounts that never log in (the join function's), from its answer

# Fills INSTANCE_ID, AD_DOMAIN, AD_REALM, COMPUTER_NAME, HOST_FQDN, SERVICE_ACCOUNTS and ONE_TIME_PASSWORD from the
# join function, which has just created this instance's computer object with that one-time password. The agent
# reads IMDS, signs each attempt with fresh credentials, retries and waits out busy answers within the deadline;
# it exits with the script's code (4 IMDS, 5 unreachable or failing, 6 403, 7 invalid answer) after its ERROR line.
fetch_join_secret() {
    local reply rc=0
    reply=$(pyhelper fetch-join "$FUNCTION_URL" "$REGION" "$IMDS_ENDPOINT" "$TIMEOUT" "$(remaining)" "$(elapsed)") \
        || rc=$?
    if ((rc != 0)); then
        reply=""
        exit "$rc"
    fi
    INSTANCE_ID=${reply%%$'\n'*}
    reply=${reply#*$'\n'}
    AD_DOMAIN=${reply%%$'\n'*}
    reply=${reply#*$'\n'}
    AD_REALM=${reply%%$'\n'*}
    reply=${reply#*$'\n'}
    COMPUTER_NAME=${reply%%$'\n'*}
    reply=${reply#*$'\n'}
    HOST_FQDN=${reply%%$'\n'*}
    reply=${reply#*$'\n'}
    SERVICE_ACCOUNTS=${reply%%$'\n'*}
    ONE_TIME_PASSWORD=${reply#*$'\n'}
    reply=""
    check_computer_name
}

# ---------------------------------------------------------------------------------------------------
# Join and sssd

# realm_list_names_domain: stdin is `realm list` output (configured realms only); 0 when it names the domain.
realm_list_names_domain() {
    local line
    while IFS= read -r line; do
        line=${line#"${line%%[![:space:]]*}"}
        line=${line%"${line##*[![:space:]]}"}
        line=${line,,}
        [[ $line == "domain-name: ${AD_DOMAIN,,}" || $line == "realm-name: ${AD_REALM,,}" ]] && return 0
    done
    return 1
}

realm_configured() {
    local out
    # The on-disk state of a join first, sssd's domain section plus this host's key in the keytab: what
    # realmd itself reads (realm list starts a realmd: ~30 ms), and right also when a realmd that was
    # already running when the join wrote sssd.conf keeps a stale view (realm list empty, realm join
    # "Already joined"; seen with realmd 0.17.1 in tests/adlab).
    if grep -qiF "[domain/$AD_DOMAIN]" "$ROOT/etc/sssd/sssd.conf" 2>/dev/null \
        && klist -k "$ROOT/etc/krb5.keytab" 2>/dev/null | grep -qiF "\$@$AD_REALM"; then
        return 0
    fi
    out=$(realm list 2>&1) && realm_list_names_domain <<<"$out"
}

# The hint for every join failure, the deadline included (issue 9 finding 8).
readonly REALM_HINT="(see the adcli output above; 'Couldn't find a domain controller' or 'Couldn't lookup domain' means this node cannot reach the domain controllers: check that the node resolves the domain (the VPC's DHCP options, or in an existing VPC the Route 53 Resolver rule for the domain) and reaches the domain controllers' ports)"

# With --computer-prefix (the stack renders it into the cluster config) the answered name must be the one
# derived from this instance's id, as the function derives it: a wrong name means a wrong function or answer.
check_computer_name() {
    local want
    [[ -n $COMPUTER_PREFIX ]] || return 0
    want=$(printf '%s' "$INSTANCE_ID" | sha256sum)
    want=${COMPUTER_PREFIX}${want%% *}
    want=${want^^}
    want=${want:0:15}
    if [[ $COMPUTER_NAME != "$want" ]]; then
        ONE_TIME_PASSWORD=""
        die 7 "invalid answer from the join function: computer name $COMPUTER_NAME is not $want (prefix $COMPUTER_PREFIX, instance $INSTANCE_ID)"
    fi
}

# The node's own join: adcli with the one-time password of the object the function created (on stdin: never
# on a command line, where `realm join --one-time-password` would put it), then the sssd configuration that
# realmd would write. adcli sets a machine password of its own at once, so the one-time password is dead
# afterwards; a failed attempt before that may retry with it.
do_join() {
    local attempt left cap
    local -a args=(join --verbose --login-type=computer --stdin-password "--domain=$AD_DOMAIN"
        "--domain-realm=$AD_REALM" "--computer-name=$COMPUTER_NAME" "--host-fqdn=$HOST_FQDN")
    cap=${PCLUSTER_AD_TEST_JOIN_ATTEMPT_SECONDS:-120}
    if [[ ! $cap =~ ^[1-9][0-9]*$ ]]; then
        cap=120
    fi
    for attempt in 1 2 3; do
        left=$(remaining)
        ((left > 0)) || die 8 "deadline ($TIMEOUT s) reached before the join to $AD_DOMAIN succeeded $REALM_HINT"
        ((left > cap)) && left=$cap
        log "adcli: joining $AD_DOMAIN as $COMPUTER_NAME (attempt $attempt, max ${left}s)"
        # Each attempt is capped: a hanging join (unreachable DC) is killed and retried instead of eating the
        # whole deadline.
        if printf '%s\n' "$ONE_TIME_PASSWORD" | timeout -k 10 "$left" adcli "${args[@]}"; then
            break
        fi
        if host_key_present; then
            log "adcli: the host key is in the keytab despite adcli's exit status"
            break
        fi
        ((attempt < 3)) || die 8 "adcli join $AD_DOMAIN failed $REALM_HINT"
        (($(remaining) > 5)) && sleep_backoff $((5 * attempt))
    done
    host_key_present || die 8 "adcli joined, but the keytab holds no key of $COMPUTER_NAME\$@$AD_REALM"
    log "joined $AD_DOMAIN as $COMPUTER_NAME"
}

host_key_present() {
    klist -k "$ROOT/etc/krb5.keytab" 2>/dev/null | grep -qiF "$COMPUTER_NAME\$@$AD_REALM"
}

enable_mkhomedir() {
    local out
    if [[ $OS_FAMILY == debian ]]; then
        [[ -n $PAM_UPDATED ]] && return 0 # done while realm join ran (start_pam_update)
        debian_pam_update || die 9 "pam-auth-update --enable mkhomedir failed"
    elif command -v authselect >/dev/null; then
        out=$(authselect current 2>&1 || true)
        if [[ $out == *"Profile ID: sssd"* ]]; then
            log "pam: authselect profile sssd is active; enabling feature with-mkhomedir"
            authselect enable-feature with-mkhomedir || die 9 "authselect enable-feature with-mkhomedir failed"
        else
            log "pam: authselect select sssd with-mkhomedir"
            authselect select sssd with-mkhomedir --force || die 9 "authselect select sssd with-mkhomedir failed"
        fi
        systemctl enable --now oddjobd.service || die 9 "could not enable and start oddjobd (home creation)"
    else
        log "pam: authconfig --enablemkhomedir"
        authconfig --enablesssd --enablesssdauth --enablemkhomedir --update \
            || die 9 "authconfig --enablemkhomedir failed"
        systemctl enable --now oddjobd.service || die 9 "could not enable and start oddjobd (home creation)"
    fi
}

sssd_running() {
    local pidfile pid comm
    for pidfile in "$ROOT/run/sssd.pid" "$ROOT/var/run/sssd.pid"; do
        [[ -r $pidfile ]] || continue
        read -r pid <"$pidfile" || continue
        [[ $pid =~ ^[0-9]+$ ]] || continue
        comm=$(cat "/proc/$pid/comm" 2>/dev/null) || continue
        [[ $comm == sssd ]] && return 0
    done
    return 1
}

# A group every domain has (AWS Simple AD and Managed AD by this name). Under --id-mode rfc2307 only groups with a
# gidNumber exist for sssd, and Domain Users has none: the stack's admins group then, which DirectoryAdmin gives one.
verify_group() {
    if [[ $ID_MODE == rfc2307 && -n $STACK_ADMINS_GROUP ]]; then
        printf '%s' "$STACK_ADMINS_GROUP"
    else
        printf 'Domain Users'
    fi
}

# Bounded retries: right after a restart the domain can be offline for a moment.
verify_sssd() {
    local until limit running=0 lookup=0 restarted_at hint=""
    local VERIFY_GROUP
    VERIFY_GROUP=$(verify_group)
    limit=$(remaining)
    ((limit > 120)) && limit=120
    ((limit < 1)) && limit=1
    until=$((SECONDS + limit))
    restarted_at=$SECONDS
    while :; do
        running=0
        lookup=0
        if sssd_running; then
            running=1
            if getent -s sss group "$VERIFY_GROUP" >/dev/null; then
                lookup=1
                break
            fi
        elif ((restarted_at >= 0 && SECONDS - restarted_at >= 10 && until - SECONDS > 5)); then
            log "sssd is not running; restarting it once more"
            timeout -k 10 60 systemctl restart sssd || log "WARNING: systemctl restart sssd failed"
            restarted_at=-1
        fi
        ((SECONDS < until)) || break
        sleep 2
    done
    if ((running == 0)); then
        die 9 "sssd is not running after the join (realm join exits 0 even when sssd fails to start): see /var/log/sssd/ and 'systemctl status sssd'"
    fi
    if ((lookup == 0)); then
        [[ $ID_MODE == rfc2307 ]] && hint=" (--id-mode rfc2307: a group resolves only with a gidNumber; DirectoryAdmin gives the stack's groups one, pcluster-ad:identity.mode)"
        die 9 "sssd runs but the group '$VERIFY_GROUP' does not resolve through sssd (getent group) within ${limit}s$hint: see /var/log/sssd/"
    fi
    log "verified: sssd is running and the domain answers ('$VERIFY_GROUP' resolves)"
}

configure_sssd() {
    local conf="$ROOT/etc/sssd/sssd.conf"
    # One Python start: the sssd configuration of the join (what realmd would write: this script runs adcli
    # itself), our settings in it, and krb5.conf's default_realm (also on a node joined by an older version).
    pyhelper node-config "$conf" "$AD_DOMAIN" "$AD_REALM" "$ROOT/etc/krb5.conf" "$ID_MODE" "$ROOT$SSSD_DB" \
        "$ROOT/var/lib/sss/mc" || die 9 "could not write $conf or $ROOT/etc/krb5.conf"
    enable_mkhomedir
    # realmd enabled sssd when it ran the join; adcli does not: sssd must start at every boot.
    timeout -k 10 60 systemctl enable sssd || log "WARNING: systemctl enable sssd failed"
    log "sssd: restarting"
    if ! timeout -k 10 120 systemctl restart sssd; then
        log "WARNING: systemctl restart sssd failed"
    fi
}

# ---------------------------------------------------------------------------------------------------
# Already joined? (before any request: a joined node never asks for the join credentials again)

readonly STATE_FILE=/var/lib/pcluster-ad/join-state

existing_join() {
    local out found key value
    # A fresh node: no sssd domain section, no host keytab, no Samba ADS configuration, so nothing that
    # realmd could list as configured (its sssd and samba providers read exactly these). No realm list
    # (it starts realmd: ~30 ms) and no Python start.
    if ! grep -Eqis '^[[:space:]]*\[[[:space:]]*domain/' "$ROOT/etc/sssd/sssd.conf" && [[ ! -s $ROOT/etc/krb5.keytab ]] \
        && ! grep -Eqis '^[[:space:]]*security[[:space:]]*=[[:space:]]*ads' "$ROOT/etc/samba/smb.conf"; then
        return 1
    fi
    out=$(realm list 2>/dev/null) || out=""
    found=$(printf '%s\n' "$out" | pyhelper joined-realm "$ROOT/etc/sssd/sssd.conf" "$ROOT/etc/krb5.keytab") || return 1
    AD_DOMAIN=${found%%$'\n'*}
    AD_REALM=${found#*$'\n'}
    # The service accounts (names, no secret) recorded by the run that joined: they stay without login.
    if [[ -r $ROOT$STATE_FILE ]]; then
        while IFS='=' read -r key value; do
            [[ $key == service ]] && SERVICE_ACCOUNTS=$value
        done <"$ROOT$STATE_FILE"
    fi
    return 0
}

write_state() {
    if ! { mkdir -p -- "$(dirname -- "$ROOT$STATE_FILE")" \
        && printf 'domain=%s\nrealm=%s\ncomputer=%s\nservice=%s\n' "$AD_DOMAIN" "$AD_REALM" "$COMPUTER_NAME" \
            "$SERVICE_ACCOUNTS" >"$ROOT$STATE_FILE"; }; then
        log "WARNING: could not write $ROOT$STATE_FILE"
    fi
}

# ---------------------------------------------------------------------------------------------------
# --restrict-imds: IMDS for root only, now and at every boot.

readonly LOCKDOWN_SCRIPT=/usr/local/sbin/pcluster-ad-imds-lockdown
readonly LOCKDOWN_UNIT=pcluster-ad-imds-lockdown.service

has_commands() {
    local c
    for c in "$@"; do
        command -v "$c" >/dev/null 2>&1 || return 1
    done
}

ensure_iptables() {
    local left
    has_commands "$@" && return 0
    log "imds: $* missing; installing iptables"
    left=$(remaining)
    ((left > 0)) || die 10 "--restrict-imds: iptables is not installed and the deadline ($TIMEOUT s) is reached"
    if [[ $OS_FAMILY == debian ]]; then
        timeout -k 10 "$left" env DEBIAN_FRONTEND=noninteractive apt-get -q -y -o DPkg::Lock::Timeout=300 \
            install --no-install-recommends iptables </dev/null || die 10 "--restrict-imds: apt-get install iptables failed"
    elif command -v dnf >/dev/null; then
        timeout -k 10 "$left" dnf -y -q install iptables-nft </dev/null \
            || die 10 "--restrict-imds: dnf install iptables-nft failed"
    else
        timeout -k 10 "$left" yum -y -q install iptables </dev/null || die 10 "--restrict-imds: yum install iptables failed"
    fi
    has_commands "$@" || die 10 "--restrict-imds: $* still missing after installing iptables"
}

# The lockdown script's fixed part; restrict_imds appends one `lock` line per IMDS address.
read -r -d '' LOCKDOWN_BODY <<'SH' || true
#!/bin/sh
# pcluster-ad: the instance metadata service (IMDS) for root (uid 0) only. Written by join-domain.sh
# --restrict-imds, run by it and at every boot by pcluster-ad-imds-lockdown.service. The rules of
# ParallelCluster's head-node lockdown (cookbook imds-access.sh): chain PARALLELCLUSTER_IMDS, jumped
# to from OUTPUT for the IMDS address, ACCEPT for the allowed owner, REJECT for everyone else.
# Idempotent and without a gap: only missing rules are added, ACCEPT always ahead of REJECT.
set -eu
PATH="${PATH:-/usr/bin:/bin}:/usr/sbin:/sbin"
C=PARALLELCLUSTER_IMDS
lock() {
    ipt=$1
    shift
    if [ "$ipt" = ip6tables ] && [ ! -e /proc/net/if_inet6 ]; then
        echo "IPv6 is disabled on this node: no IPv6 IMDS to lock down"
        return 0
    fi
    $ipt -w -N "$C" 2>/dev/null || true
    $ipt -w -C "$C" "$@" -m owner --uid-owner 0 -j ACCEPT 2>/dev/null \
        || $ipt -w -I "$C" 1 "$@" -m owner --uid-owner 0 -j ACCEPT
    $ipt -w -C "$C" "$@" -j REJECT 2>/dev/null || $ipt -w -A "$C" "$@" -j REJECT
    $ipt -w -C OUTPUT "$@" -j "$C" 2>/dev/null || $ipt -w -I OUTPUT 1 "$@" -j "$C"
}
SH
readonly LOCKDOWN_BODY

read -r -d '' LOCKDOWN_UNIT_TEXT <<'UNIT' || true
[Unit]
Description=pcluster-ad: instance metadata (IMDS) for root only
# After the firewall services (restoring a saved rule set would drop these rules), before anyone can
# log in or run a job.
After=network-pre.target iptables.service ip6tables.service firewalld.service netfilter-persistent.service nftables.service
Before=ssh.service sshd.service slurmd.service systemd-user-sessions.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/pcluster-ad-imds-lockdown

[Install]
WantedBy=multi-user.target
UNIT
readonly LOCKDOWN_UNIT_TEXT

restrict_imds() {
    local addrs family addr port lines="" script unit
    local -a cmds=()
    addrs=$(pyhelper imds-address "$IMDS_ENDPOINT") || die 10 "--restrict-imds: cannot lock IMDS down (see above)"
    while read -r family addr port; do
        if [[ $family == 6 ]]; then
            cmds+=(ip6tables)
            lines+="lock ip6tables -d $addr"
        else
            cmds+=(iptables)
            lines+="lock iptables -d $addr"
        fi
        # Another endpoint (a lab's stand-in) is locked on its port only; EC2's IMDS address as a whole.
        [[ -n $port ]] && lines+=" -p tcp --dport $port"
        lines+=$'\n'
    done <<<"$addrs"
    ensure_iptables "${cmds[@]}"
    script="$ROOT$LOCKDOWN_SCRIPT"
    unit="$ROOT/etc/systemd/system/$LOCKDOWN_UNIT"
    mkdir -p -- "$(dirname -- "$script")" "$(dirname -- "$unit")" || die 10 "--restrict-imds: cannot create directories"
    { printf '%s\n%s' "$LOCKDOWN_BODY" "$lines" >"$script" && chmod 0755 -- "$script"; } \
        || die 10 "--restrict-imds: cannot write $script"
    { printf '%s\n' "$LOCKDOWN_UNIT_TEXT" >"$unit" && chmod 0644 -- "$unit"; } || die 10 "--restrict-imds: cannot write $unit"
    log "imds: allowing IMDS ($(tr '\n' ';' <<<"$addrs")) to root only: $LOCKDOWN_SCRIPT"
    "$script" || die 10 "--restrict-imds: the iptables rules were refused (see above)"
    timeout -k 10 60 systemctl daemon-reload || log "WARNING: systemctl daemon-reload failed"
    timeout -k 10 60 systemctl enable "$LOCKDOWN_UNIT" \
        || die 10 "--restrict-imds: could not enable $LOCKDOWN_UNIT (the lockdown would not survive a reboot)"
    log "imds: only root can reach IMDS now; $LOCKDOWN_UNIT applies the same rules at every boot"
}

# ---------------------------------------------------------------------------------------------------
# Access control (pcluster-ad:access): who may log in and who gets sudo, the same on every node; and
# ssh between nodes without a password for AD users (MPI). Applied BEFORE sssd first runs with the
# domain (realm join restarts it at its end) and again before every sssd restart: there is no moment in
# which every AD user may log in.

readonly ACCESS_CONF=/etc/sssd/conf.d/50-pcluster-ad-access.conf
readonly SUDOERS_FILE=/etc/sudoers.d/50-pcluster-ad-admins
# sssd's cached view of a user, kept as fresh as the directory at every login and for sudo in open sessions.
readonly FRESH_CONF=/etc/sssd/conf.d/50-pcluster-ad-fresh.conf
readonly SUDO_CONF=/etc/sudo.conf
readonly SUDO_CONF_MARK="# pcluster-ad: sudo asks NSS (sssd) for the user's groups at each call, not the session's list"
# Per-user ssh key for MPI: a script that sshd runs AS THE USER through /etc/ssh/sshrc (issue 16: never as root).
readonly SSH_KEY_HOOK=/usr/local/libexec/pcluster-ad-user-ssh-key
readonly SSHRC=/etc/ssh/sshrc
# What versions before issue 16 installed: a root pam_exec hook in sshd's PAM session stack (removed on a re-run).
readonly OLD_SSH_KEY_HOOK=/usr/local/sbin/pcluster-ad-user-ssh-key

# "a, b ,c" -> one trimmed name per array element (AD group names cannot hold commas).
split_groups() {
    local -n split_out=$2
    local g
    local -a raw=()
    split_out=()
    IFS=, read -r -a raw <<<"$1"
    for g in "${raw[@]}"; do
        g="${g#"${g%%[![:space:]]*}"}"
        g="${g%"${g##*[![:space:]]}"}"
        [[ -n $g ]] && split_out+=("$g")
    done
    return 0
}

# The domain section sssd reads: realm's in sssd.conf once joined (its spelling), else [domain/<domain>].
access_section() {
    local found
    found=$(grep -ioF -m1 "[domain/$AD_DOMAIN]" "$ROOT/etc/sssd/sssd.conf" 2>/dev/null || true)
    found=${found#[}
    printf '%s' "${found%]}"
    [[ -n $found ]] || printf 'domain/%s' "$AD_DOMAIN"
}

# An sssd conf.d snippet, atomically (0600, directory 0711). A temporary name starting with a dot: sssd reads only
# conf.d/*.conf files that do not start with one.
write_sssd_snippet() {
    local conf=$1 body=$2 dir tmp
    dir=$(dirname -- "$conf")
    { mkdir -p -- "$dir" && chmod 0711 -- "$dir"; } || die 11 "access: cannot create $dir"
    tmp=$(mktemp "$dir/.pcluster-ad.XXXXXX") || die 11 "access: cannot write in $dir"
    if ! printf '%s' "$body" >"$tmp" || ! chmod 0600 -- "$tmp" || ! mv -f -- "$tmp" "$conf"; then
        rm -f -- "$tmp"
        die 11 "access: cannot write $conf"
    fi
}

# sssd's simple access provider: only members of the allowed groups (nested membership counts: sssd
# resolves the user's groups through tokenGroups) pass the account phase of PAM, for ssh and every other
# service. Local accounts are not sssd's: pam_sss answers "user unknown" and the local admin keeps access.
configure_login_access() {
    local conf="$ROOT$ACCESS_CONF" list="" g body
    local -a groups=()
    split_groups "$ALLOWED_GROUPS" groups
    for g in "${groups[@]}"; do
        list+="${list:+, }$g"
    done
    # Computer accounts and the stack's service accounts never log in, whatever the access settings (issue 16):
    # denied at PAM's account phase, which password, key and GSSAPI logins all pass.
    # The ad provider (every mode but the lists without DirectoryAdmin) refuses disabled and expired accounts itself
    # (sssd-ad(5): its access check includes ldap_account_expire_policy = ad: userAccountControl's ACCOUNTDISABLE,
    # accountExpires) on its cached copy of the user (measured: a key or su login does not refresh it, so an expiry
    # reaches those only when the copy is refreshed; password logins: the KDC refuses at once); the filter makes the
    # DC refuse disabled accounts at every login, and adds locked-out accounts
    # (lockoutTime set: cleared by an unlock or the next successful password logon after the lockout duration) and
    # is evaluated by the DC at each login while online. GPO-based access control is off: sssd >= 1.14 enforces
    # the domain's GPO logon rights by default, and a directory's GPOs (Simple AD's defaults) are not the site's.
    # ACCOUNTDISABLE is in the filter too: the DC's word at each login, whatever sssd has cached of the entry.
    local state="(!(userAccountControl:1.2.840.113556.1.4.803:=2))(!(lockoutTime>=1))"
    # ad_enable_gc = False: sssd would send the access filter to the Global Catalog first and take its "allowed" as
    # final, and a Windows GC does not hold lockoutTime (not in the partial attribute set): a locked-out account
    # would pass there (attack finding 2 of issue 18). The domain's own LDAP holds every attribute. The directories
    # the product serves are single-domain forests, so the GC adds nothing else.
    local gpo="ad_gpo_access_control = disabled
ad_enable_gc = False" section
    section=$(access_section)
    # DOM:<domain>: before the filter: sssd reads a colon as the start of that keyword, so a filter with the
    # extensible matches (memberOf:<in-chain OID>:=, userAccountControl:<bit-and OID>:=) must carry it (sssd-ad(5),
    # ad_access_filter; without it sssd logs "could not be parsed" and refuses everyone).
    local dom="DOM:${section#domain/}:"
    # With the stack's group, one filter for every allowedGroups, empty included (DirectoryAdmin then keeps every
    # user account of the domain in the group): a later allowedGroups closes this node without a re-run (issue 18,
    # attack finding 1).
    if [[ -n $STACK_USERS_GROUP ]]; then
        body="# pcluster-ad (pcluster-ad:access.allowedGroups, as the stack's group $STACK_USERS_GROUP): only its members
# (nested groups count; the DC decides at each login) may log in; never a disabled, expired or locked-out account,
# a computer account or a service account. allowedGroups empty: the stack keeps every user account in the group.
[$section]
access_provider = ad
ad_access_filter = $dom(&(memberOf:1.2.840.113556.1.4.1941:=$STACK_USERS_GROUP)(!(objectClass=computer))$state$(service_filter))
$gpo
"
    elif ((${#groups[@]} == 0)); then
        body="# pcluster-ad: every domain user may log in, but no disabled, expired or locked-out account, no computer
# account and no service account.
[$section]
access_provider = ad
ad_access_filter = $dom(&(!(objectClass=computer))$state$(service_filter))
$gpo
"
    else
        body="# pcluster-ad (pcluster-ad:access.allowedGroups): only members of these AD groups may log in; never a
# computer account or a service account.
[$(access_section)]
access_provider = simple
simple_allow_groups = $list
simple_deny_groups = Domain Computers${SERVICE_ACCOUNTS:+
simple_deny_users = $SERVICE_ACCOUNTS}
"
    fi
    write_sssd_snippet "$conf" "$body"
    if [[ -n $STACK_USERS_GROUP ]]; then
        log "access: only in-chain members of the stack's group $STACK_USERS_GROUP (allowed groups: ${list:-none: every user account of the domain, kept in the group by the stack}) may log in, checked by the DC at each login; disabled, expired, locked-out and computer accounts${SERVICE_ACCOUNTS:+ and $SERVICE_ACCOUNTS} never ($conf)"
    elif ((${#groups[@]} == 0)); then
        log "access: every domain user may log in (no allowed groups configured); disabled, expired, locked-out and computer accounts${SERVICE_ACCOUNTS:+ and $SERVICE_ACCOUNTS} never ($conf)"
    else
        log "access: only members of these AD groups may log in: $list; computer accounts${SERVICE_ACCOUNTS:+ and $SERVICE_ACCOUNTS} never ($conf)"
    fi
    configure_fresh_identity
}

# What a login and sudo see of a user must be the directory's, within a stated time (issue 18, attack findings 3
# and 4 and the expired account; measured in tests/adlab/test_attack_issue18.py, test_access_directory.py):
# - pac_lifetime = 0: after any Kerberos login (a password login, a sudo with the AD password) sssd keeps the
#   ticket's PAC and, while it is valid (300 s by default), refreshes a user's groups FROM IT instead of from LDAP,
#   and without re-reading the user entry (sssd ad_id.c: check_if_pac_is_available, ad_pac.c): a key login then
#   kept a removed admin's group and an expired account's old accountExpires. With 0 every refresh reads LDAP.
# - pam_initgroups_scheme = always: sssd's PAM responder refreshes the user (entry and groups, online) at each PAM
#   request (pamsrv_cmd.c, pam_check_user_search_next); by default it skips that when the user has any process on
#   the node (a running job), and a new login there would use the cache as it was.
# - entry_cache_user_timeout = 30, memcache_size_initgroups = 0 (and sudo's group_source dynamic, below): sudo
#   in a session opened before asks NSS for the user's groups; sssd answers from its cache while the entry is
#   younger than 30 s (older: refreshed online), and with no fast-cache copy of group lists (it would be served
#   by the NSS client itself for memcache_timeout, 300 s, whatever sssd knows).
configure_fresh_identity() {
    local conf="$ROOT$FRESH_CONF" body
    body="# pcluster-ad: group memberships and account state as the directory has them, at every login (the next one)
# and for sudo in sessions opened before (within entry_cache_user_timeout). See join-domain.sh.
[$(access_section)]
entry_cache_user_timeout = 30

[pam]
pam_initgroups_scheme = always

[pac]
pac_lifetime = 0

[nss]
memcache_size_initgroups = 0
"
    write_sssd_snippet "$conf" "$body"
    log "access: sssd refreshes a user from the directory at every login (no PAC shortcut) and her group list after 30 s ($conf)"
}

# sudo's default group source (adaptive) is the kernel's list of the session, fixed when the user logged in:
# an admin removed from the admins group kept sudo in every session she had open. "Set group_source dynamic"
# (sudo.conf(5)) makes sudo ask NSS at each call. sudo uses the LAST such line: ours is appended, everything
# else in the file stays (an earlier line of ours is replaced). sudo reads the file at each call.
sudo_group_source_dynamic() {
    local conf="$ROOT$SUDO_CONF" body="" last="" out="" line skip="" mode=0644 tmp
    if [[ ! -e $conf ]] && ! command -v sudo >/dev/null; then
        log "access: sudo is not installed: $SUDO_CONF left alone"
        return 0
    fi
    if [[ -e $conf ]]; then
        body=$(<"$conf") || die 11 "access: cannot read $conf"
        mode=$(stat -c %a -- "$conf") || die 11 "access: cannot read $conf"
        last=$(grep -iE '^[[:space:]]*Set[[:space:]]+group_source[[:space:]]' <<<"$body" | tail -n 1 \
            | awk '{print tolower($3)}') || true
    fi
    if [[ $last == dynamic ]]; then
        log "access: sudo asks NSS for the user's groups at each call ($conf: group_source dynamic)"
        return 0
    fi
    while IFS= read -r line || [[ -n $line ]]; do
        if [[ -n $skip ]]; then
            skip=""
            [[ $line == "Set group_source dynamic" ]] && continue
        fi
        if [[ $line == "$SUDO_CONF_MARK" ]]; then
            skip=1
            continue
        fi
        out+="$line"$'\n'
    done <<<"$body"
    [[ -z $body ]] && out=""
    out+="$SUDO_CONF_MARK"$'\n'"Set group_source dynamic"$'\n'
    tmp=$(mktemp "$(dirname -- "$conf")/.pcluster-ad.XXXXXX") || die 11 "access: cannot write next to $conf"
    if ! printf '%s' "$out" >"$tmp" || ! chmod "$mode" -- "$tmp" || ! mv -f -- "$tmp" "$conf"; then
        rm -f -- "$tmp"
        die 11 "access: cannot write $conf"
    fi
    log "access: sudo asks NSS for the user's groups at each call: 'Set group_source dynamic' in $conf${last:+ (it had group_source $last)}"
}

# The ad_access_filter part that excludes the service accounts ("" without any).
service_filter() {
    local name
    local -a names=()
    split_groups "$SERVICE_ACCOUNTS" names
    for name in "${names[@]}"; do
        # RFC 4515 escapes: the name is a value inside the filter.
        name=${name//\\/\\5c}
        name=${name//\*/\\2a}
        name=${name//(/\\28}
        name=${name//)/\\29}
        printf '(!(sAMAccountName=%s))' "$name"
    done
}

# One sudoers word: every ASCII character other than letters, digits, '_', '.', '-' backslash-escaped
# (spaces in "Domain Admins", and the characters sudoers gives a meaning: ! ( ) # , : = % ...).
sudoers_word() {
    local s=$1 out="" c i
    for ((i = 0; i < ${#s}; i++)); do
        c=${s:i:1}
        if [[ $c == [A-Za-z0-9_.-] || $c == [^[:ascii:]] ]]; then
            out+=$c
        else
            out+="\\$c"
        fi
    done
    printf '%s' "$out"
}

# Members of the admin groups may run any command as any user, with their own (AD) password. The file is
# checked with visudo before it is installed: a broken drop-in would break sudo for everyone.
configure_admin_access() {
    local file="$ROOT$SUDOERS_FILE" dir tmp body g
    local -a groups=()
    split_groups "$ADMIN_GROUPS" groups
    # With the stack's admins group, sudo follows its membership (the directory's data): the one line, always.
    [[ -n $STACK_ADMINS_GROUP ]] && groups=("$STACK_ADMINS_GROUP")
    if ((${#groups[@]} == 0)); then
        if [[ -e $file ]]; then
            rm -f -- "$file" || die 11 "access: cannot remove $file"
        fi
        return 0
    fi
    command -v visudo >/dev/null || die 11 "access: visudo not found (is sudo installed?): cannot give sudo to the admin groups"
    body="# pcluster-ad (pcluster-ad:access.adminGroups): members of these AD groups may run any command, with their password."$'\n'
    for g in "${groups[@]}"; do
        body+="%$(sudoers_word "$g") ALL=(ALL:ALL) ALL"$'\n'
    done
    dir=$(dirname -- "$file")
    mkdir -p -- "$dir" || die 11 "access: cannot create $dir"
    # A name with a dot: sudo's includedir skips it while it is being written and checked.
    tmp=$(mktemp "$dir/.pcluster-ad.XXXXXX") || die 11 "access: cannot write in $dir"
    if ! printf '%s' "$body" >"$tmp" || ! chmod 0440 -- "$tmp"; then
        rm -f -- "$tmp"
        die 11 "access: cannot write $tmp"
    fi
    if ! visudo -c -q -f "$tmp"; then
        rm -f -- "$tmp"
        die 11 "access: visudo refuses the sudoers drop-in for the admin groups; nothing installed"
    fi
    mv -f -- "$tmp" "$file" || die 11 "access: cannot install $file"
    log "access: sudo (with password) for members of: $(printf '%s, ' "${groups[@]}" | sed 's/, $//') ($file)"
}

# Groups that do not resolve are logged (their members cannot log in / get no sudo); nothing else changes:
# local accounts never depend on them.
check_access_groups() {
    local g kind missing=0 total=0
    local -a groups=()
    for kind in allowedGroups adminGroups; do
        if [[ $kind == allowedGroups ]]; then
            split_groups "$ALLOWED_GROUPS" groups
        else
            split_groups "$ADMIN_GROUPS" groups
        fi
        for g in "${groups[@]}"; do
            if getent group "$g" >/dev/null 2>&1; then
                [[ $kind == allowedGroups ]] && total=$((total + 1))
            else
                log "WARNING: access: AD group '$g' (pcluster-ad:access.$kind) was not found in $AD_DOMAIN: its members get no access through it. Check the name (pre-Windows 2000 group name), or create the group. Local accounts are not affected."
                [[ $kind == allowedGroups ]] && missing=$((missing + 1))
            fi
        done
    done
    if ((missing > 0 && total == 0)); then
        log "WARNING: access: none of the allowed groups exists: no AD user can log in to this node until one does (local accounts still can)"
    fi
    return 0
}

# An IPv4 CIDR block as sshd's from="..." takes it (addrmatch.c): a.b.c.d/n, parts 0-255 without leading zeros
# (getaddrinfo would read 010 as octal), n 0-32, no host bits set (sshd refuses 10.0.0.1/16).
valid_ipv4_cidr() {
    local part='(0|[1-9][0-9]?|1[0-9][0-9]|2[0-4][0-9]|25[0-5])' a b c d n
    [[ $1 =~ ^$part\.$part\.$part\.$part/(0|[1-9]|[12][0-9]|3[0-2])$ ]] || return 1
    a=${BASH_REMATCH[1]} b=${BASH_REMATCH[2]} c=${BASH_REMATCH[3]} d=${BASH_REMATCH[4]} n=${BASH_REMATCH[5]}
    ((((a << 24 | b << 16 | c << 8 | d) & ((1 << (32 - n)) - 1)) == 0))
}

# The per-user key script. sshd runs /etc/ssh/sshrc, which calls it, AS THE USER (ParallelCluster's
# GenerateSshKeysForUsers, but never as root: issue 16). @VPC_CIDR@ becomes the quoted CIDR when installed.
read -r -d '' SSH_KEY_HOOK_TEXT <<'SH' || true
#!/bin/sh
# pcluster-ad-user-ssh-key (installed by join-domain.sh): ssh between cluster nodes (MPI) for AD users.
# /etc/ssh/sshrc runs it at every ssh session, and sshd runs that file AS THE USER: after dropping
# privileges, before the user's shell or command (sshd(8), SSHRC). It makes ~/.ssh/id_ed25519 (no
# passphrase) if there is none and adds its public key to the user's OWN ~/.ssh/authorized_keys, usable
# only from the cluster's VPC (from="CIDR"); the home is shared by all nodes. A key the user already has
# stays as it is. Nothing for root, system accounts or users that sssd does not know; nothing on stdout
# (scp and sftp sessions run it too); a failure never blocks a login. The user's own environment (PATH...)
# is used as it is: it runs with the user's rights only, like anything else in the session.
vpc_cidr=@VPC_CIDR@
[ -n "$HOME" ] && [ -e "$HOME/.ssh/id_ed25519" ] && exit 0
uid=$(id -u) || exit 0
[ "$uid" -ge 1000 ] 2>/dev/null || exit 0
entry=$(getent -s sss passwd "$uid") || exit 0
user=$(printf '%s\n' "$entry" | cut -d: -f1)
home=$(printf '%s\n' "$entry" | cut -d: -f6)
[ -n "$home" ] && cd "$home" 2>/dev/null || exit 0
[ -e .ssh/id_ed25519 ] && exit 0
umask 077
mkdir -p .ssh 2>/dev/null && chmod 700 .ssh 2>/dev/null || exit 0
tmp=$(mktemp -d .ssh/.pcluster-ad-key.XXXXXX 2>/dev/null) || exit 0
# ln refuses when a parallel session (this node or another) made the key first: that key is kept.
if ssh-keygen -q -t ed25519 -N "" -C "$user@pcluster-ad cluster-internal" -f "$tmp/key" </dev/null >/dev/null 2>&1 \
    && ln "$tmp/key" .ssh/id_ed25519 2>/dev/null; then
    mv -f "$tmp/key.pub" .ssh/id_ed25519.pub
    line=$(cat .ssh/id_ed25519.pub)
    [ -n "$vpc_cidr" ] && line="from=\"$vpc_cidr\" $line"
    if [ -s .ssh/authorized_keys ] && [ -n "$(tail -c 1 .ssh/authorized_keys)" ]; then
        printf '\n' >>.ssh/authorized_keys
    fi
    printf '%s\n' "$line" >>.ssh/authorized_keys && chmod 600 .ssh/authorized_keys
fi
rm -rf "$tmp"
exit 0
SH
readonly SSH_KEY_HOOK_TEXT

# /etc/ssh/sshrc when the node has none: sshd then skips its own xauth call, so X11 cookies are added here,
# as the example in sshd(8) does. The marked line that calls the key script follows it.
readonly SSHRC_HEADER="# pcluster-ad: /etc/ssh/sshrc, installed by join-domain.sh (a re-run rewrites it)."
read -r -d '' SSHRC_TEXT <<'SH' || true
# sshd runs this file with /bin/sh AS THE USER, after dropping privileges and before the user's shell or
# command, at every session, unless the user has an own ~/.ssh/rc (sshd(8), SSHRC). As it exists, sshd
# does not run xauth itself: X11 forwarding cookies are added here (the example in sshd(8)).
if read -r proto cookie && [ -n "$DISPLAY" ]; then
	if [ "$(echo "$DISPLAY" | cut -c1-10)" = 'localhost:' ]; then
		# X11UseLocalhost=yes
		echo add "unix:$(echo "$DISPLAY" | cut -c11-)" "$proto" "$cookie"
	else
		# X11UseLocalhost=no
		echo add "$DISPLAY" "$proto" "$cookie"
	fi | xauth -q -
fi
SH
readonly SSHRC_TEXT
readonly SSHRC_MARK="# pcluster-ad-user-ssh-key"
readonly SSHRC_LINE="$SSH_KEY_HOOK </dev/null >/dev/null 2>&1 || true $SSHRC_MARK (ssh key for MPI, join-domain.sh)"

# $2 into file $1 (mode $3) through a temporary file in the same directory: sessions may read it meanwhile.
ssh_key_write_file() {
    local tmp
    tmp=$(mktemp "$(dirname -- "$1")/.pcluster-ad.XXXXXX") || return 1
    if ! printf '%s\n' "$2" >"$tmp" || ! chmod "$3" -- "$tmp" || ! mv -f -- "$tmp" "$1"; then
        rm -f -- "$tmp"
        return 1
    fi
}

# Nodes set up before issue 16 ran the key hook as root from sshd's PAM session stack (pam_exec, after
# Debian's `pam_env user_readenv=1`: the user's ~/.pam_environment reached a root process). Both go.
remove_old_ssh_key_hook() {
    local pam="$ROOT/etc/pam.d/sshd" old="$ROOT$OLD_SSH_KEY_HOOK" text mode
    if [[ -f $pam ]] && grep -F -- "$OLD_SSH_KEY_HOOK" "$pam" | grep -q 'pam_exec'; then
        text=$(awk -v hook="$OLD_SSH_KEY_HOOK" \
            '!(index($0, "pam_exec") && index($0, hook)) && $0 != "# pcluster-ad: ssh key between cluster nodes for AD users (first login)"' \
            "$pam") || die 11 "access: cannot read $pam"
        mode=$(stat -c %a -- "$pam") || die 11 "access: cannot read $pam"
        ssh_key_write_file "$pam" "$text" "$mode" || die 11 "access: cannot edit $pam"
        log "access: removed the old root ssh key hook (pam_exec) from $OLD_SSH_KEY_HOOK in $pam"
    fi
    if [[ -e $old || -L $old ]]; then
        rm -f -- "$old" || die 11 "access: cannot remove $old"
        log "access: removed the old root ssh key hook $OLD_SSH_KEY_HOOK"
    fi
    return 0
}

install_ssh_key_hook() {
    local hook="$ROOT$SSH_KEY_HOOK" sshrc="$ROOT$SSHRC" body first rest mode cidr="''"
    remove_old_ssh_key_hook
    [[ -n $VPC_CIDR ]] && cidr="'$VPC_CIDR'" # valid_ipv4_cidr checked it: digits, dots and a slash
    { mkdir -p -- "$(dirname -- "$hook")" && ssh_key_write_file "$hook" "${SSH_KEY_HOOK_TEXT/@VPC_CIDR@/$cidr}" 0755; } \
        || die 11 "access: cannot write $hook"
    if [[ ! -d $ROOT/etc/ssh ]]; then
        log "access: no /etc/ssh (sshd is not installed): no ssh key between nodes"
        return 0
    fi
    if [[ ! -e $sshrc ]] || [[ $(head -n 1 -- "$sshrc") == "$SSHRC_HEADER" ]]; then
        ssh_key_write_file "$sshrc" "$SSHRC_HEADER"$'\n'"$SSHRC_TEXT"$'\n'"$SSHRC_LINE" 0644 \
            || die 11 "access: cannot write $sshrc"
    else
        # The node's own sshrc stays: our one marked line goes first (after a #! line), where no exit can skip it.
        body=$(grep -vF -- "$SSHRC_MARK" "$sshrc") || [[ $? == 1 ]] || die 11 "access: cannot read $sshrc"
        first=${body%%$'\n'*} rest=""
        [[ $body == *$'\n'* ]] && rest=${body#*$'\n'}
        if [[ $first == '#!'* ]]; then
            body="$first"$'\n'"$SSHRC_LINE"${rest:+$'\n'}$rest
        else
            body="$SSHRC_LINE"${body:+$'\n'}$body
        fi
        mode=$(stat -c %a -- "$sshrc") || die 11 "access: cannot read $sshrc"
        ssh_key_write_file "$sshrc" "$body" "$mode" || die 11 "access: cannot edit $sshrc"
        log "access: $SSHRC was there already: kept, with one added line that runs $SSH_KEY_HOOK"
    fi
    log "access: AD users get an ssh key between nodes at their first ssh login ($SSH_KEY_HOOK, run as the user by $SSHRC)"
    if [[ -n $VPC_CIDR ]]; then
        log "access: that key opens the account only from the VPC: from=\"$VPC_CIDR\""
    else
        log "access: no VPC CIDR (none baked into this copy, no --vpc-cidr): that key is not limited to the VPC (no from= restriction)"
    fi
}

configure_access() {
    configure_login_access
    configure_admin_access
    sudo_group_source_dynamic
    install_ssh_key_hook
}

# ---------------------------------------------------------------------------------------------------
# Fast logins in big directories (measured in bench/RESULTS.md; trade-offs in the README).

readonly SSSD_DB=/var/lib/sss/db
readonly SSSD_DB_UNIT=var-lib-sss-db.mount

# sssd's cache in memory: a cold `id` of a user in 200 groups writes ~400 cache entries, each synced to
# disk. Trade-off: the cache (and cached logins while the directory is unreachable) does not survive a
# reboot. A mount unit mounts it again at every boot, before sssd (RequiresMountsFor in a drop-in).
sssd_cache_in_memory() {
    local db="$ROOT$SSSD_DB" unit="$ROOT/etc/systemd/system/$SSSD_DB_UNIT" dropin owner opts
    dropin="$ROOT/etc/systemd/system/sssd.service.d/50-pcluster-ad-cache-in-memory.conf"
    mkdir -p -- "$db" || die 9 "cannot create $db"
    # The directory's owner and mode as the package made them (sssd runs as root or as user sssd).
    owner=$(stat -c 'uid=%u,gid=%g,mode=%a' -- "$db") || die 9 "cannot read $db"
    opts="$owner,size=512m,noexec,nosuid,nodev"
    if command -v selinuxenabled >/dev/null && selinuxenabled; then
        opts+=",context=system_u:object_r:sssd_var_lib_t:s0"
    fi
    mkdir -p -- "$(dirname -- "$unit")" "$(dirname -- "$dropin")" || die 9 "cannot create systemd unit directories"
    printf '[Unit]\nDescription=pcluster-ad: sssd cache in memory (fast lookups in big directories)\nBefore=sssd.service\n\n[Mount]\nWhat=tmpfs\nWhere=%s\nType=tmpfs\nOptions=%s\n' \
        "$SSSD_DB" "$opts" >"$unit" || die 9 "cannot write $unit"
    printf '[Unit]\nRequiresMountsFor=%s\n' "$SSSD_DB" >"$dropin" || die 9 "cannot write $dropin"
    timeout -k 10 60 systemctl daemon-reload || log "WARNING: systemctl daemon-reload failed"
    if [[ -n $ROOT ]]; then
        log "sssd: test root $ROOT: the unit is written, nothing is mounted"
        return 0
    fi
    if [[ $(stat -f -c %T -- "$db") == tmpfs ]]; then
        log "sssd: cache already in memory ($SSSD_DB)"
        return 0
    fi
    if sssd_running; then
        timeout -k 10 60 systemctl stop sssd || log "WARNING: systemctl stop sssd failed"
    fi
    mount -t tmpfs -o "$opts" tmpfs "$db" || die 9 "cannot mount a tmpfs on $db"
    log "sssd: cache in memory ($SSSD_DB on tmpfs; $SSSD_DB_UNIT mounts it at every boot)"
}

# Debian and Ubuntu's common-auth runs pam_cap, which resolves every group of the user again at each
# login (1.7 s of a 5 s cold login for a user in 200 groups). It grants nothing unless
# /etc/security/capability.conf says so: dropped only then. 0 when it can go.
pam_cap_unused() {
    local conf="$ROOT/etc/security/capability.conf"
    [[ $OS_FAMILY == debian ]] || return 1
    grep -qs 'pam_cap\.so' "$ROOT/etc/pam.d/common-auth" || return 1
    if [[ -e $conf ]] && grep -Ev '^[[:space:]]*(#|$)' "$conf" | grep -Evq '^[[:space:]]*none[[:space:]]+\*[[:space:]]*$'; then
        log "pam: keeping pam_cap ($conf grants capabilities)"
        return 1
    fi
    log "pam: dropping pam_cap from common-auth ($conf grants nothing)"
    return 0
}

# Debian family: both PAM changes in ONE pam-auth-update (each run rewrites every common-* file).
debian_pam_update() {
    local -a args=()
    pam_cap_unused && args+=(--disable capability)
    args+=(--enable mkhomedir)
    log "pam: enabling mkhomedir (pam-auth-update ${args[*]})"
    DEBIAN_FRONTEND=noninteractive pam-auth-update "${args[@]}" </dev/null && return 0
    ((${#args[@]} > 2)) || return 1
    log "WARNING: pam-auth-update ${args[*]} failed; enabling mkhomedir alone (pam_cap stays: logins stay slower)"
    DEBIAN_FRONTEND=noninteractive pam-auth-update --enable mkhomedir </dev/null
}

# While realm join runs (mostly adcli waiting on the DC, ~0.8 s of fixed waits): the Debian family's PAM update
# (~0.1 s), in the background. Safe to overlap there: realmd leaves PAM alone on that family
# (realmd-distro.conf: sssd-enable-logins is empty). Everything else that must be in place when realm join
# restarts sssd at its end (access files, ssh key hook, the cache on tmpfs) is done before the join, in the
# foreground. On the RHEL family realm runs authselect itself, so enable_mkhomedir waits until after the join.
PAM_PID=""
PAM_UPDATED=""
start_pam_update() {
    [[ $OS_FAMILY == debian ]] || return 0
    (
        ONE_TIME_PASSWORD="" # the job never needs it
        unset -v ONE_TIME_PASSWORD
        debian_pam_update || die 9 "pam-auth-update --enable mkhomedir failed"
    ) &
    PAM_PID=$!
}

finish_pam_update() {
    local pid=$PAM_PID rc=0
    [[ -n $pid ]] || return 0
    PAM_PID=""
    wait "$pid" || rc=$?
    ((rc == 0)) || exit "$rc" # the job logged its ERROR already
    PAM_UPDATED=1
    return 0
}

# Close the join window: from now on the function refuses every request for this instance. The agent's close-window
# runs in the background from the moment the join succeeded (the script waits for it at the end): a second signed
# POST, up to 3 failed attempts (busy answers waited out) within min(remaining, 60 s); it always exits 0 and logs a
# WARNING when the window stays open (it closes by itself after the function's windowMinutes / maxAnswers).
CLOSE_PID=""
start_close_window() {
    pyhelper close-window "$FUNCTION_URL" "$REGION" "$IMDS_ENDPOINT" "$TIMEOUT" "$(remaining)" "$COMPUTER_NAME" &
    CLOSE_PID=$!
}

finish_close_window() {
    local pid=$CLOSE_PID
    [[ -n $pid ]] || return 0
    CLOSE_PID=""
    wait "$pid" || true # close_window never fails the boot
}


main() {
    parse_args "$@"
    start_logging
    trap on_exit EXIT
    log "starting: function URL $FUNCTION_URL, region $REGION, timeout ${TIMEOUT}s, IMDS $IMDS_ENDPOINT${RESTRICT_IMDS:+, then IMDS for root only}, IDs: $ID_MODE"
    detect_os
    install_packages
    start_node_agent
    # Before any domain user can log in (sssd learns the domain below): from then on a user's process
    # could take the instance role's credentials. This script runs as root and still reaches IMDS.
    if [[ -n $RESTRICT_IMDS ]]; then
        restrict_imds
    fi
    # Only a DAEMON_OPTS line with -f needs the edit (Python starts only then).
    if [[ $OS_FAMILY == debian ]] && grep -Es '^[[:space:]]*DAEMON_OPTS=' "$ROOT/etc/default/sssd" | grep -q -- '-f'; then
        pyhelper daemon-opts "$ROOT/etc/default/sssd" || die 9 "could not edit $ROOT/etc/default/sssd"
    fi
    if existing_join; then
        log "already joined to $AD_DOMAIN (realm $AD_REALM): no request to the join function"
        configure_access
        sssd_cache_in_memory
        configure_sssd
        verify_sssd
        check_access_groups
    else
        fetch_join_secret
        configure_access # before realm join, which restarts sssd with the domain at its end
        sssd_cache_in_memory
        start_pam_update
        do_join
        ONE_TIME_PASSWORD=""
        unset -v ONE_TIME_PASSWORD
        start_close_window
        configure_login_access # again, in the domain section realm wrote, before sssd restarts
        finish_pam_update
        configure_sssd
        verify_sssd
        write_state
        check_access_groups
        finish_close_window
    fi
}

main "$@"
