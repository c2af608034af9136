#!/usr/bin/env python3
"""Turn bench/results/raw/*.txt (key=value lines) into runs.csv, summary.json,
summary.md and plots. Run by bench/run_all.sh; can be rerun alone:

    python3 bench/report.py bench/results
"""
import csv
import json
import os
import re
import statistics
import sys
from collections import OrderedDict, defaultdict

RES = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "results")
RAW = os.path.join(RES, "raw")


def parse(name):
    path = os.path.join(RAW, name)
    rows = []
    if not os.path.exists(path):
        return rows
    for line in open(path, encoding="utf-8"):
        line = line.strip()
        if not line.startswith("label=") and not line.startswith("phase="):
            continue
        kv = {}
        # Labels contain spaces: split on " key=" boundaries.
        parts = line.split("=")
        key = parts[0]
        for i in range(1, len(parts)):
            chunk = parts[i]
            if i == len(parts) - 1:
                kv[key] = chunk
            else:
                val, _, nxt = chunk.rpartition(" ")
                kv[key] = val
                key = nxt
        rows.append(kv)
    return rows


def fnum(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def stats(values):
    v = [x for x in values if x is not None]
    if not v:
        return None
    return {"median": statistics.median(v), "min": min(v), "max": max(v), "n": len(v)}


def fmt(s, unit="", digits=1, scale=1.0):
    if not s:
        return "—"
    m, lo, hi = s["median"] * scale, s["min"] * scale, s["max"] * scale
    return f"{m:.{digits}f}{unit} ({lo:.{digits}f}–{hi:.{digits}f})"


def ratio(a, b):
    if not a or not b or not b["median"]:
        return None
    return a["median"] / b["median"]


def fr(x, digits=1):
    return "—" if x is None else f"{x:.{digits}f}×"


def size_name(s):
    if not s:
        return "?"
    return f"{s / (1 << 20):.0f} MiB" if s < (1 << 30) else f"{s / (1 << 30):.0f} GiB"


machine = {}
for r in open(os.path.join(RAW, "machine.txt"), encoding="utf-8") if os.path.exists(os.path.join(RAW, "machine.txt")) else []:
    if "=" in r:
        k, v = r.rstrip("\n").split("=", 1)
        machine[k] = v

summary = OrderedDict(machine=machine)
# Markdown per section, keyed like the {{placeholders}} of BENCHMARKS.template.md.
blocks = OrderedDict()
all_rows = []

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:  # plots are skipped, tables still written
    plt = None
    print("note: matplotlib missing (pip install matplotlib): no plots", file=sys.stderr)


def save(fig, name):
    fig.tight_layout()
    fig.savefig(os.path.join(RES, name), dpi=110)
    plt.close(fig)


def errors_of(rows, label, **match):
    return sum(1 for r in rows if r.get("label") == label and "error" in r and all(r.get(k) == v for k, v in match.items()))


# ------------------------------------------------------------------ fig 8
md = blocks["fig8"] = []
rows = parse("fig8.txt")
all_rows += [dict(section="fig8", **r) for r in rows]
if rows:
    labels = list(OrderedDict.fromkeys(r["label"] for r in rows))
    sizes = sorted({int(r["size"]) for r in rows})
    tab = {}
    for lab in labels:
        for s in sizes:
            tab[(lab, s)] = stats([fnum(r.get("secs")) for r in rows if r["label"] == lab and int(r["size"]) == s])
    summary["fig8"] = {lab: {str(s): tab[(lab, s)] for s in sizes} for lab in labels}
    md.append("### 1. Figure 8 redone: upload time vs file size (ms, median (min–max))\n")
    md.append("| size | " + " | ".join(labels) + " | python→reference ÷ step pipelined |")
    md.append("|---" * (len(labels) + 2) + "|")
    base = "python→reference"
    best = next((l for l in labels if "pipelined" in l), None)
    for s in sizes:
        cells = []
        for lab in labels:
            e = errors_of(rows, lab, size=str(s))
            cells.append(fmt(tab[(lab, s)], "", 2, 1e3) + (f" ⚠{e} failed" if e else ""))
        md.append(f"| {s / 1024:.1f} KB | " + " | ".join(cells) + f" | {fr(ratio(tab.get((base, s)), tab.get((best, s))))} |")
    md.append("")
    if plt:
        fig, ax = plt.subplots(figsize=(8, 5))
        for lab in labels:
            xs = [s / 1024 for s in sizes if tab[(lab, s)]]
            st = [tab[(lab, s)] for s in sizes if tab[(lab, s)]]
            med = [x["median"] * 1e3 for x in st]
            lo = [x["median"] * 1e3 - x["min"] * 1e3 for x in st]
            hi = [x["max"] * 1e3 - x["median"] * 1e3 for x in st]
            ax.errorbar(xs, med, yerr=[lo, hi], marker="o", capsize=3, label=lab)
        ax.set_yscale("log")
        ax.set_xlabel("file size (KB = 1024 B)")
        ax.set_ylabel("upload time, SAVE → md5 answer (ms, log)")
        ax.set_title("Figure 8 redone: upload time vs size (median, bars = min–max)")
        ax.grid(True, which="both", linestyle="--", linewidth=0.4)
        ax.legend(fontsize=8)
        save(fig, "fig8_time_vs_size.png")

# ------------------------------------------------------------------ fig 9
md = blocks["fig9"] = []
rows = parse("fig9.txt")
all_rows += [dict(section="fig9", **r) for r in rows]
if rows:
    configs = list(OrderedDict.fromkeys(r["label"].split("|", 1)[1] for r in rows))
    targets = ["step-server", "reference"]
    tab = {}
    fails = {}
    for t in targets:
        for c in configs:
            lab = f"{t}|{c}"
            tab[(t, c)] = stats([fnum(r.get("secs")) for r in rows if r["label"] == lab])
            n_all = sum(1 for r in rows if r["label"] == lab)
            fails[(t, c)] = (errors_of(rows, lab), n_all)
    summary["fig9"] = {f"{t}|{c}": dict(stats=tab[(t, c)], failed=fails[(t, c)][0], runs=fails[(t, c)][1]) for t in targets for c in configs}
    md.append("### 2. Figure 9 redone: 515 blocks of 20 KiB (10.5 MB), time in ms, median (min–max)\n")
    md.append("| client setup | step-server | MB/s | reference server | reference ÷ step-server |")
    md.append("|---|---|---|---|---|")
    for c in configs:
        s, r = tab[(t := "step-server", c)], tab[("reference", c)]
        fs, fr_ = fails[("step-server", c)], fails[("reference", c)]

        def cell(st, f):
            if f[1] == 0:
                return "not run"
            txt = fmt(st, "", 1, 1e3)
            if f[0]:
                txt += f" ⚠ {f[0]}/{f[1]} runs failed"
            return txt

        mbs = f"{515 * 20480 / s['median'] / 1e6:.0f}" if s else "—"
        md.append(f"| {c} | {cell(s, fs)} | {mbs} | {cell(r, fr_)} | {fr(ratio(r, s))} |")
    md.append("")
    if plt:
        fig, ax = plt.subplots(figsize=(9, 5))
        import numpy as np

        x = np.arange(len(configs))
        for k, t in enumerate(targets):
            med = [tab[(t, c)]["median"] * 1e3 if tab[(t, c)] else 0 for c in configs]
            lo = [(tab[(t, c)]["median"] - tab[(t, c)]["min"]) * 1e3 if tab[(t, c)] else 0 for c in configs]
            hi = [(tab[(t, c)]["max"] - tab[(t, c)]["median"]) * 1e3 if tab[(t, c)] else 0 for c in configs]
            ax.bar(x + (k - 0.5) * 0.4, med, 0.4, yerr=[lo, hi], capsize=3, label=t)
            for i, c in enumerate(configs):
                f = fails[(t, c)]
                if f[0]:
                    ax.text(x[i] + (k - 0.5) * 0.4, max(med[i], 1), f"{f[0]}/{f[1]}\nfailed", ha="center", va="bottom", fontsize=7, color="red")
        ax.set_xticks(x)
        ax.set_xticklabels(configs, rotation=30, ha="right", fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("time for 515 blocks (ms, log)")
        ax.set_title("Figure 9 redone: 515 × 20 KiB blocks (median, bars = min–max)")
        ax.grid(True, axis="y", which="both", linestyle="--", linewidth=0.4)
        ax.legend()
        save(fig, "fig9_515_blocks.png")

# ------------------------------------------------------------ large files
md = blocks["large"] = []
rows = parse("large.txt")
phys = parse("physical.txt")
all_rows += [dict(section="large", **r) for r in rows] + [dict(section="physical", **r) for r in phys]
large = {}
if rows:
    sizes = sorted({int(r["size"]) for r in rows if "size" in r and r["label"] != "verify"})
    labels = list(OrderedDict.fromkeys(r["label"] for r in rows if r["label"] != "verify"))
    md.append("### 3. Large files: MB/s (10⁶ bytes/s), median (min–max)\n")
    plim = OrderedDict()
    for p in phys:
        plim.setdefault(p["label"], []).append(fnum(p.get("mb_per_s")))
    plim = OrderedDict((k, stats(v)) for k, v in plim.items())
    summary["physical"] = plim
    if plim:
        md.append("Physical limits, measured in the same run:\n")
        md.append("| limit | MB/s |")
        md.append("|---|---|")
        for k, v in plim.items():
            md.append(f"| {k} | {fmt(v)} |")
        md.append("")
    for s in sizes:
        large[s] = {}
        for lab in labels:
            sel = [r for r in rows if r["label"] == lab and int(r.get("size", 0)) == s]
            if not sel:
                continue
            large[s][lab] = dict(
                mb_per_s=stats([fnum(r.get("mb_per_s")) for r in sel]),
                failed=sum(1 for r in sel if "error" in r),
                runs=len(sel),
                gw_hwm_mib=stats([fnum(r.get("gw_hwm_kib")) and fnum(r["gw_hwm_kib"]) / 1024 for r in sel]),
                step_hwm_mib=stats([fnum(r.get("step_hwm_kib")) and fnum(r["step_hwm_kib"]) / 1024 for r in sel]),
                dufs_hwm_mib=stats([fnum(r.get("dufs_hwm_kib")) and fnum(r["dufs_hwm_kib"]) / 1024 for r in sel]),
            )
    summary["large"] = {str(s): v for s, v in large.items()}
    for s in sizes:
        name = f"{s / (1 << 20):.0f} MiB" if s < (1 << 30) else f"{s / (1 << 30):.0f} GiB"
        dufs = large[s].get("dufs PUT", {}).get("mb_per_s")
        refp = large[s].get("reference pair (python client → reference)", {}).get("mb_per_s")
        md.append(f"**{name}**\n")
        md.append("| path | MB/s | ÷ dufs PUT | ÷ reference pair | peak RSS gateway MiB | peak RSS step-server MiB |")
        md.append("|---|---|---|---|---|---|")
        for lab, v in large[s].items():
            f = f" ⚠ {v['failed']}/{v['runs']} failed" if v["failed"] else ""
            gw = fmt(v["gw_hwm_mib"], "", 0) if v["gw_hwm_mib"] else "—"
            st = fmt(v["step_hwm_mib"], "", 0) if v["step_hwm_mib"] else "—"
            if v["dufs_hwm_mib"]:
                gw = f"(dufs {fmt(v['dufs_hwm_mib'], '', 0)})"
            md.append(f"| {lab} | {fmt(v['mb_per_s'])}{f} | {fr(ratio(v['mb_per_s'], dufs), 2)} | {fr(ratio(v['mb_per_s'], refp), 1)} | {gw} | {st} |")
        md.append("")
    if plt:
        fig, axes = plt.subplots(1, len(sizes), figsize=(7 * len(sizes), 5), squeeze=False)
        for ax, s in zip(axes[0], sizes):
            labs = [l for l in large[s] if large[s][l]["mb_per_s"]]
            med = [large[s][l]["mb_per_s"]["median"] for l in labs]
            lo = [large[s][l]["mb_per_s"]["median"] - large[s][l]["mb_per_s"]["min"] for l in labs]
            hi = [large[s][l]["mb_per_s"]["max"] - large[s][l]["mb_per_s"]["median"] for l in labs]
            ax.barh(range(len(labs)), med, xerr=[lo, hi], capsize=3, color="steelblue")
            ax.set_yticks(range(len(labs)))
            ax.set_yticklabels(labs, fontsize=8)
            ax.invert_yaxis()
            colors = ["red", "green", "purple", "orange"]
            lims = [(k, v) for k, v in plim.items() if v and "md5sum" not in k]
            # Loopback TCP is far off to the right: scale to the transfers and
            # the nearer limits, and name the far ones in the legend.
            right = 1.15 * max([large[s][l]["mb_per_s"]["max"] for l in labs] + [v["median"] for k, v in lims if "loopback" not in k] + [1])
            ax.set_xlim(0, right)
            for k, (pl, v) in enumerate(lims):
                if v["median"] <= right:
                    ax.axvline(v["median"], color=colors[k % 4], linestyle="--", linewidth=1, label=f"{pl}: {v['median']:.0f}")
                else:
                    ax.plot([], [], color=colors[k % 4], linestyle="--", label=f"{pl}: {v['median']:.0f} (off scale)")
            name = f"{s / (1 << 20):.0f} MiB" if s < (1 << 30) else f"{s / (1 << 30):.0f} GiB"
            ax.set_title(f"{name} upload, MB/s (median, bars = min–max)")
            ax.set_xlabel("MB/s")
            ax.legend(fontsize=7, loc="lower right")
            ax.grid(True, axis="x", linestyle="--", linewidth=0.4)
        save(fig, "large_files.png")

# ------------------------------------------------------------ small files
md = blocks["small"] = []
rows = parse("small.txt")
all_rows += [dict(section="small", **r) for r in rows]
small = {}
if rows:
    conc = sorted({int(r["concurrency"]) for r in rows})
    targets = list(OrderedDict.fromkeys(r["label"] for r in rows))
    for t in targets:
        for c in conc:
            sel = [r for r in rows if r["label"] == t and int(r["concurrency"]) == c]
            small[(t, c)] = dict(
                rps=stats([fnum(r["rps"]) for r in sel]),
                p50_ms=stats([fnum(r["p50_ms"]) for r in sel]),
                p99_ms=stats([fnum(r["p99_ms"]) for r in sel]),
                failed=sum(int(r.get("failed", 0)) for r in sel),
                ok=sum(int(r.get("ok", 0)) for r in sel),
                # A run counts as kept when at least its 2xx count of files
                # is found afterwards ("?" when the listing failed).
                kept_runs=sum(1 for r in sel if r.get("stored", "?").isdigit() and int(r["stored"]) >= int(r.get("ok", 0))),
                checked_runs=sum(1 for r in sel if "stored" in r),
                fsync=all(r.get("fsync") == "1" for r in sel) if sel and all("fsync" in r for r in sel) else None,
            )
    summary["small"] = {f"{t}|{c}": v for (t, c), v in small.items()}
    md.append("### 4. 10 KiB uploads (oha, PUT to a fresh key each request): median (min–max) over repetitions\n")
    md.append("| concurrency | " + " | ".join(f"{t} req/s | {t} p50 ms | {t} p99 ms" for t in targets) + " | gateway ÷ dufs req/s |")
    md.append("|---" * (1 + 3 * len(targets) + 1) + "|")
    for c in conc:
        cells = []
        for t in targets:
            v = small[(t, c)]
            bad = f" ⚠{v['failed']} non-2xx" if v["failed"] else ""
            cells += [fmt(v["rps"], "", 0) + bad, fmt(v["p50_ms"], "", 2), fmt(v["p99_ms"], "", 2)]
        g, d = small.get(("gateway", c)), small.get(("dufs", c))
        md.append(f"| {c} | " + " | ".join(cells) + f" | {fr(ratio(g and g['rps'], d and d['rps']), 2)} |")
    md.append("")
    md.append(f"File system of the gateway's store and spool and of dufs's directory: {machine.get('small_fs', 'not recorded')}.\n")
    for t in targets:
        kept = sum(small[(t, c)]["kept_runs"] for c in conc)
        checked = sum(small[(t, c)]["checked_runs"] for c in conc)
        fs = [small[(t, c)]["fsync"] for c in conc]
        sync = ("synced before the 2xx" + (", but a sync on tmpfs persists nothing" if "tmpfs" in t else "")) if all(fs) else ("**not synced** (dufs never fsyncs: a crash can lose a file it answered 2xx for)" if fs and not any(x is None for x in fs) else "sync not recorded")
        if checked:
            md.append(f"* {t}: every 2xx file found afterwards in {kept} of {checked} runs; {sync}.")
    md.append("")
    if plt:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.5))
        for k, t in enumerate(targets):
            color = f"C{k}"
            st = [small[(t, c)]["rps"] for c in conc]
            a1.errorbar(conc, [x["median"] for x in st], yerr=[[x["median"] - x["min"] for x in st], [x["max"] - x["median"] for x in st]], marker="o", capsize=3, label=t, color=color)
            p99 = [small[(t, c)]["p99_ms"]["median"] for c in conc]
            p50 = [small[(t, c)]["p50_ms"]["median"] for c in conc]
            a2.plot(conc, p99, marker="o", label=f"{t} p99", color=color)
            a2.plot(conc, p50, marker="x", linestyle=":", label=f"{t} p50", color=color)
        a2.axhline(30, color="red", linestyle="--", linewidth=1, label="target p99 30 ms")
        for a in (a1, a2):
            a.set_xscale("log", base=2)
            a.set_xlabel("concurrent clients")
            a.grid(True, which="both", linestyle="--", linewidth=0.4)
            a.legend(fontsize=8)
        a1.set_ylabel("requests/s (2xx)")
        a1.set_title("10 KiB PUT: throughput")
        a2.set_yscale("log")
        a2.set_ylabel("latency ms (log)")
        a2.set_title("10 KiB PUT: latency")
        save(fig, "small_files.png")

