#!/usr/bin/env bash
# The benchmark, run by hand (never by the tests): kaname against direct
# nginx and HAProxy 2.6 in one run, interleaved, pinned as bench/README.md
# explains. Needs: wrk, h2load (nghttp2-client), nginx, haproxy, openssl,
# python3 (Debian: apt-get install wrk nghttp2-client nginx-light haproxy).
#
#   bench/run.sh                 # 5 reps x 8 s per target (about 10 minutes)
#   REPS=3 DUR=5 bench/run.sh    # quicker
#
# Output: a table on stdout and bench/results.tsv (one row per target).
set -euo pipefail
REPS=${REPS:-5}
DUR=${DUR:-8}
CONNS=${CONNS:-32}
# Fixed-rate runs: per-connection pacing that gives about RATE req/s in all;
# keep it near half of HAProxy passthrough's saturation on your machine.
RATE=${RATE:-9000}
H2_CONNS=$(( CONNS / 4 > 0 ? CONNS / 4 : 1 ))
# Idle keep-alive connections held open for the memory rows.
MEM_CONNS=${MEM_CONNS:-1000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=$ROOT/bench
RUN=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$RUN"; }
trap cleanup EXIT

for tool in wrk h2load nginx haproxy openssl python3 taskset; do
  command -v "$tool" >/dev/null || { echo "missing $tool (see the header of $0)" >&2; exit 2; }
done

echo "== building kaname (release)" >&2
(cd "$ROOT" && cargo build --release --locked -p kaname --bin kaname --example hyper_floor >&2)
KANAME=$ROOT/target/release/kaname
# hyper's server and client with nothing else: what kaname could reach
# without replacing hyper (proxy/examples/hyper_floor.rs).
HYPER_FLOOR=$ROOT/target/release/examples/hyper_floor

python3 "$BENCH/mint.py" "$RUN"
HS=$(cat "$RUN/hs256.jwt")
RS=$(cat "$RUN/rs256.jwt")
ES=$(cat "$RUN/es256.jwt")

wait_port() { # port
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listening on $1" >&2; exit 3
}

# Upstream and proxies share core 0; the load client runs on core 1.
mkdir -p "$RUN/nginx/tmp"
taskset -c 0 nginx -e stderr -p "$RUN/nginx" -c "$BENCH/peers/nginx-upstream.conf" \
  -g 'daemon off; worker_processes 1;' 2>"$RUN/nginx.log" & PIDS+=($!)
wait_port 18080

start_kaname() { # name config listen-port admin-port [extra env...]
  local name=$1 cfg=$2 port=$3 admin=$4; shift 4
  env KANAME_WORKERS=1 JWT_SECRET=bench-shared-secret-0123456789abcdef \
      LISTEN_PORT="$port" ADMIN_PORT="$admin" "$@" \
      taskset -c 0 "$KANAME" run -c "$cfg" 2>"$RUN/$name.log" & PIDS+=($!)
  eval "PID_$name=$!"
  wait_port "$port"
}
jwt_config() { # algorithm cache(true|false) -> the full chain with that jwt line
  sed "s#^    jwt: .*#    jwt: { issuer: bench-issuer, audiences: [bench-api], algorithms: [$1], jwks: { file: $RUN/jwks.json }, cache: $2 }#" \
    "$BENCH/kaname-full.yaml"
}
# wrk repeats one token, so with the cache on a signature is checked once;
# the cache-off rows show what each request would cost without it.
jwt_config RS256 true >"$RUN/kaname-full-rs256.yaml"
jwt_config ES256 true >"$RUN/kaname-full-es256.yaml"
jwt_config RS256 false >"$RUN/kaname-full-rs256-nocache.yaml"
jwt_config ES256 false >"$RUN/kaname-full-es256-nocache.yaml"
# Memory first, on instances no load has touched: RSS idle, then with
# MEM_CONNS keep-alive connections open, each after one request.
start_kaname kaname_mem "$BENCH/kaname-full.yaml" 18106 18196
taskset -c 0 haproxy -db -f "$BENCH/peers/haproxy.cfg" 2>"$RUN/haproxy-mem.log" & PIDS+=($!)
PID_haproxy_mem=$!
wait_port 18081
need_fds=$(( MEM_CONNS * 3 + 1024 ))
[ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt "$need_fds" ] && { ulimit -n "$need_fds" 2>/dev/null || true; }
MEM_KANAME=$(python3 "$BENCH/conns.py" "$PID_kaname_mem" 18106 "$MEM_CONNS" "$HS")
MEM_HAPROXY=$(python3 "$BENCH/conns.py" "$PID_haproxy_mem" 18081 "$MEM_CONNS" "$HS")
kill "$PID_kaname_mem" "$PID_haproxy_mem"
while (exec 3<>/dev/tcp/127.0.0.1/18081) 2>/dev/null; do sleep 0.05; done

start_kaname kaname_pass "$BENCH/kaname-passthrough.yaml" 18100 18190
start_kaname kaname_full "$BENCH/kaname-full.yaml" 18101 18191
start_kaname kaname_rs256 "$RUN/kaname-full-rs256.yaml" 18102 18192
start_kaname kaname_es256 "$RUN/kaname-full-es256.yaml" 18103 18193
start_kaname kaname_rs256_nocache "$RUN/kaname-full-rs256-nocache.yaml" 18104 18194
start_kaname kaname_es256_nocache "$RUN/kaname-full-es256-nocache.yaml" 18105 18195

taskset -c 0 "$HYPER_FLOOR" 127.0.0.1:18109 127.0.0.1:18080 2>"$RUN/hyper-floor.log" & PIDS+=($!)
PID_hyper_floor=$!
wait_port 18109
taskset -c 0 haproxy -db -f "$BENCH/peers/haproxy-plain.cfg" 2>"$RUN/haproxy-plain.log" & PIDS+=($!)
PID_haproxy_pass=$!
taskset -c 0 haproxy -db -f "$BENCH/peers/haproxy.cfg" 2>"$RUN/haproxy.log" & PIDS+=($!)
PID_haproxy_full=$!
wait_port 18082; wait_port 18081

# name | url | pid var | token | protocol
TARGETS=(
  "direct|http://127.0.0.1:18080/|-||h1"
  "kaname passthrough|http://127.0.0.1:18100/|PID_kaname_pass||h1"
  "kaname full chain HS256|http://127.0.0.1:18101/|PID_kaname_full|$HS|h1"
  "kaname full chain RS256|http://127.0.0.1:18102/|PID_kaname_rs256|$RS|h1"
  "kaname full chain ES256|http://127.0.0.1:18103/|PID_kaname_es256|$ES|h1"
  "kaname full chain RS256, no token cache|http://127.0.0.1:18104/|PID_kaname_rs256_nocache|$RS|h1"
  "kaname full chain ES256, no token cache|http://127.0.0.1:18105/|PID_kaname_es256_nocache|$ES|h1"
  "HAProxy passthrough|http://127.0.0.1:18082/|PID_haproxy_pass||h1"
  "bare hyper proxy (floor)|http://127.0.0.1:18109/|PID_hyper_floor||h1"
  "HAProxy JWT + stick table|http://127.0.0.1:18081/|PID_haproxy_full|$HS|h1"
  "kaname passthrough h2 -> h1|http://127.0.0.1:18100/|PID_kaname_pass||h2"
  "kaname passthrough, fixed rate|http://127.0.0.1:18100/|PID_kaname_pass||rate"
  "HAProxy passthrough, fixed rate|http://127.0.0.1:18082/|PID_haproxy_pass||rate"
  "kaname full HS256, fixed rate|http://127.0.0.1:18101/|PID_kaname_full|$HS|rate"
  "HAProxy JWT + stick table, fixed rate|http://127.0.0.1:18081/|PID_haproxy_full|$HS|rate"
)

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)

