"""O-Voxel round trips on real geometry, bad input, files, attribute lookup and PBR attributes.

Quality is measured in voxel units against dense samples of the input surface (tests/ovoxel_shapes.py);
512^3 and the large meshes live in bench/ovoxel.py to keep this file fast.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from engine import ovoxel
from engine.errors import EngineInputError
from engine.ovoxel import Material, TexturedMesh
from tests.ovoxel_shapes import (
    SHAPES,
    nearest_distance,
    reconstruction_metrics,
    sample_surface,
    surface_area,
    uv_sphere,
)

RES = 256


def round_trip(vertices, faces, resolution=RES):
    vox = ovoxel.from_mesh(vertices, faces, resolution)
    mesh = ovoxel.to_mesh(vox)
    return vox, mesh


@functools.cache
def shape_round_trip(name, resolution=RES):
    v, f = SHAPES[name]()
    return v, f, *round_trip(v, f, resolution)


@pytest.mark.parametrize("resolution", [RES, 2 * RES])
@pytest.mark.parametrize("name", list(SHAPES))
def test_round_trip_quality(name, resolution):
    v, f, vox, mesh = shape_round_trip(name, resolution)
    assert mesh.vertices.dtype == np.float32 and mesh.faces.dtype == np.int64
    assert mesh.vertices.shape[0] == vox.num_voxels and mesh.faces.shape[0] > 0
    q = reconstruction_metrics(v, f, mesh.vertices, mesh.faces, resolution, samples_per_voxel2=5.0, queries=8000)
    assert q["f_score@1.0"] >= 0.99, q
    assert q["f_score@0.5"] >= 0.95, q
    assert q["chamfer_l1"] <= 0.4, q
    # one output sheet per input sheet: a doubled leaf or a shell around the planes would double the area
    ratio = surface_area(mesh.vertices, mesh.faces) / surface_area(v, f)
    assert 0.9 <= ratio <= 1.2, f"{name}: output/input area {ratio:.3f}"


def test_suzanne_round_trip():
    pytest.importorskip("bpy")
    from tests.ovoxel_shapes import suzanne

    v, f = suzanne(level=2)
    _, mesh = round_trip(v, f)
    q = reconstruction_metrics(v, f, mesh.vertices, mesh.faces, RES, samples_per_voxel2=5.0, queries=8000)
    assert q["f_score@1.0"] >= 0.99, q


def test_enclosed_sphere_survives():
    inner_v, inner_f = uv_sphere(0.2, nu=128, nv=64)  # the inner part of SHAPES["nested_spheres"]
    _, _, _, mesh = shape_round_trip("nested_spheres")
    radius = np.linalg.norm(mesh.vertices, axis=1)
    assert ((radius > 0.18) & (radius < 0.22)).sum() > 1000, "the inner sphere is gone"
    inner = sample_surface(inner_v, inner_f, 5000) * RES
    d = nearest_distance(inner, sample_surface(mesh.vertices, mesh.faces, 300000) * RES, 1.0, 2.0)
    assert (d <= 1.0).mean() >= 0.99


def test_leaf_stays_a_single_open_sheet():
    _, _, vox, mesh = shape_round_trip("leaf")
    # an open sheet keeps a boundary: some mesh edges belong to a single face
    e = np.sort(np.concatenate([mesh.faces[:, [0, 1]], mesh.faces[:, [1, 2]], mesh.faces[:, [2, 0]]]), axis=1)
    _, counts = np.unique(e[:, 0] * vox.num_voxels + e[:, 1], return_counts=True)
    assert (counts == 1).sum() > 100
    # no second layer: each (x, y) column holds one voxel-thick band, not two separated ones
    xy = vox.coords[:, 0].astype(np.int64) * RES + vox.coords[:, 1]
    order = np.lexsort((vox.coords[:, 2], xy))
    gaps = (xy[order][1:] == xy[order][:-1]) & (np.diff(vox.coords[order, 2]) > 1)
    assert not gaps.any(), "the sheet was doubled"


def test_voxels_match_dual_vertex_box_and_flags_give_faces():
    v, f = SHAPES["cube"]()
    vox = ovoxel.from_mesh(v, f, 64)
    assert vox.coords.dtype == np.int32 and vox.flags.dtype == bool
    assert (vox.offsets >= 0).all() and (vox.offsets <= 1).all()
    keys = (vox.coords[:, 0].astype(np.int64) * 64 + vox.coords[:, 1]) * 64 + vox.coords[:, 2]
    assert (np.diff(keys) > 0).all(), "rows are sorted by (x, y, z)"
    # sharp cube corners: the dual vertex of the corner voxel sits on the corner (QEF of 3 planes)
    dv = vox.dual_vertices()
    assert np.abs(dv - 0.3).max(axis=1).min() < 1e-3


# --- bad input --------------------------------------------------------------------------------------

TRI_V = np.array([[-0.3, -0.3, 0.0], [0.3, -0.2, 0.1], [0.0, 0.3, -0.1]], dtype=np.float32)
TRI_F = np.array([[0, 1, 2]])


@pytest.mark.parametrize(
    ("vertices", "faces", "match"),
    [
        (np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64), "empty"),
        (TRI_V, np.zeros((0, 3), np.int64), "empty"),
        (np.where(np.eye(3, dtype=bool), np.nan, TRI_V).astype(np.float32), TRI_F, "NaN or infinite"),
        (np.where(np.eye(3, dtype=bool), np.inf, TRI_V).astype(np.float32), TRI_F, "NaN or infinite"),
        (TRI_V, np.array([[0, 1, 3]]), "has 3 vertices"),
        (TRI_V, np.array([[0, -1, 2]]), "has 3 vertices"),
        (TRI_V + 5.0, TRI_F, "entirely outside"),
        (TRI_V[:, :2], TRI_F, r"\[V, 3\]"),
        (TRI_V, TRI_F.astype(np.float32), "integer"),
        (np.array([[0, 0, 0], [0.1, 0.1, 0.1], [0.2, 0.2, 0.2]], np.float32), TRI_F, "zero area"),
        (
            np.array([[0.001, 0.001, 0.001], [0.002, 0.001, 0.001], [0.001, 0.002, 0.001]], np.float32),
            TRI_F,
            "too small",
        ),
    ],
)
def test_bad_mesh_is_refused_clearly(vertices, faces, match):
    with pytest.raises(EngineInputError, match=match):
        ovoxel.from_mesh(vertices, faces, 64)


@pytest.mark.parametrize("resolution", [0, 1, 3, 100, 4096, 64.0, "64"])
def test_bad_resolution_is_refused(resolution):
    with pytest.raises(EngineInputError, match="power of two"):
        ovoxel.from_mesh(TRI_V, TRI_F, resolution)


def test_zero_area_faces_are_dropped_and_counted():
    v, f = SHAPES["leaf"]()
    bad = np.array([[0, 0, 1], [5, 5, 5]])
    clean = ovoxel.from_mesh(v, f, 64)
    dirty = ovoxel.from_mesh(v, np.concatenate([f, bad]), 64)
    assert clean.dropped_faces == 0 and dirty.dropped_faces == 2
    np.testing.assert_array_equal(clean.coords, dirty.coords)
    np.testing.assert_array_equal(clean.offsets, dirty.offsets)


def test_extraction_refuses_bad_coords():
    coords = torch.tensor([[0, 0, 0], [64, 0, 0]], dtype=torch.int32)
    with pytest.raises(EngineInputError, match="grid_size"):
        ovoxel.flexible_dual_grid_to_mesh(coords, torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.bool), grid_size=64)
    dup = torch.tensor([[1, 0, 0], [0, 0, 0], [1, 0, 0]], dtype=torch.int32)
    with pytest.raises(EngineInputError, match="duplicate"):
        ovoxel.flexible_dual_grid_to_mesh(dup, torch.zeros(3, 3), torch.zeros(3, 3, dtype=torch.bool), grid_size=8)


# --- extraction details -----------------------------------------------------------------------------


def test_single_edge_quad_winding_and_splits():
    # the four voxels around the x-edge of voxel (2, 2, 2), in scrambled row order
    coords = torch.tensor([[2, 3, 3], [2, 2, 2], [2, 3, 2], [2, 2, 3]], dtype=torch.int32)
    flags = torch.zeros(4, 3, dtype=torch.bool)
    flags[1, 0] = True
    offsets = torch.full((4, 3), 0.5)
    v, faces = ovoxel.flexible_dual_grid_to_mesh(coords, offsets, flags, None, grid_size=8)
    # quad (q0..q3) = voxels (0,0,0), (0,0,1), (0,1,1), (0,1,0) relative to (2,2,2) -> rows 1, 3, 0, 2
    assert faces.tolist() == [[1, 3, 0], [1, 0, 2]]  # split A (no weights, non-degenerate)
    np.testing.assert_allclose(v[1].numpy(), (np.array([2.5, 2.5, 2.5]) / 8 - 0.5), atol=1e-7)
    w = torch.tensor([[1.0], [1.0], [1.0], [2.0]])  # w0*w2 = 1 < w1*w3 = 2 -> split B
    _, faces_b = ovoxel.flexible_dual_grid_to_mesh(coords, offsets, flags, w, grid_size=8)
    assert faces_b.tolist() == [[1, 3, 2], [2, 3, 0]]
    tie = torch.ones(4, 1)  # ties go to B
    _, faces_t = ovoxel.flexible_dual_grid_to_mesh(coords, offsets, flags, tie, grid_size=8)
    assert faces_t.tolist() == faces_b.tolist()


def test_missing_neighbour_drops_the_edge():
    coords = torch.tensor([[2, 2, 2], [2, 2, 3], [2, 3, 3]], dtype=torch.int32)
    flags = torch.ones(3, 3, dtype=torch.bool)
    _, faces = ovoxel.flexible_dual_grid_to_mesh(coords, torch.rand(3, 3), flags, None, grid_size=8)
    assert faces.shape == (0, 3)


# --- files ------------------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path):
    v, f = SHAPES["leaf"]()
    vox = ovoxel.from_mesh(v, f, 64, material=TexturedMesh([Material(base_color_factor=(0.2, 0.4, 0.6, 1.0))]))
    path = tmp_path / "leaf.npz"
    ovoxel.save(vox, path)
    back = ovoxel.load(path)
    for name in ("coords", "offsets", "flags", "attrs"):
        np.testing.assert_array_equal(getattr(back, name), getattr(vox, name))
    assert back.resolution == 64 and back.layout == vox.layout and back.aabb == vox.aabb
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(EngineInputError, match="not an O-Voxel"):
        ovoxel.load(tmp_path / "junk.npz")


# --- attribute lookup (spec 5.6) --------------------------------------------------------------------


def test_sample_attributes_reproduces_a_linear_field_and_renormalises():
    rng = np.random.default_rng(0)
    res = 16
    coords = np.stack(np.meshgrid(*[np.arange(4, 12)] * 3, indexing="ij"), -1).reshape(-1, 3).astype(np.int32)
    centres = (coords + 0.5) / res - 0.5
    field = lambda p: np.stack([p @ [1.0, 2.0, -1.0], p[:, 0] * 0 + 0.25], 1).astype(np.float32)  # noqa: E731
    attrs = field(centres)
    inner = rng.uniform((4.5 / res - 0.5), (11.5 / res - 0.5), size=(500, 3)).astype(np.float32)
    got = ovoxel.sample_attributes(coords, attrs, inner, grid_shape=res)
    assert isinstance(got, np.ndarray)
    np.testing.assert_allclose(got, field(inner), atol=1e-5)  # trilinear is exact for a linear field
    # renormalisation: near the block's edge the missing neighbours are left out, values stay a convex mix
    edge = np.array([[4.2 / res - 0.5, 8 / res - 0.5, 8 / res - 0.5]], np.float32)
    got_edge = ovoxel.sample_attributes(coords, attrs, edge, grid_shape=res)
    np.testing.assert_allclose(got_edge[0, 1], 0.25, atol=1e-6)
    far = np.array([[0.45, 0.45, 0.45]], np.float32)
    assert (ovoxel.sample_attributes(coords, attrs, far, grid_shape=res) == 0).all()
    # torch in -> torch out, same numbers
    got_t = ovoxel.sample_attributes(
        torch.from_numpy(coords), torch.from_numpy(attrs), torch.from_numpy(inner), grid_shape=res
    )
    assert isinstance(got_t, torch.Tensor)
    np.testing.assert_allclose(got_t.numpy(), got, atol=0)


def test_sample_attributes_matches_a_dense_reference():
    rng = np.random.default_rng(1)
    res = 8
    active = rng.random((res, res, res)) < 0.4
    coords = np.argwhere(active).astype(np.int32)
    attrs = rng.random((coords.shape[0], 3)).astype(np.float32)
    points = rng.uniform(-0.55, 0.55, size=(400, 3)).astype(np.float32)
    got = ovoxel.sample_attributes(coords, attrs, points, grid_shape=res)
    dense = np.zeros((res, res, res, 3), np.float32)
    dense[tuple(coords.T)] = attrs
    g = (points + 0.5) * res
    base = np.floor(g - 0.5).astype(int)
    want = np.zeros_like(got)
    for i in range(points.shape[0]):
        total, acc = 0.0, np.zeros(3)
        for d in np.ndindex(2, 2, 2):
            c = base[i] + d
            if (c >= 0).all() and (c < res).all() and active[tuple(c)]:
                w = np.prod(1 - np.abs(g[i] - c - 0.5))
                total, acc = total + w, acc + w * dense[tuple(c)]
        want[i] = acc / max(total, 1e-12)
    np.testing.assert_allclose(got, want, atol=1e-5)


# --- PBR attributes (spec 5.4) ----------------------------------------------------------------------


def test_textured_quad_comes_back_with_its_materials():
    """A quad in the plane z = 0: left half textured red/green by region, right half a second,
    metallic material; an alpha-masked stripe; values are read back at the surface."""
    n = 64
    s, t = np.meshgrid(np.linspace(0, 1, n), np.linspace(0, 1, n), indexing="ij")
    verts = np.stack([0.8 * s - 0.4, 0.8 * t - 0.4, np.zeros_like(s) + 0.013], -1).reshape(-1, 3).astype(np.float32)
    uvs = np.stack([s, t], -1).reshape(-1, 2).astype(np.float32)
    from tests.ovoxel_shapes import grid_faces

    faces = grid_faces(n, n)
    centre_u = uvs[faces].mean(1)[:, 0]
    face_mat = (centre_u > 0.5).astype(np.int64)
    tex = np.zeros((64, 64, 4), np.uint8)  # rows are v from the top: red for v > 0.5, green below
    tex[:32, :, 0] = 255
    tex[32:, :, 1] = 255
    tex[:, :, 3] = 255
    tex[:, 8:16, 3] = 0  # an alpha hole for u in [1/8, 1/4)
    mr = np.zeros((16, 16, 3), np.uint8)
    mr[..., 1] = 128  # roughness texture 0.5 (x factor 0.8 below)
    mr[..., 2] = 255
    materials = [
        Material(base_color_texture=tex, metallic_factor=0.0, roughness_factor=0.8, metallic_roughness_texture=mr,
                 alpha_mode="MASK", alpha_cutoff=0.5),
        Material(base_color_factor=(0.1, 0.2, 0.9, 1.0), metallic_factor=1.0, roughness_factor=0.3),
    ]  # fmt: skip
    vox = ovoxel.from_mesh(verts, faces, 64, material=TexturedMesh(materials, uvs=uvs, face_materials=face_mat))
    assert vox.attrs.shape == (vox.num_voxels, 6)

    def at(u, v):
        p = np.array([[0.8 * u - 0.4, 0.8 * v - 0.4, 0.013]], np.float32)
        return ovoxel.sample_attributes(vox.coords, vox.attrs, p, grid_shape=64)[0]

    red, green, blue = at(0.35, 0.8), at(0.35, 0.2), at(0.8, 0.5)
    np.testing.assert_allclose(red[:3], [1, 0, 0], atol=0.02)
    np.testing.assert_allclose(green[:3], [0, 1, 0], atol=0.02)
    np.testing.assert_allclose(blue[:3], [0.1, 0.2, 0.9], atol=0.02)
    np.testing.assert_allclose([red[3], red[4], red[5]], [0.0, 0.8 * 128 / 255, 1.0], atol=0.02)
    np.testing.assert_allclose([blue[3], blue[4], blue[5]], [1.0, 0.3, 1.0], atol=0.02)
    assert at(0.19, 0.5)[5] < 0.02, "masked stripe must be transparent"


def test_vertex_colours_multiply_base_colour():
    v, f = uv_sphere(0.3, nu=64, nv=32)
    colours = np.where(v[:, 2:3] > 0, [1.0, 0.5, 0.0], [0.0, 0.5, 1.0]).astype(np.float32)
    vox = ovoxel.from_mesh(
        v, f, 64, material=TexturedMesh([Material(base_color_factor=(0.5, 1.0, 1.0, 1.0))], vertex_colors=colours)
    )
    top = ovoxel.sample_attributes(vox.coords, vox.attrs, np.array([[0, 0, 0.3]], np.float32), grid_shape=64)[0]
    bottom = ovoxel.sample_attributes(vox.coords, vox.attrs, np.array([[0, 0, -0.3]], np.float32), grid_shape=64)[0]
    np.testing.assert_allclose(top[:3], [0.5, 0.5, 0.0], atol=0.02)
    np.testing.assert_allclose(bottom[:3], [0.0, 0.5, 1.0], atol=0.02)


def test_other_box_keeps_the_input_coordinates():
    v, f = SHAPES["cube"]()
    box = ((-5.0, -5.0, -5.0), (5.0, 5.0, 5.0))
    vox = ovoxel.from_mesh(v * 10, f, 64, aabb=box)
    mesh = ovoxel.to_mesh(vox)
    assert vox.aabb == box
    np.testing.assert_allclose(np.abs(mesh.vertices).max(), 3.0, atol=0.01)  # the cube's half size, scaled
    unit = ovoxel.to_mesh(ovoxel.from_mesh(v, f, 64))
    np.testing.assert_allclose(mesh.vertices, unit.vertices * 10, atol=2e-3)  # 1.3% of a voxel (float32 QEF)


# --- QEF solve --------------------------------------------------------------------------------------


def test_qef_solve_matches_a_brute_force_box_minimum():
    from engine.ovoxel.qef import colpiv_qr_solve, solve_in_boxes

    rng = np.random.default_rng(3)
    m = 200
    a = rng.normal(size=(m, 3, 3))
    spd = a @ a.transpose(0, 2, 1) + 0.1 * np.eye(3)
    target = rng.uniform(-1.0, 2.0, size=(m, 3))  # often outside the unit box
    q = np.zeros((m, 4, 4))
    q[:, :3, :3] = spd
    q[:, :3, 3] = q[:, 3, :3] = -np.einsum("mij,mj->mi", spd, target)
    q[:, 3, 3] = np.einsum("mi,mij,mj->m", target, spd, target)
    free = colpiv_qr_solve(spd.astype(np.float32), (-q[:, :3, 3]).astype(np.float32))
    np.testing.assert_allclose(free, target, atol=2e-3)
    lo, hi = np.zeros((m, 3), np.float32), np.ones((m, 3), np.float32)
    x = solve_in_boxes(q.astype(np.float32), lo, hi).astype(np.float64)
    assert ((x >= 0) & (x <= 1)).all()
    grid = np.stack(np.meshgrid(*[np.linspace(0, 1, 21)] * 3, indexing="ij"), -1).reshape(-1, 3)
    energy = lambda p: np.einsum("mpi,mij,mpj->mp", p - target[:, None], spd, p - target[:, None])  # noqa: E731
    best_grid = energy(np.broadcast_to(grid, (m, *grid.shape))).min(axis=1)
    assert (energy(x[:, None])[:, 0] <= best_grid + 1e-4).all()
