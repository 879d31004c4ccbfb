#!/usr/bin/env bash
# The test suite runs the store against a real PostgreSQL server: install Debian's
# package when no initdb is found (needs root and apt; does nothing otherwise).
set -euo pipefail
if command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "PostgreSQL is not installed and cannot be installed here: its tests will be skipped" >&2
  exit 0
fi
echo "Installing Debian's postgresql for the test suite..."
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
