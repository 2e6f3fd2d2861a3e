#!/usr/bin/env bash
# The soak, run by hand (never by the tests): kaname under a bounded mixed
# load for DURATION (default 30m) while its upstream flaps and its config
# reloads; RSS, open fds and the in-flight / open-connection gauges are
# sampled every SAMPLE seconds (default 60).
#
#   bench/soak.sh                       # 30 minutes, release build
#   DURATION=5m bench/soak.sh           # a quick check
#   KANAME=target/debug/kaname DURATION=5m bench/soak.sh
#
# Load (python3 threads, HTTP/1.1 keep-alive), all through jwt + rate_limit
# + retry on one route, two upstream endpoints (python http.server):
#   - "normal" clients: a valid HS256 token, their own x-client, ~40 req/s
#     each: every answer must be 200 (a retry covers the flapping endpoint);
#   - "bad" clients: forged, expired or absent tokens: must get 401;
#   - "greedy" clients: valid token, one shared x-client, no pause, over the
#     60/s per-key limit: 200 or 429.
# B is ejected by outlier detection and health checks while down.
# Faults: endpoint B is killed for FLAP_DOWN s every FLAP_EVERY s; the config
# is reloaded (POST /reload) every RELOAD_EVERY s, alternating two files.
#
# Output: one line per sample, then the totals; "lost" counts requests that
# got a connection error or an answer their class must never get. Exit 1
# when anything was lost. Results also go to $OUT (default bench/soak.tsv).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DURATION=${DURATION:-30m}
SAMPLE=${SAMPLE:-60}
FLAP_EVERY=${FLAP_EVERY:-90}
FLAP_DOWN=${FLAP_DOWN:-30}
RELOAD_EVERY=${RELOAD_EVERY:-60}
OUT=${OUT:-$ROOT/bench/soak.tsv}
KANAME=${KANAME:-$ROOT/target/release/kaname}
PORT=${PORT:-18300}
ADMIN=${ADMIN:-18390}
UP_A=${UP_A:-18381}
UP_B=${UP_B:-18382}
export JWT_SECRET=${JWT_SECRET:-soak-shared-secret-0123456789abcdef}

case $DURATION in
  *m) SECS=$(( ${DURATION%m} * 60 )) ;;
  *s) SECS=${DURATION%s} ;;
  *) SECS=$DURATION ;;
esac
[ -x "$KANAME" ] || { echo "no kaname at $KANAME (cargo build --release -p kaname)" >&2; exit 2; }
for tool in python3 curl; do
  command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 2; }
done

RUN=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -n "${PID_B:-}" ] && kill "$PID_B" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$RUN"
}
trap cleanup EXIT

wait_port() { # port
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listening on $1" >&2; exit 3
}

start_upstream() { # port -> pid
  mkdir -p "$RUN/www"
  echo ok >"$RUN/www/index.html"
  python3 -m http.server "$1" --bind 127.0.0.1 --directory "$RUN/www" >/dev/null 2>&1 &
  echo $!
}

write_config() { # file burst
  cat >"$1" <<EOF
admin: { listen: "127.0.0.1:$ADMIN" }
log: { level: warn, format: text, access_log: false }
listeners:
  main:
    listen: "127.0.0.1:$PORT"
    routes:
      - match: { path_prefix: / }
        upstream: web
        filters: [auth, per-client, retries]
upstreams:
  web:
    endpoints: [127.0.0.1:$UP_A, 127.0.0.1:$UP_B]
    load_balancing: round_robin
    # A dead endpoint is ejected after a few failures and probed back in:
    # retries alone would spend their budget on it.
    outlier_detection: { consecutive_failures: 3, eject_for: 5s, max_ejected_percent: 50 }
    health_check: { path: /index.html, interval: 1s, timeout: 500ms, unhealthy_after: 2, healthy_after: 2 }
filters:
  auth:
    jwt: { issuer: soak, audiences: [soak-api], algorithms: [HS256], secret: "\${JWT_SECRET}" }
  per-client:
    rate_limit: { key: "header:x-client", rate: 60/s, burst: $2 }
  retries:
    retry:
      attempts: 3
      retry_on: [connect_failure, reset, 502, 503]
      budget: { ratio: 0.2, min_per_second: 50 }
EOF
}

PID_A=$(start_upstream "$UP_A"); PIDS+=("$PID_A")
PID_B=$(start_upstream "$UP_B")
wait_port "$UP_A"; wait_port "$UP_B"
write_config "$RUN/a.yaml" 60
write_config "$RUN/b.yaml" 61
cp "$RUN/a.yaml" "$RUN/kaname.yaml"
"$KANAME" check -c "$RUN/kaname.yaml" >/dev/null
"$KANAME" run -c "$RUN/kaname.yaml" 2>"$RUN/kaname.log" & PID_K=$!; PIDS+=("$PID_K")
wait_port "$PORT"

