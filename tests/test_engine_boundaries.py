"""The engine never touches Blender, and importing it is cheap and side-effect free."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[1] / "engine"
BLENDER_MODULES = {"bpy", "mathutils", "bmesh", "bgl", "gpu", "blf", "bpy_extras", "idprop"}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
            "import_module",
            "__import__",
        ):
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                roots.add(node.args[0].value.split(".")[0])
    return roots


def test_no_engine_module_imports_blender():
    files = sorted(ENGINE.rglob("*.py"))
    assert len(files) > 20
    offenders = {str(p.relative_to(ENGINE)): sorted(imported_roots(p) & BLENDER_MODULES) for p in files}
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"engine modules import Blender modules: {offenders}"


def test_the_scan_sees_blender_imports(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import os\nfrom mathutils import Vector\nimport bpy.types\nx = __import__('bmesh')\n")
    assert imported_roots(sample) & BLENDER_MODULES == {"mathutils", "bpy", "bmesh"}


def test_importing_every_engine_module_loads_no_blender_module():
    modules = sorted(
        ".".join(p.relative_to(ENGINE.parent).with_suffix("").parts).removesuffix(".__init__")
        for p in ENGINE.rglob("*.py")
        if p.name != "__main__.py"
    )
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(sorted(set(sys.modules) & set({sorted(BLENDER_MODULES)!r})))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ENGINE.parent)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_importing_engine_is_cheap():
    code = "import sys, engine\nprint(sorted(m for m in ('torch', 'transformers', 'safetensors') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ENGINE.parent)
    assert result.returncode == 0, result.stderr
    assert "transformers" not in result.stdout
