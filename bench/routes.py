#!/usr/bin/env python3
"""Large route tables, run by hand (never by the tests or CI).

    bench/routes.py                       # builds release, runs every case
    KANAME=/path/to/kaname bench/routes.py    # a prebuilt binary (no build)
    REQUESTS=2000 CASES=prefix bench/routes.py

Starts kaname with, one case after the other:

- ``base``:   1 prefix route (the RSS every case is compared with);
- ``prefix``: ROUTES (100,000) ``path_prefix: /r{i}/`` routes;
- ``regex``:  REGEX_ROUTES (10,000) ``path_regex: ^/re{i}/[0-9]+$`` routes;

all to one upstream (a tiny keep-alive HTTP server started here, in its own
process). For each case it reports the time from spawn to a 200 from the
admin ``/ready``, VmRSS at ready and after the requests, the RSS per route
beyond the ``base`` case (and the config text per route, for comparison),
and kaname's CPU (utime + stime from ``/proc/PID/stat``) per request for
REQUESTS keep-alive GETs to the *last* route, then to a path no route
matches (a 404: every index, or the whole linear scan, is walked).

kaname runs on core 0 with ``KANAME_WORKERS=1`` (as bench/run.sh), the
client and the upstream on core 1, when ``taskset`` is available.
Output: one line per case and a table on stdout.
"""
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROUTES = int(os.environ.get("ROUTES", "100000"))
REGEX_ROUTES = int(os.environ.get("REGEX_ROUTES", "10000"))
REQUESTS = int(os.environ.get("REQUESTS", "20000"))
# Requests for the 404 runs; the old linear scan takes milliseconds each.
MISS_REQUESTS = int(os.environ.get("MISS_REQUESTS", str(REQUESTS)))
CASES = os.environ.get("CASES", "base,prefix,regex").split(",")
READY_DEADLINE = float(os.environ.get("READY_DEADLINE", "600"))
WORKERS = os.environ.get("KANAME_WORKERS", "1")
TICK = os.sysconf("SC_CLK_TCK")
TASKSET = shutil.which("taskset")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pinned(core, argv):
    return [TASKSET, "-c", str(core)] + argv if TASKSET else argv


UPSTREAM = r"""
import socket, sys, threading
RESP = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nx-upstream: bench\r\n\r\nok"
def serve(c):
    buf = b""
    with c:
        while True:
            data = c.recv(65536)
            if not data:
                return
            buf += data
            while b"\r\n\r\n" in buf:
                _, buf = buf.split(b"\r\n\r\n", 1)
                c.sendall(RESP)
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(128)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""


def config(case, port, admin, up):
    lines = [
        f"admin: {{ listen: 127.0.0.1:{admin} }}",
        "log: { level: warn, format: text, access_log: false }",
        "listeners:",
        "  bench:",
        f"    listen: 127.0.0.1:{port}",
        "    routes:",
    ]
    if case == "base":
        lines += ["      - match: { path_prefix: /r0/ }", "        upstream: up"]
        last = "/r0/x"
    elif case == "prefix":
        for i in range(ROUTES):
            lines += [f"      - match: {{ path_prefix: /r{i}/ }}", "        upstream: up"]
        last = f"/r{ROUTES - 1}/x"
    elif case == "regex":
        for i in range(REGEX_ROUTES):
            lines += [f"      - match: {{ path_regex: \"^/re{i}/[0-9]+$\" }}", "        upstream: up"]
        last = f"/re{REGEX_ROUTES - 1}/12345"
    else:
        raise SystemExit(f"unknown case {case!r}")
    lines += ["upstreams:", "  up:", f"    endpoints: [127.0.0.1:{up}]", ""]
    return "\n".join(lines), last


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise SystemExit(f"no VmRSS for {pid}")


def cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 (1-based); fields[0] is field 3.
    return (int(fields[11]) + int(fields[12])) / TICK


def read_response(sock, buf):
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise SystemExit("connection closed by kaname")
        buf += data
    head, buf = buf.split(b"\r\n\r\n", 1)
    status = int(head.split(b" ", 2)[1])
    length = None
    chunked = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        while b"0\r\n\r\n" not in buf:
            buf += sock.recv(65536)
        buf = buf.split(b"0\r\n\r\n", 1)[1]
    else:
        length = length or 0
        while len(buf) < length:
            buf += sock.recv(65536)
        buf = buf[length:]
    return status, buf


def run_requests(pid, port, path, n, want):
    """n sequential keep-alive GETs; kaname's CPU seconds per request."""
    req = f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        buf = b""
        s.sendall(req)
        status, buf = read_response(s, buf)  # warm up (pool, caches)
        if status != want:
            raise SystemExit(f"GET {path}: {status}, wanted {want}")
        before = cpu_s(pid)
        started = time.monotonic()
        for _ in range(n):
            s.sendall(req)
            status, buf = read_response(s, buf)
            if status != want:
                raise SystemExit(f"GET {path}: {status}, wanted {want}")
        wall = time.monotonic() - started
        return (cpu_s(pid) - before) / n, n / wall


