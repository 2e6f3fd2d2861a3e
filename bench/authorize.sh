#!/usr/bin/env bash
# The authorize filter's cost, run by hand (never by the tests): kaname's
# full chain (bench/kaname-full.yaml) against the same chain with a 10-rule
# authorize filter (bench/kaname-authorize.yaml) and with the external
# policy service behind its decision cache, interleaved and pinned as
# bench/run.sh does (proxies and nginx on core 0, wrk on core 1).
#
#   bench/authorize.sh                 # 5 reps x 8 s per target
#   REPS=3 DUR=5 bench/authorize.sh
set -euo pipefail
REPS=${REPS:-5}
DUR=${DUR:-8}
CONNS=${CONNS:-32}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=$ROOT/bench
RUN=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$RUN"; }
trap cleanup EXIT
for tool in wrk nginx python3 taskset; do
  command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 2; }
done
(cd "$ROOT" && cargo build --release --locked -p kaname --bin kaname >&2)
KANAME=$ROOT/target/release/kaname
python3 "$BENCH/mint.py" "$RUN"
HS=$(cat "$RUN/hs256.jwt")
wait_port() { for _ in $(seq 1 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "nothing on $1" >&2; exit 3; }

mkdir -p "$RUN/nginx/tmp"
taskset -c 0 nginx -e stderr -p "$RUN/nginx" -c "$BENCH/peers/nginx-upstream.conf" -g 'daemon off; worker_processes 1;' 2>"$RUN/nginx.log" & PIDS+=($!)
wait_port 18080
# The policy service: OPA's data-API shape, always allowing (with the cache
# on, kaname asks it once per distinct method, path, identity and subject).
cat >"$RUN/policy.py" <<'PY'
import http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        body = b'{"result": true}'
        self.send_response(200); self.send_header("content-length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", 18181), H).serve_forever()
PY
taskset -c 0 python3 "$RUN/policy.py" & PIDS+=($!)
wait_port 18181
sed -n '1,/^  policy:/p' "$BENCH/kaname-authorize.yaml" | sed '$d' >"$RUN/external.yaml"
cat >>"$RUN/external.yaml" <<'YAML'
  policy:
    authorize:
      external: { url: http://127.0.0.1:18181/v1/data/allow, timeout: 1s, cache: 60s }
YAML
sed -n '/^  per-client:/,$p' "$BENCH/kaname-authorize.yaml" >>"$RUN/external.yaml"

start() { # name config port admin
  env KANAME_WORKERS=1 JWT_SECRET=bench-shared-secret-0123456789abcdef LISTEN_PORT="$3" ADMIN_PORT="$4" \
    taskset -c 0 "$KANAME" run -c "$2" 2>"$RUN/$1.log" & PIDS+=($!)
  eval "PID_$1=$!"
  wait_port "$3"
}
start full "$BENCH/kaname-full.yaml" 18201 18291
start rules "$BENCH/kaname-authorize.yaml" 18202 18292
start external "$RUN/external.yaml" 18203 18293
TARGETS=("full chain|18201|PID_full" "full chain + authorize (10 rules)|18202|PID_rules" "full chain + authorize (external, cached)|18203|PID_external")
for t in "${TARGETS[@]}"; do
  IFS='|' read -r name port _ <<<"$t"
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $HS" "http://127.0.0.1:$port/")
  [ "$code" = 200 ] || { echo "$name answered $code" >&2; exit 4; }
done
TICK=$(getconf CLK_TCK)
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
run_one() { # port pidvar -> "rps cpu_us_per_req"
  local pid=${!2} before after out line n us
  before=$(ticks "$pid")
  out=$(AUTH_TOKEN="$HS" DELAY_MS=0 taskset -c 1 wrk -t1 -c"$CONNS" -d"${DUR}s" -s "$BENCH/percentiles.lua" "http://127.0.0.1:$1/" 2>&1)
  after=$(ticks "$pid")
  line=$(grep KANAME_BENCH <<<"$out")
  n=$(sed -E 's/.*requests=([0-9]+).*/\1/' <<<"$line")
  us=$(sed -E 's/.*duration_us=([0-9]+).*/\1/' <<<"$line")
  awk -v n="$n" -v us="$us" -v a="$after" -v b="$before" -v t="$TICK" 'BEGIN{printf "%.0f %.2f\n", n/(us/1e6), (a-b)/t*1e6/n}'
}
for t in "${TARGETS[@]}"; do IFS='|' read -r _ port pv <<<"$t"; DUR=2 run_one "$port" "$pv" >/dev/null; done
declare -A R
for rep in $(seq 1 "$REPS"); do
  n=${#TARGETS[@]}
  for i in $(seq 0 $((n - 1))); do
    IFS='|' read -r name port pv <<<"${TARGETS[$(( (i + rep - 1) % n ))]}"
    echo "   rep $rep/$REPS: $name" >&2
    R["$name"]+="$(run_one "$port" "$pv");"
  done
done
median() { tr ';' '\n' | awk -v f="$1" 'NF{print $f}' | sort -n | awk '{a[NR]=$1} END{ if (NR%2) print a[(NR+1)/2]; else printf "%.2f\n", (a[NR/2]+a[NR/2+1])/2 }'; }
printf '| target | req/s | CPU µs/req |\n| --- | --- | --- |\n'
for t in "${TARGETS[@]}"; do
  IFS='|' read -r name _ _ <<<"$t"
  printf '| %s | %s | %s |\n' "$name" "$(median 1 <<<"${R[$name]}")" "$(median 2 <<<"${R[$name]}")"
done
