#!/usr/bin/env bash
# Installs what the `http` suite compares fabric with, once:
# - wrk (Debian package), the load generator, when it is missing;
# - `wasmtime serve` from the wasmtime-cli crate at fabric's wasmtime
#   version, with only the features `serve` needs (a full build takes far
#   longer on two cores), into ~/.cargo/bin.
# Without them the suite still runs: its own load generator, no peer.
set -euo pipefail
if ! command -v wrk > /dev/null; then
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq wrk > /dev/null
  else sudo apt-get update -qq && sudo apt-get install -y -qq wrk > /dev/null; fi
fi
version=48.0.8
if ! wasmtime --version 2> /dev/null | grep -q "^wasmtime $version"; then
  cargo install --quiet --locked wasmtime-cli@"$version" --no-default-features \
    --features serve,run,component-model-async,cranelift,pooling-allocator,parallel-compilation
fi