def wait_ready(proc, admin, started):
    url = f"http://127.0.0.1:{admin}/ready"
    while time.monotonic() - started < READY_DEADLINE:
        if proc.poll() is not None:
            raise SystemExit(f"kaname exited with {proc.returncode} before ready")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.02)
    raise SystemExit(f"kaname not ready within {READY_DEADLINE} s")


def run_case(kaname, case, up, tmp, base_rss):
    port, admin = free_port(), free_port()
    text, last = config(case, port, admin, up)
    path = os.path.join(tmp, f"{case}.yaml")
    with open(path, "w") as f:
        f.write(text)
    routes = {"base": 1, "prefix": ROUTES, "regex": REGEX_ROUTES}[case]
    env = dict(os.environ, KANAME_WORKERS=WORKERS)
    env.pop("RUST_LOG", None)
    started = time.monotonic()
    proc = subprocess.Popen(
        pinned(0, [kaname, "run", "-c", path]),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(os.path.join(tmp, f"{case}.log"), "w"),
    )
    try:
        ready = wait_ready(proc, admin, started)
        rss_ready = rss_kib(proc.pid)
        n_miss = MISS_REQUESTS if case != "base" else REQUESTS
        hit_cpu, hit_rps = run_requests(proc.pid, port, last, REQUESTS, 200)
        miss_cpu, miss_rps = run_requests(proc.pid, port, "/no/such/route", n_miss, 404)
        rss_after = rss_kib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(10)
    per_route = (rss_ready - base_rss) * 1024 / routes if base_rss is not None and case != "base" else None
    row = {
        "case": case,
        "routes": routes,
        "ready_s": ready,
        "rss_ready_kib": rss_ready,
        "rss_after_kib": rss_after,
        "per_route_b": per_route,
        "config_b_per_route": len(text) / routes,
        "hit_cpu_us": hit_cpu * 1e6,
        "hit_rps": hit_rps,
        "miss_cpu_us": miss_cpu * 1e6,
        "miss_rps": miss_rps,
        "requests": REQUESTS,
        "miss_requests": n_miss,
    }
    print(" ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    return row


def main():
    kaname = os.environ.get("KANAME")
    if not kaname:
        print("== building kaname (release)", file=sys.stderr)
        subprocess.run(
            ["cargo", "build", "--release", "--locked", "-p", "kaname", "--bin", "kaname"],
            cwd=ROOT,
            check=True,
        )
        kaname = os.path.join(ROOT, "target", "release", "kaname")
    up = free_port()
    upstream = subprocess.Popen(pinned(1, [sys.executable, "-c", UPSTREAM, str(up)]))
    # The client shares core 1 with the upstream.
    if TASKSET:
        os.sched_setaffinity(0, {1})
    tmp = tempfile.mkdtemp(prefix="kaname-routes-")
    rows = []
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", up), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        base_rss = None
        for case in CASES:
            row = run_case(kaname, case, up, tmp, base_rss)
            if case == "base":
                base_rss = row["rss_ready_kib"]
            rows.append(row)
    finally:
        upstream.terminate()
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    print("| case | routes | ready | RSS ready | RSS after | RSS/route beyond base | config text/route | CPU/req last route | CPU/req 404 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        per = f"{r['per_route_b']:.0f} B" if r["per_route_b"] is not None else "-"
        print(
            f"| {r['case']} | {r['routes']:,} | {r['ready_s']:.2f} s | {r['rss_ready_kib'] / 1024:.1f} MiB"
            f" | {r['rss_after_kib'] / 1024:.1f} MiB | {per} | {r['config_b_per_route']:.0f} B"
            f" | {r['hit_cpu_us']:.1f} µs | {r['miss_cpu_us']:.1f} µs |"
        )


if __name__ == "__main__":
    main()
