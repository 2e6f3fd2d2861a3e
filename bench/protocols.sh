#!/usr/bin/env bash
# TLS, HTTP/2 and gRPC against HAProxy 2.6, run by hand (never by the
# tests; issue 25 item 5). kaname (bench/kaname-protocols.yaml) and HAProxy
# (bench/peers/haproxy-protocols.cfg) do the same five jobs, one listener
# (frontend) each, with no filters or rules:
#
#   1. TLS termination, keep-alive: wrk -t1 -cCONNS over https (HTTP/1.1)
#      -> nginx (HTTP/1.1, 18080)
#   2. new TLS connections, full handshakes only: openssl s_time -new
#   3. the same with mutual TLS (the client presents a certificate, the
#      proxy requires and verifies it)
#   4. HTTP/2 (h2c prior knowledge), h2load -cH2_CONNS -mH2_STREAMS
#      -> nginx (HTTP/1.1, 18080); kaname's pool keeps up to 1024 idle
#      connections, as HAProxy keeps them all; a second row with kaname's
#      default pool (64 idle), which closes and opens connections under
#      800 requests in flight
#   5. gRPC unary calls over h2c, h2load POSTs with a framed message
#      -> an HTTP/2 upstream (bench/peers/nginx-grpc.conf, 18520)
#
# Pinned as bench/run.sh: the proxies and both nginx on core 0 (kaname
# KANAME_WORKERS=1, HAProxy nbthread 1, nginx one worker), the load client
# on core 1. The figure is the proxy's CPU (utime + stime of the process in
# /proc/PID/stat, before and after) per request or per handshake; the two
# proxies' rows are interleaved over REPS rounds of DUR seconds and the
# medians printed as one markdown table on stdout (progress on stderr),
# and the upstream HTTP/2 connections each proxy held in the gRPC row.
# Exit 1 when any run had errors (named in the table).
#
#   bench/protocols.sh [KANAME_BIN]        # default target/release/kaname; 3 reps x 5 s
#   REPS=5 DUR=8 bench/protocols.sh
#
# Needs (Debian): wrk nghttp2-client (h2load, nghttp) nginx-light haproxy
# openssl curl. Ports: 18500-18599, and nginx's 18080 (bench/lib.sh).
set -euo pipefail
REPS=${REPS:-3}
DUR=${DUR:-5}
CONNS=${CONNS:-32}
H2_CONNS=${H2_CONNS:-8}
H2_STREAMS=${H2_STREAMS:-100}
# s_time runs one handshake at a time; HS_CLIENTS of them run side by side
# (all on core 1) so that the proxy is not idle while a client computes.
HS_CLIENTS=${HS_CLIENTS:-2}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=$ROOT/bench
KANAME=${1:-$ROOT/target/release/kaname}
. "$BENCH/lib.sh"
need wrk h2load nghttp nginx haproxy openssl curl taskset timeout
[ -x "$KANAME" ] || { echo "no $KANAME: cargo build --release -p kaname first" >&2; exit 2; }

# Another script's nginx or proxy on one of these ports would answer in
# place of ours (wait_port only sees that something listens).
for p in 18080 18500 18501 18502 18503 18504 18509 18510 18511 18512 18513 18520; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "port $p is in use (another benchmark?)" >&2; exit 3; fi
done

# --- certificates (TLS_DIR) and the gRPC call and upstream (lib.sh).
make_certs
grpc_files

# --- the upstreams, then the proxies, everything on core 0.
start_nginx
start_nginx_grpc
start_kaname kaname "$BENCH/kaname-protocols.yaml" 18500 18509
for p in 18501 18502 18503 18504; do wait_port $p; done
taskset -c 0 haproxy -db -f "$BENCH/peers/haproxy-protocols.cfg" 2>"$RUN/haproxy.log" & PIDS+=($!)
PID_haproxy=$!
for p in 18510 18511 18512 18513; do wait_port $p; done

# --- every target answers what it should before anything is measured (a
# refusal would be fast and wrong).
fail() { echo "check failed: $*" >&2; exit 4; }
CURL=(curl -s --max-time 5 -o /dev/null)
for p in 18500 18510; do
  # wrk speaks HTTP/1.1 and offers no ALPN.
  r=$("${CURL[@]}" -w '%{http_code} %{http_version}' --http1.1 --cacert "$TLS_DIR/ca.crt" "https://127.0.0.1:$p/")
  [ "$r" = "200 1.1" ] || fail "https on $p answered '$r'"
