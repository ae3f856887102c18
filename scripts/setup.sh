#!/usr/bin/env bash
# Installs what building fabric needs beyond a Rust toolchain: the
# wasm32-wasip2 target for guests and protoc (etcd-client's build script).
# With --with-etcd also etcd, which the tests run for real. All from rustup
# and Debian's packages; safe to run again.
set -euo pipefail
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
  echo "setup: adding the wasm32-wasip2 target" >&2
  rustup target add wasm32-wasip2
fi
missing=()
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
if [ "${1:-}" = "--with-etcd" ]; then
  command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
fi
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
