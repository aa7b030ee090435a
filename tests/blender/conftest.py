"""Real Blender (the `bpy` module): every test here starts from an empty factory scene."""

import bpy
import pytest

ADDON = "blender_trellis2"


@pytest.fixture(autouse=True)
def factory_scene():
    """Reset scene and preferences to factory settings (empty scene) before each test."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    yield


@pytest.fixture
def addon(tiny_checkpoint):
    """The add-on enabled as Blender enables it, its preferences pointing at the tiny checkpoint on the CPU."""
    import addon_utils  # on sys.path once bpy is imported

    addon_utils.enable(ADDON, default_set=True)
    prefs = bpy.context.preferences.addons[ADDON].preferences
    prefs.model_source, prefs.local_model_folder, prefs.device = "LOCAL", str(tiny_checkpoint), "CPU"
    yield prefs
    from blender_trellis2 import jobs

    job = jobs.current()
    if job is not None:  # a failed test: stop its job so the next test starts clean
        job.cancel()
        jobs.wait(job)
    addon_utils.disable(ADDON, default_set=True)
    assert job is None, "a test left a job running"
