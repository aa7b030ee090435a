"""Test geometry for the O-Voxel tests and benchmark: numpy meshes inside [-0.5, 0.5]^3, and the
reconstruction metrics (Chamfer-L1, F-score) measured in voxel units on dense surface samples.
"""

from __future__ import annotations

import numpy as np
import torch


def grid_faces(nu: int, nv: int, wrap_u: bool = False, wrap_v: bool = False) -> np.ndarray:
    """Triangles of an nu x nv vertex grid (row-major u, v), optionally periodic in u and/or v."""
    cu, cv = (nu if wrap_u else nu - 1), (nv if wrap_v else nv - 1)
    i, j = np.meshgrid(np.arange(cu), np.arange(cv), indexing="ij")
    a = i * nv + j
    b = ((i + 1) % nu) * nv + j
    c = ((i + 1) % nu) * nv + (j + 1) % nv
    d = i * nv + (j + 1) % nv
    return np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3), np.stack([a, c, d], -1).reshape(-1, 3)])


def torus(big=0.3, small=0.1, nu=256, nv=96):
    u, v = np.meshgrid(np.linspace(0, 2 * np.pi, nu, endpoint=False), np.linspace(0, 2 * np.pi, nv, endpoint=False))
    u, v = u.T, v.T
    ring = big + small * np.cos(v)
    verts = np.stack([ring * np.cos(u), ring * np.sin(u), small * np.sin(v)], -1).reshape(-1, 3)
    return verts.astype(np.float32), grid_faces(nu, nv, True, True)


def uv_sphere(radius=0.4, nu=192, nv=96, centre=(0.0, 0.0, 0.0)):
    """Latitude-longitude sphere with poles (closed)."""
    theta = np.linspace(0, np.pi, nv)[1:-1]
    phi = np.linspace(0, 2 * np.pi, nu, endpoint=False)
    p, t = np.meshgrid(phi, theta, indexing="ij")
    ring = np.stack([np.sin(t) * np.cos(p), np.sin(t) * np.sin(p), np.cos(t)], -1).reshape(-1, 3)
    verts = np.concatenate([ring, [[0, 0, 1], [0, 0, -1]]]) * radius + np.asarray(centre)
    faces = grid_faces(nu, nv - 2, wrap_u=True)
    top, bottom = nu * (nv - 2), nu * (nv - 2) + 1
    i = np.arange(nu)
    caps = np.concatenate(
        [
            np.stack([np.full(nu, top), ((i + 1) % nu) * (nv - 2), i * (nv - 2)], 1),
            np.stack([np.full(nu, bottom), i * (nv - 2) + nv - 3, ((i + 1) % nu) * (nv - 2) + nv - 3], 1),
        ]
    )
    return verts.astype(np.float32), np.concatenate([faces, caps])


def nested_spheres():
    """A sphere enclosed in a sphere: the inner one must survive (no watertight shell filling)."""
    v0, f0 = uv_sphere(0.42)
    v1, f1 = uv_sphere(0.2, nu=128, nv=64)
    return np.concatenate([v0, v1]), np.concatenate([f0, f1 + v0.shape[0]])


def plane(corner, du, dv, n=128):
    s, t = np.meshgrid(np.linspace(0, 1, n), np.linspace(0, 1, n), indexing="ij")
    verts = np.asarray(corner) + s[..., None] * np.asarray(du) + t[..., None] * np.asarray(dv)
    return verts.reshape(-1, 3).astype(np.float32), grid_faces(n, n)


def crossing_planes():
    """Two open planes crossing in an X (non-manifold along their intersection line)."""
    va, fa = plane((-0.4, -0.4, -0.3), (0.8, 0, 0.6), (0, 0.8, 0))
    vb, fb = plane((-0.4, -0.4, 0.3), (0.8, 0, -0.6), (0, 0.8, 0))
    return np.concatenate([va, vb]), np.concatenate([fa, fb + va.shape[0]])


def leaf(n=160):
    """A single open curved sheet with an elliptical outline."""
    s, t = np.meshgrid(np.linspace(-1, 1, n), np.linspace(-1, 1, n), indexing="ij")
    width = np.sqrt(np.clip(1 - s**2, 0, 1))
    x, y = 0.42 * s, 0.2 * t * width
    z = 0.12 * np.cos(1.5 * s) * (1 - t**2) - 0.05
    verts = np.stack([x, y, z], -1).reshape(-1, 3).astype(np.float32)
    faces = grid_faces(n, n)
    tri = verts[faces]
    area = np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    return verts, faces[area > 1e-9]


def cube(half=0.3, n=64):
    """A cube with sharp edges, each face a separate n x n grid (so the corners are exact)."""
    parts, faces, offset = [], [], 0
    for axis in range(3):
        for sign in (-1, 1):
            u, w = (axis + 1) % 3, (axis + 2) % 3
            corner, du, dv = np.zeros(3), np.zeros(3), np.zeros(3)
            corner[axis], corner[u], corner[w] = sign * half, -half, -half
            du[u], dv[w] = 2 * half, 2 * half
            if sign < 0:
                du, dv = dv, du
                corner[u], corner[w] = -half, -half
            v, f = plane(corner, du, dv, n)
            parts.append(v)
            faces.append(f + offset)
            offset += v.shape[0]
    return np.concatenate(parts), np.concatenate(faces)


