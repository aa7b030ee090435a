"""Attribute lookup at arbitrary points: trilinear interpolation renormalised over active voxels (spec 5.6).

This is what FlexGEMM's `grid_sample_3d(mode="trilinear")` computes on the sparse attribute volume, so
a texture baked from it matches the official `to_glb`. Neighbours are found in sorted voxel keys with
`searchsorted`: the two z-neighbours of a corner pair are adjacent in sorted order, so 4 searches
cover the 8 corners.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from engine.errors import EngineInputError

CHUNK = 1 << 20  # points per block (bounds the temporaries)


class AttributeVolume:
    """A sparse attribute volume prepared for repeated lookups (sorted once)."""

    def __init__(self, coords, attrs, origin, voxel_size, grid_shape: int | Sequence[int]):
        coords = torch.as_tensor(coords)
        attrs = torch.as_tensor(attrs)
        if coords.dim() != 2 or coords.shape[1] != 3 or coords.dtype.is_floating_point:
            raise EngineInputError(f"coords must be an integer array [N, 3], got {coords.dtype} {list(coords.shape)}")
        if attrs.dim() != 2 or attrs.shape[0] != coords.shape[0]:
            raise EngineInputError(f"attrs must be [N, C] with N = {coords.shape[0]}, got {list(attrs.shape)}")
        shape = (int(grid_shape),) * 3 if np.ndim(grid_shape) == 0 else tuple(int(g) for g in grid_shape)
        if len(shape) != 3 or min(shape) < 1:
            raise EngineInputError(f"grid_shape must be one or three positive ints, got {grid_shape!r}")
        self.shape = shape
        self.device = attrs.device
        self.origin = torch.as_tensor(origin, dtype=torch.float32, device=self.device).reshape(-1).expand(3)
        self.voxel_size = torch.as_tensor(voxel_size, dtype=torch.float32, device=self.device).reshape(-1).expand(3)
        c = coords.to(self.device).long()
        inside = ((c >= 0) & (c < torch.tensor(shape, device=self.device))).all(dim=1)  # outside: never found
        keys = (c[:, 0] * shape[1] + c[:, 1]) * shape[2] + c[:, 2]
        keys = torch.where(inside, keys, -1)
        self.keys, order = torch.sort(keys)
        self.attrs = attrs[order]

    def _find_pair(self, key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows of `key` and `key + 1` (-1 where absent) with one binary search: key + 1 sits right
        after key when both exist, or at key's insertion point when key is absent."""
        n = self.keys.numel()
        pos = torch.searchsorted(self.keys, key)
        at = self.keys.index_select(0, pos.clamp_max(n - 1))
        found = (pos < n) & (at == key)
        nxt = torch.where(found, pos + 1, pos).clamp_max(n - 1)
        found1 = (torch.where(found, pos + 1, pos) < n) & (self.keys.index_select(0, nxt) == key + 1)
        return torch.where(found, pos, -1), torch.where(found1, nxt, -1)

    def sample(self, points):
        """Values at `points` [P, 3] (same type as given: numpy or torch), [P, C] in the attrs' dtype."""
        as_numpy = isinstance(points, np.ndarray)
        p = torch.as_tensor(points, dtype=torch.float32, device=self.device)
        if p.dim() != 2 or p.shape[1] != 3:
            raise EngineInputError(f"points must be [P, 3], got {list(p.shape)}")
        out = torch.zeros((p.shape[0], self.attrs.shape[1]), dtype=self.attrs.dtype, device=self.device)
        if self.keys.numel():
            for start in range(0, p.shape[0], CHUNK):
                out[start : start + CHUNK] = self._sample_chunk(p[start : start + CHUNK])
        return out.cpu().numpy() if as_numpy else out

    def _sample_chunk(self, p: torch.Tensor) -> torch.Tensor:
        g = (p - self.origin) / self.voxel_size  # [P, 3] voxel centres at integer + 0.5
        base = torch.floor(g - 0.5).long()
        frac = g - base.float() - 0.5  # in [0, 1): distance to the lower corner
        sx, sy, sz = self.shape
        # visit the points in key order: the binary searches then walk the keys monotonically
        order = torch.argsort((base[:, 0] * sy + base[:, 1]) * sz + base[:, 2])
        base, frac = base.index_select(0, order), frac.index_select(0, order)
        total = torch.zeros(p.shape[0], dtype=torch.float32, device=self.device)
        acc = torch.zeros((p.shape[0], self.attrs.shape[1]), dtype=torch.float32, device=self.device)
        z_ok = ((base[:, 2] >= 0) & (base[:, 2] < sz), (base[:, 2] + 1 >= 0) & (base[:, 2] + 1 < sz))
        wz = (1 - frac[:, 2], frac[:, 2])
        for dx in (0, 1):
            x = base[:, 0] + dx
            wx = frac[:, 0] if dx else 1 - frac[:, 0]
            for dy in (0, 1):
                y = base[:, 1] + dy
                wxy = wx * (frac[:, 1] if dy else 1 - frac[:, 1])
                ok_xy = (x >= 0) & (x < sx) & (y >= 0) & (y < sy)
                pos0, pos1 = self._find_pair(torch.where(ok_xy, (x * sy + y) * sz + base[:, 2], -2))
                for pos, ok_z, w_z in ((pos0, z_ok[0], wz[0]), (pos1, z_ok[1], wz[1])):
                    pos = torch.where(ok_xy & ok_z, pos, -1)
                    w = torch.where(pos >= 0, wxy * w_z, 0.0)
                    total += w
                    acc += w[:, None] * self.attrs.index_select(0, pos.clamp_min(0)).float()
        value = (acc / total.clamp_min(1e-12)[:, None]).to(self.attrs.dtype)
        return torch.empty_like(value).index_copy_(0, order, value)


def sample_attributes(coords, attrs, points, origin=(-0.5, -0.5, -0.5), voxel_size=None, grid_shape=None):
    """Renormalised sparse trilinear lookup of `attrs` [N, C] on voxel `coords` [N, 3] at `points` [P, 3].

    numpy in -> numpy out, torch in -> torch out (on the attrs' device). `grid_shape` bounds the
    valid voxels (the official passes the decoded tensor's spatial shape, or the grid size);
    `voxel_size` defaults to 1 / grid_shape. Points with no active neighbour get 0.
    For many calls on one volume, build an `AttributeVolume` once (it sorts the voxels).
    """
    if grid_shape is None:
        raise EngineInputError("sample_attributes needs grid_shape (the voxel grid resolution)")
    if voxel_size is None:
        voxel_size = 1.0 / np.asarray(grid_shape, dtype=np.float64)
    return AttributeVolume(coords, attrs, origin, voxel_size, grid_shape).sample(points)
