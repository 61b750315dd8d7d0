#!/usr/bin/env bash
# Make sure headless Chromium and its driver (Debian packages) are installed for the browser
# tests of the admin. Idempotent. On CI a failure to install is an error; on a developer's
# machine it is a warning and the browser tests skip.
set -uo pipefail

if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  exit 0
fi
echo "ensure_browser: installing chromium and chromium-driver (Debian packages)..."
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  if apt-get update -qq >/dev/null && apt-get install -y -qq chromium chromium-driver >/dev/null; then
    echo "ensure_browser: chromium $(chromium --version 2>/dev/null | awk '{print $2}') installed"
    exit 0
  fi
fi
if [ "${CI:-}" = "true" ]; then
  echo "ensure_browser: could not install chromium and chromium-driver" >&2
  exit 1
fi
echo "ensure_browser: could not install chromium; the browser tests will be skipped" >&2
exit 0
