#!/usr/bin/env python3
"""CPU shares of one bench/cluster_bench.sh sample as key=value lines.

    python3 bench/cluster_cpu.py NAME TOP_FILE DOCKER_STATS_FILE PROJECT NPROC

TOP_FILE: `top -b -n2 -d2` (the second screen covers the 2 s between them);
DOCKER_STATS_FILE: `docker stats --no-stream --format '{{.Name}} {{.CPUPerc}} ...'`
of the cluster's containers. Units: % of one core (the machine has NPROC * 100).
The cluster's processes run as uid 65532 in their containers: only those count
as garage, step-server, ...; the same names under another user (other work on
this machine) go to "other". The load generators run on the host as the user
running the benchmark.
"""
import os
import re
import sys

name, top, dstats, project, ncpu = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
CLUSTER_UID = "65532"
CLUSTER = {"garage": "garage", "step-server": "step-server", "gateway": "gateway", "haproxy": "haproxy",
           "redis-server": "redis"}
CLIENTS = {"small_native", "curl", "s3_ceiling", "python3"}
HOST = {"docker-proxy": "docker-proxy", "dockerd": "docker", "containerd": "docker"}
me = os.environ.get("USER") or "root"

text = open(top, encoding="utf-8", errors="replace").read()
screen = text[text.rfind("top - "):].splitlines()
cpu_line = next((l for l in screen if "Cpu(s)" in l), "")
fields = {k: float(v) for v, k in re.findall(r"([\d.]+)\s+(us|sy|ni|id|wa|hi|si|st)", cpu_line)}
groups, started, col = {}, False, 0
for line in screen:
    f = line.split()
    if f[:1] == ["PID"]:
        started, col, ucol = True, f.index("%CPU"), f.index("USER")
        continue
    if not started or len(f) <= col + 3:
        continue
    try:
        pct = float(f[col].replace(",", "."))
    except ValueError:
        continue
    cmd, user = f[-1], f[ucol]
    if user == CLUSTER_UID and cmd in CLUSTER:
        g = CLUSTER[cmd]
    elif cmd in HOST or cmd.startswith("containerd-shim"):
        g = HOST.get(cmd, "docker")
    elif cmd in CLIENTS and user == me:
        # python3 may also be someone else's: an upper bound for the load generator.
        g = "load-generator"
    else:
        g = "other-work"
    groups[g] = groups.get(g, 0.0) + pct
for g, pct in sorted(groups.items(), key=lambda x: -x[1]):
    if pct >= 0.5:
        print(f"label=cpu|{name} sample={name} source=top group={g} cpu_pct={pct:.1f}")
for key, group in (("id", "idle"), ("wa", "iowait")):
    if key in fields:
        print(f"label=cpu|{name} sample={name} source=top group={group} cpu_pct={fields[key] * ncpu:.1f}")
if os.path.exists(dstats):
    for line in open(dstats, encoding="utf-8", errors="replace"):
        f = line.split()
        if len(f) >= 2 and f[1].endswith("%"):
            svc = re.sub(r"[_-]\d+$", "", f[0].removeprefix(project + "_").removeprefix(project + "-"))
            print(f"label=cpu|{name} sample={name} source=docker_stats container={svc} cpu_pct={f[1].rstrip('%')}")