def suzanne(level: int = 2):
    """Blender's Suzanne (bpy, tests and benchmarks only), subdivided, scaled to span 0.9 of the box."""
    import bpy

    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.mesh.primitive_monkey_add()
    obj = bpy.context.active_object
    if level:
        mod = obj.modifiers.new("subdivision", "SUBSURF")
        mod.levels = mod.render_levels = level
    mesh = obj.evaluated_get(bpy.context.evaluated_depsgraph_get()).to_mesh()
    mesh.calc_loop_triangles()
    v = np.empty(len(mesh.vertices) * 3, np.float32)
    mesh.vertices.foreach_get("co", v)
    f = np.empty(len(mesh.loop_triangles) * 3, np.int32)
    mesh.loop_triangles.foreach_get("vertices", f)
    v = v.reshape(-1, 3)
    v = (v - (v.max(0) + v.min(0)) / 2) / np.abs(v).max() * 0.45
    return v.astype(np.float32), f.reshape(-1, 3).astype(np.int64)


SHAPES = {
    "torus": torus,
    "crossing_planes": crossing_planes,
    "leaf": leaf,
    "nested_spheres": nested_spheres,
    "cube": cube,
}


# --- metrics ----------------------------------------------------------------------------------------


def sample_surface(vertices, faces, count: int, seed: int = 0) -> np.ndarray:
    """Area-weighted uniform samples [count, 3] on a triangle mesh."""
    rng = np.random.default_rng(seed)
    tri = np.asarray(vertices, dtype=np.float64)[np.asarray(faces)]
    area = np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    pick = rng.choice(tri.shape[0], size=count, p=area / area.sum())
    r1, r2 = np.sqrt(rng.random(count)), rng.random(count)
    w = np.stack([1 - r1, r1 * (1 - r2), r1 * r2], 1)
    return np.einsum("pk,pkc->pc", w, tri[pick]).astype(np.float32)


def surface_area(vertices, faces) -> float:
    tri = np.asarray(vertices, dtype=np.float64)[np.asarray(faces)]
    return float(np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1).sum() / 2)


def nearest_distance(queries: np.ndarray, reference: np.ndarray, cell: float, cap: float) -> np.ndarray:
    """Distance from each query to its nearest reference point, exact up to `cell` (all points within
    one cell are searched), values beyond that are an upper bound, clipped to `cap`."""
    q = torch.from_numpy(queries).float()
    r = torch.from_numpy(reference).float()
    qc = torch.floor(q / cell).long()
    rc = torch.floor(r / cell).long()
    lo = torch.minimum(qc.min(0).values, rc.min(0).values) - 1
    span = torch.maximum(qc.max(0).values, rc.max(0).values) - lo + 2
    key = lambda c: ((c[..., 0] - lo[0]) * span[1] + (c[..., 1] - lo[1])) * span[2] + (c[..., 2] - lo[2])  # noqa: E731
    rkey, order = torch.sort(key(rc))
    r = r[order]
    cells, counts = torch.unique_consecutive(rkey, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    offsets = torch.cartesian_prod(*[torch.tensor([-1, 0, 1])] * 3)  # [27, 3]
    best = torch.full((q.shape[0],), cap)
    for chunk in torch.arange(q.shape[0]).split(4000):
        k = key(qc[chunk, None, :] + offsets).reshape(-1)  # [Q * 27]
        pos = torch.searchsorted(cells, k).clamp_max(cells.numel() - 1)
        n = torch.where(cells[pos] == k, counts[pos], 0)
        owner = torch.repeat_interleave(torch.arange(chunk.numel()).repeat_interleave(27), n)
        idx = torch.repeat_interleave(starts[pos] - torch.cumsum(n, 0) + n, n) + torch.arange(owner.numel())
        dist = (q[chunk][owner] - r[idx]).norm(dim=1)
        best[chunk] = torch.full((chunk.numel(),), cap).scatter_reduce(0, owner, dist, reduce="amin")
    return best.clamp_max(cap).numpy()


def reconstruction_metrics(
    ref_v, ref_f, out_v, out_f, resolution: int, samples_per_voxel2: float = 10.0, queries: int = 20000, seed=0
):
    """Symmetric Chamfer-L1 (mean of both directions, truncated at 2 voxels) and F-scores at 0.5 and 1
    voxel, in voxel units, from dense area-weighted samples of both surfaces."""
    voxel = 1.0 / resolution
    n_ref = int(surface_area(ref_v, ref_f) / voxel**2 * samples_per_voxel2)
    n_out = int(surface_area(out_v, out_f) / voxel**2 * samples_per_voxel2)
    a = sample_surface(ref_v, ref_f, n_ref, seed) / voxel
    b = sample_surface(out_v, out_f, n_out, seed + 1) / voxel
    rng = np.random.default_rng(seed + 2)
    qa = a[rng.choice(a.shape[0], min(a.shape[0], queries), replace=False)]
    qb = b[rng.choice(b.shape[0], min(b.shape[0], queries), replace=False)]
    completeness = nearest_distance(qa, b, 1.0, 2.0)  # reference -> output
    accuracy = nearest_distance(qb, a, 1.0, 2.0)  # output -> reference
    out = {"chamfer_l1": float((completeness.mean() + accuracy.mean()) / 2)}
    for t in (0.5, 1.0):
        precision, recall = float((accuracy <= t).mean()), float((completeness <= t).mean())
        out[f"f_score@{t}"] = 2 * precision * recall / max(precision + recall, 1e-12)
    return out
