"""Analytic checks of the Euler sampler: cases whose answer is known without the reference."""

import pytest
import torch

from engine.errors import Cancelled, EngineInputError
from engine.sampling import SamplerParams, item_std, sample_euler, time_schedule
from engine.sparse import SparseTensor


class Recorder:
    """A toy velocity model that logs every call: v = scale * x + cond (cond per batch item)."""

    def __init__(self, scale: float = 0.5) -> None:
        self.scale = scale
        self.calls: list[tuple[float, object]] = []

    def __call__(self, x, t, cond, **kwargs):
        self.calls.append((float(t[0]) / 1000, cond))
        if isinstance(x, SparseTensor):
            per_row = cond.reshape(cond.shape[0], -1)[x.batch_index, :1]  # [N, 1]
            return x.replace(self.scale * x.feats + per_row)
        return self.scale * x + cond.reshape(cond.shape[0], *[1] * (x.ndim - 1))


def _constant(velocity):
    def model(x, t, cond, **kwargs):
        return velocity.clone()

    return model


def test_constant_velocity_lands_exactly_on_x_minus_v():
    # Dyadic schedule (rescale_t 1, 4 steps) and dyadic values: every operation is exact in fp32.
    noise = torch.tensor([[1.0, -2.5, 3.25, 0.0]])
    v = torch.tensor([[0.5, 1.0, -0.75, 2.0]])
    params = SamplerParams(steps=4, rescale_t=1.0, guidance_strength=1.0, sigma_min=0.0)
    result = sample_euler(_constant(v), noise, None, None, params)
    assert torch.equal(result.samples, noise - v)
    for pred in result.pred_x_0:  # with sigma_min 0, x0 = x_t - t v = noise - v on the straight path
        assert torch.equal(pred, noise - v)


def test_constant_velocity_on_a_rescaled_grid():
    g = torch.Generator().manual_seed(0)
    noise, v = torch.randn(2, 8, 4, 4, 4, generator=g), torch.randn(2, 8, 4, 4, 4, generator=g)
    params = SamplerParams(steps=12, rescale_t=3.0, guidance_strength=1.0)
    result = sample_euler(_constant(v), noise, None, None, params)
    torch.testing.assert_close(result.samples, noise - v, atol=2e-6, rtol=0)
    assert result.samples is result.pred_x_t[-1]
    assert len(result.pred_x_t) == len(result.pred_x_0) == 12


def test_guidance_strength_one_is_the_conditional_model_with_one_call_per_step():
    noise = torch.randn(1, 3, 2, 2, 2, generator=torch.Generator().manual_seed(1))
    cond, neg = torch.tensor([[0.25]]), torch.tensor([[-4.0]])
    guided = Recorder()
    result = sample_euler(guided, noise, cond, neg, SamplerParams(steps=5, rescale_t=3.0, guidance_strength=1.0))
    assert len(guided.calls) == 5 and all(c is cond for _, c in guided.calls)

    # The same conditional-only integration, written out by hand.
    x = noise
    t_seq = time_schedule(5, 3.0)
    for t, t_prev in zip(t_seq[:-1], t_seq[1:], strict=True):
        x = x - (t - t_prev) * Recorder()(x, torch.tensor([1000 * t]), cond)
    assert torch.equal(result.samples, x)


def test_cfg_combines_conditional_and_unconditional_velocities():
    noise = torch.zeros(1, 2)
    model = Recorder(scale=0.0)  # v = cond
    params = SamplerParams(steps=1, rescale_t=1.0, guidance_strength=3.0, guidance_interval=(0.0, 1.0))
    result = sample_euler(model, noise, torch.tensor([[1.0]]), torch.tensor([[0.5]]), params)
    # v = 3 * 1 + (1 - 3) * 0.5 = 2; one step from t=1 to 0: x = 0 - 1 * 2.
    assert torch.equal(result.samples, torch.full((1, 2), -2.0))
    assert [c.item() for _, c in model.calls] == [1.0, 0.5], "cond first, then neg_cond"


def test_guidance_interval_boundaries_are_inclusive():
    t_seq = time_schedule(12, 3.0)
    assert t_seq[3] == 0.9 and t_seq[8] == 0.6, "the float64 schedule must hit 0.9 and 0.6 exactly"
    model = Recorder()
    params = SamplerParams(steps=12, rescale_t=3.0, guidance_strength=7.5, guidance_interval=(0.6, 0.9))
    cond, neg = torch.tensor([[1.0]]), torch.tensor([[0.0]])
    sample_euler(model, torch.randn(1, 4), cond, neg, params)
    # The model sees t as fp32 1000 t; compare on that grid.
    seen_neg = [tc for tc, c in model.calls if c is neg]
    expected = [float(torch.tensor(1000 * t, dtype=torch.float32)) / 1000 for t in t_seq[3:9]]
    assert seen_neg == expected, "neg_cond must be used exactly at t in [0.6, 0.9], both ends included"
    assert len(model.calls) == 12 + 6