# Sanity: every target answers 200 (a 401 would make a fast, wrong number).
for t in "${TARGETS[@]}"; do
  IFS='|' read -r name url _ tok _ <<<"$t"
  code=$(curl -s -o /dev/null -w '%{http_code}' ${tok:+-H "Authorization: Bearer $tok"} "$url")
  [ "$code" = 200 ] || { echo "$name answered $code, not 200" >&2; exit 4; }
done

run_one() { # name url pidvar token proto -> "rps p50 p99 p999 cpu_us_per_req"
  local name=$1 url=$2 pidvar=$3 tok=$4 proto=$5 pid="" before=0 out rps p50 p99 p999 n
  [ "$pidvar" != "-" ] && pid=${!pidvar} && before=$(cpu_ticks "$pid")
  case $proto in
    h1|rate)
      local delay=0
      [ "$proto" = rate ] && delay=$(( CONNS * 1000 / RATE ))
      out=$(AUTH_TOKEN="$tok" DELAY_MS=$delay taskset -c 1 wrk -t1 -c"$CONNS" -d"${DUR}s" \
              -s "$BENCH/percentiles.lua" "$url" 2>&1)
      line=$(grep KANAME_BENCH <<<"$out")
      n=$(sed -E 's/.*requests=([0-9]+).*/\1/' <<<"$line")
      local us; us=$(sed -E 's/.*duration_us=([0-9]+).*/\1/' <<<"$line")
      rps=$(awk -v n="$n" -v us="$us" 'BEGIN{printf "%.0f", n / (us / 1e6)}')
      p50=$(sed -E 's/.*p50=([0-9]+).*/\1/' <<<"$line")
      p99=$(sed -E 's/.*p99=([0-9]+).*/\1/' <<<"$line")
      p999=$(sed -E 's/.*p999=([0-9]+).*/\1/' <<<"$line")
      ;;
    h2)
      # CONNS/4 connections of 4 streams: as many requests in flight as
      # wrk's CONNS connections, so the two protocols meet equal load.
      out=$(taskset -c 1 h2load -c"$H2_CONNS" -m4 -D "$DUR" ${tok:+-H "Authorization: Bearer $tok"} "$url" 2>&1)
      n=$(grep -E '^requests:' <<<"$out" | sed -E 's/.* ([0-9]+) succeeded.*/\1/')
      rps=$(grep -E '^finished in' <<<"$out" | sed -E 's/.*, ([0-9.]+) req\/s.*/\1/' | cut -d. -f1)
      # h2load prints no percentiles (only min/max/mean): none are reported.
      p50=-; p99=-; p999=-
      ;;
  esac
  local cpu=-
  if [ -n "$pid" ]; then
    local after; after=$(cpu_ticks "$pid")
    cpu=$(awk -v a="$after" -v b="$before" -v n="$n" -v t="$TICK" 'BEGIN{ if (n>0) printf "%.2f", (a-b)/t*1e6/n; else print "-" }')
  fi
  echo "$rps $p50 $p99 $p999 $cpu"
}

