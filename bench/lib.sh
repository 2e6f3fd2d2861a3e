# Shared by the hand-run benchmarks (authorize.sh, instructions.sh,
# tracing.sh): sourced after the caller sets ROOT and BENCH. Every process
# started is killed and the scratch directory removed on exit.
RUN=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$RUN"; }
trap cleanup EXIT

need() { for tool in "$@"; do command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 2; }; done; }
wait_port() { for _ in $(seq 1 600); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "nothing on $1" >&2; exit 3; }

# nginx, the upstream (18080), on core 0 with one worker.
start_nginx() {
  mkdir -p "$RUN/nginx/tmp"
  taskset -c 0 nginx -e stderr -p "$RUN/nginx" -c "$BENCH/peers/nginx-upstream.conf" -g 'daemon off; worker_processes 1;' 2>"$RUN/nginx.log" & PIDS+=($!)
  wait_port 18080
}

# make_certs: in TLS_DIR ($RUN/tls, exported), one CA, a server
# certificate (127.0.0.1) and a client certificate, all ECDSA P-256;
# server.pem is HAProxy's crt (certificate and key in one file). kaname and
# HAProxy serve the same files (kaname-protocols.yaml,
# peers/haproxy-protocols.cfg).
make_certs() {
  TLS_DIR=$RUN/tls
  export TLS_DIR
  mkdir -p "$TLS_DIR"
  (
    cd "$TLS_DIR"
    ec() { openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "$@" 2>/dev/null; }
    ec -x509 -days 2 -subj "/CN=kaname bench CA" -keyout ca.key -out ca.crt \
      -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
    sign() { # name extensions
      ec -subj "/CN=$1" -keyout "$1.key" -out "$1.csr"
      openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -out "$1.crt" \
        -extfile <(printf '%s\n' "$2" basicConstraints=CA:FALSE keyUsage=critical,digitalSignature) 2>/dev/null
    }
    sign server "subjectAltName=IP:127.0.0.1,DNS:localhost"$'\n'"extendedKeyUsage=serverAuth"
    sign client "subjectAltName=URI:spiffe://bench/client"$'\n'"extendedKeyUsage=clientAuth"
    cat server.crt server.key >server.pem
  )
}

# grpc_files: the gRPC call ($RUN/call.bin) and the gRPC-shaped reply of
# peers/nginx-grpc.conf: a 5-byte prefix (not compressed, length 3) and 3
# bytes of protobuf (field 1, "x" / "y"); GRPC_PATH and GRPC_H for h2load.
grpc_files() {
  printf '\x00\x00\x00\x00\x03\x0a\x01y' >"$RUN/call.bin"
  mkdir -p "$RUN/nginx-grpc/tmp" "$RUN/nginx-grpc/grpc"
  printf '\x00\x00\x00\x00\x03\x0a\x01x' >"$RUN/nginx-grpc/grpc/reply"
  # nginx's worker (user nobody) must reach the file through mktemp's 0700 dir.
  chmod o+x "$RUN" "$RUN/nginx-grpc" "$RUN/nginx-grpc/grpc"
  chmod o+r "$RUN/nginx-grpc/grpc/reply"
  GRPC_PATH=/bench.Echo/Call
  GRPC_H=(-H 'content-type: application/grpc' -H 'te: trailers')
}

# The gRPC-shaped HTTP/2 upstream (18520) on core 0, after grpc_files.
start_nginx_grpc() {
  taskset -c 0 nginx -e stderr -p "$RUN/nginx-grpc" -c "$BENCH/peers/nginx-grpc.conf" \
    -g 'daemon off; worker_processes 1;' 2>"$RUN/nginx-grpc.log" & PIDS+=($!)
  wait_port 18520
}

# The bench tokens (HS256 and more) in $RUN; HS is the HS256 one.
mint_tokens() { python3 "$BENCH/mint.py" "$RUN"; HS=$(cat "$RUN/hs256.jwt"); }

