"""Helpers for the add-on tests: pictures on disk, adding them in the panel, snapshots of the data."""

from __future__ import annotations

from pathlib import Path

import bpy

from tests.conftest import draw_object


def picture(folder: Path, name: str = "object.png", **kwargs) -> Path:
    path = folder / name
    draw_object(**kwargs).save(path)
    return path


def add_pictures(*paths: Path) -> None:
    for path in paths:
        bpy.ops.trellis2.add_images(directory=str(path.parent), files=[{"name": path.name}])


def snapshot() -> dict[str, list[str]]:
    """Names of every datablock kind a generation may touch."""
    kinds = ("objects", "meshes", "materials", "images", "collections", "worlds", "cameras")
    return {kind: sorted(block.name for block in getattr(bpy.data, kind)) for kind in kinds}
