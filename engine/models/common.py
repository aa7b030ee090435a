"""Pieces every model family shares: fp32-computing norms and the official torso-precision cast."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_DTYPES = {
    "f16": torch.float16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "f32": torch.float32,
    "fp32": torch.float32,
    "float32": torch.float32,
}


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    """The official config's dtype strings (`"bfloat16"`, `"fp16"`, ...) as a torch dtype."""
    if isinstance(name, torch.dtype):
        return name
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(_DTYPES)}")
    return _DTYPES[name]


class LayerNorm32(nn.LayerNorm):
    """LayerNorm computed in fp32 and returned in the input dtype (official `LayerNorm32`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


class ChannelLayerNorm32(LayerNorm32):
    """LayerNorm32 over dim 1 of a dense `[B, C, ...]` tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = x.ndim
        x = x.permute(0, *range(2, dims), 1)
        x = super().forward(x)
        return x.permute(0, dims - 1, *range(1, dims - 1))


def final_layer_norm(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """The affine-free fp32 layer norm every flow and VAE applies before its output layer."""
    return F.layer_norm(x, x.shape[-1:], eps=eps)


# Module types whose parameters follow the torso dtype (official `convert_module_to_f16`).
# Other modules (norms, RMS gammas, modulation vectors) keep fp32. Sparse convs opt in with
# a class attribute `follows_torso_dtype = True`.
_TORSO_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def cast_torso(stack: nn.Module, dtype: torch.dtype) -> None:
    """Cast the Linear/Conv weights inside `stack` to `dtype`, leaving everything else as it is."""
    for module in stack.modules():
        if isinstance(module, _TORSO_TYPES) or getattr(module, "follows_torso_dtype", False):
            for param in module.parameters(recurse=False):
                param.data = param.data.to(dtype)
