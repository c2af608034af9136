#!/usr/bin/env python3
"""The client page of BENCHMARKS.md, from raw/client.txt (bench/client_bench.sh):
step-client's goals as ratios to its peers measured in the same run (now,
after, goal, met), the medians behind them, and, for a goal missed, where
the CPU went.

    client_report.py RESULTS_DIR      (writes RESULTS_DIR/client.md)
"""
import os
import statistics
import sys

RES = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "results")
RAW = os.path.join(RES, "raw", "client.txt")

# The issue's numbers, shown as "now" when no baseline binary was measured.
ISSUE_NOW = {"upload": 0.38, "download": 0.20, "small": 11.4}
REF_PAIR = "reference pair (python client → reference)"


def parse(path):
    rows = []
    for line in open(path, encoding="utf-8") if os.path.exists(path) else []:
        line = line.strip()
        if not line.startswith("label="):
            continue
        kv, key = {}, "label"
        parts = line.split("=")
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
        return float(x)
    except (TypeError, ValueError):
        return None


rows = parse(RAW)
series = {}
for r in rows:
    if "error" in r or r["label"].startswith(("machine", "profile")):
        continue
    s = series.setdefault(r["label"], {"mb": [], "secs": [], "ccpu": [], "scpu": []})
    for k, f in (("mb", "mb_per_s"), ("secs", "secs"), ("ccpu", "client_cpu_s"), ("scpu", "server_cpu_s")):
        if num(r.get(f)) is not None:
            s[k].append(num(r[f]))
errors = [r for r in rows if "error" in r]
profiles = {r["label"].split("|", 1)[1]: r for r in rows if r["label"].startswith("profile|") and "error" not in r}
machine = {}
for r in rows:
    if r["label"] == "machine":
        machine.update({k: v for k, v in r.items() if k != "label"})


def med(label, key="mb"):
    v = series.get(label, {}).get(key) or []
    return statistics.median(v) if v else None


def rng(label, key="mb", digits=1):
    v = series.get(label, {}).get(key) or []
    if not v:
        return "—"
    return f"{statistics.median(v):.{digits}f} ({min(v):.{digits}f}–{max(v):.{digits}f})"


def ratio(a, b):
    return a / b if a and b else None


def fr(x, digits=2):
    return "—" if x is None else f"{x:.{digits}f}×"


def size_of(prefix):
    n = next((num(r.get("size")) for r in rows if r["label"].startswith(prefix + "|") and num(r.get("size"))), None)
    if not n:
        return "1 GiB"
    return f"{n / (1 << 30):.0f} GiB" if n >= (1 << 30) else f"{n / (1 << 20):.0f} MiB"


md5sum = med("md5sum")
dufs = med("download|dufs GET (curl)")
ref = med(f"upload 100 MiB|{REF_PAIR}")
has_base = any(k.endswith("|baseline") for k in series)
goals = [
    (f"native {size_of('upload')} `step-client upload` ÷ `md5sum` of the same file", "upload", md5sum, 0.7, "≥ 0.7",
     "upload", "the whole command, file in page cache"),
    (f"`step-client download` {size_of('download')} ÷ dufs GET (curl), md5 verified", "download", dufs, 1.0, "≥ 1.0",
     "download", "the whole command; the md5 of every download checked after the clock"),
    ("native 100 MiB `step-client` ÷ the course's Python client → reference server", "upload 100 MiB", ref, 15.0, "≥ 15×",
     "small", "ours: the whole command; theirs: SAVE to the md5 check"),
]
out = ["# Client: step-client beside md5sum, dufs and the course client\n"]
load = f"load average {machine.get('load_start', '?')} at the start, {machine.get('load_end', '?')} at the end"
out.append(
    f"{machine.get('reps', '?')} repetitions on {machine.get('nproc', '?')} cores ({load}); every series against the same "
    "step-server, medians. "
    + ("**now** is the baseline binary (`CLIENT_BASELINE`), measured in the same run, alternating with this tree's in "
       "every repetition; **after** is this tree's." if has_base else
       "No baseline binary in this run (`CLIENT_BASELINE`): **now** is the issue's figure; **after** is this tree's.")
    + "\n"
)
out.append("| path | now | after | goal | met |")
out.append("|---|---|---|---|---|")
missed = []
for name, prefix, peer, want, want_txt, issue_key, how in goals:
    after = ratio(med(f"{prefix}|this"), peer)
    now = ratio(med(f"{prefix}|baseline"), peer) if has_base else ISSUE_NOW[issue_key]
    digits = 1 if issue_key == "small" else 2
    met = "not measured" if after is None else ("yes" if after >= want else "**no**")
    now_txt = fr(now, digits) + ("" if has_base else " (issue)")
    out.append(f"| {name} ({how}) | {now_txt} | {fr(after, digits)} | {want_txt} | {met} |")
    if after is not None and after < want:
        missed.append((name, prefix))
out.append("")
out.append("*MB/s (10⁶ bytes/s), median (min–max); CPU seconds of the client command and of the server meanwhile, median*\n")
out.append("| series | MB/s | wall s | client CPU s | server CPU s |")
out.append("|---|---|---|---|---|")
for label in series:
    out.append(f"| {label.replace('|', ' — ')} | {rng(label)} | {rng(label, 'secs', 2)} | {rng(label, 'ccpu', 2)} | {rng(label, 'scpu', 2)} |")
out.append("")
if errors:
    out.append("Failed runs: " + "; ".join(f"{e['label']}: {e['error']}" for e in errors) + "\n")


NAMES = {"upload": ("step-client", "step-server"), "download": ("step-client", "step-server"), "dufs GET": ("curl", "dufs")}


def says(path):
    parts = []
    for who, name in zip(("client", "server"), NAMES[path]):
        p = profiles.get(f"{path}|{who}")
        if p:
            parts.append(f"{name} {p.get('cpu_s', '?')} CPU s (md5 {p.get('md5_pct', '?')} %, copies {p.get('copies_pct', '?')} %, "
                         f"rest of the kernel {p.get('kernel_pct', '?')} %)")
    return "; ".join(parts)


if missed:
    cores = num(machine.get("nproc")) or 2
    out.append("**What stands in the way of each missed goal** (one more run of each path under `perf record -e cpu-clock`):\n")
    for name, prefix in missed:
        path = "download" if prefix == "download" else "upload"
        c, s = med(f"{prefix}|this", "ccpu"), med(f"{prefix}|this", "scpu")
        floor = (c + s) / cores if c is not None and s is not None else None
        line = f"* *{name}*: "
        if floor:
            line += (f"client and server together use {c + s:.2f} CPU s per transfer, so on {cores:.0f} cores it cannot take "
                     f"less than {floor:.2f} s, against {med(f'{prefix}|this', 'secs'):.2f} s measured. ")
        line += (says(path) or "no profile in this run") + "."
        if path == "download" and profiles.get("dufs GET|client"):
            line += f" The peer hashes nothing: {says('dufs GET')}."
        if path == "upload" and md5sum:
            line += f" md5sum alone: {md5sum:.0f} MB/s on one core, and both ends must hash every byte."
        out.append(line)
    out.append("")
with open(os.path.join(RES, "client.md"), "w", encoding="utf-8") as f:
    f.write("\n".join(out) + "\n")
print("\n".join(out))
