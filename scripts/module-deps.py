#!/usr/bin/env python3
"""Top-level module dependencies of gleaner's src/, read from `crate::` paths.

Prints each top-level module's imports of other top-level modules, then the
cycles among them (strongly connected components of more than one module),
and the files whose `crate::` paths make each edge of a cycle.

    python3 scripts/module-deps.py [--files]
"""
import re
import sys
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
PATH = re.compile(r"\bcrate::([a-z_][a-z0-9_]*)")
SUPER = re.compile(r"\bsuper::([a-z_][a-z0-9_]*)")


def top_of(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".rs") if len(rel.parts) > 1 else rel.stem


def main() -> int:
    edges = defaultdict(lambda: defaultdict(set))
    for f in sorted(SRC.rglob("*.rs")):
        me = top_of(f)
        if me in ("main", "lib"):
            continue
        text = f.read_text()
        # Tests may reach anywhere; only the shipped code's structure counts.
        text = text.split("#[cfg(test)]\nmod tests")[0]
        for m in PATH.finditer(text):
            other = m.group(1)
            is_module = (SRC / other).is_dir() or (SRC / f"{other}.rs").exists()
            if other != me and is_module:
                edges[me][other].add(str(f.relative_to(SRC)))
    mods = sorted(set(edges) | {o for d in edges.values() for o in d})
    for m in mods:
        print(f"{m:12} -> {', '.join(sorted(edges[m])) or '-'}")
    # Tarjan's strongly connected components.
    index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(sorted(comp))

    for v in mods:
        if v not in index:
            visit(v)
    print(f"\ncycles: {len(sccs)}")
    for comp in sccs:
        print("  " + " <-> ".join(comp))
        if "--files" in sys.argv:
            for a in comp:
                for b in comp:
                    if b in edges[a]:
                        print(f"    {a} -> {b}: {', '.join(sorted(edges[a][b]))}")
    return 1 if sccs else 0


if __name__ == "__main__":
    sys.exit(main())
