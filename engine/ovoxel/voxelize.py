"""Triangle soup -> flexible dual grid geometry, as the official CPU converter computes it (spec 5.3).

Four stages, each vectorised over all triangles (numpy; sorts, scatter-adds and 1-D gathers through torch
where it is faster on one thread):
1. edge crossings: a scan line per axis finds every primal grid edge a triangle crosses; the crossing
   creates the 4 voxels around that edge, flags the one whose upper-corner edge it is, and adds the
   crossing point and the triangle's plane quadric to all four;
2. face quadrics: every existing voxel whose box the triangle touches gets the plane quadric again
   (`engine.ovoxel.face_overlap`);
3. boundary quadrics: every existing voxel that an open edge passes through gets a line quadric;
4. a regularised QEF solve per voxel, clamped to the voxel box by enumerating faces, edges, corners.

The official scan uses double precision with C++ `int()` truncation and float32 grid lines; those are
reproduced operation for operation because they decide which voxels exist. The quadrics are built and
accumulated in float32 in the official discovery order, and solved with an emulation of Eigen's float32
QR (`engine.ovoxel.qef`): the QEFs are ill-conditioned enough that one ulp moves a vertex by ~1e-5.
"""

from __future__ import annotations

import numpy as np
import torch

from engine.ovoxel.arrays import descending, dot3, lookup, segments, take
from engine.ovoxel.face_overlap import face_contributions
from engine.ovoxel.qef import free_minimisers, inside_boxes, solve_on_box_surfaces

F32 = np.float32
F64 = np.float64
# Upper-triangle entries of a symmetric 4x4 quadric, in this fixed order.
QUADRIC_ENTRIES = ((0, 0), (0, 1), (0, 2), (0, 3), (1, 1), (1, 2), (1, 3), (2, 2), (2, 3), (3, 3))
VOXEL_BLOCK = 1 << 15  # voxels accumulated and solved together (temporaries of a few MB)


def _trunc_int(x: np.ndarray) -> np.ndarray:
    """C++ int(double): truncation toward zero (saturated instead of undefined out of range)."""
    return np.trunc(np.clip(x, -(2.0**31), 2.0**31 - 1)).astype(np.int64)


def flat_keys(c: np.ndarray, stride: np.ndarray) -> np.ndarray:
    """int64 x-major keys of integer coords [K, 3] (an explicit sum: numpy's integer matmul is slow)."""
    return c[:, 0].astype(np.int64) * stride[0] + c[:, 1].astype(np.int64) * stride[1] + c[:, 2]


def _bin(x: np.ndarray, top: int) -> np.ndarray:
    """clamp(int(x), 0, top) with C++ truncation; clamping first is the same and makes it a floor."""
    return np.clip(x, 0, top).astype(np.int64)


def _lerp(a, b, t, va, vb):
    """The official lerp (1 - alpha) va + alpha vb, alpha = (t - a)/(b - a). Its a == b branch never runs
    in the scan: a row or column exists only between two different bins, so a != b there."""
    alpha = (t - a) / (b - a)
    return (1 - alpha) * va + alpha * vb


