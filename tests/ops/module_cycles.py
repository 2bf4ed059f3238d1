#!/usr/bin/env python3
"""Lists the cycles among a crate's modules.

Each file is a module (`src/a/b.rs` is `a::b`, `src/a/mod.rs` is `a`). A
module depends on another when it names it, or an item in it, by a
`crate::`, `super::` or `self::` path (in a `use`, braces expanded, or
inline). A folder's `mod.rs` and the modules inside it may name each other:
the folder is one part and its `mod.rs` composes it; the crate root
(lib.rs / main.rs) likewise composes the whole crate. Any other cycle means
two parts of a crate cannot be read, tested or moved apart.

Usage: module_cycles.py CRATE_SRC_DIR...   (exit 1 when any crate has a cycle)
"""
import os
import re
import sys

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def module_of(src, path):
    parts = os.path.relpath(path, src)[:-3].split(os.sep)
    if parts[-1] == "mod":
        parts = parts[:-1]
    if parts in (["lib"], ["main"]):
        return None
    return tuple(parts)


def strip(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    return text.split("#[cfg(test)]")[0]  # tests may reach anywhere


def expand(tree):
    """`a::{b, c::{d, e}}` -> ["a::b", "a::c::d", "a::c::e"]."""
    tree = re.sub(r"\s+", "", tree)
    i = tree.find("{")
    if i < 0:
        return [tree]
    prefix, depth, parts, start = tree[:i], 0, [], i + 1
    for j in range(i, len(tree)):
        ch = tree[j]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                parts.append(tree[start:j])
                break
        elif ch == "," and depth == 1:
            parts.append(tree[start:j])
            start = j + 1
    return [p for part in parts if part for p in expand(prefix + part)]


def paths_in(text):
    out = []
    for tree in re.findall(r"\buse\s+([^;]+);", text):
        out += expand(tree)
    out += re.findall(rf"\b(?:crate|super|self)(?:::{IDENT})+", text)
    return out


def resolve(path, here, modules):
    segs = [s.split(" as ")[0] for s in path.split("::")]
    segs = [s for s in segs if s and s != "*"]
    if not segs:
        return None
    if segs[0] == "crate":
        base, rest = (), segs[1:]
    elif segs[0] in ("super", "self"):
        base = list(here)
        while segs and segs[0] in ("super", "self"):
            if segs.pop(0) == "super":
                base = base[:-1]
        base, rest = tuple(base), segs
    else:
        return None
    best = None
    for n in range(len(rest) + 1):
        cand = base + tuple(rest[:n])
        if cand in modules:
            best = cand
    return best


def related(a, b):
    """One contains the other (a folder's mod.rs and its modules)."""
    return a[: len(b)] == b or b[: len(a)] == a


def graph(src):
    files = {}
    for root, _, names in os.walk(src):
        for n in names:
            if n.endswith(".rs"):
                p = os.path.join(root, n)
                m = module_of(src, p)
                if m:
                    files[m] = p
    modules = set(files)
    edges = {m: set() for m in modules}
    for m, p in files.items():
        with open(p, encoding="utf-8") as fh:
            text = strip(fh.read())
        for path in paths_in(text):
            t = resolve(path, m, modules)
            if t and not related(m, t):
                edges[m].add(t)
    return edges


def cycles(edges):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
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
                comp.append("::".join(w))
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def main():
    bad = 0
    for src in sys.argv[1:]:
        for comp in cycles(graph(src)):
            bad += 1
            print(f"{src}: modules import each other in a circle: {', '.join(comp)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
