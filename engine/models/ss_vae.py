"""The sparse-structure VAE (TRELLIS-1 weights, spec 3.2): dense 3-D conv nets over the occupancy grid.

The decoder turns the SS latent `[B, 8, 16, 16, 16]` into occupancy logits `[B, 1, 64, 64, 64]`; the
encoder (unused at inference) maps occupancy back to the latent. Dense volumes are `[B, C, X, Y, Z]`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import EngineInputError
from engine.models.common import ChannelLayerNorm32, cast_torso


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in fp32, returned in the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


def norm_layer(norm_type: str, channels: int) -> nn.Module:
    if norm_type == "layer":
        return ChannelLayerNorm32(channels)  # affine, eps 1e-5
    if norm_type == "group":
        return GroupNorm32(32, channels)
    raise EngineInputError(f"norm_type must be 'layer' or 'group', got {norm_type!r}")


def pixel_shuffle_3d(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """`[B, C*f^3, X, Y, Z]` -> `[B, C, fX, fY, fZ]`: channel `c*f^3 + (a*f + b)*f + d` -> `(fx+a, fy+b, fz+d)`."""
    b, c, sx, sy, sz = x.shape
    out = c // factor**3
    x = x.reshape(b, out, factor, factor, factor, sx, sy, sz)
    x = x.permute(0, 1, 5, 2, 6, 3, 7, 4)  # [B, C, X, a, Y, b, Z, d]
    return x.reshape(b, out, sx * factor, sy * factor, sz * factor)


class ResBlock3d(nn.Module):
    """`x + conv2(silu(norm2(conv1(silu(norm1(x))))))` with affine channel layer norms."""

    def __init__(self, channels: int, out_channels: int | None = None) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.norm1 = ChannelLayerNorm32(channels)
        self.norm2 = ChannelLayerNorm32(out_channels)
        self.conv1 = nn.Conv3d(channels, out_channels, 3, padding=1)
        self.conv2 = nn.Conv3d(out_channels, out_channels, 3, padding=1)
        self.skip_connection = nn.Conv3d(channels, out_channels, 1) if channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.skip_connection(x)


class DownsampleBlock3d(nn.Module):
    """Strided 2x2x2 conv: half the resolution."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, 2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class UpsampleBlock3d(nn.Module):
    """Conv to 8x the channels, then a 3-D pixel shuffle: double the resolution."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels * 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pixel_shuffle_3d(self.conv(x), 2)


def _check_volume(x: torch.Tensor, channels: int, what: str) -> None:
    if x.ndim != 5 or x.shape[1] != channels:
        raise EngineInputError(f"{what} expects a dense volume [B, {channels}, X, Y, Z], got {list(x.shape)}")


class SparseStructureEncoder(nn.Module):
    """Occupancy `[B, in, R, R, R]` -> latent mean/logvar at R / 2^(L-1)."""

    def __init__(
        self,
        in_channels: int,
        latent_channels: int,
        num_res_blocks: int,
        channels: list[int],
        num_res_blocks_middle: int = 2,
        norm_type: str = "layer",
        use_fp16: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.input_layer = nn.Conv3d(in_channels, channels[0], 3, padding=1)
        self.blocks = nn.ModuleList()
        for i, ch in enumerate(channels):
            self.blocks.extend(ResBlock3d(ch) for _ in range(num_res_blocks))
            if i < len(channels) - 1:
                self.blocks.append(DownsampleBlock3d(ch, channels[i + 1]))
        self.middle_block = nn.Sequential(*(ResBlock3d(channels[-1]) for _ in range(num_res_blocks_middle)))
        self.out_layer = nn.Sequential(
            norm_layer(norm_type, channels[-1]), nn.SiLU(), nn.Conv3d(channels[-1], latent_channels * 2, 3, padding=1)
        )
        self.dtype = torch.float32
        self.set_torso_dtype(torch.float16 if use_fp16 else torch.float32)

    def set_torso_dtype(self, dtype: torch.dtype) -> None:
        """Run `blocks` and `middle_block` in `dtype` (official `use_fp16`: float16)."""
        self.dtype = dtype
        cast_torso(self.blocks, dtype)
        cast_torso(self.middle_block, dtype)

    def forward(
        self,
        x: torch.Tensor,
        sample_posterior: bool = False,
        return_raw: bool = False,
        generator: torch.Generator | None = None,
    ):
        _check_volume(x, self.in_channels, "SparseStructureEncoder")
        h = self.input_layer(x).to(self.dtype)
        for block in self.blocks:
            h = block(h)
        h = self.middle_block(h)
        h = self.out_layer(h.to(x.dtype))
        mean, logvar = h.chunk(2, dim=1)
        z = mean
        if sample_posterior:
            z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=generator, device=mean.device)
        return (z, mean, logvar) if return_raw else z


class SparseStructureDecoder(nn.Module):
    """Latent `[B, latent, R, R, R]` -> occupancy logits at R * 2^(L-1)."""

    def __init__(
        self,
        out_channels: int,
        latent_channels: int,
        num_res_blocks: int,
        channels: list[int],
        num_res_blocks_middle: int = 2,
        norm_type: str = "layer",
        use_fp16: bool = False,
    ) -> None:
        super().__init__()
        self.latent_channels = latent_channels
        self.input_layer = nn.Conv3d(latent_channels, channels[0], 3, padding=1)
        self.middle_block = nn.Sequential(*(ResBlock3d(channels[0]) for _ in range(num_res_blocks_middle)))
        self.blocks = nn.ModuleList()
        for i, ch in enumerate(channels):
            self.blocks.extend(ResBlock3d(ch) for _ in range(num_res_blocks))
            if i < len(channels) - 1:
                self.blocks.append(UpsampleBlock3d(ch, channels[i + 1]))
        self.out_layer = nn.Sequential(
            norm_layer(norm_type, channels[-1]), nn.SiLU(), nn.Conv3d(channels[-1], out_channels, 3, padding=1)
        )
        self.dtype = torch.float32
        self.set_torso_dtype(torch.float16 if use_fp16 else torch.float32)

    def set_torso_dtype(self, dtype: torch.dtype) -> None:
        """Run `blocks` and `middle_block` in `dtype` (official `use_fp16`: float16)."""
        self.dtype = dtype
        cast_torso(self.blocks, dtype)
        cast_torso(self.middle_block, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_volume(x, self.latent_channels, "SparseStructureDecoder")
        h = self.input_layer(x).to(self.dtype)
        h = self.middle_block(h)
        for block in self.blocks:
            h = block(h)
        return self.out_layer(h.to(x.dtype))


__all__ = ["SparseStructureDecoder", "SparseStructureEncoder", "pixel_shuffle_3d"]
