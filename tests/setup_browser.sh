#!/bin/sh
# Install Debian's headless Chromium for the registry browser test (tests/server/test_registry_browser.py).
# Idempotent; `make test` calls it before pytest. Needs root (or sudo) and apt.
set -eu
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-dejavu-core >/dev/null
/usr/bin/chromium --version
