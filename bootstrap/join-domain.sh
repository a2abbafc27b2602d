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


# ---------------------------------------------------------------------------------------------------
# The node agent (bootstrap/node_agent/: Python, standard library only; secrets only ever come in on stdin).
# The uploaded copy carries it as a base64 zipapp on the marked line below, baked by components/bootstrap_scripts.py
# (bake_node_agent: one upload, one version); a checkout's copy (the line empty) runs the folder beside the script.
NODE_AGENT_ZIP=""
NODE_AGENT=""     # what goes first on python's sys.path: the decoded zip, or the folder that holds node_agent/
NODE_AGENT_TMP="" # the decoded zip's directory (root only, code and no secret): removed by on_exit
# -I: no environment, no user site-packages, no current directory on sys.path. The code is argv (no secret in it).
readonly NODE_AGENT_BOOT='import sys; sys.path.insert(0, sys.argv.pop(1)); from node_agent.__main__ import main; main()'

# untrusted_path PATH...: the first one another user could change (echoed), else none (exit 1). A PATH must belong to
# root and be writable by root only; so must every directory above it, or be sticky (/tmp: nobody renames root's
# entries there). What root runs from a checkout's folder is then nobody else's code.
untrusted_path() {
    local start p uid mode
    for start in "$@"; do
        p=$start
        while :; do
            read -r uid mode < <(stat -c '%u %a' -- "$p" 2>/dev/null) || { printf '%s' "$p"; return 0; }
            if [[ $uid != 0 ]] || { ((8#$mode & 8#022)) && [[ $p == "$start" || ! -k $p ]]; }; then
                printf '%s' "$p"
                return 0
            fi
            [[ $p == / ]] && break
            p=$(dirname -- "$p")
        done
    done
    return 1
}

# start_node_agent: make the agent runnable, once (main, after the EXIT trap that removes it), in a private
# directory of its own. Python imports a zip only from a seekable file: the zip is written once, not piped at every
# call. A checkout's copy (not baked) takes the node_agent/ folder beside it only when no one but root can change it,
# and copies it: nothing else of that directory comes onto root's sys.path.
start_node_agent() {
    local dir bad
    NODE_AGENT_TMP=$(mktemp -d) || die 3 "cannot create a temporary directory for the node agent"
    NODE_AGENT=$NODE_AGENT_TMP
    if [[ -n $NODE_AGENT_ZIP ]]; then
        printf '%s' "$NODE_AGENT_ZIP" | base64 -d >"$NODE_AGENT_TMP/node-agent.pyz" ||
            die 3 "cannot write the node agent to $NODE_AGENT_TMP"
        NODE_AGENT=$NODE_AGENT_TMP/node-agent.pyz
        return 0
    fi
    dir=$(cd -- "$(dirname -- "$0")" && pwd -P)
    [[ -f $dir/node_agent/__main__.py ]] ||
        die 3 "no node agent: NODE_AGENT_ZIP is empty and $dir/node_agent/ is missing (upload the script as the stack bakes it, or keep bootstrap/node_agent/ beside it)"
    if bad=$(untrusted_path "$dir" "$dir/node_agent" "$dir"/node_agent/*.py); then
        die 3 "no node agent: $bad can be changed by a user other than root, so root will not run the node_agent/ folder beside this copy (upload the script as the stack bakes it: the agent is inside it; or keep the checkout in root's own directories)"
    fi
    { mkdir -- "$NODE_AGENT_TMP/node_agent" && cp -- "$dir"/node_agent/*.py "$NODE_AGENT_TMP/node_agent/"; } ||
        die 3 "cannot copy the node agent to $NODE_AGENT_TMP"
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
        # packagekit is not needed: realm join runs with --install=/ (the node agent's join runs adcli itself).
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

# The node's own join (node agent's join), chained after configure_access: adcli as the computer the function
# created, the one-time password on stdin only, capped and retried attempts within the deadline; exit 8 on failure.
join_after_access() {
    printf '%s\n' "$ONE_TIME_PASSWORD" | configure_access --then adcli-join "$AD_DOMAIN" "$AD_REALM" "$COMPUTER_NAME" \
        "$HOST_FQDN" "$ROOT" "$(remaining)" "$TIMEOUT" || exit $?
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

configure_sssd() {
    local conf="$ROOT/etc/sssd/sssd.conf"
    # One Python start: the sssd configuration of the join (what realmd would write: this script runs adcli
    # itself), our settings in it, and krb5.conf's default_realm (also on a node joined by an older version).
    pyhelper node-config "$conf" "$AD_DOMAIN" "$AD_REALM" "$ROOT/etc/krb5.conf" "$ID_MODE" "$ROOT$SSSD_DB" \
        "$ROOT/var/lib/sss/mc" || die 9 "could not write $conf or $ROOT/etc/krb5.conf"
    # mkhomedir (PAM), sssd enabled at boot and restarted, then verified within the deadline (node agent's
    # sssd_service): bounded retries, one more restart if sssd did not come up; it logs and exits 9 on failure.
    # Then, in the same Python start, the lookup of the configured access groups: WARNINGs only (their members cannot
    # log in / get no sudo), never a failure: local accounts never depend on them.
    access_settings
    pyhelper sssd-start "$ROOT" "$OS_FAMILY" "$PAM_UPDATED" "$(verify_group)" "$ID_MODE" "$(remaining)" \
        --then check-access-groups "${ACCESS_SETTINGS[@]}" || exit $?
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

# --restrict-imds: IMDS for root only, now and at every boot (the node agent's imds_lockdown: ParallelCluster's
# head-node rules in a script that a oneshot unit runs again at each boot). It logs and exits 10 on failure.
restrict_imds() {
    pyhelper restrict-imds "$IMDS_ENDPOINT" "$ROOT" "$OS_FAMILY" "$(remaining)" || exit $?
}

# ---------------------------------------------------------------------------------------------------
# Access control (pcluster-ad:access): who may log in and who gets sudo, the same on every node; and
# ssh between nodes without a password for AD users (MPI). Applied BEFORE sssd first runs with the
# domain (realm join restarts it at its end) and again before every sssd restart: there is no moment in
# which every AD user may log in. The node agent writes the files (node_agent/access.py: sssd's access and
# fresh-identity drop-ins, sudoers checked by visudo, sudo.conf's group source; node_agent/ssh_keys.py: the key
# script that sshd runs AS THE USER through /etc/ssh/sshrc, never as root) and exits 11 when it cannot.

# An IPv4 CIDR block as sshd's from="..." takes it (addrmatch.c): a.b.c.d/n, parts 0-255 without leading zeros
# (getaddrinfo would read 010 as octal), n 0-32, no host bits set (sshd refuses 10.0.0.1/16).
valid_ipv4_cidr() {
    local part='(0|[1-9][0-9]?|1[0-9][0-9]|2[0-4][0-9]|25[0-5])' a b c d n
    [[ $1 =~ ^$part\.$part\.$part\.$part/(0|[1-9]|[12][0-9]|3[0-2])$ ]] || return 1
    a=${BASH_REMATCH[1]} b=${BASH_REMATCH[2]} c=${BASH_REMATCH[3]} d=${BASH_REMATCH[4]} n=${BASH_REMATCH[5]}
    ((((a << 24 | b << 16 | c << 8 | d) & ((1 << (32 - n)) - 1)) == 0))
}

# access_agent COMMAND: the node agent's access step with this run's settings (names and lists, no secret).
# The access settings as the agent takes them: NAME=VALUE words (names, no secret).
ACCESS_SETTINGS=()
access_settings() {
    ACCESS_SETTINGS=("root=$ROOT" "domain=$AD_DOMAIN" "allowed=$ALLOWED_GROUPS" "admin=$ADMIN_GROUPS"
        "stack_users=$STACK_USERS_GROUP" "stack_admins=$STACK_ADMINS_GROUP" "service=$SERVICE_ACCOUNTS"
        "vpc_cidr=$VPC_CIDR")
}

# Before the join (and before sssd's restart on a re-run), in one Python start with sssd's cache in memory and
# whatever step "$@" chains after them (the join itself): the access and fresh-identity drop-ins, the sudoers drop-in
# of the admin groups, sudo.conf's group source, the ssh key hook, then the cache on tmpfs. Each step logs its ERROR
# and exit code (11 access, 9 the cache) when it fails.
configure_access() {
    access_settings
    pyhelper access "${ACCESS_SETTINGS[@]}" --then sssd-cache "$ROOT" "$@" || exit $?
}

# After the join: the two drop-ins again, in the domain section realm wrote, before sssd restarts.
configure_login_access() {
    access_settings
    pyhelper login-access "${ACCESS_SETTINGS[@]}" || exit $?
}

# ---------------------------------------------------------------------------------------------------
# Fast logins in big directories (measured in bench/RESULTS.md; trade-offs in the README).

readonly SSSD_DB=/var/lib/sss/db

# While realm join runs (mostly adcli waiting on the DC, ~0.8 s of fixed waits): the Debian family's PAM update
# (~0.1 s), in the background. Safe to overlap there: realmd leaves PAM alone on that family
# (realmd-distro.conf: sssd-enable-logins is empty). Everything else that must be in place when realm join
# restarts sssd at its end (access files, ssh key hook, the cache on tmpfs) is done before the join, in the
# foreground. On the RHEL family realm runs authselect itself, so mkhomedir (sssd-start) waits until after the join.
PAM_PID=""
PAM_UPDATED=""
start_pam_update() {
    [[ $OS_FAMILY == debian ]] || return 0
    (
        ONE_TIME_PASSWORD="" # the job never needs it
        unset -v ONE_TIME_PASSWORD
        pyhelper pam-update "$ROOT" # the node agent's pam: pam_cap dropped if unused, mkhomedir; exits 9 on failure
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
        configure_sssd
    else
        fetch_join_secret
        start_pam_update
        # Access and the cache before the join, which makes sssd start with the domain at its end; one Python start.
        join_after_access
        ONE_TIME_PASSWORD=""
        unset -v ONE_TIME_PASSWORD
        start_close_window
        configure_login_access # again, in the domain section realm wrote, before sssd restarts
        write_state            # the join is done: a re-run finds it on disk and these names here
        finish_pam_update
        configure_sssd
        finish_close_window
    fi
}

main "$@"