# ------------------------------------------------------------ idle conns
md = blocks["idle"] = []
rows = parse("idle.txt")
all_rows += [dict(section="idle", **r) for r in rows]
idle = {}
for r in rows:
    idle[r.get("phase", "?")] = r
if idle:
    summary["idle"] = idle
    held, probe, before = idle.get("held", {}), idle.get("probe", {}), idle.get("before", {})
    md.append("### 5. Idle connections held open to step-server\n")
    md.append("| connections held | server RSS before | server RSS with them open | per connection | new client (connect+LOGIN+SAVE+UPLOAD 10 KiB) p50 / p99 / max, idle server | same, with them open | idle ones still answering |")
    md.append("|---|---|---|---|---|---|---|")
    kib = lambda k, d: f"{int(d.get(k, 0)) / 1024:.1f} MiB" if d.get(k) else "—"
    md.append(
        f"| {held.get('conns', '—')} (errors {held.get('errors', '—')}) | {kib('server_rss_kib', before)} | {kib('server_rss_kib', held)} | {held.get('per_conn_bytes', '—')} B | "
        f"{probe.get('base_p50_ms', '—')} / — / {probe.get('base_max_ms', '—')} ms | {probe.get('loaded_p50_ms', '—')} / {probe.get('loaded_p99_ms', '—')} / {probe.get('loaded_max_ms', '—')} ms | {probe.get('idle_alive', '—')} |"
    )
    md.append("")

