"""glue_bench's layers: each module imports only its own layer or lower ones, no import circle, and
nothing outside the model pool (glue_bench/zoo) reaches into the mini zoo. Read from the source
(every import statement, those inside functions included), so it holds before anything runs."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "glue_bench"

# Bottom to top (docs/concepts.md, "The layers"). A module is placed by its longest listed prefix.
LAYERS = [
    ("leaves", ["errors", "cache", "console", "cores", "stats", "training", "provenance", "archive"]),
    ("the task pool", ["costs", "evaluate"]),
    ("the model pool", ["zoo"]),
    ("the store", ["results"]),
    ("merging", ["merge"]),
    ("selective merging", ["select"]),
    ("mixtures", ["mixture"]),
    ("a job", ["job", "validate"]),
    ("candidate kinds", ["kinds"]),
    ("running", ["run", "plan", "__main__", "preloaded"]),
    ("evidence and reports", ["evidence", "reference", "study", "findings", "tables", "figures", "phenomena",
                              "callbacks", "reproduce"]),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(name: str) -> set[str]:
    """The glue_bench modules `name` imports anywhere in its source (a name imported from a
    package counts as the submodule when it is one)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("glue_bench")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("glue_bench"):
                found |= {f"{target}.{a.name}" if f"{target}.{a.name}" in MODULES else target for a in node.names}
    return found & set(MODULES)


GRAPH = {name: imports(name) for name in MODULES}


def layer_of(name: str) -> int:
    relative = name.removeprefix("glue_bench").removeprefix(".")
    best = None
    for level, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if relative == prefix or relative.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (level, len(prefix))
    if best is None:
        raise AssertionError(f"{name} is in no layer: place it in tests/test_layers.py's LAYERS")
    return best[0]


def test_every_module_has_a_layer():
    for name in MODULES:
        if name != "glue_bench":
            layer_of(name)


def test_no_module_imports_a_higher_layer():
    upward = [f"{a} ({LAYERS[layer_of(a)][0]}) imports {b} ({LAYERS[layer_of(b)][0]})"
              for a, targets in GRAPH.items() if a != "glue_bench" for b in targets
              if b != "glue_bench" and layer_of(b) > layer_of(a)]
    assert not upward, "\n".join(upward)


def test_nothing_outside_the_model_pool_imports_the_mini_zoo():
    reaching = sorted(f"{a} imports {b}" for a, targets in GRAPH.items() for b in targets
                      if b.startswith("glue_bench.zoo.mini") and not a.startswith("glue_bench.zoo"))
    assert not reaching, "\n".join(reaching)


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each an import circle."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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


def test_no_import_circle():
    assert circles(GRAPH) == []


@pytest.mark.parametrize("graph, expected", [
    ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
    ({"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"c"}}, [["a", "b"], ["c", "d"]]),
])
def test_the_circle_finder_finds_circles(graph, expected):
    assert sorted(circles(graph)) == expected


def test_the_reader_sees_imports_inside_functions_and_relative_ones():
    # the analysis above is only as good as `imports`: it must see a lazy import and resolve a package's names
    assert "glue_bench.zoo.mini.source" in GRAPH["glue_bench.zoo"]       # inside source_of
    assert "glue_bench.merge.methods" in GRAPH["glue_bench.merge"]        # a submodule imported by name
    assert "glue_bench.zoo.refs" in GRAPH["glue_bench.zoo.mini.spec"]
