"""The import rule of docs/internals.md, read from the AST of src/tuneforge (imports inside functions count too):
each package imports only its own and earlier layers, and no two files import each other, directly or round a
ring. `python -m tests.layering` prints the graph's counts."""
from tests import layering

# Known cycles and layer breaks, each with the helper cutting it; remove an entry once its cut has landed.
ALLOWED_CYCLES: dict[frozenset[str], str] = {}  # {files of the cycle}: owner and reason
ALLOWED_LAYER_BREAKS: dict[tuple[str, str], str] = {}  # (importer, imported): owner and reason


def test_every_package_imports_only_earlier_layers():
    found = layering.edges()
    packages = {layering.package_of(module) for module in layering.modules()}
    assert packages <= set(layering.LAYER_OF), f"packages missing from the layer order: {packages - set(layering.LAYER_OF)}"
    kept = [e for e in found if (e.source, e.target) not in ALLOWED_LAYER_BREAKS]
    bad = layering.layer_violations(kept)
    order = " -> ".join(", ".join(sorted(layer)) for layer in layering.LAYERS)
    assert not bad, ("imports against the layer order " + order + " (move the shared part into the lower "
                     "package; docs/internals.md):\n" + "\n".join(bad))


def test_no_import_cycle_between_files():
    found = layering.edges()
    graph = layering._graph((e.source, e.target) for e in found)
    cycles = []
    for component in layering.strongly_connected(graph):
        if not any(set(component) <= allowed for allowed in ALLOWED_CYCLES):
            cycles.append(" -> ".join(layering.cycle_path(graph, component)))
    assert not cycles, ("import cycles between files (function-local imports included; put what both need in a "
                        "third, lower file):\n" + "\n".join(cycles))


def test_the_graph_reader_resolves_relative_and_local_imports(tmp_path, monkeypatch):
    """The reader itself: `from . import x`, `from ..a import b`, an import inside a function and one under
    `if TYPE_CHECKING:` (never executed, so not an edge)."""
    pkg = tmp_path / "tuneforge"
    (pkg / "a").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a" / "__init__.py").write_text("from . import x\n")
    (pkg / "a" / "x.py").write_text("def f():\n    from ..b import helper\n")
    (pkg / "a" / "y.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .x import f\n")
    (pkg / "b.py").write_text("from .a.x import f\n")
    monkeypatch.setattr(layering, "SRC", tmp_path)
    found = {(e.source, e.target, e.local) for e in layering.edges()}
    assert found == {("tuneforge.a", "tuneforge.a.x", False), ("tuneforge.a.x", "tuneforge.b", True),
                     ("tuneforge.b", "tuneforge.a.x", False)}
    assert layering.file_cycles(layering.edges()) == [["tuneforge.a.x", "tuneforge.b", "tuneforge.a.x"]]


def test_method_names_only_in_methods():
    """Method knowledge stays in methods/: no other package names a method, in a string or by importing its file
    (train/ and serve/ keep their own tests of the same rule: tests/train/test_api.py, tests/serve/)."""
    from tests.train.test_api import _method_mentions
    from tuneforge.registry import METHODS

    names, root = set(METHODS.names()), layering.SRC / layering.ROOT
    paths = [root / "errors.py", root / "registry.py", root / "__init__.py"]
    for package in ("config", "quant", "models", "data", "io", "index", "eval", "cli"):
        paths += sorted((root / package).rglob("*.py"))
    named = {str(path.relative_to(root)): sorted(found) for path in paths
             if (found := _method_mentions(path.read_text(), names))}
    assert not named, f"method names outside methods/ (move the knowledge into a method hook): {named}"
