"""The import graph of noisy_prompt/: no circle between its top-level modules and packages, and the core
layers (noise, losses, clip, data, methods) never import the commands and tools built on them."""
import ast
from collections import defaultdict
from pathlib import Path

from paths import PKG

CORE = ("errors", "atomic", "provenance", "noise", "losses", "clip", "cell", "config", "data", "methods")
UPPER = ("build", "session", "task", "run", "sweep", "sweeps", "aggregate", "reporting", "preflight", "predict",
         "report", "predictor", "synthetic", "tools", "bench", "bench_gpu", "resume", "ddp_guard")


def _modules() -> dict[str, Path]:
    mods = {}
    for p in PKG.rglob("*.py"):
        parts = p.relative_to(PKG.parent).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return mods


def _imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")[: None if path.name == "__init__.py" else -1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out |= {t for t in [target, *(f"{target}.{a.name}" for a in node.names)] if t in mods}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in mods}
    return out - {name}


def unit_graph() -> dict[str, set[str]]:
    """Top-level unit (noisy_prompt.<unit>) -> the units it imports, lazy imports inside functions included."""
    mods = _modules()
    graph: dict[str, set[str]] = defaultdict(set)
    unit = lambda m: m.split(".")[1] if "." in m else ""  # noqa: E731
    for name, path in mods.items():
        for t in _imports(name, path, mods):
            if unit(name) and unit(t) and unit(t) != unit(name):
                graph[unit(name)].add(unit(t))
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, seen = [], set()

    def walk(node, stack):
        if node in stack:
            cyc = stack[stack.index(node):]
            key = frozenset(cyc)
            if key not in seen:
                seen.add(key)
                found.append(cyc + [node])
            return
        for nxt in sorted(graph.get(node, ())):
            walk(nxt, stack + [node])

    for start in sorted(graph):
        walk(start, [])
    return found


def test_no_import_circle_between_units():
    assert _cycles(unit_graph()) == []


def test_core_layers_never_import_the_tools_above_them():
    graph = unit_graph()
    bad = {u: sorted(graph[u] & set(UPPER)) for u in CORE if graph[u] & set(UPPER)}
    assert bad == {}


def test_the_checker_sees_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
