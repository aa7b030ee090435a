"""O-Voxel (flexible dual grid) -> triangle mesh, as the official `flexible_dual_grid_to_mesh` computes it.

One vertex per voxel; one quad per flagged primal edge whose four surrounding voxels are all active;
each quad split into two triangles. The official code finds the neighbours with a CUDA hash map; here
the voxel keys are sorted once and the neighbours are found with `searchsorted` (queries of one
(axis, offset) group are monotone in the sorted order, which keeps the binary search cache-friendly),
so it runs on any torch device. Spec section 5.2.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from engine.errors import EngineInputError

DEFAULT_AABB = ((-0.5, -0.5, -0.5), (0.5, 0.5, 0.5))

# The four voxels around the flagged edge of voxel n, per axis; the order fixes the quad winding.
EDGE_NEIGHBOURS = (
    ((0, 0, 0), (0, 0, 1), (0, 1, 1), (0, 1, 0)),  # x
    ((0, 0, 0), (1, 0, 0), (1, 0, 1), (0, 0, 1)),  # y
    ((0, 0, 0), (0, 1, 0), (1, 1, 0), (1, 0, 0)),  # z
)


def grid_shape(grid_size: int | Sequence[int]) -> tuple[int, int, int]:
    shape = (int(grid_size),) * 3 if isinstance(grid_size, int) else tuple(int(g) for g in grid_size)
    if len(shape) != 3 or min(shape) < 1:
        raise EngineInputError(f"grid_size must be a positive int or three positive ints, got {grid_size!r}")
    return shape


def voxel_keys(coords: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """int64 key x*Y*Z + y*Z + z (x-major, the sorted (x, y, z) order)."""
    c = coords.long()
    return (c[:, 0] * shape[1] + c[:, 1]) * shape[2] + c[:, 2]


def search_sorted(sorted_keys: torch.Tensor, queries: torch.Tensor, right: bool = False) -> torch.Tensor:
    """torch.searchsorted, through numpy on the CPU: numpy starts each search from the previous answer
    when the queries increase (they do here), about twice as fast."""
    if sorted_keys.device.type == "cpu":
        return torch.from_numpy(
            np.searchsorted(sorted_keys.numpy(), queries.numpy(), side="right" if right else "left")
        )
    return torch.searchsorted(sorted_keys, queries, right=right)


def lookup_sorted(sorted_keys: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """Position of each query in `sorted_keys`, -1 where absent."""
    if sorted_keys.numel() == 0:
        return torch.full_like(queries, -1)
    pos_c = search_sorted(sorted_keys, queries).clamp_max(sorted_keys.numel() - 1)
    return torch.where(sorted_keys.index_select(0, pos_c) == queries, pos_c, -1)


def _check_inputs(coords, offsets, flags, split_weight, shape) -> None:
    n = coords.shape[0] if coords.dim() == 2 else -1
    if coords.dim() != 2 or coords.shape[1] != 3 or coords.dtype.is_floating_point:
        raise EngineInputError(f"coords must be an integer tensor [N, 3], got {coords.dtype} {list(coords.shape)}")
    if tuple(offsets.shape) != (n, 3) or tuple(flags.shape) != (n, 3):
        raise EngineInputError(
            f"offsets and flags must be [N, 3] with N = {n}, got {list(offsets.shape)} and {list(flags.shape)}"
        )
    if split_weight is not None and split_weight.reshape(-1).shape[0] != n:
        raise EngineInputError(f"split_weight must have one value per voxel ({n}), got {list(split_weight.shape)}")
    if n and (bool((coords < 0).any()) or any(int(coords[:, a].max()) >= shape[a] for a in range(3))):
        raise EngineInputError(f"voxel coords must lie in [0, grid_size) = [0, {shape}); check the grid size")


def quads_from_flags(coords: torch.Tensor, flags: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """[L, 4] indices (rows of `coords`) of the quads around flagged edges, in the official order:
    voxel-major (input row order), then axis x, y, z; edges with a missing neighbour are dropped."""
    quads, order = _sorted_quads(coords, flags, shape)
    return quads if order is None else order.index_select(0, quads.reshape(-1)).view(-1, 4)


def _sorted_quads(coords: torch.Tensor, flags: torch.Tensor, shape: tuple[int, int, int]):
    """The quads of `quads_from_flags` in the official order but as rows of the key-sorted voxels, and
    the sorting permutation (sorted row -> input row; None when the input is already sorted)."""
    n = coords.shape[0]
    device = coords.device
    keys = voxel_keys(coords, shape)  # [N]
    if n < 2 or bool((keys[1:] > keys[:-1]).all()):
        order, sorted_keys = None, keys
    else:
        sorted_keys, order = torch.sort(keys)
        if bool((sorted_keys[1:] == sorted_keys[:-1]).any()):
            raise EngineInputError("coords contain duplicate voxels; each voxel must appear once")
    flags = flags.bool()
    sorted_flags = flags if order is None else flags.index_select(0, order)
    stride_x, stride_y = shape[1] * shape[2], shape[2]
    z_last = sorted_keys % shape[2] == shape[2] - 1  # +1 in z would wrap into the next column
    y_last = (sorted_keys // shape[2]) % shape[1] == shape[1] - 1

    def next_in_z(pos: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        """Row of key + 1 given the row `pos` of key: the next sorted row, if it is that key."""
        nxt = (pos + 1).clamp_max(n - 1)
        return torch.where(sorted_keys.index_select(0, nxt) == key + 1, nxt, -1)

    parts = []  # per axis: [M_a, 4] sorted rows, ascending in the first column
    for axis in range(3):
        rows = sorted_flags[:, axis].nonzero().squeeze(1)  # [M_a] sorted rows with this edge flagged
        key = sorted_keys.index_select(0, rows)
        zl = z_last.index_select(0, rows)
        yl = y_last.index_select(0, rows)
        if axis == 0:  # (0,0,1), (0,1,1), (0,1,0)
            p010 = torch.where(yl, -1, lookup_sorted(sorted_keys, key + stride_y))
            p011 = torch.where(zl | (p010 < 0), -1, next_in_z(p010, key + stride_y))
            p001 = torch.where(zl, -1, next_in_z(rows, key))
            quad = (rows, p001, p011, p010)
        elif axis == 1:  # (1,0,0), (1,0,1), (0,0,1)
            p100 = lookup_sorted(sorted_keys, key + stride_x)
            p101 = torch.where(zl | (p100 < 0), -1, next_in_z(p100, key + stride_x))
            p001 = torch.where(zl, -1, next_in_z(rows, key))
            quad = (rows, p100, p101, p001)
        else:  # (0,1,0), (1,1,0), (1,0,0)
            p010 = torch.where(yl, -1, lookup_sorted(sorted_keys, key + stride_y))
            ok = p010 >= 0
            p100 = torch.where(ok, lookup_sorted(sorted_keys, key + stride_x), -1)
            ok &= p100 >= 0
            p110 = torch.where(ok, lookup_sorted(sorted_keys, key + stride_x + stride_y), -1)
            quad = (rows, p010, p110, p100)
        keep = ((quad[1] >= 0) & (quad[2] >= 0) & (quad[3] >= 0)).nonzero().squeeze(1)
        parts.append(torch.stack([q.index_select(0, keep) for q in quad], dim=1))

    # Official order: by (input row of q0, axis); every (voxel, axis) holds at most one quad, so a quad's
    # place is the number of quads of earlier voxels plus those of earlier axes on its own voxel.
    first = [q[:, 0] if order is None else order.index_select(0, q[:, 0]) for q in parts]  # input rows
    has = torch.zeros((3, n), dtype=torch.long, device=device)
    for axis, rows in enumerate(first):
        has[axis].index_fill_(0, rows, 1)
    per_voxel = has.sum(0)
    start = torch.cumsum(per_voxel, 0) - per_voxel
    quads = torch.empty((sum(q.shape[0] for q in parts), 4), dtype=torch.long, device=device)
    for axis, (q, rows) in enumerate(zip(parts, first, strict=True)):
        place = start.index_select(0, rows)
        for earlier in range(axis):
            place += has[earlier].index_select(0, rows)
        quads.index_copy_(0, place, q)
    return quads, order


def _split_a_mask(quads: torch.Tensor, vertices: torch.Tensor, split_weight: torch.Tensor | None) -> torch.Tensor:
    """[L] True where the quad is split along q0-q2 (split A), False for q1-q3 (split B)."""
    if split_weight is not None:
        w = split_weight.reshape(-1)
        w0, w1, w2, w3 = (w.index_select(0, quads[:, i].contiguous()) for i in range(4))
        return w0 * w2 > w1 * w3  # strict: ties go to B
    # No weights: the official code scores each split on the first four entries of its 6-index
    # triangle list (spec 5.2). For A that is |n(q0,q1,q2) . n(q1,q2,q0)|, for B a cross product of a
    # vector with itself: exactly 0 for finite input (NaN otherwise, and NaN never wins), so A wins
    # unless (q0,q1,q2) is degenerate.
    if bool(torch.isfinite(vertices).all()) and float(vertices.abs().max()) < 1e15:
        # B's score is exactly 0 (its cross products cannot overflow here): only A's is needed, on
        # per-axis columns (three narrow gathers per corner instead of a [L, 4, 3] one)
        columns = [vertices[:, k].contiguous() for k in range(3)]
        p = [[c.index_select(0, quads[:, i].contiguous()) for c in columns] for i in range(3)]
        n0 = _cross([a - b for a, b in zip(p[1], p[0], strict=True)], [a - b for a, b in zip(p[2], p[0], strict=True)])
        n1 = _cross([a - b for a, b in zip(p[2], p[1], strict=True)], [a - b for a, b in zip(p[0], p[1], strict=True)])
        return (n0[0] * n1[0] + n0[1] * n1[1] + n0[2] * n1[2]).abs() > 0
    flat = quads.reshape(-1)
    dim = 0 if quads.shape[0] == 3 else 1  # torch.cross without dim takes the first axis of size 3
    v = vertices.index_select(0, flat).view(-1, 4, 3)  # [L, 4, 3]
    n0 = torch.linalg.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0], dim=dim)
    n1 = torch.linalg.cross(v[:, 2] - v[:, 1], v[:, 0] - v[:, 1], dim=dim)
    align_a = (n0 * n1).sum(dim=1).abs()
    m0 = torch.linalg.cross(v[:, 1] - v[:, 0], v[:, 3] - v[:, 0], dim=dim)
    m1 = torch.linalg.cross(v[:, 3] - v[:, 1], v[:, 3] - v[:, 1], dim=dim)
    align_b = (m0 * m1).sum(dim=1).abs()
    return align_a > align_b


def _cross(a: list, b: list) -> list:
    return [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]


SPLIT_A = (0, 1, 2, 0, 2, 3)  # triangles (q0, q1, q2), (q0, q2, q3)
SPLIT_B = (0, 1, 3, 3, 1, 2)  # triangles (q0, q1, q3), (q3, q1, q2)


def flexible_dual_grid_to_mesh(
    coords: torch.Tensor,
    offsets: torch.Tensor,
    flags: torch.Tensor,
    split_weight: torch.Tensor | None = None,
    aabb=DEFAULT_AABB,
    grid_size: int | Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mesh of one O-Voxel item.

    coords [N, 3] int voxel indices; offsets [N, 3] dual-vertex offsets in voxel units from the voxel's
    min corner; flags [N, 3] bool edge-crossing flags; split_weight [N, 1] (or None: the official
    no-weight rule). Returns vertices float32 [N, 3] (one per voxel, input row order, world frame
    aabb_min + (coords + offsets) * voxel_size) and faces int64 [F, 3].
    """
    if grid_size is None:
        raise EngineInputError("flexible_dual_grid_to_mesh needs grid_size (the voxel resolution)")
    shape = grid_shape(grid_size)
    _check_inputs(coords, offsets, flags, split_weight, shape)
    device = coords.device
    box = torch.as_tensor(aabb, dtype=torch.float32, device=device).reshape(2, 3)
    voxel_size = (box[1] - box[0]) / torch.tensor(shape, dtype=torch.int32, device=device)  # fp32 like official
    vertices = (coords.float() + offsets.float()) * voxel_size + box[0].reshape(1, 3)  # [N, 3]

    # work in key-sorted rows (neighbouring quads touch nearby rows: cache-friendly gathers), then map
    quads, order = _sorted_quads(coords, flags, shape)  # [L, 4]
    sorted_vertices = vertices if order is None else vertices.index_select(0, order)
    split_a = _split_a_mask(quads, sorted_vertices, None if split_weight is None else _rows(split_weight, order))
    if order is not None:
        quads = order.index_select(0, quads.reshape(-1)).view(-1, 4)
    faces = _columns(quads, SPLIT_A)  # [L, 6]
    split_b = (~split_a).nonzero().squeeze(1)
    faces[split_b] = _columns(quads.index_select(0, split_b), SPLIT_B)
    return vertices, faces.view(-1, 3)  # [2L, 3]


def _columns(table: torch.Tensor, columns: tuple[int, ...]) -> torch.Tensor:
    """table[:, columns] (through numpy on the CPU, where it is ~3x faster than torch's indexing)."""
    if table.device.type == "cpu":
        return torch.from_numpy(np.take(table.numpy(), list(columns), axis=1))
    return table[:, list(columns)]


def _rows(values: torch.Tensor, order: torch.Tensor | None) -> torch.Tensor:
    values = values.reshape(-1)
    return values if order is None else values.index_select(0, order)
