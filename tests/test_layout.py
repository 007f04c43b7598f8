"""The package's shape: no import cycles (function-level imports included) and no module
past the size at which it stops having one job."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "src" / "msat"
MAX_LINES = 450


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every msat module this file imports, at any depth of the file (functions included)."""
    name = _module_name(path)
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
                if (PKG.parent / (mod.replace(".", "/") + "/" + a.name + ".py")).exists():
                    found.add(f"{mod}.{a.name}")
    return found


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        deps = {d for d in _imports(path) if d in files and d != name}
        # a package's __init__ re-exports its modules; importing a submodule runs the parent's
        # __init__, which is the usual (acyclic) direction, so parents are not edges
        graph[name] = {d for d in deps if not name.startswith(d + ".")}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    seen, stack, on_stack, cycles = set(), [], set(), []

    def visit(n):
        seen.add(n)
        stack.append(n)
        on_stack.add(n)
        for d in sorted(graph[n]):
            if d in on_stack:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in seen:
                visit(d)
        stack.pop()
        on_stack.discard(n)

    for n in sorted(graph):
        if n not in seen:
            visit(n)
    return cycles


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_even_through_function_level_imports():
    graph = _graph()
    assert "msat.neurons" in graph and "msat.api" in graph
    cycles = _cycles(graph)
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_module_imports_the_package_root():
    """The root __init__ re-exports; a module that imports it would close a cycle."""
    offenders = [n for n, deps in _graph().items() if n != "msat" and "msat" in deps]
    assert offenders == []


def test_modules_stay_small():
    big = {p.relative_to(PKG).as_posix(): n for p in PKG.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert big == {}, f"modules over {MAX_LINES} lines: {big}"
