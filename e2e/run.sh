#!/usr/bin/env bash
# The browser end-to-end test of the chat page: installs what it needs (npm packages, Debian
# Chromium), builds the release binary, then runs e2e/*.test.mjs with node's test runner.
# Database: CHATTY_TEST_DATABASE_URL, a PostgreSQL server URL without a database name (default
# postgres://postgres@127.0.0.1:5432; a fresh chatty_e2e_* database per run), or `sqlite`.
# Screenshots, console and server logs land in test-output/e2e/.
# Knobs: CHATTY_BIN (use this binary, skip the build), CHATTY_E2E_CHROMIUM (browser path),
# CHATTY_E2E_BURST (messages per user sent while the server drains, default 3) and, for page
# work only, CHATTY_E2E_LIVE_ASSETS=1 (serve web/ from disk instead of the embedded copy).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
# Debian's chromium by default; otherwise the Chrome or Chromium already installed (GitHub's
# Ubuntu runners ship Google Chrome, and Ubuntu's chromium package is only a snap shim).
chromium="${CHATTY_E2E_CHROMIUM:-}"
if [ -z "$chromium" ]; then
  for candidate in /usr/bin/chromium /usr/bin/google-chrome /usr/bin/google-chrome-stable; do
    if [ -x "$candidate" ]; then chromium=$candidate; break; fi
  done
  chromium=${chromium:-/usr/bin/chromium} # none found: the install below provides it
fi
export CHATTY_E2E_CHROMIUM="$chromium"

if [ ! -d "$here/node_modules/playwright-core" ]; then
  echo "e2e: installing npm packages"
  (cd "$here" && npm ci --no-audit --no-fund --loglevel=error)
fi

if [ ! -x "$chromium" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "e2e: installing Debian chromium"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "e2e: $chromium is missing; install Debian's chromium package (or set CHATTY_E2E_CHROMIUM)" >&2
    exit 1
  fi
fi

if [ -z "${CHATTY_BIN:-}" ]; then
  echo "e2e: building the release binary"
  (cd "$root" && cargo build --release -p chatty)
fi

mkdir -p "$root/test-output/e2e"
cd "$root"
# TAP prints the runner's standard summary (# tests / # pass / # fail) whatever stdout is.
exec node --test --test-reporter=tap --test-concurrency=1 e2e/*.test.mjs
