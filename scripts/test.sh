#!/usr/bin/env bash
# The whole test suite, from a clean clone: builds the plugin components and
# the host, then runs every unit and integration test (real components, a
# real CRM server, real Parquet files).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/build-plugins.sh
echo "==> building the host and the example CRM"
cargo build --release --locked --workspace --bins
echo "==> running the tests"
cargo test --release --locked --workspace
