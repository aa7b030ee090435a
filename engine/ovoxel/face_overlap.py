"""Which existing voxels each triangle touches: the face-quadric stage of the converter (spec 5.3).

The official converter loops over every voxel of each triangle's bounding box and runs a conservative
triangle/box overlap test in float32 (the plane between two box corners, then the 3 edge normals in
each of the 3 axis projections). This module gives the same accepted set, computed in bulk:

* triangles are grouped by the dominant axis w of their normal, so every array below has fixed axes;
* candidates are organised by column (u, v): the projection onto the (u, v) plane does not depend on w,
  so its 3 edge tests run once per column and reject whole columns;
* along w only the few voxels whose box the plane can reach are candidates (a float64 slab with a
  margin; the float32 test decides). Columns are sorted by candidate count, so the j-th candidate of
  every column is a prefix slice and the remaining tests run without any per-candidate gather.

Every test value is rounded exactly as the C++ evaluates it (float32, no fused multiply-add, its
summation order), because the accepted set decides which quadrics a voxel accumulates.
"""

from __future__ import annotations

import numpy as np

from engine.ovoxel.arrays import descending, dot3, lookup, segments, take

F32 = np.float32
F64 = np.float64
SLACK = 1e-3  # voxels of margin on the candidate slab (float32 rounding is ~1e-4 at 2048^3)
COLUMN_BLOCK = 1 << 20  # columns per vectorised block (bounds the temporaries)
# The edge-normal tests of the official overlap test: (the two axes of the projection, the normal axis
# whose sign orients the edge normals).
PROJECTIONS = ((0, 1, 2), (1, 2, 0), (2, 0, 1))


class _EdgeTests:
    """Per-triangle float32 constants of the 9 edge-normal tests: edge i of projection (a, b) rejects the
    box at p when (na p_a + nb p_b) + d < 0."""

    def __init__(self, tri: np.ndarray, n: np.ndarray, vs: np.ndarray):
        v = [[np.ascontiguousarray(tri[:, i, k]) for k in range(3)] for i in range(3)]  # v[corner][axis]
        e = [[v[(i + 1) % 3][k] - v[i][k] for k in range(3)] for i in range(3)]  # edge i: corner i -> i + 1
        self.tests = []  # (a, b, na, nb, d) per projection and edge
        for a, b, k in PROJECTIONS:
            flip = n[:, k] < 0  # the edge normal (-e_b, e_a), negated when the face normal's k is negative
            for ei, vi in zip(e, v, strict=True):
                na, nb = np.where(flip, ei[b], -ei[b]), np.where(flip, -ei[a], ei[a])
                d = -(na * vi[a] + nb * vi[b]) + (np.maximum(na, F32(0)) * vs[a] + np.maximum(nb, F32(0)) * vs[b])
                self.tests.append((a, b, na, nb, d))


