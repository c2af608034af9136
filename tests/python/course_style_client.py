#!/usr/bin/env python3
"""A minimal STEP client that logs in the way the course's Python clients do:
password = md5(username) as hex, nothing else (written for the tests from
/work/shared/STEP.md; no course code). One action per run, one JSON line out:

    course_style_client.py HOST PORT USER login
    course_style_client.py HOST PORT USER upload KEY FILE
    course_style_client.py HOST PORT USER download KEY OUT
    course_style_client.py HOST PORT USER delete KEY

Prints {"action": ..., "status": N} with the status of the step that decided
the outcome (LOGIN's when the login is refused), and exits 0 on 200.
"""

import hashlib
import json
import socket
import struct
import sys


def send(sock, msg, binary=b""):
    body = json.dumps(msg).encode()
    sock.sendall(struct.pack("!II", len(body), len(binary)) + body + binary)


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def call(sock, msg, binary=b""):
    send(sock, msg, binary)
    n, m = struct.unpack("!II", recv_exact(sock, 8))
    reply = json.loads(recv_exact(sock, n).decode())
    return reply, recv_exact(sock, m) if m else b""


def request(op, kind, **fields):
    return dict(operation=op, type=kind, direction="REQUEST", **fields)


def main():
    host, port, user, action = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    args = sys.argv[5:]
    sock = socket.create_connection((host, port), timeout=30)

    def done(status):
        print(json.dumps({"action": action, "status": status}))
        sys.exit(0 if status == 200 else 1)

    password = hashlib.md5(user.encode()).hexdigest()
    reply, _ = call(sock, request("LOGIN", "AUTH", username=user, password=password))
    if reply["status"] != 200 or action == "login":
        done(reply["status"])
    token = reply["token"]

    if action == "upload":
        key, path = args
        data = open(path, "rb").read()
        reply, _ = call(sock, request("SAVE", "FILE", token=token, key=key, size=len(data)))
        if reply["status"] != 200:
            done(reply["status"])
        bs, total = reply["block_size"], reply["total_block"]
        for i in range(total):
            reply, _ = call(
                sock,
                request("UPLOAD", "FILE", token=token, key=key, block_index=i),
                data[i * bs:(i + 1) * bs],
            )
            if reply["status"] != 200:
                done(reply["status"])
        if reply.get("md5") != hashlib.md5(data).hexdigest():
            print("md5 mismatch", file=sys.stderr)
            sys.exit(2)
        done(200)
    elif action == "download":
        key, out = args
        plan, _ = call(sock, request("GET", "FILE", token=token, key=key))
        if plan["status"] != 200:
            done(plan["status"])
        data = b""
        for i in range(plan["total_block"]):
            reply, block = call(sock, request("DOWNLOAD", "FILE", token=token, key=key, block_index=i))
            if reply["status"] != 200:
                done(reply["status"])
            data += block
        if hashlib.md5(data).hexdigest() != plan["md5"]:
            print("md5 mismatch", file=sys.stderr)
            sys.exit(2)
        open(out, "wb").write(data)
        done(200)
    elif action == "delete":
        (key,) = args
        reply, _ = call(sock, request("DELETE", "FILE", token=token, key=key))
        done(reply["status"])
    else:
        print(f"unknown action {action}", file=sys.stderr)
        sys.exit(64)


if __name__ == "__main__":
    main()
