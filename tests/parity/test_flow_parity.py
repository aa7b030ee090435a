"""Flow models against the official implementation's recorded outputs (every fixture of kind "flow").

Each fixture is rebuilt from its own config.json, strictly loaded, and called as the fixtures' README
says: a dense `x` for the structure flow, a SparseTensor for the SLat flows (plus `concat_cond` when the
fixture records one). fp32 configs must match at the flow tolerance; bf16-torso configs at the bf16 one.
"""

import pytest
import torch

from engine.models import build_model
from engine.models.common import parse_dtype
from engine.sparse import SparseTensor, sorted_order
from engine.weights import load_state_dict_strict, read_safetensors
from tests.reference import (
    TOLERANCES,
    assert_close,
    assert_close_bf16,
    fixture_params,
    load_io,
    open_fixture,
    read_json,
)


def _sparse(io: dict[str, torch.Tensor], name: str) -> SparseTensor:
    return SparseTensor(io[f"{name}.feats"], io[f"{name}.coords"])


def _load(folder):
    config = read_json(folder / "config.json")
    model = build_model(config)
    load_state_dict_strict(model, read_safetensors(folder / "weights.safetensors"), source=folder.name)
    return config, model.eval()


def _run(model, io):
    """Call the model as the README table says; returns {output key: tensor} in the fixture's order."""
    if "input.x" in io:
        with torch.no_grad():
            return {"output": model(io["input.x"], io["input.t"], io["input.cond"])}
    kwargs = {"concat_cond": _sparse(io, "input.concat_cond")} if "input.concat_cond.feats" in io else {}
    with torch.no_grad():
        out = model(_sparse(io, "input.x"), io["input.t"], io["input.cond"], **kwargs)
    order = sorted_order(out.coords)
    return {"output.coords": out.coords[order], "output.feats": out.feats[order]}


@pytest.mark.parametrize("folder", fixture_params("flow"))
def test_flow_matches_reference(folder):
    folder = open_fixture(folder)
    config, model = _load(folder)
    io = load_io(folder)
    outputs = _run(model, io)
    recorded = sorted(k for k in io if k.startswith("output"))
    assert sorted(outputs) == recorded, f"{folder.name}: outputs {sorted(outputs)} != recorded {recorded}"
    bf16 = parse_dtype(config["args"].get("dtype", "float32")) != torch.float32
    for key, actual in outputs.items():
        what = f"{folder.name} {key}"
        if bf16 and actual.is_floating_point():
            assert_close_bf16(actual, io[key], what)
        else:
            assert_close(actual, io[key], *TOLERANCES["flow"], what)


@pytest.mark.parametrize("folder", fixture_params("flow"))
def test_bf16_configs_keep_the_official_torso_dtypes(folder):
    """A 16-bit config casts exactly the Linear layers inside `blocks`; everything else stays fp32."""
    folder = open_fixture(folder)
    config = read_json(folder / "config.json")
    torso = parse_dtype(config["args"].get("dtype", "float32"))
    model = build_model(config)
    for name, param in model.named_parameters():
        in_torso_linear = name.startswith("blocks.") and (".to_" in name or ".mlp.mlp." in name)
        expected = torso if in_torso_linear else torch.float32
        assert param.dtype == expected, f"{folder.name}: {name} is {param.dtype}, expected {expected}"


def _torso_dtype(folder) -> torch.dtype:
    return parse_dtype(read_json(folder / "config.json")["args"].get("dtype", "float32"))


def _half_precision_params() -> list:
    params = fixture_params("flow")
    picked = [p for p in params if p.values[0] is None or _torso_dtype(p.values[0]) != torch.float32]
    return picked or [pytest.param(None, id="no-16-bit-flow-fixtures")]


@pytest.mark.parametrize("folder", _half_precision_params())
def test_fp32_override_of_a_16_bit_config_stays_within_the_bf16_tolerance(folder):
    """The CPU path rewrites `dtype` to float32 before building: same keys, 16-bit weights load into fp32."""
    folder = open_fixture(folder)
    config = read_json(folder / "config.json")
    config = {**config, "args": {**config["args"], "dtype": "float32"}}
    model = build_model(config)
    load_state_dict_strict(model, read_safetensors(folder / "weights.safetensors"), source=folder.name)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    io = load_io(folder)
    for key, actual in _run(model.eval(), io).items():
        if actual.is_floating_point():
            assert_close_bf16(actual, io[key], f"{folder.name} {key} (fp32 torso)")