# start_kaname NAME CONFIG PORT ADMIN: one worker on core 0; PID_<NAME>.
start_kaname() {
  env KANAME_WORKERS=1 JWT_SECRET=bench-shared-secret-0123456789abcdef LISTEN_PORT="$3" ADMIN_PORT="$4" \
    taskset -c 0 "$KANAME" run -c "$2" 2>"$RUN/$1.log" & PIDS+=($!)
  eval "PID_$1=$!"
  wait_port "$3"
}

# TARGETS entries are "name|port|PID_var". Each must answer 200 first (a
# 401 would be fast and wrong).
check_targets() {
  local t name port code
  for t in "${TARGETS[@]}"; do
    IFS='|' read -r name port _ <<<"$t"
    code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $HS" "http://127.0.0.1:$port/")
    [ "$code" = 200 ] || { echo "$name answered $code" >&2; exit 4; }
  done
}

TICK=$(getconf CLK_TCK)
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# run_one PORT PIDVAR -> "rps cpu_us_per_req": wrk on core 1 for DUR s.
run_one() {
  local pid=${!2} before after out line n us
  before=$(ticks "$pid")
  out=$(AUTH_TOKEN="$HS" DELAY_MS=0 taskset -c 1 wrk -t1 -c"$CONNS" -d"${DUR}s" -s "$BENCH/percentiles.lua" "http://127.0.0.1:$1/" 2>&1)
  after=$(ticks "$pid")
  line=$(grep KANAME_BENCH <<<"$out")
  n=$(sed -E 's/.*requests=([0-9]+).*/\1/' <<<"$line")
  us=$(sed -E 's/.*duration_us=([0-9]+).*/\1/' <<<"$line")
  awk -v n="$n" -v us="$us" -v a="$after" -v b="$before" -v t="$TICK" 'BEGIN{printf "%.0f %.2f\n", n/(us/1e6), (a-b)/t*1e6/n}'
}

median() { tr ';' '\n' | awk -v f="$1" 'NF{print $f}' | sort -n | awk '{a[NR]=$1} END{ if (NR%2) print a[(NR+1)/2]; else printf "%.2f\n", (a[NR/2]+a[NR/2+1])/2 }'; }

