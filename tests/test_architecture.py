"""The code's shape: no module of ``rtd`` imports, directly or through others, a
module that imports it back, counting imports inside functions too (a deferred import
is still a dependency; deferring it only hides a cycle); and no module of a Rust crate
uses, through others, a module that uses it back."""

from __future__ import annotations

import ast
import pathlib
import re

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "python" / "rtd"


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(files) | {"rtd._core"}  # the extension module: a leaf
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                submodules = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules]
                # `from pkg import submodule` needs the submodule; any other name, pkg itself.
                targets = submodules + ([base] if len(submodules) < len(node.names) else [])
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_sees_the_package():
    graph = _import_graph()
    assert "rtd._private.worker" in graph["rtd._private.worker_template"]
    assert "rtd._private.task_context" in graph["rtd.api"]


def test_no_python_module_imports_itself_through_others():
    assert _cycles(_import_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


CRATES = PACKAGE.parent.parent / "crates"


def _rust_module_graph(src: pathlib.Path) -> dict[str, set[str]]:
    """A crate's modules (``rpc``, ``rpc::client``) and the modules of the same crate
    each one names (``crate::x``, or ``super::x`` from inside a module directory).
    Unit tests (after ``#[cfg(test)]``) do not count: test code may reach anywhere."""
    files = {
        "::".join(p.relative_to(src).with_suffix("").parts).removesuffix("::mod"): p
        for p in src.rglob("*.rs")
        if p.name not in ("lib.rs", "main.rs")
    }
    graph: dict[str, set[str]] = {m: set() for m in files}
    for name, path in files.items():
        text = path.read_text().split("#[cfg(test)]")[0]
        parent = name.rpartition("::")[0]
        for word in re.findall(r"\bcrate::(\w+)", text):
            graph[name].add(word)
        if parent:
            for word in re.findall(r"\bsuper::(\w+)", text):
                graph[name].add(f"{parent}::{word}")
        graph[name] = {m for m in graph[name] if m in graph and m != name and not name.startswith(m + "::")}
    return graph


def test_no_rust_module_uses_itself_through_others():
    crates = sorted(p.parent for p in CRATES.glob("*/src"))
    assert len(crates) >= 9, crates
    found = {c.name: _cycles(_rust_module_graph(c / "src")) for c in crates}
    assert {name: cycles for name, cycles in found.items() if cycles} == {}


def test_the_rust_module_graph_sees_the_crate():
    graph = _rust_module_graph(CRATES / "core-worker" / "src")
    assert "context" in graph["submitter"]
    assert "rpc::framing" in _rust_module_graph(CRATES / "common" / "src")["rpc::client"]
