"""The package's layout, read from its imports: ``python scripts/layout.py [--modules]``.

Prints every part of ``src/msat`` (a sub-package, or a module at the top) with its modules and
their sizes, bottom to top, and the parts each part imports. ``--modules`` draws the same
graph module by module. Imports inside functions count too. ``tests/test_layout.py`` uses
:func:`import_graph` to keep the graph free of cycles.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "src" / "msat"


def module_name(path: Path, pkg: Path = PKG) -> str:
    parts = list(path.relative_to(pkg.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path, pkg: Path = PKG) -> set[str]:
    """Every msat module the file imports, at any depth of the file (functions included)."""
    name = module_name(path, pkg)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("msat")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("msat"):
                mod = node.module
            else:
                continue
            found.add(mod)
            for a in node.names:  # `from . import x` may name a submodule
                sub = pkg.parent / (mod.replace(".", "/") + "/" + a.name)
                if sub.with_suffix(".py").exists() or (sub / "__init__.py").exists():
                    found.add(f"{mod}.{a.name}")
    return found


def import_graph(pkg: Path = PKG) -> dict[str, set[str]]:
    """module -> the msat modules it imports. A package's ``__init__`` re-exports its modules and
    importing a submodule runs its parents' ``__init__``, so a module's parents are not edges."""
    files = {module_name(p, pkg): p for p in sorted(pkg.rglob("*.py"))}
    graph = {}
    for name, path in files.items():
        deps = {d for d in imports_of(path, pkg) if d in files and d != name}
        graph[name] = {d for d in deps if not name.startswith(d + ".")}
    return graph


def part_of(module: str) -> str:
    """The part a module belongs to: ``msat.<sub-package>``, or the top-level module itself."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def levels(graph: dict[str, set[str]]) -> dict[str, int]:
    """Each node's height: 0 for one that imports nothing here, else 1 + its highest import."""
    memo: dict[str, int] = {}

    def height(n, seen=()):
        if n not in memo:
            if n in seen:  # a cycle: test_layout reports it
                return 0
            memo[n] = 1 + max((height(d, seen + (n,)) for d in graph[n]), default=-1)
        return memo[n]

    for n in graph:
        height(n)
    return memo


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--modules", action="store_true", help="one line per module instead of per part")
    ap.add_argument("--src", type=Path, default=PKG.parent,
                    help="the source folder holding msat/ (default: this checkout's src); e.g. another commit's "
                         "worktree, to draw its layout")
    args = ap.parse_args(argv)
    pkg = args.src.resolve() / "msat"
    graph = import_graph(pkg)
    sizes = {m: len((pkg.parent / (m.replace(".", "/"))).with_suffix(".py").read_text().splitlines())
             if (pkg.parent / m.replace(".", "/")).with_suffix(".py").exists()
             else len((pkg.parent / m.replace(".", "/") / "__init__.py").read_text().splitlines()) for m in graph}
    if args.modules:
        lv = levels(graph)
        for m in sorted(graph, key=lambda m: (lv[m], m)):
            deps = ", ".join(sorted(d.removeprefix("msat.") for d in graph[m])) or "-"
            print(f"{lv[m]:>2}  {m.removeprefix('msat.') or 'msat':28s} {sizes[m]:>4}  <- {deps}")
        return 0
    parts: dict[str, set[str]] = {}
    members: dict[str, list[str]] = {}
    for m, deps in graph.items():
        p = part_of(m)
        members.setdefault(p, []).append(m)
        parts.setdefault(p, set()).update(part_of(d) for d in deps if part_of(d) != p)
    lv = levels(parts)
    for p in sorted(parts, key=lambda p: (lv[p], p)):
        mods = sorted(members[p])
        total = sum(sizes[m] for m in mods)
        inside = ", ".join(f"{m.removeprefix(p + '.') if m != p else '__init__'} {sizes[m]}" for m in mods) if len(mods) > 1 else ""
        print(f"level {lv[p]}  {p}  ({len(mods)} module{'s' if len(mods) > 1 else ''}, {total} lines)")
        if inside:
            print(f"          {inside}")
        print(f"          imports: {', '.join(sorted(parts[p])) or '-'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
