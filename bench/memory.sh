#!/usr/bin/env bash
# Memory given back (limits.md, last paragraph), run by hand (never by the
# tests): for each allocator candidate, a release kaname in front of nginx,
# its RSS idle, two attacks, and its RSS every 5 s for 60 s after each; then
# requests/s and CPU per request of a plain GET loop, so that an allocator
# that gives memory back does not cost throughput unnoticed.
# Needs: nginx, wrk, python3, taskset, curl (Debian: apt-get install -y
# nginx-light wrk).
#
#   bench/memory.sh                                  # about 30 minutes
#   CANDIDATES="glibc jemalloc-bg" bench/memory.sh   # a subset
#   REPS=5 DUR=10 bench/memory.sh                    # more throughput rounds
#
# Candidates (name = build + environment):
#   glibc          the system allocator (no #[global_allocator])
#   jemalloc       tikv-jemallocator, background threads off: freed pages
#                  decay (dirty_decay_ms 10 s) only when the allocator is
#                  called again
#   jemalloc-bg    tikv-jemallocator, background threads on: a jemalloc
#                  thread purges after dirty_decay_ms (10 s) even when idle
#   jemalloc-bg-1s as jemalloc-bg, dirty_decay_ms 1 s
#   mimalloc       mimalloc, defaults
#   tree           the working tree as it is (whatever proxy/src/main.rs has)
#
# Every candidate but `tree` is built from a copy of the working tree whose
# allocator lines (the `#[global_allocator]` item of proxy/src/main.rs and the
# allocator line of proxy/Cargo.toml's [dependencies]) are replaced, with one
# release target dir under $WORK (not the shared target/). Variants of one
# build differ only by environment (`_RJEM_MALLOC_CONF`, jemalloc's runtime
# config under tikv's symbol prefix).
#
# Attacks, each on a fresh process (pool of 4,096 upstream connections so
# that all of them are in flight at once):
#   a) 2,000 concurrent keep-alive connections, each a POST /read with a
#      256 KiB body (route "/", no filter; nginx reads the body, answers 200),
#      all held open until the last answer, then closed;
#   b) 20 concurrent 8 MiB POSTs to /upload, through a retry filter with
#      max_body_bytes 16MiB (and max_buffered_bytes 256MiB): every body is
#      kept whole for a retry while it goes up; nginx reads each body whole
#      before answering (proxy_request_buffering), so every copy is held
#      until its body is all sent.
# Each attack gets a fresh kaname, which serves 10 GETs and one small upload
# first (so lazy start-up allocations are not counted as the attack's);
# "before" is its RSS right before the attack. Output: tables on stdout, every sample in
# $WORK/memory.tsv.
set -euo pipefail
CANDIDATES=${CANDIDATES:-"glibc jemalloc jemalloc-bg jemalloc-bg-1s mimalloc tree"}
REPS=${REPS:-3}
DUR=${DUR:-10}
CONNS=${CONNS:-32}
A_CONNS=${A_CONNS:-2000}
A_BODY=${A_BODY:-262144}
B_POSTS=${B_POSTS:-20}
B_BODY=${B_BODY:-8388608}
AFTER=${AFTER:-60}
STEP=${STEP:-5}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${WORK:-${TMPDIR:-/tmp}/kaname-memory-bench}
RUN=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$RUN"; }
trap cleanup EXIT

for tool in nginx wrk python3 taskset curl; do
  command -v "$tool" >/dev/null || { echo "missing $tool (see the header of $0)" >&2; exit 2; }
done
need_fds=$(( A_CONNS * 4 + 1024 ))
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt "$need_fds" ]; then
  ulimit -n "$need_fds" 2>/dev/null || { echo "need ulimit -n >= $need_fds" >&2; exit 2; }
fi
mkdir -p "$WORK/bin"

# --- builds --------------------------------------------------------------
build_of() { case $1 in jemalloc*) echo jemalloc ;; *) echo "$1" ;; esac; }
env_of() {
  case $1 in
    jemalloc) echo "_RJEM_MALLOC_CONF=background_thread:false" ;;
    jemalloc-bg) echo "_RJEM_MALLOC_CONF=background_thread:true" ;;
    jemalloc-bg-1s) echo "_RJEM_MALLOC_CONF=background_thread:true,dirty_decay_ms:1000" ;;
    *) echo "KANAME_BENCH_CANDIDATE=$1" ;;
  esac
}
# The allocator lines of each build: the Cargo.toml dependency and the
# Rust item appended to main.rs.
dep_of() {
  case $1 in
    jemalloc) echo 'tikv-jemallocator = "0.7"' ;;
    mimalloc) echo 'mimalloc = "0.1.52"' ;;
    *) echo '' ;;
  esac
}
item_of() {
  case $1 in
    jemalloc) echo '#[global_allocator] static BENCH_ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;' ;;
    mimalloc) echo '#[global_allocator] static BENCH_ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;' ;;
    *) echo '' ;;
  esac
}

