"""The architecture's import rule: a layer imports only layers above it; `import rlkit` stays light."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "rlkit"
# top to bottom; a module may import (at module level) only rlkit layers before its own
ORDER = ["parallel", "config", "algos", "diagnostics", "datasets", "rewards", "rollout", "training", "distributed",
         "viz", "loggers", "checkpoint", "experiment", "main_ppo", "bench"]
SAME_LEVEL = {"datasets": {"rewards"}, "rewards": {"datasets"}}


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def module_level_rlkit_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in tree.body:  # module level only: imports inside functions are lazy by design
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
    for mod in module_level_rlkit_imports(path):
        other = layer_of(mod)
        if other == own or other in SAME_LEVEL.get(own, ()):
            continue
        assert ORDER.index(other) < ORDER.index(own), f"{rel} imports {mod}: {other} is not above {own}"


def test_viz_imports_no_rlkit():
    for path in (PKG / "viz").rglob("*.py"):
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