# ------------------------------------------------------------ downloads
md = blocks["download"] = []
rows = parse("download.txt")
all_rows += [dict(section="download", **r) for r in rows]
download = {}
dl_md5sum = None
if rows:
    dl_md5sum = stats([fnum(r.get("mb_per_s")) for r in rows if r["label"].startswith("md5sum")])
    size = max(int(r["size"]) for r in rows if r.get("size"))
    for lab in OrderedDict.fromkeys(r["label"] for r in rows if not r["label"].startswith("md5sum")):
        sel = [r for r in rows if r["label"] == lab]
        download[lab] = dict(
            mb_per_s=stats([fnum(r.get("mb_per_s")) for r in sel]),
            runs=len(sel),
            failed=sum(1 for r in sel if "error" in r),
            md5_ok=sum(1 for r in sel if r.get("md5_ok") == "1"),
            gw_hwm_mib=stats([fnum(r.get("gw_hwm_kib")) and fnum(r["gw_hwm_kib"]) / 1024 for r in sel]),
            step_hwm_mib=stats([fnum(r.get("step_hwm_kib")) and fnum(r["step_hwm_kib"]) / 1024 for r in sel]),
            errors=sorted({r["error"] for r in sel if "error" in r}),
        )
    summary["download"] = dict(size=size, md5sum=dl_md5sum, paths=download)
    dufs_dl = download.get("dufs GET (curl)", {}).get("mb_per_s")
    pyref = download.get("python stop-and-wait download ← reference", {}).get("mb_per_s")
    md.append(f"**{size_name(size)}, the whole command timed, file from page cache; md5 of every download checked after the clock stops.** "
              f"`md5sum` of the same file in this run: {fmt(dl_md5sum)} MB/s.\n")
    md.append("| path | MB/s | ÷ dufs GET | ÷ Python → reference | md5 verified | peak RSS gateway MiB | peak RSS step-server MiB |")
    md.append("|---|---|---|---|---|---|---|")
    for lab, v in download.items():
        f = f" ⚠ {v['failed']}/{v['runs']} failed ({'; '.join(v['errors'])[:120]})" if v["failed"] else ""
        md.append(f"| {lab} | {fmt(v['mb_per_s'])}{f} | {fr(ratio(v['mb_per_s'], dufs_dl), 2)} | {fr(ratio(v['mb_per_s'], pyref), 1)} | "
                  f"{v['md5_ok']}/{v['runs']} | {fmt(v['gw_hwm_mib'], '', 0) if v['gw_hwm_mib'] else '—'} | {fmt(v['step_hwm_mib'], '', 0) if v['step_hwm_mib'] else '—'} |")
    md.append("")
