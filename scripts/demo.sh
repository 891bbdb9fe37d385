#!/usr/bin/env bash
# The demo: builds everything, starts the example CRM, runs the host with the
# three plugins over examples/data/bookings.ndjson, and shows where the
# results are. Everything it writes is under target/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."

PLUGBOARD_SKIP_JS=1 scripts/build-plugins.sh
echo "==> building the host and the example CRM"
cargo build --release --locked --bins

demo=target/demo
crm_url=${PLUGBOARD_CRM_URL:-http://127.0.0.1:8088}
export PLUGBOARD_CRM_URL=$crm_url PLUGBOARD_CRM_TOKEN=${PLUGBOARD_CRM_TOKEN:-demo-token}
rm -rf "$demo/lake" "$demo"/crm.db* "$demo/metrics.prom" "$demo/dead-letter.ndjson"
mkdir -p "$demo"

echo "==> starting the example CRM on $crm_url"
target/release/crm-example --listen "${crm_url#http://}" --db "$demo/crm.db" --token "$PLUGBOARD_CRM_TOKEN" \
  >"$demo/crm.log" 2>&1 &
crm_pid=$!
trap 'kill $crm_pid 2>/dev/null || true' EXIT
for _ in $(seq 1 50); do
  curl -fsS -o /dev/null -H "authorization: Bearer $PLUGBOARD_CRM_TOKEN" "$crm_url/crm/v3/objects/bookings?limit=1" && break
  sleep 0.1
done

echo "==> running plugboard over examples/data/bookings.ndjson"
target/release/plugboard run --config examples/demo/plugboard.toml \
  --events examples/data/bookings.ndjson \
  --dead-letter "$demo/dead-letter.ndjson" \
  --metrics-out "$demo/metrics.prom"

echo
echo "CRM records   $crm_url/crm/v3/objects/bookings (SQLite: $demo/crm.db), for example:"
curl -fsS -H "authorization: Bearer $PLUGBOARD_CRM_TOKEN" "$crm_url/crm/v3/objects/bookings?limit=1"
echo
echo "Parquet files $(find "$demo/lake" -name '*.parquet' | wc -l) under $demo/lake/bookings/event_date=*/"
echo "Metrics       $demo/metrics.prom, business metrics:"
grep -E '^bookings_(current|revenue_minor)' "$demo/metrics.prom" | sed 's/^/  /'
echo "Dead letters  $demo/dead-letter.ndjson ($(wc -l <"$demo/dead-letter.ndjson") records)"
