"""SparseStructureFlowModel (spec §3.1): the dense flow that denoises the `[B, 8, R, R, R]` structure latent.

The grid becomes `R^3` tokens per item in x-major order (n = x*R*R + y*R + z), runs through the shared
flow torso and is folded back. The RoPE phases of the grid are a fixed function of the config, kept in
a non-persistent buffer: the released checkpoint does not store them.
"""

from __future__ import annotations

import inspect

import torch

from engine.errors import EngineInputError
from engine.models.rope import grid_coords, rope_phases
from engine.models.transformer import FlowTransformer, Sequences


class SparseStructureFlowModel(FlowTransformer):
    """Velocity model of stage 2. Constructor arguments are the official config's `args`."""

    def __init__(self, *args, **kwargs) -> None:
        known = inspect.signature(FlowTransformer.__init__).parameters
        # the official class accepts and ignores extra keys in its config
        super().__init__(*args, **{k: v for k, v in kwargs.items() if k in known})
        # [R^3, head_dim/2] complex64. The official model builds it with the default frequencies whatever
        # its own rope_freq says (spec §3.0), so this does too.
        self.register_buffer("rope_phases", self._grid_phases(), persistent=False)

    def _grid_phases(self) -> torch.Tensor:
        probe = torch.empty(0)  # follows the device the model is being built on (meta builds stay free)
        if probe.is_meta:
            return torch.empty(self.resolution**3, self.head_dim // 2, dtype=torch.complex64)
        return rope_phases(grid_coords(self.resolution, device="cpu"), self.head_dim).to(probe.device)

    def reset_buffers(self) -> None:
        """Recompute `rope_phases` (on the CPU, like the reference) after `to_empty` materialised it."""
        phases = rope_phases(grid_coords(self.resolution, device="cpu"), self.head_dim)
        self.rope_phases = phases.to(self.rope_phases.device)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Velocity `[B, Cout, R, R, R]` for `x` [B, Cin, R, R, R], `t` [B] (already x1000), `cond` [B, L, Cc]."""
        res = self.resolution
        expected = [self.in_channels, res, res, res]
        if x.ndim != 5 or list(x.shape[1:]) != expected:
            raise EngineInputError(f"the structure flow expects x of shape [B, {', '.join(map(str, expected))}]")
        batch, tokens = x.shape[0], res**3
        h = x.reshape(batch, self.in_channels, tokens).transpose(1, 2).reshape(batch * tokens, -1)  # [B*R^3, Cin]
        phases = self.rope_phases if batch == 1 else self.rope_phases.repeat(batch, 1)  # [B*R^3, D/2]
        seqs = Sequences([tokens] * batch, None if batch == 1 else _item_index(batch, tokens, x.device), phases)
        out = self.run_tokens(h, t, cond, seqs)  # [B*R^3, Cout]
        return out.reshape(batch, tokens, -1).transpose(1, 2).reshape(batch, -1, res, res, res).contiguous()


def _item_index(batch: int, tokens: int, device: torch.device) -> torch.Tensor:
    return torch.arange(batch, device=device).repeat_interleave(tokens)  # [B*R^3]
