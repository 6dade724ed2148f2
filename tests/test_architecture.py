"""The package's imports run one way: a static walk (ast, nothing is imported) of every ``vlmtune``
module, failing on an import cycle or on an import against the layer order

    commands -> presets -> recipes -> train / eval / analysis -> models -> adapters / data -> core

(an arrow: may import). Every import counts, also one inside a function. Modules on one layer may
import each other (``train.evaluate`` -> ``eval.runner``) as long as no cycle forms.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "vlmtune"

# lowest first; a module may import modules of its own layer or below
LAYERS = (
    ("core",),
    ("adapters", "data"),
    ("models", "generation"),
    ("train", "eval", "analysis"),
    ("recipes",),
    ("presets",),
    ("commands",),
)
COMMAND_MODULES = {"cli", "__main__", "info", "merge", "bench", "plan", "sweep"}  # vlmtune/<name>.py + */command.py


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> int:
    """Index into :data:`LAYERS` of ``module`` (``vlmtune.models.llava`` -> 2)."""
    parts = module.split(".")[1:]
    if not parts:
        return 0  # the package face (version string)
    if parts[-1] == "command" or (len(parts) == 1 and parts[0] in COMMAND_MODULES):
        name = "commands"
    else:
        name = parts[0]
    for i, names in enumerate(LAYERS):
        if name in names:
            return i
    raise AssertionError(f"{module}: not on any layer; add its top-level name to LAYERS in {__file__}")


def imports(source: str, package: str, modules: dict[str, Path]) -> list[tuple[str, int]]:
    """``(imported vlmtune module, line)`` for every import in ``source`` (a module of ``package``);
    ``from pkg import sub`` names the submodule when ``pkg.sub`` is one."""
    tree = ast.parse(source)
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "vlmtune"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] != "vlmtune":
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((sub if sub in modules else base, node.lineno))
    return sorted({(m, line) for m, line in found if m in modules}, key=lambda edge: (edge[1], edge[0]))


def import_graph() -> dict[str, list[tuple[str, int]]]:
    modules = all_modules()
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        graph[name] = imports(path.read_text(), package, modules)
    return graph


def cycles(graph: dict[str, list[tuple[str, int]]]) -> list[list[str]]:
    """Strongly connected components with more than one module, or a module importing itself (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w, _ in graph[v]:
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
            if len(component) > 1 or any(w == v for w, _ in graph[v]):
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def cycle_edges(graph: dict[str, list[tuple[str, int]]], component: list[str]) -> list[str]:
    inside = set(component)
    return [
        f"{a} (line {line}) -> {b}" for a in component for b, line in graph[a] if b in inside and b != a
    ] or [f"{component[0]} imports itself"]


def test_layer_of_names_each_layer():
    assert layer("vlmtune.core.errors") == 0
    assert layer("vlmtune.data.spec") == layer("vlmtune.adapters.lora") == 1
    assert layer("vlmtune.models.llava") == 2
    assert (
        layer("vlmtune.train.trainer") == layer("vlmtune.eval.runner") == layer("vlmtune.analysis.runs") == 3
    )
    assert layer("vlmtune.presets.shapes_tiny") == 5
    assert layer("vlmtune.cli") == layer("vlmtune.eval.command") == layer("vlmtune.train.command") == 6


def test_walk_sees_lazy_relative_and_submodule_imports():
    modules = dict.fromkeys(["vlmtune.a", "vlmtune.a.b", "vlmtune.c"], Path())
    source = "def f():\n    from vlmtune.a import b\n    import vlmtune.c\nfrom vlmtune.a import x\nfrom . import b\n"
    found = imports(source, "vlmtune.a", modules)
    assert found == [("vlmtune.a.b", 2), ("vlmtune.c", 3), ("vlmtune.a", 4), ("vlmtune.a.b", 5)]


def test_cycle_finder_reports_loops_and_only_loops():
    graph = {"a": [("b", 1)], "b": [("c", 2)], "c": [("a", 3)], "d": [("a", 4)]}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycle_edges(graph, ["a", "b", "c"]) == ["a (line 1) -> b", "b (line 2) -> c", "c (line 3) -> a"]
    assert cycles({"a": [("b", 1)], "b": []}) == []


def test_package_imports_form_no_cycle():
    graph = import_graph()
    loops = ["  " + "; ".join(cycle_edges(graph, c)) for c in cycles(graph)]
    assert not loops, "import cycles:\n" + "\n".join(loops)


def test_no_import_runs_against_the_layer_order():
    graph = import_graph()
    upward = [
        f"  {a} (line {line}, layer {'/'.join(LAYERS[layer(a)])}) -> {b} (layer {'/'.join(LAYERS[layer(b)])})"
        for a, edges in graph.items()
        for b, line in edges
        if layer(b) > layer(a)
    ]
    assert not upward, (
        "imports against the layer order "
        + " -> ".join("/".join(names) for names in reversed(LAYERS))
        + ":\n"
        + "\n".join(upward)
    )
