-- wrk script: print p50/p99/p99.9 in microseconds at the end, and, when
-- DELAY_MS is set, pace each connection (a fixed-rate run at a given load).
-- AUTH_TOKEN adds a bearer token.
local delay_ms = tonumber(os.getenv("DELAY_MS") or "0")
local auth = os.getenv("AUTH_TOKEN")
if auth and auth ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. auth
end
-- BODY_BYTES=n: POST a body of n bytes (the queue benchmark).
local body_bytes = tonumber(os.getenv("BODY_BYTES") or "0")
if body_bytes > 0 then
  wrk.method = "POST"
  wrk.body = string.rep("x", body_bytes)
end
if delay_ms > 0 then
  function delay() return delay_ms end
end
function done(summary, latency, requests)
  io.write(string.format("KANAME_BENCH requests=%d errors=%d duration_us=%d p50=%d p99=%d p999=%d\n",
    summary.requests,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status + summary.errors.timeout,
    summary.duration, latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
