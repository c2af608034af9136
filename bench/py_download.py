#!/usr/bin/env python3
"""Download one file from a STEP server, stop-and-wait, the way a plain Python
client would (the course's client cannot download): LOGIN, FILE GET for the
plan, then one DOWNLOAD per block, each answered before the next is asked.
The bytes go to --output and their md5 is checked against the plan's, as
step-client's download does, so both clients do the same work.

    py_download.py --port P --key K --output PATH [--id bench] [--label L]

Prints one key=value line, like the other bench tools:
    label=L size=N secs=S mb_per_s=M
or `label=L error=...` (exit status 1) when anything fails.
"""
import argparse
import hashlib
import json
import socket
import struct
import sys
import time

# Peer-announced lengths are capped: a broken server must not make us
# allocate gigabytes.
MAX_JSON = 1 << 20
MAX_BIN = 64 << 20


class StepError(Exception):
    pass


def recv_exact(sock, n):
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise StepError(f"connection closed after {got} of {n} bytes")
        got += k
    return bytes(buf)


def request(sock, fields, expect_bin=False):
    body = json.dumps(fields, ensure_ascii=True).encode("ascii")
    sock.sendall(struct.pack(">II", len(body), 0) + body)
    n, m = struct.unpack(">II", recv_exact(sock, 8))
    if n > MAX_JSON or m > MAX_BIN:
        raise StepError(f"answer too large: json {n} bytes, binary {m} bytes")
    answer = json.loads(recv_exact(sock, n))
    data = recv_exact(sock, m) if m else b""
    if answer.get("status") != 200:
        raise StepError(f"{fields.get('operation')} answered {answer.get('status')}: {answer.get('status_msg')}")
    if expect_bin and not data:
        raise StepError(f"DOWNLOAD of block {fields.get('block_index')} carried no data")
    return answer, data


def download(args):
    with socket.create_connection((args.host, args.port), timeout=args.timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        password = hashlib.md5(args.id.encode()).hexdigest()
        auth, _ = request(sock, {"operation": "LOGIN", "type": "AUTH", "direction": "REQUEST",
                                 "username": args.id, "password": password})
        token = auth["token"]
        base = {"type": "FILE", "direction": "REQUEST", "token": token, "key": args.key}
        plan, _ = request(sock, dict(base, operation="GET"))
        size, blocks = int(plan["size"]), int(plan["total_block"])
        md5 = hashlib.md5()
        written = 0
        with open(args.output, "wb") as out:
            for i in range(blocks):
                _, data = request(sock, dict(base, operation="DOWNLOAD", block_index=i), expect_bin=True)
                out.write(data)
                md5.update(data)
                written += len(data)
        if written != size:
            raise StepError(f"got {written} bytes, the plan says {size}")
        if md5.hexdigest() != str(plan.get("md5", "")).lower():
            raise StepError(f"md5 {md5.hexdigest()} does not match the plan's {plan.get('md5')}")
        return size


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--id", default="bench")
    ap.add_argument("--key", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--label", default="python stop-and-wait download")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds per connect or answer")
    args = ap.parse_args()
    t0 = time.perf_counter()
    try:
        size = download(args)
    except (OSError, StepError, ValueError, KeyError) as e:
        print(f"label={args.label} error={type(e).__name__}:{str(e).replace(' ', '_')[:150]}")
        return 1
    secs = time.perf_counter() - t0
    print(f"label={args.label} size={size} secs={secs:.6f} mb_per_s={size / secs / 1e6:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
