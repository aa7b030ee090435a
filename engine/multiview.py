"""Several views of one object: combine their conditions inside each sampler step.

TRELLIS-1 introduced two ways, both supported here (with one view they are the official pipeline):
- "stochastic" (default): each sampler step conditions on one view, taking the views in turn. One
  network call per step, so it costs the same as a single image; the views agree on one shape.
- "multidiffusion": every step runs each view and averages the velocities. V times the cost, smoother
  agreement when views disagree.
The unconditional branch (all-zero condition) is the same for every view, so it runs once.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from engine.errors import EngineInputError
from engine.sparse import SparseTensor

MULTI_IMAGE_MODES = ("stochastic", "multidiffusion")


class MultiViewModel:
    """Wraps a flow model: `cond` of shape `[V, L, C]` holds one condition per view."""

    def __init__(self, model: Callable, mode: str = "stochastic") -> None:
        if mode not in MULTI_IMAGE_MODES:
            raise EngineInputError(f"multi-image mode must be one of {MULTI_IMAGE_MODES}, got {mode!r}")
        self.model = model
        self.mode = mode
        self._step_of_t: dict[float, int] = {}

    def _view_for(self, t: torch.Tensor, views: int) -> int:
        key = float(t.flatten()[0])
        step = self._step_of_t.setdefault(key, len(self._step_of_t))
        return step % views

    def __call__(self, x, t: torch.Tensor, cond: torch.Tensor, **kwargs):
        views = cond.shape[0]
        if views == 1:
            return self.model(x, t, cond, **kwargs)
        if self.mode == "stochastic":
            v = self._view_for(t, views)
            return self.model(x, t, cond[v : v + 1], **kwargs)
        outs = [self.model(x, t, cond[v : v + 1], **kwargs) for v in range(views)]
        if isinstance(outs[0], SparseTensor):
            return outs[0].replace(torch.stack([o.feats for o in outs]).mean(dim=0))
        return torch.stack(outs).mean(dim=0)
