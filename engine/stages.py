"""The pipeline's stages as plain functions: models, inputs and the RNG are passed in explicitly.

Mirrors the official `Trellis2ImageTo3DPipeline.run` (spec 1.3): the same noise draws in the same
order from one CPU generator, the same occupancy pooling, cascade re-quantisation with the token cap,
latent (de)normalisation and decoder calls. `engine.pipeline` adds loading, devices and caching.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from engine.sparse import SparseTensor

CASCADE_TARGET = {"1024_cascade": 1024, "1536_cascade": 1536}
RESOLUTION_STEP = 128  # the 1536 cascade lowers its resolution in these steps until under the token cap
LATENT_TO_MESH = 16  # SC-VAE spatial factor: latent grid x 16 = mesh grid


@dataclass(frozen=True)
class Normalization:
    """Per-channel latent statistics: flows work on (x - mean) / std."""

    mean: torch.Tensor  # [C]
    std: torch.Tensor  # [C]

    def normalize(self, feats: torch.Tensor) -> torch.Tensor:
        return (feats - self.mean.to(feats)) / self.std.to(feats)

    def denormalize(self, feats: torch.Tensor) -> torch.Tensor:
        return feats * self.std.to(feats) + self.mean.to(feats)


def uses_pooled_structure(pipeline_type: str) -> bool:
    """Every type but '1024' works on the 2x max-pooled (32^3) occupancy."""
    return pipeline_type != "1024"


def draw_structure_noise(model: torch.nn.Module, generator: torch.Generator) -> torch.Tensor:
    """SS noise `[1, C, R, R, R]`: always the first draw after seeding."""
    r = model.resolution
    return torch.randn(1, model.in_channels, r, r, r, generator=generator)


def occupancy_coords(logits: torch.Tensor) -> torch.Tensor:
    """`argwhere(logits > 0)` of a `[B, 1, X, Y, Z]` volume as int32 (b, x, y, z), row-major order."""
    return torch.argwhere(logits[:, 0] > 0).int()


def pool_occupancy(coords: torch.Tensor, grid: int) -> torch.Tensor:
    """The official 2x max-pool of the occupancy (`max_pool3d(occ, 2) > 0.5`), as sorted coords."""
    if coords.shape[0] == 0:
        return coords
    dense = torch.zeros(int(coords[:, 0].max()) + 1, 1, grid, grid, grid)
    c = coords.long()
    dense[c[:, 0], 0, c[:, 1], c[:, 2], c[:, 3]] = 1.0
    pooled = F.max_pool3d(dense, kernel_size=2, stride=2) > 0.5
    return torch.argwhere(pooled[:, 0]).int()


def requantize(hr_coords: torch.Tensor, lr_mesh_resolution: int, resolution: int) -> torch.Tensor:
    """Cascade: map upsampled coords (on the LR mesh grid) to the latent grid of `resolution`; unique, sorted."""
    scaled = torch.floor((hr_coords[:, 1:].float() + 0.5) / lr_mesh_resolution * (resolution // LATENT_TO_MESH))
    q = torch.cat([hr_coords[:, :1], scaled.int()], dim=1)
    return torch.unique(q, dim=0)


def cascade_coords(
    hr_coords: torch.Tensor, lr_mesh_resolution: int, target: int, max_num_tokens: int
) -> tuple[torch.Tensor, int]:
    """Lower the target resolution in steps of 128 until the token count is under the cap (never below 1024)."""
    resolution = target
    while True:
        coords = requantize(hr_coords, lr_mesh_resolution, resolution)
        if coords.shape[0] < max_num_tokens or resolution == 1024:
            return coords, resolution
        resolution -= RESOLUTION_STEP


def sparse_noise(coords: torch.Tensor, channels: int, generator: torch.Generator) -> SparseTensor:
    return SparseTensor(torch.randn(coords.shape[0], channels, generator=generator), coords)
