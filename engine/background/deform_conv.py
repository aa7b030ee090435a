"""Modulated deformable convolution (DCNv2) with the semantics of `torchvision.ops.deform_conv2d`.

BiRefNet's decoder needs it, and torchvision does not import beside every torch build (its matching
builds are several GB). The plain-PyTorch form samples each kernel tap bilinearly with `grid_sample`,
scales it by the modulation mask and contracts it with the weight in one matmul, a few taps at a time
so the sampled columns stay small. torchvision's compiled kernel is used instead when it imports.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

# Sampled columns per chunk of taps, in elements (64 Mi floats: 256 MB in fp32).
_COLUMN_BUDGET = 1 << 26


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def deform_conv2d_torch(
    input: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """`torchvision.ops.deform_conv2d` in plain PyTorch (same arguments, layouts and edge handling).

    input [B, C, H, W]; weight [O, C/groups, kh, kw]; offset [B, 2*G*kh*kw, Ho, Wo] laid out as
    (offset group, tap, (dy, dx)) with tap = i*kw + j; mask [B, G*kh*kw, Ho, Wo]. Tap (i, j) of output
    pixel (y, x) reads input at (y*sh - ph + i*dh + dy, x*sw - pw + j*dw + dx), bilinearly, with zeros
    outside the image; input channel c belongs to offset group c // (C/G).
    """
    b, c, h, w = input.shape
    out_channels, group_channels, kh, kw = weight.shape
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    taps = kh * kw
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    if c % group_channels or out_channels % (c // group_channels):
        raise ValueError(f"weight {list(weight.shape)} does not divide {c} input channels into groups")
    groups = c // group_channels
    offset_groups = offset.shape[1] // (2 * taps)
    if offset.shape != (b, 2 * offset_groups * taps, ho, wo) or offset_groups == 0 or c % offset_groups:
        raise ValueError(f"offset {list(offset.shape)} does not fit input {list(input.shape)} and a {kh}x{kw} kernel")
    if mask is not None and mask.shape != (b, offset_groups * taps, ho, wo):
        raise ValueError(f"mask {list(mask.shape)} should be {[b, offset_groups * taps, ho, wo]}")

    # Undeformed sampling positions of every tap.
    tap_y = (torch.arange(kh, device=input.device) * dh).repeat_interleave(kw)  # [K]
    tap_x = (torch.arange(kw, device=input.device) * dw).repeat(kh)  # [K]
    base_y = (torch.arange(ho, device=input.device) * sh - ph)[None, :, None] + tap_y[:, None, None]  # [K, Ho, 1]
    base_x = (torch.arange(wo, device=input.device) * sw - pw)[None, None, :] + tap_x[:, None, None]  # [K, 1, Wo]
    # Positions and sampling stay at least fp32: a 16-bit position is off by ~0.1 pixel on a 256-wide map.
    sample_dtype = torch.promote_types(input.dtype, torch.float32)
    offset = offset.view(b, offset_groups, taps, 2, ho, wo).to(sample_dtype)
    y = base_y.to(sample_dtype) + offset[:, :, :, 0]  # [B, G, K, Ho, Wo]
    x = base_x.to(sample_dtype) + offset[:, :, :, 1]
    # grid_sample(align_corners=False) reads pixel p at g = (2p + 1) / size - 1, for any size >= 1.
    grid = torch.stack(((2 * x + 1) / w - 1, (2 * y + 1) / h - 1), dim=-1)  # [B, G, K, Ho, Wo, 2]
    if mask is not None:
        mask = mask.view(b, offset_groups, 1, taps, ho * wo)
    source = input.reshape(b * offset_groups, c // offset_groups, h, w).to(sample_dtype)
    weight = weight.view(groups, out_channels // groups, group_channels, taps)

    out = input.new_zeros(b, groups, out_channels // groups, ho * wo)
    chunk = max(1, _COLUMN_BUDGET // max(1, b * c * ho * wo))
    for start in range(0, taps, chunk):
        stop = min(start + chunk, taps)
        k = stop - start
        tap_grid = grid[:, :, start:stop].reshape(b * offset_groups, k * ho, wo, 2)
        cols = F.grid_sample(source, tap_grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        cols = cols.to(input.dtype).view(b, offset_groups, c // offset_groups, k, ho * wo)  # [B, G, C/G, k, Ho*Wo]
        if mask is not None:
            cols = cols * mask[:, :, :, start:stop]
        cols = cols.reshape(b, groups, group_channels * k, ho * wo)  # channel-major, then tap
        out = out + weight[..., start:stop].reshape(groups, out_channels // groups, group_channels * k) @ cols
    out = out.view(b, out_channels, ho, wo)
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out


@functools.cache
def torchvision_kernel() -> Callable[..., torch.Tensor] | None:
    """torchvision's compiled `deform_conv2d`, or None when torchvision does not import beside this torch."""
    try:
        from torchvision.ops import deform_conv2d
    except (ImportError, RuntimeError, OSError, AttributeError) as exc:
        log.debug("torchvision deform_conv2d unavailable (%s); using the plain-PyTorch form", exc)
        return None
    return deform_conv2d


def deform_conv2d(
    input: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """torchvision's kernel when it imports, else `deform_conv2d_torch` (same result)."""
    kernel = torchvision_kernel() or deform_conv2d_torch
    return kernel(input, offset, weight, bias, _pair(stride), _pair(padding), _pair(dilation), mask)


class DeformableConv2d(nn.Module):
    """BiRefNet's DCNv2 unit: offsets and a (0, 2) modulation predicted by two convs, then a deformable conv.

    Stride 1, padding k // 2, one offset group; `regular_conv` only holds the weight.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.padding = kernel_size // 2
        taps = kernel_size * kernel_size
        self.offset_conv = nn.Conv2d(in_channels, 2 * taps, kernel_size, padding=self.padding)
        self.modulator_conv = nn.Conv2d(in_channels, taps, kernel_size, padding=self.padding)
        self.regular_conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=self.padding, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offset = self.offset_conv(x)  # [B, 2*k*k, H, W], (dy, dx) per tap
        mask = 2.0 * torch.sigmoid(self.modulator_conv(x))  # [B, k*k, H, W]
        return deform_conv2d(x, offset, self.regular_conv.weight, padding=self.padding, mask=mask)
