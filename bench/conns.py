#!/usr/bin/env python3
"""Memory of idle keep-alive connections, for bench/run.sh (run by hand).

    conns.py PID PORT N [TOKEN]

Reads the proxy's RSS, opens N keep-alive connections to 127.0.0.1:PORT and
sends one request on each, one after the other (so every connection has been through the whole
chain and holds whatever a used connection keeps), reads the RSS again while
all N are open and idle, then closes them. Prints one line:
``idle_kib=… open_kib=… per_conn_kib=…``. Exits 1 if a request failed.
"""
import socket
import sys
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise SystemExit(f"no VmRSS for pid {pid}")


def main():
    pid, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    token = sys.argv[4] if len(sys.argv) > 4 else ""
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    request = f"GET / HTTP/1.1\r\nHost: bench\r\n{auth}\r\n".encode()
    idle = rss_kib(pid)
    socks = []
    # One request at a time: each client connection is measured, not a
    # thousand upstream connections opened for a thousand concurrent calls.
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(request)
        # A keep-alive 200 with a small body fits one read.
        head = s.recv(65536)
        if not head.startswith(b"HTTP/1.1 200"):
            print(f"a request failed: {head[:40]!r}", file=sys.stderr)
            return 1
        socks.append(s)
    time.sleep(0.5)  # let the proxy finish the bookkeeping after each answer
    opened = rss_kib(pid)
    for s in socks:
        s.close()
    per = (opened - idle) / n
    print(f"idle_kib={idle} open_kib={opened} per_conn_kib={per:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
