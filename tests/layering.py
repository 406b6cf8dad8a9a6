"""The import graph of src/tuneforge, read from the AST (module level and inside functions alike), for the layer
and cycle tests (tests/test_layers.py) and for measuring it: `python -m tests.layering` prints the counts.

Only executed imports count: an `if TYPE_CHECKING:` block never runs, so it cannot close a cycle."""
import ast
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
ROOT = "tuneforge"

# The layer order of docs/internals.md: a package may import its own layer and earlier ones, never a later one.
LAYERS = [
    {"errors"},
    {"registry"},
    {"config"},
    {"quant"},
    {"models"},
    {"methods"},
    {"data"},
    {"io"},
    {"index"},
    {"train"},
    {"eval"},
    {"serve"},
    {"cli"},
    {"__init__", "__main__"},  # the package's own entry points re-export the API
]
LAYER_OF = {package: rank for rank, packages in enumerate(LAYERS) for package in packages}


@dataclass(frozen=True)
class Edge:
    source: str  # importing module, dotted
    target: str  # imported module, dotted (a package's __init__ is the package name)
    line: int
    local: bool  # inside a function body


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted((SRC / ROOT).rglob("*.py"))}


def package_of(module: str) -> str:
    """errors, config, methods ... (`tuneforge` itself is `__init__`)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """(node, inside_function) for every executed import statement."""
    def walk(node, local):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    yield from walk(other, local)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, local
            yield from walk(child, local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))
    yield from walk(tree, False)


def edges(known: dict[str, Path] | None = None) -> list[Edge]:
    """Every import of a tuneforge module by a tuneforge module, relative imports resolved. `from pkg import name`
    points at pkg.name when that is a module, else at pkg (its __init__)."""
    known = modules() if known is None else known
    found = []
    for source, path in known.items():
        is_package = path.name == "__init__.py"
        for node, local in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base = source.split(".")
                    if not is_package:
                        base = base[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                targets = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in known else module
                           for alias in node.names]
            for target in targets:
                while target and target not in known and "." in target:
                    target = target.rsplit(".", 1)[0]  # `import tuneforge.a.b` names a module; attributes trimmed
                if target in known and target != source:
                    found.append(Edge(source, target, node.lineno, local))
    return found


def layer_violations(found: list[Edge]) -> list[str]:
    bad = []
    for edge in found:
        src, dst = package_of(edge.source), package_of(edge.target)
        if src != dst and LAYER_OF[dst] >= LAYER_OF[src]:
            where = "in a function" if edge.local else "at module level"
            bad.append(f"{edge.source} (layer {src}) imports {edge.target} (layer {dst}) {where}, line {edge.line}")
    return sorted(set(bad))


def _graph(pairs) -> dict[str, set[str]]:
    graph = defaultdict(set)
    for a, b in pairs:
        if a != b:
            graph[a].add(b)
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's components with more than one node: each holds at least one cycle."""
    index, low, stack, on_stack, result, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                result.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(result)


def cycle_path(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """One shortest cycle through the component's first node: a -> b -> ... -> a."""
    start, members = component[0], set(component)
    previous, frontier = {start: None}, [start]
    while frontier:
        nxt_frontier = []
        for node in frontier:
            for nxt in sorted(graph.get(node, ())):
                if nxt == start:
                    path = [node]
                    while previous[path[-1]] is not None:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if nxt in members and nxt not in previous:
                    previous[nxt] = node
                    nxt_frontier.append(nxt)
        frontier = nxt_frontier
    return component


def file_cycles(found: list[Edge]) -> list[list[str]]:
    """One path per cycle component between files, e.g. [a, b, a]."""
    graph = _graph((e.source, e.target) for e in found)
    return [cycle_path(graph, component) for component in strongly_connected(graph)]


def package_cycles(found: list[Edge]) -> list[list[str]]:
    graph = _graph((package_of(e.source), package_of(e.target)) for e in found)
    return [cycle_path(graph, component) for component in strongly_connected(graph)]


def _simple_cycle_count(pairs) -> int:
    import networkx  # torch's own dependency; only the measurement uses it

    return sum(1 for _ in networkx.simple_cycles(networkx.DiGraph(list(set(pairs)))))


def local_imports(found: list[Edge] | None = None) -> int:
    """Import statements inside functions anywhere in src/tuneforge (any module, not only ours)."""
    count = 0
    for path in modules().values():
        count += sum(1 for _, local in _imports(ast.parse(path.read_text())) if local)
    return count


def main() -> None:
    found = edges()
    pairs = {(e.source, e.target) for e in found}
    pkg_pairs = {(package_of(a), package_of(b)) for a, b in pairs if package_of(a) != package_of(b)}
    print(f"files: {len(modules())}, import edges between files: {len(pairs)}")
    print(f"file-level cycle components: {len(file_cycles(found))}, simple cycles: {_simple_cycle_count(pairs)}")
    for path in file_cycles(found):
        print("   ", " -> ".join(path))
    print(f"package-level cycle components: {len(package_cycles(found))}, "
          f"simple cycles: {_simple_cycle_count(pkg_pairs)}")
    for path in package_cycles(found):
        print("   ", " -> ".join(path))
    print(f"function-local imports (all): {local_imports()}, "
          f"of tuneforge modules: {sum(1 for e in found if e.local)}")
    violations = layer_violations(found)
    print(f"layer violations: {len(violations)}")
    for line in violations:
        print("   ", line)


if __name__ == "__main__":
    main()
