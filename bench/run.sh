#!/usr/bin/env bash
# fabric's benchmarks: bench/run.sh [SUITE...] [--json]
# Builds what they need (release), then runs each suite (default: all).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/build-guests.sh >&2
cargo build --quiet --release -p fabric -p fabric-bench >&2
exec "${CARGO_TARGET_DIR:-$root/target}/release/fabric-bench" "$@"
