"""The package as a whole: its public surface, and imports that point one way with no cycle."""

from __future__ import annotations

import ast
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import fredflow

SRC = Path(fredflow.__file__).resolve().parent


def test_public_api_is_exactly_all():
    public = {name for name in dir(fredflow) if not name.startswith("_")}
    # subpackages appear as attributes once imported; they are not the API
    modules = {name for name in public if type(getattr(fredflow, name)).__name__ == "module"}
    assert public - modules == set(fredflow.__all__)
    for name in fredflow.__all__:
        assert getattr(fredflow, name).__module__.startswith("fredflow."), name


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        if parts[-1] == "__main__":
            continue
        out[".".join(parts)] = path
    return out


def _module_level_imports(name: str, path: Path, known: set[str]) -> set[str]:
    """fredflow modules ``name`` imports at module level (not inside functions, not under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for sub in ast.walk(node) if isinstance(node, (ast.Try, ast.If)) else [node]:
            if isinstance(sub, ast.Import):
                targets = [alias.name for alias in sub.names]
            elif isinstance(sub, ast.ImportFrom):
                base = sub.module or ""
                if sub.level:
                    anchor = package.split(".")[: len(package.split(".")) - (sub.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                # `from pkg import sub` depends on the submodule; on pkg itself only for names defined there
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in sub.names]
            else:
                continue
            found |= {t for t in targets if t in known and t != name}
    # a module's packages are initialised before it (importing a sibling through them is no cycle)
    ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
    return found - ancestors


def test_no_import_cycle_and_stages_never_import_the_layers_above():
    modules = _modules()
    graph = {name: _module_level_imports(name, path, set(modules)) for name, path in modules.items()}
    state: dict[str, int] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = 1
        for dep in graph[name]:
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*trail[trail.index(dep):], dep]))
            if dep not in state:
                visit(dep, [*trail, dep])
        state[name] = 2

    for name in graph:
        if name not in state:
            visit(name, [name])
    above = ("fredflow.api", "fredflow.runners", "fredflow.run.plan", "fredflow.run.execute", "fredflow.cli")
    stages = ("fredflow.sources", "fredflow.destinations", "fredflow.staging", "fredflow.ratelimit",
              "fredflow.fetch", "fredflow.options", "fredflow.settings", "fredflow.state", "fredflow.run.batches")
    for name, deps in graph.items():
        if name.startswith(stages):
            bad = sorted(d for d in deps if d.startswith(above))
            assert not bad, f"{name} imports {bad}: stages must not depend on the layers that run them"
    assert not any(d.startswith(("fredflow.runners.prefect",)) for n, ds in graph.items()
                   if not n.startswith(("fredflow.runners.prefect", "fredflow.bench")) for d in ds), \
        "Prefect and Dask are imported only under fredflow.runners.prefect"


def test_every_module_imports_on_its_own_in_a_fresh_interpreter():
    def attempt(name: str) -> tuple[str, int, str]:
        done = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True, text=True, timeout=120)
        return name, done.returncode, done.stderr.strip().splitlines()[-1:] and done.stderr.strip().splitlines()[-1]

    with ThreadPoolExecutor(4) as pool:
        failures = [r for r in pool.map(attempt, _modules()) if r[1] != 0]
    assert failures == []
