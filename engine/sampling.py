"""The rectified-flow Euler sampler of TRELLIS.2 (spec §4): rescaled time grid, CFG with a guidance
interval, CFG-rescale, and a per-step callback that also serves progress bars and cancellation.

Flow convention: `x_t = (1 - t) x_0 + (s + (1 - s) t) eps` with s = sigma_min, t = 1 is noise, and the
network predicts the velocity `v = dx_t/dt`. Everything below is written as small functions on plain
tensors (a SparseTensor's feats); `sample_euler` strings them together. Scalar coefficients are Python
floats (float64) applied to fp32 tensors in the reference's order, so results match it bit for bit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from engine.errors import Cancelled, EngineInputError
from engine.sparse import SparseTensor

log = logging.getLogger(__name__)

Latent = torch.Tensor | SparseTensor
# callback(stage, step, total, preview): after each step; `step` counts completed steps (1..total) and
# `preview` is that step's x0 prediction (same type as the noise).
StepCallback = Callable[[str, int, int, Latent], None]

# Official sampler classes -> whether they guide. All three stages of the image pipeline use the first.
SAMPLER_NAMES = ("FlowEulerGuidanceIntervalSampler", "FlowEulerCfgSampler", "FlowEulerSampler")


@dataclass(frozen=True)
class SamplerParams:
    """One stage's sampler settings (class defaults are the official class defaults)."""

    steps: int = 50
    rescale_t: float = 1.0
    guidance_strength: float = 3.0
    guidance_rescale: float = 0.0
    guidance_interval: tuple[float, float] = (0.0, 1.0)
    sigma_min: float = 1e-5

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, (int, np.integer)) or self.steps < 1:
            raise EngineInputError(f"sampler steps must be a whole number of at least 1, got {self.steps!r}")
        if not self.rescale_t > 0:
            raise EngineInputError(f"rescale_t must be positive, got {self.rescale_t!r}")
        if not 0 <= self.sigma_min < 1:
            raise EngineInputError(f"sigma_min must lie in [0, 1), got {self.sigma_min!r}")
        if not self.guidance_rescale >= 0:
            raise EngineInputError(f"guidance_rescale must be 0 or more, got {self.guidance_rescale!r}")
        interval = tuple(float(v) for v in self.guidance_interval)
        if len(interval) != 2 or not interval[0] <= interval[1]:
            raise EngineInputError(
                f"guidance_interval must be [low, high] with low <= high, got {list(self.guidance_interval)}"
            )
        object.__setattr__(self, "steps", int(self.steps))
        object.__setattr__(self, "guidance_interval", interval)

    @classmethod
    def from_official(cls, spec: dict[str, Any], **overrides: Any) -> SamplerParams:
        """From pipeline.json's `{"name", "args": {"sigma_min"}, "params": {...}}`, with per-run overrides."""
        name = spec.get("name", SAMPLER_NAMES[0])
        if name not in SAMPLER_NAMES:
            raise EngineInputError(f"unknown sampler {name!r}; known samplers: {', '.join(SAMPLER_NAMES)}")
        params = {**spec.get("params", {}), **overrides}
        known = set(cls.__dataclass_fields__) - {"sigma_min"}
        unknown = sorted(set(params) - known)
        if unknown:
            raise EngineInputError(f"unknown sampler settings {unknown}; known ones: {sorted(known)}")
        if name == "FlowEulerSampler":
            params["guidance_strength"] = 1.0
        if name == "FlowEulerCfgSampler":
            params["guidance_interval"] = (0.0, 1.0)
        return cls(sigma_min=spec.get("args", {}).get("sigma_min", 1e-5), **params)

    def merged(self, overrides: dict[str, Any] | None) -> SamplerParams:
        """The official `{**pipeline_json_params, **run_overrides}` merge, validated."""
        if not overrides:
            return self
        known = set(self.__dataclass_fields__) - {"sigma_min"}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise EngineInputError(f"unknown sampler settings {unknown}; known ones: {sorted(known)}")
        return replace(self, **dict(overrides))


@dataclass
class SampleResult:
    """The official `sample()` outputs: final state, the state after each step, each step's x0 prediction."""

    samples: Latent
    pred_x_t: list[Latent] = field(default_factory=list)
    pred_x_0: list[Latent] = field(default_factory=list)
    t_seq: list[float] = field(default_factory=list)


# -- the pieces -----------------------------------------------------------------------------------


def time_schedule(steps: int, rescale_t: float) -> list[float]:
    """`steps + 1` float64 times from 1 to 0: `r s / (1 + (r - 1) s)` on `s = linspace(1, 0)`."""
    s = np.linspace(1, 0, steps + 1)
    return (rescale_t * s / (1 + (rescale_t - 1) * s)).tolist()


def guidance_active(t: float, interval: tuple[float, float]) -> bool:
    """CFG applies at t inside the interval, both ends included (t = 0.6 and 0.9 do occur)."""
    return interval[0] <= t <= interval[1]


def x0_from_velocity(x: torch.Tensor, t: float, v: torch.Tensor, sigma_min: float) -> torch.Tensor:
    return (1 - sigma_min) * x - (sigma_min + (1 - sigma_min) * t) * v


def velocity_from_x0(x: torch.Tensor, t: float, x0: torch.Tensor, sigma_min: float) -> torch.Tensor:
    return ((1 - sigma_min) * x - x0) / (sigma_min + (1 - sigma_min) * t)


def cfg_combine(v_cond: torch.Tensor, v_uncond: torch.Tensor, strength: float) -> torch.Tensor:
    """`w v_c + (1 - w) v_u`, in this order (the reference's rounding)."""
    return strength * v_cond + (1 - strength) * v_uncond