rows = parse("download_small.txt")
all_rows += [dict(section="download_small", **r) for r in rows]
dl_small = {}
if rows:
    for lab in OrderedDict.fromkeys(r["label"] for r in rows if not r["label"].startswith("verify")):
        sel = [r for r in rows if r["label"] == lab]
        dl_small[lab] = dict(
            rps=stats([fnum(r["rps"]) for r in sel]),
            p50_ms=stats([fnum(r["p50_ms"]) for r in sel]),
            p99_ms=stats([fnum(r["p99_ms"]) for r in sel]),
            failed=sum(int(r.get("failed", 0)) for r in sel),
        )
    for r in rows:
        if r["label"].startswith("verify "):
            lab = r["label"][len("verify "):]
            if lab in dl_small:
                dl_small[lab]["verified"] = f"{r.get('identical', '?')}/{r.get('of', '?')}"
    summary["download_small"] = dl_small
    d = dl_small.get("dufs GET", {}).get("rps")
    md.append("**10 KiB GETs, 32 concurrent (oha; 100 files, a random one per request), median (min–max) over repetitions.** "
              "oha does not look at the bodies: afterwards every file is fetched once more and compared byte for byte.\n")
    md.append("| server | req/s | p50 ms | p99 ms | ÷ dufs req/s | bodies identical |")
    md.append("|---|---|---|---|---|---|")
    for lab, v in dl_small.items():
        bad = f" ⚠{v['failed']} failed" if v["failed"] else ""
        md.append(f"| {lab} | {fmt(v['rps'], '', 0)}{bad} | {fmt(v['p50_ms'], '', 2)} | {fmt(v['p99_ms'], '', 2)} | {fr(ratio(v['rps'], d), 2)} | {v.get('verified', '—')} |")
    md.append("")
