#!/usr/bin/env python3
"""Tables of bench/coord_bench.sh: RESULTS/raw/coord.txt into RESULTS/coord.md,
below its marker line (the recommendation above the marker is prose, kept).

    python3 bench/coord_report.py [RESULTS]
"""
import os
import statistics
import sys

RES = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "results")
RAW = os.path.join(RES, "raw", "coord.txt")
MD = os.path.join(RES, "coord.md")
MARKER = "<!-- tables below: written by bench/coord_report.py from raw/coord.txt -->"


def parse(path):
    rows = []
    for line in open(path, encoding="utf-8"):
        line = line.strip()
        if not line.startswith("label="):
            continue
        # Labels contain spaces: split on " key=" boundaries.
        parts, kv = line.split("="), {}
        key = parts[0]
        for i in range(1, len(parts)):
            if i == len(parts) - 1:
                kv[key] = parts[i]
            else:
                val, _, nxt = parts[i].rpartition(" ")
                kv[key], key = val, nxt
        rows.append(kv)
    return rows


def num(x):
    try:
        v = float(x)
        return None if v != v else v
    except (TypeError, ValueError):
        return None


def med(rows, key, digits):
    v = [num(r.get(key)) for r in rows]
    v = [x for x in v if x is not None]
    if not v:
        return "—"
    m = statistics.median(v)
    if len(v) == 1:
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ({min(v):.{digits}f}–{max(v):.{digits}f})"


def tables(rows):
    machine = next((r for r in rows if r["label"] == "machine"), {})
    end = next((r for r in rows if r["label"] == "machine_end"), {})
    versions = {r["setting"]: r["version"] for r in rows if r["label"] == "version"}
    out = [
        f"Run {machine.get('date', '?')}: {machine.get('nproc', '?')} cores ({machine.get('cpu', '?').replace('_', ' ')}), "
        f"disk {machine.get('disk', '?').replace('_', ' ')}, engine and clients on the same machine over loopback; "
        f"{machine.get('reps', '?')} repetitions of {machine.get('secs', '?')} s per cell, median (min–max); "
        f"load average {machine.get('load_start', '?')} at start, {end.get('load_end', '?')} at end "
        "(other builds and agents shared the 2 cores and the disk). "
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
        "",
        "`block`: the per-block mark (check cur, set the mark, count it once, refresh expiry) as one call; "
        "`lease`: acquire and release of one per-key lease (two calls for Redis and PostgreSQL, three for etcd: "
        "grant, create-only put, revoke). Latency is one op (one pair for `lease`) as a client sees it.",
        "",
        "| engine, durability | op | clients | ops/s | p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    bench = [r for r in rows if "op" in r and "kill" not in r["label"]]
    seen = []
    for r in bench:
        k = (r["label"], r["op"], r["concurrency"])
        if k not in seen:
            seen.append(k)
    for lab, op, c in seen:
        sel = [r for r in bench if (r["label"], r["op"], r["concurrency"]) == (lab, op, c)]
        errs = sum(int(num(r.get("errors")) or 0) for r in sel)
        out.append(f"| {lab} | {op} | {c} | {med(sel, 'ops_per_s', 0)} | {med(sel, 'p50_ms', 3)} | {med(sel, 'p99_ms', 3)} | {errs} |")
    kills = [r for r in rows if "kill" in r["label"] and "op" in r]
    if kills:
        out += [
            "",
            "Kill test: 32 clients marking blocks; every process of the engine `kill -9`'d, restarted from the same "
            "data dir after ~1 s. *engine up*: restart to the engine answering; *first ok*: from the restart "
            "command to the first acknowledged mark; *outage*: last ack before the kill to first ack after it. "
            "*acked before kill*: marks the engine acknowledged before it died, read back after the restart; "
            "*lost*: of those, missing. Counter mismatches: uploads whose count differs from their marks.",
            "",
            "| engine, durability | errors seen | engine up ms | first ok ms | outage ms | acked before kill | lost | acked after | lost after | count mismatches | most frequent error |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in kills:
            out.append(
                f"| {r['label'].replace(' kill -9', '')} | {r.get('errors', '?')} | {r.get('engine_ready_after_restart_ms', '?')} | "
                f"{r.get('first_ok_after_restart_ms', '?')} | {r.get('outage_seen_ms', '?')} | {r.get('acked_before_kill', '?')} | "
                f"**{r.get('lost_before_kill', '?')}** | {r.get('acked_after_kill', '?')} | {r.get('lost_after_kill', '?')} | "
                f"{r.get('uploads_count_mismatch', '?')} | {r.get('top_error', '').replace('_', ' ').replace('|', '/')} |"
            )
    return "\n".join(out) + "\n"


if not os.path.exists(RAW):
    sys.exit(f"coord_report.py: no {RAW}")
head = ""
if os.path.exists(MD):
    text = open(MD, encoding="utf-8").read()
    if MARKER in text:
        head = text.split(MARKER)[0]
if not head:
    head = "# Coordination engines (issue 16)\n\n"
with open(MD, "w", encoding="utf-8") as f:
    f.write(head + MARKER + "\n\n" + tables(parse(RAW)))
print(f"wrote {MD}")
