#!/usr/bin/env python3
"""Latency of honest requests during a flood of wrong logins.

Against a step-server in accounts mode (STEP port) or a gateway in front of
one (HTTP): N concurrent clients from other loopback addresses loop on wrong
passwords for --secs seconds, while from 127.0.0.1 this measures, twice a
second, a correct login (a new connection each time) and a request with a
valid token; meanwhile it samples the server's CPU (% of one core) and RSS
from /proc. Prints one JSON object.

    login_flood.py step HOST:PORT --flood 300 --pid PID
    login_flood.py http HOST:PORT --flood 300 --pid PID
"""

import argparse
import asyncio
import base64
import json
import os
import statistics
import struct
import sys
import time

USER, PASSWORD = "alice", "alice pw"


def frame(obj):
    body = json.dumps(obj).encode()
    return struct.pack(">II", len(body), 0) + body


async def step_call(reader, writer, obj):
    writer.write(frame(obj))
    await writer.drain()
    head = await reader.readexactly(8)
    n, m = struct.unpack(">II", head)
    body = await reader.readexactly(n)
    if m:
        await reader.readexactly(m)
    return json.loads(body)


def login_req(user, password):
    return {"operation": "LOGIN", "type": "AUTH", "direction": "REQUEST",
            "username": user, "password": password}


async def open_from(source, host, port):
    return await asyncio.open_connection(host, port, local_addr=(source, 0))


async def step_flooder(i, host, port, until, counts):
    source = f"127.0.0.{10 + i % 50}"
    while time.monotonic() < until:
        try:
            r, w = await open_from(source, host, port)
            while time.monotonic() < until:
                resp = await step_call(r, w, login_req(f"user{i % 13}", "wrong"))
                counts[resp.get("reason", str(resp.get("status")))] = \
                    counts.get(resp.get("reason", str(resp.get("status"))), 0) + 1
            w.close()
        except (OSError, asyncio.IncompleteReadError):
            counts["closed"] = counts.get("closed", 0) + 1
            await asyncio.sleep(0.05)


async def http_request(host, port, method, path, headers, body=b"", source="127.0.0.1"):
    r, w = await open_from(source, host, port)
    try:
        head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
        for k, v in headers.items():
            head += f"{k}: {v}\r\n"
        head += f"Content-Length: {len(body)}\r\n\r\n"
        w.write(head.encode() + body)
        await w.drain()
        data = await r.read()
        return int(data.split(b" ", 2)[1]), data.split(b"\r\n\r\n", 1)[-1]
    finally:
        w.close()


def basic(user, password):
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def http_flooder(i, host, port, until, counts):
    source = f"127.0.0.{10 + i % 50}"
    while time.monotonic() < until:
        try:
            code, _ = await http_request(host, port, "GET", "/files/a.txt",
                                         {"Authorization": basic(USER, f"guess {i}")}, source=source)
            counts[str(code)] = counts.get(str(code), 0) + 1
        except (OSError, IndexError, ValueError):
            counts["closed"] = counts.get("closed", 0) + 1
            await asyncio.sleep(0.05)


