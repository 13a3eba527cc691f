#!/usr/bin/env bash
# Installs what building Vestibule needs on a fresh Debian machine (pingora needs cmake).
# Idempotent: does nothing when everything is present.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
install_debian_packages cmake pkg-config curl