def item_std(values: torch.Tensor, lens: list[int] | None) -> torch.Tensor:
    """Std of each batch item, broadcastable against `values`.

    Dense `[B, ...]`: unbiased std over all non-batch dims -> [B, 1, ...]. Packed sparse feats `[N, C]`
    with per-item row counts `lens`: population std via per-token channel means, then a segment mean
    per item (the reference's summation order) -> one row per token, [N, 1].
    """
    if lens is None:
        return values.std(dim=list(range(1, values.ndim)), keepdim=True)
    lengths = torch.tensor(lens, device=values.device)
    mean = torch.segment_reduce(values.mean(dim=1, keepdim=True), "mean", lengths=lengths)  # [B, 1]
    mean_sq = torch.segment_reduce((values**2).mean(dim=1, keepdim=True), "mean", lengths=lengths)  # [B, 1]
    std = (mean_sq - mean**2).sqrt()
    return std.repeat_interleave(lengths, dim=0)  # [N, 1]


def cfg_rescale(
    x: torch.Tensor,
    t: float,
    v_cond: torch.Tensor,
    v: torch.Tensor,
    rescale: float,
    sigma_min: float,
    lens: list[int] | None = None,
) -> torch.Tensor:
    """Pull the guided x0's per-item std back towards the conditional one's; returns the new velocity."""
    x0_cond = x0_from_velocity(x, t, v_cond, sigma_min)
    x0_guided = x0_from_velocity(x, t, v, sigma_min)
    ratio = item_std(x0_cond, lens) / item_std(x0_guided, lens)
    x0 = rescale * (x0_guided * ratio) + (1 - rescale) * x0_guided
    return velocity_from_x0(x, t, x0, sigma_min)


def euler_step(x: torch.Tensor, t: float, t_prev: float, v: torch.Tensor) -> torch.Tensor:
    return x - (t - t_prev) * v


# -- the loop -------------------------------------------------------------------------------------


def _check_cancel(cancel: Any) -> None:
    if cancel is None:
        return
    stop = cancel() if callable(cancel) else getattr(cancel, "cancelled", False)
    if stop:
        raise Cancelled("generation was cancelled")


def _velocity(model: Callable, x: Latent, t: float, cond: Any, model_kwargs: dict[str, Any]) -> torch.Tensor:
    """One network call at time t (the network sees 1000 t as fp32, one entry per batch item)."""
    batch = x.batch_size if isinstance(x, SparseTensor) else x.shape[0]
    device = x.device
    t_in = torch.tensor([1000 * t] * batch, device=device, dtype=torch.float32)
    out = model(x, t_in, cond, **model_kwargs)
    return out.feats if isinstance(out, SparseTensor) else out


def guided_velocity(
    model: Callable,
    x: Latent,
    t: float,
    cond: Any,
    neg_cond: Any,
    params: SamplerParams,
    model_kwargs: dict[str, Any],
) -> torch.Tensor:
    """The step's velocity: conditional only outside the guidance interval, else CFG (+ rescale)."""
    strength = params.guidance_strength if guidance_active(t, params.guidance_interval) else 1.0
    if strength == 1:
        return _velocity(model, x, t, cond, model_kwargs)
    if strength == 0:
        return _velocity(model, x, t, neg_cond, model_kwargs)
    v_cond = _velocity(model, x, t, cond, model_kwargs)
    v_uncond = _velocity(model, x, t, neg_cond, model_kwargs)
    v = cfg_combine(v_cond, v_uncond, strength)
    if params.guidance_rescale > 0:
        values, lens = (x.feats, x.seq_lens) if isinstance(x, SparseTensor) else (x, None)
        v = cfg_rescale(values, t, v_cond, v, params.guidance_rescale, params.sigma_min, lens)
    return v


def sample_euler(
    model: Callable,
    noise: Latent,
    cond: Any,
    neg_cond: Any,
    params: SamplerParams,
    *,
    model_kwargs: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    cancel: Callable[[], bool] | Any | None = None,
    stage: str = "sample",
) -> SampleResult:
    """Integrate from `noise` at t = 1 to t = 0 (`FlowEulerGuidanceIntervalSampler.sample`).

    `model(x, t, cond, **model_kwargs)` returns the velocity (same type as `x`). `cancel` is a callable
    returning True, or an object whose `.cancelled` becomes True; it is checked before every step and
    raises `Cancelled`. Sparse results keep the noise's coords and row order.
    """
    if cancel is not None and not callable(cancel) and not hasattr(cancel, "cancelled"):
        raise EngineInputError("cancel must be a callable returning True to stop, or an object with .cancelled")
    model_kwargs = model_kwargs or {}
    sparse = isinstance(noise, SparseTensor)
    wrap = noise.replace if sparse else (lambda values: values)
    x = noise.feats if sparse else noise
    t_seq = time_schedule(params.steps, params.rescale_t)
    result = SampleResult(samples=noise, t_seq=t_seq)
    log.debug("%s: %d steps, t from %.4f to %.4f", stage, params.steps, t_seq[0], t_seq[-1])
    with torch.no_grad():
        for step, (t, t_prev) in enumerate(zip(t_seq[:-1], t_seq[1:], strict=True)):
            _check_cancel(cancel)
            v = guided_velocity(model, wrap(x), t, cond, neg_cond, params, model_kwargs)
            pred_x0 = wrap(x0_from_velocity(x, t, v, params.sigma_min))
            x = euler_step(x, t, t_prev, v)
            result.pred_x_t.append(wrap(x))
            result.pred_x_0.append(pred_x0)
            if callback is not None:
                callback(stage, step + 1, params.steps, pred_x0)
    result.samples = result.pred_x_t[-1]
    return result