def _plane_bounds(tri: np.ndarray, n: np.ndarray, vs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 d1, d2 [F]: the box at p meets the plane when (n.p + d1)(n.p + d2) <= 0 (its two corners
    furthest along +n and -n lie on both sides)."""
    c = np.where(n > 0, vs[None, :], F32(0))
    w1, w2 = c - tri[:, 0], (vs[None, :] - c) - tri[:, 0]
    return dot3(n, w1), dot3(n, w2)


def _bounding_boxes(lo_corner, hi_corner, vs, res):
    """The official per-triangle voxel index box: int32 [F, 3] lower bound and exclusive upper bound
    (max(int(lo / s), 0) and min(int(hi / s + 1), R); clipping first makes the truncation a floor)."""
    top = F32(res[0])  # the grid is cubic
    lo = np.clip(lo_corner / vs, F32(0), top).astype(np.int32)
    hi = np.clip(hi_corner / vs + F32(1), F32(0), top).astype(np.int32)
    return lo, np.maximum(hi, lo)


def _columns(tri, n, lo, hi, vs, w):
    """The candidate columns (u, v) of triangles whose dominant normal axis is w, each with its slab of
    candidate w values [lo_w, lo_w + count): (triangle, u, v, lo_w, count), all [K].

    The box at (u, v, w) meets the plane n.x = n.v0 iff n_w s_w w lies in [n.v0 - n_u s_u u - n_v s_v v -
    sum max(n_i s_i, 0), ... - sum min(n_i s_i, 0)]: per triangle, two offsets and two slopes."""
    u_ax, v_ax = (w + 1) % 3, (w + 2) % 3
    ns = [n[:, k].astype(F64) * F64(vs[k]) for k in range(3)]
    n_dot_v0 = sum(n[:, k].astype(F64) * tri[:, 0, k] for k in range(3))
    lower = n_dot_v0 - sum(np.maximum(x, 0) for x in ns)
    upper = n_dot_v0 - sum(np.minimum(x, 0) for x in ns)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1 / ns[w]  # w is the dominant axis: zero only for a zero normal (no plane, no quadric)
        w_min = np.minimum(lower * inv, upper * inv) - SLACK  # the slab at u = v = 0
        w_max = np.maximum(lower * inv, upper * inv) + SLACK
        slope_u, slope_v = ns[u_ax] * inv, ns[v_ax] * inv
    lo_u, lo_v, lo_w_box = (np.ascontiguousarray(lo[:, k]) for k in (u_ax, v_ax, w))
    nu, nv = hi[:, u_ax] - lo_u, hi[:, v_ax] - lo_v
    nu[~np.isfinite(w_min + w_max + slope_u + slope_v)] = 0  # (zero normal)
    t, local = segments(nu * nv, np.int32)  # int32: half the memory traffic
    nv_t = take(nv, t)
    du = local // nv_t
    u = take(lo_u, t) + du
    v = take(lo_v, t) + (local - du * nv_t)
    shift = take(slope_u, t) * u + take(slope_v, t) * v
    lo_w = np.maximum(np.ceil(take(w_min, t) - shift), take(lo_w_box, t))  # float64 holding integers
    hi_w = np.minimum(np.floor(take(w_max, t) - shift) + 1, take(hi[:, w], t))
    return t, u, v, lo_w.astype(np.int32), np.maximum(hi_w - lo_w, 0).astype(np.int32)


def overlapping_voxels(tri, n, lo_corner, hi_corner, vs, res, stride):
    """(flat voxel key [K], triangle [K]) for every voxel box the official test accepts, in no particular
    order. tri [F, 3, 3] float32 in the box frame, n [F, 3] float32 unit normals, lo/hi_corner [F, 3]
    float32 per-triangle corner minima/maxima, vs [3] float32 voxel size, stride [3] flat-key strides."""
    d1, d2 = _plane_bounds(tri, n, vs)
    edges = _EdgeTests(tri, n, vs).tests
    dominant = np.argmax(np.abs(n), axis=1)
    lo, hi = _bounding_boxes(lo_corner, hi_corner, vs, res)
    keys, tris = [], []
    for w in range(3):
        group = np.flatnonzero(dominant == w)
        ext = np.take(hi, group, axis=0) - np.take(lo, group, axis=0)
        columns = np.cumsum(ext[:, (w + 1) % 3] * ext[:, (w + 2) % 3])
        cuts = np.searchsorted(columns, np.arange(COLUMN_BLOCK, columns[-1] if columns.size else 0, COLUMN_BLOCK))
        uv_edges = [e for e in edges if w not in e[:2]]  # the projection onto (u, v): a = u, b = v
        w_edges = [e for e in edges if w in e[:2]]
        for part in np.split(group, cuts):
            if part.size == 0:
                continue
            t, u, v, lo_w, count = _columns(*(np.take(x, part, axis=0) for x in (tri, n, lo, hi)), vs, w)
            t = take(part, t)
            p_u = u.astype(F32) * vs[(w + 1) % 3]
            p_v = v.astype(F32) * vs[(w + 2) % 3]
            ok = count > 0
            for _, _, na, nb, d in uv_edges:
                ok &= ~((take(na, t) * p_u + take(nb, t) * p_v) + take(d, t) < 0)
            # surviving columns, most candidates first: the j-th candidates form a prefix
            keep = np.flatnonzero(ok)
            keep = keep[descending(count[keep])]
            t, p_u, p_v, lo_w, count = (take(x, keep) for x in (t, p_u, p_v, lo_w, count))
            p_col = {(w + 1) % 3: p_u, (w + 2) % 3: p_v}
            key_col = u[keep].astype(np.int64) * stride[(w + 1) % 3] + v[keep].astype(np.int64) * stride[(w + 2) % 3]
            tests = []
            for a, b, na, nb, d in w_edges:  # (na p_a + nb p_b) + d: the non-w product is per column
                other, coef_w = (b, na) if a == w else (a, nb)
                own = (take(nb, t) if a == w else take(na, t)) * p_col[other]
                tests.append((own, take(coef_w, t), take(d, t)))
            plane = _PlaneTest(n, t, p_col, w)
            d1_t, d2_t = take(d1, t), take(d2, t)
            alive = np.searchsorted(-count, -np.arange(1, int(count.max(initial=0)) + 1), side="right")
            for j, m in enumerate(alive):
                w_idx = lo_w[:m] + j
                p_w = w_idx.astype(F32) * vs[w]
                ndp = plane.dot(p_w, m)
                hit = (ndp + d1_t[:m]) * (ndp + d2_t[:m]) <= 0
                for own, coef, d in tests:
                    hit &= ~((own[:m] + coef[:m] * p_w) + d[:m] < 0)
                sel = np.flatnonzero(hit)
                keys.append(key_col[sel] + w_idx[sel].astype(np.int64) * stride[w])
                tris.append(t[sel])
    if not keys:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(keys), np.concatenate(tris)


class _PlaneTest:
    """n . p in the official order n0 p0 + (n1 p1 + n2 p2), with the column's two products precomputed."""

    def __init__(self, n: np.ndarray, t: np.ndarray, p_col: dict, w: int):
        self.w = w
        self.n_w = take(n[:, w], t)
        self.terms = {a: take(n[:, a], t) * p for a, p in p_col.items()}  # n_a p_a per column
        if w == 0:
            self.inner = self.terms[1] + self.terms[2]

    def dot(self, p_w: np.ndarray, m: int) -> np.ndarray:
        nw = self.n_w[:m] * p_w
        if self.w == 0:
            return nw + self.inner[:m]
        if self.w == 1:
            return self.terms[0][:m] + (nw + self.terms[2][:m])
        return self.terms[0][:m] + (self.terms[1][:m] + nw)


def face_contributions(tri, n, lo_corner, hi_corner, vs, res, stride, voxel_keys):
    """(voxel row [K], triangle [K]) of every existing voxel (rows of the sorted `voxel_keys`) each triangle
    touches, sorted by row and by triangle within a row: the official discovery order of the face
    quadrics of each voxel."""
    key, t = overlapping_voxels(tri, n, lo_corner, hi_corner, vs, res, stride)
    n_tri = max(int(tri.shape[0]), 1)
    # (voxel, triangle) pairs are unique; the lists come in spatially coherent runs, which numpy's
    # timsort merges faster than a general sort
    pair = np.sort(key * n_tri + t, kind="stable")
    key, t = pair // n_tri, pair % n_tri
    rows = lookup(voxel_keys, key)  # sorted queries: a cache-friendly search
    hit = rows >= 0
    return rows[hit], t[hit]