done
for p in 18501 18511; do
  r=$("${CURL[@]}" -w '%{http_code}' --http1.1 --cacert "$TLS_DIR/ca.crt" --cert "$TLS_DIR/client.crt" --key "$TLS_DIR/client.key" "https://127.0.0.1:$p/")
  [ "$r" = 200 ] || fail "mTLS on $p answered '$r' to a client with a certificate"
  # Without a certificate the connection must fail: s_time cannot tell
  # (TLS 1.3 finishes the client's side first), so check it here.
  r=$("${CURL[@]}" -w '%{http_code}' --http1.1 --cacert "$TLS_DIR/ca.crt" "https://127.0.0.1:$p/" || true)
  [ "$r" = 000 ] || fail "mTLS on $p answered '$r' to a client without a certificate"
done
for p in 18502 18504 18512; do
  r=$("${CURL[@]}" -w '%{http_code} %{http_version}' --http2-prior-knowledge "http://127.0.0.1:$p/")
  [ "$r" = "200 2" ] || fail "h2c on $p answered '$r'"
done
# gRPC: 200, the upstream's 8-byte message, then grpc-status 0 in the
# trailers (a HEADERS frame after the DATA). nghttp shows the frames;
# curl 7.88 drops the response now and then when trailers follow.
for p in 18520 18503 18513; do
  out=$(timeout 10 nghttp -v -d "$RUN/call.bin" "${GRPC_H[@]}" "http://127.0.0.1:$p$GRPC_PATH" 2>&1 | tr -d '\000' || true)
  awk '/recv \(stream_id=[0-9]+\) :status: 200/{s=1} /recv DATA frame <length=8,/{d=s} d && /recv \(stream_id=[0-9]+\) grpc-status: 0/{ok=1} END{exit !ok}' <<<"$out" \
    || fail "gRPC on $p: $(grep -a -E ':status|grpc-|DATA' <<<"$out" | tr '\n' ' ')"
done

# What each TLS listener negotiates with OpenSSL's client defaults (wrk and
# s_time use the same library and defaults), and how many TLS 1.3 session
# tickets it sends after a full handshake (work s_time -new never uses).
tls_line() { # port [s_client args...]
  local port=$1 out; shift
  out=$( (sleep 0.5) | timeout 5 openssl s_client -connect "127.0.0.1:$port" -CAfile "$TLS_DIR/ca.crt" -msg "$@" 2>&1 || true)
  printf '%s, %s, %s, %s session tickets' \
    "$(grep -a -m1 -oE 'TLSv1\.[0-9]' <<<"$(grep -a -m1 -E '^ *Protocol *:' <<<"$out")")" \
    "$(grep -a -m1 -E '^ *Cipher *:' <<<"$out" | sed -E 's/.*: *//')" \
    "$(grep -a -m1 -E '^Server Temp Key' <<<"$out" | sed -E 's/^Server Temp Key: *//')" \
    "$(grep -a -c 'NewSessionTicket' <<<"$out")"
}
CLIENT_CERT=(-cert "$TLS_DIR/client.crt" -key "$TLS_DIR/client.key")
TLS_NOTES=(
  "kaname TLS: $(tls_line 18500)"
  "HAProxy TLS: $(tls_line 18510)"
  "kaname mTLS: $(tls_line 18501 "${CLIENT_CERT[@]}")"
  "HAProxy mTLS: $(tls_line 18511 "${CLIENT_CERT[@]}")"
)

