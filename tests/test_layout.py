"""The house rules the layout promises (docs/how-it-works.md, "The rooms"): no import cycle, small
modules, one ``llmperf`` verb per module that never imports another verb, a thin gate fixture."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "pytest_llmperf"
MAX_LINES = 400


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules ``name`` imports (at any depth of the file: a lazy import is a dependency too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    tree = ast.parse(path.read_text())
    typing_only = {  # `if TYPE_CHECKING:` imports are for the type checker, not a runtime dependency
        id(n)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and _is_type_checking(block.test)
        for stmt in block.body
        for n in ast.walk(stmt)
    }
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in known else base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in known and m != name}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_package_has_no_import_cycle() -> None:
    edges = graph()
    assert edges.get("pytest_llmperf.fixtures")  # the walk sees imports
    assert find_cycle(edges) is None


@pytest.mark.parametrize("name", sorted(modules()))
def test_no_module_is_over_400_lines(name: str) -> None:
    lines = len(modules()[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines: split it by what it holds"


def test_cli_verbs_import_the_library_never_one_another() -> None:
    edges = graph()
    entry = {"pytest_llmperf.cli.main", "pytest_llmperf.cli.__main__"}  # the dispatcher
    verbs = [m for m in edges if m.startswith("pytest_llmperf.cli.") and m not in entry]
    assert len(verbs) >= 4
    for verb in verbs:
        assert not {m for m in edges[verb] if m.startswith("pytest_llmperf.cli")}, verb
    library = [m for m in edges if not m.startswith("pytest_llmperf.cli")]
    for module in library:
        assert not {m for m in edges[module] if m.startswith("pytest_llmperf.cli")}, module


def test_the_gate_and_the_report_do_not_know_pytest_items() -> None:
    """The decision is pure: nothing under gate/ imports pytest (report/terminal is the pytest hook)."""
    for name, path in modules().items():
        if name.startswith("pytest_llmperf.gate"):
            tree = ast.parse(path.read_text())
            names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
            names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
            assert "pytest" not in names, name


def test_perf_gate_check_is_short() -> None:
    tree = ast.parse((PACKAGE / "fixtures.py").read_text())
    gate = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "PerfGate")
    check = next(n for n in gate.body if isinstance(n, ast.FunctionDef) and n.name == "check")
    assert check.end_lineno is not None
    assert check.end_lineno - check.lineno + 1 < 30
