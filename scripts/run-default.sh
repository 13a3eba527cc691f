#!/usr/bin/env bash
# Runs Vestibule on its embedded default configuration (conf/vestibule.toml): builds it, makes a
# development CA and certificate (certs/dev/), starts the demo upstream on 127.0.0.1:3000 and
# serves https on 127.0.0.1:8443, http on :8080 and the admin listener on :9090.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-build-deps.sh
cargo build --release --locked
./target/release/vestibule dev-certs
./target/release/vestibule echo --listen 127.0.0.1:3000 &
echo_pid=$!
trap 'kill $echo_pid 2>/dev/null' EXIT
./target/release/vestibule run