if not md:
    md.append("*Not measured in this run.*\n")

# ------------------------------------------------------- small, native
md = blocks["small_native"] = []
rows = parse("small_native.txt")
all_rows += [dict(section="small_native", **r) for r in rows]
if rows:
    # The tool's own keys, whatever they are: one column each, median over runs.
    keys = [k for k in OrderedDict.fromkeys(k for r in rows for k in r) if k != "label"]
    md.append("Native uploads straight to the step-server of the table above (same file system), by `bench/src/bin/small_native.rs`; median (min–max) over runs.\n")
    md.append("| " + " | ".join(["series"] + keys) + " |")
    md.append("|---" * (len(keys) + 1) + "|")
    for lab in OrderedDict.fromkeys(r["label"] for r in rows):
        sel = [r for r in rows if r["label"] == lab]
        cells = []
        for k in keys:
            vals = [fnum(r.get(k)) for r in sel]
            st = stats(vals)
            whole = all(v is None or v == int(v) for v in vals)
            cells.append(fmt(st, "", 0 if whole else 2) if st else " ".join(sorted({r.get(k, "") for r in sel}))[:60] or "—")
        md.append(f"| {lab} | " + " | ".join(cells) + " |")
    md.append("")
    summary["small_native"] = rows
else:
    md.append("*Native 10 KiB uploads: not measured in this run (`bench/src/bin/small_native.rs` absent or failed).*\n")

# ------------------------------------------------------------- profiles
md = blocks["profiles"] = []
rows = parse("profile.txt")
all_rows += [dict(section="profile", **r) for r in rows]
profile = OrderedDict()
profile_size = next((int(r["size"]) for r in rows if r.get("label") == "profile" and r.get("size", "").isdigit()), None)
for r in rows:
    if "|" in r.get("label", "") and "error" not in r:
        path, proc = r["label"].split("|", 1)
        profile.setdefault(path, OrderedDict())[proc] = r
summary["profile"] = profile
GROUP_NAMES = [("md5", "md5"), ("copies", "copies (memcpy/memmove, kernel copy to/from user)"), ("zeroing", "zeroing (memset, clear_page)"),
               ("kernel", "rest of the kernel (syscalls, TCP, fs, scheduler)"), ("rest", "rest of user space")]
if profile:
    md.append(f"One transfer of {size_name(profile_size)} per path (10 KiB PUTs: 5 s of oha at c = 32, store on BENCH_TMP). "
              "Per process and path, share of the process's own CPU time (perf `cpu-clock` samples, self time); "
              "CPU s is that process's CPU time during the transfer, wall s the transfer's duration.\n")
    md.append("| path | process | CPU s (wall s) | md5 | copies | zeroing | kernel, other | rest | where the copies are (top symbols, % of the process) |")
    md.append("|---|---|---|---|---|---|---|---|---|")
    for path, procs in profile.items():
        for proc, r in procs.items():
            md.append(f"| {path} | {proc} | {r.get('cpu_s', '?')} ({r.get('wall_s', '?')}) | {r.get('md5_pct', '?')} % | {r.get('copies_pct', '?')} % | "
                      f"{r.get('zeroing_pct', '?')} % | {r.get('kernel_pct', '?')} % | {r.get('rest_pct', '?')} % | {r.get('top_copies', '—').replace(',', ', ')} |")
    md.append("")
    md.append("Top symbols of each: `bench/results/profiles/<path>-<process>.txt`; off-CPU (blocking) of the server under 10 KiB PUTs: `small-10KiB-offcpu.txt`.\n")
else:
    md.append("*Not measured in this run.*\n")


def profile_says(path):
    """Where the CPU went on one path, read from this run's profile, as prose."""
    procs = profile.get(path)
    if not procs:
        return f"No profile of `{path}` in this run."
    parts, md5_cpu, busiest = [], 0.0, None
    for proc, r in procs.items():
        cpu, wall = fnum(r.get("cpu_s")) or 0.0, fnum(r.get("wall_s")) or 0.0
        shares = sorted(((fnum(r.get(f"{g}_pct")) or 0.0, name) for g, name in GROUP_NAMES), reverse=True)
        md5_cpu += cpu * (fnum(r.get("md5_pct")) or 0.0) / 100
        load = cpu / wall if wall else 0.0
        if busiest is None or load > busiest[1]:
            busiest = (proc, load, shares[0])
        parts.append(f"{proc} {cpu:.2f} CPU s ({100 * load:.0f} % of one core): md5 {r.get('md5_pct')} %, copies {r.get('copies_pct')} % "
                     f"({r.get('top_copies', '—').replace(',', ', ')}), zeroing {r.get('zeroing_pct')} %, kernel {r.get('kernel_pct')} %, rest {r.get('rest_pct')} %")
    wall = fnum(next(iter(procs.values())).get("wall_s")) or 0.0
    what = "5 s of load" if path.startswith("small") else f"{size_name(profile_size)} in {wall:.2f} s"
    txt = f"Profile `{path}` ({what}): " + "; ".join(parts) + "."
    hashers = [p for p, r in procs.items() if (fnum(r.get("md5_pct")) or 0) >= 5]
    if hashers:
        txt += f" md5 runs in {len(hashers)} process{'es' if len(hashers) > 1 else ''} ({', '.join(hashers)}): {md5_cpu:.2f} CPU s in all."
    if busiest:
        txt += f" Busiest: {busiest[0]} at {100 * busiest[1]:.0f} % of one core, most of it {busiest[2][1]} ({busiest[2][0]:.0f} %)."
    return txt


