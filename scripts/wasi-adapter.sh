#!/usr/bin/env bash
# Prints the path of the WASI preview1 reactor adapter, which turns a
# wasip1 module (Go) into a component. It ships in the
# wasi-preview1-component-adapter-provider crate, fetched once with cargo
# (the version of the host's wasmtime).
set -euo pipefail
cd "$(dirname "$0")/.."
version=48.0.8
dir=target/wasi-adapter
mkdir -p "$dir/src"
cat > "$dir/Cargo.toml" <<TOML
[package]
name = "wasi-adapter-fetch"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
wasi-preview1-component-adapter-provider = "=$version"

[workspace]
TOML
: > "$dir/src/lib.rs"
(cd "$dir" && cargo fetch --quiet)
adapter=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" \
  -path "*/wasi-preview1-component-adapter-provider-$version/artefacts/wasi_snapshot_preview1.reactor.wasm" | head -1)
[ -n "$adapter" ] || { echo "wasi-adapter.sh: the adapter was not found after cargo fetch" >&2; exit 1; }
echo "$adapter"
