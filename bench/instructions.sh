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
. "$BENCH/lib.sh"
need valgrind callgrind_control nginx python3 taskset
mint_tokens
start_nginx
measure() { callgrind_ir "$@"; }
echo "| config | instructions per request |"
echo "| --- | --- |"
# kaname-passthrough.yaml has its ports written in: 18100, admin 18190.
measure passthrough "$BENCH/kaname-passthrough.yaml" 18100 18190
measure "full chain (HS256)" "$BENCH/kaname-full.yaml" 18302 18392
if env JWT_SECRET=bench-shared-secret-0123456789abcdef LISTEN_PORT=1 ADMIN_PORT=2 "$KANAME" check -c "$BENCH/kaname-authorize.yaml" >/dev/null 2>&1; then
  measure "full chain + authorize (10 rules)" "$BENCH/kaname-authorize.yaml" 18303 18393
fi
