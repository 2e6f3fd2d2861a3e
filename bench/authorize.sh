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
. "$BENCH/lib.sh"
need wrk nginx python3 taskset curl
(cd "$ROOT" && cargo build --release --locked -p kaname --bin kaname >&2)
KANAME=$ROOT/target/release/kaname
mint_tokens
start_nginx
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

start_kaname full "$BENCH/kaname-full.yaml" 18201 18291
start_kaname rules "$BENCH/kaname-authorize.yaml" 18202 18292
start_kaname external "$RUN/external.yaml" 18203 18293
TARGETS=("full chain|18201|PID_full" "full chain + authorize (10 rules)|18202|PID_rules" "full chain + authorize (external, cached)|18203|PID_external")
check_targets
interleave
