"""The pipeline on a tiny checkpoint written in the official layout: every type, several images,
seeds, progress, cancel and regenerate. Runs on the CPU in seconds per generation."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from engine import config as cfg
from engine.errors import Cancelled, EngineError, EngineInputError
from engine.pipeline import CancelToken, GenerationSettings, Trellis2Pipeline
from engine.runtime import Runtime
from tests.conftest import draw_object


@pytest.fixture(scope="module")
def pipe(tiny_checkpoint):
    return Trellis2Pipeline.from_pretrained(tiny_checkpoint, runtime=Runtime(), pipeline_type="512")


def count_calls(module: torch.nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("ptype", cfg.PIPELINE_TYPES)
def test_every_pipeline_type_makes_an_asset(pipe, object_image, ptype):
    generation = pipe.run([object_image], GenerationSettings(pipeline_type=ptype, seed=3))
    asset = generation.asset
    assert asset.resolution == {"512": 512, "1024": 1024, "1024_cascade": 1024, "1536_cascade": 1536}[ptype]
    assert len(asset.faces) > 0 and asset.faces.max() < len(asset.vertices)
    assert np.all(np.abs(asset.vertices) <= 0.5 + 1.5 / asset.resolution)  # offsets may leave a voxel by 0.5
    assert asset.attrs.shape == (len(asset.coords), 6) and asset.attrs.dtype == np.float32
    assert asset.coords.min() >= 0 and asset.coords.max() < asset.resolution
    assert generation.settings.pipeline_type == ptype


def test_same_seed_same_asset_other_seed_other_asset(pipe, object_image):
    settings = GenerationSettings(pipeline_type="512", seed=11)
    a = pipe.run([object_image], settings).asset
    b = pipe.run([object_image], settings).asset
    c = pipe.run([object_image], GenerationSettings(pipeline_type="512", seed=12)).asset
    assert np.array_equal(a.vertices, b.vertices) and np.array_equal(a.faces, b.faces)
    assert np.array_equal(a.attrs, b.attrs)
    assert len(a.coords) != len(c.coords) or not np.array_equal(a.coords, c.coords)


@pytest.mark.parametrize("mode, flow_calls_per_cond_step", [("stochastic", 1), ("multidiffusion", 2)])
def test_two_images_condition_every_stage(pipe, mode, flow_calls_per_cond_step):
    images = [draw_object(colour=(200, 80, 40)), draw_object(colour=(40, 90, 220), shift=8)]
    flow = pipe.models.get(cfg.SS_FLOW)
    calls = count_calls(flow)
    generation = pipe.run(images, GenerationSettings(pipeline_type="512", seed=5, multi_image_mode=mode))
    assert generation.conditioning.num_views == 2
    params = pipe.config.sparse_structure_sampler.params
    t = np.linspace(1, 0, params.steps + 1)[:-1]
    t = params.rescale_t * t / (1 + (params.rescale_t - 1) * t)
    lo, hi = params.guidance_interval
    guided = int(((t >= lo) & (t <= hi)).sum())
    # each guided step: views x conditional calls + one unconditional; unguided steps: conditional only
    expected = guided * (flow_calls_per_cond_step + 1) + (params.steps - guided) * flow_calls_per_cond_step
    assert calls[0] == expected
    single = pipe.run(images[:1], GenerationSettings(pipeline_type="512", seed=5)).asset
    assert not np.array_equal(
        generation.structure.latent,
        pipe.run(images[1:], GenerationSettings(pipeline_type="512", seed=5)).structure.latent,
    )
    assert generation.asset.attrs.shape[1] == single.attrs.shape[1]


def test_progress_reports_every_stage_in_order(pipe, object_image):
    seen = []
    pipe.run(
        [object_image], GenerationSettings(pipeline_type="1024_cascade", seed=1), on_progress=lambda *a: seen.append(a)
    )
    stages = list(dict.fromkeys(s for s, _, _ in seen))
    assert stages == ["sparse_structure", "shape_512", "shape_1024", "texture", "decode"]
    for stage in stages:
        steps = [(step, total) for s, step, total in seen if s == stage]
        assert steps[-1][0] == steps[-1][1]  # every stage reports its completion


def test_cancel_in_the_structure_stage_stops_within_one_step(pipe, object_image):
    token = CancelToken()
    steps_after_cancel = []

    def progress(stage, step, total):
        if token.cancelled:
            steps_after_cancel.append((stage, step))
        if stage == "sparse_structure" and step == 1:
            token.cancel()

    threads = threading.active_count()
    with pytest.raises(Cancelled):
        pipe.run([object_image], GenerationSettings(pipeline_type="512"), on_progress=progress, cancel=token)
    assert steps_after_cancel == []
    assert threading.active_count() == threads
    # the pipeline is still usable afterwards
    assert len(pipe.run([object_image], GenerationSettings(pipeline_type="512", seed=2)).asset.faces) > 0


def test_regenerate_reuses_the_structure_and_equals_a_fresh_run(pipe, object_image):
    flow = pipe.models.get(cfg.SS_FLOW)
    first = pipe.run([object_image], GenerationSettings(pipeline_type="512", seed=7))
    calls = count_calls(flow)
    again = pipe.regenerate(first, resolution=1536)
    assert calls[0] == 0, "regenerate must not sample the sparse structure again"
    assert again.structure is first.structure
    assert again.asset.resolution <= 1536 and again.settings.pipeline_type == "1536_cascade"
    fresh = pipe.run([object_image], GenerationSettings(pipeline_type="1536_cascade", seed=7))
    assert np.array_equal(again.asset.faces, fresh.asset.faces)
    np.testing.assert_array_equal(again.asset.vertices, fresh.asset.vertices)
    np.testing.assert_array_equal(again.asset.attrs, fresh.asset.attrs)


def test_regenerate_refuses_changes_that_invalidate_the_structure(pipe, object_image):
    first = pipe.run([object_image], GenerationSettings(pipeline_type="512", seed=7))
    with pytest.raises(EngineInputError, match="seed"):
        pipe.regenerate(first, resolution=1024, seed=8)
    with pytest.raises(EngineInputError, match="512, 1024 or 1536"):
        pipe.regenerate(first, resolution=768)


def test_bad_settings_are_clear_errors():
    with pytest.raises(EngineInputError, match="pipeline type"):
        GenerationSettings(pipeline_type="2048")
    with pytest.raises(EngineInputError, match="seed"):
        GenerationSettings(seed=-1)
    with pytest.raises(EngineInputError, match="multi_image_mode"):
        GenerationSettings(multi_image_mode="vote")


def test_out_of_memory_says_what_to_do_and_the_pipeline_recovers(pipe, object_image):
    flow = pipe.models.get(cfg.SS_FLOW)

    def exhausted(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    handle = flow.register_forward_pre_hook(exhausted)
    try:
        with pytest.raises(EngineError, match="low-VRAM") as err:
            pipe.run([object_image], GenerationSettings(pipeline_type="512", seed=2))
        assert "lower resolution" in str(err.value)
    finally:
        handle.remove()
    assert len(pipe.run([object_image], GenerationSettings(pipeline_type="512", seed=2)).asset.faces) > 0
