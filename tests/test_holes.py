"""Small-hole filling: closes little loops, keeps large openings, orients fans against their neighbours."""

import numpy as np

from engine.holes import boundary_half_edges, boundary_loops, fill_small_holes


def grid_sheet(n: int, size: float) -> tuple[np.ndarray, np.ndarray]:
    """An n x n quad sheet of edge `size`, triangulated consistently (normals +z)."""
    xs = np.linspace(0, size, n + 1)
    vx, vy = np.meshgrid(xs, xs, indexing="ij")
    vertices = np.stack([vx.ravel(), vy.ravel(), np.zeros(vx.size)], axis=1).astype(np.float32)
    idx = np.arange((n + 1) ** 2).reshape(n + 1, n + 1)
    a, b, c, d = idx[:-1, :-1], idx[1:, :-1], idx[1:, 1:], idx[:-1, 1:]
    faces = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3), np.stack([a, c, d], -1).reshape(-1, 3)])
    return vertices, faces


def cube_with_missing_face(size: float) -> tuple[np.ndarray, np.ndarray]:
    v = np.array([[x, y, z] for x in (0, size) for y in (0, size) for z in (0, size)], dtype=np.float32)
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4)]  # the top (z = size) is missing
    faces = np.array([t for q in quads for t in ((q[0], q[1], q[2]), (q[0], q[2], q[3]))])
    return v, faces


def test_open_box_with_small_opening_is_closed_watertight():
    vertices, faces = cube_with_missing_face(0.005)  # opening perimeter 0.02 < 0.03
    new_v, new_f, report = fill_small_holes(vertices, faces, 0.03)
    assert report.filled == 1 and report.skipped_large == 0
    assert len(new_v) == len(vertices) + 1 and len(new_f) == len(faces) + 4
    assert len(boundary_half_edges(new_f)) == 0
    # the new vertex is the mean of the opening's edge midpoints: the centre of the missing square
    centre = new_v[-1]
    opening = vertices[[1, 3, 5, 7]]
    np.testing.assert_allclose(centre, opening.mean(axis=0), atol=1e-7)


def test_fan_is_oriented_like_its_neighbours():
    vertices, faces = cube_with_missing_face(0.005)
    _, new_f, _ = fill_small_holes(vertices, faces, 0.03)
    # every interior edge of a consistently wound closed surface is used once in each direction
    half = np.concatenate([new_f[:, [0, 1]], new_f[:, [1, 2]], new_f[:, [2, 0]]])
    directed = {tuple(e) for e in half.tolist()}
    assert len(directed) == len(half)
    assert all((b, a) in directed for a, b in directed)


def test_large_opening_is_left_alone():
    vertices, faces = grid_sheet(4, 1.0)  # perimeter 4
    new_v, new_f, report = fill_small_holes(vertices, faces, 0.03)
    assert report.filled == 0 and report.skipped_large == 1
    assert new_v.shape == vertices.shape and np.array_equal(new_f, faces)


def test_loops_follow_boundary_half_edges():
    vertices, faces = grid_sheet(3, 1.0)
    loops, ambiguous = boundary_loops(faces)
    assert ambiguous == 0 and len(loops) == 1 and len(loops[0]) == 12


def test_closed_mesh_has_nothing_to_fill():
    vertices, faces = cube_with_missing_face(0.005)
    closed_v, closed_f, _ = fill_small_holes(vertices, faces, 0.03)
    again_v, again_f, report = fill_small_holes(closed_v, closed_f, 0.03)
    assert report.filled == 0 and len(again_f) == len(closed_f)
