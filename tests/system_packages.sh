#!/usr/bin/env bash
# Debian packages the test suite needs beyond the Python venv: headless Chromium for the report
# check. Installs only what is missing (as root, or through sudo); a no-op when all are present.
set -euo pipefail

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi
echo "installing Debian packages for the tests: ${missing[*]}" >&2
if [ "$(id -u)" -eq 0 ]; then
    run=()
elif command -v sudo >/dev/null 2>&1; then
    run=(sudo)
else
    echo "need root or sudo to install ${missing[*]} (apt-get install ${missing[*]})" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
"${run[@]}" apt-get update -q >&2
"${run[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
