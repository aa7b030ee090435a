"""The built Linux zip installs into Blender, registers without torch, and its runtime buttons work.

The install check runs in a child Python with its own Blender user folder (BLENDER_USER_RESOURCES), so the
zip's wheels and the runtime land in a scratch folder, and torch is made unimportable there: that is what
an artist without PyTorch sees. The round trip from the repository runs in this process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import bpy
import pytest

import build
from tests.test_runtime_install import make_wheel

# Runs in the child: block torch, install and enable the zip, record what happens as JSON.
CHILD = r"""
import importlib.abc, importlib.util, json, sys

class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")

sys.meta_path.insert(0, NoTorch())
zip_path, wheels = sys.argv[1], sys.argv[2]
import bpy

class Recorder:
    # Stands in for a UILayout: records what the preferences draw.
    def __init__(self, out):
        self.out = out
    def label(self, text="", icon="NONE"):
        self.out.append(["label", text])
    def operator(self, idname, text="", icon="NONE"):
        self.out.append(["operator", idname, text])
    def prop(self, data, name, **kw):
        self.out.append(["prop", name])
    def row(self, **kw):
        return self
    def column(self, **kw):
        return self
    def box(self):
        return self

def drawn(prefs_module, prefs):
    out = []
    prefs_module.draw_status(Recorder(out), prefs)
    return out

report = {}
bpy.ops.wm.read_factory_settings(use_empty=True)
before = set(sys.modules)
bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default", enable_on_install=True)
module = "bl_ext.user_default.trellis2"
report["enabled"] = module in bpy.context.preferences.addons
report["new_heavy_modules"] = sorted(m for m in set(sys.modules) - before if m.split(".")[0] in ("torch", "engine"))
report["engine_origin"] = importlib.util.find_spec("engine").origin
pkg = sys.modules[module]
prefs_module = sys.modules[module + ".preferences"]
prefs = bpy.context.preferences.addons[module].preferences
report["prefs_class"] = type(prefs).__name__
report["operators"] = [hasattr(bpy.types, "TRELLIS2_OT_" + n) for n in ("install_runtime", "remove_runtime")]
report["panel_without_torch"] = drawn(prefs_module, prefs)

try:
    bpy.ops.trellis2.install_runtime(consent=False)
    report["no_consent"] = "installed anyway"
except RuntimeError as exc:
    report["no_consent"] = str(exc)

prefs.runtime_source = "WHEELS"
prefs.wheels_folder = wheels
bpy.ops.trellis2.install_runtime(consent=True)
state = prefs_module.ri.read_state(prefs_module.runtime_layout())
report["installed"] = state.summary()
report["runtime_on_path"] = state.paths[0] in sys.path
report["runtime_root"] = str(prefs_module.runtime_layout().root)
bpy.ops.trellis2.install_runtime(consent=True)
report["second_install"] = prefs_module._state["message"]
report["panel_with_runtime"] = drawn(prefs_module, prefs)

bpy.ops.trellis2.remove_runtime()
report["after_remove"] = prefs_module.ri.read_state(prefs_module.runtime_layout()).installed
report["runtime_off_path"] = state.paths[0] not in sys.path

vendor = str(pkg.VENDOR)
bpy.ops.preferences.addon_disable(module=module)
report["disabled"] = [hasattr(bpy.types, "TRELLIS2_OT_install_runtime"), vendor in sys.path]
bpy.ops.preferences.addon_enable(module=module)
report["reenabled"] = [hasattr(bpy.types, "TRELLIS2_OT_install_runtime"), vendor in sys.path]
report["torch_imported"] = "torch" in sys.modules
print("REPORT" + json.dumps(report))
"""


@pytest.fixture(scope="module")
def linux_zip(tmp_path_factory) -> Path:
    """`python build.py` output: cached wheels in wheels/ (downloaded on the first run), zips in a scratch dir."""
    zips = build.build(build.ROOT / "wheels", tmp_path_factory.mktemp("dist"), write_manifest=False)
    return next(z for z in zips if z.name.endswith("-linux_x64.zip"))


def test_linux_zip_installs_and_registers_without_torch(linux_zip, tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels, "torch", "0.0.1")  # a stand-in: the runtime buttons install it with the real pip
    env = dict(os.environ, BLENDER_USER_RESOURCES=str(tmp_path / "user"), PIP_CONFIG_FILE=os.devnull)
    env.pop("PIP_FIND_LINKS", None)  # this machine's wheel cache would offer the real torch
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(linux_zip), str(wheels)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("REPORT")]
    assert done.returncode == 0 and lines, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(lines[0][len("REPORT") :])

    assert report["enabled"] and report["prefs_class"] == "TRELLIS2_AddonPreferences"
    assert report["operators"] == [True, True]
    assert report["new_heavy_modules"] == [], "enabling the add-on must not import torch or the engine"
    assert report["engine_origin"].endswith("extensions/user_default/trellis2/_vendor/engine/__init__.py")

    panel = report["panel_without_torch"]
    assert ["label", "PyTorch is not installed: generation needs it. Install it below."] in panel
    assert ["operator", "trellis2.install_runtime", "Install Runtime"] in panel
    assert "tick 'I agree'" in report["no_consent"]

    assert report["installed"] == "torch 0.0.1"
    assert report["runtime_root"] == str(tmp_path / "user/extensions/.user/user_default/trellis2/runtime")
    assert report["runtime_on_path"]
    assert report["second_install"] == "Already installed: torch 0.0.1"
    assert any(e[0] == "label" and e[1].startswith("Installed: torch 0.0.1") for e in report["panel_with_runtime"])

    assert report["after_remove"] is False and report["runtime_off_path"]
    assert report["disabled"] == [False, False], "unregister removes the operators and the vendored path"
    assert report["reenabled"] == [True, True]
    assert report["torch_imported"] is False


def test_register_unregister_round_trip_from_the_repo():
    import blender_trellis2
    from blender_trellis2 import preferences

    before = set(sys.modules)
    for _ in range(2):
        blender_trellis2.register()
        assert all(cls.is_registered for cls in preferences.classes)
        assert bpy.ops.trellis2.check_runtime.idname() == "TRELLIS2_OT_check_runtime"
        blender_trellis2.unregister()
        assert not any(cls.is_registered for cls in preferences.classes)
    heavy = {m for m in set(sys.modules) - before if m.split(".")[0] in ("torch", "engine")}
    assert not heavy, f"register imported {sorted(heavy)}"
