#!/usr/bin/env python3
"""Whether `graft serve` stays reachable while slow clients hold connections.

Starts `BIN serve BUNDLE` under `ulimit -n FDS`, opens N connections that send a request
header one byte a second and never finish it, then probes `GET /healthz` once a second
(2 s timeout each) for --seconds and prints how many probes were answered.

    scripts/bench_slow_clients.py grocery-model --bin main=/work/main/target/release/graft \
        --bin this=target/release/graft --connections 1100 --fds 1024
"""

import argparse
import http.client
import resource
import socket
import subprocess
import sys
import threading
import time


def run(binary, bundle, connections, fds, seconds):
    server = subprocess.Popen(
        ["bash", "-c", f'ulimit -n {fds} && exec "$0" serve "$1" --addr 127.0.0.1:0',
         binary, bundle],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    line = server.stdout.readline().decode().strip()
    if not line.startswith("listening on http://"):
        server.kill()
        sys.exit(f"{binary} serve did not start: {line!r}")
    port = int(line.rsplit(":", 1)[1])
    time.sleep(3)  # the network's warm-up
    slow = []
    for _ in range(connections):
        s = socket.create_connection(("127.0.0.1", port))
        s.setblocking(False)
        slow.append(s)
    header = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 10000
    stop = threading.Event()

    def trickle():
        for i in range(len(header)):
            if stop.is_set():
                return
            for s in slow:
                try:
                    s.send(header[i:i + 1])
                except OSError:
                    pass
            time.sleep(1)

    threading.Thread(target=trickle, daemon=True).start()
    started, answered, failed = time.time(), [], 0
    while time.time() - started < seconds:
        t = time.time()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                answered.append(t - started)
            else:
                failed += 1
        except (OSError, http.client.HTTPException):
            failed += 1
        time.sleep(max(0.0, 1 - (time.time() - t)))
    stop.set()
    server.kill()
    server.wait()
    for s in slow:
        s.close()
    return answered, failed


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle")
    parser.add_argument("--bin", action="append", default=[],
                        help="NAME=PATH of a graft binary (repeatable; default this=target/release/graft)")
    parser.add_argument("--connections", type=int, default=1100)
    parser.add_argument("--fds", type=int, default=1024, help="the server's ulimit -n")
    parser.add_argument("--seconds", type=float, default=40)
    args = parser.parse_args()
    # The slow clients need their own descriptors.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.connections + 256
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    print(f"{args.connections} slow clients, server under ulimit -n {args.fds}, "
          f"/healthz probed once a second for {args.seconds:g} s")
    print("| binary | probes answered | probes failed | first answered after s |")
    print("|---|---|---|---|")
    for name, binary in (b.split("=", 1) for b in (args.bin or ["this=target/release/graft"])):
        answered, failed = run(binary, args.bundle, args.connections, args.fds, args.seconds)
        first = f"{answered[0]:.1f}" if answered else "-"
        print(f"| {name} | {len(answered)} | {failed} | {first} |", flush=True)


if __name__ == "__main__":
    main()
