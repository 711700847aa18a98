# Helpers shared by scripts/*.sh (sourced, not run). Set LGM_SCRIPT to the script's short name first.

log() { echo "[${LGM_SCRIPT:-lgm}] $*" >&2; }

die() {
    log "ERROR: $*"
    exit 1
}

# run_quiet LOGFILE CMD...: run CMD with all its output in LOGFILE. Silent on success; on failure
# prints the command, the last 40 lines of its output and the log's path, and returns CMD's status.
run_quiet() {
    local logfile="$1"
    shift
    mkdir -p "$(dirname "$logfile")"
    local rc=0
    "$@" > "$logfile" 2>&1 || rc=$?
    if [[ $rc -ne 0 ]]; then
        log "FAILED (exit $rc): $*"
        tail -n 40 "$logfile" | sed 's/^/    /' >&2
        log "full output: $logfile"
    fi
    return $rc
}

# py_dist_version PYTHON DIST: the installed version of DIST in PYTHON's environment (empty when absent),
# read from the package metadata, so that nothing is imported (importing torch without numpy warns).
py_dist_version() {
    "$1" -I - "$2" <<'PYEOF' 2>/dev/null || true
import importlib.metadata as md, sys
try:
    print(md.version(sys.argv[1]))
except md.PackageNotFoundError:
    pass
PYEOF
}
