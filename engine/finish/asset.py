"""`FinishedAsset` and `finish()`: decoded mesh + attribute volume -> a textured, budgeted, UV-mapped asset.

Steps: clean-up -> decimation to the face budget -> consistent orientation -> UV unwrap -> bake -> flags.
The mesh is single-sided only when it is closed and consistently wound; otherwise double-sided.
The result is plain numpy that Blender can take directly (`foreach_set` for the mesh, `image.pixels` for
the maps; see `blender_uvs` and `blender_pixels`) and that `write_glb` turns into a GLB.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from engine.finish.bake import MaterialVolume, bake, check_texture_size
from engine.finish.cleanup import clean_mesh, compact
from engine.finish.decimate import check_face_budget, decimate
from engine.finish.orient import orient_faces
from engine.finish.topology import vertex_normals
from engine.finish.unwrap import default_padding, unwrap

log = logging.getLogger(__name__)

ALPHA_MODES = ("auto", "OPAQUE", "MASK", "BLEND")
BINARY_ALPHA_LOW, BINARY_ALPHA_HIGH = 5, 250  # uint8: alpha counts as binary when every texel is outside (5, 250)


@dataclass
class FinishedAsset:
    """A textured triangle mesh in the engine's Z-up frame.

    UVs use the image convention (v down; row 0 of the image arrays is v = 0), which is glTF's.
    `base_color` is sRGB RGB with alpha in A; `metallic_roughness` follows glTF (G roughness, B metallic).
    """

    vertices: np.ndarray  # float32 [V, 3] Z-up, split along UV seams
    faces: np.ndarray  # int64 [F, 3] counter-clockwise seen from outside where `consistent`
    normals: np.ndarray  # float32 [V, 3] smooth (identical across seams)
    uvs: np.ndarray  # float32 [V, 2]
    base_color: np.ndarray  # uint8 [T, T, 4]
    metallic_roughness: np.ndarray  # uint8 [T, T, 3]
    alpha_mode: str  # "OPAQUE" | "MASK" | "BLEND"
    double_sided: bool
    alpha_cutoff: float = 0.5
    name: str = "trellis2"
    stats: dict = field(default_factory=dict)

    @property
    def has_alpha(self) -> bool:
        return self.alpha_mode != "OPAQUE"

    def blender_uvs(self) -> np.ndarray:
        """Per-loop UVs `[3F, 2]` in Blender's convention (v up), ready for `uv_layer.data.foreach_set('uv', ...)`."""
        uv = self.uvs[self.faces.reshape(-1)]
        return np.stack([uv[:, 0], 1.0 - uv[:, 1]], 1).astype(np.float32)

    def blender_pixels(self, name: str) -> np.ndarray:
        """Flat float32 RGBA in Blender's pixel order (bottom row first) for `image.pixels.foreach_set`."""
        img = {"base_color": self.base_color, "metallic_roughness": self.metallic_roughness}[name]
        if img.shape[-1] == 3:
            img = np.concatenate([img, np.full(img.shape[:2] + (1,), 255, np.uint8)], -1)
        return (img[::-1].astype(np.float32) / 255.0).reshape(-1)


def choose_alpha_mode(base_color: np.ndarray, chart_mask: np.ndarray, requested: str) -> str:
    """BLEND when any baked alpha (on the surface) is below 255, MASK when it is also binary, else OPAQUE."""
    if requested != "auto":
        return requested
    alpha = base_color[..., 3][chart_mask]
    if alpha.size == 0 or alpha.min() == 255:
        return "OPAQUE"
    if ((alpha <= BINARY_ALPHA_LOW) | (alpha >= BINARY_ALPHA_HIGH)).all():
        return "MASK"
    return "BLEND"


def finish(
    vertices,
    faces,
    volume,
    *,
    face_budget: int = 200_000,
    texture_size: int = 2048,
    padding: int | None = None,
    unwrap_method: str = "box",
    alpha_mode: str = "auto",
    min_island_area: float = 1e-5,
    orient: bool = True,
    name: str = "trellis2",
) -> FinishedAsset:
    """Finish a decoded mesh (Z-up, [-0.5, 0.5]^3) with its attribute volume (`MaterialVolume` or an `Asset`).

    A `face_budget` at or above the cleaned face count keeps every face. `alpha_mode="auto"` picks
    OPAQUE, MASK or BLEND from the baked alpha; the other values force that mode.
    """
    check_face_budget(face_budget)
    check_texture_size(texture_size)
    if alpha_mode not in ALPHA_MODES:
        from engine.errors import EngineInputError

        raise EngineInputError(f"alpha_mode must be one of {ALPHA_MODES}; got {alpha_mode!r}.")
    if not isinstance(volume, MaterialVolume):
        volume = MaterialVolume.of(volume)
    padding = default_padding(texture_size) if padding is None else padding
    times: dict[str, float] = {}

    def step(label, fn, *args, **kw):
        t = time.perf_counter()
        out = fn(*args, **kw)
        times[label] = time.perf_counter() - t
        return out

    v, f, report = step("cleanup", clean_mesh, vertices, faces, min_island_area=min_island_area)
    v, f = step("decimate", decimate, v, f, face_budget)
    v, f, _ = compact(v, f)
    closed_and_consistent = False
    if orient:  # after decimation: the decimator ignores winding, and there are fewer faces to walk
        f, orientation = step("orient", orient_faces, v, f)
        closed_and_consistent = orientation.closed and orientation.consistent
    normals = step("normals", vertex_normals, v, f)
    mesh = step("unwrap", unwrap, v, f, texture_size, padding=padding, method=unwrap_method)
    maps = step("bake", bake, mesh, volume, texture_size, padding=padding)

    asset = FinishedAsset(
        vertices=mesh.vertices,
        faces=mesh.faces,
        normals=normals[mesh.vmap],
        uvs=mesh.uvs,
        base_color=maps.base_color,
        metallic_roughness=maps.metallic_roughness,
        alpha_mode=choose_alpha_mode(maps.base_color, maps.chart_mask, alpha_mode),
        double_sided=not closed_and_consistent,
        name=name,
        stats={
            "times": times,
            "cleanup": report,
            "faces": len(mesh.faces),
            "charts": mesh.charts,
            "missing_fraction": maps.missing_fraction,
            "chart_coverage": float(maps.chart_mask.mean()),
        },
    )
    log.info(
        "finished: %d faces, %d charts, alpha %s, double-sided %s",
        len(f),
        mesh.charts,
        asset.alpha_mode,
        asset.double_sided,
    )
    return asset
