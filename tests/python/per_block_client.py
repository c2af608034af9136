#!/usr/bin/env python3
"""A STEP client that opens a new connection for every block, as some course
clients do (written for the tests from /work/shared/STEP.md; no course code):
LOGIN and SAVE on one connection, then each UPLOAD on a fresh connection
reusing the token. Behind a TCP balancer the blocks land on different
servers, so it only works when every instance shares the store and accepts
the others' tokens.

    per_block_client.py HOST PORT USER upload KEY FILE [--retries N]

A block whose connection breaks, or that gets a non-200 status, is sent
again on a new connection (up to N times in all, default 0: no retry);
when a retry is told the upload is gone (408 or 404), SAVE starts it over.
Prints one JSON line {"action", "status", "md5", "blocks", "connections",
"retries", "saves"}; exits 0 when the md5 the server sent is the file's,
1 on a STEP failure, 2 on an md5 mismatch.
"""

import hashlib
import json
import socket
import struct
import sys
import time


def call(host, port, msg, binary=b"", sock=None):
    """One request on `sock`, or on a new connection closed afterwards."""
    own = sock is None
    if own:
        sock = socket.create_connection((host, port), timeout=30)
    try:
        body = json.dumps(msg).encode()
        sock.sendall(struct.pack("!II", len(body), len(binary)) + body + binary)
        n, m = struct.unpack("!II", recv_exact(sock, 8))
        reply = json.loads(recv_exact(sock, n).decode())
        if m:
            recv_exact(sock, m)
        return reply
    finally:
        if own:
            sock.close()


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed by the server")
        buf += chunk
    return buf


def request(op, kind, **fields):
    return dict(operation=op, type=kind, direction="REQUEST", **fields)


def main():
    args = sys.argv[1:]
    retries = 0
    if "--retries" in args:
        i = args.index("--retries")
        retries = int(args[i + 1])
        del args[i:i + 2]
    host, port, user, action, key, path = args[0], int(args[1]), args[2], args[3], args[4], args[5]
    if action != "upload":
        print(f"unknown action {action}", file=sys.stderr)
        sys.exit(64)
    data = open(path, "rb").read()
    want = hashlib.md5(data).hexdigest()
    stats = dict(action=action, status=None, md5=None, blocks=0, connections=0, retries=0, saves=0)

    def finish(status, code):
        stats["status"] = status
        print(json.dumps(stats))
        sys.exit(code)

    password = hashlib.md5(user.encode()).hexdigest()
    sock = socket.create_connection((host, port), timeout=30)
    stats["connections"] += 1
    reply = call(host, port, request("LOGIN", "AUTH", username=user, password=password), sock=sock)
    if reply["status"] != 200:
        finish(reply["status"], 1)
    token = reply["token"]

    def save():
        stats["saves"] += 1
        stats["connections"] += 1
        return call(host, port, request("SAVE", "FILE", token=token, key=key, size=len(data)))

    plan = call(host, port, request("SAVE", "FILE", token=token, key=key, size=len(data)), sock=sock)
    stats["saves"] += 1
    sock.close()
    if plan["status"] != 200:
        finish(plan["status"], 1)
    bs, total = plan["block_size"], plan["total_block"]
    budget = retries
    i = 0
    md5 = None
    while i < total:
        status = None
        try:
            stats["connections"] += 1
            reply = call(host, port, request("UPLOAD", "FILE", token=token, key=key, block_index=i),
                         data[i * bs:(i + 1) * bs])
            status = reply["status"]
        except (OSError, ValueError) as e:
            reply = {"status": None, "error": str(e)}
        if status == 200:
            stats["blocks"] += 1
            md5 = reply.get("md5", md5)
            i += 1
            continue
        if budget <= 0:
            finish(status, 1)
        budget -= 1
        stats["retries"] += 1
        time.sleep(0.2)
        if status in (404, 408):
            # The upload is not (or no longer) planned: start it over.
            try:
                plan = save()
            except (OSError, ValueError):
                continue
            if plan["status"] == 200:
                i = 0
    stats["md5"] = md5
    if md5 != want:
        print(f"md5 mismatch: server {md5}, file {want}", file=sys.stderr)
        finish(200, 2)
    finish(200, 0)


if __name__ == "__main__":
    main()
