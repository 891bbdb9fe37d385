#!/usr/bin/env bash
# The whole test suite, from a clean clone: builds the plugin components and
# the host, starts a real Apache Kafka (scripts/kafka.sh), then runs every
# unit and integration test (real components, a real CRM server, real
# Parquet files, a real broker). Needs Java 17+ and Maven for the broker.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> preparing DuckDB and pyarrow (to read the lake as analysts do) and componentize-py"
if [ ! -x target/pyenv/bin/python ]; then
  python3 -m venv target/pyenv
fi
target/pyenv/bin/pip install --quiet --disable-pip-version-check \
  duckdb==2.0.1 pyarrow==26.0.1 componentize-py==0.25.1
export PLUGBOARD_TEST_PYTHON=$PWD/target/pyenv/bin/python
# `plugboard new` + `build` + `replay` is tested for these languages; the
# Python template builds with the componentize-py installed above.
export PLUGBOARD_TEST_LANGS=rust,js,python
export PATH=$PWD/target/pyenv/bin:$PATH

scripts/build-plugins.sh
echo "==> building the host and the example CRM"
cargo build --release --locked --workspace --bins
echo "==> starting Apache Kafka for the Kafka tests"
started_kafka=0
if ! scripts/kafka.sh status >/dev/null 2>&1; then
  scripts/kafka.sh start
  started_kafka=1
fi
trap '[ "$started_kafka" = 1 ] && scripts/kafka.sh stop' EXIT
export PLUGBOARD_TEST_BROKERS=127.0.0.1:${KAFKA_PORT:-19092}

echo "==> running the tests"
cargo test --release --locked --workspace
