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

from engine.errors import EngineInputError

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
    """A texture and its mip chain (2x2 box filter), float32 in [0, 1], sampled like the official."""

    def __init__(self, image: np.ndarray):
        img = np.asarray(image)
        if img.ndim == 2:
            img = img[:, :, None]
        if img.ndim != 3 or img.shape[0] < 1 or img.shape[1] < 1:
            raise EngineInputError(f"a texture must be an image [H, W, C], got {list(img.shape)}")
        img = img.astype(F32) / F32(255) if img.dtype == np.uint8 else img.astype(F32)
        self.levels = [img]
        while min(img.shape[0], img.shape[1]) >= 2:
            h, w = img.shape[0] // 2 * 2, img.shape[1] // 2 * 2
            img = img[:h, :w].reshape(h // 2, 2, w // 2, 2, -1).mean(axis=(1, 3))
            self.levels.append(img)

    @staticmethod
    def _bilinear(img: np.ndarray, uv: np.ndarray) -> np.ndarray:
        h, w = img.shape[:2]
        x = uv[:, 0] * w
        y = (1 - uv[:, 1]) * h
        x0 = np.floor(x - 0.5)
        y0 = np.floor(y - 0.5)
        wx = (x - x0 - 0.5)[:, None]
        wy = (y - y0 - 0.5)[:, None]
        x0 = x0.astype(np.int64) % w
        y0 = y0.astype(np.int64) % h
        x1, y1 = (x0 + 1) % w, (y0 + 1) % h
        row0, row1 = y0 * w, y1 * w
        flat = img.reshape(h * w, -1)  # texel rows: a 1-D take is far cheaper than 2-D fancy indexing

        def texel(index: np.ndarray) -> np.ndarray:
            return np.take(flat, index, axis=0)

        return (
            (1 - wx) * (1 - wy) * texel(row0 + x0)
            + wx * (1 - wy) * texel(row0 + x1)
            + (1 - wx) * wy * texel(row1 + x0)
            + (wx * wy * texel(row1 + x1))
        )

    def sample(self, uv: np.ndarray, footprint: np.ndarray, offset: float) -> np.ndarray:
        """[P, C] at uv [P, 2]; footprint = one voxel's extent in UV units (per point)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            level = np.log2(footprint * self.levels[0].shape[0]) + offset
        top = len(self.levels) - 1
        level = np.where(np.isfinite(level) & (level > 0), level, 0.0)
        out = np.empty((uv.shape[0], self.levels[0].shape[2]), dtype=F32)
        base = np.floor(np.minimum(level, top)).astype(np.int64)
        for lo in np.unique(base):
            sel = base == lo
            value = self._bilinear(self.levels[lo], uv[sel])
            if lo < top:
                frac = (level[sel] - lo)[:, None].astype(F32)
                value = (1 - frac) * value + frac * self._bilinear(self.levels[lo + 1], uv[sel])
            out[sel] = value
        return out


def _footprints(tri: np.ndarray, tri_uv: np.ndarray, voxel_size: np.ndarray) -> np.ndarray:
    """Per triangle: max voxel size / sqrt(|dP/du| |dP/dv|), the UV extent of one voxel (tiny if no UVs)."""
    e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    d1, d2 = tri_uv[:, 1] - tri_uv[:, 0], tri_uv[:, 2] - tri_uv[:, 0]
    det = d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0]
    t = d2[:, 1, None] * e1 - d1[:, 1, None] * e2
    b = d1[:, 0, None] * e2 - d2[:, 0, None] * e1
    with np.errstate(divide="ignore", invalid="ignore"):
        lengths = np.linalg.norm(t, axis=1) * np.linalg.norm(b, axis=1) / (det * det)
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
    tri = verts[faces]

    n_vox = coords.shape[0]
    pair_tri, pair_vox = pairs

    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    n = n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-30)
    footprint = _footprints(tri, tri_uv, vs)
    textures = {}
    for i, m in enumerate(mats):
        if m.base_color_texture is not None:
            textures[("base", i)] = _Texture(m.base_color_texture)
        if m.metallic_roughness_texture is not None:
            textures[("mr", i)] = _Texture(m.metallic_roughness_texture)

    total = np.zeros(n_vox)
    acc = np.zeros((n_vox, 6))
    for start in range(0, pair_tri.size, PAIR_CHUNK):
        t = pair_tri[start : start + PAIR_CHUNK]
        v = pair_vox[start : start + PAIR_CHUNK]
        centre = (np.take(coords, v, axis=0).astype(F32) + F32(0.5)) * vs
        bary, dist = _project(centre, np.take(tri, t, axis=0), np.take(n, t, axis=0))
        weight = 1 - dist
        corner_uv = np.take(tri_uv, t, axis=0)  # [P, 3, 2]
        uv = (
            bary[:, 0, None] * corner_uv[:, 0] + bary[:, 1, None] * corner_uv[:, 1] + bary[:, 2, None] * corner_uv[:, 2]
        )
        values = np.empty((t.size, 6), dtype=F32)
        mid = fmat[t]
        for i, m in enumerate(mats):
            sel = mid == i
            if sel.any():
                values[sel] = _shade(m, textures, i, uv[sel], footprint[t[sel]])
        if tri_col is not None:
            col = np.einsum("pk,pkc->pc", bary, tri_col[t])
            values[:, 0:3] *= col[:, :3]
            if col.shape[1] == 4:
                values[:, 5] *= col[:, 3]
        total += np.bincount(v, weights=weight, minlength=n_vox)
        for c in range(6):
            acc[:, c] += np.bincount(v, weights=weight * values[:, c], minlength=n_vox)
    with np.errstate(divide="ignore", invalid="ignore"):
        attrs = np.where(total[:, None] != 0, acc / total[:, None], 0.0)
    return attrs.astype(F32), dict(LAYOUT)


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise dot of [P, 3] arrays (explicit: numpy's small-axis reductions are slow)."""
    return a[:, 0] * b[:, 0] + a[:, 1] * b[:, 1] + a[:, 2] * b[:, 2]


def _project(p: np.ndarray, tri: np.ndarray, n: np.ndarray):
    """Unclamped barycentrics [P, 3] of p projected onto the triangle's plane, and its signed distance."""
    a = tri[:, 0]
    d = _dot(p - a, n)
    ap = p - d[:, None] * n - a
    ab, ac = tri[:, 1] - a, tri[:, 2] - a
    d00, d01, d11 = _dot(ab, ab), _dot(ab, ac), _dot(ac, ac)
    d20, d21 = _dot(ap, ab), _dot(ap, ac)
    denom = d00 * d11 - d01 * d01
    with np.errstate(divide="ignore", invalid="ignore"):
        v = (d11 * d20 - d01 * d21) / denom
        w = (d00 * d21 - d01 * d20) / denom
    return np.stack([1 - v - w, v, w], axis=1), d


def _shade(m: Material, textures: dict, i: int, uv: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """[P, 6] base colour, metallic, roughness, alpha of material m at uv."""
    out = np.empty((uv.shape[0], 6), dtype=F32)
    factor = np.asarray(m.base_color_factor, dtype=F32).reshape(-1)
    rgba = np.ones((uv.shape[0], 4), dtype=F32)
    if ("base", i) in textures:
        tex = textures[("base", i)].sample(uv, footprint, m.mip_level_offset)
        rgba[:, :3] = tex[:, :3] if tex.shape[1] >= 3 else tex[:, :1]
        if tex.shape[1] == 4:
            rgba[:, 3] = tex[:, 3]
    out[:, 0:3] = rgba[:, :3] * factor[:3]
    mr = np.ones((uv.shape[0], 3), dtype=F32)
    if ("mr", i) in textures:
        mr = textures[("mr", i)].sample(uv, footprint, m.mip_level_offset)
        if mr.shape[1] < 3:
            raise EngineInputError("metallic_roughness_texture needs at least 3 channels (G roughness, B metallic)")
    out[:, 3] = mr[:, 2] * F32(m.metallic_factor)
    out[:, 4] = mr[:, 1] * F32(m.roughness_factor)
    alpha = np.ones(uv.shape[0], dtype=F32)
    if m.alpha_mode != "OPAQUE":
        alpha = rgba[:, 3] * (factor[3] if factor.size > 3 else F32(1))
        if m.alpha_mode == "MASK":
            alpha = np.where(alpha < m.alpha_cutoff, F32(0), F32(1))
    out[:, 5] = alpha
    return out
