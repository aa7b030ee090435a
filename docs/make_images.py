"""Renders for docs/EXTENSION.md, written under docs/images/ (each a small PNG).

1. `tiny_demo.png`: `python -m blender_trellis2 demo` as is: the tiny random checkpoint's result (scattered
   specks: its weights are random) in the studio relight setup.
2. `procedural_studio.png` / `procedural_sky.png`: a procedural shape (a bumpy sphere with a coloured
   attribute volume) finished by `engine.finish` and brought in by the add-on's own import path
   (mesh_import + materials, as a generation's result is), lit by the two Relight worlds.
   Not a model output: it shows what the import, the PBR material and Relight do with a real surface.

    .venv/bin/python docs/make_images.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import bpy  # noqa: E402

from blender_trellis2 import cli, materials, mesh_import, relight, work  # noqa: E402
from engine.finish import MaterialVolume, finish  # noqa: E402
from tests.test_finish import cube_sphere  # noqa: E402

IMAGES = ROOT / "docs" / "images"


def painted_volume(vertices: np.ndarray, resolution: int = 64) -> MaterialVolume:
    """A shell of voxels around the surface: orange body, a blue metallic band, glossy top."""
    base = np.floor((vertices + 0.5) * resolution).astype(np.int64)
    offsets = np.stack(np.meshgrid(*[np.arange(-1, 2)] * 3, indexing="ij"), -1).reshape(-1, 3)
    coords = np.unique((base[:, None] + offsets[None]).reshape(-1, 3), axis=0)
    coords = coords[((coords >= 0) & (coords < resolution)).all(1)]
    p = (coords + 0.5) / resolution - 0.5
    band = np.abs(p[:, 2]) < 0.06
    attrs = np.zeros((len(p), 6), np.float32)
    attrs[:, 0:3] = np.where(band[:, None], [0.1, 0.25, 0.8], [0.9, 0.45, 0.12])
    attrs[:, 3] = band * 0.9  # metallic
    attrs[:, 4] = np.where(p[:, 2] > 0.1, 0.25, 0.6)  # roughness
    attrs[:, 5] = 1.0
    return MaterialVolume(coords.astype(np.int32), attrs, resolution)


def procedural_renders() -> None:
    bpy.ops.wm.read_factory_settings(use_empty=True)
    v, f = cube_sphere(40, radius=0.4, bumps=0.05)
    asset = finish(v, f, painted_volume(v), texture_size=512)
    mesh = mesh_import.mesh_from_asset("procedural", asset, size=1.0)
    mesh.materials.append(materials.build_material("procedural", work.encode_maps(asset)))
    obj = bpy.data.objects.new("procedural", mesh)
    bpy.context.scene.collection.objects.link(obj)
    for style in ("STUDIO", "SKY"):
        relight.setup(obj, style)
        relight.render_still(IMAGES / f"procedural_{style.lower()}.png", size=320, samples=24)


def main() -> None:
    IMAGES.mkdir(parents=True, exist_ok=True)
    cli.main(["demo", "--out", str(ROOT / "out"), "--render-size", "320", "--samples", "24"])
    (IMAGES / "tiny_demo.png").write_bytes((ROOT / "out" / "demo.png").read_bytes())
    procedural_renders()
    for path in sorted(IMAGES.glob("*.png")):
        print(f"{path.relative_to(ROOT)}: {path.stat().st_size / 1000:.0f} kB")


if __name__ == "__main__":
    main()
