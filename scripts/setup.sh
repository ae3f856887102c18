#!/usr/bin/env bash
# Installs what building fabric needs beyond a Rust toolchain: the
# wasm32-wasip2 target for guests. Safe to run again.
set -euo pipefail
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
  echo "setup: adding the wasm32-wasip2 target" >&2
  rustup target add wasm32-wasip2
fi
