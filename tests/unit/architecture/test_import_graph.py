"""The import graph of src/: no cycle, counting imports inside functions too.

import-linter (``lint-imports`` in scripts/test.sh, contracts in pyproject.toml)
keeps the layers; this test keeps the graph acyclic at module level, which the
layers alone do not forbid inside one package.  Imports under ``TYPE_CHECKING``
are left out: they are annotations, not run.
"""

from __future__ import annotations

import grimp


def strongly_connected(graph: grimp.ImportGraph) -> list[list[str]]:
    """Tarjan's algorithm over the direct imports; components of two or more modules are cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(root: str) -> None:
        nonlocal counter
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
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

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def mailsift_graph() -> grimp.ImportGraph:
    return grimp.build_graph("mailsift", exclude_type_checking_imports=True)


def test_no_import_cycle_in_src() -> None:
    assert strongly_connected(mailsift_graph()) == []


def test_function_level_imports_are_counted() -> None:
    """The graph sees an import made inside a function (mail.py imports the views lazily)."""
    graph = mailsift_graph()
    details = graph.get_import_details(importer="mailsift.message.mail", imported="mailsift.mime.views")
    assert details, "mail.py's lazy import of the views is missing from the graph"


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = grimp.ImportGraph()
    for module in ("a", "a.x", "a.y", "a.z"):
        graph.add_module(module)
    graph.add_import(importer="a.x", imported="a.y")
    graph.add_import(importer="a.y", imported="a.z")
    graph.add_import(importer="a.z", imported="a.x")
    assert strongly_connected(graph) == [["a.x", "a.y", "a.z"]]
