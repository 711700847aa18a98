#!/usr/bin/env bash
# System packages for the headless-browser workflow test: Debian's chromium + fonts-liberation.
#
# Does nothing when they are present. When they are missing and cannot be installed, it STOPS with what
# failed and what to do: retry (e.g. once another apt/dpkg run has released its lock), install them
# yourself, or skip the browser test explicitly with LGM_SKIP_BROWSER_TESTS=1 (scripts/test.sh then
# runs everything else; the test summary lists the browser test as skipped with that reason).
#
# Usage: bash scripts/setup_system_deps.sh          env: LGM_SKIP_BROWSER_TESTS=1 (skip), APT_LOCK_WAIT (s, 120)
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LGM_SCRIPT=setup_system_deps
# shellcheck source=scripts/_lib.sh
source "$REPO/scripts/_lib.sh"

SKIP_HINT="or skip the browser test explicitly: LGM_SKIP_BROWSER_TESTS=1 bash scripts/test.sh"
if [[ "${LGM_SKIP_BROWSER_TESTS:-0}" == "1" ]]; then
    log "LGM_SKIP_BROWSER_TESTS=1: not installing chromium; the browser test will be reported as skipped"
    exit 0
fi
have_chromium() { command -v chromium > /dev/null || command -v chromium-browser > /dev/null; }
have_fonts() { fc-list 2>/dev/null | grep -qi liberation; }
if have_chromium && have_fonts; then
    exit 0
fi
if [[ "$(id -u)" != "0" ]] || ! command -v apt-get > /dev/null; then
    die "chromium and fonts-liberation are needed for the browser test and cannot be installed here (needs root \
and apt-get). Install them (Debian/Ubuntu: sudo apt-get install chromium fonts-liberation), $SKIP_HINT"
fi

LOGS="$REPO/.logs"
WAIT="${APT_LOCK_WAIT:-120}"
log "installing chromium fonts-liberation with apt-get (log: $LOGS/apt.log)"
# apt waits up to $WAIT s for a lock held by another apt/dpkg run instead of failing at once
APT=(apt-get -o "DPkg::Lock::Timeout=$WAIT" -y -q)
if ! run_quiet "$LOGS/apt.log" "${APT[@]}" update; then
    die "apt-get update failed (above). If another apt/dpkg run holds the lock, retry when it has finished; \
otherwise fix the package sources, $SKIP_HINT"
fi
if ! DEBIAN_FRONTEND=noninteractive run_quiet "$LOGS/apt.log" "${APT[@]}" install --no-install-recommends \
        chromium fonts-liberation; then
    if grep -qiE "could not get lock|unable to acquire|lock-frontend" "$LOGS/apt.log"; then
        die "apt's lock is held by another apt/dpkg run (waited $WAIT s): retry when it has finished \
(APT_LOCK_WAIT=600 waits longer), $SKIP_HINT"
    fi
    die "apt-get install chromium fonts-liberation failed (above): fix it and retry, $SKIP_HINT"
fi
have_chromium || die "apt-get succeeded but no chromium binary is on PATH; $SKIP_HINT"
log "chromium and fonts-liberation installed"
