"""The face-quadric stage: the bulk column/slab search accepts exactly the voxels the official per-voxel
loop accepts, on triangles chosen to hit the edge cases (grid-aligned planes, axis-aligned normals with
tied dominant axes, slivers, triangles leaving the grid, non-cubic voxels)."""

from __future__ import annotations

import numpy as np
import pytest

from engine.ovoxel.face_overlap import overlapping_voxels
from engine.ovoxel.voxelize import corner_bounds, triangle_planes

F32 = np.float32


def official_overlaps(tri: np.ndarray, n: np.ndarray, vs: np.ndarray, res: int) -> set[tuple[int, int, int, int]]:
    """The official loop, one triangle at a time: every voxel of the index bounding box, the float32
    conservative overlap test (plane between the box's extreme corners, then the 3 edge functions of each
    axis projection), evaluated in the C++ operation order."""
    accepted = set()
    for t in range(tri.shape[0]):
        v = tri[t]
        lo = np.maximum(np.trunc(v.min(0) / vs).astype(np.int64), 0)
        hi = np.minimum(np.trunc(v.max(0) / vs + F32(1)).astype(np.int64), res)
        if (hi <= lo).any():
            continue
        grid = np.stack(np.meshgrid(*(np.arange(lo[k], hi[k]) for k in range(3)), indexing="ij"), -1).reshape(-1, 3)
        p = grid.astype(F32) * vs  # [K, 3]
        nn = n[t]
        c = np.where(nn > 0, vs, F32(0))
        w1, w2 = c - v[0], (vs - c) - v[0]

        def dot(a, b):
            return a[..., 0] * b[..., 0] + (a[..., 1] * b[..., 1] + a[..., 2] * b[..., 2])

        ndp = dot(p, nn[None])
        ok = (ndp + dot(nn, w1)) * (ndp + dot(nn, w2)) <= 0
        edges = (v[1] - v[0], v[2] - v[1], v[0] - v[2])
        for a, b, k in ((0, 1, 2), (1, 2, 0), (2, 0, 1)):
            mul = F32(-1) if nn[k] < 0 else F32(1)
            for e, vi in zip(edges, v, strict=True):
                na, nb = -mul * e[b], mul * e[a]
                d = -(na * vi[a] + nb * vi[b]) + (max(na, F32(0)) * vs[a] + max(nb, F32(0)) * vs[b])
                ok &= ~((na * p[:, a] + nb * p[:, b]) + d < 0)
        accepted.update((t, *map(int, xyz)) for xyz in grid[ok])
    return accepted


def edge_case_triangles(rng: np.random.Generator, extent: np.ndarray, vs: np.ndarray) -> np.ndarray:
    """float32 [F, 3, 3] triangles in the shifted box frame [0, extent]."""
    parts = []
    for size in (0.3, 1.0, 3.0, 9.0):  # in voxels: inside one voxel up to spanning many
        centre = rng.uniform(0, 1, (60, 1, 3)) * extent
        parts.append(centre + rng.normal(0, size, (60, 3, 3)) * vs)
    flat = rng.uniform(0, 1, (60, 3, 3)) * extent  # on grid planes: z exactly k voxels (plane test boundary)
    flat[:, :, 2] = (rng.integers(0, 8, (60, 1)) * vs[2]).astype(F32)
    parts.append(flat)
    tilted = rng.uniform(0, 1, (40, 3, 3)) * extent  # 45 degrees: two normal components tie for dominant
    tilted[:, :, 2] = tilted[:, :, 0] * (vs[2] / vs[0])
    parts.append(tilted)
    sliver = rng.uniform(0, 1, (40, 1, 3)) * extent + np.array([[0, 0, 0], [3, 3, 3], [6, 6, 6.001]]) * vs
    parts.append(sliver)
    parts.append(rng.uniform(-0.3, 1.3, (40, 3, 3)) * extent)  # leaving the grid
    return np.concatenate(parts).astype(F32)


@pytest.mark.parametrize("extent", [(1.0, 1.0, 1.0), (1.0, 0.5, 0.2)], ids=["cubic", "non-cubic"])
def test_bulk_face_overlap_equals_the_official_loop(extent):
    res = 16
    extent = np.asarray(extent, dtype=F32)
    vs = (extent / np.int32(res)).astype(F32)
    tri = edge_case_triangles(np.random.default_rng(3), extent, vs)
    n, _ = triangle_planes(tri)
    stride = np.array([res * res, res, 1], dtype=np.int64)
    key, t = overlapping_voxels(tri, n, *corner_bounds(tri), vs, (res,) * 3, stride)
    xyz = np.stack([key // stride[0], key // res % res, key % res], axis=1)
    ours = {(int(i), *map(int, c)) for i, c in zip(t, xyz, strict=True)}
    assert len(ours) == key.size, "a (triangle, voxel) pair was produced twice"
    expected = official_overlaps(tri, n, vs, res)
    assert len(expected) > 2000  # the cases really reach many voxels
    assert ours == expected, f"missing {sorted(expected - ours)[:5]}, extra {sorted(ours - expected)[:5]}"
