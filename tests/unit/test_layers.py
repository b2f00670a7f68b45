"""The layout is the architecture: layers, no import cycle, small modules.

Every import of ``tasks`` and ``beat`` is read from the source (those inside
functions included, since a lazy import still ties two modules together), and
held to the layers of the README's layout section:

    errors, names, fsutil          leaves
    core                           pure rules (no I/O library)
    config, logutil, metrics,      process-wide services
    memory
    state, storage                 Redis and object storage edges
    archive                        the archive's ledger, verification, scrubbing
    backup                         the pipeline (node service, elector, uploads)
    restore                        reading WAL back (fetch, spool, prefetcher)
    app, broker, wiring, steps,    Celery glue: only these top-level modules,
    jobs, beat                     and beat, import Celery or kombu; wiring
                                   builds the parts, and never imports jobs
    dev, cli                       tools on top
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("tasks", "beat")
MAX_LINES = 300

# Unit -> the units it may import (besides itself). A unit is a top-level
# module of ``tasks`` (``tasks.app``), a subpackage of it (``tasks.backup``),
# or ``beat``.
LEAVES = {"errors", "names", "fsutil"}
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "names": set(),
    "fsutil": set(),
    "core": {"errors"},
    "config": {"core", "errors"},
    "logutil": set(),
    "metrics": set(),
    "memory": set(),
    "state": LEAVES | {"core"},
    "storage": LEAVES | {"core"},
    "archive": LEAVES | {"core", "config", "logutil", "metrics", "state", "storage"},
    "backup": LEAVES
    | {"core", "config", "logutil", "metrics", "memory", "state", "storage", "archive"},
    "restore": LEAVES | {"core", "config", "storage"},
    "broker": set(),
    "app": {"config", "errors", "memory", "names", "state", "beat"},
    "wiring": LEAVES | {"core", "config", "state", "storage", "archive", "backup", "app"},
    "steps": {"config", "errors", "wiring"},
    "jobs": LEAVES | {"core", "config", "backup", "app", "wiring"},
    "beat": {"names", "config", "logutil"},
    "dev": LEAVES | {"core", "config", "state", "storage", "archive", "backup"},
    "cli": LEAVES
    | {"core", "config", "state", "storage", "archive", "backup", "restore", "app", "dev"},
}
CELERY_LIBS = {"celery", "kombu", "redbeat", "flower"}
CELERY_UNITS = {"app", "broker", "wiring", "steps", "jobs", "beat"}
IO_LIBS = {"celery", "kombu", "redis", "boto3", "botocore", "redbeat"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def _modules() -> dict[str, Path]:
    return {
        _module_name(p): p
        for pkg in PACKAGES
        for p in sorted((ROOT / pkg).rglob("*.py"))
        if "__pycache__" not in p.parts
    }


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    is_pkg = _modules()[module].name == "__init__.py"
    base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_pkg else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str) -> Iterator[tuple[str, int]]:
    """Every module ``module`` imports, at any depth of its code, with the line."""
    tree = ast.parse(_modules()[module].read_text(), filename=str(_modules()[module]))
    known = _modules()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, node)
            for alias in node.names:
                # ``from tasks.state import keys`` imports the submodule.
                sub = f"{target}.{alias.name}"
                yield (sub if sub in known else target), node.lineno


def _unit(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "beat":
        return "beat"
    return parts[1] if len(parts) > 1 else "tasks"


def _graph() -> dict[str, set[str]]:
    known = _modules()
    return {
        m: {t for t, _ in _imports(m) if t in known and t != m and not m.startswith(t + ".")}
        for m in known
    }


def test_every_import_respects_the_layers() -> None:
    bad = []
    for module in _modules():
        unit = _unit(module)
        if unit == "tasks":
            continue  # the package's lazy ``app`` attribute for ``celery -A tasks``
        allowed = ALLOWED[unit] | {unit}
        for target, line in _imports(module):
            top = target.split(".")[0]
            if top in PACKAGES and target in _modules() and _unit(target) not in allowed:
                bad.append(f"{module}:{line} imports {target}")
            if top in CELERY_LIBS and unit not in CELERY_UNITS:
                bad.append(f"{module}:{line} imports {target} (only the Celery glue may)")
            if top in IO_LIBS and unit == "core":
                bad.append(f"{module}:{line} imports {target} (core is pure)")
    assert not bad, "\n".join(bad)


def test_the_layer_table_knows_every_unit() -> None:
    units = {_unit(m) for m in _modules()} - {"tasks"}
    assert units == set(ALLOWED), units ^ set(ALLOWED)


def test_no_import_cycle() -> None:
    graph = _graph()
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []
    cycles: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycles.append(" -> ".join([*stack[stack.index(t) :], t]))
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "\n".join(cycles)


def test_the_cycle_check_finds_a_cycle(tmp_path: Path) -> None:
    """The check above is not vacuous: two modules importing each other (in a
    function, as the old ``cli`` and ``restore`` did) are reported."""
    pkg = tmp_path / "tasks"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from tasks import b\n")
    (pkg / "b.py").write_text("from tasks.a import f\n")
    saved = ROOT
    try:
        globals()["ROOT"] = tmp_path
        _modules.cache_clear()
        with pytest.raises(AssertionError, match=re.escape("tasks.a -> tasks.b -> tasks.a")):
            test_no_import_cycle()
    finally:
        globals()["ROOT"] = saved
        _modules.cache_clear()


@pytest.mark.parametrize("module", sorted(_modules()))
def test_module_is_small_and_says_its_job(module: str) -> None:
    path = _modules()[module]
    text = path.read_text()
    lines = text.count("\n")
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)}: {lines} lines (at most {MAX_LINES})"
    if text.strip():
        doc = ast.get_docstring(ast.parse(text))
        assert doc, f"{path.relative_to(ROOT)} does not open with a docstring saying its job"
