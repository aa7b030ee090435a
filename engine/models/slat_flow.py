"""SLatFlowModel and ElasticSLatFlowModel (spec §3.3): the sparse flows of the shape and texture latents.

Tokens are the SparseTensor's rows; each batch item (a contiguous block of rows) attends to itself and
to its own condition. RoPE phases come from the voxel coords and are cached on the tensor's coordinate
cache, so a sampler run computes them once per voxel set.
"""

from __future__ import annotations

import torch

from engine.errors import EngineInputError
from engine.models.rope import rope_phases
from engine.models.transformer import FlowTransformer, Sequences
from engine.sparse import SparseTensor


class SLatFlowModel(FlowTransformer):
    """Velocity model of stages 5 and 6. Constructor arguments are the official config's `args`."""

    def forward(
        self,
        x: SparseTensor,
        t: torch.Tensor,
        cond: torch.Tensor | list[torch.Tensor],
        concat_cond: SparseTensor | None = None,
    ) -> SparseTensor:
        """Velocity on x's voxels. `t` [B] is already x1000; `concat_cond` feats are appended after x's."""
        if not isinstance(x, SparseTensor):
            raise EngineInputError("the SLat flow expects a SparseTensor input")
        feats = x.feats  # [N, Cx]
        if concat_cond is not None:
            if concat_cond.feats.shape[0] != feats.shape[0]:
                raise EngineInputError(
                    f"concat_cond has {concat_cond.feats.shape[0]} rows but x has {feats.shape[0]}; "
                    "they must be the same voxels in the same order"
                )
            feats = torch.cat([feats, concat_cond.feats], dim=1)  # [N, Cin]
        if feats.shape[1] != self.in_channels:
            raise EngineInputError(f"the flow expects {self.in_channels} input channels, got {feats.shape[1]}")
        lens = x.seq_lens
        seqs = Sequences(lens, x.batch_index if len(lens) > 1 else None, self._phases(x))
        return x.replace(self.run_tokens(feats, t, cond, seqs))

    def _phases(self, x: SparseTensor) -> torch.Tensor:
        """[N, D/2] complex64, computed on the CPU (same bits on every device, no complex kernels needed
        on the accelerator) and cached with the coords."""
        key = ("rope_phases", self.head_dim, self.rope_freq)

        def build() -> torch.Tensor:
            return rope_phases(x.coords[:, 1:].cpu(), self.head_dim, self.rope_freq).to(x.device)

        return x.cache.get(key, build)


class ElasticSLatFlowModel(SLatFlowModel):
    """The training configs' name for SLatFlowModel: its extra memory controller acts only in training."""
