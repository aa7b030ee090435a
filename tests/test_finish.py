"""Asset finishing: clean-up, orientation, decimation, unwrap, rasteriser, bake accuracy, GLB, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import engine.ovoxel
from engine.errors import EngineInputError
from engine.finish import MaterialVolume, finish, write_glb
from engine.finish.bake import bake
from engine.finish.cleanup import clean_mesh
from engine.finish.decimate import decimate
from engine.finish.gltf import read_glb
from engine.finish.orient import is_outward, orient_faces
from engine.finish.raster import rasterise
from engine.finish.topology import edge_table, face_areas
from engine.finish.unwrap import unwrap

# ---------------------------------------------------------------- procedural inputs


def cube_sphere(n: int, radius: float = 0.35, bumps: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Closed sphere-like mesh from a subdivided cube: 12 n^2 faces, consistently wound outward."""
    g = np.linspace(-1.0, 1.0, n + 1)
    u, v = np.meshgrid(g, g, indexing="ij")
    one = np.ones_like(u)
    sides = [(one, u, v), (-one, v, u), (v, one, u), (u, -one, v), (u, v, one), (v, u, -one)]
    idx = np.arange((n + 1) ** 2).reshape(n + 1, n + 1)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[1:, :-1].ravel(), idx[1:, 1:].ravel(), idx[:-1, 1:].ravel()
    quad = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])
    pts = np.concatenate([np.stack([x.ravel(), y.ravel(), z.ravel()], 1) for x, y, z in sides])
    faces = np.concatenate([quad + k * (n + 1) ** 2 for k in range(6)])
    _, first, inv = np.unique(np.round(pts * 1e6).astype(np.int64), axis=0, return_index=True, return_inverse=True)
    pts, faces = pts[first], inv.reshape(-1)[faces]
    d = pts / np.linalg.norm(pts, axis=1, keepdims=True)
    verts = (d * bumpy_radius(d, radius, bumps)[:, None]).astype(np.float32)
    if not is_outward(verts, faces):
        faces = faces[:, ::-1].copy()
    return verts, faces.astype(np.int64)


def bumpy_radius(direction: np.ndarray, radius: float, bumps: float) -> np.ndarray:
    d = direction
    return radius * (1 + bumps * np.sin(5 * d[:, 0]) * np.sin(4 * d[:, 1] + 1) + bumps * 0.5 * np.sin(9 * d[:, 2]))


def region_colour(points: np.ndarray) -> np.ndarray:
    """Known attributes per octant: base colour from the signs of x, y, z; metallic by z; roughness by x."""
    s = (points > 0).astype(np.float32)
    base = 0.15 + 0.7 * s
    metallic = s[:, 2:3]
    rough = 0.25 + 0.5 * s[:, 0:1]
    alpha = np.ones_like(metallic)
    return np.concatenate([base, metallic, rough, alpha], 1)


def shell_volume(vertices: np.ndarray, resolution: int, attr_fn=region_colour, thickness: int = 1) -> MaterialVolume:
    """Voxels within `thickness` voxels of the mesh vertices, coloured by `attr_fn` at each voxel centre."""
    base = np.floor((vertices + 0.5) * resolution).astype(np.int64)
    offs = np.stack(np.meshgrid(*[np.arange(-thickness, thickness + 1)] * 3, indexing="ij"), -1).reshape(-1, 3)
    coords = np.unique((base[:, None, :] + offs[None]).reshape(-1, 3), axis=0)
    coords = coords[((coords >= 0) & (coords < resolution)).all(1)]
    centres = (coords + 0.5) / resolution - 0.5
    return MaterialVolume(coords.astype(np.int32), attr_fn(centres).astype(np.float32), resolution)


@pytest.fixture
def attribute_lookup():
    """The renormalised sparse trilinear lookup of spec 5.6 that the bake uses."""
    return engine.ovoxel.sample_attributes


def surface_samples(vertices, faces, n, rng):
    """(face index, barycentrics, points) of n area-uniform random points on the mesh."""
    area = face_areas(vertices, faces)
    f = rng.choice(len(faces), size=n, p=area / area.sum())
    r1, r2 = rng.random(n), rng.random(n)
    s = np.sqrt(r1)
    b = np.stack([1 - s, s * (1 - r2), s * r2], 1)
    pts = np.einsum("nk,nkc->nc", b, vertices[faces[f]].astype(np.float64))
    return f, b, pts


