"""Vectorised mesh topology: undirected edges, connected components, and a union-find with parity.

Everything here is numpy over whole arrays (no per-face Python loop), because the meshes we finish have
millions of faces. Union-find hooks larger roots onto smaller ones, so the number of trees at least
halves per round and the loop runs O(log F) times.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class EdgeTable:
    """Every face edge once per face, grouped by undirected edge.

    Half-edge i belongs to face `face[i]`, runs from the smaller to the larger vertex index when
    `forward[i]`, and lies on undirected edge `edge[i]`; `counts[e]` is how many faces use edge e.
    `order` sorts half-edges by edge id.
    """

    face: np.ndarray  # int64 [3F]
    forward: np.ndarray  # bool [3F]
    edge: np.ndarray  # int64 [3F]
    order: np.ndarray  # int64 [3F]
    keys: np.ndarray  # int64 [E, 2] (lo, hi) vertex ids
    counts: np.ndarray  # int64 [E]

    def manifold_pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Face pairs across edges shared by exactly two faces: (f0, f1, same_direction)."""
        e = self.edge[self.order]
        first = np.flatnonzero((e[1:] == e[:-1]) & (self.counts[e[:-1]] == 2))
        a, b = self.order[first], self.order[first + 1]
        return self.face[a], self.face[b], self.forward[a] == self.forward[b]

    def boundary_edges(self) -> np.ndarray:
        """Undirected edges `[B, 2]` used by exactly one face."""
        return self.keys[self.counts == 1]


def edge_table(faces: np.ndarray) -> EdgeTable:
    faces = np.asarray(faces, dtype=np.int64)
    a = faces.reshape(-1)  # [3F] v0 v1 v2 v0 v1 v2 ...
    b = faces[:, [1, 2, 0]].reshape(-1)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    n = int(faces.max()) + 1 if faces.size else 1
    key = lo * n + hi
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    start = np.ones(len(key), dtype=bool)
    start[1:] = sorted_key[1:] != sorted_key[:-1]
    edge = np.empty(len(key), dtype=np.int64)
    edge[order] = np.cumsum(start) - 1
    uniq = sorted_key[start]
    counts = np.diff(np.append(np.flatnonzero(start), len(key)))
    keys = np.stack([uniq // n, uniq % n], axis=1)
    face = np.repeat(np.arange(len(faces), dtype=np.int64), 3)
    return EdgeTable(face=face, forward=a < b, edge=edge, order=order, keys=keys, counts=counts)


def _compress(parent: np.ndarray, parity: np.ndarray) -> None:
    """Pointer jumping in place until every node points at its root (parity accumulates along the way)."""
    while True:
        grand = parent[parent]
        if np.array_equal(grand, parent):
            return
        parity ^= parity[parent]
        parent[:] = grand


def union_find(n: int, u: np.ndarray, v: np.ndarray, relation: np.ndarray | None = None):
    """Connected components of n nodes under edges (u, v).

    With `relation` (bool per edge: True when the two nodes must differ), also returns each node's parity
    relative to its root, chosen along a spanning forest; edges that contradict the forest (odd cycles) are
    simply outvoted. Returns (root per node, parity per node).
    """
    parent = np.arange(n, dtype=np.int64)
    parity = np.zeros(n, dtype=bool)
    rel = np.zeros(len(u), dtype=bool) if relation is None else np.asarray(relation, dtype=bool)
    u, v = np.asarray(u, dtype=np.int64), np.asarray(v, dtype=np.int64)
    while len(u):
        _compress(parent, parity)
        ru, rv = parent[u], parent[v]
        keep = ru != rv
        u, v, rel, ru, rv = u[keep], v[keep], rel[keep], ru[keep], rv[keep]
        if not len(u):
            break
        q = rel ^ parity[u] ^ parity[v]  # parity between the two roots
        hi, lo = np.maximum(ru, rv), np.minimum(ru, rv)
        order = np.lexsort((lo, hi))
        hi, lo, q = hi[order], lo[order], q[order]
        first = np.ones(len(hi), dtype=bool)
        first[1:] = hi[1:] != hi[:-1]
        parent[hi[first]] = lo[first]
        parity[hi[first]] = q[first]
    _compress(parent, parity)
    return parent, parity


def face_components(faces: np.ndarray, num_vertices: int) -> np.ndarray:
    """Component label per face (faces sharing a vertex are connected); labels are 0..K-1."""
    faces = np.asarray(faces, dtype=np.int64)
    root, _ = union_find(
        num_vertices, np.concatenate([faces[:, 0], faces[:, 1]]), np.concatenate([faces[:, 1], faces[:, 2]])
    )
    _, labels = np.unique(root[faces[:, 0]], return_inverse=True)
    return labels.reshape(-1)


def face_areas(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    v = np.asarray(vertices, dtype=np.float64)
    return 0.5 * np.linalg.norm(face_cross(v, faces), axis=1)


def face_cross(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Unnormalised face normals `(v1 - v0) x (v2 - v0)`, `[F, 3]` (twice the area, follows the winding)."""
    v0, v1, v2 = vertices[faces[:, 0]], vertices[faces[:, 1]], vertices[faces[:, 2]]
    return np.cross(v1 - v0, v2 - v0)


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals `[V, 3]` (float32); isolated vertices get +Z."""
    cross = face_cross(np.asarray(vertices, dtype=np.float64), faces)
    acc = np.zeros((len(vertices), 3))
    for k in range(3):
        for c in range(3):
            acc[:, c] += np.bincount(faces[:, k], weights=cross[:, c], minlength=len(vertices))
    norm = np.linalg.norm(acc, axis=1, keepdims=True)
    out = np.where(norm > 1e-20, acc / np.maximum(norm, 1e-30), np.array([0.0, 0.0, 1.0]))
    return out.astype(np.float32)
