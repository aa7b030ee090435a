"""Swin Transformer v1, the backbone BiRefNet runs on: four stages of (shifted) window attention.

Maps stay channel-last `[B, H, W, C]` inside; each stage's output is normed and returned as
`[B, C, H, W]`. A block zero-pads its map to whole windows after its first norm (the pad tokens take
part as keys and values), and shifted blocks add -100 to the logits between tokens that the cyclic
shift brought together, as in the remote code the published weights ship with.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MASK_VALUE = -100.0


def relative_position_index(window: int) -> torch.Tensor:
    """[N, N] int64 index into the (2w-1)^2 bias table for every pair of tokens in a w x w window."""
    rows, cols = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    coords = torch.stack((rows.flatten(), cols.flatten()))  # [2, N], row-major in the window
    delta = coords[:, :, None] - coords[:, None, :] + (window - 1)  # [2, N, N]
    return delta[0] * (2 * window - 1) + delta[1]


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """[B, H, W, C] -> [B * nW, window * window, C], windows and tokens in row-major order."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c).transpose(2, 3)
    return x.reshape(-1, window * window, c)


def window_merge(windows: torch.Tensor, window: int, b: int, h: int, w: int) -> torch.Tensor:
    """Inverse of `window_partition`: [B * nW, window * window, C] -> [B, H, W, C]."""
    x = windows.view(b, h // window, w // window, window, window, -1).transpose(2, 3)
    return x.reshape(b, h, w, -1)


def shift_mask(h: int, w: int, window: int, shift: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """[nW, N, N] additive mask of a shifted layer on the padded (h, w) map: 0 within a region, -100 across."""
    labels = torch.zeros(h, w, device=device)
    bands = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    for i, rows in enumerate(bands):
        for j, cols in enumerate(bands):
            labels[rows, cols] = 3 * i + j
    regions = window_partition(labels[None, :, :, None], window).squeeze(-1)  # [nW, N]
    crossing = regions[:, :, None] != regions[:, None, :]
    return crossing.to(dtype) * MASK_VALUE


class WindowAttention(nn.Module):
    """Multi-head attention inside each window, with a learned relative-position bias per head."""

    def __init__(self, dim: int, heads: int, window: int) -> None:
        super().__init__()
        self.heads = heads
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        bw, n, c = x.shape  # [B * nW, N, C]
        q, k, v = self.qkv(x).view(bw, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)  # [Bw, h, N, d]
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(n, n, self.heads).permute(2, 0, 1)  # [h, N, N]
        if mask is not None:
            nw = mask.shape[0]
            bias = (bias[None] + mask[:, None]).repeat(bw // nw, 1, 1, 1)  # [Bw, h, N, N]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))  # scale d^-0.5
        return self.proj(out.transpose(1, 2).reshape(bw, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwinBlock(nn.Module):
    def __init__(self, dim: int, heads: int, window: int, shift: int, mlp_ratio: float) -> None:
        super().__init__()
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, heads, window)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        y = F.pad(self.norm1(x), (0, 0, 0, -w % self.window, 0, -h % self.window))  # [B, Hp, Wp, C]
        hp, wp = y.shape[1:3]
        if self.shift:
            y = torch.roll(y, (-self.shift, -self.shift), dims=(1, 2))
        y = self.attn(window_partition(y, self.window), mask if self.shift else None)
        y = window_merge(y, self.window, b, hp, wp)
        if self.shift:
            y = torch.roll(y, (self.shift, self.shift), dims=(1, 2))
        x = x + y[:, :h, :w]
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """2x2 neighbours stacked on channels, normed and projected: [B, H, W, C] -> [B, H/2, W/2, 2C]."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (0, 0, 0, x.shape[2] % 2, 0, x.shape[1] % 2))
        x = torch.cat((x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]), dim=-1)
        return self.reduction(self.norm(x))


class SwinStage(nn.Module):
    """Blocks alternating plain and shifted windows, then (except in the last stage) a patch merge."""

    def __init__(self, dim: int, depth: int, heads: int, window: int, mlp_ratio: float, downsample: bool) -> None:
        super().__init__()
        self.window = window
        self.blocks = nn.ModuleList(
            SwinBlock(dim, heads, window, shift=window // 2 if i % 2 else 0, mlp_ratio=mlp_ratio) for i in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the stage output (before its norm) and the input of the next stage."""
        h, w = x.shape[1:3]
        hp, wp = -(-h // self.window) * self.window, -(-w // self.window) * self.window
        mask = shift_mask(hp, wp, self.window, self.window // 2, x.device, x.dtype)  # [nW, N, N]
        for block in self.blocks:
            x = block(x, mask)
        return x, (self.downsample(x) if self.downsample is not None else x)


class PatchEmbed(nn.Module):
    def __init__(self, dim: int, patch: int) -> None:
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(3, dim, patch, stride=patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        h, w = image.shape[-2:]
        image = F.pad(image, (0, -w % self.patch, 0, -h % self.patch))
        return self.norm(self.proj(image).permute(0, 2, 3, 1))  # [B, H/4, W/4, C]


class SwinTransformer(nn.Module):
    """[B, 3, H, W] -> four normed maps [B, C * 2^s, H / 2^(s+2), W / 2^(s+2)], s = 0..3."""

    def __init__(
        self, embed_dim: int, depths: tuple[int, ...], num_heads: tuple[int, ...], window: int, mlp_ratio: float
    ) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(embed_dim, patch=4)
        dims = [embed_dim * 2**s for s in range(len(depths))]
        self.layers = nn.ModuleList(
            SwinStage(dims[s], depths[s], num_heads[s], window, mlp_ratio, downsample=s < len(depths) - 1)
            for s in range(len(depths))
        )
        for s, dim in enumerate(dims):
            self.add_module(f"norm{s}", nn.LayerNorm(dim))

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed(image)
        outs = []
        for s, stage in enumerate(self.layers):
            y, x = stage(x)
            outs.append(self.get_submodule(f"norm{s}")(y).permute(0, 3, 1, 2).contiguous())
        return outs