def triangle_planes(tri: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 unit normals n = normalize((v1-v0) x (v2-v1)) [F, 3] and plane quadrics [F, 10] (float32)."""
    v = [[np.ascontiguousarray(tri[:, i, k]) for k in range(3)] for i in range(3)]  # v[corner][axis]
    e0 = [v[1][k] - v[0][k] for k in range(3)]
    e1 = [v[2][k] - v[1][k] for k in range(3)]
    n = [e0[1] * e1[2] - e0[2] * e1[1], e0[2] * e1[0] - e0[0] * e1[2], e0[0] * e1[1] - e0[1] * e1[0]]
    sq = n[0] * n[0] + (n[1] * n[1] + n[2] * n[2])
    ok = sq > 0
    length = np.sqrt(np.where(ok, sq, F32(1)))
    n = [np.where(ok, c / length, c) for c in n]
    plane = [*n, -(n[0] * v[0][0] + (n[1] * v[0][1] + n[2] * v[0][2]))]
    q = np.empty((tri.shape[0], len(QUADRIC_ENTRIES)), dtype=F32)
    for k, (i, j) in enumerate(QUADRIC_ENTRIES):
        q[:, k] = plane[i] * plane[j]
    return np.stack(n, axis=1), q


# --- stage 1: edge crossings ------------------------------------------------------------------------


def corner_bounds(tri: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-triangle minimum and maximum corner [F, 3] (same dtype as tri)."""
    lo = np.minimum(np.minimum(tri[:, 0], tri[:, 1]), tri[:, 2])
    return lo, np.maximum(np.maximum(tri[:, 0], tri[:, 1]), tri[:, 2])


def _sorted_by_y(x: list, y: list, z: list) -> tuple[list, list, list]:
    """The 3 corners of each triangle (per-corner coordinate arrays [F]) reordered by y, ties kept in input
    order (std::sort on 3 items is an insertion sort, hence stable)."""
    y0, y1, y2 = y
    rank = (
        (y1 < y0).astype(np.int8) + (y2 < y0),
        (y0 <= y1).astype(np.int8) + (y2 < y1),
        (y0 <= y2).astype(np.int8) + (y1 <= y2),
    )
    first = [rank[0] == r for r in range(3)]
    second = [rank[1] == r for r in range(3)]

    def pick(c):
        return [np.where(first[r], c[0], np.where(second[r], c[1], c[2])) for r in range(3)]

    return pick(x), pick(y), pick(z)


def edge_crossings(tri: np.ndarray, voxel_size: np.ndarray, res: tuple[int, int, int], corners=None):
    """All (triangle, primal grid edge) crossings of the official scan line.

    Returns per crossing: axis [C] (the edge's direction a2), base voxel [C, 3] (the voxel whose
    upper-corner edge it is), point [C, 3] float32, triangle index [C]. `corners`: the triangles' corner
    minima and maxima [F, 3] when the caller has them.
    """
    out = []
    lo_corner, hi_corner = (x.astype(F64) for x in (corners or corner_bounds(tri)))
    for a2 in range(3):
        a0, a1 = (a2 + 1) % 3, (a2 + 2) % 3
        s0, s1, s2 = (F64(voxel_size[a]) for a in (a0, a1, a2))
        # Only triangles spanning a grid line in both a1 (rows) and a0 (columns) can cross an a2 edge. The
        # column bins get 1e-6 voxel of margin: the scan's interpolated x stays within the corners' range
        # up to rounding, so this never drops a triangle the scan would use.
        y_lo = _bin(lo_corner[:, a1] / s1, res[a1] - 1)
        y_hi = _bin(hi_corner[:, a1] / s1, res[a1] - 1)
        x_lo = _bin(lo_corner[:, a0] / s0 - 1e-6, res[a0] - 1)
        x_hi = _bin(hi_corner[:, a0] / s0 + 1e-6, res[a0] - 1)
        spanning = np.flatnonzero((y_hi > y_lo) & (x_hi > x_lo))
        p = np.take(tri, spanning, axis=0)  # (np.take: fancy row indexing is several times slower)
        # sorted in float32 (a permutation: widening afterwards gives the same doubles)
        sx, sy, sz = _sorted_by_y(*([p[:, i, axis] for i in range(3)] for axis in (a0, a1, a2)))
        sx, sy, sz = ([c.astype(F64) for c in axis] for axis in (sx, sy, sz))
        ybin = [_bin(c / s1, res[a1] - 1) for c in sy]  # start, mid, end
        tri_of_row, local = segments(ybin[2] - ybin[0])
        y_idx = take(ybin[0], tri_of_row) + local
        first_half = y_idx < take(ybin[1], tri_of_row)
        # the row's corners: a (shared by both edges) is the first corner in the first half, the last in
        # the second; b is the middle one; c the remaining end
        ends = [(take(c[0], tri_of_row), take(c[2], tri_of_row)) for c in (sx, sy, sz)]
        ax, ay, az = (np.where(first_half, lo, hi) for lo, hi in ends)
        cx, cy, cz = (np.where(first_half, hi, lo) for lo, hi in ends)
        bx, by, bz = take(sx[1], tri_of_row), take(sy[1], tri_of_row), take(sz[1], tri_of_row)
        y = (F32(1) * (y_idx + 1).astype(F32) * F32(voxel_size[a1])).astype(F64)
        t3x, t3z = _lerp(ay, by, y, ax, bx), _lerp(ay, by, y, az, bz)
        t4x, t4z = _lerp(ay, cy, y, ax, cx), _lerp(ay, cy, y, az, cz)
        swap = t3x > t4x
        t3x, t4x = np.where(swap, t4x, t3x), np.where(swap, t3x, t4x)
        t3z, t4z = np.where(swap, t4z, t3z), np.where(swap, t3z, t4z)
        ls = _bin(t3x / s0, res[a0] - 1)
        le = _bin(t4x / s0, res[a0] - 1)
        tri_of_row = take(spanning, tri_of_row)
        row_of_col, local = segments(le - ls)
        x_idx = take(ls, row_of_col) + local
        x = ((x_idx + 1).astype(F32) * F32(voxel_size[a0])).astype(F64)
        z = _lerp(take(t3x, row_of_col), take(t4x, row_of_col), x, take(t3z, row_of_col), take(t4z, row_of_col))
        z_idx = _trunc_int(z / s2)
        keep = (z_idx >= 0) & (z_idx < res[a2])
        rows = row_of_col[keep]
        base = np.empty((rows.shape[0], 3), dtype=np.int64)
        base[:, a0], base[:, a1], base[:, a2] = x_idx[keep], take(y_idx, rows), z_idx[keep]
        point = np.empty((rows.shape[0], 3), dtype=F32)
        point[:, a0], point[:, a1], point[:, a2] = x[keep], take(y, rows), z[keep]
        out.append((np.full(rows.shape[0], a2, dtype=np.int8), base, point, take(tri_of_row, rows)))
    return tuple(np.concatenate(parts) for parts in zip(*out, strict=True))


# --- stage 2: face quadrics: engine.ovoxel.face_overlap -------------------------------------------


# --- stage 3: boundary quadrics ---------------------------------------------------------------------


def boundary_edges(faces: np.ndarray) -> np.ndarray:
    """[B, 2] vertex-index edges used by exactly one face (undirected), sorted like std::map keys."""
    first = np.concatenate([faces[:, 0], faces[:, 1], faces[:, 2]]).astype(np.int64)
    second = np.concatenate([faces[:, 1], faces[:, 2], faces[:, 0]]).astype(np.int64)
    base = int(faces.max()) + 1
    key = np.sort(np.minimum(first, second) * base + np.maximum(first, second), kind="stable")  # coherent runs
    single = np.ones(key.shape[0], dtype=bool)  # the key differs from both neighbours
    single[1:] &= key[1:] != key[:-1]
    single[:-1] &= key[:-1] != key[1:]
    key = key[single]
    return np.stack([key // base, key % base], axis=1)


def _line_quadrics(v0: np.ndarray, v1: np.ndarray, weight: float):
    """Per segment: kept mask, float64 unit direction, length and the float32 line quadric x weight [B, 10]."""
    d = (v1 - v0).astype(F64)  # float32 difference, widened
    length = np.sqrt(dot3(d, d))
    keep = length >= 1e-6
    d, length, v0 = d[keep], length[keep], v0[keep]
    d = d / np.sqrt(dot3(d, d))[:, None]
    a = (np.eye(3, dtype=F32)[None] - (d[:, :, None] * d[:, None, :]).astype(F32)).astype(F32)  # [B, 3, 3]
    b = -np.stack([dot3(a[:, i, :], v0) for i in range(3)], axis=1)  # -A v0
    row = np.stack([dot3(v0, a[:, :, j]) for j in range(3)], axis=1)  # v0^T A
    c = dot3(row, v0)
    q = np.zeros((d.shape[0], 4, 4), dtype=F32)
    q[:, :3, :3], q[:, :3, 3], q[:, 3, :3], q[:, 3, 3] = a, b, b, c
    q = F32(weight) * np.stack([q[:, i, j] for i, j in QUADRIC_ENTRIES], axis=1)
    return keep, d, length, q


def dda_voxels(v0: np.ndarray, d: np.ndarray, length: np.ndarray, vs: np.ndarray):
    """Voxels visited by the official 3-D DDA of each segment: (segment index [K], voxel [K, 3])."""
    cur = np.floor(v0 / vs[None, :]).astype(np.int64)
    step = np.where(d > 0, 1, -1)
    with np.errstate(divide="ignore", invalid="ignore"):
        border = (vs[None, :] * (cur + (step > 0)).astype(F32)).astype(F32)
        t_max = np.where(d == 0, np.inf, (border - v0).astype(F64) / d)
        t_delta = np.where(d == 0, np.inf, vs.astype(F64)[None, :] / np.abs(d))
    segs, cells = [np.arange(v0.shape[0])], [cur.copy()]
    active = np.arange(v0.shape[0])
    while active.size:
        tm = t_max[active]
        x_lt_y = tm[:, 0] < tm[:, 1]
        axis = np.where(x_lt_y, np.where(tm[:, 0] < tm[:, 2], 0, 2), np.where(tm[:, 1] < tm[:, 2], 1, 2))
        go = tm[np.arange(active.size), axis] <= length[active]
        active, axis = active[go], axis[go]
        cur[active, axis] += step[active, axis]
        t_max[active, axis] += t_delta[active, axis]
        segs.append(active)
        cells.append(cur[active])
    return np.concatenate(segs), np.concatenate(cells)


# --- stage 4: the QEF solve (engine.ovoxel.qef) ---------------------------------------------------


# --- the converter ----------------------------------------------------------------------------------


def _group(index: np.ndarray) -> np.ndarray:
    """Stable permutation grouping equal values of `index` (their relative order kept)."""
    key = torch.from_numpy(index.astype(np.int32) if index.size and index.max() < 2**31 else index)
    return torch.sort(key, stable=True).indices.numpy()


def sequential_sums(n: int, table: np.ndarray, stages: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """float32 [n, C]: per target row, the rows `table[src]` of its contributions added one at a time,
    stage after stage, in the order given (the official accumulates float32 sums in discovery order,
    and the solve is sensitive to their rounding).

    Each stage is (row [K], src [K]) sorted by row (ascending) with the discovery order kept inside a
    row. Contributions are laid out k-major (the k-th contribution of every row that has one, rows
    sorted by decreasing count), so each of the max-count steps is one contiguous vector add.
    Callers pass blocks of rows small enough that every temporary stays in cache.
    """
    counts = [np.bincount(row, minlength=n) for row, _ in stages]
    total = sum(counts)
    top = int(total.max()) if n else 0
    if top == 0:
        return np.zeros((n, table.shape[1]), dtype=F32)
    by_count = descending(total)  # rank -> row, most contributions first
    rank = np.empty(n, dtype=np.int64)
    rank[by_count] = np.arange(n)
    alive = n - np.cumsum(np.bincount(total, minlength=top))[:top]  # [top]: rows with more than k contributions
    offsets = np.concatenate([[0], np.cumsum(alive)])
    slot_src = np.empty(int(offsets[-1]), dtype=np.int64)
    before = np.zeros(n, dtype=np.int64)
    for (row, src), count in zip(stages, counts, strict=True):
        k = np.repeat(before - (np.cumsum(count) - count), count) + np.arange(row.size)  # index within its row
        slot_src[take(offsets, k) + np.repeat(rank, count)] = src
        before += count
    layout = np.take(table, slot_src, axis=0)  # [K, C]
    ranked = np.zeros((n, table.shape[1]), dtype=F32)
    for k in range(top):
        ranked[: alive[k]] += layout[offsets[k] : offsets[k + 1]]
    return np.take(ranked, rank, axis=0)


def _rows_in(stage: tuple[np.ndarray, np.ndarray], r0: int, r1: int) -> tuple[np.ndarray, np.ndarray]:
    """The contributions of a row-sorted stage whose row is in [r0, r1), rows made block-local."""
    row, src = stage
    lo, hi = np.searchsorted(row, (r0, r1))
    return row[lo:hi] - r0, src[lo:hi]


def _dual_vertices(
    coords: np.ndarray,
    vs: np.ndarray,
    points: tuple[np.ndarray, tuple[np.ndarray, np.ndarray]],
    quadrics: tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]],
    regularization_weight: float,
) -> np.ndarray:
    """float32 [N, 3]: accumulate each voxel's crossing points and quadrics, regularise, solve in its box.

    Fused per block of voxels (every stage is sorted by voxel row), so the temporaries stay small: large
    fresh arrays cost more in page faults than in arithmetic."""
    n_vox = coords.shape[0]
    point_table, point_stage = points
    quadric_table, quadric_stages = quadrics
    count = np.bincount(point_stage[0], minlength=n_vox).astype(F32)
    dual = np.empty((n_vox, 3), dtype=F32)
    outside = []
    for r0 in range(0, n_vox, VOXEL_BLOCK):
        r1 = min(r0 + VOXEL_BLOCK, n_vox)
        m = r1 - r0
        sums = sequential_sums(m, point_table, [_rows_in(point_stage, r0, r1)])
        quadric = sequential_sums(m, quadric_table, [_rows_in(s, r0, r1) for s in quadric_stages])
        q = np.empty((m, 4, 4), dtype=F32)
        for k, (i, j) in enumerate(QUADRIC_ENTRIES):
            q[:, i, j] = q[:, j, i] = quadric[:, k]
        if regularization_weight > 0:
            c = count[r0:r1]
            mean = sums / c[:, None]
            w = F32(regularization_weight) * c
            for i in range(3):
                q[:, i, i] += w
                q[:, i, 3] += w * -mean[:, i]
                q[:, 3, i] += w * -mean[:, i]
            q[:, 3, 3] += w * dot3(mean, mean)
        lo = coords[r0:r1].astype(F32) * vs
        hi = (coords[r0:r1] + 1).astype(F32) * vs
        x = free_minimisers(q)
        dual[r0:r1] = x
        out = np.flatnonzero(~inside_boxes(x, lo, hi))  # few: their box search runs once for all blocks
        outside.append((out + r0, q[out], lo[out], hi[out]))
    rows, q, lo, hi = (np.concatenate(parts) for parts in zip(*outside, strict=True))
    if rows.size:
        dual[rows] = solve_on_box_surfaces(q, lo, hi, dual[rows])
    return dual


def unique_pairs(tri: np.ndarray, vox: np.ndarray, n_vox: int) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (triangle, voxel) pairs of the scan, sorted by triangle then voxel: ([P], [P])."""
    key = np.sort(tri.astype(np.int64) * n_vox + vox, kind="stable")  # runs by triangle: timsort merges them
    key = key[np.concatenate([[True], key[1:] != key[:-1]])]
    return key // n_vox, key % n_vox


def mesh_to_flexible_dual_grid(
    vertices: np.ndarray,
    faces: np.ndarray,
    grid_size: int,
    aabb=((-0.5, -0.5, -0.5), (0.5, 0.5, 0.5)),
    face_weight: float = 1.0,
    boundary_weight: float = 0.2,
    regularization_weight: float = 0.01,
    return_pairs: bool = False,
) -> tuple:
    """Voxelise a triangle soup (inputs assumed valid; `engine.ovoxel.from_mesh` checks them).

    Returns coords int32 [N, 3] sorted by (x, y, z), dual vertices float32 [N, 3] in the box frame
    shifted to its min corner (world - aabb_min, like the official), flags bool [N, 3]; with
    `return_pairs`, also the scan's (triangle, voxel) pairs (see `unique_pairs`), which the attribute
    sampling reuses instead of scanning again.
    """
    box = np.asarray(aabb, dtype=F32).reshape(2, 3)
    res = (int(grid_size),) * 3
    vs = ((box[1] - box[0]) / np.asarray(res, dtype=np.int32)).astype(F32)
    verts = (np.asarray(vertices, dtype=F32) - box[0]).astype(F32)
    faces = np.asarray(faces, dtype=np.int64)
    tri = np.take(verts, faces, axis=0)  # [F, 3, 3]
    normals, plane_q = triangle_planes(tri)
    stride = np.array([res[1] * res[2], res[2], 1], dtype=np.int64)

    # 1. crossings, in the official discovery order (triangle, axis, row, column) -> voxels and flags
    corners = corner_bounds(tri)
    axis, base, point, tri_id = edge_crossings(tri, vs, res, corners)
    order = np.argsort(tri_id, kind="stable")
    axis, base, point, tri_id = (np.take(x, order, axis=0) for x in (axis, base, point, tri_id))
    a0, a1 = (axis + 1) % 3, (axis + 2) % 3
    base_key = flat_keys(base, stride)
    corner_keys = np.stack(
        [base_key + dx * stride[a0] + dy * stride[a1] for dx, dy in ((0, 0), (0, 1), (1, 0), (1, 1))], axis=1
    ).reshape(-1)  # [4C]: per crossing, the official (dx, dy) loop order
    if corner_keys.size == 0:
        empty = (np.zeros((0, 3), np.int32), np.zeros((0, 3), F32), np.zeros((0, 3), bool))
        return (*empty, (np.zeros(0, np.int64), np.zeros(0, np.int64))) if return_pairs else empty
    grouped = _group(corner_keys)
    sorted_keys = take(corner_keys, grouped)
    first = np.concatenate([[True], sorted_keys[1:] != sorted_keys[:-1]])
    keys = sorted_keys[first]
    n_vox = keys.shape[0]
    coords = np.stack([keys // stride[0], (keys // stride[1]) % res[1], keys % res[2]], axis=1)
    stage1 = (np.cumsum(first) - 1, grouped)  # (voxel row, contribution id), grouped by voxel
    flags = np.zeros((n_vox, 3), dtype=bool)
    cross_vox = np.empty(corner_keys.size, dtype=np.int64)
    cross_vox[grouped] = stage1[0]
    flags[cross_vox[0::4], axis] = True

    # 2. face quadrics: existing voxels each triangle touches (sorted by voxel, then triangle)
    face_stage = (np.zeros(0, np.int64), np.zeros(0, np.int64))
    if face_weight > 0 and faces.shape[0]:
        face_stage = face_contributions(tri, normals, *corners, vs, res, stride, keys)

    # 3. boundary quadrics: existing voxels each open edge passes through (edge order)
    line_q = np.zeros((0, 10), dtype=F32)
    line_vox, line_src = np.zeros(0, np.int64), np.zeros(0, np.int64)
    if boundary_weight > 0 and faces.shape[0]:
        edges = boundary_edges(faces)
        keep, d, length, line_q = _line_quadrics(verts[edges[:, 0]], verts[edges[:, 1]], boundary_weight)
        seg, cell = dda_voxels(verts[edges[keep, 0]], d, length, vs)
        inside = ((cell >= 0) & (cell < np.asarray(res))).all(axis=1)
        seg, cell = seg[inside], cell[inside]
        order = np.argsort(seg, kind="stable")
        rows = lookup(keys, flat_keys(np.take(cell, order, axis=0), stride))
        hit = rows >= 0
        line_vox, line_src = rows[hit], seg[order][hit] + plane_q.shape[0]

    table = np.concatenate([plane_q, line_q])
    order = _group(line_vox)
    stages = [(stage1[0], take(tri_id, grouped // 4)), face_stage, (take(line_vox, order), take(line_src, order))]
    dual = _dual_vertices(coords, vs, (point, (stage1[0], grouped // 4)), (table, stages), regularization_weight)
    if return_pairs:
        return coords.astype(np.int32), dual, flags, unique_pairs(np.repeat(tri_id, 4), cross_vox, n_vox)
    return coords.astype(np.int32), dual, flags
