#!/usr/bin/env bash
# Quick start: installs what the build needs, builds Sluice, and runs `sluice dev`
# (proxy on 127.0.0.1:8080, its admin listener on 127.0.0.1:8090, control plane on
# 127.0.0.1:8081, mock providers on a free port).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice/target}"
cargo build --locked --release -p sluice
exec "$CARGO_TARGET_DIR/release/sluice" dev "$@"
