"""The layers, enforced over the import graph of ``alae_ray`` and ``apps`` (imports inside functions
included: a lazy import is still a dependency), and the core without Ray.

Low to high (docs/architecture.md): core; data and the metric networks; the shared infrastructure,
the judges and the authors' releases; the Python API; train, eval and serve; tune; the CLI; apps.
A module may import its own unit and units of lower layers only: never a higher one, nor a peer of
its own layer. No import cycle among modules, and no import of another unit's private names."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS = [
    {"core"},
    {"data", "metrics"},
    {"infra", "judges", "releases"},
    {"api"},
    {"train", "eval", "serve"},
    {"tune"},
    {"cli"},
    {"apps"},
]
LAYER = {unit: i for i, units in enumerate(LAYERS) for unit in units}


def unit(module: str) -> str:
    """The package (or top-level module) of alae_ray a module belongs to; the package's own __init__
    (``alae_ray.load``) is the API's front door."""
    parts = module.split(".")
    return "apps" if parts[0] == "apps" else parts[1] if len(parts) > 1 else "api"


def modules() -> dict[str, Path]:
    found = {}
    for path in [*ROOT.glob("alae_ray/**/*.py"), *ROOT.glob("apps/**/*.py")]:
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> list[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) for every project import in the module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for a in node.names:  # "from pkg import module" imports the module
                sub = f"{base}.{a.name}"
                out.append((sub, None, node.lineno) if sub in known else (base, a.name, node.lineno))
    result = []
    for target, attr, line in out:
        if target.split(".")[0] not in ("alae_ray", "apps"):
            continue
        while target not in known and "." in target:
            target = target.rpartition(".")[0]
        result.append((target, attr, line))
    return result


@pytest.fixture(scope="module")
def graph() -> dict[str, list[tuple[str, str | None, int]]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def test_every_unit_has_a_layer(graph):
    assert {unit(m) for m in graph} <= set(LAYER), sorted({unit(m) for m in graph} - set(LAYER))
    assert "alae_ray.infra.board" in graph and "apps.gradio_app" in graph  # the walk found the tree


def test_no_import_runs_up_or_sideways(graph):
    wrong = sorted({f"{m}:{line} imports {t} ({unit(m)} is layer {LAYER[unit(m)]}, {unit(t)} is layer {LAYER[unit(t)]})"
             for m, edges in graph.items() for t, _, line in edges
             if unit(t) != unit(m) and LAYER[unit(t)] >= LAYER[unit(m)]})
    assert not wrong, "\n".join(wrong)


def test_no_import_of_another_units_private_names(graph):
    wrong = [f"{m}:{line} imports {t}.{attr}" for m, edges in graph.items() for t, attr, line in edges
             if attr and attr.startswith("_") and unit(t) != unit(m)]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles(graph):
    """Tarjan's strongly connected components over modules: every one must be a single module."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w, _, _ in graph[v]:
            if w == v:
                continue
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
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_the_contract_sees_a_violation(tmp_path, graph):
    """The checks are live: a higher import written into a core module is reported."""
    known = modules()
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from ..train.run import run\n    from ..data.synthetic import _secret\n")
    edges = imports("alae_ray.core.bad", bad, known)
    assert ("alae_ray.train.run", "run", 2) in edges and ("alae_ray.data.synthetic", "_secret", 3) in edges
    assert LAYER[unit("alae_ray.train.run")] > LAYER[unit("alae_ray.core.bad")]


def test_test_modules_do_not_import_each_other():
    """Shared test code lives in tests/helpers.py (and fixtures in conftest.py)."""
    tests = {p.stem for p in (ROOT / "tests").rglob("test_*.py")}
    wrong = []
    for path in (ROOT / "tests").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and not node.level else [])
            wrong += [f"{path.name}:{node.lineno} imports {n}" for n in names if n and n.split(".")[0] in tests]
    assert not wrong, wrong


def test_core_imports_without_ray():
    """The core (and the Python API and the authors' import on it) never imports Ray."""
    core = sorted(f"alae_ray.core.{p.stem}" for p in (ROOT / "alae_ray" / "core").glob("*.py") if p.stem != "__init__")
    wanted = [*core, "alae_ray.api", "alae_ray.releases", "alae_ray.metrics.networks", "alae_ray.judges.shapes"]
    assert "alae_ray.core.phases" in wanted and "alae_ray.core.networks" in wanted
    code = textwrap.dedent(f"""
        import sys, importlib
        class BlockRay:
            def find_spec(self, name, path=None, target=None):
                if name == "ray" or name.startswith("ray."):
                    raise ImportError("ray is blocked in the core")
        sys.meta_path.insert(0, BlockRay())
        for name in {wanted!r}:
            importlib.import_module(name)
        assert not any(m == "ray" or m.startswith("ray.") for m in sys.modules), "ray was imported"
        print("ok", len({wanted!r}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok")
