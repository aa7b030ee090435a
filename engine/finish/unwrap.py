"""UV unwrap: charts by box projection, packed on shelves; `xatlas` as an option for small meshes.

Why not xatlas for everything: on this CPU it took 35 s for a 20K-face mesh and 140 s for 50K faces
(it grows faster than linearly), so a 200K-face budget is out of reach. The default `"box"` method is
linear time and suits a baked volume texture: every face goes to the axis direction (+-X, +-Y, +-Z) its
normal is closest to, labels are smoothed over a few rounds so charts are not speckled, each connected
patch with one label is a chart projected onto that axis plane (no triangle folds over within a chart,
because every normal in it has a positive component along the axis), turned to its principal axes,
and packed onto shelves at one texel density found by bisection, with `padding` texels around each.

UVs follow the image convention of glTF: u to the right, v down, texel (row r, column c) has its centre
at ((c + 0.5) / T, (r + 0.5) / T), row 0 is the first row of the baked image arrays.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from engine.errors import EngineInputError
from engine.finish.topology import edge_table, face_cross, union_find

log = logging.getLogger(__name__)

AXES = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [-1, 0, 0], [0, -1, 0], [0, 0, -1]], dtype=np.float64)
SMOOTHING_ROUNDS = 3
MIN_AXIS_COSINE = 0.35  # a face may join a neighbour's chart only while this flat to its axis (about 70 deg)


@dataclass(frozen=True)
class UVMesh:
    """A mesh split along UV seams: `vmap` gives each vertex's index in the mesh before the split."""

    vertices: np.ndarray  # float32 [V, 3]
    faces: np.ndarray  # int64 [F, 3]
    uvs: np.ndarray  # float32 [V, 2], image convention (v down)
    vmap: np.ndarray  # int64 [V]
    charts: int


def default_padding(texture_size: int) -> int:
    """Texels kept free around each chart: 2 at 1024, 4 at 2048, 8 at 4096 (bilinear and a few mip levels)."""
    return max(2, texture_size // 512)


def unwrap(vertices, faces, texture_size: int, *, padding: int | None = None, method: str = "box") -> UVMesh:
    padding = default_padding(texture_size) if padding is None else int(padding)
    if method == "box":
        return box_unwrap(vertices, faces, texture_size, padding)
    if method == "xatlas":
        return xatlas_unwrap(vertices, faces, texture_size, padding)
    raise EngineInputError(f"Unknown UV unwrap method {method!r}; use 'box' or 'xatlas'.")


def box_labels(vertices: np.ndarray, faces: np.ndarray, f0: np.ndarray, f1: np.ndarray) -> np.ndarray:
    """Axis label (0..5 for +X +Y +Z -X -Y -Z) per face, smoothed across manifold edges."""
    n = face_cross(vertices, faces)
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-30)
    cos = n @ AXES.T  # [F, 6]
    label = np.argmax(cos, axis=1)
    rows = np.arange(len(faces))
    for _ in range(SMOOTHING_ROUNDS):
        votes = np.zeros((len(faces), 6), dtype=np.int32)
        np.add.at(votes, (f0, label[f1]), 1)
        np.add.at(votes, (f1, label[f0]), 1)
        best = np.argmax(votes, axis=1)
        switch = (votes[rows, best] >= 2) & (best != label) & (cos[rows, best] > MIN_AXIS_COSINE)
        if not switch.any():
            break
        label = np.where(switch, best, label)
    return label