def proc_sample(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return ticks, rss


async def sampler(pid, until, out):
    hz = os.sysconf("SC_CLK_TCK")
    last_t, (last_ticks, _) = time.monotonic(), proc_sample(pid)
    while time.monotonic() < until:
        await asyncio.sleep(0.5)
        t, (ticks, rss) = time.monotonic(), proc_sample(pid)
        out["cpu"].append(100.0 * (ticks - last_ticks) / hz / (t - last_t))
        out["rss_kb"].append(rss)
        last_t, last_ticks = t, ticks


async def timed(coro, bound):
    started = time.monotonic()
    try:
        ok = await asyncio.wait_for(coro, bound)
    except (asyncio.TimeoutError, OSError, asyncio.IncompleteReadError, ValueError, IndexError):
        ok = False
    return time.monotonic() - started, ok


async def flood_only(mode, host, port, n, secs):
    until = time.monotonic() + secs
    counts = {}
    flooder = step_flooder if mode == "step" else http_flooder
    tasks = [asyncio.create_task(flooder(i, host, port, until, counts)) for i in range(n)]
    await asyncio.sleep(max(0.0, until - time.monotonic()))
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    print(json.dumps(counts))


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--flood-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("mode", choices=["step", "http"])
    p.add_argument("addr")
    p.add_argument("--flood", type=int, default=300)
    p.add_argument("--secs", type=float, default=10)
    p.add_argument("--pid", type=int, required=True)
    a = p.parse_args()
    host, port = a.addr.rsplit(":", 1)
    port = int(port)
    if a.flood_only:
        return await flood_only(a.mode, host, port, a.flood, a.secs)

    # A token for the honest requests, taken before the flood.
    if a.mode == "step":
        r, w = await asyncio.open_connection(host, port)
        token = (await step_call(r, w, login_req(USER, PASSWORD)))["token"]
        await step_call(r, w, {"operation": "SAVE", "type": "DATA", "direction": "REQUEST",
                               "token": token, "key": f"r{time.time_ns()}"})
    else:
        code, body = await http_request(host, port, "POST", "/login",
                                        {"Content-Type": "application/json"},
                                        json.dumps({"username": USER, "password": PASSWORD}).encode())
        token = json.loads(body)["token"]
        await http_request(host, port, "PUT", "/files/a.txt",
                           {"Authorization": f"Bearer {token}"}, b"alice's")

    # The flood runs in a process of its own, so the honest client's
    # latencies are not its event loop's.
    flood = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--flood-only", a.mode, a.addr, "--flood", str(a.flood),
        "--secs", str(a.secs), "--pid", str(a.pid), stdout=asyncio.subprocess.PIPE)
    until = time.monotonic() + a.secs
    usage = {"cpu": [], "rss_kb": []}
    tasks = [asyncio.create_task(sampler(a.pid, until, usage))]
    await asyncio.sleep(1)

    logins, tokens = [], []
    while time.monotonic() < until - 0.5:
        if a.mode == "step":
            async def correct_login():
                r, w = await asyncio.open_connection(host, port)
                resp = await step_call(r, w, login_req(USER, PASSWORD))
                w.close()
                return resp.get("status") == 200
            async def token_request():
                resp = await step_call(r, w, {"operation": "GET", "type": "DATA",
                                              "direction": "REQUEST", "token": token, "key": "x"})
                return resp.get("status") in (200, 404)
        else:
            async def correct_login():
                code, _ = await http_request(host, port, "POST", "/login",
                                             {"Content-Type": "application/json"},
                                             json.dumps({"username": USER, "password": PASSWORD}).encode())
                return code == 200
            async def token_request():
                code, _ = await http_request(host, port, "GET", "/files/a.txt",
                                             {"Authorization": f"Bearer {token}"})
                return code == 200
        logins.append(await timed(correct_login(), 30))
        tokens.append(await timed(token_request(), 30))
        await asyncio.sleep(0.5)
    # The flood's requests still waiting for an answer are abandoned: the
    # run ends on time whatever the server still has queued.
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    out, _ = await flood.communicate()
    counts = json.loads(out or b"{}")

    def summary(samples):
        times = sorted(t for t, _ in samples)
        return {
            "n": len(samples),
            "ok": sum(1 for _, ok in samples if ok),
            "median_ms": round(1000 * statistics.median(times), 1) if times else None,
            "max_ms": round(1000 * times[-1], 1) if times else None,
        }

    print(json.dumps({
        "mode": a.mode,
        "flood": a.flood,
        "correct_login": summary(logins),
        "token_request": summary(tokens),
        "server_cpu_pct_median": round(statistics.median(usage["cpu"]), 1) if usage["cpu"] else None,
        "server_rss_mb_max": round(max(usage["rss_kb"]) / 1024, 1) if usage["rss_kb"] else None,
        "flood_answers": counts,
    }))


if __name__ == "__main__":
    asyncio.run(main())
