"""The package's wiring: every module imports, no import cycle at any level, layers import downwards.

The graph is read from the source (``ast``), so a cycle is found even where Python's import order happens
to hide it. Module-level imports are those that run when the module is imported (the module body, class
bodies, ``if``/``try`` blocks; not function bodies, not ``if TYPE_CHECKING:``). The layer rules look at
every import, also those inside functions, since a lazy import is still an arrow; so does the cycle test.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import donut_hole

PACKAGE = Path(donut_hole.__file__).resolve().parent
NOT_IMPORTABLE = {
    "donut_hole.__main__",  # runs the command
    "donut_hole.cli.__main__",
    "donut_hole.db.migrations.env",  # runs inside Alembic's context
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {
    module_name(path): path
    for path in sorted(PACKAGE.rglob("*.py"))
    if "versions" not in path.relative_to(PACKAGE).parts  # Alembic revisions: loaded by Alembic only
}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _statements(body: list[ast.stmt], *, module_level: bool) -> list[ast.stmt]:
    """The statements of ``body`` and of the blocks nested in it (functions too unless ``module_level``)."""
    found: list[ast.stmt] = []
    for node in body:
        found.append(node)
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            if not module_level:
                found += _statements(node.body, module_level=module_level)
            found += _statements(node.orelse, module_level=module_level)
            continue
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and module_level:
            continue
        for field in ("body", "orelse", "finalbody", "handlers"):
            nested = getattr(node, field, None)
            if isinstance(nested, list):
                blocks = [h.body for h in nested] if field == "handlers" else [nested]
                for block in blocks:
                    statements = [s for s in block if isinstance(s, ast.stmt)]
                    found += _statements(statements, module_level=module_level)
    return found


def imports_of(name: str, *, module_level: bool) -> set[str]:
    """The modules of the package that module ``name`` imports (a submodule rather than its package)."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in _statements(tree.body, module_level=module_level):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                targets.add(submodule if submodule in MODULES else base)
    return {target for target in targets if target in MODULES and target != name}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path ``[a, b, ..., a]``, or ``None``."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        path.append(node)
        for target in sorted(graph[node]):
            if cycle := visit(target):
                return cycle
        path.pop()
        done.add(node)
        return None

    for node in sorted(graph):
        if cycle := visit(node):
            return cycle
    return None


def test_find_cycle_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


@pytest.mark.parametrize("module_level", [True, False], ids=["module level", "function bodies too"])
def test_no_import_cycle(module_level: bool) -> None:
    """No loop, neither among module-level imports nor once the imports inside functions count too (a
    lazy import hides a loop from Python, not from a reader)."""
    graph = {name: imports_of(name, module_level=module_level) for name in MODULES}
    assert "donut_hole.cli.main" in graph["donut_hole.cli"]  # the graph sees package imports
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_what_every_process_shares_loads_no_worker_code() -> None:
    """The API and the CLI send through the queue core and the services; neither imports the worker."""
    shared = ("donut_hole.queue", "donut_hole.services")
    assert [(a, b) for a, b in arrows() if a in shared and _in(b, "donut_hole.worker")] == []


@pytest.mark.parametrize("name", sorted(set(MODULES) - NOT_IMPORTABLE))
def test_every_module_imports(name: str) -> None:
    importlib.import_module(name)


def _in(name: str, *packages: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def arrows() -> list[tuple[str, str]]:
    return [(a, b) for a in MODULES for b in imports_of(a, module_level=False)]


def test_only_the_command_line_imports_the_command_line() -> None:
    callers = [(a, b) for a, b in arrows() if _in(b, "donut_hole.cli") and not _in(a, "donut_hole.cli")]
    assert callers == [("donut_hole.__main__", "donut_hole.cli")]


SERVING = ("donut_hole.worker", "donut_hole.api", "donut_hole.db", "donut_hole.services", "donut_hole.demo")
BELOW_BOTH = (
    "donut_hole.model",
    "donut_hole.scans",
    "donut_hole.documents",
    "donut_hole.evaluation",
    "donut_hole.logs",
)


def test_the_halves_do_not_import_each_other() -> None:
    backwards = [
        (a, b)
        for a, b in arrows()
        if (_in(a, "donut_hole.compression") and _in(b, *SERVING, "donut_hole.storage"))
        or (_in(a, *SERVING) and _in(b, "donut_hole.compression"))
    ]
    assert backwards == []


def test_what_both_halves_use_imports_neither() -> None:
    upwards = [
        (a, b)
        for a, b in arrows()
        if _in(a, *BELOW_BOTH) and _in(b, "donut_hole.compression", "donut_hole.cli", *SERVING)
    ]
    assert upwards == []


def test_the_api_uses_the_worker_only_through_enqueue_recovery_and_retention() -> None:
    """Work goes in through enqueue (and recovery, retry-failed), results go out through retention: plain
    functions, no Celery hooks."""
    used = {b for a, b in arrows() if _in(a, "donut_hole.api") and _in(b, "donut_hole.worker")}
    allowed = {"donut_hole.worker.enqueue", "donut_hole.worker.recovery", "donut_hole.worker.retention"}
    assert used <= allowed | {"donut_hole.worker.sending"}


LIGHT = [
    "donut_hole.cli",  # --help stays instant: commands import torch when they run
    "donut_hole.compression.recipe",  # reading a recipe needs neither torch nor the training loop
    "donut_hole.evaluation.dataset",
    "donut_hole.evaluation.metrics",
    "donut_hole.logs",
    "donut_hole.scans",  # the API counts an upload's pages with it
    "donut_hole.api.images",
]


def test_light_modules_do_not_import_torch() -> None:
    heavy = ["torch", "transformers", "donut_hole.compression.train"]
    code = (
        "import importlib, sys\n"
        f"for name in {LIGHT!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_architecture_picture_names_every_part_of_the_package() -> None:
    section = (PACKAGE.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    parts = [
        f"{path.name}/" if path.is_dir() else path.name
        for path in sorted(PACKAGE.iterdir())
        if (path.is_dir() and (path / "__init__.py").is_file())
        or (path.suffix == ".py" and path.stem not in {"__init__", "__main__"})
    ]
    assert "services.py" in parts and "evaluation/" in parts
    assert [part for part in parts if part not in section] == []
    for module in ("compression", "evaluation", "model"):  # the picture lists these modules in full
        names = sorted(p.stem for p in (PACKAGE / module).glob("*.py") if p.stem != "__init__")
        listed = section[section.index(f"{module}/") :].split("\n")[0:5]
        assert all(name in " ".join(listed) for name in names), (module, names)
