#!/usr/bin/env bash
# The async hand-off's speed and memory, run by hand (never by the tests):
#   1. accepted jobs/s and the 202's p50/p99 at 1, 32 and 128 clients, and
#      at 32 clients pausing 4 ms between requests (about 5,500/s)
#      (wrk, 1 KiB POST bodies, fsync on), deliveries held meanwhile: the
#      queue's upstream accepts connections and never answers, so one
#      delivery hangs and every other job waits;
#   2. delivered jobs/s: a restart with the queue pointed at nginx and 32
#      consumers drains what phase 1 stored;
#   3. RSS with JOBS waiting (default 1,000,000: about 3 minutes of
#      acceptance), after a restart, next to the store file's size.
# kaname runs with one worker on core 0, wrk on core 1, as bench/run.sh.
#
#   bench/queue.sh                  # DUR=10 JOBS=1000000
#   DUR=5 JOBS=200000 bench/queue.sh
#   KANAME=/tmp/kaname-other DUR=8 JOBS=0 bench/queue.sh   # phases 1-2 only
set -euo pipefail
DUR=${DUR:-10}
JOBS=${JOBS:-1000000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=$ROOT/bench
. "$BENCH/lib.sh"
need wrk nginx python3 taskset curl
# KANAME=path measures another build (an A/B of two stores) as it is.
if [ -z "${KANAME:-}" ]; then
  (cd "$ROOT" && cargo build --release --locked -p kaname --bin kaname >&2)
  KANAME=$ROOT/target/release/kaname
fi
HS=""
start_nginx
# An upstream that takes connections and never answers.
python3 -c '
import socket, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 18085)); s.listen(1024)
time.sleep(1e9)' & PIDS+=($!)
wait_port 18085

config() { # file upstream concurrency
  cat >"$1" <<YAML
admin: { listen: "127.0.0.1:18591" }
log: { level: warn, format: text, access_log: false }
data_dir: $RUN/data
queues:
  bench:
    max_depth: 100000000
    delivery: { concurrency: $3, attempts: 3, per_try_timeout: 1h }
listeners:
  bench:
    listen: "127.0.0.1:18501"
    routes:
      - { match: { path_prefix: / }, upstream: app, queue: bench }
upstreams:
  app:
    endpoints: [$2]
    pool: { max_connections_per_endpoint: 1024 }
YAML
}
metric() { curl -s http://127.0.0.1:18591/metrics | awk -v m="$1" '$1 == m {print $2}'; }
run_kaname() { taskset -c 0 "$KANAME" run -c "$1" 2>>"$RUN/kaname.log" & KPID=$!; PIDS+=($KPID); wait_port 18501; }
stop_kaname() { kill -TERM "$KPID"; wait "$KPID" 2>/dev/null || true; }

config "$RUN/held.yaml" 127.0.0.1:18085 1
run_kaname "$RUN/held.yaml"
echo "accepting (deliveries held), 1 KiB bodies, wrk -t1 -d${DUR}s:"
printf '| clients | accepted/s | 202 p50 ms | 202 p99 ms | errors |\n| --- | --- | --- | --- | --- |\n'
for c in 1 32 128; do
  out=$(BODY_BYTES=1024 taskset -c 1 wrk -t1 -c"$c" -d"${DUR}s" -s "$BENCH/percentiles.lua" http://127.0.0.1:18501/jobs 2>&1)
  line=$(grep KANAME_BENCH <<<"$out")
  awk -v c="$c" '{for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }}
    END { printf "| %d | %.0f | %.2f | %.2f | %d |\n", c, v["requests"] / (v["duration_us"] / 1e6), v["p50"] / 1000, v["p99"] / 1000, v["errors"] }' <<<"$line"
done
# The same 32 clients each pausing 4 ms between requests: about 5,500
# jobs/s, the 202's latency at a load short of saturation.
out=$(DELAY_MS=4 BODY_BYTES=1024 taskset -c 1 wrk -t1 -c32 -d"${DUR}s" -s "$BENCH/percentiles.lua" http://127.0.0.1:18501/jobs 2>&1)
awk '{for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }}
  END { printf "| 32, 4 ms apart | %.0f | %.2f | %.2f | %d |\n", v["requests"] / (v["duration_us"] / 1e6), v["p50"] / 1000, v["p99"] / 1000, v["errors"] }' <<<"$(grep KANAME_BENCH <<<"$out")"
stored=$(metric 'kaname_jobs_total{queue="bench",result="accepted"}')
echo "jobs accepted in all: $stored"
stop_kaname

config "$RUN/drain.yaml" 127.0.0.1:18080 32
start=$(date +%s.%N)
run_kaname "$RUN/drain.yaml"
while :; do
  done_n=$(metric 'kaname_jobs_total{queue="bench",result="done"}'); done_n=${done_n:-0}
  waiting=$(curl -s http://127.0.0.1:18591/metrics | awk '/^kaname_jobs_waiting\{/ {s += $2} END {print s + 0}')
  [ "$waiting" = 0 ] && [ "$(metric 'kaname_jobs_delivering{queue="bench"}')" = 0 ] && break
  sleep 0.5
done
end=$(date +%s.%N)
awk -v n="$done_n" -v a="$start" -v b="$end" 'BEGIN { printf "delivered: %d jobs in %.1f s (restart included): %.0f jobs/s to nginx, 32 consumers\n", n, b - a, n / (b - a) }'
stop_kaname

[ "$JOBS" -gt 0 ] || exit 0
rm -rf "$RUN/data"
run_kaname "$RUN/held.yaml"
echo "filling $JOBS jobs (128 clients) ..."
BODY_BYTES=1024 taskset -c 1 wrk -t1 -c128 -d3600s -s "$BENCH/percentiles.lua" http://127.0.0.1:18501/jobs >/dev/null 2>&1 & WRK=$!
PIDS+=($WRK)
while [ "$(metric 'kaname_jobs_total{queue="bench",result="accepted"}' | cut -d. -f1)" -lt "$JOBS" ]; do sleep 1; done
kill "$WRK"; wait "$WRK" 2>/dev/null || true
busy=$(awk '/VmRSS/ {print $2}' "/proc/$KPID/status")
stop_kaname
run_kaname "$RUN/held.yaml"
sleep 2
rss=$(awk '/VmRSS/ {print $2}' "/proc/$KPID/status")
waiting=$(curl -s http://127.0.0.1:18591/metrics | awk '/^kaname_jobs_waiting\{/ {s += $2} END {print s + 0}')
size=$(du -sm "$RUN/data" | cut -f1)
echo "$waiting jobs waiting: RSS $((rss / 1024)) MiB after a restart ($((busy / 1024)) MiB at the end of filling), store $size MiB on disk"
stop_kaname
