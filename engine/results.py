"""Typed results of each pipeline stage: what `regenerate` reuses, and the `Asset` the add-on imports.

Stage results hold tensors on the CPU (small: coords and latents), so they can be cached for the
lifetime of a Blender session and handed to a later run on any device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

ATTRIBUTE_LAYOUT = {"base_color": slice(0, 3), "metallic": slice(3, 4), "roughness": slice(4, 5), "alpha": slice(5, 6)}


@dataclass(frozen=True)
class Conditioning:
    """DINOv3 tokens of each view: `[V, L, C]` at 512 px and (unless type '512') at 1024 px."""

    cond_512: torch.Tensor
    cond_1024: torch.Tensor | None
    image_hashes: tuple[str, ...] = ()

    @property
    def num_views(self) -> int:
        return self.cond_512.shape[0]


@dataclass(frozen=True)
class SparseStructure:
    """Stage 2-3: the sampled structure latent and the decoder's occupancy at full (64^3) resolution."""

    latent: torch.Tensor  # [1, C_ss, R, R, R]
    occupancy: torch.Tensor  # int32 [N, 4] (b, x, y, z), argwhere order, before any pooling
    grid: int  # edge of the occupancy grid (64 in the release)
    seed: int


@dataclass(frozen=True)
class ShapeLatent:
    """Stage 5: the de-normalised shape latent on its coords, and the mesh resolution it decodes to."""

    coords: torch.Tensor  # int32 [N, 4]
    feats: torch.Tensor  # [N, C_shape]
    resolution: int
    pipeline_type: str


@dataclass(frozen=True)
class TextureLatent:
    """Stage 6: the de-normalised texture latent on the shape latent's coords."""

    feats: torch.Tensor  # [N, C_tex]


@dataclass
class Asset:
    """The engine's result as plain numpy: a mesh plus its PBR attribute volume (spec 5.6).

    `attrs` columns follow `layout` (base_color 0:3, metallic 3, roughness 4, alpha 5), nominally in
    [0, 1] and not clamped, on voxel `coords` of a grid with `voxel_size = 1/resolution` and `origin`.
    """

    vertices: np.ndarray  # float32 [V, 3], Z-up, inside [-0.5, 0.5]^3
    faces: np.ndarray  # int64 [F, 3]
    coords: np.ndarray  # int32 [N, 3]
    attrs: np.ndarray  # float32 [N, 6]
    resolution: int
    voxel_size: float
    origin: tuple[float, float, float] = (-0.5, -0.5, -0.5)
    layout: dict[str, slice] = field(default_factory=lambda: dict(ATTRIBUTE_LAYOUT))

    def attribute(self, name: str) -> np.ndarray:
        return self.attrs[:, self.layout[name]]

    def save(self, path: str | Path) -> Path:
        """Write an `.npz` (to a temporary file first, so a crash never leaves half a file)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".partial")
        with open(tmp, "wb") as f:
            np.savez_compressed(
                f,
                vertices=self.vertices,
                faces=self.faces,
                coords=self.coords,
                attrs=self.attrs,
                resolution=np.int64(self.resolution),
                voxel_size=np.float64(self.voxel_size),
                origin=np.asarray(self.origin, dtype=np.float64),
                layout=np.asarray(list(self.layout)),
            )
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Asset:
        with np.load(Path(path), allow_pickle=False) as data:
            names = [str(n) for n in data["layout"]]
            widths = [ATTRIBUTE_LAYOUT[n].stop - ATTRIBUTE_LAYOUT[n].start for n in names]
            starts = np.cumsum([0, *widths])
            return cls(
                vertices=data["vertices"],
                faces=data["faces"],
                coords=data["coords"],
                attrs=data["attrs"],
                resolution=int(data["resolution"]),
                voxel_size=float(data["voxel_size"]),
                origin=tuple(float(v) for v in data["origin"]),
                layout={n: slice(int(a), int(b)) for n, a, b in zip(names, starts[:-1], starts[1:], strict=True)},
            )


@dataclass
class Generation:
    """Everything one run produced, kept so `regenerate` can skip the stages it may reuse."""

    images: list  # preprocessed PIL images (square, premultiplied on black)
    conditioning: Conditioning
    structure: SparseStructure
    shape: ShapeLatent
    texture: TextureLatent
    asset: Asset
    settings: object  # GenerationSettings (kept untyped here to avoid an import cycle)
