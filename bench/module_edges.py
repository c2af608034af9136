#!/usr/bin/env python3
"""List `crate::` edges between a crate's top-level modules and the cycles
among them (comments skipped; tests modules included).

    bench/module_edges.py step-server/src [gateway/src ...]
"""
import os
import re
import sys


def top_module(src, path):
    rel = os.path.relpath(path, src)
    first = rel.split(os.sep)[0]
    return first[:-3] if first.endswith(".rs") else first


def edges(src):
    out = {}
    for root, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(root, f)
            me = top_module(src, path)
            if me in ("lib", "main"):
                continue
            text = "\n".join(
                l for l in open(path, encoding="utf-8").read().splitlines()
                if not l.lstrip().startswith("//")
            )
            names = set(re.findall(r"crate::([a-z_][a-z0-9_]*)", text))
            # `use crate::{a, b::c}` groups
            for group in re.findall(r"crate::\{([^}]*)\}", text, re.S):
                names |= set(re.findall(r"(?:^|[,{\s])([a-z_][a-z0-9_]*)(?=::|\s*[,}]|$)", group))
            for n in names:
                if n != me and os.path.exists(os.path.join(src, n + ".rs")) or os.path.isdir(os.path.join(src, n)):
                    if n != me:
                        out.setdefault(me, set()).add(n)
    return out


def cycles(g):
    found = set()
    for a in g:
        for b in g[a]:
            if a in g.get(b, ()):  # two-module cycles
                found.add(tuple(sorted((a, b))))
    # longer cycles: DFS for simple cycles of length 3 (enough to show)
    for a in g:
        for b in g[a]:
            for c in g.get(b, ()):
                if c != a and a in g.get(c, ()):
                    found.add(tuple(sorted((a, b, c))))
    return sorted(found)


for src in sys.argv[1:]:
    g = edges(src)
    print(f"== {src}")
    for a in sorted(g):
        print(f"  {a} -> {', '.join(sorted(g[a]))}")
    cs = cycles(g)
    print("  cycles: " + ("; ".join(" <-> ".join(c) for c in cs) if cs else "none"))
