"""UV-space rasteriser: for every texel centre, the triangle that covers it and its barycentrics.

Texel (row r, column c) has its centre at (c + 0.5, r + 0.5) in texel units (u * T, v * T). A texel is
covered when its centre lies inside a triangle or on its edge; where triangles overlap (in a valid unwrap
only along shared edges) one of them is kept. Each triangle's candidate texels (those in its bounding
box) are enumerated as one flat ragged range per chunk, so the work is whole-array numpy.
"""

from __future__ import annotations

import numpy as np
import torch

CHUNK_CANDIDATES = 1 << 22  # texel/triangle tests per chunk: bounds memory at ~200 MB
EDGE_EPS = 1e-9


def triangle_frames(uv_tex: np.ndarray, faces: np.ndarray):
    """Per face: corner 0 and the inverse edge matrix mapping (p - p0) to barycentrics (b1, b2)."""
    p = uv_tex[faces].astype(np.float64)  # [F, 3, 2]
    e1, e2 = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]
    det = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    ok = np.abs(det) > 1e-12
    inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
    # [b1, b2] = M (p - p0) with M = [[e2y, -e2x], [-e1y, e1x]] / det
    m = np.stack([e2[:, 1], -e2[:, 0], -e1[:, 1], e1[:, 0]], 1) * inv[:, None]  # [F, 4]
    return p[:, 0], m, ok


def barycentrics(points: np.ndarray, p0: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Barycentrics `[N, 3]` of 2-D points against per-point triangle frames (p0 [N,2], m [N,4])."""
    d = points - p0
    b1 = m[:, 0] * d[:, 0] + m[:, 1] * d[:, 1]
    b2 = m[:, 2] * d[:, 0] + m[:, 3] * d[:, 1]
    return np.stack([1.0 - b1 - b2, b1, b2], 1)


def rasterise(uvs: np.ndarray, faces: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns (face id int32 [T, T], -1 where uncovered; barycentrics float32 [T, T, 3])."""
    uv_tex = np.asarray(uvs, dtype=np.float64) * size
    faces = np.asarray(faces, dtype=np.int64)
    p0, m, ok = triangle_frames(uv_tex, faces)
    tri = uv_tex[faces]  # [F, 3, 2]
    # Candidate columns c with c + 0.5 in [min x, max x] (and rows alike), clipped to the image.
    c0 = np.clip(np.ceil(tri[..., 0].min(1) - 0.5), 0, size).astype(np.int64)
    c1 = np.clip(np.floor(tri[..., 0].max(1) - 0.5), -1, size - 1).astype(np.int64)
    r0 = np.clip(np.ceil(tri[..., 1].min(1) - 0.5), 0, size).astype(np.int64)
    r1 = np.clip(np.floor(tri[..., 1].max(1) - 0.5), -1, size - 1).astype(np.int64)
    nc, nr = np.maximum(c1 - c0 + 1, 0), np.maximum(r1 - r0 + 1, 0)
    n = np.where(ok, nc * nr, 0)

    face_id = np.full(size * size, -1, dtype=np.int32)
    bary = np.zeros((size * size, 3), dtype=np.float32)
    ends = np.cumsum(n)
    start = 0
    while start < len(faces):
        base = ends[start - 1] if start else 0
        stop = max(int(np.searchsorted(ends, base + CHUNK_CANDIDATES, side="right")), start + 1)
        f = np.arange(start, stop)
        counts = n[f]
        idx = np.repeat(f, counts)  # [M] face of each candidate
        local = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
        cols = c0[idx] + local % nc[idx]
        rows = r0[idx] + local // nc[idx]
        centre = np.stack([cols + 0.5, rows + 0.5], 1)
        b = barycentrics(centre, p0[idx], m[idx])
        inside = (b >= -EDGE_EPS).all(1)
        texel = rows[inside] * size + cols[inside]
        face_id[texel] = idx[inside]
        bary[texel] = b[inside]
        start = stop
    return face_id.reshape(size, size), bary.reshape(size, size, 3)


def dilate_ids(face_id: np.ndarray, rings: int) -> np.ndarray:
    """Give uncovered texels within `rings` texels of a chart the id of a covered neighbour (3x3 max)."""
    exact = np.float32 if face_id.max() < 2**24 - 1 else np.float64  # ids must stay exact integers
    ids = torch.from_numpy(face_id.astype(exact) + 1)[None, None]  # 0 = empty
    for _ in range(rings):
        grown = torch.nn.functional.max_pool2d(ids, 3, stride=1, padding=1)
        ids = torch.where(ids > 0, ids, grown)
    return (ids[0, 0].numpy() - 1.0).astype(np.int32)


def clamped_barycentrics(uvs: np.ndarray, faces: np.ndarray, face_id: np.ndarray, texels: np.ndarray, size: int):
    """Barycentrics of texel centres `texels` (flat indices) against their (possibly outside) triangle,
    clamped onto the triangle: the nearest point of the chart for a texel in the padding ring."""
    uv_tex = np.asarray(uvs, dtype=np.float64) * size
    f = face_id.reshape(-1)[texels].astype(np.int64)
    p0, m, ok = triangle_frames(uv_tex, np.asarray(faces, dtype=np.int64)[f])
    centre = np.stack([texels % size + 0.5, texels // size + 0.5], 1).astype(np.float64)
    b = np.clip(barycentrics(centre, p0, m), 0.0, None)
    b[~ok] = 1.0 / 3.0
    return (b / np.maximum(b.sum(1, keepdims=True), 1e-12)).astype(np.float32)
