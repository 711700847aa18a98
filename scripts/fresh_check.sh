#!/usr/bin/env bash
# What a new user meets: clone HEAD into a temporary folder (with the shared folder beside it, as the
# README assumes), make a fresh venv without torch, and run the README's Quick start commands as written
# (read from README.md, so the check follows the README). Prints each command's wall time and exit code;
# then times the set-up part of a second run (must be quick: nothing is re-downloaded or rebuilt).
#
#   bash scripts/fresh_check.sh [--system] [--keep] [--only N]
#     --system   use the system interpreter (python3) instead of a fresh venv
#     --keep     keep the temporary folder (printed) instead of deleting it
#     --only N   run only the N-th Quick start command (1-based)
# env: LGM_SHARED_DIR (default ../shared beside this checkout), FRESH_DIR (parent of the temporary folder)
# Only committed work is checked (it is a clone of HEAD). Logs: <tmp>/logs/command-N.log
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LGM_SCRIPT=fresh_check
# shellcheck source=scripts/_lib.sh
source "$REPO/scripts/_lib.sh"

SYSTEM=0 KEEP=0 ONLY=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --system) SYSTEM=1 ;;
        --keep) KEEP=1 ;;
        --only) ONLY="$2"; shift ;;
        *) die "unknown argument $1 (usage: fresh_check.sh [--system] [--keep] [--only N])" ;;
    esac
    shift
done
SHARED="$(cd "${LGM_SHARED_DIR:-$REPO/../shared}" 2>/dev/null && pwd)" \
    || die "no shared folder at ${LGM_SHARED_DIR:-$REPO/../shared} (set LGM_SHARED_DIR)"
if [[ -n "$(git -C "$REPO" status --porcelain --untracked-files=no)" ]]; then
    log "note: uncommitted changes are not part of the check (it clones HEAD $(git -C "$REPO" rev-parse --short HEAD))"
fi

TMP="$(mktemp -d "${FRESH_DIR:-${TMPDIR:-/tmp}}/lgm-fresh.XXXXXX")"
cleanup() { if [[ $KEEP -eq 0 ]]; then rm -rf "$TMP"; else log "kept $TMP"; fi; }
trap cleanup EXIT
mkdir -p "$TMP/logs"
git clone -q --no-hardlinks "$REPO" "$TMP/comfyui-lgm"
ln -s "$SHARED" "$TMP/shared"
cd "$TMP/comfyui-lgm"

# The Quick start commands: the lines of the first ```bash block after "## Quick start" (comments dropped)
mapfile -t COMMANDS < <(awk '/^## Quick start/{q=1} q&&/^```bash/{b=1; next} b&&/^```/{exit} b&&!/^[[:space:]]*#/&&NF' README.md)
[[ ${#COMMANDS[@]} -gt 0 ]] || die "no Quick start commands found in README.md"

if [[ $SYSTEM -eq 1 ]]; then
    ENV_DESC="system interpreter $(command -v python3) ($(python3 --version 2>&1))"
else
    python3 -m venv "$TMP/venv"
    # shellcheck disable=SC1091
    source "$TMP/venv/bin/activate"
    ENV_DESC="fresh venv $TMP/venv ($(python --version 2>&1), no torch)"
fi
log "clone of $(git rev-parse --short HEAD) in $TMP/comfyui-lgm; $ENV_DESC; $(nproc) CPU cores"

declare -a RESULTS=()
for i in "${!COMMANDS[@]}"; do
    n=$((i + 1))
    [[ -z "$ONLY" || "$ONLY" == "$n" ]] || continue
    cmd="${COMMANDS[$i]}"
    log "[$n] $cmd   (log: $TMP/logs/command-$n.log)"
    start=$EPOCHREALTIME
    rc=0
    bash -c "$cmd" > "$TMP/logs/command-$n.log" 2>&1 || rc=$?
    wall=$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b - a}')
    RESULTS+=("$(printf '%-60s rc=%-3s wall %7.1f s' "$cmd" "$rc" "$wall")")
    log "[$n] exit $rc after $(printf '%.1f' "$wall") s; last lines:"
    tail -n 6 "$TMP/logs/command-$n.log" | sed 's/^/    /' >&2
done

log "second run of the set-up (must be quick, nothing downloaded)"
start=$EPOCHREALTIME
rc=0
{ bash scripts/setup_dev.sh && bash scripts/setup_system_deps.sh && bash scripts/setup_comfyui.sh; } \
    > "$TMP/logs/second-setup.log" 2>&1 || rc=$?
wall=$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b - a}')
RESULTS+=("$(printf '%-60s rc=%-3s wall %7.1f s' "(second run) set-up of both commands" "$rc" "$wall")")

echo
echo "fresh check of $(git rev-parse --short HEAD): $ENV_DESC"
printf '%s\n' "${RESULTS[@]}"