export CARGO_TARGET_DIR=$WORK/target
build() { # build name -> $WORK/bin/kaname-NAME
  local b=$1 src=$WORK/src-$1
  if [ "$b" = tree ]; then
    src=$ROOT
  else
    rm -rf "$src"; mkdir -p "$src"
    tar -C "$ROOT" --exclude=./target --exclude=./.git --exclude=./fuzz -cf - . | tar -C "$src" -xf -
    DEP=$(dep_of "$b") ITEM=$(item_of "$b") python3 - "$src" <<'EOF'
import os, re, sys
src = sys.argv[1]
main = os.path.join(src, "proxy/src/main.rs")
lines = open(main).read().split("\n")
out, skip = [], False
for line in lines:
    if skip:  # the item after #[global_allocator] (one line here)
        skip = not line.rstrip().endswith(";")
        continue
    if line.strip().startswith("#[global_allocator]"):
        skip = not line.rstrip().endswith(";")
        continue
    out.append(line)
text = "\n".join(out)
if os.environ["ITEM"]:
    text += "\n" + os.environ["ITEM"] + "\n"
open(main, "w").write(text)
toml = os.path.join(src, "proxy/Cargo.toml")
t = open(toml).read()
t = re.sub(r"(?m)^(tikv-jemallocator|tikv-jemalloc-ctl|mimalloc)\s*=.*\n", "", t)
if os.environ["DEP"]:
    t = t.replace("[dependencies]\n", "[dependencies]\n" + os.environ["DEP"] + "\n", 1)
open(toml, "w").write(t)
EOF
  fi
  echo "== building kaname (release, $b) in $src" >&2
  (cd "$src" && cargo build --release -p kaname --bin kaname >&2)
  cp "$CARGO_TARGET_DIR/release/kaname" "$WORK/bin/kaname-$b"
}
BUILT=" "
for c in $CANDIDATES; do
  b=$(build_of "$c")
  case $BUILT in *" $b "*) ;; *) build "$b"; BUILT+="$b " ;; esac
done

# --- peers ---------------------------------------------------------------
wait_port() { # port
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listening on $1" >&2; exit 3
}
wait_closed() { # port
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null || return 0
    sleep 0.05
  done
}

# nginx: / answers "ok" at once; /upload and /read read the whole body
# (proxy request buffering, in memory) before passing it to the "ok" server.
# (An upstream that answers before the body is read makes kaname close some
# client connections while their bodies are still coming: resets, not load.)
mkdir -p "$RUN/nginx/tmp"
cat >"$RUN/nginx.conf" <<'EOF'
pid nginx.pid;
error_log stderr warn;
worker_rlimit_nofile 20000;
events { worker_connections 16384; }
http {
    access_log off;
    server_tokens off;
    default_type text/plain;
    keepalive_requests 10000000;
    keepalive_timeout 75s;
    client_max_body_size 0;
    client_body_temp_path tmp/body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;
    server {
        listen 127.0.0.1:18280 backlog=4096;
        location / { return 200 "ok"; }
        location ~ ^/(upload|read) {
            client_body_buffer_size 16m;
            proxy_pass http://127.0.0.1:18281;
        }
    }
    server {
        listen 127.0.0.1:18281 backlog=4096;
        location / { return 200 "ok"; }
    }
}
EOF
taskset -c 0 nginx -e stderr -p "$RUN/nginx" -c "$RUN/nginx.conf" \
  -g 'daemon off; worker_processes 1;' 2>"$RUN/nginx.log" & PIDS+=($!)
wait_port 18280

cat >"$RUN/kaname.yaml" <<'EOF'
admin: { listen: "127.0.0.1:${ADMIN_PORT}" }
log: { level: warn, format: text, access_log: false }
listeners:
  bench:
    listen: "127.0.0.1:${LISTEN_PORT}"
    routes:
      - match: { path_prefix: /upload }
        upstream: nginx
        filters: [retries]
      - match: { path_prefix: / }
        upstream: nginx
upstreams:
  nginx:
    endpoints: [127.0.0.1:18280]
    load_balancing: round_robin
    pool: { max_connections_per_endpoint: 4096 }
