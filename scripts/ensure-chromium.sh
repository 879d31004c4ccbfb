#!/usr/bin/env bash
# The web app's tests drive a real headless Chromium: install Debian's package when it is
# missing (needs root and apt; does nothing otherwise).
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "Chromium is not installed and cannot be installed here: browser tests will be skipped" >&2
  exit 0
fi
echo "Installing Debian's chromium for the browser tests..."
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
