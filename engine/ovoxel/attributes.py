"""Textured mesh -> per-voxel PBR attributes (base colour, metallic, roughness, alpha), spec 5.4.

Every (triangle, voxel) pair of the geometry scan (the 4 voxels around each grid edge the triangle
crosses, once per triangle) samples the triangle's material at the voxel centre projected onto the
triangle's plane (unclamped barycentrics), weighted by 1 - signed plane distance; a voxel's value is
the weighted mean. Textures are sampled bilinearly (half-texel centres, REPEAT) from a mip level chosen
by the triangle's voxel footprint in UV space, trilinear between levels, as the official converter.
Materials are plain numpy (glTF metallic-roughness conventions), so no trimesh is needed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch

from engine.errors import EngineInputError
from engine.ovoxel.arrays import take

F32 = np.float32
ALPHA_MODES = ("OPAQUE", "MASK", "BLEND")
LAYOUT = {"base_color": slice(0, 3), "metallic": slice(3, 4), "roughness": slice(4, 5), "alpha": slice(5, 6)}
PAIR_CHUNK = 1 << 21


@dataclass
class Material:
    """glTF-style PBR material. Textures are [H, W, C] arrays, uint8 (0-255) or float in [0, 1]."""

    base_color_factor: tuple = (1.0, 1.0, 1.0, 1.0)  # RGBA
    base_color_texture: np.ndarray | None = None  # RGB or RGBA (alpha used unless OPAQUE)
    metallic_factor: float = 1.0
    roughness_factor: float = 1.0
    metallic_roughness_texture: np.ndarray | None = None  # G = roughness, B = metallic
    alpha_mode: str = "OPAQUE"
    alpha_cutoff: float = 0.5
    mip_level_offset: float = 0.0


@dataclass
class TexturedMesh:
    """Surface attributes of the mesh passed to `from_mesh`, face for face.

    uvs: [V, 2] per vertex or [F, 3, 2] per face corner (v up, glTF/Blender convention);
    face_materials: [F] index into `materials` (default all 0); vertex_colors: [V, 3|4] or [F, 3, 3|4]
    in [0, 1], multiplied into base colour (and alpha).
    """

    materials: list[Material] = field(default_factory=lambda: [Material()])
    uvs: np.ndarray | None = None
    face_materials: np.ndarray | None = None
    vertex_colors: np.ndarray | None = None

    def subset(self, keep: np.ndarray) -> TexturedMesh:
        """The same description for the faces where `keep` is True (per-corner arrays are sliced)."""

        def cut(a):
            return a[keep] if a is not None and a.ndim == 3 else a

        fm = None if self.face_materials is None else np.asarray(self.face_materials)[keep]
        return replace(self, uvs=cut(self.uvs), face_materials=fm, vertex_colors=cut(self.vertex_colors))


def _per_corner(values, faces: np.ndarray, n_vertices: int, width: tuple, what: str) -> np.ndarray | None:
    if values is None:
        return None
    a = np.asarray(values, dtype=F32)
    if a.ndim == 2 and a.shape[0] == n_vertices and a.shape[1] in width:
        return a[faces]
    if a.ndim == 3 and a.shape[:2] == (faces.shape[0], 3) and a.shape[2] in width:
        return a
    raise EngineInputError(f"{what} must be [V, {width[0]}] or [F, 3, {width[0]}], got {list(a.shape)}")


class _Texture:
    """A texture and its mip chain (2x2 box filter), float32 in [0, 1], sampled like the official:
    bilinear between texel centres, REPEAT wrapping, trilinear between mip levels."""

    def __init__(self, image: np.ndarray):
        img = np.asarray(image)
        if img.ndim == 2:
            img = img[:, :, None]
        if img.ndim != 3 or img.shape[0] < 1 or img.shape[1] < 1:
            raise EngineInputError(f"a texture must be an image [H, W, C], got {list(img.shape)}")
        img = img.astype(F32) / F32(255) if img.dtype == np.uint8 else img.astype(F32)
        self.channels = img.shape[2]
        self.levels = [img]
        while min(img.shape[0], img.shape[1]) >= 2:
            h, w = img.shape[0] // 2 * 2, img.shape[1] // 2 * 2
            img = ((img[0:h:2, 0:w:2] + img[1:h:2, 0:w:2]) + (img[0:h:2, 1:w:2] + img[1:h:2, 1:w:2])) * F32(0.25)
            self.levels.append(img)
        self._wrapped = {}

    def _level(self, index: int) -> torch.Tensor:
        """[1, C, H + 1, W + 1]: the level with its first row and column repeated after the last, so
        bilinear lookups of wrapped coordinates never leave the image."""
        if index not in self._wrapped:
            img = self.levels[index]
            img = np.concatenate([img, img[:1]], axis=0)
            img = np.concatenate([img, img[:, :1]], axis=1)
            self._wrapped[index] = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None]
        return self._wrapped[index]

    def _bilinear(self, index: int, uv: np.ndarray) -> np.ndarray:
        """[C, P] bilinear samples of level `index` at uv [P, 2] (v up), REPEAT wrapping."""
        h, w = self.levels[index].shape[:2]
        x = uv[:, 0] * F32(w) - F32(0.5)  # continuous texel coordinates, texel centres at integers
        y = (F32(1) - uv[:, 1]) * F32(h) - F32(0.5)
        x -= np.floor(x / F32(w)) * F32(w)  # wrapped into [0, w]; w itself is the repeated first texel
        y -= np.floor(y / F32(h)) * F32(h)
        grid = np.stack([x * F32(2 / w) - F32(1), y * F32(2 / h) - F32(1)], axis=1)  # align_corners: -1..1
        out = torch.nn.functional.grid_sample(
            self._level(index), torch.from_numpy(grid)[None, None], mode="bilinear", padding_mode="border",
            align_corners=True,
        )  # fmt: skip
        return out[0, :, 0].numpy()  # [C, P]

    def sample(self, uv: np.ndarray, footprint: np.ndarray, offset: float) -> np.ndarray:
        """[C, P] (channel-major) at uv [P, 2]; footprint = one voxel's extent in UV units (per point)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            level = np.log2(footprint * self.levels[0].shape[0]) + offset
        top = len(self.levels) - 1
        level = np.where(np.isfinite(level) & (level > 0), level, 0.0)
        base = np.floor(np.minimum(level, top)).astype(np.int64)
        levels = np.unique(base)
        if levels.size == 1:  # the common case: no selection copies
            return self._trilinear(int(levels[0]), uv, level, top)
        out = np.empty((self.channels, uv.shape[0]), dtype=F32)
        for lo in levels:
            sel = np.flatnonzero(base == lo)
            out[:, sel] = self._trilinear(int(lo), uv[sel], level[sel], top)
        return out

    def _trilinear(self, lo: int, uv: np.ndarray, level: np.ndarray, top: int) -> np.ndarray:
        value = self._bilinear(lo, uv)
        if lo < top:
            frac = (level - lo).astype(F32)
            value = (1 - frac) * value + frac * self._bilinear(lo + 1, uv)
        return value


