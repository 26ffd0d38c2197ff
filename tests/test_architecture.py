"""Boundaries that keep the design honest, checked on the source itself.

- The cache key, content hashing, the reuse decision and the script side need no Dagster.
- Packages are layered: ``data`` < ``reuse`` < ``compute`` < ``pipeline`` < ``service`` < ``cli``;
  a lower package never imports a higher one (at module level or inside a function).
- No import cycles between modules (``checks`` ↔ ``datasets`` ↔ ``registry`` used to be one).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "aml_assets"
LAYERS = ["errors", "data", "reuse", "compute", "pipeline", "service", "cli", "compat"]


@pytest.mark.parametrize(
    "module",
    [
        "aml_assets.reuse.fingerprint",
        "aml_assets.reuse.code",
        "aml_assets.reuse.decision",
        "aml_assets.data.content",
        "aml_assets.data.layout",
        "amlrun",
        "amlrun.launch",
    ],
)
def test_module_imports_without_dagster(module):
    code = (
        f"import sys, importlib; importlib.import_module({module!r}); "
        "bad = sorted(m for m in sys.modules if m == 'dagster' or m.startswith('dagster.')); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"{module} pulls in Dagster: {out.stdout}{out.stderr}"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """aml_assets modules a file imports, outside ``if TYPE_CHECKING:`` blocks."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("aml_assets"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("aml_assets"):
            found.add(node.module)
    return found


def _graph() -> dict[str, set[str]]:
    files = [p for p in PACKAGE.rglob("*.py")]
    return {_module_name(p): _imports(p) for p in files if _module_name(p) != "aml_assets"}


def _layer(module: str) -> int:
    part = module.split(".")[1]
    return LAYERS.index(part)


def test_lower_packages_never_import_higher_ones():
    wrong = [
        f"{mod} imports {dep}"
        for mod, deps in _graph().items()
        for dep in deps
        if dep != "aml_assets" and _layer(dep) > _layer(mod)
    ]
    assert not wrong, "layering broken:\n" + "\n".join(sorted(wrong))


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if dep not in graph:
                continue
            if state.get(dep) == 1:
                cycles.append(" -> ".join([*stack[stack.index(dep):], dep]))
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_every_module_belongs_to_a_layer():
    assert all(_layer(m) >= 0 for m in _graph())
