"""Close small holes in a decoded mesh: the CPU counterpart of the official `fill_holes(0.03)`.

The official pipeline closes every boundary loop whose perimeter is below a threshold by adding one
vertex at the mean of the loop's edge midpoints and fanning triangles to it. Decoded TRELLIS.2 meshes
have inconsistent winding (spec 5.2), so each fan triangle takes the orientation opposite to the
boundary edge of the face it borders, which is what a consistent neighbour would have.

Loops through a non-manifold boundary vertex (more than one outgoing boundary edge) are ambiguous and
left open; `fill_small_holes` reports how many loops it filled and skipped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HoleFillReport:
    filled: int
    skipped_large: int
    skipped_ambiguous: int


def boundary_half_edges(faces: np.ndarray) -> np.ndarray:
    """Directed edges `[E, 2]` (as they run in their face) whose undirected edge has exactly one face."""
    half = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])  # [3F, 2]
    undirected = np.sort(half, axis=1)
    _, inverse, counts = np.unique(undirected, axis=0, return_inverse=True, return_counts=True)
    return half[counts[inverse.reshape(-1)] == 1]


def boundary_loops(faces: np.ndarray) -> tuple[list[np.ndarray], int]:
    """Closed boundary loops as vertex-index arrays in half-edge order, plus the count of ambiguous loops."""
    edges = boundary_half_edges(faces)
    if len(edges) == 0:
        return [], 0
    starts = edges[:, 0]
    out_degree = np.bincount(starts)
    nxt: dict[int, int] = dict(zip(starts.tolist(), edges[:, 1].tolist(), strict=True))
    ambiguous_vertices = set(np.flatnonzero(out_degree > 1).tolist())
    visited: set[int] = set()
    loops, ambiguous = [], 0
    for start in starts.tolist():
        if start in visited:
            continue
        loop, v, ok = [], start, True
        while v not in visited:
            visited.add(v)
            loop.append(v)
            if v in ambiguous_vertices or v not in nxt:
                ok = False
                break
            v = nxt[v]
        if ok and v == start and len(loop) >= 3:
            loops.append(np.asarray(loop, dtype=np.int64))
        elif loop:
            ambiguous += 1
    return loops, ambiguous


def fill_small_holes(
    vertices: np.ndarray, faces: np.ndarray, max_perimeter: float = 0.03
) -> tuple[np.ndarray, np.ndarray, HoleFillReport]:
    """Fan-fill every boundary loop with perimeter < `max_perimeter` (world units). Returns new arrays."""
    vertices = np.asarray(vertices, dtype=np.float32)
    faces = np.asarray(faces, dtype=np.int64)
    loops, ambiguous = boundary_loops(faces)
    new_vertices, new_faces, large = [], [], 0
    next_index = len(vertices)
    for loop in loops:
        a, b = loop, np.roll(loop, -1)
        lengths = np.linalg.norm(vertices[b].astype(np.float64) - vertices[a], axis=1)
        if lengths.sum() >= max_perimeter:
            large += 1
            continue
        midpoints = 0.5 * (vertices[a].astype(np.float64) + vertices[b])
        new_vertices.append(midpoints.mean(axis=0))
        centre = np.full(len(loop), next_index)
        new_faces.append(np.stack([b, a, centre], axis=1))  # opposite to the bordering face's edge a->b
        next_index += 1
    report = HoleFillReport(filled=len(new_vertices), skipped_large=large, skipped_ambiguous=ambiguous)
    log.debug("hole filling: %s", report)
    if not new_vertices:
        return vertices, faces, report
    vertices = np.concatenate([vertices, np.asarray(new_vertices, dtype=np.float32)])
    faces = np.concatenate([faces, *new_faces])
    return vertices, faces, report
