#!/usr/bin/env python3
"""PUT many small files through the gateway with N concurrent clients.

    bench/small_puts.py URL --count 2000 --size 10240 --concurrency 32 --label L

Each worker thread keeps one HTTP/1.1 connection (http.client) and PUTs
/files/<label>-<i>; every answer must be 201 with the body's md5. Every file's content is its own
(its first bytes are <label>-<i>): a store of content-addressed blocks
(Garage) would otherwise write only the first. Prints one key=value line:
requests per second and latency percentiles (ms). Standard library only, so
it runs wherever python3 does (no load tool to install); its own overhead is
the same for every server it is pointed at in one run.
"""
import argparse
import hashlib
import http.client
import json
import os
import statistics
import threading
import time
import urllib.parse


def main():
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("--count", type=int, default=2000)
    p.add_argument("--size", type=int, default=10240)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--label", default="run")
    a = p.parse_args()
    u = urllib.parse.urlparse(a.url)
    base = os.urandom(a.size)
    latencies, errors = [], []
    lock = threading.Lock()
    next_i = iter(range(a.count))

    def worker():
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
        while True:
            with lock:
                i = next(next_i, None)
            if i is None:
                break
            stamp = f"{a.label}-{i}\n".encode()[:a.size]
            body = stamp + base[len(stamp):]
            want = hashlib.md5(body).hexdigest()
            started = time.perf_counter()
            try:
                conn.request("PUT", f"/files/{a.label}-{i}", body=body,
                             headers={"Content-Length": str(len(body))})
                r = conn.getresponse()
                answer = r.read()
                ok = r.status == 201 and json.loads(answer).get("md5") == want
            except (OSError, http.client.HTTPException, ValueError, AttributeError) as e:
                ok = False
                conn.close()
                conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
                r = e
            took = time.perf_counter() - started
            with lock:
                if ok:
                    latencies.append(took)
                else:
                    errors.append(getattr(r, "status", str(r)))
        conn.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(a.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    secs = time.perf_counter() - started
    lat = sorted(latencies)
    pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000 if lat else float("nan")
    print(f"label={a.label} op=small_put size={a.size} count={a.count} concurrency={a.concurrency} "
          f"ok={len(lat)} errors={len(errors)} secs={secs:.3f} req_per_s={len(lat) / secs:.1f} "
          f"p50_ms={pct(0.5):.2f} p99_ms={pct(0.99):.2f} "
          f"mean_ms={(statistics.mean(lat) * 1000 if lat else float('nan')):.2f}"
          + (f" first_error={str(errors[0]).replace(' ', '_').replace('=', ':')[:120]}" if errors else ""))


if __name__ == "__main__":
    main()
