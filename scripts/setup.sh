#!/usr/bin/env bash
# Installs what building and testing raft-kv needs on a Debian machine, if it is missing:
# libclang (the RocksDB build), redis-tools (redis-cli, redis-benchmark), redis-server (the
# benchmark's reference, and the conformance test's) and prometheus (the metrics test scrapes a
# cluster with a real one; it brings promtool for scripts/check-deploy.sh) and
# prometheus-redis-exporter (a test scrapes a node with it). Safe to run repeatedly.
set -euo pipefail
need=()
# Only libclang-dev gives the unversioned libclang.so that clang-sys links (libclang-cpp, which
# other packages bring, does not do).
[[ -n $(ls /usr/lib/llvm-*/lib/libclang.so /usr/lib/*/libclang.so 2>/dev/null | head -1) ]] ||
  need+=(libclang-dev)
command -v redis-cli >/dev/null || need+=(redis-tools)
command -v redis-server >/dev/null || need+=(redis-server)
command -v prometheus >/dev/null || need+=(prometheus)
command -v prometheus-redis-exporter >/dev/null || need+=(prometheus-redis-exporter)
if ((${#need[@]})); then
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  echo "setup: installing ${need[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "setup: cargo is missing; install Rust from rustup" >&2; exit 1; }
# scripts/test.sh checks formatting and lints: rustup toolchains may lack the two components.
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  command -v rustup >/dev/null || { echo "setup: cargo fmt and cargo clippy are missing; install them with your Rust toolchain" >&2; exit 1; }
  rustup component add rustfmt clippy
fi
