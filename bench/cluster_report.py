#!/usr/bin/env python3
"""Tables of bench/cluster_bench.sh: RESULTS/raw/cluster.txt into
RESULTS/cluster.md, below its marker line (the explanation above the marker is
prose, kept).

    python3 bench/cluster_report.py [RESULTS]
"""
import os
import statistics
import sys
from collections import OrderedDict

RES = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "results")
RAW = os.path.join(RES, "raw", "cluster.txt")
MD = os.path.join(RES, "cluster.md")
MARKER = "<!-- tables below: written by bench/cluster_report.py from raw/cluster.txt -->"

SERIES = OrderedDict([
    ("ceiling-big", "Garage's ceiling: S3 multipart PUT of 100 MiB (8 MiB parts, 8 in flight), per object"),
    ("ceiling-small", "Garage's ceiling: S3 PUT of 10 KiB, 32 in flight"),
    ("step-big", "STEP 100 MiB uploads, 3 clients (1 MiB blocks, 8 in flight)"),
    ("step-small", "STEP 10 KiB uploads, 32 clients"),
    ("http-big", "HTTP PUT 100 MiB, 3 concurrent curl -T"),
    ("http-small", "HTTP PUT 10 KiB, 32 connections"),
])
CONFIGS = {
    "garage-3-nodes": "3 Garage nodes, replication 3, via the S3 balancer",
    "3-step-servers": "3 step-servers",
    "1-step-server": "1 step-server (2 stopped)",
    "3-step-servers-again": "3 step-servers, the 2 started again",
    "2-gateways": "2 gateways",
    "1-gateway": "1 gateway (gw2 stopped)",
    "2-gateways-again": "2 gateways, gw2 started again",
}
BIG = {"ceiling-big", "step-big", "http-big"}


def parse(path):
    """Rows and the header's key=values. A rerun (CLUSTER_APPEND=1) starts a
    new generation: a series (or CPU sample) it measured again is shown from
    the rerun only."""
    rows, meta, gen = [], {}, 0
    for line in open(path, encoding="utf-8"):
        line = line.strip()
        if line.startswith("# "):
            kv = dict(f.split("=", 1) for f in line[2:].split() if "=" in f)
            if "rerun_date" in kv:
                gen += 1
            meta.update(kv)
        elif line.startswith("label="):
            row = dict(f.split("=", 1) for f in line.split() if "=" in f)
            row["gen"] = gen
            rows.append(row)
    latest = {}
    for r in rows:
        latest[r["label"]] = r["gen"]
    return [r for r in rows if r["gen"] == latest[r["label"]]], meta


def num(x):
    try:
        v = float(x)
        return None if v != v else v
    except (TypeError, ValueError):
        return None


def spread(values, digits):
    """median, and (min–max) when the runs differ."""
    vals = [v for v in values if v is not None]
    if not vals:
        return "—"
    med = f"{statistics.median(vals):.{digits}f}"
    if len(vals) > 1 and f"{min(vals):.{digits}f}" != f"{max(vals):.{digits}f}":
        return f"{med} ({min(vals):.{digits}f}–{max(vals):.{digits}f})"
    return med


