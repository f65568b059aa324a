#!/usr/bin/env bash
# Installs Debian's headless Chromium (and ChromeDriver) for the browser tests and the
# report screenshots, unless it is already there. Idempotent; prints the browser's path.
# Needs root and apt (the CI machines and the development machines have both).
set -euo pipefail

if ! command -v chromium >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-dejavu-core >&2
fi
command -v chromium
