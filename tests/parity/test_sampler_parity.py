"""The Euler sampler driving a tiny flow, against the official sampler's recorded trajectory.

Settings come from fixture.json (the official `{name, args, params}` sampler dict); the model from the
fixture's config.json and weights. Every recorded tensor is compared: the time grid, the state after
each step, each step's x0 prediction and the final samples.
"""

import pytest
import torch

from engine.models import build_model
from engine.sampling import SamplerParams, sample_euler
from engine.sparse import SparseTensor
from engine.weights import load_state_dict_strict, read_safetensors
from tests.reference import TOLERANCES, assert_close, fixture_params, load_io, open_fixture, read_json


@pytest.mark.parametrize("folder", fixture_params("sampler"))
def test_sampler_matches_reference(folder):
    folder = open_fixture(folder)
    model = build_model(read_json(folder / "config.json"))
    load_state_dict_strict(model, read_safetensors(folder / "weights.safetensors"), source=folder.name)
    model.eval()
    params = SamplerParams.from_official(read_json(folder / "fixture.json")["sampler"])
    io = load_io(folder)

    sparse = "input.noise.feats" in io
    noise = SparseTensor(io["input.noise.feats"], io["input.noise.coords"]) if sparse else io["input.noise"]
    kwargs = {}
    if "input.concat_cond.feats" in io:
        kwargs["concat_cond"] = SparseTensor(io["input.concat_cond.feats"], io["input.concat_cond.coords"])
    result = sample_euler(model, noise, io["input.cond"], io["input.neg_cond"], params, model_kwargs=kwargs)

    def values(x):
        if sparse:
            assert torch.equal(x.coords, noise.coords), "sparse sampler outputs must keep the noise's coords"
            return x.feats
        return x

    atol, rtol = TOLERANCES["sampler"]
    assert_close(torch.tensor(result.t_seq, dtype=torch.float64), io["output.t_seq"], 0.0, 0.0, "t_seq")
    recorded_steps = sum(1 for k in io if k.startswith("output.pred_x_t."))
    assert len(result.pred_x_t) == len(result.pred_x_0) == recorded_steps == params.steps
    for i in range(params.steps):
        assert_close(values(result.pred_x_t[i]), io[f"output.pred_x_t.{i}"], atol, rtol, f"{folder.name} pred_x_t.{i}")
        assert_close(values(result.pred_x_0[i]), io[f"output.pred_x_0.{i}"], atol, rtol, f"{folder.name} pred_x_0.{i}")
    assert_close(values(result.samples), io["output.samples"], atol, rtol, f"{folder.name} samples")
