#!/usr/bin/env python3
"""Latency of an ordinary photo while attackers post pixel bombs to `graft serve`.

A pixel bomb is a 100-megapixel PNG of one colour: well under a megabyte on the wire,
over a gigabyte and seconds of CPU once decoded. For each binary given and each number of
attackers, the script starts `BIN serve BUNDLE` on a free loopback port, runs that many
attacker loops (each posts the bomb, waits for the answer, posts again) and one client
that posts PHOTO back to back for --seconds, and prints the client's p50/p99 latency.

    scripts/bench_pixel_bomb.py grocery-model photo.jpg \
        --bin main=/work/main/target/release/graft --bin this=target/release/graft

The bundle's backbone weights are read from GRAFT_HOME as `graft serve` does.
"""

import argparse
import http.client
import os
import struct
import subprocess
import sys
import threading
import time
import zlib


def bomb_png(side):
    """A side x side RGB PNG of one colour, compressed row by row."""
    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    row = b"\x00" + bytes([200, 120, 40]) * side
    deflate = zlib.compressobj(9)
    parts = [deflate.compress(row) for _ in range(side)]
    parts.append(deflate.flush())
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))


def post(port, body, content_type, timeout=120):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/v1/classify", body=body,
                     headers={"Content-Type": content_type})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def start(binary, bundle, extra):
    proc = subprocess.Popen([binary, "serve", bundle, "--addr", "127.0.0.1:0", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            env={**os.environ, "GRAFT_LOG": "warn"})
    line = proc.stdout.readline().decode().strip()
    if not line.startswith("listening on http://"):
        proc.kill()
        sys.exit(f"{binary} serve did not start: {line!r}")
    port = int(line.rsplit(":", 1)[1])
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                return proc, port
        except OSError:
            pass
        time.sleep(0.1)
    proc.kill()
    sys.exit(f"{binary} serve was not ready within 120 s")


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def run_one(binary, bundle, photo, bomb, attackers, seconds, extra):
    proc, port = start(binary, bundle, extra)
    stop = threading.Event()
    statuses = []

    def attack():
        while not stop.is_set():
            try:
                statuses.append(post(port, bomb, "image/png"))
            except OSError as e:
                statuses.append(type(e).__name__)

    threads = [threading.Thread(target=attack, daemon=True) for _ in range(attackers)]
    for t in threads:
        t.start()
    if attackers:
        time.sleep(1.0)  # let the bombs start decoding
    latencies, failures = [], 0
    end = time.time() + seconds
    while time.time() < end:
        started = time.perf_counter()
        try:
            status = post(port, photo, "image/jpeg")
        except OSError:
            status = None
        took = (time.perf_counter() - started) * 1000
        if status == 200:
            latencies.append(took)
        else:
            failures += 1
    stop.set()
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
    for t in threads:
        t.join(timeout=5)
    answered = {}
    for s in statuses:
        answered[s] = answered.get(s, 0) + 1
    return latencies, failures, answered


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle")
    parser.add_argument("photo")
    parser.add_argument("--bin", action="append", default=[],
                        help="NAME=PATH of a graft binary (repeatable; default this=target/release/graft)")
    parser.add_argument("--attackers", default="0,1,2,4")
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--side", type=int, default=10000, help="bomb width and height")
    parser.add_argument("--serve-arg", action="append", default=[],
                        help="extra argument for `graft serve` (repeatable)")
    args = parser.parse_args()
    binaries = [b.split("=", 1) for b in (args.bin or ["this=target/release/graft"])]
    photo = open(args.photo, "rb").read()
    bomb = bomb_png(args.side)
    print(f"bomb: {args.side}x{args.side} PNG, {len(bomb) / 1024:.0f} KB; "
          f"photo: {args.photo}, {len(photo) / 1024:.0f} KB; {args.seconds:g} s per row")
    print("| binary | attackers | photo requests | p50 ms | p99 ms | photo failures | bomb answers |")
    print("|---|---|---|---|---|---|---|")
    for attackers in [int(a) for a in args.attackers.split(",")]:
        for name, binary in binaries:
            latencies, failures, answered = run_one(
                binary, args.bundle, photo, bomb, attackers, args.seconds, args.serve_arg)
            p50 = f"{percentile(latencies, 50):.0f}" if latencies else "-"
            p99 = f"{percentile(latencies, 99):.0f}" if latencies else "-"
            bombs = ", ".join(f"{k}: {v}" for k, v in sorted(answered.items(), key=str)) or "-"
            print(f"| {name} | {attackers} | {len(latencies)} | {p50} | {p99} | {failures} | {bombs} |",
                  flush=True)


if __name__ == "__main__":
    main()
