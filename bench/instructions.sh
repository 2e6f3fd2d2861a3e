#!/usr/bin/env bash
# Instructions per request, by callgrind: a figure that does not move with
# the machine's load (bench/run.sh's CPU times move by tens of percent on a
# shared VM), so a change of a few percent shows. Run by hand.
#
#   bench/instructions.sh [KANAME_BIN]          # default target/release/kaname
#
# Each kaname config (passthrough, full chain, full chain + 10-rule
# authorize), the bare hyper proxy (proxy/examples/hyper_floor.rs) and
# HAProxy 2.6 (passthrough, and JWT + stick table) run under valgrind
# --tool=callgrind with one thread in front of nginx; a keep-alive client
# sends WARM then N requests. The figure is the instructions of the N
# requests (callgrind's dump after them, which starts where the dump after
# the warm-up ended), divided by N: start-up and warm-up are not counted.
# Then protocols.sh's TLS, HTTP/2 and gRPC rows for kaname and HAProxy
# (below), when h2load and openssl are installed.
# ONLY="hyper HAProxy" measures only the rows whose names contain one of
# the words; CG_KEEP=DIR keeps the profiles for callgrind_annotate.
set -euo pipefail
N=${N:-2000}
WARM=${WARM:-200}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=$ROOT/bench
KANAME=${1:-$ROOT/target/release/kaname}
. "$BENCH/lib.sh"
HYPER_FLOOR=${HYPER_FLOOR:-$(dirname "$KANAME")/examples/hyper_floor}
need valgrind callgrind_control nginx python3 taskset
mint_tokens
start_nginx
wanted() {
  [ -z "${ONLY:-}" ] && return 0
  local w
  for w in $ONLY; do [[ "$1" == *"$w"* ]] && return 0; done
  return 1
}
measure() { wanted "$1" && callgrind_ir "$@"; return 0; }
echo "| config | instructions per request |"
echo "| --- | --- |"
# kaname-passthrough.yaml has its ports written in: 18100, admin 18190.
measure passthrough "$BENCH/kaname-passthrough.yaml" 18100 18190
measure "full chain (HS256)" "$BENCH/kaname-full.yaml" 18302 18392
if env JWT_SECRET=bench-shared-secret-0123456789abcdef LISTEN_PORT=1 ADMIN_PORT=2 "$KANAME" check -c "$BENCH/kaname-authorize.yaml" >/dev/null 2>&1; then
  measure "full chain + authorize (10 rules)" "$BENCH/kaname-authorize.yaml" 18303 18393
fi
if [ -x "$HYPER_FLOOR" ] && wanted "bare hyper proxy"; then
  callgrind_cmd "bare hyper proxy (floor)" 18109 "$HYPER_FLOOR" 127.0.0.1:18109 127.0.0.1:18080
fi
if command -v haproxy >/dev/null; then
  wanted "HAProxy passthrough" && callgrind_cmd "HAProxy passthrough" 18082 haproxy -db -f "$BENCH/peers/haproxy-plain.cfg"
  wanted "HAProxy JWT" && callgrind_cmd "HAProxy JWT + stick table" 18081 haproxy -db -f "$BENCH/peers/haproxy.cfg"
fi

# protocols.sh's rows, same configs and peers, when h2load and openssl are
# here: TLS keep-alive (HTTP/1.1), HTTP/2 h2c with 8 connections of 100
# streams to HTTP/1.1 nginx, gRPC unary calls to an h2c upstream; the
# HTTP/2 rows count 20,000 requests after 4,000.
protocol_row() { # kind name port cmd...
  local kind=$1 name=$2
  shift 2
  wanted "$name" || return 0
  case $kind in
    tls) CG_CLIENT=cg_https callgrind_cmd "$name" "$@" ;;
    *) CG_CLIENT=cg_$kind N=${H2_N:-20000} WARM=${H2_WARM:-4000} callgrind_cmd "$name" "$@" ;;
  esac
}
if command -v h2load >/dev/null && command -v openssl >/dev/null; then
  make_certs
  grpc_files
  start_nginx_grpc
  K=(env KANAME_WORKERS=1 "$KANAME" run -c "$BENCH/kaname-protocols.yaml")
  H=(haproxy -db -f "$BENCH/peers/haproxy-protocols.cfg")
  for row in "tls|TLS keep-alive|18500|18510" "h2|HTTP/2 8 x 100 streams to HTTP/1.1|18502|18512" \
    "grpc|gRPC unary 8 x 100 streams to h2c|18503|18513"; do
    IFS='|' read -r kind label kport hport <<<"$row"
    protocol_row "$kind" "kaname $label" "$kport" "${K[@]}"
    command -v haproxy >/dev/null && protocol_row "$kind" "HAProxy $label" "$hport" "${H[@]}"
  done
fi