# --- one measurement: "rate cpu_us_per_unit errors upstream_conns" for
# DUR seconds. Every load command is bounded by its own duration and by
# timeout(1). Halfway through, the proxy's connections to the upstream port
# (UP) are counted: the two proxies need not hold the same number.
measure() { # kind port pid [upstream port]
  local kind=$1 port=$2 pid=$3 up=${4:-} before after out line n rate err sampler=""
  echo - >"$RUN/conns"
  if [ -n "$up" ]; then
    (sleep "$(awk -v d="$DUR" 'BEGIN{print d / 2}')"
     ss -Htnp state established "( dport = :$up )" | grep -c "pid=$pid," >"$RUN/conns" || true) & sampler=$!
  fi
  before=$(ticks "$pid")
  case $kind in
    wrk)
      out=$(DELAY_MS=0 timeout $((DUR + 30)) taskset -c 1 wrk -t1 -c"$CONNS" -d"${DUR}s" \
              -s "$BENCH/percentiles.lua" "https://127.0.0.1:$port/" 2>&1 || true)
      after=$(ticks "$pid")
      line=$(grep KANAME_BENCH <<<"$out") || { echo "wrk on $port: $out" >&2; exit 5; }
      n=$(sed -E 's/.*requests=([0-9]+).*/\1/' <<<"$line")
      err=$(sed -E 's/.*errors=([0-9]+).*/\1/' <<<"$line")
      rate=$(awk -v n="$n" -v us="$(sed -E 's/.*duration_us=([0-9]+).*/\1/' <<<"$line")" 'BEGIN{printf "%.0f", n/(us/1e6)}')
      ;;
    hs|mhs)
      # HS_CLIENTS s_time, each: full handshakes only (-new), no request.
      local i t0 t1 args=() clients=()
      [ "$kind" = mhs ] && args=("${CLIENT_CERT[@]}")
      t0=$(date +%s.%N)
      for i in $(seq 1 "$HS_CLIENTS"); do
        timeout $((DUR + 30)) taskset -c 1 openssl s_time -connect "127.0.0.1:$port" -new -time "$DUR" \
          -CAfile "$TLS_DIR/ca.crt" "${args[@]}" >"$RUN/s_time.$i" 2>&1 & clients+=($!)
      done
      wait "${clients[@]}" 2>/dev/null || true
      t1=$(date +%s.%N)
      after=$(ticks "$pid")
      # "N connections in T real seconds": one line per client; a client
      # whose handshake fails stops at once and prints none.
      n=0; err=0
      for i in $(seq 1 "$HS_CLIENTS"); do
        local c; c=$(grep -a -oE '^[0-9]+ connections in [0-9]+ real' "$RUN/s_time.$i" | grep -oE '^[0-9]+') || { c=0; err=$((err + 1)); }
        n=$((n + c))
      done
      rate=$(awk -v n="$n" -v a="$t0" -v b="$t1" 'BEGIN{printf "%.0f", n/(b-a)}')
      ;;
    h2|grpc)
      local extra=() path=/
      [ "$kind" = grpc ] && extra=(-d "$RUN/call.bin" "${GRPC_H[@]}") && path=$GRPC_PATH
      out=$(timeout $((DUR + 30)) taskset -c 1 h2load -c"$H2_CONNS" -m"$H2_STREAMS" -D "$DUR" "${extra[@]}" \
              "http://127.0.0.1:$port$path" 2>&1 || true)
      after=$(ticks "$pid")
      line=$(grep -E '^requests:' <<<"$out") || { echo "h2load on $port: $out" >&2; exit 5; }
      n=$(sed -E 's/.* ([0-9]+) succeeded.*/\1/' <<<"$line")
      # failed + errored + timeout, and any answer that is not 2xx.
      err=$(awk '/^requests:/{for(i=1;i<=NF;i++) if ($(i+1) ~ /^(failed|errored|timeout)/) e+=$i}
                 /^status codes:/{for(i=1;i<=NF;i++) if ($(i+1) ~ /^[345]xx/) e+=$i} END{print e+0}' <<<"$out")
      rate=$(grep -E '^finished in' <<<"$out" | sed -E 's/.*, ([0-9.]+) req\/s.*/\1/' | cut -d. -f1)
      ;;
  esac
  [ -z "$sampler" ] || wait "$sampler" || true
  awk -v n="$n" -v r="$rate" -v e="$err" -v a="$after" -v b="$before" -v t="$TICK" -v c="$(cat "$RUN/conns")" \
    'BEGIN{ if (n > 0) printf "%s %.2f %d %s\n", r, (a-b)/t*1e6/n, e, c; else printf "0 0 %d %s\n", e + 1, c }'
}

# row | kind | kaname port | HAProxy port | upstream port whose connections
# are counted (the gRPC one only: nginx 18080 serves several rows, and the
# idle connections of one row's run are still held in the next)
ROWS=(
  "TLS termination, keep-alive (wrk -c$CONNS, HTTP/1.1), per request|wrk|18500|18510|"
  "new TLS connections, full handshakes (s_time -new x$HS_CLIENTS), per handshake|hs|18500|18510|"
  "new mTLS connections, full handshakes, client certificate verified, per handshake|mhs|18501|18511|"
  "HTTP/2 h2c, $H2_CONNS conns x $H2_STREAMS streams, to HTTP/1.1, per request|h2|18502|18512|"
  "the same, kaname's default pool (64 idle connections kept)|h2|18504|18512|"
  "gRPC unary over h2c, $H2_CONNS conns x $H2_STREAMS streams, to h2c, per call|grpc|18503|18513|18520"
)
# One target per row and proxy (HAProxy's h2c frontend twice, once for each
# kaname pool); rotated each round (A B C …, B C … A) so that no target
# always runs first or after the same neighbour.
TARGETS=()
for i in "${!ROWS[@]}"; do
  IFS='|' read -r _ kind kp hp up <<<"${ROWS[$i]}"
  TARGETS+=("$i|kaname|$kind|$kp|$PID_kaname|$up" "$i|HAProxy|$kind|$hp|$PID_haproxy|$up")
