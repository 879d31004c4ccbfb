#!/usr/bin/env bash
# The test suite runs the store against a real PostgreSQL server, the web app's tests
# drive a real headless Chromium, the replica test puts HAProxy in front of several
# servers and the PACS tests talk to a real Orthanc: install Debian's packages for
# whichever is missing (needs root and apt; otherwise those tests are skipped).
set -euo pipefail
missing=()
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  missing+=(postgresql)
fi
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
# The PACS tests: a real Orthanc with its DICOMweb plugin, and dciodvfy (dicom3tools)
# to validate every DICOM object CheXray writes.
command -v Orthanc >/dev/null 2>&1 || [ -x /usr/sbin/Orthanc ] || missing+=(orthanc)
ls /usr/share/orthanc/plugins/libOrthancDicomWeb.so >/dev/null 2>&1 || missing+=(orthanc-dicomweb)
command -v dciodvfy >/dev/null 2>&1 || missing+=(dicom3tools)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "${missing[*]} not installed and cannot be installed here: their tests will be skipped" >&2
  exit 0
fi
echo "Installing Debian's ${missing[*]} for the test suite..."
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