# Every target REPS times, interleaved (rotated each round), after a 2 s
# warm-up each; prints the medians as a markdown table.
interleave() {
  local t rep i n name port pv
  for t in "${TARGETS[@]}"; do IFS='|' read -r _ port pv <<<"$t"; DUR=2 run_one "$port" "$pv" >/dev/null; done
  declare -A R
  n=${#TARGETS[@]}
  for rep in $(seq 1 "$REPS"); do
    for i in $(seq 0 $((n - 1))); do
      IFS='|' read -r name port pv <<<"${TARGETS[$(( (i + rep - 1) % n ))]}"
      echo "   rep $rep/$REPS: $name" >&2
      R["$name"]+="$(run_one "$port" "$pv");"
    done
  done
  printf '| target | req/s | CPU µs/req |\n| --- | --- | --- |\n'
  for t in "${TARGETS[@]}"; do
    IFS='|' read -r name _ _ <<<"$t"
    printf '| %s | %s | %s |\n' "$name" "$(median 1 <<<"${R[$name]}")" "$(median 2 <<<"${R[$name]}")"
  done
}

# callgrind_ir NAME CONFIG PORT ADMIN: kaname's instructions per request
# under callgrind with one worker (callgrind_cmd below).
callgrind_ir() {
  local name=$1 config=$2 port=$3 admin=$4
  callgrind_cmd "$name" "$port" env KANAME_WORKERS=1 JWT_SECRET=bench-shared-secret-0123456789abcdef \
    LISTEN_PORT="$port" ADMIN_PORT="$admin" "$KANAME" run -c "$config"
}

# callgrind_cmd NAME PORT CMD...: instructions per request of any proxy
# (kaname, the hyper floor, HAProxy) listening on PORT, under callgrind: a
# client sends WARM, then N requests, and only the N are counted. The
# client is CG_CLIENT PORT COUNT: cg_http (default: keep-alive HTTP/1.1,
# the HS token if set), cg_https (the same over TLS, TLS_DIR's CA), cg_h2
# and cg_grpc (h2load, H2_CONNS connections of H2_STREAMS streams).
# CG_KEEP=DIR keeps each profile (DIR/NAME.out) for callgrind_annotate
# (which reads a later dump whole only when it was written with
# CG_OPTS="--compress-strings=no --compress-pos=no").
callgrind_cmd() {
  local name=$1 port=$2 out pid b client=${CG_CLIENT:-cg_http}
  shift 2
  out="$RUN/cg.$(tr -c 'a-z0-9' '_' <<<"$name")"
  # env(1) first so that valgrind traces the proxy, not a wrapper.
  if [ "$1" = env ]; then
    local envs=()
    shift
    while [[ "$1" == *=* ]]; do envs+=("$1"); shift; done
    env "${envs[@]}" valgrind --tool=callgrind --callgrind-out-file="$out.%p" ${CG_OPTS:-} "$@" 2>"$RUN/log.${out##*/}" & pid=$!
  else
    valgrind --tool=callgrind --callgrind-out-file="$out.%p" ${CG_OPTS:-} "$@" 2>"$RUN/log.${out##*/}" & pid=$!
  fi
  PIDS+=($pid)
  wait_port "$port"
  "$client" "$port" "$WARM"
  # A dump holds the instructions since the previous one: the dump after
  # the warm-up closes start-up and warm-up, the next one holds the N.
  total_ir "$pid" "$out" >/dev/null
  "$client" "$port" "$N"
  b=$(total_ir "$pid" "$out")
  if [ -n "${CG_KEEP:-}" ]; then
    mkdir -p "$CG_KEEP"
    cp "$(ls -t "$out".* | head -1)" "$CG_KEEP/$(tr -c 'a-zA-Z0-9' '_' <<<"$name").out"
  fi
  kill "$pid"; wait "$pid" 2>/dev/null || true
  awk -v b="$b" -v n="$N" -v name="$name" 'BEGIN{printf "| %s | %.0f |\n", name, b/n}'
}
cg_client_py() {
  [ -f "$RUN/client.py" ] || cat >"$RUN/client.py" <<'PY'
import http.client, ssl, sys
port, count, token, ca = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
if ca:
    ctx = ssl.create_default_context(cafile=ca)
    c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx)
else:
    c = http.client.HTTPConnection("127.0.0.1", port)
h = {"Authorization": "Bearer " + token} if token else {}
for _ in range(count):
    c.request("GET", "/", headers=h)
    r = c.getresponse(); r.read()
    assert r.status == 200, r.status
PY
  python3 "$RUN/client.py" "$@"
}
cg_http() { cg_client_py "$1" "$2" "${HS:-}" ""; }
cg_https() { cg_client_py "$1" "$2" "" "$TLS_DIR/ca.crt"; }
cg_h2load() { # port count extra...
  local port=$1 count=$2 out
  shift 2
  out=$(taskset -c 1 h2load -c"${H2_CONNS:-8}" -m"${H2_STREAMS:-100}" -n "$count" "$@") || true
  grep -q "status codes: $count 2xx" <<<"$out" || { echo "h2load on $port: $(grep -E '^(requests|status)' <<<"$out")" >&2; exit 5; }
}
cg_h2() { cg_h2load "$1" "$2" "http://127.0.0.1:$1/"; }
cg_grpc() { cg_h2load "$1" "$2" -d "$RUN/call.bin" "${GRPC_H[@]}" "http://127.0.0.1:$1$GRPC_PATH"; }
# The instructions since the previous dump (each dump starts the counts
# again) of the callgrind run of pid $1 writing to $2.
total_ir() {
  callgrind_control -d "$1" >/dev/null 2>&1
  sleep 1
  awk '/^summary:|^totals:/{print $2; exit}' $(ls -t "$2".* 2>/dev/null | head -1)
}
