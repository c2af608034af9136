#!/usr/bin/env python3
"""Group one process's cpu-clock samples (a `perf record -e cpu-clock` file)
into where the CPU went: md5, memory copies, zeroing, the rest of the kernel
(syscalls, TCP, file system, scheduler), the rest of user space.

    perf_groups.py DATA LABEL WALL_SECS

Prints one key=value line (the format of the other bench tools):
    label=L cpu_s=.. wall_s=.. md5_pct=.. copies_pct=.. zeroing_pct=..
    kernel_pct=.. rest_pct=.. top_md5=sym:pct,.. top_copies=.. top_zeroing=.. top=..
Symbols lose their spaces and '=' so the line stays parseable.
"""
import re
import subprocess
import sys
from collections import Counter

GROUPS = ("md5", "copies", "zeroing", "kernel", "rest")
ZEROING = re.compile(r"memset|bzero|clear_page|clear_user|rep_stos|zero_user|zero_page", re.I)
# User-space copies are memcpy/memmove; kernel ones are named *copy* (socket
# and page-cache copies to and from user memory: _copy_to_iter,
# copy_folio_from_iter_atomic, rep_movs_alternative, ...).
USER_COPY = re.compile(r"memcpy|memmove|rep_movs", re.I)
KERNEL_COPY = re.compile(r"copy|rep_movs|memcpy|memmove", re.I)


def group(sym, dso):
    if "md5" in sym.lower():
        return "md5"
    if ZEROING.search(sym):
        return "zeroing"
    kernel = dso.startswith("[kernel") or (dso == "[unknown]" and sym.startswith("0xffff"))
    if kernel:
        return "copies" if KERNEL_COPY.search(sym) else "kernel"
    if USER_COPY.search(sym):
        return "copies"
    return "rest"


def clean(sym):
    return re.sub(r"[\s=,]", "", sym)[:80] or "?"


def main():
    data, label, wall = sys.argv[1], sys.argv[2], float(sys.argv[3])
    # One line per sample: period (ns of CPU for cpu-clock), symbol, dso.
    out = subprocess.run(
        ["perf", "script", "-i", data, "-F", "period,ip,sym,dso", "--no-inline"],
        capture_output=True, text=True, check=False,
    ).stdout
    by_sym = Counter()
    total = 0
    line_re = re.compile(r"^\s*(\d+)\s+\S+\s+(.*?)\s+\((.*)\)\s*$")
    for line in out.splitlines():
        m = line_re.match(line)
        if not m:
            continue
        period, sym, dso = int(m.group(1)), m.group(2), m.group(3)
        by_sym[(sym, dso)] += period
        total += period
    if not total:
        print(f"label={label} error=no_samples")
        return 1
    per_group = Counter()
    members = {g: Counter() for g in GROUPS}
    for (sym, dso), p in by_sym.items():
        g = group(sym, dso)
        per_group[g] += p
        members[g][clean(sym)] += p

    def top(counter, n=3):
        return ",".join(f"{s}:{100 * p / total:.1f}" for s, p in counter.most_common(n)) or "-"

    every = Counter()
    for (sym, _), p in by_sym.items():
        every[clean(sym)] += p
    fields = [f"label={label}", f"cpu_s={total / 1e9:.2f}", f"wall_s={wall:.2f}"]
    fields += [f"{g}_pct={100 * per_group[g] / total:.1f}" for g in GROUPS]
    fields += [f"top_{g}={top(members[g])}" for g in ("md5", "copies", "zeroing")]
    fields.append(f"top={top(every, 5)}")
    print(" ".join(fields))
    return 0


if __name__ == "__main__":
    sys.exit(main())
