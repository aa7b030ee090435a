"""Loading weights: build on meta, strict safetensors loading, errors that say what is wrong."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from engine.errors import EngineInputError, WeightsError
from engine.models import KNOWN_MODELS, build_model, load_model
from engine.tiny_checkpoint import tiny_configs

FLOW = tiny_configs()["shape_flow_512_tiny"]
SS_FLOW = tiny_configs()["ss_flow_tiny"]


def write_checkpoint(folder, config, state=None):
    model = build_model(config, device="cpu")
    state = state if state is not None else {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    (folder / "model.json").write_text(json.dumps(config))
    return model, folder / "model"


def test_build_on_meta_allocates_nothing():
    model = build_model(FLOW)
    assert all(p.device.type == "meta" for p in model.parameters())


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(EngineInputError) as err:
        build_model({"name": "SparseStructureFlowModelV3", "args": {}})
    assert all(name in str(err.value) for name in KNOWN_MODELS)
    with pytest.raises(EngineInputError, match="name"):
        build_model({"args": {}})


def test_strict_round_trip_restores_every_tensor(tmp_path):
    original, stem = write_checkpoint(tmp_path, FLOW)
    loaded = load_model(stem)
    assert not loaded.training
    for (name, a), (_, b) in zip(original.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_non_persistent_buffers_are_recomputed_after_loading(tmp_path):
    original, stem = write_checkpoint(tmp_path, SS_FLOW)
    assert "rope_phases" not in original.state_dict()
    loaded = load_model(stem)
    assert torch.equal(loaded.rope_phases, original.rope_phases)


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    model = build_model(FLOW, device="cpu")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state["blocks.0.extra.weight"] = torch.zeros(1)
    del state["out_layer.bias"]
    _, stem = write_checkpoint(tmp_path, FLOW, state)
    with pytest.raises(WeightsError) as err:
        load_model(stem)
    message = str(err.value)
    assert "1 missing keys: out_layer.bias" in message and "1 unexpected keys: blocks.0.extra.weight" in message


def test_many_missing_keys_show_the_first_twenty(tmp_path):
    _, stem = write_checkpoint(tmp_path, FLOW, {"unrelated": torch.zeros(1)})
    with pytest.raises(WeightsError, match=r"more\)"):
        load_model(stem)


def test_shape_mismatch_names_the_key_and_both_shapes(tmp_path):
    model = build_model(FLOW, device="cpu")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state["input_layer.weight"] = torch.zeros(16, 9)
    _, stem = write_checkpoint(tmp_path, FLOW, state)
    with pytest.raises(WeightsError, match=r"input_layer.weight has shape \[16, 9\] in the file but \[16, 8\]"):
        load_model(stem)


def test_pickles_are_refused_never_opened(tmp_path):
    (tmp_path / "model.json").write_text(json.dumps(FLOW))
    (tmp_path / "model.pt").write_bytes(b"not even a pickle")
    with pytest.raises(WeightsError, match="pickle"):
        load_model(tmp_path / "model")


def test_corrupt_safetensors_is_a_clear_error(tmp_path):
    (tmp_path / "model.json").write_text(json.dumps(FLOW))
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{truncated")
    with pytest.raises(WeightsError, match="download again"):
        load_model(tmp_path / "model")
