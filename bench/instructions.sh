#!/usr/bin/env bash
# Instructions per request, by callgrind: a figure that does not move with
# the machine's load (bench/run.sh's CPU times move by tens of percent on a
# shared VM), so a change of a few percent shows. Run by hand.
#
#   bench/instructions.sh [KANAME_BIN]          # default target/release/kaname
#
# Each config (passthrough, full chain, full chain + 10-rule authorize) runs
# under valgrind --tool=callgrind with one worker thread in front of nginx;
# a keep-alive client sends WARM then N requests. The figure is
# (Ir after WARM + N) - (Ir after WARM), divided by N: start-up and warm-up
# are not counted.
set -euo pipefail
N=${N:-2000}
WARM=${WARM:-200}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=$ROOT/bench
KANAME=${1:-$ROOT/target/release/kaname}
RUN=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$RUN"; }
trap cleanup EXIT
for tool in valgrind callgrind_control nginx python3; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install valgrind nginx-light)" >&2; exit 2; }
done
python3 "$BENCH/mint.py" "$RUN"
HS=$(cat "$RUN/hs256.jwt")
wait_port() { for _ in $(seq 1 600); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "nothing on $1" >&2; exit 3; }
mkdir -p "$RUN/nginx/tmp"
nginx -e stderr -p "$RUN/nginx" -c "$BENCH/peers/nginx-upstream.conf" -g 'daemon off; worker_processes 1;' 2>"$RUN/nginx.log" & PIDS+=($!)
wait_port 18080

# A keep-alive HTTP/1.1 client sending COUNT GETs, one at a time.
cat >"$RUN/client.py" <<'PY'
import http.client, sys
port, count, token = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
c = http.client.HTTPConnection("127.0.0.1", port)
h = {"Authorization": "Bearer " + token} if token else {}
for _ in range(count):
    c.request("GET", "/", headers=h)
    r = c.getresponse(); r.read()
    assert r.status == 200, r.status
PY
# Total instructions so far of the callgrind run writing to $1.
total_ir() {
  callgrind_control -d "$1" >/dev/null 2>&1
  sleep 1
  awk '/^summary:|^totals:/{print $2; exit}' $(ls -t "$2".* 2>/dev/null | head -1)
}
measure() { # name config port admin
  local out; out="$RUN/cg.$(tr -c 'a-z0-9' '_' <<<"$1")"
  env KANAME_WORKERS=1 JWT_SECRET=bench-shared-secret-0123456789abcdef LISTEN_PORT="$3" ADMIN_PORT="$4" \
    valgrind --tool=callgrind --callgrind-out-file="$out.%p" "$KANAME" run -c "$2" 2>"$RUN/$1.log" & local pid=$!
  PIDS+=($pid)
  wait_port "$3"
  python3 "$RUN/client.py" "$3" "$WARM" "$HS"
  local a; a=$(total_ir "$pid" "$out")
  python3 "$RUN/client.py" "$3" "$N" "$HS"
  local b; b=$(total_ir "$pid" "$out")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  awk -v a="$a" -v b="$b" -v n="$N" -v name="$1" 'BEGIN{printf "| %s | %.0f |\n", name, (b-a)/n}'
}
echo "| config | instructions per request |"
echo "| --- | --- |"
# kaname-passthrough.yaml has its ports written in: 18100, admin 18190.
measure passthrough "$BENCH/kaname-passthrough.yaml" 18100 18190
measure "full chain (HS256)" "$BENCH/kaname-full.yaml" 18302 18392
if env JWT_SECRET=bench-shared-secret-0123456789abcdef LISTEN_PORT=1 ADMIN_PORT=2 "$KANAME" check -c "$BENCH/kaname-authorize.yaml" >/dev/null 2>&1; then
  measure "full chain + authorize (10 rules)" "$BENCH/kaname-authorize.yaml" 18303 18393
fi