# --------------------------------------------------------------- garage
md = blocks["garage"] = []
rows = parse("store_on_s3.txt")
all_rows += [dict(section="store_on_s3", **r) for r in rows]
all_rows += [dict(section="garage_ceiling", **r) for r in parse("garage_ceiling.txt")]
if rows:
    md.append("The step-server with `--storage disk` and with `--storage s3://…` on Garage, same run; medians over its repetitions "
              "(raw: `bench/results/raw/store_on_s3.txt`).\n")
    md.append("| series | op | MB/s | req/s | p50 ms | p99 ms | runs |")
    md.append("|---|---|---|---|---|---|---|")
    # Labels of one-off servers carry their port (gateway-disk-41234): not part of the series.
    series = lambda r: (re.sub(r"-\d+$", "", r["label"]), r.get("op", "upload"))
    for lab, op in OrderedDict.fromkeys(series(r) for r in rows):
        sel = [r for r in rows if series(r) == (lab, op)]
        col = lambda *ks: next((fmt(stats([fnum(r.get(k)) for r in sel]), "", 1) for k in ks if any(k in r for r in sel)), "—")
        md.append(f"| {lab} | {op} | {col('mb_per_s')} | {col('req_per_s', 'ops_per_s', 'rps')} | {col('p50_ms')} | {col('p99_ms')} | {len(sel)} |")
    md.append("")
ceiling = os.path.join(RES, "garage_ceiling.md")
if os.path.exists(os.path.join(RAW, "garage_ceiling.txt")) and os.path.exists(ceiling):
    md.append(open(ceiling, encoding="utf-8").read().strip() + "\n")
if not md:
    md.append("*Not measured in this run* (section `garage` needs the `garage` binary; see `bench/garage_ceiling.sh`).\n")

# ------------------------------------------------------- coord, cluster
# bench/coord_bench.sh and bench/cluster_bench.sh write raw/<name>.txt and,
# from it, <name>.md (their explanation on top, the tables below): the page
# shows that page whole, under the template's heading.
def whole_page(name, missing):
    md = blocks[name] = []
    all_rows.extend(dict(section=name, **r) for r in parse(name + ".txt"))
    page = os.path.join(RES, name + ".md")
    if os.path.exists(os.path.join(RAW, name + ".txt")) and os.path.exists(page):
        text = open(page, encoding="utf-8").read()
        md.append(re.sub(r"\A# .*\n+", "", text).strip() + "\n")
    else:
        md.append("*Not measured in this run* (" + missing + ").\n")


whole_page("coord", "section `coord` needs redis-server, PostgreSQL 15 and etcd; see `bench/coord_bench.sh`")
whole_page("client", "section `client` did not run; see `bench/client_bench.sh`")
whole_page("cluster", "section `cluster` is not in the default list: it needs Docker and about 20 minutes; "
                      "`SECTIONS=cluster bench/run_all.sh`, see `bench/cluster_bench.sh`")

# ------------------------------------------------------------ targets
md_t = ["### Targets\n", "| target | measured | reached |", "|---|---|---|"]


def target(name, measured, ok):
    md_t.append(f"| {name} | {measured} | {'yes' if ok else ('**no**' if ok is not None else 'not measured')} |")


GIB, MIB100 = 1 << 30, 100 << 20
nat = None
for lab in ("native step-client", "native 4 conn w8 1MiB", "native 1 conn w16 1MiB"):
    v = large.get(GIB, {}).get(lab)
    if v and v["mb_per_s"]:
        target(f"native 1 GiB ≥ 500 MB/s ({lab})", f"{v['mb_per_s']['median']:.0f} MB/s", v["mb_per_s"]["median"] >= 500)
refp = large.get(MIB100, {}).get("reference pair (python client → reference)", {}).get("mb_per_s")
for lab in ("native step-client", "native 1 conn w16 1MiB", "native 4 conn w8 1MiB"):
    v = large.get(MIB100, {}).get(lab, {}).get("mb_per_s")
    r = ratio(v, refp)
    target(f"native 100 MiB ≥ 15× the reference pair ({lab})", f"{fr(r)} ({v and v['median']:.0f} vs {refp and refp['median']:.1f} MB/s)" if r else "—", r >= 15 if r else None)
dufs = large.get(GIB, {}).get("dufs PUT", {}).get("mb_per_s")
for lab in ("gateway curl -T", "gateway curl -F"):
    v = large.get(GIB, {}).get(lab, {}).get("mb_per_s")
    r = ratio(v, dufs)
    target(f"gateway 1 GiB ≥ 2× dufs PUT ({lab}, md5 checked)", f"{fr(r, 2)} ({v and v['median']:.0f} vs {dufs and dufs['median']:.0f} MB/s)" if r else "—", r >= 2 if r else None)
g, d = small.get(("gateway", 32)), small.get(("dufs", 32))
if g and d:
    r = ratio(g["rps"], d["rps"])
    target("10 KiB via gateway ≥ dufs req/s at c=32", f"{fr(r, 2)} ({g['rps']['median']:.0f} vs {d['rps']['median']:.0f} req/s)", r >= 1)
    target("10 KiB via gateway p99 ≤ 30 ms at c=32", f"{g['p99_ms']['median']:.1f} ms", g["p99_ms"]["median"] <= 30)
if idle.get("held"):
    rss = int(idle["held"]["server_rss_kib"]) / 1024
    target(f"{idle['held']['conns']} idle connections ≤ 100 MB server RSS", f"{rss:.1f} MiB", rss * 1.048576 <= 100)
gw_hwm = [v["gw_hwm_mib"]["max"] for lab, v in large.get(GIB, {}).items() if v.get("gw_hwm_mib")]
if gw_hwm:
    target("gateway RSS ≤ 64 MB while streaming 1 GiB", f"{max(gw_hwm):.1f} MiB peak (max over runs, -T and -F)", max(gw_hwm) * 1.048576 <= 64)
