"""The sparse-conv U-Net VAE ("next_dc_f16c32", spec 3.6): texture encoder/decoder and the shared blocks.

Levels of ConvNeXt blocks joined by resampling res-blocks: Spatial2Channel going down (encoder),
Channel2Spatial going up (decoder). A decoder level's subdivision decides which of each voxel's 8
children exist: predicted (`pred_subdiv`, shape decoder) or given by the shape decoder's logits
(`guide_subs`, texture decoder), aligned by row. Parameter paths are the official checkpoint keys.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import EngineInputError
from engine.models.common import LayerNorm32, cast_torso, final_layer_norm
from engine.sparse.conv import SparseSubMConv3d
from engine.sparse.resample import channel_to_spatial_map, spatial_to_channel_map
from engine.sparse.tensor import SparseTensor


def _linear(layer: nn.Module, x: SparseTensor) -> SparseTensor:
    """The official SparseLinear: a Linear on the feats."""
    return x.replace(layer(x.feats))


def _norm_silu(norm: nn.Module, x: SparseTensor) -> SparseTensor:
    return x.replace(F.silu(norm(x.feats)))


# -- blocks --------------------------------------------------------------------------------------
class SparseConvNeXtBlock3d(nn.Module):
    """`x + mlp(norm(conv(x)))`, same voxels, same width."""

    def __init__(self, channels: int, mlp_ratio: float = 4.0, use_checkpoint: bool = False) -> None:
        super().__init__()
        hidden = int(channels * mlp_ratio)
        self.norm = LayerNorm32(channels, elementwise_affine=True, eps=1e-6)
        self.conv = SparseSubMConv3d(channels, channels, 3)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.SiLU(), nn.Linear(hidden, channels))

    def forward(self, x: SparseTensor) -> SparseTensor:
        h = self.conv(x).feats  # [N, C]
        return x.replace(self.mlp(self.norm(h)) + x.feats)


class SparseResBlockS2C3d(nn.Module):
    """Down-block: halve the resolution, Cin -> Cout; the skip averages consecutive groups of channels."""

    def __init__(self, channels: int, out_channels: int, use_checkpoint: bool = False) -> None:
        super().__init__()
        if out_channels % 8 or (8 * channels) % out_channels:
            raise ValueError(f"SparseResBlockS2C3d needs 8 | Cout and Cout | 8*Cin, got {channels} -> {out_channels}")
        self.channels = channels
        self.out_channels = out_channels
        self.norm1 = LayerNorm32(channels, elementwise_affine=True, eps=1e-6)
        self.norm2 = LayerNorm32(out_channels, elementwise_affine=False, eps=1e-6)
        self.conv1 = SparseSubMConv3d(channels, out_channels // 8, 3)
        self.conv2 = SparseSubMConv3d(out_channels, out_channels, 3)

    def forward(self, x: SparseTensor) -> SparseTensor:
        down = spatial_to_channel_map(x)
        h = down.to_channels(self.conv1(_norm_silu(self.norm1, x)))  # [M, Cout]
        h = self.conv2(_norm_silu(self.norm2, h))
        skip = down.to_channels(x).feats  # [M, 8 Cin]
        skip = skip.reshape(skip.shape[0], self.out_channels, -1).mean(dim=-1)  # [M, Cout]
        return h.replace(h.feats + skip)


class SparseResBlockC2S3d(nn.Module):
    """Up-block: double the resolution on the voxels a subdivision keeps, Cin -> Cout.

    Returns `(h, subdiv_logits)` when it predicts its subdivision, else `h`. The skip gives each child its
    slot's Cin/8 parent channels, each repeated Cout // (Cin/8) times consecutively.
    """

    def __init__(self, channels: int, out_channels: int, use_checkpoint: bool = False, pred_subdiv: bool = True):
        super().__init__()
        if channels % 8 or out_channels % (channels // 8):
            raise ValueError(f"SparseResBlockC2S3d needs 8 | Cin and Cin/8 | Cout, got {channels} -> {out_channels}")
        self.channels = channels
        self.out_channels = out_channels
        self.pred_subdiv = pred_subdiv
        self.norm1 = LayerNorm32(channels, elementwise_affine=True, eps=1e-6)
        self.norm2 = LayerNorm32(out_channels, elementwise_affine=False, eps=1e-6)
        self.conv1 = SparseSubMConv3d(channels, out_channels * 8, 3)
        self.conv2 = SparseSubMConv3d(out_channels, out_channels, 3)
        if pred_subdiv:
            self.to_subdiv = nn.Linear(channels, 8)

    def forward(self, x: SparseTensor, subdiv: SparseTensor | None = None):
        if self.pred_subdiv:
            subdiv = _linear(self.to_subdiv, x)  # [N, 8] logits from the raw block input
        if subdiv is not None and subdiv.feats.shape != (x.feats.shape[0], 8):
            raise EngineInputError(
                f"subdivision logits must be [{x.feats.shape[0]}, 8] (one row per voxel of this level), "
                f"got {list(subdiv.feats.shape)}"
            )
        up = channel_to_spatial_map(x, None if subdiv is None else subdiv.feats > 0)
        h = up.to_spatial(self.conv1(_norm_silu(self.norm1, x)))  # [N', Cout]
        h = self.conv2(_norm_silu(self.norm2, h))
        skip = up.to_spatial(x).feats.repeat_interleave(self.out_channels // (self.channels // 8), dim=1)
        h = h.replace(h.feats + skip)
        return (h, subdiv) if self.pred_subdiv else h


_BLOCKS = {"SparseConvNeXtBlock3d": SparseConvNeXtBlock3d}
_DOWN_BLOCKS = {"SparseResBlockS2C3d": SparseResBlockS2C3d}
_UP_BLOCKS = {"SparseResBlockC2S3d": SparseResBlockC2S3d}


def _block_class(table: dict[str, type[nn.Module]], name: str) -> type[nn.Module]:
    if name not in table:
        raise EngineInputError(f"unsupported SC-VAE block type {name!r}; supported: {', '.join(table)}")
    return table[name]


def _torso_dtype(use_fp16: bool) -> torch.dtype:
    return torch.float16 if use_fp16 else torch.float32


# -- models --------------------------------------------------------------------------------------
class SparseUnetVaeEncoder(nn.Module):
    """Voxels `[N, in]` at full resolution -> latent `[M, latent]` 2^(L-1) times coarser."""

    def __init__(
        self,
        in_channels: int,
        model_channels: list[int],
        latent_channels: int,
        num_blocks: list[int],
        block_type: list[str],
        down_block_type: list[str],
        block_args: list[dict[str, Any]],
        use_fp16: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.latent_channels = latent_channels
        self.input_layer = nn.Linear(in_channels, model_channels[0])
        self.to_latent = nn.Linear(model_channels[-1], 2 * latent_channels)
        self.blocks = nn.ModuleList()
        for i, count in enumerate(num_blocks):
            level = nn.ModuleList(
                _block_class(_BLOCKS, block_type[i])(model_channels[i], **block_args[i]) for _ in range(count)
            )
            if i < len(num_blocks) - 1:
                down = _block_class(_DOWN_BLOCKS, down_block_type[i])
                level.append(down(model_channels[i], model_channels[i + 1], **block_args[i]))
            self.blocks.append(level)
        self.dtype = torch.float32
        self.set_torso_dtype(_torso_dtype(use_fp16))

    def set_torso_dtype(self, dtype: torch.dtype) -> None:
        """Run the block stack in `dtype` (official `use_fp16`: float16); the layers outside stay fp32."""
        self.dtype = dtype
        cast_torso(self.blocks, dtype)

    def forward(
        self,
        x: SparseTensor,
        sample_posterior: bool = False,
        return_raw: bool = False,
        generator: torch.Generator | None = None,
    ):
        h = _linear(self.input_layer, x).type(self.dtype)
        for level in self.blocks:
            for block in level:
                h = block(h)
        h = h.type(x.dtype)
        h = _linear(self.to_latent, h.replace(final_layer_norm(h.feats)))  # [M, 2 * latent]
        mean, logvar = h.feats.chunk(2, dim=-1)
        z = mean
        if sample_posterior:
            z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=generator, device=mean.device)
        z = h.replace(z)
        return (z, mean, logvar) if return_raw else z


class SparseUnetVaeDecoder(nn.Module):
    """Latent `[N, latent]` -> `[N', out]` on voxels 2^(L-1) times finer, rows in native C2S order."""

    def __init__(
        self,
        out_channels: int,
        model_channels: list[int],
        latent_channels: int,
        num_blocks: list[int],
        block_type: list[str],
        up_block_type: list[str],
        block_args: list[dict[str, Any]],
        use_fp16: bool = False,
        pred_subdiv: bool = True,
    ) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.pred_subdiv = pred_subdiv
        self.output_layer = nn.Linear(model_channels[-1], out_channels)
        self.from_latent = nn.Linear(latent_channels, model_channels[0])
        self.blocks = nn.ModuleList()
        for i, count in enumerate(num_blocks):
            level = nn.ModuleList(
                _block_class(_BLOCKS, block_type[i])(model_channels[i], **block_args[i]) for _ in range(count)
            )
            if i < len(num_blocks) - 1:
                up = _block_class(_UP_BLOCKS, up_block_type[i])
                level.append(up(model_channels[i], model_channels[i + 1], pred_subdiv=pred_subdiv, **block_args[i]))
            self.blocks.append(level)
        self.dtype = torch.float32
        self.set_torso_dtype(_torso_dtype(use_fp16))

    def set_torso_dtype(self, dtype: torch.dtype) -> None:
        """Run the block stack in `dtype` (official `use_fp16`: float16); the layers outside stay fp32."""
        self.dtype = dtype
        cast_torso(self.blocks, dtype)

    def _level(self, i: int, h: SparseTensor, guide: SparseTensor | None) -> tuple[SparseTensor, SparseTensor | None]:
        """Run level i: its ConvNeXt blocks, then (all but the last level) its up-block, which is last."""
        level = self.blocks[i]
        has_up = i < len(self.blocks) - 1
        for block in level[: len(level) - 1] if has_up else level:
            h = block(h)
        if not has_up:
            return h, None
        if self.pred_subdiv:
            return level[-1](h)
        return level[-1](h, guide), None

    def forward(self, x: SparseTensor, guide_subs: list[SparseTensor] | None = None, return_subs: bool = False):
        if guide_subs is not None and self.pred_subdiv:
            raise EngineInputError("guide_subs are for decoders that do not predict their subdivisions")
        if return_subs and not self.pred_subdiv:
            raise EngineInputError("return_subs needs a decoder that predicts its subdivisions (pred_subdiv=True)")
        if guide_subs is not None and len(guide_subs) != len(self.blocks) - 1:
            raise EngineInputError(f"expected {len(self.blocks) - 1} guide subdivisions, got {len(guide_subs)}")
        h = _linear(self.from_latent, x).type(self.dtype)
        subs = []
        for i in range(len(self.blocks)):
            h, sub = self._level(i, h, guide_subs[i] if guide_subs is not None and i < len(guide_subs) else None)
            if sub is not None:
                subs.append(sub)
        h = h.type(x.dtype)
        h = _linear(self.output_layer, h.replace(final_layer_norm(h.feats)))
        return (h, subs) if return_subs else h

    def upsample(self, x: SparseTensor, upsample_times: int) -> torch.Tensor | None:
        """int32 coords `[N', 4]` (native order) at the start of level `upsample_times`; None past the last."""
        if not self.pred_subdiv:
            raise EngineInputError("upsample needs a decoder that predicts its subdivisions (pred_subdiv=True)")
        if upsample_times >= len(self.blocks):
            return None
        h = _linear(self.from_latent, x).type(self.dtype)
        for i in range(len(self.blocks)):
            if i == upsample_times:
                return h.coords
            h, _ = self._level(i, h, None)
        return None


__all__ = [
    "SparseConvNeXtBlock3d",
    "SparseResBlockC2S3d",
    "SparseResBlockS2C3d",
    "SparseUnetVaeDecoder",
    "SparseUnetVaeEncoder",
]
