"""The import contract: the layers docs/architecture.md draws, checked on every module's AST.

Every ``import`` / ``from … import`` of every module under ``openfeature_canary/`` is read,
wherever it sits (module level, inside a function, under ``if TYPE_CHECKING:``), and resolved to
the module it names (``from pkg import name`` names ``pkg.name`` when that is a module, else
``pkg``). Three rules, each a test:

(a) **Arrows point down.** A module imports only from its own layer's package or a layer below
    (:data:`LAYERS`, top to bottom). ``TYPE_CHECKING`` imports count: a type from a higher layer
    is still knowledge of that layer.
(b) **No cycle** between modules. ``TYPE_CHECKING`` imports are left out of this graph: they never
    run, so they cannot make an import order matter (two classes may name each other in
    annotations). Function-level imports count: they run, and a lazy import that exists only to
    dodge a cycle is the cycle. Importing ``a.b.c`` also runs ``a/__init__`` and ``a.b/__init__``;
    those implicit edges are left out (every package's ``__init__`` re-exports its children, so
    with them every module would sit on a cycle through its parent).
(c) **The engine does not import the plugins** (``openfeature.contrib.provider.canary``,
    ``openfeature.contrib.hook.canary``): they import it. The demo is not the engine: it
    assembles a real OpenFeature client and provider.

A module's layer is its first name under the package (``openfeature_canary.policy._decide`` is
in ``policy``); the package root (``openfeature_canary/__init__.py``, the public names) sits just
below the command line. Modules of one layer may import each other (rule (b) still holds).
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "openfeature_canary"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE

#: Top to bottom; each layer imports only from its own layer and the layers below it.
#: Where the three modules that are not a concept's folder sit, and why:
#: ``flagd_export`` renders a state through ``policy.build_view`` (what a flag serves), so it sits
#: above ``policy``, beside the assembly; ``telemetry`` is process set-up (the MeterProvider, its
#: Views, /metrics) that only the assembly, the provider and the demo call, so it sits there too;
#: ``instrumentation`` is what the application records and under which names: the signal sources
#: read those names, so it sits below ``signals``, with the values.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("cli", "demo", "web", "__main__"),
    ("__init__",),
    ("engine", "flagd_export", "telemetry"),
    ("policy",),
    ("events", "signals"),
    ("stores",),
    ("plan", "state", "evidence", "instrumentation"),
    (
        "bucketing",
        "clock",
        "errors",
        "_forksafe",
        "_perthread",
        "_atomicfile",
        "_format",
        "_validate",
    ),
)

#: The OpenFeature plugins built on the engine; the engine never imports them.
PLUGINS = ("openfeature.contrib.provider.canary", "openfeature.contrib.hook.canary")

#: Layers outside the engine's import path (rule (c)).
NOT_ENGINE = frozenset({"demo"})


@dataclass(frozen=True)
class Edge:
    """One import: ``source`` names ``target`` at ``line``; ``type_only`` under TYPE_CHECKING."""

    source: str
    target: str
    line: int
    type_only: bool


def module_names(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the package by dotted name (a package is its ``__init__``)."""
    found: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> Iterable[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import node with whether it sits under ``if TYPE_CHECKING:``."""

    def walk(node: ast.AST, type_only: bool) -> Iterable[tuple[ast.Import | ast.ImportFrom, bool]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, type_only
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    yield from walk(ast.Module(body=[stmt], type_ignores=[]), True)
                for stmt in child.orelse:
                    yield from walk(ast.Module(body=[stmt], type_ignores=[]), type_only)
            else:
                yield from walk(child, type_only)

    yield from walk(tree, False)


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base.pop()
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imported_names(source: str, module: str, is_package: bool) -> list[tuple[str, int, bool]]:
    """``(dotted name, line, type_only)`` for every name ``source`` imports."""
    found: list[tuple[str, int, bool]] = []
    for node, type_only in _imports(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno, type_only) for alias in node.names]
        else:
            base = _absolute(module, is_package, node)
            found += [(f"{base}.{a.name}", node.lineno, type_only) for a in node.names]
    return found


def _resolve(name: str, modules: Iterable[str]) -> str | None:
    known = set(modules)
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in known:
            return candidate
        parts.pop()
    return None


def build_graph(sources: Mapping[str, tuple[str, bool]]) -> list[Edge]:
    """The import edges between the given modules: ``{name: (source text, is_package)}``."""
    edges: list[Edge] = []
    for module, (text, is_package) in sources.items():
        for name, line, type_only in imported_names(text, module, is_package):
            target = _resolve(name, sources)
            if target is not None and target != module:
                edges.append(Edge(module, target, line, type_only))
    return edges


def package_sources(root: Path = ROOT) -> dict[str, tuple[str, bool]]:
    """The package's modules as :func:`build_graph` takes them."""
    return {
        name: (path.read_text(encoding="utf-8"), path.name == "__init__.py")
        for name, path in module_names(root).items()
    }


def layer_of(module: str) -> str:
    """``openfeature_canary.policy._decide`` → ``policy``; the package root → ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _rank(layers: tuple[tuple[str, ...], ...]) -> dict[str, int]:
    return {name: i for i, layer in enumerate(layers) for name in layer}


def upward_imports(
    edges: Iterable[Edge], layers: tuple[tuple[str, ...], ...] = LAYERS
) -> list[str]:
    """Rule (a): every edge from a layer to one above it, and every module in no layer."""
    rank = _rank(layers)
    bad: list[str] = []
    for edge in edges:
        source, target = layer_of(edge.source), layer_of(edge.target)
        for name in (source, target):
            if name not in rank:
                bad.append(f"{name}: in no layer of the contract")
        if source in rank and target in rank and rank[target] < rank[source]:
            bad.append(f"{edge.source}:{edge.line} imports {edge.target} (upward)")
    return sorted(set(bad))


def cycles(edges: Iterable[Edge]) -> list[list[str]]:
    """Rule (b): the strongly connected components of more than one module (run-time edges)."""
    graph: dict[str, set[str]] = {}
    for edge in edges:
        if not edge.type_only:
            graph.setdefault(edge.source, set()).add(edge.target)
            graph.setdefault(edge.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm; the graph is a few hundred nodes
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component: list[str] = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def plugin_imports(sources: Mapping[str, tuple[str, bool]]) -> list[str]:
    """Rule (c): every import of a plugin by an engine module."""
    bad: list[str] = []
    for module, (text, is_package) in sources.items():
        if layer_of(module) in NOT_ENGINE:
            continue
        for name, line, _ in imported_names(text, module, is_package):
            if any(name == p or name.startswith(f"{p}.") for p in PLUGINS):
                bad.append(f"{module}:{line} imports {name}")
    return bad


@pytest.fixture(scope="module")
def sources() -> dict[str, tuple[str, bool]]:
    return package_sources()


def test_every_import_points_down_the_layers(sources: dict[str, tuple[str, bool]]) -> None:
    assert upward_imports(build_graph(sources)) == []


def test_no_import_cycle_between_modules(sources: dict[str, tuple[str, bool]]) -> None:
    assert cycles(build_graph(sources)) == []


def test_engine_does_not_import_the_plugins(sources: dict[str, tuple[str, bool]]) -> None:
    assert plugin_imports(sources) == []


def test_every_module_is_in_a_layer(sources: dict[str, tuple[str, bool]]) -> None:
    rank = _rank(LAYERS)
    assert sorted({layer_of(m) for m in sources} - set(rank)) == []


# The checks themselves, on planted violations: a contract test that cannot fail proves nothing.

_FAKE = {
    "openfeature_canary": ("from openfeature_canary.plan import load_plan\n", True),
    "openfeature_canary.plan": ("from openfeature_canary.plan._loader import load_plan\n", True),
    "openfeature_canary.plan._loader": ("from openfeature_canary.errors import PlanError\n", False),
    "openfeature_canary.errors": ("", False),
    "openfeature_canary.policy": ("from . import _a\n", True),
    "openfeature_canary.policy._a": ("from ._b import x\n", False),
    "openfeature_canary.policy._b": ("y = 1\n", False),
    "openfeature_canary.engine": ("import openfeature_canary.policy._a\n", False),
}


def _planted(**changes: tuple[str, bool]) -> dict[str, tuple[str, bool]]:
    return {**_FAKE, **changes}


def test_contract_passes_the_clean_fake_graph() -> None:
    edges = build_graph(_FAKE)
    assert upward_imports(edges) == []
    assert cycles(edges) == []
    assert plugin_imports(_FAKE) == []
    assert Edge("openfeature_canary.policy._a", "openfeature_canary.policy._b", 1, False) in edges


def test_contract_catches_a_planted_upward_import_in_a_function() -> None:
    loader = "def f():\n    from openfeature_canary.signals._names import NAMES\n"
    edges = build_graph(
        _planted(
            **{
                "openfeature_canary.plan._loader": (loader, False),
                "openfeature_canary.signals._names": ("", False),
            }
        )
    )
    assert upward_imports(edges) == [
        "openfeature_canary.plan._loader:2 imports openfeature_canary.signals._names (upward)"
    ]


def test_contract_catches_a_planted_upward_type_only_import() -> None:
    text = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..engine import E\n"
    edges = build_graph(_planted(**{"openfeature_canary.plan._loader": (text, False)}))
    assert upward_imports(edges) == [
        "openfeature_canary.plan._loader:3 imports openfeature_canary.engine (upward)"
    ]
    assert cycles(edges) == []


def test_contract_catches_a_planted_cycle_through_a_lazy_import() -> None:
    b = "def f():\n    from openfeature_canary.policy._a import x\n"
    edges = build_graph(_planted(**{"openfeature_canary.policy._b": (b, False)}))
    assert cycles(edges) == [["openfeature_canary.policy._a", "openfeature_canary.policy._b"]]
    assert upward_imports(edges) == []


def test_contract_leaves_a_type_only_cycle_out() -> None:
    b = "import typing\nif typing.TYPE_CHECKING:\n    from openfeature_canary.policy._a import x\n"
    assert cycles(build_graph(_planted(**{"openfeature_canary.policy._b": (b, False)}))) == []


def test_contract_catches_a_planted_plugin_import() -> None:
    text = "from openfeature.contrib.hook.canary import MetricsHook\n"
    planted = _planted(**{"openfeature_canary.engine": (text, False)})
    assert plugin_imports(planted) == [
        "openfeature_canary.engine:1 imports openfeature.contrib.hook.canary.MetricsHook"
    ]
    demo = _planted(**{"openfeature_canary.demo": (text, True)})
    assert plugin_imports(demo) == []


def test_contract_catches_a_module_in_no_layer() -> None:
    edges = build_graph(_planted(**{"openfeature_canary.extra": ("from . import errors\n", False)}))
    assert upward_imports(edges) == ["extra: in no layer of the contract"]


def test_architecture_doc_draws_the_contracts_layers() -> None:
    """docs/architecture.md's layer line lists the contract's layers, in its order."""
    doc = (ROOT.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- layers -->\n```text\n(.*?)```", doc, re.S)
    assert match, "docs/architecture.md has no <!-- layers --> block"
    drawn = [
        tuple(name.strip("` ") for name in line.split("|")[0].split(","))
        for line in match.group(1).strip().splitlines()
    ]
    expected = [tuple(n.removesuffix(".py") for n in layer) for layer in LAYERS]
    assert drawn == expected


_WITHOUT_REDIS = """
import sys
from importlib.abc import MetaPathFinder


class NoRedis(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "redis" or name.startswith("redis."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, NoRedis())
import openfeature_canary
from openfeature.contrib.provider.canary import CanaryProvider
from openfeature_canary import StateStoreError, open_store
from openfeature_canary.stores import RedisStateStore

open_store("memory://")
assert "redis" not in sys.modules, "redis was imported"
try:
    open_store("redis://127.0.0.1:1/0")
except StateStoreError as exc:
    print(exc)
"""


def test_engine_imports_without_the_redis_extra() -> None:
    """The ``[redis]`` extra is optional: with ``redis`` unimportable, the package, the provider
    and a memory store work, and only opening a ``redis://`` URL fails, naming the extra."""
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_REDIS], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "pip install 'openfeature-canary[redis]'" in result.stdout
