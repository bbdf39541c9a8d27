"""The package's import graph, read from the source with `ast`: cycles, upward imports and depth.

    python scripts/import_graph.py          # a summary; exit status 1 on a cycle or an upward import
    python scripts/import_graph.py --json   # the figures, for tests

Every `import` counts, also those inside functions (a deferred import is still a dependency).
The layers below are the design: a module may import from its own layer or lower ones only.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "skin_model"

# Low to high. A unit is a sub-package or a top-level module of skin_model.
LAYERS: list[list[str]] = [
    ["constants"],
    ["devices", "metrics"],
    ["io"],
    ["data"],
    ["trust"],
    ["model"],
    ["engine", "runtime"],
    ["explain"],
    ["predict"],
    ["interop", "evaluation"],
    ["training"],
    ["cli", "__main__", "__init__"],
]
RANK = {unit: i for i, units in enumerate(LAYERS) for unit in units}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def unit(module: str) -> str:
    """`skin_model.data.transforms` -> `data`; the package's own `__init__` -> `__init__`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Project modules that `path` imports at run time (a `from pkg import mod` counts as importing
    `pkg.mod`; names imported under `if TYPE_CHECKING:` are for the type checker and do not count)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING":
            node.body = [ast.Pass()]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name not in (here, PACKAGE):
                found.add(name)
    return found


def graph() -> dict[str, set[str]]:
    paths = sorted((ROOT / PACKAGE).rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imports_of(p, modules) for p in paths}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def depth(edges: dict[str, set[str]]) -> tuple[int, list[str]]:
    """The longest import chain (in modules) and one chain that long; the number of layers."""
    memo: dict[str, list[str]] = {}

    def longest(v: str, seen: frozenset[str]) -> list[str]:
        if v in memo:
            return memo[v]
        best: list[str] = []
        for w in edges.get(v, ()):
            if w not in seen:
                chain = longest(w, seen | {w})
                if len(chain) > len(best):
                    best = chain
        memo[v] = [v, *best]
        return memo[v]

    chains = [longest(v, frozenset({v})) for v in sorted(edges)]
    chain = max(chains, key=len)
    return len(chain), chain


def upward(edges: dict[str, set[str]]) -> list[str]:
    """Imports from a lower layer to a higher one (or from a unit the layers do not place)."""
    bad = []
    for src, deps in sorted(edges.items()):
        for dst in sorted(deps):
            a, b = unit(src), unit(dst)
            if a not in RANK or b not in RANK:
                bad.append(f"{src} -> {dst} (unit without a layer)")
            elif RANK[b] > RANK[a]:
                bad.append(f"{src} -> {dst}")
    return bad


def summary() -> dict[str, object]:
    edges = graph()
    n, chain = depth(edges)
    return {"modules": len(edges), "edges": sum(len(d) for d in edges.values()), "cycles": cycles(edges),
            "upward_imports": upward(edges), "layers": n, "longest_chain": chain,
            "graph": {m: sorted(d) for m, d in sorted(edges.items())}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = summary()
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"{result['modules']} modules, {result['edges']} imports, {result['layers']} layers")
        print("longest chain: " + " -> ".join(result["longest_chain"]))
        for c in result["cycles"]:
            print("cycle: " + " <-> ".join(c))
        for u in result["upward_imports"]:
            print("upward: " + u)
    return 1 if result["cycles"] or result["upward_imports"] else 0


if __name__ == "__main__":
    sys.exit(main())
