"""Parity of the VAEs with the official implementation's golden fixtures.

Everything comes from the fixture files: the class and its args from config.json, the weights (loaded
strictly), the inputs and the recorded outputs from io.safetensors (the call is chosen by the class name
and the io key names). Sparse outputs are compared in sorted (b, x, y, z) order, `subs` in native order,
meshes with vertices in sorted voxel order and faces remapped and row-sorted (the fixtures' README).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from engine.models import build_model
from engine.sparse import SparseTensor, sort_key, sorted_order
from engine.weights import load_state_dict_strict, read_safetensors
from tests.reference import TOLERANCES, assert_close, fixture_params, load_io, open_fixture, read_json


def _load(folder: Path):
    config = read_json(folder / "config.json")
    model = build_model(config, device="meta")
    load_state_dict_strict(model, read_safetensors(folder / "weights.safetensors"), source=str(folder))
    return config, model.eval()


def _sparse(io: dict[str, torch.Tensor], name: str) -> SparseTensor:
    return SparseTensor(io[f"{name}.feats"], io[f"{name}.coords"])


def _tolerance(config: dict) -> tuple[float, float]:
    return TOLERANCES["sc_vae_decoder" if config["name"].endswith("Decoder") else "sc_vae_encoder"]


def _compare_sorted(coords, feats, io, name, tol, extra=()):
    """Sort our rows by (b, x, y, z) and compare `name.coords`/`name.feats` (plus same-order extras)."""
    order = sorted_order(coords)
    assert_close(coords[order], io[f"{name}.coords"], 0, 0, f"{name}.coords")
    assert_close(feats[order], io[f"{name}.feats"], *tol, f"{name}.feats")
    for key, value in extra:
        assert_close(value[order], io[key], *tol, key)


def _argwhere_occupied(logits: torch.Tensor) -> torch.Tensor:
    return torch.argwhere(logits[:, 0] > 0).int()  # [M, 4] (b, x, y, z)


# -- sparse-structure VAE (dense) ------------------------------------------------------------------
@pytest.mark.parametrize("folder", fixture_params("ss_vae"))
def test_ss_vae_matches_reference(folder):
    folder = open_fixture(folder)
    config, model = _load(folder)
    io = load_io(folder)
    atol, rtol = TOLERANCES["ss_vae"]
    inputs = sorted(k for k in io if k.startswith("input."))
    assert len(inputs) == 1, f"expected one dense input, got {inputs}"
    with torch.no_grad():
        if config["name"] == "SparseStructureDecoder":
            logits = model(io[inputs[0]])
            assert_close(logits, io["output"], atol, rtol, "output")
            if "output.coords_full" in io:
                assert_close(_argwhere_occupied(logits), io["output.coords_full"], 0, 0, "output.coords_full")
            if "output.coords_res8" in io:
                pooled = F.max_pool3d((logits > 0).float(), 2) > 0.5
                assert_close(_argwhere_occupied(pooled.float()), io["output.coords_res8"], 0, 0, "output.coords_res8")
        else:
            _, mean, logvar = model(io[inputs[0]], sample_posterior=False, return_raw=True)
            assert_close(mean, io["output.mean"], atol, rtol, "output.mean")
            assert_close(logvar, io["output.logvar"], atol, rtol, "output.logvar")


# -- sparse-conv VAEs ------------------------------------------------------------------------------
def _subs_keys(io) -> list[str]:
    found = {int(m.group(1)) for k in io if (m := re.match(r"input\.guide_subs\.(\d+)\.feats$", k))}
    return [f"input.guide_subs.{i}" for i in range(len(found))]


@pytest.mark.parametrize("folder", fixture_params("sc_vae"))
def test_sc_vae_matches_reference(folder):
    folder = open_fixture(folder)
    config, model = _load(folder)
    io = load_io(folder)
    tol = _tolerance(config)
    name = config["name"]
    with torch.no_grad():
        if name.endswith("Encoder"):
            if name == "FlexiDualGridVaeEncoder":
                inputs = [_sparse(io, "input.vertices"), _sparse(io, "input.intersected")]
            else:
                inputs = [_sparse(io, "input.x")]
            z, mean, logvar = model(*inputs, sample_posterior=False, return_raw=True)
            _compare_sorted(z.coords, mean, io, "output.mean", tol, extra=[("output.logvar", logvar)])
            return

        x = _sparse(io, "input.x")
        if name == "FlexiDualGridVaeDecoder":
            raw, subs = model.decode_raw(x, return_subs=True)
            _compare_sorted(raw.coords, raw.feats, io, "output.raw", tol)
            for i, sub in enumerate(subs):
                if f"output.subs.{i}.coords" in io:  # native order: compared as is
                    assert_close(sub.coords, io[f"output.subs.{i}.coords"], 0, 0, f"output.subs.{i}.coords")
                    assert_close(sub.feats, io[f"output.subs.{i}.feats"], *tol, f"output.subs.{i}.feats")
            assert len(subs) == len({k for k in io if re.match(r"output\.subs\.\d+\.feats$", k)})
        else:
            guides = [_sparse(io, key) for key in _subs_keys(io)] or None
            out = model(x, guide_subs=guides)
            _compare_sorted(out.coords, out.feats, io, "output", tol)
        for key in io:
            if m := re.match(r"output\.upsample(\d+)_coords$", key):
                coords = model.upsample(x, upsample_times=int(m.group(1)))
                assert_close(coords[sorted_order(coords)], io[key], 0, 0, key)


def _mesh_params():
    """sc_vae fixtures that recorded meshes (the FDG decoder's eval forward)."""
    from safetensors import safe_open

    params = []
    for param in fixture_params("sc_vae"):
        folder = param.values[0]
        if folder is None:
            params.append(param)
            continue
        with safe_open(str(folder / "io.safetensors"), "pt") as f:
            if any(k.startswith("output.mesh.") for k in f.keys()):
                params.append(param)
    return params or [pytest.param(None, id="no-mesh-fixtures")]


def _canonical_mesh(coords: torch.Tensor, vertices: torch.Tensor, faces: torch.Tensor):
    """Vertices in sorted voxel order, faces remapped to it and their rows sorted (winding kept)."""
    order = torch.argsort(sort_key(torch.cat([torch.zeros_like(coords[:, :1]), coords], dim=1)))
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel())
    faces = rank[faces.long()]  # [F, 3]
    n = max(order.numel(), 1)
    faces = faces[torch.argsort((faces[:, 0] * n + faces[:, 1]) * n + faces[:, 2])]
    return vertices[order], faces


@pytest.mark.parametrize("folder", _mesh_params())
def test_fdg_decoder_meshes_match_reference(folder):
    folder = open_fixture(folder)
    config, model = _load(folder)
    io = load_io(folder)
    tol = _tolerance(config)
    fixture = read_json(folder / "fixture.json")
    model.set_resolution(fixture.get("set_resolution", config["args"]["resolution"]))
    x = _sparse(io, "input.x")
    with torch.no_grad():
        meshes, _ = model(x, return_subs=True)
        raw = model.decode_raw(x)
    items = sorted({int(m.group(1)) for k in io if (m := re.match(r"output\.mesh\.(\d+)\.faces$", k))})
    assert len(meshes) == len(items), f"{len(meshes)} meshes, fixture has {len(items)}"
    for b, (mesh, rows) in enumerate(zip(meshes, raw.layout, strict=True)):
        vertices, faces = _canonical_mesh(raw.coords[rows, 1:], mesh.vertices, mesh.faces)
        assert_close(faces, io[f"output.mesh.{b}.faces"], 0, 0, f"output.mesh.{b}.faces")
        assert_close(vertices, io[f"output.mesh.{b}.vertices"], *tol, f"output.mesh.{b}.vertices")