def _footprints(tri: np.ndarray, tri_uv: np.ndarray, voxel_size: np.ndarray) -> np.ndarray:
    """Per triangle: max voxel size / sqrt(|dP/du| |dP/dv|), the UV extent of one voxel (tiny if no UVs)."""
    e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    d1, d2 = tri_uv[:, 1] - tri_uv[:, 0], tri_uv[:, 2] - tri_uv[:, 0]
    det = d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0]
    t = d2[:, 1, None] * e1 - d1[:, 1, None] * e2
    b = d1[:, 0, None] * e2 - d2[:, 0, None] * e1
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        lengths = np.sqrt(_dot(t, t) * _dot(b, b)) / (det * det)
        fp = np.max(voxel_size) / np.sqrt(lengths)
    return np.where(np.abs(det) < 1e-6, np.max(voxel_size) / 1e6, fp).astype(F32)


def voxel_attributes(vertices, faces, textured: TexturedMesh, coords: np.ndarray, resolution: int, aabb, pairs):
    """float32 [N, 6] PBR attributes for the sorted geometry voxels `coords`, and their layout.

    `pairs`: the geometry scan's distinct (triangle, voxel) pairs, sorted by triangle then voxel
    (`mesh_to_flexible_dual_grid(..., return_pairs=True)`): the 4 voxels around each grid edge a
    triangle crosses, once per triangle.
    """
    box = np.asarray(aabb, dtype=F32).reshape(2, 3)
    res = (int(resolution),) * 3
    vs = ((box[1] - box[0]) / np.asarray(res, dtype=np.int32)).astype(F32)
    verts = (np.asarray(vertices, dtype=F32) - box[0]).astype(F32)
    faces = np.asarray(faces, dtype=np.int64)
    n_faces = faces.shape[0]
    mats = list(textured.materials)
    if not mats:
        raise EngineInputError("a TexturedMesh needs at least one Material")
    for m in mats:
        if m.alpha_mode not in ALPHA_MODES:
            raise EngineInputError(f"alpha_mode must be one of {ALPHA_MODES}, got {m.alpha_mode!r}")
    fmat = np.zeros(n_faces, np.int64) if textured.face_materials is None else np.asarray(textured.face_materials)
    if fmat.shape != (n_faces,) or fmat.min() < 0 or fmat.max() >= len(mats):
        raise EngineInputError(f"face_materials must be [F] indices into {len(mats)} materials")
    tri_uv = _per_corner(textured.uvs, faces, verts.shape[0], (2,), "uvs")
    if tri_uv is None:
        tri_uv = np.zeros((n_faces, 3, 2), dtype=F32)
    tri_col = _per_corner(textured.vertex_colors, faces, verts.shape[0], (3, 4), "vertex_colors")
    tri = np.take(verts, faces, axis=0)

    n_vox = coords.shape[0]
    pair_tri, pair_vox = pairs
    # per-triangle constants only for the triangles that reach a voxel (pairs are sorted by triangle)
    used = pair_tri[np.concatenate([[True], pair_tri[1:] != pair_tri[:-1]])] if pair_tri.size else pair_tri
    slot = np.zeros(n_faces, dtype=np.int64)
    slot[used] = np.arange(used.size)
    tri_used, uv_used = np.take(tri, used, axis=0), np.take(tri_uv, used, axis=0)
    maps = _surface_maps(tri_used, uv_used)  # [5, 4, U]
    coord_columns = [np.ascontiguousarray(coords[:, k]) for k in range(3)]
    footprint = _footprints(tri_used, uv_used, vs)  # [U]
    textures = {}
    for i, m in enumerate(mats):
        if m.base_color_texture is not None:
            textures[("base", i)] = _Texture(m.base_color_texture)
        if m.metallic_roughness_texture is not None:
            textures[("mr", i)] = _Texture(m.metallic_roughness_texture)

    acc = torch.zeros((7, n_vox), dtype=torch.float32)  # weighted sums of the 6 values, and the weight sums
    for start in range(0, pair_tri.size, PAIR_CHUNK):
        t = pair_tri[start : start + PAIR_CHUNK]
        v = pair_vox[start : start + PAIR_CHUNK]
        u = take(slot, t)  # the triangle's row among the used ones
        centre = [(take(coord_columns[k], v).astype(F32) + F32(0.5)) * vs[k] for k in range(3)]  # voxel centres
        values = np.empty((7, t.size), dtype=F32)  # channel-major: every row is contiguous
        values[6] = 1 - _apply(maps[0], u, centre)  # the weight: 1 - signed distance to the triangle's plane
        uv = np.stack([_apply(maps[1], u, centre), _apply(maps[2], u, centre)], axis=1)
        if len(mats) == 1:
            _shade(mats[0], textures, 0, uv, take(footprint, u), values)
        else:
            mid = fmat[t]
            for i, mat in enumerate(mats):
                sel = np.flatnonzero(mid == i)
                if sel.size:
                    part = np.empty((7, sel.size), dtype=F32)
                    _shade(mat, textures, i, uv[sel], footprint[u[sel]], part)
                    values[:6, sel] = part[:6]
        if tri_col is not None:
            b1, b2 = _apply(maps[3], u, centre), _apply(maps[4], u, centre)
            corners = np.take(tri_col, t, axis=0)  # [P, 3, C]
            for c in range(3) if corners.shape[2] == 3 else (0, 1, 2, 3):
                weighted = (1 - b1 - b2) * corners[:, 0, c] + b1 * corners[:, 1, c] + b2 * corners[:, 2, c]
                values[5 if c == 3 else c] *= weighted
        values[:6] *= values[6]
        index = torch.from_numpy(v)
        for c in range(7):
            acc[c].index_add_(0, index, torch.from_numpy(values[c]))
    total = acc[6].numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        attrs = np.where(total != 0, acc[:6].numpy() / total, F32(0))
    return np.ascontiguousarray(attrs.T), dict(LAYOUT)


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise dot of [P, 3] arrays (explicit: numpy's small-axis reductions are slow)."""
    return a[:, 0] * b[:, 0] + a[:, 1] * b[:, 1] + a[:, 2] * b[:, 2]


def _apply(c: np.ndarray, rows: np.ndarray, p: list[np.ndarray]) -> np.ndarray:
    """[P]: the affine function c [4, U] (see `_surface_maps`) of triangle rows[i] at the point p[:][i]
    (p: the x, y, z coordinate arrays [P])."""
    return take(c[3], rows) + (p[0] * take(c[0], rows) + p[1] * take(c[1], rows) + p[2] * take(c[2], rows))


def _surface_maps(tri: np.ndarray, tri_uv: np.ndarray) -> np.ndarray:
    """float32 [5, 4, F]: per triangle, five affine functions f(p) = c . p + c0 of a point p, stored as
    (c, c0): the signed distance to the triangle's plane, u and v at p's projection onto the plane, and
    that projection's (unclamped) barycentric weights of corners 1 and 2. Built once per triangle (float64,
    column by column), so each (triangle, voxel) pair costs three multiply-adds per value."""
    t = tri.astype(np.float64)
    a = [t[:, 0, k] for k in range(3)]
    ab = [t[:, 1, k] - a[k] for k in range(3)]
    ac = [t[:, 2, k] - a[k] for k in range(3)]
    n = [ab[1] * ac[2] - ab[2] * ac[1], ab[2] * ac[0] - ab[0] * ac[2], ab[0] * ac[1] - ab[1] * ac[0]]
    inv_len = 1 / np.maximum(np.sqrt(n[0] * n[0] + n[1] * n[1] + n[2] * n[2]), 1e-30)
    n = [x * inv_len for x in n]

    def dot(x, y):
        return x[0] * y[0] + x[1] * y[1] + x[2] * y[2]

    d00, d01, d11 = dot(ab, ab), dot(ab, ac), dot(ac, ac)
    denom = d00 * d11 - d01 * d01
    flat = ~(denom > 0)  # a needle: no barycentrics, corner 0 stands for the whole triangle
    inv = np.where(flat, 0.0, 1 / np.where(flat, 1.0, denom))
    g1 = [(d11 * ab[k] - d01 * ac[k]) * inv for k in range(3)]  # gradient of corner 1's weight
    g2 = [(d00 * ac[k] - d01 * ab[k]) * inv for k in range(3)]  # gradient of corner 2's weight
    uv = tri_uv.astype(np.float64)
    grads = [n, g1, g2]
    values_at_a = [0.0, 0.0, 0.0]
    for c in range(2):  # u and v: uv0 + w1 (uv1 - uv0) + w2 (uv2 - uv0)
        du1, du2 = uv[:, 1, c] - uv[:, 0, c], uv[:, 2, c] - uv[:, 0, c]
        grads.insert(1 + c, [du1 * g1[k] + du2 * g2[k] for k in range(3)])
        values_at_a.insert(1 + c, uv[:, 0, c])
    entries = []
    for g, value in zip(grads, values_at_a, strict=True):
        entries += [*g, value - dot(a, g)]
    return np.stack(entries).astype(F32).reshape(5, 4, -1)


def _shade(m: Material, textures: dict, i: int, uv: np.ndarray, footprint: np.ndarray, out: np.ndarray) -> None:
    """Fill out[:6] ([>= 6, P], channel-major) with base colour, metallic, roughness, alpha of material m."""
    factor = np.asarray(m.base_color_factor, dtype=F32).reshape(-1)
    alpha = np.ones(uv.shape[0], dtype=F32)
    if ("base", i) in textures:
        tex = textures[("base", i)].sample(uv, footprint, m.mip_level_offset)  # [C, P]
        for c in range(3):
            out[c] = tex[c if tex.shape[0] >= 3 else 0] * factor[c]
        if tex.shape[0] == 4:
            alpha = tex[3]
    else:
        out[0:3] = factor[:3, None]
    if ("mr", i) in textures:
        mr = textures[("mr", i)].sample(uv, footprint, m.mip_level_offset)
        if mr.shape[0] < 3:
            raise EngineInputError("metallic_roughness_texture needs at least 3 channels (G roughness, B metallic)")
        out[3] = mr[2] * F32(m.metallic_factor)
        out[4] = mr[1] * F32(m.roughness_factor)
    else:
        out[3] = F32(m.metallic_factor)
        out[4] = F32(m.roughness_factor)
    if m.alpha_mode == "OPAQUE":
        out[5] = F32(1)
    else:
        alpha = alpha * (factor[3] if factor.size > 3 else F32(1))
        out[5] = np.where(alpha < m.alpha_cutoff, F32(0), F32(1)) if m.alpha_mode == "MASK" else alpha