filters:
  retries:
    retry:
      attempts: 2
      retry_on: [connect_failure, reset, 503]
      methods: [POST]
      max_body_bytes: 16MiB
      max_buffered_bytes: 256MiB
EOF

# The attack client: N concurrent connections, each one request with a
# body of SIZE bytes written in 64 KiB slices of one shared buffer; all
# held open until the last answer, then closed. Prints "ok=… failed=… s=…".
cat >"$RUN/attack.py" <<'EOF'
import asyncio, sys, time
port, path, n, size = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
body = memoryview(b"x" * size)
head = (f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {size}\r\n\r\n").encode()

async def one():
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(head)
    for i in range(0, size, 65536):
        w.write(body[i:i + 65536])
        await w.drain()
    status_line = await r.readuntil(b"\r\n")
    rest = await r.readuntil(b"\r\n\r\n")
    length = 0
    for line in rest.decode("latin-1").split("\r\n"):
        if line.lower().startswith("content-length:"):
            length = int(line.split(":", 1)[1])
    if length:
        await r.readexactly(length)
    return status_line.split()[1] == b"200", w

async def main():
    t = time.monotonic()
    results = await asyncio.wait_for(
        asyncio.gather(*(one() for _ in range(n)), return_exceptions=True), 300)
    ok = sum(1 for x in results if not isinstance(x, BaseException) and x[0])
    for x in results:
        if not isinstance(x, BaseException):
            x[1].close()
    errs = {repr(x)[:60] for x in results if isinstance(x, BaseException)}
    print(f"ok={ok} failed={n - ok} s={time.monotonic() - t:.1f}" + (f" errors={sorted(errs)[:3]}" if errs else ""))

asyncio.run(main())
EOF

rss() { awk '/^VmRSS/{print $2}' "/proc/$1/status"; }
hwm() { awk '/^VmHWM/{print $2}' "/proc/$1/status"; }

start_kaname() { # candidate listen-port admin-port [taskset cpu list] [extra env...]
  local c=$1 port=$2 admin=$3 cpus=$4; shift 4
  # shellcheck disable=SC2046
  env LISTEN_PORT="$port" ADMIN_PORT="$admin" $(env_of "$c") "$@" \
    taskset -c "$cpus" "$WORK/bin/kaname-$(build_of "$c")" run -c "$RUN/kaname.yaml" \
    2>"$RUN/kaname-$c-$port.log" & PIDS+=($!)
  STARTED=$!
  wait_port "$port"
}

TSV=$WORK/memory.tsv
printf 'candidate\tattack\tbefore_kib\tpeak_kib\tt_s\trss_kib\n' >"$TSV"
declare -A MEM
attack() { # candidate pid name path n size
  local c=$1 pid=$2 name=$3 path=$4 n=$5 size=$6 before peak line t r first=-
  before=$(rss "$pid")
  echo 5 >"/proc/$pid/clear_refs" 2>/dev/null || true
  line=$(python3 "$RUN/attack.py" 18300 "$path" "$n" "$size")
  peak=$(hwm "$pid")
  echo "   $c attack $name: $line, RSS before $before KiB, peak $peak KiB" >&2
  r=$(rss "$pid")
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$c" "$name" "$before" "$peak" 0 "$r" >>"$TSV"
  local series="$r"
  [ "$r" -le $(( 2 * before )) ] && first=0
  for t in $(seq "$STEP" "$STEP" "$AFTER"); do
    sleep "$STEP"
    r=$(rss "$pid")
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$c" "$name" "$before" "$peak" "$t" "$r" >>"$TSV"
    series+=" $r"
    [ "$first" = - ] && [ "$r" -le $(( 2 * before )) ] && first=$t
  done
  MEM["$c|$name"]="$before|$peak|$series|$first|${line%% s=*}"
}

# --- memory --------------------------------------------------------------
echo "== memory: attacks and the 60 s after" >&2
# A fresh process for each attack, so that "before" is an idle kaname's.
for c in $CANDIDATES; do
  for a in a b; do
    start_kaname "$c" 18300 18390 0-1
    pid=$STARTED
    for _ in $(seq 1 10); do curl -s -o /dev/null http://127.0.0.1:18300/; done
    curl -s -o /dev/null --data-binary 'small' http://127.0.0.1:18300/upload
    sleep 2
    case $a in
      a) attack "$c" "$pid" a /read "$A_CONNS" "$A_BODY" ;;
      b) attack "$c" "$pid" b /upload "$B_POSTS" "$B_BODY" ;;
    esac
    kill "$pid"; wait "$pid" 2>/dev/null || true
    wait_closed 18300
  done
