"""The shape SC-VAE (spec 3.6): Flexible-Dual-Grid voxels <-> shape latent, and the decoder's mesh head.

The encoder reads per-voxel dual-vertex offsets and edge-intersection flags; the decoder predicts its own
subdivisions and 7 channels per final voxel (offset 3, intersection logits 3, split weight 1), which the
FDG extraction turns into one mesh per batch item.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from engine.models.sc_vae import SparseUnetVaeDecoder, SparseUnetVaeEncoder
from engine.sparse.tensor import SparseTensor

AABB = ((-0.5, -0.5, -0.5), (0.5, 0.5, 0.5))


@dataclass(frozen=True)
class DecodedMesh:
    """One batch item's extracted mesh, torch tensors on the decoder's device.

    vertices: float32 `[V, 3]` in the [-0.5, 0.5]^3 box, one per voxel of the item, in the decoder's row order.
    faces:    int64 `[F, 3]` indices into `vertices`.
    """

    vertices: torch.Tensor
    faces: torch.Tensor


class FlexiDualGridVaeEncoder(SparseUnetVaeEncoder):
    """Inputs: dual-vertex offsets in [0, 1] and intersection flags per voxel; 6 input channels."""

    def __init__(
        self,
        model_channels: list[int],
        latent_channels: int,
        num_blocks: list[int],
        block_type: list[str],
        down_block_type: list[str],
        block_args: list[dict[str, Any]],
        use_fp16: bool = False,
    ) -> None:
        super().__init__(
            6, model_channels, latent_channels, num_blocks, block_type, down_block_type, block_args, use_fp16
        )

    def forward(self, vertices: SparseTensor, intersected: SparseTensor, **kwargs):
        """`vertices` `[N, 3]` offsets, `intersected` `[N, 3]` bool on the same rows; kwargs as the base class."""
        feats = torch.cat([vertices.feats - 0.5, intersected.feats.float() - 0.5], dim=1)  # [N, 6]
        return super().forward(vertices.replace(feats), **kwargs)


class FlexiDualGridVaeDecoder(SparseUnetVaeDecoder):
    """Shape latent -> meshes. `resolution` is only the grid size handed to the extraction."""

    def __init__(
        self,
        resolution: int,
        model_channels: list[int],
        latent_channels: int,
        num_blocks: list[int],
        block_type: list[str],
        up_block_type: list[str],
        block_args: list[dict[str, Any]],
        voxel_margin: float = 0.5,
        use_fp16: bool = False,
    ) -> None:
        super().__init__(
            7, model_channels, latent_channels, num_blocks, block_type, up_block_type, block_args, use_fp16
        )
        self.resolution = resolution
        self.voxel_margin = voxel_margin

    def set_resolution(self, resolution: int) -> None:
        self.resolution = resolution

    def decode_raw(self, x: SparseTensor, return_subs: bool = False):
        """The 7-channel network output (and the subdivision logits): the base-class forward."""
        return SparseUnetVaeDecoder.forward(self, x, return_subs=return_subs)

    def to_meshes(self, h: SparseTensor) -> list[DecodedMesh]:
        """FDG head + extraction, one mesh per batch item (its rows in the decoder's native order)."""
        from engine.ovoxel.extract import flexible_dual_grid_to_mesh

        feats = h.feats.float()
        offsets = (1 + 2 * self.voxel_margin) * torch.sigmoid(feats[:, 0:3]) - self.voxel_margin  # [N, 3]
        intersected = feats[:, 3:6] > 0  # [N, 3]
        split = F.softplus(feats[:, 6:7])  # [N, 1]
        meshes = []
        for rows in h.layout:
            vertices, faces = flexible_dual_grid_to_mesh(
                h.coords[rows, 1:],
                offsets[rows],
                intersected[rows],
                split[rows],
                aabb=AABB,
                grid_size=self.resolution,
            )
            meshes.append(DecodedMesh(vertices, faces))
        return meshes

    def forward(self, x: SparseTensor, gt_intersected: SparseTensor | None = None, return_subs: bool = False):
        """Eval-mode official forward: a list of meshes, or `(meshes, subs)` with `return_subs`."""
        h, subs = self.decode_raw(x, return_subs=True)
        meshes = self.to_meshes(h)
        return (meshes, subs) if return_subs else meshes


__all__ = ["DecodedMesh", "FlexiDualGridVaeDecoder", "FlexiDualGridVaeEncoder"]
