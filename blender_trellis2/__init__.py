"""TRELLIS.2 for Blender: image to textured 3D model, computed in-process by the bundled `engine` package.

Registration is cheap and cannot fail on a missing or broken PyTorch: nothing here imports torch or the
engine. `register()` only puts folders on sys.path (the vendored engine, and the runtime the user installed
from Preferences) and registers the classes of the modules in MODULES. The engine is imported on first use,
inside operators and jobs.

Loaded two ways, the same code:
- as an extension (`bl_ext.<repo>.trellis2`): build.py vendors engine/ under `_vendor/`, added here to sys.path;
- from the repository (`blender_trellis2`, tests and scripts): engine/ is already a top-level package.
bpy itself is imported inside register()/unregister() only, so `blender_trellis2.runtime_install` and other
bpy-free modules can be imported and tested without Blender.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

# Modules registered in order: each one's `classes` tuple, then its own `register()` if it has one
# (properties: the Scene/Object pointers; jobs: file-load handler and status bar; cli: `blender -c trellis2`).
MODULES = ("preferences", "properties", "operators", "panels", "jobs", "cli")

VENDOR = Path(__file__).resolve().parent / "_vendor"

_added_paths: list[str] = []


def _modules():
    return [importlib.import_module(f".{name}", __name__) for name in MODULES]


def register() -> None:
    import bpy

    if VENDOR.is_dir() and str(VENDOR) not in sys.path:
        sys.path.insert(0, str(VENDOR))  # holds only `engine`; first, so no other `engine` shadows ours
        _added_paths.append(str(VENDOR))
    for module in _modules():
        for cls in getattr(module, "classes", ()):
            bpy.utils.register_class(cls)
        if hasattr(module, "register"):
            module.register()
    from . import preferences

    _added_paths.extend(preferences.activate_runtime())


def unregister() -> None:
    import bpy

    for module in reversed(_modules()):
        if hasattr(module, "unregister"):
            module.unregister()
        for cls in reversed(getattr(module, "classes", ())):
            bpy.utils.unregister_class(cls)
    from . import runtime_install

    runtime_install.deactivate(_added_paths)  # modules already imported (torch) stay until Blender restarts
    _added_paths.clear()
