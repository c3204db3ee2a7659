#!/usr/bin/env bash
# The quickstart, end to end: start culvert with the embedded NATS server,
# publish sample orders, show what came out on the downstream subjects, then
# stop culvert with SIGTERM (it drains and exits 0). `make quickstart` builds
# the binaries first.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=bin
data=$(mktemp -d)
port=${CULVERT_QUICKSTART_PORT:-4222}
url="nats://127.0.0.1:$port"
trap 'kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$data"' EXIT

echo "== starting culvert (embedded NATS + JetStream on $url, store in $data)"
"$bin/culvert" run examples/quickstart/pipeline.yaml --data-dir "$data" --listen "127.0.0.1:$port" \
  > >(sed -u 's/^/   [console] /') 2> >(sed -u 's/^/   [log] /' >&2) &
pid=$!
for _ in $(seq 100); do
  [ -s "$data/culvert.url" ] && break
  sleep 0.1
done
sleep 0.5

echo "== publishing $(wc -l < examples/quickstart/orders.ndjson) orders to orders.created"
"$bin/culvert" publish orders.created --server "$url" --file examples/quickstart/orders.ndjson --key shop-1

echo "== enriched.orders.created (framed Go function, then jq in lines mode)"
"$bin/culvert" subscribe 'enriched.>' --server "$url" --count 7 --timeout 20s
echo "== audit.created (shell script in exec mode, one process per record)"
"$bin/culvert" subscribe 'audit.>' --server "$url" --count 8 --timeout 20s
echo "== dlq.orders (the order whose amount is not a number)"
"$bin/culvert" subscribe 'dlq.>' --server "$url" --count 1 --timeout 20s

echo "== stopping culvert (SIGTERM: drain, ack, exit 0)"
kill -TERM "$pid"
status=0
wait "$pid" || status=$?
trap 'rm -rf "$data"' EXIT
echo "== culvert exited with status $status"
exit "$status"
