#!/usr/bin/env python3
"""Time uploads made by a public Python STEP client, in process.

The client module (the course's client.py, given by path: nothing of it is kept
in this repository) is imported and its own functions do the work:
`connection_and_token` (connect + LOGIN, not timed) and `upload_file` (SAVE,
every block stop-and-wait, the md5 check; timed with perf_counter). So the
figure measures the same span as step-bench: SAVE to the md5 answer.

    py_client_time.py --client /path/client.py --port P --label L \
        --sizes 9728,19456 --runs 10 [--timeout 30]

Prints one `key=value` line per run, like step-bench:
    label=L run=0 size=9728 secs=0.001234 mb_per_s=7.9
or `label=L run=0 size=9728 error=...` when the run failed or timed out.
"""
import argparse
import importlib.util
import logging
import os
import socket
import sys
import tempfile
import time
import types


def load_client(path):
    spec = importlib.util.spec_from_file_location("step_py_client", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class Collect(logging.Handler):
    """Keeps what the client logs; its verdict is in there."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []

    def emit(self, record):
        self.lines.append(str(record.msg))


def content(size, seed):
    # Deterministic, incompressible enough, different per size.
    import random

    r = random.Random(seed)
    return r.randbytes(size)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--client", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--label", required=True)
    ap.add_argument("--sizes", required=True, help="comma-separated byte counts")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--timeout", type=float, default=30.0)
    args = ap.parse_args()

    # The clients block forever on a server that stops answering.
    socket.setdefaulttimeout(args.timeout)
    client = load_client(args.client)
    logger = logging.getLogger("bench_py_client")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    collect = Collect()
    logger.addHandler(collect)
    devnull = open(os.devnull, "w")
    out = sys.stdout
    sys.stdout = devnull  # the client prints its token
    work = tempfile.mkdtemp(prefix="pyclient.")
    os.chdir(work)  # the client uses the path as typed as the key
    failed = 0
    for size in [int(s) for s in args.sizes.split(",")]:
        name = f"f{size}.bin"
        with open(name, "wb") as f:
            f.write(content(size, size))
        for run in range(args.runs):
            user = f"py{os.getpid()}r{run}s{size}t{time.monotonic_ns() % 10**9}"
            ns = types.SimpleNamespace(f=name, id=user, server_ip=args.host)
            collect.lines.clear()
            sock = None
            err = None
            secs = None
            old_err = sys.stderr
            try:
                token, sock = client.connection_and_token(logger, args.host, args.port, ns)
                sys.stderr = devnull  # tqdm's progress bar
                t0 = time.perf_counter()
                client.upload_file(logger, token, sock, ns)
                secs = time.perf_counter() - t0
            except Exception as e:  # noqa: BLE001 - any failure is a failed run
                err = f"{type(e).__name__}:{e}"
            finally:
                sys.stderr = old_err
                if sock is not None:
                    sock.close()
            ok = any("MD5 verification successful" in l for l in collect.lines)
            if err is None and not ok:
                bad = [l for l in collect.lines if "rror" in l or "ailed" in l]
                err = "no md5 verification: " + (bad[-1] if bad else "?")
            if err is not None:
                failed += 1
                err = "_".join(err.split())[:200]
                print(f"label={args.label} run={run} size={size} error={err}", file=out, flush=True)
            else:
                print(
                    f"label={args.label} run={run} size={size} block_size=20480 window=1 "
                    f"connections=1 secs={secs:.6f} mb_per_s={size / secs / 1e6:.1f}",
                    file=out,
                    flush=True,
                )
        os.remove(name)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
