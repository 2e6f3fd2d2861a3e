#!/usr/bin/env bash
# What spans cost, run by hand (never by the tests): the full chain
# (bench/kaname-full.yaml) with tracing off, with `sampling: 0.01` and with
# `sampling: 1.0`, exporting by OTLP/gRPC to a real receiver
# (proxy/examples/otlp_sink.rs: the official protobufs, decoded), as
# instructions per request under callgrind (steady) and CPU µs per request
# under wrk (interleaved, pinned as bench/run.sh is; the receiver is on
# core 1 with wrk, so its decoding is not charged to kaname).
#
#   bench/tracing.sh                   # 5 reps x 8 s per target
#   REPS=3 DUR=5 N=1000 bench/tracing.sh
set -euo pipefail
REPS=${REPS:-5}
DUR=${DUR:-8}
CONNS=${CONNS:-32}
N=${N:-2000}
WARM=${WARM:-200}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=$ROOT/bench
. "$BENCH/lib.sh"
need wrk nginx python3 taskset curl valgrind callgrind_control
(cd "$ROOT" && cargo build --release --locked -p kaname --bin kaname --example otlp_sink >&2)
KANAME=$ROOT/target/release/kaname
mint_tokens
start_nginx
taskset -c 1 "$ROOT/target/release/examples/otlp_sink" 127.0.0.1:18317 >"$RUN/sink.out" 2>"$RUN/sink.log" & SINK=$!
PIDS+=($SINK)
wait_port 18317

# The full chain with a tracing section in front.
traced() { # file sampling
  { printf 'tracing:\n  otlp: { endpoint: "http://127.0.0.1:18317", sampling: %s }\n' "$2"; cat "$BENCH/kaname-full.yaml"; } >"$1"
}
traced "$RUN/sampled-1.yaml" 0.01
traced "$RUN/sampled-100.yaml" 1.0

echo "instructions per request (callgrind, $N requests after $WARM):"
echo "| config | instructions per request |"
echo "| --- | --- |"
callgrind_ir "full chain, tracing off" "$BENCH/kaname-full.yaml" 18401 18491
callgrind_ir "full chain, sampling 0.01" "$RUN/sampled-1.yaml" 18402 18492
callgrind_ir "full chain, sampling 1.0" "$RUN/sampled-100.yaml" 18403 18493

start_kaname off "$BENCH/kaname-full.yaml" 18411 18481
start_kaname one "$RUN/sampled-1.yaml" 18412 18482
start_kaname all "$RUN/sampled-100.yaml" 18413 18483
TARGETS=("full chain, tracing off|18411|PID_off" "full chain, sampling 0.01|18412|PID_one" "full chain, sampling 1.0|18413|PID_all")
check_targets
echo
echo "CPU per request (wrk -t1 -c$CONNS, ${DUR}s x $REPS, medians):"
interleave
# The spans went somewhere real, none were dropped.
for a in 18482 18483; do
  curl -s "http://127.0.0.1:$a/metrics" | grep -E '^kaname_tracing_spans_(exported|dropped)_total' | sed "s/^/  admin $a: /"
done
kill "$SINK"; wait "$SINK" 2>/dev/null || true
cat "$RUN/sink.out"
