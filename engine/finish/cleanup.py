"""Mesh clean-up before decimation: merge coincident vertices, drop degenerate and duplicate faces,
remove tiny floating islands, drop unreferenced vertices.

Degenerate means a face that repeats a vertex index (after merging). Zero-area faces with three distinct
vertices are kept: removing them would open cracks in an otherwise closed surface, and the decimator
collapses them anyway.

Floating islands: a connected component (faces sharing a vertex) is removed when its surface area is
below `min_island_area` (default 1e-5 in the unit box, the threshold of the official `to_glb`, about
two voxel faces at 512^3) or it has fewer than `min_island_faces` faces. The largest component is always
kept, so a tiny input never becomes empty.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from engine.errors import EngineInputError
from engine.finish.topology import face_areas, face_components

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CleanupReport:
    merged_vertices: int
    degenerate_faces: int
    duplicate_faces: int
    island_faces: int
    islands_removed: int


def check_mesh(vertices, faces) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert an input mesh to (float32 [V,3], int64 [F,3]); raise EngineInputError otherwise."""
    v = np.asarray(vertices)
    f = np.asarray(faces)
    if v.ndim != 2 or v.shape[1] != 3 or f.ndim != 2 or f.shape[1] != 3:
        raise EngineInputError(
            f"A mesh needs vertices of shape [V, 3] and triangle faces of shape [F, 3]; got {v.shape} and {f.shape}."
        )
    if len(v) == 0 or len(f) == 0:
        raise EngineInputError("The mesh is empty (no vertices or no faces): there is nothing to finish.")
    if not np.issubdtype(f.dtype, np.integer):
        raise EngineInputError(f"Face indices must be integers, got {f.dtype}.")
    v = v.astype(np.float32, copy=False)
    if not np.isfinite(v).all():
        raise EngineInputError("The mesh has NaN or infinite vertex coordinates.")
    f = f.astype(np.int64, copy=False)
    if f.min() < 0 or f.max() >= len(v):
        raise EngineInputError(f"Face indices must lie in [0, {len(v)}); found {f.min()}..{f.max()}.")
    return v, f


def merge_vertices(vertices: np.ndarray, faces: np.ndarray, tolerance: float = 1e-6):
    """Weld vertices that fall in the same `tolerance` cell; returns (vertices, faces, merged count)."""
    q = np.floor((vertices.astype(np.float64) - vertices.min(axis=0)) / tolerance).astype(np.int64)
    span = q.max(axis=0) + 1
    if np.prod(span.astype(np.float64)) < 2**62:
        key = (q[:, 0] * span[1] + q[:, 1]) * span[2] + q[:, 2]
        _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    else:  # coordinates span too far for one int64 key at this tolerance
        _, first, inverse = np.unique(q, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    return vertices[first], inverse[faces], len(vertices) - len(first)


def drop_degenerate_faces(faces: np.ndarray) -> np.ndarray:
    keep = (faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 2] != faces[:, 0])
    return faces[keep]


def drop_duplicate_faces(faces: np.ndarray) -> np.ndarray:
    """Keep the first of faces with the same vertex set, whatever their winding (a face and its flip included)."""
    s = np.sort(faces, axis=1)
    n = int(faces.max()) + 1
    if float(n) ** 3 < 2**62:
        _, first = np.unique((s[:, 0] * n + s[:, 1]) * n + s[:, 2], return_index=True)
    else:
        _, first = np.unique(s, axis=0, return_index=True)
    return faces[np.sort(first)]


def remove_small_islands(vertices, faces, min_island_area: float, min_island_faces: int):
    """Drop components below the area or face-count threshold (never the largest one)."""
    labels = face_components(faces, len(vertices))
    k = int(labels.max()) + 1
    if k == 1:
        return faces, 0
    area = np.bincount(labels, weights=face_areas(vertices, faces), minlength=k)
    count = np.bincount(labels, minlength=k)
    small = (area < min_island_area) | (count < min_island_faces)
    small[np.argmax(area)] = False
    return faces[~small[labels]], int(small.sum())


def compact(vertices: np.ndarray, faces: np.ndarray):
    """Drop unreferenced vertices; returns (vertices, faces, old index of each kept vertex)."""
    used = np.unique(faces)
    remap = np.full(len(vertices), -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    return vertices[used], remap[faces], used


def clean_mesh(
    vertices,
    faces,
    *,
    merge_tolerance: float = 1e-6,
    min_island_area: float = 1e-5,
    min_island_faces: int = 1,
) -> tuple[np.ndarray, np.ndarray, CleanupReport]:
    """The whole clean-up; returns (float32 [V,3], int64 [F,3], report)."""
    v, f = check_mesh(vertices, faces)
    v, f, merged = merge_vertices(v, f, merge_tolerance)
    n0 = len(f)
    f = drop_degenerate_faces(f)
    n1 = len(f)
    if n1 == 0:
        raise EngineInputError("Every face of the mesh is degenerate (repeats a vertex): there is no surface.")
    f = drop_duplicate_faces(f)
    n2 = len(f)
    f, islands = remove_small_islands(v, f, min_island_area, min_island_faces)
    v, f, _ = compact(v, f)
    report = CleanupReport(merged, n0 - n1, n1 - n2, n2 - len(f), islands)
    log.info("clean-up: %s", report)
    return v, f, report
