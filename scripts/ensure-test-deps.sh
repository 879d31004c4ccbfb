#!/usr/bin/env bash
# The test suite runs the store against a real PostgreSQL server, the web app's tests
# drive a real headless Chromium and the replica test puts HAProxy in front of several
# servers: install Debian's packages for whichever is missing (needs root and apt;
# otherwise those tests are skipped).
set -euo pipefail
missing=()
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  missing+=(postgresql)
fi
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "${missing[*]} not installed and cannot be installed here: their tests will be skipped" >&2
  exit 0
fi
echo "Installing Debian's ${missing[*]} for the test suite..."
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