summary["targets"] = md_t[3:]
blocks["targets"] = md_t[1:] if len(md_t) > 3 else ["*Not measured in this run.*"]

# ------------------------------------------------------ issue 13's goals
md = blocks["goals"] = []
goal_rows = []


def goal(path, measured, value, goal_txt, was, ok, why_path):
    goal_rows.append(dict(path=path, measured=measured, value=value, goal=goal_txt, was=was, ok=ok, why=why_path))


def biggest(d, want=GIB):
    """The 1 GiB entry, else the largest size measured (a QUICK run)."""
    if want in d:
        return want, d[want]
    return (max(d), d[max(d)]) if d else (None, {})


def md5sum_speed(size):
    return stats([fnum(p.get("mb_per_s")) for p in phys if p["label"].startswith("md5sum") and p.get("size") == str(size)])


def med(s):
    return s["median"] if s else None


sz, by = biggest(large)
cli, m5 = by.get("native step-client", {}).get("mb_per_s"), md5sum_speed(sz)
r = ratio(cli, m5)
goal(f"native {size_name(sz) if sz else '1 GiB'} upload, the whole `step-client` command ÷ `md5sum` of the same file",
     f"{med(cli):.0f} vs {med(m5):.0f} MB/s" if r else "not measured", fr(r, 2) if r else "—", "≥ 0.7", "0.41", r >= 0.7 if r else None, "native-upload")
v100 = large.get(MIB100, {}).get("native step-client", {}).get("mb_per_s")
r = ratio(v100, refp)
goal("native 100 MiB: `step-client` command ÷ the course's Python client → reference server",
     f"{med(v100):.0f} vs {med(refp):.1f} MB/s" if r else "not measured", fr(r, 1) if r else "—", "≥ 15×", "12.9×", r >= 15 if r else None, "native-upload")
gwt, dp = by.get("gateway curl -T", {}).get("mb_per_s"), by.get("dufs PUT", {}).get("mb_per_s")
r = ratio(gwt, m5)
goal(f"gateway {size_name(sz) if sz else '1 GiB'} `curl -T`, md5 checked, ÷ `md5sum`",
     f"{med(gwt):.0f} vs {med(m5):.0f} MB/s; {fr(ratio(gwt, dp), 2)} dufs PUT" if r else "not measured", fr(r, 2) if r else "—", "≥ 0.6", "0.35 (1.44× dufs)", r >= 0.6 if r else None, "gateway-upload")
gwe = by.get("gateway embedded curl -T", {}).get("mb_per_s")
r = ratio(gwe, m5)
goal(f"… the same through the gateway as it runs alone (`cargo run -p gateway`: its STEP service in process)",
     f"{med(gwe):.0f} vs {med(m5):.0f} MB/s; {fr(ratio(gwe, dp), 2)} dufs PUT" if r else "not measured", fr(r, 2) if r else "—", "≥ 0.6", "—", r >= 0.6 if r else None, "gateway-embedded-upload")
g, d = small.get(("gateway", 32)), small.get(("dufs", 32))
if g and d:
    r = ratio(g["rps"], d["rps"])
    goal("10 KiB uploads through the gateway, c = 32: req/s ÷ dufs (same file system)", f"{med(g['rps']):.0f} vs {med(d['rps']):.0f} req/s (dufs does not fsync)",
         fr(r, 2), "≥ 1.0×", "0.32×", r >= 1, "small-10KiB")
    goal("… p99 latency", f"{med(g['p99_ms']):.1f} ms", f"{med(g['p99_ms']):.1f} ms", "≤ 30 ms", "29.7 ms", med(g["p99_ms"]) <= 30, "small-10KiB")
    dur = g["checked_runs"] and g["kept_runs"] == g["checked_runs"] and g["fsync"]
    goal("… every 201 durable", f"found afterwards in {g['kept_runs']}/{g['checked_runs']} runs; step-server syncs before answering",
         "yes" if dur else "no", "every 201", "—", bool(dur) if g["checked_runs"] else None, "small-10KiB")
else:
    goal("10 KiB uploads through the gateway, c = 32, ÷ dufs req/s; p99; every 201 durable", "not measured", "—", "≥ 1.0×, ≤ 30 ms", "0.32×, 29.7 ms", None, "small-10KiB")
dsize = summary.get("download", {}).get("size")
dd = download.get("dufs GET (curl)", {}).get("mb_per_s")
for lab, why in (("gateway GET (curl)", "gateway-download"), ("gateway embedded GET (curl)", "gateway-embedded-download"),
                 ("native step-client download", "native-download")):
    v = download.get(lab, {})
    r = ratio(v.get("mb_per_s"), dd)
    ok_md5 = f", md5 {v.get('md5_ok', 0)}/{v.get('runs', 0)}" if v else ""
    goal(f"download {size_name(dsize) if dsize else '1 GiB'}: {lab} ÷ dufs GET",
         f"{med(v['mb_per_s']):.0f} vs {med(dd):.0f} MB/s{ok_md5}" if r else "not measured", fr(r, 2) if r else "—", "≥ 1.0×, md5 verified", "never measured",
         (r >= 1 and v["md5_ok"] == v["runs"]) if r else None, why)
gs, ds = dl_small.get("gateway GET", {}), dl_small.get("dufs GET", {})
r = ratio(gs.get("rps"), ds.get("rps"))
goal("10 KiB GET, c = 32: gateway ÷ dufs req/s", f"{med(gs['rps']):.0f} vs {med(ds['rps']):.0f} req/s, bodies identical {gs.get('verified', '?')}" if r else "not measured",
     fr(r, 2) if r else "—", "≥ 1.0×, md5 verified", "never measured", (r >= 1 and gs.get("verified", "").split("/")[0] == gs.get("verified", "").split("/")[-1]) if r else None, "gateway-download")
summary["goals"] = goal_rows

