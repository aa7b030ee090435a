"""Spatial <-> channel resampling by 2 (spec 3.5): the SC-VAE's only change of resolution.

A fine voxel belongs to parent `coords // 2` at slot `s = (x % 2) + 2 (y % 2) + 4 (z % 2)`.
Spatial2Channel packs the 8 children of each parent into `8 * C` channels (slot-major, zeros for
absent children); Channel2Spatial unpacks them again, either through the mapping a Spatial2Channel
left in the coarse tensor's cache (texturing: encoder then decoder) or through a boolean subdivision
mask `[N, 8]` (generation: predicted or guiding logits > 0). Children from a mask come out in the
official native order: parent-major, slot-minor.

A `Resampling` holds one fine<->coarse correspondence and the coordinate caches of both sides, so
every tensor resampled through it (block input and residual) lands on one shared cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.errors import EngineInputError
from engine.sparse.tensor import CoordCache, SparseTensor

SLOTS = 8
# Offset of each slot inside its parent: s -> (s & 1, (s >> 1) & 1, (s >> 2) & 1).
SLOT_OFFSETS = torch.tensor([(s & 1, (s >> 1) & 1, (s >> 2) & 1) for s in range(SLOTS)], dtype=torch.int32)
_S2C_KEY = "spatial2channel_2"
_C2S_KEY = "channel2spatial_2"


@dataclass(frozen=True)
class Resampling:
    """One fine voxel set and its 2x coarser parents. `parent`/`slot`: int64 `[N_fine]`."""

    fine_coords: torch.Tensor  # [N_fine, 4] int32
    coarse_coords: torch.Tensor  # [N_coarse, 4] int32
    parent: torch.Tensor  # [N_fine] row of each fine voxel's parent
    slot: torch.Tensor  # [N_fine] its slot 0..7 inside the parent
    fine_cache: CoordCache
    coarse_cache: CoordCache

    def to_channels(self, fine: SparseTensor) -> SparseTensor:
        """`[N_fine, C]` -> `[N_coarse, 8 C]`; absent children are zeros."""
        n, c = fine.feats.shape
        if n != self.parent.shape[0]:
            raise EngineInputError(f"spatial2channel: tensor has {n} rows, the mapping {self.parent.shape[0]}")
        out = fine.feats.new_zeros(self.coarse_coords.shape[0] * SLOTS, c)
        out[self.parent * SLOTS + self.slot] = fine.feats
        return SparseTensor(out.reshape(-1, SLOTS * c), self.coarse_coords, self.coarse_cache, validate=False)

    def to_spatial(self, coarse: SparseTensor) -> SparseTensor:
        """`[N_coarse, 8 C]` -> `[N_fine, C]`: each child takes its slot's channels."""
        n, c8 = coarse.feats.shape
        if n != self.coarse_coords.shape[0] or c8 % SLOTS:
            raise EngineInputError(
                f"channel2spatial: expected {self.coarse_coords.shape[0]} rows of 8*C channels, got {[n, c8]}"
            )
        feats = coarse.feats.reshape(n * SLOTS, c8 // SLOTS)
        out = feats.index_select(0, self.parent * SLOTS + self.slot)
        return SparseTensor(out, self.fine_coords, self.fine_cache, validate=False)

    def subdivision(self) -> torch.Tensor:
        """bool `[N_coarse, 8]`: which children of each parent exist."""
        mask = torch.zeros(self.coarse_coords.shape[0], SLOTS, dtype=torch.bool, device=self.parent.device)
        mask[self.parent, self.slot] = True
        return mask


def spatial_to_channel_map(x: SparseTensor) -> Resampling:
    """The parents of `x` (sorted by (b, x, y, z)), built once per coordinate set.

    The coarse side's cache remembers the mapping, so a later Channel2Spatial on those coords returns
    exactly these fine voxels in this order.
    """

    def build() -> Resampling:
        coords = x.coords.long()
        half = [(s + 1) // 2 for s in x.spatial_shape]  # ceil(X / 2), as the official code
        parents = coords[:, 1:] // 2
        strides = torch.tensor([half[1] * half[2], half[2], 1], device=coords.device)
        code = coords[:, 0] * (half[0] * half[1] * half[2]) + (parents * strides).sum(dim=1)
        unique, parent = torch.unique(code, return_inverse=True)
        xyz = torch.stack([unique // strides[0] % half[0], unique // strides[1] % half[1], unique % half[2]], dim=1)
        batch = unique // (half[0] * half[1] * half[2])
        coarse = torch.cat([batch[:, None], xyz], dim=1).int()
        bits = coords[:, 1:] % 2
        slot = bits[:, 0] + 2 * bits[:, 1] + 4 * bits[:, 2]
        mapping = Resampling(x.coords, coarse, parent, slot, x.cache, CoordCache())
        mapping.coarse_cache.put(_C2S_KEY, mapping)
        return mapping

    return x.cache.get(_S2C_KEY, build)


def channel_to_spatial_map(x: SparseTensor, subdivision: torch.Tensor | None = None) -> Resampling:
    """Children of `x`: from the cached Spatial2Channel mapping if there is one (the mask is then ignored,
    as in the official code), else from the bool mask `[N, 8]` in parent-major, slot-minor order."""
    cached = x.cache.peek(_C2S_KEY)
    if cached is not None:
        return cached
    if subdivision is None:
        raise EngineInputError(
            "channel2spatial needs a subdivision mask (guide subdivisions) or coords that came from spatial2channel"
        )
    if subdivision.shape != (x.coords.shape[0], SLOTS) or subdivision.dtype != torch.bool:
        raise EngineInputError(
            f"subdivision mask must be bool [{x.coords.shape[0]}, 8] aligned with the tensor's rows, "
            f"got {subdivision.dtype} {list(subdivision.shape)}"
        )
    parent, slot = torch.nonzero(subdivision, as_tuple=True)  # row-major: parent-major, slot-minor
    children = x.coords.index_select(0, parent)  # [N_fine, 4]
    offsets = SLOT_OFFSETS.to(x.coords.device).index_select(0, slot)
    fine = torch.cat([children[:, :1], children[:, 1:] * 2 + offsets], dim=1)
    return Resampling(fine, x.coords, parent, slot, CoordCache(), x.cache)


def spatial_to_channel(x: SparseTensor) -> SparseTensor:
    return spatial_to_channel_map(x).to_channels(x)


def channel_to_spatial(x: SparseTensor, subdivision: torch.Tensor | None = None) -> SparseTensor:
    return channel_to_spatial_map(x, subdivision).to_spatial(x)


__all__ = [
    "Resampling",
    "channel_to_spatial",
    "channel_to_spatial_map",
    "spatial_to_channel",
    "spatial_to_channel_map",
]