done

echo "== warm-up (2 s each)" >&2
for t in "${TARGETS[@]}"; do
  IFS='|' read -r _ _ kind port pid up <<<"$t"
  DUR=2 measure "$kind" "$port" "$pid" "$up" >/dev/null
done
declare -A R
n=${#TARGETS[@]}
for rep in $(seq 1 "$REPS"); do
  for i in $(seq 0 $((n - 1))); do
    IFS='|' read -r row who kind port pid up <<<"${TARGETS[$(( (i + rep - 1) % n ))]}"
    echo "   rep $rep/$REPS: $who $kind :$port" >&2
    res=$(measure "$kind" "$port" "$pid" "$up")
    [ "$(cut -d' ' -f3 <<<"$res")" = 0 ] || echo "   !! $who $kind :$port: $(cut -d' ' -f3 <<<"$res") errors in this run" >&2
    R["$row|$who"]+="$res;"
  done
done

# --- the table: medians of CPU per unit (with the range of the REPS runs:
# this machine moves by tens of percent) and of the rate, and the ratios
# kaname / HAProxy of the medians; then the upstream connections counted.
errors() { tr ';' '\n' | awk 'NF{e+=$3} END{print e+0}'; }
span() { tr ';' '\n' | awk -v f="$1" 'NF{print $f}' | sort -n | awk 'NR==1{lo=$1} {hi=$1} END{printf "%s–%s", lo, hi}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b > 0) printf "%.2f", a/b; else print "-" }'; }
echo
# The tree's commit says which code only if the binary was built from it:
# the binary's time is printed beside it.
echo "$("$KANAME" --version 2>/dev/null | head -1 || true) (binary of $(date -u -r "$KANAME" '+%Y-%m-%d %H:%M UTC'), tree at git $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo "?")) against $(haproxy -v | head -1 | cut -d' ' -f1-3), $(date -u +%Y-%m-%d)"
echo "$REPS reps x ${DUR}s, interleaved, medians; proxies one thread on core 0 with nginx, the client on core 1; CPU = the proxy's utime+stime"
for t in "${TLS_NOTES[@]}"; do echo "  $t"; done
echo
echo "| row | kaname CPU µs (range) | HAProxy CPU µs (range) | CPU kaname/HAProxy | kaname /s | HAProxy /s | rate kaname/HAProxy |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
bad=0
notes=()
for i in "${!ROWS[@]}"; do
  IFS='|' read -r name kind _ _ up <<<"${ROWS[$i]}"
  k=${R["$i|kaname"]}; h=${R["$i|HAProxy"]}
  kc=$(median 2 <<<"$k"); hc=$(median 2 <<<"$h"); kr=$(median 1 <<<"$k"); hr=$(median 1 <<<"$h")
  [ -z "$up" ] || notes+=("${name%%,*}: upstream connections halfway through a run, kaname $(median 4 <<<"$k"), HAProxy $(median 4 <<<"$h")")
  e=$(( $(errors <<<"$k") + $(errors <<<"$h") ))
  [ "$e" = 0 ] || { name="$name (**$e errors**)"; bad=1; }
  printf '| %s | %s (%s) | %s (%s) | %s | %s | %s | %s |\n' "$name" "$kc" "$(span 2 <<<"$k")" "$hc" "$(span 2 <<<"$h")" \
    "$(ratio "$kc" "$hc")" "$kr" "$hr" "$(ratio "$kr" "$hr")"
done
echo
for t in "${notes[@]}"; do echo "$t"; done
# s_time closes each connection right after its Finished: kaname's session
# tickets then meet a reset, which it counts as a failed handshake (the
# client certificate has been verified by then: one from an unknown CA
# fails as UnknownIssuer every time, never as a reset).
echo "kaname_tls_handshake_failures_total after the run (s_time's closes): $(curl -s --max-time 5 http://127.0.0.1:18509/metrics |
  awk -F'[" ]' '/^kaname_tls_handshake_failures_total/{printf "%s%s %s", sep, $2, $NF; sep=", "}')"
exit $bad