def bilinear(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Sample an image `[T, T, C]` at UVs in image convention (texel centres at (i + 0.5) / T), clamped edges."""
    t = image.shape[0]
    x, y = uv[:, 0] * t - 0.5, uv[:, 1] * t - 0.5
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    img = image.astype(np.float64)

    def at(r, c):
        return img[np.clip(r, 0, t - 1), np.clip(c, 0, t - 1)]

    return (at(y0, x0) * (1 - fx) * (1 - fy) + at(y0, x0 + 1) * fx * (1 - fy)
            + at(y0 + 1, x0) * (1 - fx) * fy + at(y0 + 1, x0 + 1) * fx * fy)  # fmt: skip


def chamfer_l1(a: np.ndarray, b: np.ndarray) -> float:
    """Symmetric mean nearest-neighbour distance between point sets (chunked cdist)."""
    ta, tb = torch.from_numpy(a).float(), torch.from_numpy(b).float()

    def one_way(x, y):
        yy = (y * y).sum(1)
        near = [((x[i : i + 2048] * x[i : i + 2048]).sum(1)[:, None] + yy - 2 * x[i : i + 2048] @ y.T).min(1).values
                for i in range(0, len(x), 2048)]  # fmt: skip
        return torch.cat(near).clamp_min(0).sqrt().mean()

    return float(one_way(ta, tb) + one_way(tb, ta))


def hemisphere(n: int = 24):
    """The z >= 0 half of a cube sphere: an open surface with one boundary loop."""
    v, f = cube_sphere(n)
    keep = (v[f][:, :, 2] >= -1e-6).all(1)
    return v, f[keep]


# ---------------------------------------------------------------- clean-up and orientation


def test_cleanup_welds_drops_degenerate_duplicate_and_islands():
    v, f = cube_sphere(12)
    n_faces = len(f)
    # Unweld: every face gets its own three vertices.
    v_split, f_split = v[f.reshape(-1)], np.arange(3 * n_faces).reshape(-1, 3)
    dup = f_split[:5][:, ::-1]  # the same faces wound the other way
    degenerate = np.array([[0, 0, 1], [2, 3, 3]])
    island_v = np.array([[0.4, 0.4, 0.4], [0.401, 0.4, 0.4], [0.4, 0.401, 0.4]], dtype=np.float32)
    island_f = np.array([[0, 1, 2]]) + len(v_split)
    cv, cf, report = clean_mesh(
        np.concatenate([v_split, island_v]), np.concatenate([f_split, dup, degenerate, island_f])
    )
    assert len(cf) == n_faces and len(cv) == len(v)
    assert report.degenerate_faces == 2 and report.duplicate_faces == 5
    assert report.islands_removed == 1 and report.island_faces == 1
    assert report.merged_vertices == 3 * n_faces - len(v)


def test_orientation_repairs_per_axis_winding():
    v, f = cube_sphere(16, bumps=0.1)
    rng = np.random.default_rng(0)
    flipped = rng.random(len(f)) < 0.5
    g = f.copy()
    g[flipped] = g[flipped][:, ::-1]
    out, report = orient_faces(v, g)
    assert report.consistent and report.closed
    assert report.flipped == flipped.sum()
    assert np.array_equal(np.sort(out, 1), np.sort(f, 1))
    assert edge_table(out).manifold_pairs()[2].sum() == 0 and is_outward(v, out)


# ---------------------------------------------------------------- decimation


def test_decimation_keeps_the_shape():
    v, f = cube_sphere(64, bumps=0.08)  # 49152 faces
    dv, df = decimate(v, f, 5000)
    assert 4500 <= len(df) <= 5000
    rng = np.random.default_rng(1)
    full_a = surface_samples(v, f, 8000, rng)[2]
    full_b = surface_samples(v, f, 8000, rng)[2]
    low = surface_samples(dv, df, 8000, rng)[2]
    floor = chamfer_l1(full_a, full_b)  # what sampling alone costs
    cd = chamfer_l1(full_a, low)
    radial = np.abs(
        np.linalg.norm(low, axis=1) - bumpy_radius(low / np.linalg.norm(low, axis=1, keepdims=True), 0.35, 0.08)
    )
    print(
        f"Chamfer-L1 full vs 5K: {cd:.5f} (sampling floor {floor:.5f}); "
        f"5K off the true surface: mean {radial.mean():.5f}"
    )
    assert cd < floor + 1e-3  # unit box: 1e-3 is a quarter of a voxel at 256^3
    assert radial.mean() < 1e-3 and radial.max() < 1e-2


def test_decimation_keeps_open_boundaries_in_place():
    v, f = hemisphere(24)
    rim = np.unique(edge_table(f).boundary_edges())
    dv, df = decimate(v, f, 600)
    assert len(df) <= 600
    new_rim = np.unique(edge_table(df).boundary_edges())
    assert len(new_rim) == len(rim)
    assert {tuple(p) for p in dv[new_rim].tolist()} == {tuple(p) for p in v[rim].tolist()}


def test_face_budget_rules():
    v, f = cube_sphere(4)
    kv, kf = decimate(v, f, len(f) + 10)
    assert kv is v and kf is f  # above the face count: the mesh is kept as it is
    for bad in (3, 0, -5, 2.5, True):
        with pytest.raises(EngineInputError, match="face budget"):
            decimate(v, f, bad)


# ---------------------------------------------------------------- rasteriser and unwrap


def test_rasteriser_matches_brute_force():
    rng = np.random.default_rng(2)
    size = 48
    uvs = rng.random((60, 2)) * 1.2 - 0.1  # some corners off the image
    faces = rng.integers(0, 60, size=(40, 3))
    faces = faces[(faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])]
    face_id, bary = rasterise(uvs, faces, size)
    rows, cols = np.mgrid[0:size, 0:size]
    centre = np.stack([cols + 0.5, rows + 0.5], -1).reshape(-1, 2) / size
    tri = uvs[faces]  # [F, 3, 2]
    e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    det = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    d = centre[:, None, :] - tri[None, :, 0]
    b1 = (d[..., 0] * e2[:, 1] - d[..., 1] * e2[:, 0]) / det
    b2 = (e1[:, 0] * d[..., 1] - e1[:, 1] * d[..., 0]) / det
    b = np.stack([1 - b1 - b2, b1, b2], -1)  # [T*T, F, 3]
    valid = np.abs(det) > 1e-12
    strictly_in = (b > 1e-6).all(-1) & valid
    near_or_in = (b > -1e-6).all(-1) & valid
    got = face_id.reshape(-1)
    hit = np.flatnonzero(got >= 0)
    assert np.all(got[strictly_in.any(1)] >= 0)  # every texel well inside a triangle is covered
    assert np.all(got[~near_or_in.any(1)] < 0)  # every texel clearly outside all triangles is not
    assert np.all(near_or_in[hit, got[hit]])  # and a covered texel lies in the triangle it names
    covered = np.flatnonzero(got >= 0)
    p = np.einsum("nk,nkc->nc", bary.reshape(-1, 3)[covered].astype(np.float64), tri[got[covered]])
    np.testing.assert_allclose(p, centre[covered], atol=1e-5)


def test_box_unwrap_charts_fit_do_not_overlap_and_keep_padding():
    v, f = cube_sphere(20, bumps=0.1)
    size, pad = 512, 4
    mesh = unwrap(v, f, size, padding=pad)
    assert mesh.uvs.min() >= 0 and mesh.uvs.max() <= 1
    np.testing.assert_array_equal(mesh.vertices, v[mesh.vmap])
    np.testing.assert_array_equal(mesh.vmap[mesh.faces], f)  # same faces, split along seams only
    # Charts are the connected pieces of the split mesh; no texel may be claimed by two charts.
    from engine.finish.topology import face_components

    chart = face_components(mesh.faces, len(mesh.vertices))
    assert chart.max() + 1 == mesh.charts
    even, odd = (
        rasterise(mesh.uvs, mesh.faces[chart % 2 == 0], size)[0],
        rasterise(mesh.uvs, mesh.faces[chart % 2 == 1], size)[0],
    )
    assert not ((even >= 0) & (odd >= 0)).any()
    # Padding: within `pad` texels of a chart's texel there is no texel of another chart.
    face_id = rasterise(mesh.uvs, mesh.faces, size)[0]
    label = np.where(face_id >= 0, chart[face_id], -1)
    t = torch.from_numpy(label.astype(np.float64))[None, None] + 1
    k = 2 * pad + 1
    hi = torch.nn.functional.max_pool2d(t, k, stride=1, padding=pad)[0, 0].numpy()
    lo = -torch.nn.functional.max_pool2d(-torch.where(t > 0, t, torch.inf), k, stride=1, padding=pad)[0, 0].numpy()
    own = label >= 0
    assert np.all(hi[own] == lo[own])
    # The box charts are few and use a fair share of the texture.
    assert mesh.charts < len(f) / 20
    assert (face_id >= 0).mean() > 0.3


def test_xatlas_unwrap_option_on_a_small_mesh():
    v, f = cube_sphere(8)  # 768 faces: xatlas is only practical on small meshes
    mesh = unwrap(v, f, 256, padding=2, method="xatlas")
    assert mesh.uvs.min() >= 0 and mesh.uvs.max() <= 1
    np.testing.assert_array_equal(mesh.vmap[mesh.faces], f)
    np.testing.assert_array_equal(mesh.vertices, v[mesh.vmap])
    assert (rasterise(mesh.uvs, mesh.faces, 256)[0] >= 0).mean() > 0.2


# ---------------------------------------------------------------- bake


def test_bake_matches_the_volume_lookup(attribute_lookup):
    v, f = cube_sphere(40)  # 19200 faces
    volume = shell_volume(v, 64)
    dv, df = decimate(v, f, 5000)
    size = 1024
    mesh = unwrap(dv, df, size, padding=4)
    maps = bake(mesh, volume, size, padding=4)
    # No texel inside a chart is left unfilled (every one got a value from the volume).
    assert maps.chart_mask.any() and np.all(maps.baked_mask[maps.chart_mask])
    assert maps.missing_fraction == 0.0
    rng = np.random.default_rng(3)
    face, b, points = surface_samples(mesh.vertices, mesh.faces, 20000, rng)
    uv = np.einsum("nk,nkc->nc", b, mesh.uvs[mesh.faces[face]].astype(np.float64))
    got = np.concatenate([bilinear(maps.base_color, uv), bilinear(maps.metallic_roughness, uv)[:, [2, 1]]], 1) / 255
    ref = np.asarray(attribute_lookup(volume.coords, volume.attrs, points, volume.origin, volume.voxel_size, (64,) * 3))
    want = ref[:, [0, 1, 2, 5, 3, 4]]  # RGB, alpha, metallic, roughness
    err = np.abs(got - want).mean(0) * 255
    print("mean abs error per channel (1/255): R G B A M R =", np.round(err, 3))
    assert err.mean() <= 2.0 and err.max() <= 3.0
    # The colours are really there: each octant's colour is what the bake shows.
    np.testing.assert_allclose(np.median(np.abs(got - want), 0), 0, atol=1 / 255)


def test_bake_rejects_a_volume_away_from_the_surface():
    v, f = cube_sphere(8)
    far = MaterialVolume(np.array([[0, 0, 0], [1, 0, 0]], np.int32), np.full((2, 6), 0.5, np.float32), 64)
    with pytest.raises(EngineInputError, match="No voxel"):
        finish(v, f, far, texture_size=64)
    empty = MaterialVolume(np.zeros((0, 3), np.int32), np.zeros((0, 6), np.float32), 64)
    with pytest.raises(EngineInputError, match="no voxels"):
        finish(v, f, empty, texture_size=64)


@pytest.mark.parametrize("size", [1000, 16384, 8, 2048.0, 0])
def test_texture_size_must_be_a_power_of_two_up_to_8192(size):
    v, f = cube_sphere(4)
    with pytest.raises(EngineInputError, match="power of two"):
        finish(v, f, shell_volume(v, 32), texture_size=size)


def test_empty_or_malformed_mesh_is_refused():
    volume = shell_volume(cube_sphere(4)[0], 32)
    with pytest.raises(EngineInputError, match="empty"):
        finish(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64), volume, texture_size=64)
    with pytest.raises(EngineInputError, match=r"\[F, 3\]"):
        finish(np.zeros((4, 3), np.float32), np.zeros((2, 4), np.int64), volume, texture_size=64)
    with pytest.raises(EngineInputError, match="indices"):
        finish(np.zeros((4, 3), np.float32), np.array([[0, 1, 7]]), volume, texture_size=64)


# ---------------------------------------------------------------- asset flags and GLB


def half_transparent(points):
    attrs = region_colour(points)
    attrs[:, 5] = np.where(points[:, 0] > 0, 0.4, 1.0)
    return attrs


def test_finish_flags_closed_opaque_and_open_transparent():
    v, f = cube_sphere(12)
    closed = finish(v, f, shell_volume(v, 32), face_budget=1000, texture_size=256)
    assert closed.alpha_mode == "OPAQUE" and not closed.has_alpha and not closed.double_sided
    assert len(closed.faces) <= 1000
    hv, hf = hemisphere(12)
    open_ = finish(hv, hf, shell_volume(hv, 32, half_transparent), texture_size=256)
    assert open_.alpha_mode == "BLEND" and open_.has_alpha and open_.double_sided
    assert len(open_.faces) == len(hf)  # budget above the face count: every face kept


def test_alpha_mode_mask_when_alpha_is_binary():
    from engine.finish.asset import choose_alpha_mode

    img = np.full((4, 4, 4), 255, np.uint8)
    mask = np.ones((4, 4), bool)
    assert choose_alpha_mode(img, mask, "auto") == "OPAQUE"
    img[0, :, 3] = 0
    assert choose_alpha_mode(img, mask, "auto") == "MASK"
    img[1, 1, 3] = 128
    assert choose_alpha_mode(img, mask, "auto") == "BLEND"
    assert choose_alpha_mode(img, mask, "OPAQUE") == "OPAQUE"


def test_glb_layout_axes_and_atomic_write(tmp_path, monkeypatch):
    v, f = cube_sphere(10)
    asset = finish(v, f, shell_volume(v, 32, half_transparent), texture_size=128)
    path = write_glb(asset, tmp_path / "out.glb")
    doc, blob = read_glb(path)
    prim = doc["meshes"][0]["primitives"][0]
    acc = doc["accessors"]
    assert acc[prim["attributes"]["POSITION"]]["count"] == len(asset.vertices)
    assert acc[prim["indices"]]["count"] == 3 * len(asset.faces)
    view = doc["bufferViews"][acc[prim["attributes"]["POSITION"]]["bufferView"]]
    pos = np.frombuffer(blob, np.float32, len(asset.vertices) * 3, view["byteOffset"]).reshape(-1, 3)
    np.testing.assert_array_equal(pos, np.stack([asset.vertices[:, 0], asset.vertices[:, 2], -asset.vertices[:, 1]], 1))
    mat = doc["materials"][0]
    assert mat["alphaMode"] == "BLEND" and mat["doubleSided"] is False
    assert {"baseColorTexture", "metallicRoughnessTexture"} <= set(mat["pbrMetallicRoughness"])
    # A failure while writing leaves the previous file intact and no temporary file behind.
    before = path.read_bytes()
    import engine.finish.gltf as gltf

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(gltf.os, "replace", broken)
    with pytest.raises(OSError):
        write_glb(asset, path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["out.glb"]


def test_blender_helpers_flip_v_and_rows():
    v, f = cube_sphere(6)
    asset = finish(v, f, shell_volume(v, 32), texture_size=64)
    uv = asset.blender_uvs()
    np.testing.assert_allclose(uv[:, 1], 1 - asset.uvs[asset.faces.reshape(-1), 1])
    px = asset.blender_pixels("base_color").reshape(64, 64, 4)
    np.testing.assert_allclose(px[0], asset.base_color[-1] / 255)
    mr = asset.blender_pixels("metallic_roughness").reshape(64, 64, 4)
    assert np.all(mr[..., 3] == 1.0)