def main_table(rows):
    out = [
        "| series | configuration | throughput | p50 | p99 | errors | uploads ok | runs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for series, title in SERIES.items():
        sel = [r for r in rows if r["label"] == series]
        if series == "ceiling-big":
            sel = [r for r in sel if r.get("op") == "multipart_put"]
        if series == "ceiling-small":
            sel = [r for r in sel if r.get("op") == "small_put"]
        for config in OrderedDict.fromkeys(r.get("config", "") for r in sel):
            runs = [r for r in sel if r.get("config", "") == config]
            done = [r for r in runs if "skipped" not in r]
            if not done:
                out.append(f"| {title} | {CONFIGS.get(config, config)} | *skipped: not enough disk* | | | | | |")
                continue
            if series == "ceiling-big":
                # One object per run: its time is the latency.
                secs = sorted(num(r.get("secs")) * 1000 for r in done if num(r.get("secs")) is not None)
                thr = spread([num(r.get("mb_per_s")) for r in done], 1) + " MB/s"
                p50 = f"{statistics.median(secs) / 1000:.2f} s" if secs else "—"
                p99 = f"{secs[-1] / 1000:.2f} s (max)" if secs else "—"
                errors, ok = 0, len(done)
            elif series == "ceiling-small":
                thr = spread([num(r.get("ops_per_s")) for r in done], 0) + " PUT/s"
                p50 = spread([num(r.get("p50_ms")) for r in done], 1) + " ms"
                p99 = spread([num(r.get("p99_ms")) for r in done], 1) + " ms"
                errors = 0
                ok = sum(int(num(r.get("count")) or 0) for r in done)
            else:
                if series in BIG:
                    thr = spread([num(r.get("mb_per_s")) for r in done], 1) + " MB/s"
                    p50 = spread([(num(r.get("p50_ms")) or 0) / 1000 for r in done], 2) + " s"
                    p99 = spread([(num(r.get("p99_ms")) or 0) / 1000 for r in done], 2) + " s"
                else:
                    thr = spread([num(r.get("req_per_s")) for r in done], 0) + " uploads/s"
                    p50 = spread([num(r.get("p50_ms")) for r in done], 1) + " ms"
                    p99 = spread([num(r.get("p99_ms")) for r in done], 1) + " ms"
                errors = sum(int(num(r.get("errors")) or 0) for r in done)
                ok = sum(int(num(r.get("uploads", r.get("ok"))) or 0) for r in done)
            first = next((r["first_error"] for r in done if r.get("first_error")), "")
            err = f"{errors}" + (f" (first: `{first[:80]}`)" if first else "")
            out.append(f"| {title} | {CONFIGS.get(config, config)} | {thr} | {p50} | {p99} | {err} | {ok} | {len(done)} |")
    extra = [r for r in rows if r["label"] == "ceiling-error"]
    for r in extra:
        out.append(f"| Garage's ceiling | failed | `{r.get('error', '')[:120]}` | | | | | |")
    return out


def cpu_table(rows):
    cpu = [r for r in rows if r["label"].startswith("cpu|")]
    if not cpu:
        return []
    samples = list(OrderedDict.fromkeys(r["sample"] for r in cpu))
    top = [r for r in cpu if r.get("source") == "top"]
    groups = list(OrderedDict.fromkeys(r["group"] for r in top))
    order = ["garage", "step-server", "gateway", "haproxy", "redis", "docker-proxy", "docker", "load-generator",
             "other-work", "idle", "iowait"]
    groups = [g for g in order if g in groups] + [g for g in groups if g not in order]
    out = [
        "CPU during one run of each series with everything up (`top`, 2 s, processes grouped by name; "
        "% of one core, the machine has " + str(int(num(META.get("nproc")) or 2) * 100) + " %; the cluster's "
        "processes are those of uid 65532, `other-work` is everything else on the machine, `idle` and "
        "`iowait` are top's totals):\n",
        "| process | " + " | ".join(samples) + " |",
        "|---" * (len(samples) + 1) + "|",
    ]
    for g in groups:
        cells = []
        for s in samples:
            v = [num(r["cpu_pct"]) for r in top if r["sample"] == s and r["group"] == g]
            cells.append(f"{sum(x for x in v if x is not None):.0f}" if v else "0")
        out.append(f"| {g} | " + " | ".join(cells) + " |")
    dock = [r for r in cpu if r.get("source") == "docker_stats"]
    if dock:
        out += ["", "`docker stats --no-stream` right after (per container, % of one core):\n",
                "| container | " + " | ".join(samples) + " |", "|---" * (len(samples) + 1) + "|"]
        for c in sorted(OrderedDict.fromkeys(r["container"] for r in dock)):
            cells = []
            for s in samples:
                v = [num(r["cpu_pct"]) for r in dock if r["sample"] == s and r["container"] == c]
                cells.append(f"{v[0]:.0f}" if v and v[0] is not None else "—")
            out.append(f"| {c} | " + " | ".join(cells) + " |")
    return out


rows, META = parse(RAW)
m = META
head = [
    f"Run of {m.get('date', '?')} (UTC) on {m.get('nproc', '?')} cores ({m.get('cpu', '?').replace('_', ' ')}), "
    f"{m.get('mem_gib', '?')} GiB, kernel {m.get('kernel', '?')}, Docker {m.get('docker', '?')}, Garage "
    f"{m.get('garage', '?')}; load average at start {m.get('load_start', '?').replace(',', ' ')}, after up.sh "
    f"{m.get('load_after_up', '?').replace(',', ' ')}, at the end {m.get('load_end', '?').replace(',', ' ')} "
    f"(other work shared the machine: see the CPU table). up.sh took {m.get('up_secs', '?')} s. "
    "Every row through 127.0.0.1 and Docker's port publishing; medians over runs, (min–max) when they "
    "differ; for 100 MiB rows p50/p99 are of the single uploads (p99 is their maximum with this few)."
    + (f" Series {m['rerun_series'].replace(',', ', ')} measured again in a second bring-up of the cluster at "
       f"{m.get('rerun_date', '?')} (load average then {m.get('rerun_load_start', '?').replace(',', ' ')}); "
       "the rows shown for them are from that run." if "rerun_series" in m else "")
    + "\n",
]
tables = head + main_table(rows) + [""] + cpu_table(rows)

prose = ""
if os.path.exists(MD):
    text = open(MD, encoding="utf-8").read()
    if MARKER in text:
        prose = text[: text.index(MARKER)]
if not prose:
    prose = "# The cluster (issue 16)\n\n"
with open(MD, "w", encoding="utf-8") as f:
    f.write(prose + MARKER + "\n\n" + "\n".join(tables).rstrip() + "\n")
print("\n".join(tables))
