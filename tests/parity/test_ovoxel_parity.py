"""O-Voxel parity with the official converters: `fdg_to_mesh` and `mesh_to_fdg` fixtures.

Everything (grid size, box, weights) is read from each fixture's fixture.json, so held-out sets run too.
"""

from __future__ import annotations

import pytest
import torch

from engine.ovoxel.extract import flexible_dual_grid_to_mesh
from tests.reference import TOLERANCES, assert_close, fixture_params, load_io, open_fixture, read_json


def canonical_mesh(coords: torch.Tensor, vertices: torch.Tensor, faces: torch.Tensor):
    """The fixtures' mesh convention: vertices in sorted voxel order, faces remapped and row-sorted
    (winding inside a face unchanged)."""
    c = coords.long()
    key = (c[:, 0] * (int(c[:, 1].max()) + 1) + c[:, 1]) * (int(c[:, 2].max()) + 1) + c[:, 2]
    order = torch.argsort(key)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel())
    f = rank[faces.long()]
    n = max(int(order.numel()), 1)
    row_key = (f[:, 0] * n + f[:, 1]) * n + f[:, 2]
    return vertices[order], f[torch.argsort(row_key)]


@pytest.mark.parametrize("folder", fixture_params("fdg_to_mesh"))
@pytest.mark.parametrize("mode", ["weighted_split", "angle_split"])
def test_fdg_to_mesh_matches_official(folder, mode):
    folder = open_fixture(folder)
    kwargs = read_json(folder / "fixture.json")["kwargs"]
    assert not kwargs.get("train", False), "training-mode extraction is not part of the engine"
    io = load_io(folder)
    weight = io["input.split_weight"] if mode == "weighted_split" else None
    vertices, faces = flexible_dual_grid_to_mesh(
        io["input.coords"],
        io["input.dual_vertices"],
        io["input.intersected_flag"],
        weight,
        aabb=kwargs["aabb"],
        grid_size=kwargs["grid_size"],
    )
    assert vertices.dtype == torch.float32 and faces.dtype == torch.int64
    vertices, faces = canonical_mesh(io["input.coords"], vertices, faces)
    atol, rtol = TOLERANCES["fdg_to_mesh"]
    assert_close(vertices, io[f"output.{mode}.vertices"], atol, rtol, f"{folder.name} {mode} vertices")
    assert_close(faces, io[f"output.{mode}.faces"], 0, 0, f"{folder.name} {mode} faces")


@pytest.mark.parametrize("folder", fixture_params("mesh_to_fdg"))
def test_mesh_to_fdg_matches_official(folder):
    from engine.ovoxel.voxelize import mesh_to_flexible_dual_grid

    folder = open_fixture(folder)
    kwargs = read_json(folder / "fixture.json")["kwargs"]
    io = load_io(folder)
    coords, dual, flags = mesh_to_flexible_dual_grid(io["input.vertices"].numpy(), io["input.faces"].numpy(), **kwargs)
    expected = io["output.coords"].long()
    key = lambda c: (c[:, 0] * 4096 + c[:, 1]) * 4096 + c[:, 2]  # noqa: E731
    order = torch.argsort(key(expected))
    assert_close(torch.from_numpy(coords), expected[order], 0, 0, f"{folder.name} coords")
    assert_close(torch.from_numpy(flags), io["output.intersected"][order], 0, 0, f"{folder.name} flags")
    atol, rtol = TOLERANCES["mesh_to_fdg"]
    assert_close(torch.from_numpy(dual), io["output.dual_vertices"][order], atol, rtol, f"{folder.name} dual vertices")
