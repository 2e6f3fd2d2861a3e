#!/usr/bin/env bash
# Latency a shared store adds to a rate-limited request (stores.md: p99 at
# most 1 ms above `store: local` at 1,000 requests/s), run by hand (never
# by the tests). Two sidecars, the same rate_limit filter (never refusing:
# what is measured is the decision, not a 429), one deciding in its own
# buckets, one in a real redis-server on loopback; nginx the upstream.
# wrk paces 10 connections at 10 ms (about 1,000 requests/s), REPS rounds
# alternating the two, DUR s each; medians of p50/p99/p99.9.
# kaname and Redis on core 0, wrk on core 1.
#
#   bench/stores.sh               # DUR=10 REPS=3
set -euo pipefail
DUR=${DUR:-10}
REPS=${REPS:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=$ROOT/bench
. "$BENCH/lib.sh"
need wrk nginx taskset curl redis-server redis-cli
(cd "$ROOT" && cargo build --release --locked -p kaname --bin kaname >&2)
KANAME=$ROOT/target/release/kaname
start_nginx
taskset -c 0 redis-server --port 18379 --bind 127.0.0.1 --save "" --appendonly no >"$RUN/redis.log" 2>&1 & PIDS+=($!)
wait_port 18379

config() { # file store
  cat >"$1" <<YAML
admin: { listen: "127.0.0.1:\${ADMIN_PORT}" }
log: { level: warn, format: text, access_log: false }
stores:
  shared:
    redis: { url: "redis://127.0.0.1:18379/0", timeout: 50ms }
listeners:
  main:
    listen: "127.0.0.1:\${LISTEN_PORT}"
    routes:
      - { match: { path_prefix: / }, upstream: nginx, filters: [limit] }
upstreams:
  nginx: { endpoints: [127.0.0.1:18080] }
filters:
  limit:
    rate_limit: { key: header:x-user, rate: 1000000/s, burst: 1000000, store: $2 }
YAML
}
config "$RUN/local.yaml" local
config "$RUN/shared.yaml" shared
start_kaname local "$RUN/local.yaml" 18481 18581
start_kaname shared "$RUN/shared.yaml" 18482 18582
# The shared one's store is up (its probe has connected) ...
for _ in $(seq 1 100); do
  curl -s http://127.0.0.1:18582/metrics | grep -q '^kaname_store_up{store="shared"} 1' && break
  sleep 0.05
done
# ... both answer 200, and the shared one decides in Redis.
for port in 18481 18482; do
  code=$(curl -s -o /dev/null -w '%{http_code}' -H 'x-user: u' "http://127.0.0.1:$port/")
  [ "$code" = 200 ] || { echo "port $port answered $code" >&2; exit 4; }
done
# (The buckets refill within microseconds, so their keys expire at once:
# Redis' own count of script calls says the decisions were made there.)
calls=$(redis-cli -p 18379 info commandstats | grep -cE '^cmdstat_(evalsha|eval):' || true)
[ "$calls" -ge 1 ] || { echo "no script ran in Redis" >&2; exit 4; }

paced() { # port -> "p50 p99 p999 rps"
  local out line
  out=$(DELAY_MS=10 taskset -c 1 wrk -t1 -c10 -d"${DUR}s" -H 'x-user: u' -s "$BENCH/percentiles.lua" "http://127.0.0.1:$1/" 2>&1)
  line=$(grep KANAME_BENCH <<<"$out")
  sed -E 's/.*requests=([0-9]+).*duration_us=([0-9]+) p50=([0-9]+) p99=([0-9]+) p999=([0-9]+).*/\3 \4 \5 \1 \2/' <<<"$line" |
    awk '{printf "%d %d %d %.0f\n", $1, $2, $3, $4/($5/1e6)}'
}
LOCAL=""; SHARED=""
for _ in $(seq 1 "$REPS"); do
  LOCAL+="$(paced 18481);"
  SHARED+="$(paced 18482);"
done
echo "| store | req/s | p50 µs | p99 µs | p99.9 µs |"
echo "| --- | --- | --- | --- | --- |"
for name in local shared; do
  v=$([ $name = local ] && echo "$LOCAL" || echo "$SHARED")
  echo "| $name | $(median 4 <<<"$v") | $(median 1 <<<"$v") | $(median 2 <<<"$v") | $(median 3 <<<"$v") |"
done
echo
echo "store errors (should be none):"
curl -s http://127.0.0.1:18582/metrics | grep -E '^kaname_store_(errors_total|up)' || true
