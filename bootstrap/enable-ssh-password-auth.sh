#!/bin/bash
# enable-ssh-password-auth.sh: ParallelCluster 3 OnNodeConfigured custom action. Lets AD users log in
# over ssh with their domain password.
#
#   enable-ssh-password-auth.sh [--sshd-config PATH] [--sshd-config-dir DIR] [--service NAME]
#
# sshd keeps the FIRST value it reads for an option, and cloud images ship
# sshd_config.d/50-cloud-init.conf with "PasswordAuthentication no". So this script:
#   1. writes DIR/00-pcluster-ad-password-auth.conf (sorts before 50-cloud-init.conf) with
#      PasswordAuthentication yes and KbdInteractiveAuthentication yes (PAM prompts, e.g. an expired
#      domain password);
#   2. makes sure the main sshd_config includes that file BEFORE any other authentication setting or
#      Match block: if not, it adds "Include <drop-in>" at the top of sshd_config;
#   3. validates with `sshd -t` and checks that `sshd -T` reports passwordauthentication yes; on any
#      failure it restores both files exactly as they were and exits non-zero;
#   4. reloads sshd (service "ssh" on Debian/Ubuntu, "sshd" elsewhere; restart if reload fails; a
#      stopped sshd is left stopped: it reads the new configuration when it starts).
# Idempotent: a second run changes no file.
#
# Defaults: --sshd-config /etc/ssh/sshd_config, --sshd-config-dir /etc/ssh/sshd_config.d, --service by OS.
# Exit codes: 0 done; 2 usage; 3 sshd missing; 4 sshd rejected the configuration (restored);
#   5 password authentication still not effective (restored); 6 reloading sshd failed; 1 unexpected.
# Environment: PCLUSTER_AD_LOG (default /var/log/pcluster-ad/enable-ssh-password-auth.log; dir 0700,
#   file 0600; also stdout); PCLUSTER_AD_ROOT (test hook: prefix for /etc/os-release; default empty).

set +o xtrace +o verbose
set -euo pipefail
umask 022
export LC_ALL=C

readonly PROG=enable-ssh-password-auth
PATH="${PATH:-/usr/bin:/bin}:/usr/local/sbin:/usr/sbin:/sbin"
export PATH

readonly ROOT="${PCLUSTER_AD_ROOT:-}"
readonly DEFAULT_LOG=/var/log/pcluster-ad/enable-ssh-password-auth.log
LOG_FILE="${PCLUSTER_AD_LOG:-$DEFAULT_LOG}"
readonly DROPIN_NAME=00-pcluster-ad-password-auth.conf

SSHD_CONFIG=/etc/ssh/sshd_config
SSHD_CONFIG_DIR=""
SERVICE=""
LOGGER_PID=""
BACKUP_DIR=""
DROPIN=""