# The load: python3 threads; totals to $RUN/totals.json at the end.
cat >"$RUN/load.py" <<'EOF'
import base64, hashlib, hmac, http.client, json, os, sys, threading, time
port, secs, out = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
secret = os.environ["JWT_SECRET"].encode()
def b64(b): return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
def token(exp_in, key=secret, iss="soak"):
    h = b64(b'{"alg":"HS256","typ":"JWT"}')
    c = b64(json.dumps({"iss": iss, "aud": "soak-api", "sub": "u", "exp": int(time.time()) + exp_in}).encode())
    return h + "." + c + "." + b64(hmac.new(key, (h + "." + c).encode(), hashlib.sha256).digest())
good = token(86400)
bads = [token(-3600), token(86400, key=b"not-the-secret"), token(86400, iss="evil"), None, "garbage"]
lock = threading.Lock()
totals = {}
def count(cls, outcome):
    with lock:
        totals.setdefault(cls, {}).setdefault(outcome, 0)
        totals[cls][outcome] += 1
deadline = time.time() + secs
def client(cls, n):
    conn = None
    i = 0
    while time.time() < deadline:
        i += 1
        headers = {}
        if cls == "normal":
            headers = {"authorization": "Bearer " + good, "x-client": f"normal-{n}"}
        elif cls == "greedy":
            headers = {"authorization": "Bearer " + good, "x-client": "greedy"}
        else:
            t = bads[i % len(bads)]
            headers = {"x-client": f"bad-{n}"}
            if t: headers["authorization"] = "Bearer " + t
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/index.html", headers=headers)
            r = conn.getresponse(); r.read()
            s = r.status
            ok = {"normal": s == 200, "greedy": s in (200, 429), "bad": s == 401}[cls]
            count(cls, str(s) if ok else f"lost:{s}")
            if r.getheader("connection", "").lower() == "close":
                conn.close(); conn = None
        except Exception as e:
            count(cls, f"lost:{type(e).__name__}")
            try: conn.close()
            except Exception: pass
            conn = None
        if cls == "normal": time.sleep(0.025)
        elif cls == "bad": time.sleep(0.01)
threads = [threading.Thread(target=client, args=(c, n)) for c, k in (("normal", 3), ("bad", 2), ("greedy", 1)) for n in range(k)]
for t in threads: t.start()
for t in threads: t.join()
json.dump(totals, open(out, "w"))
EOF
python3 "$RUN/load.py" "$PORT" "$SECS" "$RUN/totals.json" & PID_L=$!; PIDS+=("$PID_L")

gauge() { # name
  curl -s "http://127.0.0.1:$ADMIN/metrics" | awk -v n="$1" '$1 ~ "^"n"[{ ]" || $1 == n {s+=$2} END {print s+0}'
}
sample() { # minute
  local rss fds
  rss=$(awk '/^VmRSS/ {print $2}' "/proc/$PID_K/status")
  fds=$(ls "/proc/$PID_K/fd" | wc -l)
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$rss" "$fds" "$(gauge kaname_requests_in_flight)" \
    "$(gauge kaname_connections_open)" "$flaps" "$reloads" | tee -a "$OUT"
}

printf 'elapsed_s\trss_kib\tfds\tin_flight\tconns_open\tflaps\treloads\n' | tee "$OUT"
start=$(date +%s); next_sample=0; next_flap=$FLAP_EVERY; next_reload=$RELOAD_EVERY
flaps=0; reloads=0; b_down_until=0; reload_fail=0
while kill -0 "$PID_L" 2>/dev/null; do
  now=$(( $(date +%s) - start ))
  if (( now >= next_sample )); then sample "$now"; next_sample=$(( next_sample + SAMPLE )); fi
  if (( now >= next_flap )); then
    kill "$PID_B" 2>/dev/null || true; wait "$PID_B" 2>/dev/null || true
    b_down_until=$(( now + FLAP_DOWN )); flaps=$(( flaps + 1 )); next_flap=$(( next_flap + FLAP_EVERY ))
  fi
  if (( b_down_until > 0 && now >= b_down_until )); then
    PID_B=$(start_upstream "$UP_B"); b_down_until=0
  fi
  if (( now >= next_reload )); then
    if (( reloads % 2 == 0 )); then cp "$RUN/b.yaml" "$RUN/kaname.yaml"; else cp "$RUN/a.yaml" "$RUN/kaname.yaml"; fi
    code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "http://127.0.0.1:$ADMIN/reload")
    [ "$code" = 200 ] || reload_fail=$(( reload_fail + 1 ))
    reloads=$(( reloads + 1 )); next_reload=$(( next_reload + RELOAD_EVERY ))
  fi
  kill -0 "$PID_K" 2>/dev/null || { echo "kaname died; its log:" >&2; cat "$RUN/kaname.log" >&2; exit 1; }
  sleep 1
done
wait "$PID_L" || true
sample "$(( $(date +%s) - start ))"
echo "== totals (class -> outcome: count); flaps=$flaps reloads=$reloads reload_failures=$reload_fail"
python3 - "$RUN/totals.json" <<'EOF'
import json, sys
t = json.load(open(sys.argv[1]))
lost = 0
for cls, outcomes in sorted(t.items()):
    n = sum(outcomes.values())
    l = sum(v for k, v in outcomes.items() if k.startswith("lost"))
    lost += l
    print(f"{cls:7} {n:8} requests  {dict(sorted(outcomes.items()))}")
print(f"lost: {lost}")
sys.exit(1 if lost else 0)
EOF
