"""Real Blender (the `bpy` module): every test here starts from an empty factory scene."""

import bpy
import pytest


@pytest.fixture(autouse=True)
def factory_scene():
    """Reset scene and preferences to factory settings (empty scene) before each test."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    yield