def test_callback_is_called_once_per_step_with_the_x0_preview():
    seen = []
    params = SamplerParams(steps=6, rescale_t=2.0, guidance_strength=1.0)
    result = sample_euler(
        Recorder(),
        torch.randn(1, 3),
        torch.tensor([[0.1]]),
        None,
        params,
        callback=lambda *a: seen.append(a),
        stage="ss",
    )
    assert [(s, i, n) for s, i, n, _ in seen] == [("ss", i, 6) for i in range(1, 7)]
    assert all(p is q for (_, _, _, p), q in zip(seen, result.pred_x_0, strict=True))


class Token:
    cancelled = False


@pytest.mark.parametrize("kind", ["token", "callable"])
def test_cancel_stops_before_the_next_step(kind):
    token = Token()
    model = Recorder()

    def cancel_after_two(stage, step, total, preview):
        if step == 2:
            token.cancelled = True

    cancel = token if kind == "token" else (lambda: token.cancelled)
    params = SamplerParams(steps=10, guidance_strength=1.0)
    with pytest.raises(Cancelled):
        sample_euler(
            model, torch.randn(1, 3), torch.tensor([[0.0]]), None, params, callback=cancel_after_two, cancel=cancel
        )
    assert len(model.calls) == 2, "no network call may run after the cancel request"


def test_sparse_cfg_rescale_statistics_are_per_batch_item():
    """A two-item sparse batch samples exactly like each item on its own (CFG-rescale included)."""
    g = torch.Generator().manual_seed(3)
    lens = [9, 4]
    coords = torch.tensor([[0, i, 0, 0] for i in range(9)] + [[1, i, 1, 0] for i in range(4)], dtype=torch.int32)
    feats = torch.randn(sum(lens), 3, generator=g)
    feats[9:] *= 3.0  # the items' stds differ, so one shared statistic would change both
    cond, neg = torch.tensor([[[0.7]], [[-0.2]]]), torch.tensor([[[0.1]], [[0.3]]])
    params = SamplerParams(steps=4, rescale_t=3.0, guidance_strength=5.0, guidance_rescale=0.7)
    both = sample_euler(Recorder(), SparseTensor(feats, coords), cond, neg, params)
    start = 0
    for b, n in enumerate(lens):
        rows = slice(start, start + n)
        item_coords = coords[rows].clone()
        item_coords[:, 0] = 0
        alone = sample_euler(
            Recorder(), SparseTensor(feats[rows], item_coords), cond[b : b + 1], neg[b : b + 1], params
        )
        torch.testing.assert_close(both.samples.feats[rows], alone.samples.feats, atol=1e-6, rtol=1e-6)
        start += n
    assert torch.equal(both.samples.coords, coords)


def test_item_std_dense_is_unbiased_and_sparse_is_population():
    g = torch.Generator().manual_seed(4)
    dense = torch.randn(2, 3, 4, generator=g)
    torch.testing.assert_close(item_std(dense, None).flatten(), dense.flatten(1).std(dim=1))
    feats = torch.randn(7, 3, generator=g)
    std = item_std(feats, [5, 2])
    assert std.shape == (7, 1)
    torch.testing.assert_close(std[0, 0], feats[:5].std(unbiased=False))
    torch.testing.assert_close(std[6, 0], feats[5:].std(unbiased=False))


@pytest.mark.parametrize(
    "bad",
    [
        {"steps": 0},
        {"steps": 2.5},
        {"guidance_interval": (0.9, 0.6)},
        {"rescale_t": 0.0},
        {"guidance_rescale": -0.1},
    ],
)
def test_bad_params_are_refused(bad):
    with pytest.raises(EngineInputError):
        SamplerParams(**bad)


def test_official_sampler_dicts():
    spec = {
        "name": "FlowEulerGuidanceIntervalSampler",
        "args": {"sigma_min": 1e-5},
        "params": {"steps": 12, "guidance_strength": 7.5, "guidance_rescale": 0.7, "guidance_interval": [0.6, 1.0]},
    }
    params = SamplerParams.from_official(spec, steps=8, rescale_t=5.0)
    assert (params.steps, params.rescale_t, params.guidance_interval, params.sigma_min) == (8, 5.0, (0.6, 1.0), 1e-5)
    with pytest.raises(EngineInputError, match="unknown sampler settings"):
        SamplerParams.from_official(spec, cfg_scale=3.0)
    with pytest.raises(EngineInputError, match="unknown sampler"):
        SamplerParams.from_official({"name": "DDIM"})
