#!/usr/bin/env python3
"""Checks for deploy/cluster/fault_test.sh that need several STEP
connections at once (written from /work/shared/STEP.md). Each prints one
JSON line and exits 0 when the check holds.

    stepprobe.py race-file HOST PORT,PORT,... USER KEY SIZE
        one client per port, released together: SAVE the same KEY, then
        upload its own content (different for each). Holds when exactly one
        client got the md5, it is the md5 of its content, every port's GET
        names that md5, a download from each port is that content, and a
        later SAVE of the key is refused (402) everywhere.
    stepprobe.py race-data HOST PORT,PORT,... USER KEY
        one DATA SAVE of KEY per port, released together: exactly one 200,
        the others 402, and every port's GET returns the winner's record.
    stepprobe.py get HOST PORT USER KEY
        FILE GET: prints its status and md5 (exit 0 whatever the status).
"""

import hashlib
import json
import os
import socket
import struct
import sys
import threading


class Conn:
    def __init__(self, host, port, user):
        self.sock = socket.create_connection((host, port), timeout=60)
        reply, _ = self.call(request("LOGIN", "AUTH", username=user,
                                     password=hashlib.md5(user.encode()).hexdigest()))
        if reply["status"] != 200:
            raise RuntimeError(f"LOGIN on {port}: {reply}")
        self.token = reply["token"]

    def call(self, msg, binary=b""):
        body = json.dumps(msg).encode()
        self.sock.sendall(struct.pack("!II", len(body), len(binary)) + body + binary)
        n, m = struct.unpack("!II", self.exact(8))
        reply = json.loads(self.exact(n).decode())
        return reply, self.exact(m) if m else b""

    def exact(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("closed by the server")
            buf += chunk
        return buf

    def req(self, op, kind, binary=b"", **fields):
        return self.call(request(op, kind, token=self.token, **fields), binary)

    def download(self, key):
        plan, _ = self.req("GET", "FILE", key=key)
        if plan["status"] != 200:
            return None
        data = b""
        for i in range(plan["total_block"]):
            reply, block = self.req("DOWNLOAD", "FILE", key=key, block_index=i)
            if reply["status"] != 200:
                return None
            data += block
        return data


def request(op, kind, **fields):
    return dict(operation=op, type=kind, direction="REQUEST", **fields)


def together(ports, work):
    """Run work(i, port) for each port in its own thread, released at once."""
    results = [None] * len(ports)
    gate = threading.Barrier(len(ports))

    def run(i, port):
        try:
            results[i] = work(i, port, gate)
        except Exception as e:  # reported, never hidden
            results[i] = {"error": repr(e)}

    threads = [threading.Thread(target=run, args=(i, p)) for i, p in enumerate(ports)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def race_file(host, ports, user, key, size):
    contents = [os.urandom(size) for _ in ports]
    conns = [Conn(host, p, user) for p in ports]

    def work(i, port, gate):
        c = conns[i]
        gate.wait()
        plan, _ = c.req("SAVE", "FILE", key=key, size=size)
        out = {"port": port, "save": plan["status"], "md5": None, "last": None}
        if plan["status"] != 200:
            return out
        bs = plan["block_size"]
        for b in range(plan["total_block"]):
            reply, _ = c.req("UPLOAD", "FILE", binary=contents[i][b * bs:(b + 1) * bs], key=key, block_index=b)
            out["last"] = reply["status"]
            if reply["status"] != 200:
                return out
            if reply.get("md5"):
                out["md5"] = reply["md5"]
        return out

    results = together(ports, work)
    winners = [i for i, r in enumerate(results) if r and r.get("md5")]
    ok = len(winners) == 1
    checks = {"winners": len(winners), "results": results}
    if ok:
        w = winners[0]
        want = hashlib.md5(contents[w]).hexdigest()
        checks["winner_md5_right"] = results[w]["md5"] == want
        ok = ok and checks["winner_md5_right"]
        for i, port in enumerate(ports):
            c = conns[i]
            plan, _ = c.req("GET", "FILE", key=key)
            data = c.download(key)
            again, _ = c.req("SAVE", "FILE", key=key, size=size)
            checks[f"port{port}"] = {"get_md5_is_winner": plan.get("md5") == want,
                                     "download_is_winner": data == contents[w],
                                     "save_again": again["status"]}
            ok = ok and plan.get("md5") == want and data == contents[w] and again["status"] == 402
    checks["ok"] = ok
    return ok, checks


def race_data(host, ports, user, key):
    conns = [Conn(host, p, user) for p in ports]

    def work(i, port, gate):
        gate.wait()
        reply, _ = conns[i].req("SAVE", "DATA", key=key, who=i)
        return {"port": port, "status": reply["status"]}

    results = together(ports, work)
    winners = [i for i, r in enumerate(results) if r.get("status") == 200]
    refused = [i for i, r in enumerate(results) if r.get("status") == 402]
    ok = len(winners) == 1 and len(refused) == len(ports) - 1
    checks = {"winners": len(winners), "refused_402": len(refused), "results": results}
    if ok:
        for i, port in enumerate(ports):
            got, _ = conns[i].req("GET", "DATA", key=key)
            same = got.get("status") == 200 and got.get("who") == winners[0]
            checks[f"port{port}_get_is_winner"] = same
            ok = ok and same
    checks["ok"] = ok
    return ok, checks


def main():
    cmd, host = sys.argv[1], sys.argv[2]
    if cmd == "race-file":
        ports = [int(p) for p in sys.argv[3].split(",")]
        ok, out = race_file(host, ports, sys.argv[4], sys.argv[5], int(sys.argv[6]))
    elif cmd == "race-data":
        ports = [int(p) for p in sys.argv[3].split(",")]
        ok, out = race_data(host, ports, sys.argv[4], sys.argv[5])
    elif cmd == "get":
        c = Conn(host, int(sys.argv[3]), sys.argv[4])
        reply, _ = c.req("GET", "FILE", key=sys.argv[5])
        ok, out = True, {"status": reply["status"], "md5": reply.get("md5")}
    else:
        print(f"unknown command {cmd}", file=sys.stderr)
        sys.exit(64)
    print(json.dumps(out))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
