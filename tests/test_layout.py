"""The package's shape: no import cycles (function-level imports included), no module past the
size at which it stops having one job, no function past 80 lines, and the parts stacked one way:
the spiking core knows nothing of conversion, conversion nothing of the harness."""

import ast
from pathlib import Path

from scripts.layout import PKG, import_graph, part_of

MAX_LINES = 450
MAX_FUNCTION_LINES = 80
# what each part may import (besides itself); the harness and the package root may import anything
ALLOWED = {
    "msat.util": set(),
    "msat.spiking": {"msat.util"},
    "msat.models": {"msat.util", "msat.spiking"},
    "msat.conversion": {"msat.util", "msat.spiking", "msat.models"},
    "msat.analysis": {"msat.util", "msat.spiking", "msat.models", "msat.conversion"},
}


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
    graph = import_graph()
    assert "msat.spiking.neuron" in graph and "msat.conversion.pipeline" in graph
    cycles = _cycles(graph)
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_parts_import_one_way():
    """util <- spiking <- models <- conversion <- analysis <- harness: a part imports only the parts
    below it."""
    wrong = []
    for mod, deps in import_graph().items():
        part = part_of(mod)
        if part in ALLOWED:
            wrong += [f"{mod} -> {d}" for d in deps if part_of(d) != part and part_of(d) not in ALLOWED[part]]
    assert wrong == []


def test_no_module_imports_the_package_root():
    """The root __init__ re-exports; a module that imports it would close a cycle."""
    offenders = [n for n, deps in import_graph().items() if n != "msat" and "msat" in deps]
    assert offenders == []


def test_modules_stay_small():
    big = {p.relative_to(PKG).as_posix(): n for p in PKG.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert big == {}, f"modules over {MAX_LINES} lines: {big}"


def test_functions_stay_short():
    long = []
    for p in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= MAX_FUNCTION_LINES:
                long.append(f"{p.relative_to(PKG)}:{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert long == [], f"functions of {MAX_FUNCTION_LINES} lines or more: {long}"


def test_the_layout_script_runs():
    from scripts.layout import main

    assert main([]) == 0 and main(["--modules"]) == 0
    assert Path(PKG / "spiking" / "neuron.py").exists()
