"""The architecture's import rule: a layer imports only layers above it; `import rlkit` stays light."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "rlkit"
# top to bottom; a module may import only rlkit layers before its own - at module level and inside functions
# alike (a lazy import keeps `import rlkit` light; it does not make a layer below depend on one above). The first
# five import no rlkit module at all: the leaves every layer may use.
ORDER = ["addresses", "parallel", "checkpoint", "loggers", "viz", "config", "algos", "diagnostics", "datasets",
         "rewards", "rollout", "training", "distributed", "experiment", "main_ppo", "bench"]
LEAVES = ORDER[:5]
SAME_LEVEL = {"datasets": {"rewards"}, "rewards": {"datasets"}}


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def rlkit_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rlkit."):
            found.add(node.module)
        elif isinstance(node, ast.ImportFrom) and node.module == "rlkit":
            found.update(f"rlkit.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("rlkit."))
    return found


@pytest.mark.parametrize("path", sorted(p for p in PKG.rglob("*.py") if p.name != "__init__.py" or p.parent != PKG),
                         ids=lambda p: str(p.relative_to(PKG)))
def test_imports_point_up(path):
    rel = path.relative_to(PKG).with_suffix("")
    own = rel.parts[0]
    if own not in ORDER:
        pytest.fail(f"{rel}: layer {own!r} missing from ORDER")
    for mod in rlkit_imports(path):
        other = layer_of(mod)
        if other == own or other in SAME_LEVEL.get(own, ()):
            continue
        assert other in ORDER, f"{rel} imports {mod}: not a layer (import the module that defines it)"
        assert ORDER.index(other) < ORDER.index(own), f"{rel} imports {mod}: {other} is not above {own}"


@pytest.mark.parametrize("leaf", LEAVES)
def test_leaves_import_no_rlkit(leaf):
    paths = list((PKG / leaf).rglob("*.py")) if (PKG / leaf).is_dir() else [PKG / f"{leaf}.py"]
    assert paths and all(p.exists() for p in paths), leaf
    for path in paths:
        assert "rlkit" not in {n.split(".")[0] for n in _all_imports(path)}, path


def _all_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_algos_are_pure_torch():
    for path in (PKG / "algos").rglob("*.py"):
        heavy = {n.split(".")[0] for n in _all_imports(path)} - {"torch", "__future__", "collections", "typing",
                                                                  "math", "functools", "dataclasses", "numbers",
                                                                  "rlkit", "abc", "warnings", "inspect"}
        assert not heavy, f"{path.name} imports {heavy}"


def test_import_rlkit_is_light():
    code = ("import sys, rlkit; heavy = [m for m in ('torch', 'transformers', 'pandas', 'sglang', 'ray', 'matplotlib', "
            "'ipywidgets') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
