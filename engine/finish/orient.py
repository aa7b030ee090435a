"""Consistent face orientation: decoded TRELLIS.2 meshes have per-axis winding, not per-surface (spec 5.2).

Faces across a manifold edge agree when they run that edge in opposite directions. A union-find with
parity over those edges picks, per connected patch, which faces to flip so that every spanning-forest
edge agrees; then each patch is turned outward by the sign of its volume about its own centroid.
Non-manifold edges (three or more faces) do not connect patches, and on a non-orientable patch some
edges stay inconsistent: `OrientReport.consistent` says whether the result is clean enough to render
single-sided.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from engine.finish.topology import EdgeTable, edge_table, face_cross, union_find

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OrientReport:
    flipped: int
    inconsistent_edges: int
    boundary_edges: int
    non_manifold_edges: int

    @property
    def consistent(self) -> bool:
        return self.inconsistent_edges == 0 and self.non_manifold_edges == 0

    @property
    def closed(self) -> bool:
        return self.boundary_edges == 0 and self.non_manifold_edges == 0


def orient_faces(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, OrientReport]:
    """Return faces with a consistent, outward winding where the surface allows it."""
    faces = np.asarray(faces, dtype=np.int64)
    table = edge_table(faces)
    f0, f1, same = table.manifold_pairs()
    root, flip = union_find(len(faces), f0, f1, same)
    out = faces.copy()
    out[flip] = out[flip][:, ::-1]

    # Outward: signed volume of each patch about its centroid (works for closed patches, a fair vote otherwise).
    v = np.asarray(vertices, dtype=np.float64)
    _, patch = np.unique(root, return_inverse=True)
    patch = patch.reshape(-1)
    k = int(patch.max()) + 1
    centre = np.zeros((k, 3))
    count = np.bincount(patch, minlength=k).astype(np.float64)
    corner_mean = v[out].mean(axis=1)  # [F, 3]
    for c in range(3):
        centre[:, c] = np.bincount(patch, weights=corner_mean[:, c], minlength=k) / count
    rel = v[out] - centre[patch][:, None, :]  # [F, 3, 3]
    vol = np.einsum("fi,fi->f", rel[:, 0], np.cross(rel[:, 1], rel[:, 2]))
    inward = np.bincount(patch, weights=vol, minlength=k) < 0
    turn = inward[patch]
    out[turn] = out[turn][:, ::-1]

    report = OrientReport(
        flipped=int((flip ^ turn).sum()),
        inconsistent_edges=int((same ^ flip[f0] ^ turn[f0] ^ flip[f1] ^ turn[f1]).sum()),
        boundary_edges=int((table.counts == 1).sum()),
        non_manifold_edges=int((table.counts > 2).sum()),
    )
    log.info("orientation: %s", report)
    return out, report


def count_inconsistent(table: EdgeTable) -> int:
    """Manifold edges whose two faces run them in the same direction."""
    _, _, same = table.manifold_pairs()
    return int(same.sum())


def is_outward(vertices: np.ndarray, faces: np.ndarray) -> bool:
    """Total signed volume is positive (for a closed, consistently wound mesh: normals point out)."""
    v = np.asarray(vertices, dtype=np.float64)
    return float(np.einsum("fi,fi->", v[faces[:, 0]], face_cross(v, faces))) > 0
