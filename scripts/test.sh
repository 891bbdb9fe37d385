#!/usr/bin/env bash
# The whole test suite, from a clean clone: builds the plugin components and
# the host, then runs every unit and integration test (real components, a
# real CRM server, real Parquet files).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/build-plugins.sh
echo "==> building the host and the example CRM"
cargo build --release --locked --workspace --bins
echo "==> preparing DuckDB and pyarrow, to read the lake as analysts do"
if [ ! -x target/pyenv/bin/python ]; then
  python3 -m venv target/pyenv
fi
target/pyenv/bin/pip install --quiet --disable-pip-version-check duckdb==2.0.1 pyarrow==26.0.1
export PLUGBOARD_TEST_PYTHON=$PWD/target/pyenv/bin/python

echo "==> running the tests"
cargo test --release --locked --workspace
