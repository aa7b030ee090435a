"""Bake the PBR attribute volume (spec 5.6) into UV-space texture maps.

Each covered texel's 3-D point (barycentric blend of its triangle's corners) is looked up in the volume
with the renormalised sparse trilinear lookup of `engine.ovoxel` (`sample_attributes`; its
`AttributeVolume` is built once so the voxels are sorted once). Texels in a ring of
`padding` texels around each chart are baked too, at the nearest point of their neighbour's triangle,
so bilinear filtering and the first mip levels never pull in colour from outside the surface. Texels
that are still empty (between charts, or where no voxel lies near the surface) are filled by push-pull
(a weighted mip pyramid, read back coarse to fine), so no black texel shows anywhere.

Base colour values in the volume are the sRGB-encoded numbers of the training textures, so they are
written to the sRGB base-colour map as they are (x * 255, rounded).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from engine.errors import EngineInputError
from engine.finish.raster import clamped_barycentrics, dilate_ids, rasterise
from engine.finish.unwrap import UVMesh

log = logging.getLogger(__name__)

MAX_TEXTURE_SIZE = 8192
MIN_TEXTURE_SIZE = 16


@dataclass(frozen=True)
class MaterialVolume:
    """PBR attributes on sparse voxels: base_color 0:3, metallic 3, roughness 4, alpha 5, nominally in [0, 1]."""

    coords: np.ndarray  # int [N, 3]
    attrs: np.ndarray  # float32 [N, 6]
    resolution: int
    origin: tuple[float, float, float] = (-0.5, -0.5, -0.5)

    @property
    def voxel_size(self) -> float:
        return 1.0 / self.resolution

    @classmethod
    def of(cls, asset) -> MaterialVolume:
        """From anything with `coords`, `attrs`, `resolution` (and optionally `origin`), e.g. `engine.results.Asset`."""
        return cls(
            coords=np.asarray(asset.coords),
            attrs=np.asarray(asset.attrs, dtype=np.float32),
            resolution=int(asset.resolution),
            origin=tuple(getattr(asset, "origin", (-0.5, -0.5, -0.5))),
        )


@dataclass(frozen=True)
class BakedMaps:
    """Baked maps in image convention (row 0 = v 0) and what the bake saw."""

    base_color: np.ndarray  # uint8 [T, T, 4] sRGB RGB + linear alpha
    metallic_roughness: np.ndarray  # uint8 [T, T, 3] glTF layout: G roughness, B metallic (R 255, unused)
    chart_mask: np.ndarray  # bool [T, T] texel centre inside a triangle
    baked_mask: np.ndarray  # bool [T, T] texel got a value from the volume (chart or padding ring)
    missing_fraction: float  # chart texels with no voxel near their point


def check_texture_size(size: int) -> int:
    if (
        isinstance(size, bool)
        or not isinstance(size, int | np.integer)
        or size < MIN_TEXTURE_SIZE
        or size > MAX_TEXTURE_SIZE
        or size & (size - 1)
    ):
        raise EngineInputError(
            f"The texture size must be a power of two from {MIN_TEXTURE_SIZE} to {MAX_TEXTURE_SIZE} "
            f"(e.g. 1024, 2048, 4096); got {size!r}."
        )
    return int(size)


def sample_volume(volume: MaterialVolume, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Attributes `[M, 6]` at points `[M, 3]` and whether any voxel was near (a ones channel, renormalised)."""
    from engine.ovoxel import AttributeVolume

    attrs = np.concatenate([volume.attrs, np.ones((len(volume.attrs), 1), dtype=np.float32)], 1)
    lookup = AttributeVolume(volume.coords, attrs, volume.origin, volume.voxel_size, volume.resolution)
    out = np.asarray(lookup.sample(np.ascontiguousarray(points, dtype=np.float32)), dtype=np.float32)
    return out[:, :6], out[:, 6] > 0.5


def push_pull(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Fill texels outside `mask` from a weighted mip pyramid (square power-of-two image `[T, T, C]`)."""
    levels = [(image * mask[..., None], mask.astype(np.float32))]
    while levels[-1][1].shape[0] > 1:
        p, w = levels[-1]
        h = p.shape[0] // 2
        levels.append((p.reshape(h, 2, h, 2, -1).sum((1, 3)), w.reshape(h, 2, h, 2).sum((1, 3))))
    p, w = levels[-1]
    filled = p / np.maximum(w, 1e-12)[..., None]
    for p, w in reversed(levels[:-1]):
        up = np.repeat(np.repeat(filled, 2, axis=0), 2, axis=1)
        filled = np.where((w > 0)[..., None], p / np.maximum(w, 1e-12)[..., None], up)
    return filled


def to_uint8(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def bake(mesh: UVMesh, volume: MaterialVolume, texture_size: int, *, padding: int) -> BakedMaps:
    size = check_texture_size(texture_size)
    if len(volume.coords) == 0:
        raise EngineInputError("The attribute volume has no voxels: there is no material to bake.")
    face_id, bary = rasterise(mesh.uvs, mesh.faces, size)
    chart = face_id >= 0
    grown = dilate_ids(face_id, padding) if padding > 0 else face_id
    ring = np.flatnonzero((grown >= 0) & ~chart)
    flat_bary = bary.reshape(-1, 3)
    flat_bary[ring] = clamped_barycentrics(mesh.uvs, mesh.faces, grown, ring, size)

    texels = np.flatnonzero(grown.reshape(-1) >= 0)  # [M]
    corners = mesh.vertices[mesh.faces[grown.reshape(-1)[texels]]]  # [M, 3, 3]
    points = np.einsum("mk,mkc->mc", flat_bary[texels], corners)  # [M, 3]
    del corners
    values, near = sample_volume(volume, points)
    if not near.any():
        raise EngineInputError(
            "No voxel of the attribute volume lies near the mesh surface, so there is no colour to bake; "
            "check that the mesh and the volume are in the same frame ([-0.5, 0.5]^3, Z up)."
        )
    missing = float(1.0 - near[chart.reshape(-1)[texels]].mean())
    if missing > 0.01:
        log.warning("%.1f%% of the surface has no voxel nearby; those texels are filled from neighbours", 100 * missing)

    image = np.zeros((size * size, 6), dtype=np.float32)
    mask = np.zeros(size * size, dtype=bool)
    image[texels] = values
    mask[texels] = near
    image = push_pull(image.reshape(size, size, 6), mask.reshape(size, size))
    base = to_uint8(image[..., [0, 1, 2, 5]])
    mr = to_uint8(np.stack([np.ones_like(image[..., 0]), image[..., 4], image[..., 3]], -1))
    return BakedMaps(base, mr, chart, mask.reshape(size, size), missing)