def project(corners: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Corner positions `[F, 3, 3]` -> 2-D coordinates `[F, 3, 2]` on each face's axis plane (orientation kept)."""
    a = label % 3
    b, c = (a + 1) % 3, (a + 2) % 3
    positive = label < 3
    first = np.where(positive, b, c)
    second = np.where(positive, c, b)
    rows = np.arange(len(label))[:, None]
    return np.stack([corners[rows, :, first[:, None]], corners[rows, :, second[:, None]]], axis=-1)[:, 0]


def chart_frames(xy: np.ndarray, chart: np.ndarray, k: int) -> np.ndarray:
    """Rotate each chart to its principal axes, its long side along x. Returns rotated `[F, 3, 2]`."""
    w = np.repeat(chart, 3)
    p = xy.reshape(-1, 2)
    count = np.bincount(w, minlength=k).astype(np.float64)
    mean = np.stack([np.bincount(w, p[:, i], minlength=k) for i in range(2)], 1) / np.maximum(count, 1)[:, None]
    d = p - mean[w]
    sxx = np.bincount(w, d[:, 0] * d[:, 0], minlength=k)
    syy = np.bincount(w, d[:, 1] * d[:, 1], minlength=k)
    sxy = np.bincount(w, d[:, 0] * d[:, 1], minlength=k)
    theta = 0.5 * np.arctan2(2 * sxy, sxx - syy)  # principal axis angle
    cs, sn = np.cos(theta)[w], np.sin(theta)[w]
    return np.stack([cs * d[:, 0] + sn * d[:, 1], -sn * d[:, 0] + cs * d[:, 1]], 1).reshape(-1, 3, 2)


def shelf_pack(width: np.ndarray, height: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Next-fit shelves for integer rectangles sorted by height; returns (x, y, total height)."""
    order = np.lexsort((-width, -height))
    x = np.zeros(len(width), dtype=np.int64)
    y = np.zeros(len(width), dtype=np.int64)
    cx = cy = shelf = 0
    for i in order.tolist():
        w, h = int(width[i]), int(height[i])
        if cx + w > size:
            cy += shelf
            cx = shelf = 0
        x[i], y[i] = cx, cy
        cx += w
        shelf = max(shelf, h)
    return x, y, cy + shelf


def pack_charts(extent: np.ndarray, size: int, padding: int) -> tuple[np.ndarray, float, int]:
    """Largest texel density at which all chart rectangles fit; returns (origin [K,2] in texels, scale, padding)."""
    area = float(np.sum(np.prod(np.maximum(extent, 1e-12), axis=1)))
    for pad in sorted({padding, padding // 2, 1, 0}, reverse=True):
        lo, hi = 0.0, size / math.sqrt(area)

        def fits(scale, pad=pad):
            wh = np.ceil(extent * scale).astype(np.int64) + 2 * pad + 1
            if (wh[:, 0] > size).any():
                return None
            x, y, total = shelf_pack(wh[:, 0], wh[:, 1], size)
            return (np.stack([x, y], 1), total) if total <= size else None

        if fits(lo) is None:
            continue
        for _ in range(24):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if fits(mid) is not None else (lo, mid)
        origin, _ = fits(lo)
        if pad < padding:
            log.warning(
                "UV charts only fit with %d texels of padding instead of %d; use a larger texture", pad, padding
            )
        return origin, lo, pad
    raise EngineInputError(
        f"The mesh has {len(extent)} UV charts, too many for a {size}x{size} texture; "
        "use a larger texture size or a smaller face budget."
    )


def box_unwrap(vertices, faces, texture_size: int, padding: int) -> UVMesh:
    v = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    f0, f1, _ = edge_table(faces).manifold_pairs()
    label = box_labels(v, faces, f0, f1)
    same = label[f0] == label[f1]
    root, _ = union_find(len(faces), f0[same], f1[same])
    _, chart = np.unique(root, return_inverse=True)
    chart = chart.reshape(-1)
    k = int(chart.max()) + 1

    xy = chart_frames(project(v[faces], label), chart, k)  # [F, 3, 2]
    w = np.repeat(chart, 3)
    p = xy.reshape(-1, 2)
    lo = np.full((k, 2), np.inf)
    hi = np.full((k, 2), -np.inf)
    np.minimum.at(lo, w, p)
    np.maximum.at(hi, w, p)
    origin, scale, pad = pack_charts(hi - lo, texture_size, padding)
    texel = (p - lo[w]) * scale + pad + 0.5 + origin[w]  # [3F, 2] in texel units

    # Seam split: one vertex per (chart, source vertex).
    key = w * len(v) + faces.reshape(-1)
    uniq, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    vmap = uniq % len(v)
    uvs = (texel[first] / texture_size).astype(np.float32)
    log.info("box unwrap: %d charts, texel density %.1f per unit, padding %d", k, scale, pad)
    return UVMesh(
        vertices=np.asarray(vertices, dtype=np.float32)[vmap],
        faces=inverse.reshape(-1, 3).astype(np.int64),
        uvs=uvs,
        vmap=vmap.astype(np.int64),
        charts=k,
    )


def xatlas_unwrap(vertices, faces, texture_size: int, padding: int) -> UVMesh:
    """xatlas charts and packing: better charts, but minutes beyond a few tens of thousands of faces."""
    try:
        import xatlas
    except ImportError as exc:
        raise EngineInputError(
            "The 'xatlas' unwrap needs `pip install xatlas`; or use the default 'box' unwrap."
        ) from exc
    atlas = xatlas.Atlas()
    atlas.add_mesh(np.ascontiguousarray(vertices, dtype=np.float32), np.ascontiguousarray(faces, dtype=np.uint32))
    pack = xatlas.PackOptions()
    pack.padding = padding
    pack.resolution = texture_size
    atlas.generate(xatlas.ChartOptions(), pack)
    vmap, indices, uvs = atlas[0]
    return UVMesh(
        vertices=np.asarray(vertices, dtype=np.float32)[vmap],
        faces=indices.astype(np.int64),
        uvs=uvs.astype(np.float32),
        vmap=vmap.astype(np.int64),
        charts=int(atlas.chart_count),
    )
