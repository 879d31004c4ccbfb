#!/usr/bin/env bash
# pip install with patience: the largest wheels (TensorFlow is over 500 MB) are the ones a
# flaky connection cuts off. pip resumes a cut download itself; when it still gives up,
# the whole install is tried again (wheels already fetched come from pip's cache).
# Usage: scripts/pip-install.sh PYTHON ARGS...   e.g. scripts/pip-install.sh .venv/bin/python -e '.[cpu]'
set -uo pipefail
python=$1
shift
attempts=${CHEXRAY_PIP_ATTEMPTS:-4}
patience=(--retries 10 --timeout 60)
# --resume-retries came with pip 25.1; a fresh venv's own pip may be older.
if "$python" -m pip install --help 2>/dev/null | grep -q -- --resume-retries; then
  patience+=(--resume-retries 20)
fi
for ((attempt = 1; attempt <= attempts; attempt++)); do
  "$python" -m pip install -q "${patience[@]}" "$@" && exit 0
  if ((attempt < attempts)); then
    echo "pip install failed (attempt $attempt of $attempts); trying again in $((attempt * 20)) s" >&2
    sleep $((attempt * 20))
  fi
done
echo "pip install failed $attempts times: check the network or the package index, then run make again" >&2
exit 1
