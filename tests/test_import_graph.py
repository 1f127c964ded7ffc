"""The module import graph of meltok, meltok_runtime and meltok_export has no cycle.

Every import counts, function-local ones included (a local import that only hides a cycle is
still a cycle). The layering itself (the runtime imports neither other package) is checked in
``tests/runtime/test_imports.py``.
"""
import ast
import importlib.util
from pathlib import Path

PACKAGES = ("meltok", "meltok_runtime", "meltok_export")


def package_modules() -> dict[str, Path]:
    """``{module name: source file}`` of every module of the three packages."""
    modules = {}
    for package in PACKAGES:
        root = Path(importlib.util.find_spec(package).submodule_search_locations[0])
        for path in root.rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            modules[".".join((package, *parts))] = path
    return modules


def _known(name: str, modules) -> str | None:
    """``name`` or its longest prefix that is one of ``modules`` (``pkg.mod.func`` -> ``pkg.mod``)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(name: str, path: Path, modules) -> set[str]:
    """The package modules that module ``name`` imports anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(_known(alias.name, modules) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                found.add(_known(f"{base}.{alias.name}", modules) if f"{base}.{alias.name}" in modules
                          else _known(base, modules))
    found.discard(None)
    found.discard(name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def test_cycle_finder_sees_a_hidden_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_relative_and_function_local_imports_are_edges(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text("from .sibling import thing\n\ndef f():\n    from ..other import sub\n    import pkg.deep.x\n")
    modules = {"pkg.sub.mod": source, "pkg.sub.sibling": None, "pkg.other.sub": None, "pkg.deep": None}
    assert imports_of("pkg.sub.mod", source, modules) == {"pkg.sub.sibling", "pkg.other.sub", "pkg.deep"}


def test_no_import_cycles():
    graph = import_graph()
    assert len(graph) > 50 and "meltok_runtime.pipeline" in graph["meltok.codec"]
    assert cycles(graph) == []