md.append("| path | measured (this run) | ratio | goal | issue's \"now\" | met |")
md.append("|---|---|---|---|---|---|")
for gr in goal_rows:
    met = "not measured" if gr["ok"] is None else ("yes" if gr["ok"] else "**no**")
    md.append(f"| {gr['path']} | {gr['measured']} | {gr['value']} | {gr['goal']} | {gr['was']} | {met} |")
md.append("")
missed = [gr for gr in goal_rows if gr["ok"] is False]
if missed:
    md.append("**What stands in the way of each missed goal**, read from this run's profiles (section Profiles):\n")
    seen = set()
    for gr in missed:
        md.append(f"* *{gr['path']}* ({gr['value']}, goal {gr['goal']}): {profile_says(gr['why']) if gr['why'] not in seen else 'same profile as above.'}")
        if gr["why"] == "small-10KiB" and profile and gr["why"] not in seen:
            off = os.path.join(RES, "profiles", "small-10KiB-offcpu.txt")
            if os.path.exists(off):
                top = [ln.split() for ln in open(off, encoding="utf-8") if ln.strip() and not ln.startswith("#")][:3]
                if top:
                    md.append(f"  Off-CPU, step-server: blocked most in {', '.join(f'`{t[1]}` ({t[0]})' for t in top if len(t) > 1)} context switches.")
        seen.add(gr["why"])
    md.append("")
not_run = [gr["path"] for gr in goal_rows if gr["ok"] is None]
if not_run:
    md.append("Not measured in this run: " + "; ".join(not_run) + ".\n")

# ------------------------------------------------------------ memory
md = blocks["memory"] = []
mem = []
for s_, labs in sorted(large.items()):
    for lab, v in labs.items():
        if v.get("gw_hwm_mib") or v.get("step_hwm_mib"):
            mem.append((f"upload {size_name(s_)}: {lab}", v.get("gw_hwm_mib"), v.get("step_hwm_mib")))
for lab, v in download.items():
    if v.get("gw_hwm_mib") or v.get("step_hwm_mib"):
        mem.append((f"download {size_name(dsize)}: {lab}", v.get("gw_hwm_mib"), v.get("step_hwm_mib")))
if mem:
    md.append("| transfer | peak RSS gateway MiB | peak RSS step-server MiB |")
    md.append("|---|---|---|")
    for lab, gw, st in mem:
        md.append(f"| {lab} | {fmt(gw, '', 0) if gw else '—'} | {fmt(st, '', 0) if st else '—'} |")
    md.append("")
else:
    md.append("*Not measured in this run.*\n")

# ------------------------------------------------------------ output
for name in ("fig8", "fig9", "large", "small", "idle"):
    if not blocks.get(name):
        blocks[name] = ["*Not measured in this run.*\n"]
quick = machine.get("quick") == "1"
head = [
    f"Measured {machine.get('date', '?')} on {machine.get('nproc', '?')} × {machine.get('cpu', '?')}, "
    f"{machine.get('mem_gib', '?')} GiB RAM, kernel {machine.get('kernel', '?')}, disk {machine.get('disk', '?')}; "
    f"{machine.get('rustc', '')}; load average at start {machine.get('load_start', '?')}, at end {machine.get('load_end', '?')}"
    + (" — **QUICK mode** (`BENCH_QUICK=1`: fewer runs, no 1 GiB; a smoke test, not numbers to quote)" if quick else "")
    + ".\n"
]
# A run on a busy machine says so at the top: its numbers are not the machine's.
busy = [fnum((machine.get(k) or "").split(" ")[0]) for k in ("load_start", "load_end")]
cores = fnum(machine.get("nproc")) or 1
if any(b and b > cores for b in busy):
    head.append(f"**Loaded machine:** load average above the {cores:.0f} cores during this run; other work shared the CPUs and the disk, "
                "so the numbers below understate what this machine does quiet.\n")
notes = open(os.path.join(RAW, "notes.txt"), encoding="utf-8").read().strip() if os.path.exists(os.path.join(RAW, "notes.txt")) else ""
if notes:
    head.append("Notes from the run:\n\n```\n" + notes + "\n```\n")
blocks["machine"] = head
order = ["machine", "goals", "targets", "fig8", "fig9", "large", "download", "client", "small", "small_native", "idle", "memory", "profiles", "garage", "coord", "cluster"]
with open(os.path.join(RES, "summary.md"), "w", encoding="utf-8") as f:
    f.write("\n".join(line for name in order for line in blocks.get(name, []) + [""]) + "\n")
with open(os.path.join(RES, "summary.json"), "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=1, default=str)
keys = ["section"] + sorted({k for r in all_rows for k in r} - {"section"})
with open(os.path.join(RES, "runs.csv"), "w", newline="", encoding="utf-8") as f:
    w = csv.DictWriter(f, fieldnames=keys)
    w.writeheader()
    for r in all_rows:
        w.writerow(r)

# The whole BENCHMARKS.md: the template's prose with every {{block}} filled
# from this run (a block whose section did not run says so).
template = os.path.join(os.path.dirname(os.path.abspath(__file__)), "BENCHMARKS.template.md")
target_md = os.environ.get("BENCHMARKS_MD")
if target_md and os.path.exists(template):
    text = open(template, encoding="utf-8").read()
    used = set(re.findall(r"\{\{(\w+)\}\}", text))
    unknown = used - set(blocks)
    if unknown:
        sys.exit(f"report.py: BENCHMARKS.template.md names blocks nobody fills: {sorted(unknown)}")
    # The template has its own numbered headings: a block's heading becomes its caption.
    fill = lambda m: re.sub(r"^### \d+\. (.*?)\n?$", r"*\1*\n", "\n".join(blocks[m.group(1)]), flags=re.M).rstrip("\n")
    text = re.sub(r"\{\{(\w+)\}\}", fill, text)
    with open(target_md, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {target_md}")
print("\n".join(blocks["goals"]))
