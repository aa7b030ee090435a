"""The golden fixtures of the official implementation (`../shared/reference` or $TRELLIS2_REFERENCE_DIR).

Every fixture folder is classified from its own files (config.json name, fixture.json function or
sampler, pipeline.json), never from its folder name, so held-out sets of the same format run too.
Outside CI a missing folder skips with a reason; in CI (CI=true) it is an error.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

FLOW_CLASSES = {"SparseStructureFlowModel", "SLatFlowModel", "ElasticSLatFlowModel"}
SS_VAE_CLASSES = {"SparseStructureEncoder", "SparseStructureDecoder"}
SC_VAE_CLASSES = {"SparseUnetVaeEncoder", "SparseUnetVaeDecoder", "FlexiDualGridVaeEncoder", "FlexiDualGridVaeDecoder"}

# kind -> (atol, rtol) from the fixtures' README ("recommended atol"); bf16 also has a relative-L2 bound.
TOLERANCES = {
    "flow": (1e-5, 1e-5),
    "flow_bf16": (5e-2, 0.0),
    "ss_vae": (1e-5, 1e-5),
    "sc_vae_decoder": (1e-4, 1e-5),
    "sc_vae_encoder": (5e-5, 1e-5),
    "sampler": (5e-5, 1e-5),
    "fdg_to_mesh": (1e-6, 0.0),
    "mesh_to_fdg": (1e-5, 0.0),
    "pipeline_latent": (2e-4, 1e-4),
    "pipeline_vertices": (1e-5, 0.0),
    "pipeline_attrs": (2e-4, 0.0),
}
BF16_REL_L2 = 1.5e-2


def reference_dir() -> Path:
    return Path(os.environ.get("TRELLIS2_REFERENCE_DIR", REPO.parent / "shared" / "reference"))


def _require_reference() -> Path:
    root = reference_dir()
    if not root.is_dir():
        reason = f"reference fixtures not found at {root} (set TRELLIS2_REFERENCE_DIR)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason + "; CI must run the parity suite")
        pytest.skip(reason)
    return root


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def classify(folder: Path) -> str:
    """The kind of fixture a folder holds, read from its files."""
    if (folder / "pipeline.json").is_file():
        return "pipeline"
    fixture = read_json(folder / "fixture.json")
    function = fixture.get("function", "")
    if function.endswith("flexible_dual_grid_to_mesh"):
        return "fdg_to_mesh"
    if function.endswith("mesh_to_flexible_dual_grid"):
        return "mesh_to_fdg"
    if "sampler" in fixture:
        return "sampler"
    name = read_json(folder / "config.json").get("name")
    if name in FLOW_CLASSES:
        return "flow"
    if name in SS_VAE_CLASSES:
        return "ss_vae"
    if name in SC_VAE_CLASSES:
        return "sc_vae"
    return "unknown"


def all_fixtures() -> list[Path]:
    root = reference_dir()
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir())


def fixture_params(kind: str) -> list:
    """pytest params for every fixture folder of one kind; a single skipping param when none exist."""
    root = reference_dir()
    if not root.is_dir():
        return [pytest.param(None, id="no-reference-dir")]
    found = [pytest.param(p, id=p.name) for p in all_fixtures() if classify(p) == kind]
    return found or [pytest.param(None, id=f"no-{kind}-fixtures")]


def open_fixture(folder: Path | None) -> Path:
    """Resolve a parametrised folder: skip (outside CI) when the reference set is absent."""
    root = _require_reference()
    if folder is None:
        pytest.skip(f"no fixtures of this kind in {root}")
    return folder


def load_io(folder: Path, name: str = "io.safetensors") -> dict[str, torch.Tensor]:
    """The fixture's tensors, cloned so they are freshly allocated (aligned) like the recorder's."""
    from safetensors.torch import load_file

    return {k: v.clone() for k, v in load_file(str(folder / name)).items()}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float, what: str) -> None:
    """Floats within atol + rtol*|expected|; integer and bool tensors exactly."""
    assert tuple(actual.shape) == tuple(expected.shape), f"{what}: shape {list(actual.shape)} != {list(expected.shape)}"
    if not expected.is_floating_point():
        mismatches = int((actual.to(expected.dtype) != expected).sum())
        assert mismatches == 0, f"{what}: {mismatches} of {expected.numel()} integer values differ"
        return
    a = actual.detach().double().cpu()
    e = expected.double()
    err = (a - e).abs()
    bound = atol + rtol * e.abs()
    worst = float(err.max()) if err.numel() else 0.0
    assert bool((err <= bound).all()), f"{what}: max |diff| {worst:.3g} exceeds atol {atol:g} + rtol {rtol:g}"


def assert_close_bf16(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    atol, _ = TOLERANCES["flow_bf16"]
    assert_close(actual, expected, atol, 0.0, what)
    rel = float((actual.double() - expected.double()).norm() / expected.double().norm())
    assert rel <= BF16_REL_L2, f"{what}: relative L2 error {rel:.3g} exceeds {BF16_REL_L2:g}"


def canonical_mesh(
    voxel_coords: torch.Tensor, vertices: torch.Tensor, faces: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixtures' mesh convention: vertices in sorted voxel order, faces remapped and row-sorted."""
    from engine.sparse import sorted_order

    coords = voxel_coords if voxel_coords.shape[1] == 4 else torch.nn.functional.pad(voxel_coords, (1, 0))
    order = sorted_order(coords.int())
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel())
    remapped = rank[faces.long()]
    keys = remapped[:, 0] * (order.numel() ** 2) + remapped[:, 1] * order.numel() + remapped[:, 2]
    return vertices[order], remapped[torch.argsort(keys)]


def sort_sparse(coords: torch.Tensor, feats: torch.Tensor | None = None):
    """Rows sorted by (batch, x, y, z), as the fixtures store sparse outputs."""
    from engine.sparse import sorted_order

    order = sorted_order(coords.int())
    return (coords[order], None if feats is None else feats[order])
