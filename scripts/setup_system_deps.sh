#!/usr/bin/env bash
# System packages for the headless-browser workflow test: Debian's chromium + fonts-liberation.
# Skips quietly when they are already there. Outside CI, a machine without apt/root only loses the
# browser test (it skips with a reason); in CI (CI=true) a failed install fails the run.
set -euo pipefail
log() { echo "[setup_system_deps] $*" >&2; }
if [[ -x /usr/bin/chromium ]] && fc-list 2>/dev/null | grep -qi liberation; then
    log "chromium and fonts-liberation present"
    exit 0
fi
if [[ "$(id -u)" != "0" ]] || ! command -v apt-get >/dev/null; then
    log "cannot install chromium here (needs root + apt-get); the browser test will skip"
    [[ "${CI:-}" == "true" ]] && exit 1
    exit 0
fi
log "installing chromium fonts-liberation"
if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        chromium fonts-liberation >/dev/null; }; then
    log "apt-get failed"
    [[ "${CI:-}" == "true" ]] && exit 1
fi
exit 0