done

# --- throughput ----------------------------------------------------------
# Pinned as bench/run.sh: nginx and kaname (KANAME_WORKERS=1) on core 0,
# wrk on core 1; candidates interleaved, REPS rounds of DUR seconds.
echo "== throughput: GET loop, $REPS x ${DUR}s per candidate" >&2
declare -A TPID TPORT
i=0
for c in $CANDIDATES; do
  start_kaname "$c" $(( 18301 + i )) $(( 18391 + i )) 0 KANAME_WORKERS=1
  TPID[$c]=$STARTED; TPORT[$c]=$(( 18301 + i )); i=$(( i + 1 ))
  code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:${TPORT[$c]}/")
  [ "$code" = 200 ] || { echo "$c answered $code, not 200" >&2; exit 4; }
done
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)
run_wrk() { # candidate seconds -> "rps cpu_us_per_req"
  local c=$1 d=$2 pid=${TPID[$1]} before after out n
  before=$(cpu_ticks "$pid")
  out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${d}s" "http://127.0.0.1:${TPORT[$c]}/" 2>&1)
  after=$(cpu_ticks "$pid")
  n=$(awk '/requests in/{print $1}' <<<"$out")
  awk -v n="$n" -v a="$after" -v b="$before" -v t="$TICK" -v d="$d" \
    'BEGIN{ printf "%.0f %.1f\n", n / d, (a - b) / t * 1e6 / n }'
}
for c in $CANDIDATES; do run_wrk "$c" 2 >/dev/null; done  # warm-up
declare -A TP
set -- $CANDIDATES
ncand=$#
CANDS=($CANDIDATES)
for rep in $(seq 1 "$REPS"); do
  for j in $(seq 0 $(( ncand - 1 ))); do
    c=${CANDS[$(( (j + rep - 1) % ncand ))]}
    echo "   rep $rep/$REPS: $c" >&2
    TP[$c]+="$(run_wrk "$c" "$DUR");"
  done
done
median() { tr ';' '\n' | awk -v f="$1" 'NF{print $f}' | sort -n | awk '{a[NR]=$1} END{ if (NR%2) print a[(NR+1)/2]; else printf "%.1f\n", (a[NR/2]+a[NR/2+1])/2 }'; }
range() { tr ';' '\n' | awk -v f="$1" 'NF{print $f}' | sort -n | awk 'NR==1{lo=$1} {hi=$1} END{ print lo "–" hi }'; }

# --- tables --------------------------------------------------------------
mib() { awk -v k="$1" 'BEGIN{ printf "%.1f", k / 1024 }'; }
echo
echo "Memory (MiB; a fresh kaname per attack; RSS every ${STEP} s after the attack ends; ≤2× at: first sample within 2× of before)"
echo
printf '| candidate | attack | result | before | peak | end | +10 s | +20 s | +30 s | +%s s | +%s s ÷ before | ≤2× at |\n' "$AFTER" "$AFTER"
printf '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n'
for c in $CANDIDATES; do
  for a in a b; do
    IFS='|' read -r before peak series first res <<<"${MEM["$c|$a"]}"
    read -r -a s <<<"$series"
    pick() { local idx=$(( $1 / STEP )); if [ "$idx" -lt "${#s[@]}" ]; then mib "${s[$idx]}"; else echo -; fi; }
    at="${first} s"; [ "$first" = - ] && at="not in ${AFTER} s"
    ratio=$(awk -v l="${s[-1]}" -v b="$before" 'BEGIN{ printf "%.2f", l / b }')
    printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$c" "$a" "$res" \
      "$(mib "$before")" "$(mib "$peak")" "$(pick 0)" "$(pick 10)" "$(pick 20)" "$(pick 30)" "$(pick "$AFTER")" "$ratio" "$at"
  done
done
echo
echo "Throughput (GET /, wrk -t1 -c$CONNS, $REPS × ${DUR} s interleaved; kaname KANAME_WORKERS=1 on core 0, wrk on core 1)"
echo
printf '| candidate | req/s (median, range) | CPU µs/req (median, range) | RSS after |\n| --- | --- | --- | --- |\n'
for c in $CANDIDATES; do
  r=${TP[$c]}
  printf '| %s | %s (%s) | %s (%s) | %s MiB |\n' "$c" "$(median 1 <<<"$r")" "$(range 1 <<<"$r")" \
    "$(median 2 <<<"$r")" "$(range 2 <<<"$r")" "$(mib "$(rss "${TPID[$c]}")")"
done
echo
echo "every sample: $TSV"