echo "== warm-up" >&2
for t in "${TARGETS[@]}"; do
  IFS='|' read -r name url pidvar tok proto <<<"$t"
  DUR=2 run_one "$name" "$url" "$pidvar" "$tok" "$proto" >/dev/null
done

declare -A RESULTS
for rep in $(seq 1 "$REPS"); do
  # Rotate the order each repetition: A B C, B C A, ...
  n=${#TARGETS[@]}
  for i in $(seq 0 $((n - 1))); do
    t=${TARGETS[$(( (i + rep - 1) % n ))]}
    IFS='|' read -r name url pidvar tok proto <<<"$t"
    echo "   rep $rep/$REPS: $name" >&2
    RESULTS["$name"]+="$(run_one "$name" "$url" "$pidvar" "$tok" "$proto");"
  done
done

median() { tr ';' '\n' | awk -v f="$1" 'NF{print $f}' | grep -v '^-$' | sort -n | awk '{a[NR]=$1} END{ if (NR==0) print "-"; else if (NR%2) print a[(NR+1)/2]; else printf "%.2f\n", (a[NR/2]+a[NR/2+1])/2 }'; }
range() { tr ';' '\n' | awk -v f="$1" 'NF{print $f}' | grep -v '^-$' | sort -n | awk 'NR==1{lo=$1} {hi=$1} END{ if (NR) print lo ".." hi; else print "-" }'; }

TSV=$BENCH/results.tsv
printf 'target\treq_per_s\treq_per_s_range\tp50_us\tp99_us\tp999_us\tcpu_us_per_req\tpeak_rss_kib\n' >"$TSV"
for t in "${TARGETS[@]}"; do
  IFS='|' read -r name url pidvar tok proto <<<"$t"
  r=${RESULTS["$name"]}
  rss=-
  [ "$pidvar" != "-" ] && rss=$(awk '/VmHWM/{print $2}' "/proc/${!pidvar}/status")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$(median 1 <<<"$r")" "$(range 1 <<<"$r")" \
    "$(median 2 <<<"$r")" "$(median 3 <<<"$r")" "$(median 4 <<<"$r")" "$(median 5 <<<"$r")" "$rss" >>"$TSV"
done

mem_rows() { # name "idle_kib=… open_kib=… per_conn_kib=…"
  local idle open per
  idle=$(sed -E 's/.*idle_kib=([0-9]+).*/\1/' <<<"$2")
  open=$(sed -E 's/.*open_kib=([0-9]+).*/\1/' <<<"$2")
  per=$(sed -E 's/.*per_conn_kib=([0-9.]+).*/\1/' <<<"$2")
  printf '%s, idle\t-\t-\t-\t-\t-\t-\t%s\n' "$1" "$idle" >>"$TSV"
  printf '%s, %s idle keep-alive connections (%s KiB each)\t-\t-\t-\t-\t-\t-\t%s\n' "$1" "$MEM_CONNS" "$per" "$open" >>"$TSV"
}
mem_rows "kaname full chain" "$MEM_KANAME"
mem_rows "HAProxy JWT + stick table" "$MEM_HAPROXY"

echo
echo "kaname benchmark: $REPS reps x ${DUR}s, wrk -t1 -c$CONNS (h2load -c$H2_CONNS -m4 for h2), fixed rate ~$RATE req/s; proxies 1 thread on core 0, client on core 1"
echo "(latencies in microseconds; the h2 row has none: h2load gives no percentiles; CPU = proxy utime+stime per request)"
column -t -s $'\t' "$TSV"
python3 - "$TSV" <<'PY'
import csv, sys
rows = {r["target"]: r for r in csv.DictReader(open(sys.argv[1]), delimiter="\t")}
def f(name, col):
    try: return float(rows[name][col])
    except (KeyError, ValueError): return None
def ratio(a, b, col):
    x, y = f(a, col), f(b, col)
    return f"{x / y:.2f}" if x and y else "-"
print()
print("ratios (same run):")
for a, b in [("kaname passthrough", "HAProxy passthrough"), ("kaname full chain HS256", "HAProxy JWT + stick table"),
             ("kaname full chain RS256", "HAProxy JWT + stick table"), ("kaname passthrough", "direct"),
             ("bare hyper proxy (floor)", "HAProxy passthrough"), ("kaname passthrough", "bare hyper proxy (floor)")]:
    print(f"  {a} / {b}: req/s {ratio(a, b, 'req_per_s')}, CPU/req {ratio(a, b, 'cpu_us_per_req')}")
print(f"  kaname full HS256 / kaname passthrough: req/s {ratio('kaname full chain HS256', 'kaname passthrough', 'req_per_s')}")
for alg in ("RS256", "ES256"):
    print(f"  kaname {alg} no cache / cached: req/s {ratio(f'kaname full chain {alg}, no token cache', f'kaname full chain {alg}', 'req_per_s')}")
print(f"  kaname h2->h1 / kaname h1: req/s {ratio('kaname passthrough h2 -> h1', 'kaname passthrough', 'req_per_s')}")
print(f"  fixed rate p99, kaname / HAProxy passthrough: {ratio('kaname passthrough, fixed rate', 'HAProxy passthrough, fixed rate', 'p99_us')}")
print(f"  fixed rate p99, kaname full / HAProxy full: {ratio('kaname full HS256, fixed rate', 'HAProxy JWT + stick table, fixed rate', 'p99_us')}")
PY