usage() {
    cat <<'EOF'
usage: enable-ssh-password-auth.sh [--sshd-config PATH] [--sshd-config-dir DIR] [--service NAME]

  --sshd-config PATH      main sshd configuration (default /etc/ssh/sshd_config)
  --sshd-config-dir DIR   drop-in directory (default: sshd_config.d beside the main configuration)
  --service NAME          sshd's service name (default: ssh on Debian/Ubuntu, sshd elsewhere)
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
            --sshd-config=* | --sshd-config-dir=* | --service=*)
                value=${opt#*=}
                opt=${opt%%=*}
                shift
                ;;
            --sshd-config | --sshd-config-dir | --service)
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
        [[ -n $value ]] || usage_error "argument $opt requires a value"
        case $opt in
            --sshd-config) SSHD_CONFIG=$value ;;
            --sshd-config-dir) SSHD_CONFIG_DIR=$value ;;
            --service) SERVICE=$value ;;
        esac
    done
    [[ $SSHD_CONFIG == /* ]] || usage_error "argument --sshd-config must be an absolute path: '$SSHD_CONFIG'"
    [[ -n $SSHD_CONFIG_DIR ]] || SSHD_CONFIG_DIR="$(dirname -- "$SSHD_CONFIG")/sshd_config.d"
    [[ $SSHD_CONFIG_DIR == /* ]] || usage_error "argument --sshd-config-dir must be an absolute path: '$SSHD_CONFIG_DIR'"
    SSHD_CONFIG_DIR=${SSHD_CONFIG_DIR%/}
    if [[ -n $SERVICE && ! $SERVICE =~ ^[A-Za-z0-9@._-]+$ ]]; then
        usage_error "argument --service is not a service name: '$SERVICE'"
    fi
}

# The logging block below is the same in join-domain.sh: ParallelCluster downloads each custom-action
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
    [[ -n $BACKUP_DIR ]] && rm -rf -- "$BACKUP_DIR"
    if [[ -n $LOGGER_PID ]]; then
        if ((rc == 0)); then
            log "finished: sshd accepts password authentication"
        else
            log "FAILED with exit code $rc (log: $LOG_FILE)"
        fi
        exec >&- 2>&-
        for ((i = 0; i < 50; i++)); do
            kill -0 "$LOGGER_PID" 2>/dev/null || break
            sleep 0.1
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

read -r -d '' PYHELPER <<'PY' || true
import fnmatch, os, re, sys, tempfile

MANAGED = "# Managed by pcluster-ad (enable-ssh-password-auth.sh): AD users log in with their domain password.\n"
DROPIN = MANAGED + "PasswordAuthentication yes\nKbdInteractiveAuthentication yes\n"
AUTH_KEYS = {"passwordauthentication", "kbdinteractiveauthentication", "challengeresponseauthentication"}

def write_atomic(path, text, mode):
    st = os.stat(path) if os.path.exists(path) else None
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".pcluster-ad.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, mode if st is None else st.st_mode & 0o7777)
        if st is not None:
            os.chown(tmp, st.st_uid, st.st_gid)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise

def words(line):
    # sshd_config syntax: "Keyword arguments" or "Keyword=arguments"; "#" starts a comment line.
    line = line.strip()
    if not line or line.startswith("#"):
        return []
    m = re.match(r"^([^\s=]+)(?:\s*=\s*|\s+)(.*)$", line)
    return [m.group(1)] + m.group(2).split() if m else [line]

def includes_dropin(args, dropin):
    for pattern in args:
        pattern = pattern.strip('"')
        if not pattern.startswith("/"):
            pattern = os.path.join("/etc/ssh", pattern)
        if fnmatch.fnmatchcase(dropin, pattern) or os.path.realpath(pattern) == os.path.realpath(dropin):
            return True
    return False

def apply(main, dropin):
    changed = []
    try:
        current = open(dropin).read()
    except FileNotFoundError:
        current = None
    if current != DROPIN:
        write_atomic(dropin, DROPIN, 0o644)
        changed.append(dropin)
    text = open(main).read()
    lines = text.splitlines(keepends=True)
    covered = False
    for line in lines:
        w = words(line)
        if not w:
            continue
        key = w[0].lower()
        if key == "include" and includes_dropin(w[1:], dropin):
            covered = True
            break
        if key in AUTH_KEYS or key == "match":
            break
    if not covered:
        head = ("# Added by pcluster-ad: read the password-authentication drop-in first (sshd keeps the first value).\n"
                f"Include {dropin}\n")
        write_atomic(main, head + text, 0o644)
        changed.append(main)
    print(" ".join(changed))

def effective(key):
    # stdin: `sshd -T` output. exit 0 when KEY is yes.
    for line in sys.stdin.read().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].lower() == key:
            sys.exit(0 if parts[1].lower() == "yes" else 1)
    sys.exit(1)

cmd, args = sys.argv[1], sys.argv[2:]
{"apply": apply, "effective": effective}[cmd](*args)
PY
readonly PYHELPER

# The code comes in on fd 3 (argv stays short and readable); data, secrets included, on stdin.
pyhelper() { python3 -I /dev/fd/3 "$@" 3<<<"$PYHELPER"; }

os_service_name() {
    local file="$ROOT/etc/os-release" key value words=""
    if [[ -r $file ]]; then
        while IFS='=' read -r key value; do
            value=${value//\"/}
            case $key in ID | ID_LIKE) words+=" $value" ;; esac
        done <"$file"
    fi
    case " $words " in
        *" debian "* | *" ubuntu "*) printf 'ssh' ;;
        *) printf 'sshd' ;;
    esac
}

# Keep copies of both files so that any failure restores them exactly.
backup() {
    BACKUP_DIR=$(mktemp -d)
    cp -p -- "$SSHD_CONFIG" "$BACKUP_DIR/main"
    if [[ -e $DROPIN ]]; then
        cp -p -- "$DROPIN" "$BACKUP_DIR/dropin"
    fi
}

restore() {
    cp -p -- "$BACKUP_DIR/main" "$SSHD_CONFIG"
    if [[ -e $BACKUP_DIR/dropin ]]; then
        cp -p -- "$BACKUP_DIR/dropin" "$DROPIN"
    else
        rm -f -- "$DROPIN"
    fi
    log "restored the previous $SSHD_CONFIG and $DROPIN"
}

# sshd -t also fails when its privilege separation directory is missing (sshd not started yet, e.g.
# socket activation on Ubuntu 24.04): create it the way the ssh unit would, and validate again.
validate() {
    local out dir
    if out=$(sshd -t -f "$SSHD_CONFIG" 2>&1); then
        return 0
    fi
    if [[ $out =~ Missing\ privilege\ separation\ directory:\ (/[^[:space:]]+) ]]; then
        dir=${BASH_REMATCH[1]}
        log "creating sshd's privilege separation directory $dir"
        mkdir -p -- "$dir"
        out=$(sshd -t -f "$SSHD_CONFIG" 2>&1) && return 0
    fi
    log "sshd -t: $out"
    return 1
}

reload_sshd() {
    if systemctl reload "$SERVICE"; then
        log "reloaded $SERVICE"
        return 0
    fi
    if ! systemctl is-active --quiet "$SERVICE"; then
        log "$SERVICE is not running: it reads the new configuration when it starts"
        return 0
    fi
    log "reload of $SERVICE failed; restarting it"
    systemctl restart "$SERVICE" || die 6 "could not reload or restart $SERVICE"
    log "restarted $SERVICE"
}

main() {
    local changed effective_out
    parse_args "$@"
    start_logging
    trap on_exit EXIT
    DROPIN="$SSHD_CONFIG_DIR/$DROPIN_NAME"
    [[ -n $SERVICE ]] || SERVICE=$(os_service_name)
    log "starting: $SSHD_CONFIG, drop-in $DROPIN, service $SERVICE"
    command -v sshd >/dev/null || die 3 "sshd not found (is openssh-server installed?)"
    [[ -f $SSHD_CONFIG ]] || die 3 "$SSHD_CONFIG does not exist"
    [[ -d $SSHD_CONFIG_DIR ]] || mkdir -p -- "$SSHD_CONFIG_DIR"

    backup
    if ! changed=$(pyhelper apply "$SSHD_CONFIG" "$DROPIN"); then
        restore
        die 4 "could not write the sshd configuration"
    fi
    if [[ -n $changed ]]; then
        log "changed: $changed"
    else
        log "already configured: no file changed"
    fi
    if ! validate; then
        restore
        die 4 "sshd -t rejected the new configuration; the previous configuration is restored"
    fi
    if ! effective_out=$(sshd -T -f "$SSHD_CONFIG" 2>&1) \
        || ! printf '%s\n' "$effective_out" | pyhelper effective passwordauthentication; then
        restore
        die 5 "sshd -T does not report 'passwordauthentication yes' (another setting wins?); the previous configuration is restored"
    fi
    log "validated: sshd -t passes and sshd -T reports passwordauthentication yes"
    reload_sshd
}

main "$@"
