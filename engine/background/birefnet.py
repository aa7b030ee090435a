"""BiRefNet (Zheng et al. 2024), the dichotomous segmentation network behind `ZhengPeng7/BiRefNet` and RMBG-2.0.

A Swin-L backbone runs on the image and on its half-size copy; the concatenated features, with the
shallower maps squeezed into the deepest one as context, feed a four-stage decoder. Every decoder
stage also sees the image cut into tiles stacked on channels, and gates its output by a learned
attention map. Parameter paths equal the published safetensors keys (no prefix); the training-only
heads (`conv_ms_spvn_*`, `gdt_convs_pred_*`) exist so strict loading works, and are never called.
Inference only: BatchNorm uses running statistics, dropout is left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from engine.background.deform_conv import DeformableConv2d
from engine.background.swin import SwinTransformer


@dataclass(frozen=True)
class BiRefNetParams:
    """Widths of the network; the defaults are the published model (Swin-L, 220,176,498 parameters)."""

    embed_dim: int = 192
    depths: tuple[int, ...] = (2, 2, 18, 2)
    num_heads: tuple[int, ...] = (6, 12, 24, 48)
    window: int = 12
    mlp_ratio: float = 4.0
    dec_channels: int = 64  # inner width of every decoder block
    aspp_channels: int = 256  # width of each ASPP branch
    aspp_kernels: tuple[int, ...] = (1, 3, 7)  # deformable branches beside the 1x1 one
    ipt_channels: int = 64  # inner width of the image-tile convs
    gdt_channels: int = 16  # width of the gradient-attention gates


def resize(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Bilinear with align_corners=True, as everywhere in BiRefNet (downscaling included, no antialias)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


def image_tiles(image: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """Cut [B, 3, H, W] into a g x g grid of contiguous tiles stacked on channels (c * g^2 + row * g + col).

    g = H / size[0]; the result is resized to `size` (the identity when H is a multiple of 32).
    Not a pixel-unshuffle: a tile is a contiguous block of the image, not every g-th pixel.
    """
    b, c, h, w = image.shape
    gh, gw = h // size[0], w // size[1]
    tiles = image.reshape(b, c, gh, h // gh, gw, w // gw).permute(0, 1, 2, 4, 3, 5)  # [B, C, gh, gw, h/gh, w/gw]
    return resize(tiles.reshape(b, c * gh * gw, h // gh, w // gw), size)


class DeformUnit(nn.Module):
    """One ASPP branch: deformable conv -> BN -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.atrous_conv = DeformableConv2d(in_channels, out_channels, kernel_size)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.atrous_conv(x)))


class ASPPDeformable(nn.Module):
    """Parallel deformable branches plus global context, concatenated and projected back to the input width."""

    def __init__(self, channels: int, width: int, kernels: tuple[int, ...]) -> None:
        super().__init__()
        self.aspp1 = DeformUnit(channels, width, 1)
        self.aspp_deforms = nn.ModuleList(DeformUnit(channels, width, k) for k in kernels)
        self.global_avg_pool = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.conv1 = nn.Conv2d(width * (len(kernels) + 2), channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.aspp1(x), *(unit(x) for unit in self.aspp_deforms)]
        context = self.global_avg_pool(x).expand(-1, -1, *x.shape[-2:])  # [B, width, H, W], constant
        return F.relu(self.bn1(self.conv1(torch.cat((*branches, context), dim=1))))


class BasicDecBlk(nn.Module):
    """conv 3x3 -> BN -> ReLU -> ASPPDeformable -> conv 3x3 -> BN (no activation at the end)."""

    def __init__(self, in_channels: int, out_channels: int, params: BiRefNetParams) -> None:
        super().__init__()
        inner = params.dec_channels
        self.conv_in = nn.Conv2d(in_channels, inner, 3, padding=1)
        self.bn_in = nn.BatchNorm2d(inner)
        self.dec_att = ASPPDeformable(inner, params.aspp_channels, params.aspp_kernels)
        self.conv_out = nn.Conv2d(inner, out_channels, 3, padding=1)
        self.bn_out = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn_in(self.conv_in(x)))
        return self.bn_out(self.conv_out(self.dec_att(x)))


class SimpleConvs(nn.Module):
    """Two 3x3 convs without activation: how the image tiles enter each decoder stage."""

    def __init__(self, in_channels: int, out_channels: int, inner: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, inner, 3, padding=1)
        self.conv_out = nn.Conv2d(inner, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv1(x))


class BasicLatBlk(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _gate_convs(channels: int, width: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())


def _head(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(channels, 1, 1))


class Decoder(nn.Module):
    """Four stages from 1/32 to 1/4 resolution, then a 1x1 conv to logits at the image resolution.

    `channels` are the encoder widths (x4, x3, x2, x1), deepest first; the tile grids are 32, 16, 8, 4, 1
    per side at any input size that is a multiple of 32.
    """

    def __init__(self, channels: tuple[int, int, int, int], params: BiRefNetParams) -> None:
        super().__init__()
        ch = channels
        tiles = [ch[0] // 8, ch[0] // 8, ch[1] // 8, ch[2] // 8, ch[3] // 8]
        inner = params.ipt_channels
        self.ipt_blk5 = SimpleConvs(3 * 32**2, tiles[0], inner)
        self.ipt_blk4 = SimpleConvs(3 * 16**2, tiles[1], inner)
        self.ipt_blk3 = SimpleConvs(3 * 8**2, tiles[2], inner)
        self.ipt_blk2 = SimpleConvs(3 * 4**2, tiles[3], inner)
        self.ipt_blk1 = SimpleConvs(3, tiles[4], inner)
        self.decoder_block4 = BasicDecBlk(ch[0] + tiles[0], ch[1], params)
        self.decoder_block3 = BasicDecBlk(ch[1] + tiles[1], ch[2], params)
        self.decoder_block2 = BasicDecBlk(ch[2] + tiles[2], ch[3], params)
        self.decoder_block1 = BasicDecBlk(ch[3] + tiles[3], ch[3] // 2, params)
        self.conv_out1 = _head(ch[3] // 2 + tiles[4])
        self.lateral_block4 = BasicLatBlk(ch[1])
        self.lateral_block3 = BasicLatBlk(ch[2])
        self.lateral_block2 = BasicLatBlk(ch[3])
        gdt = params.gdt_channels
        for level, width in zip((4, 3, 2), ch[1:], strict=True):
            self.add_module(f"conv_ms_spvn_{level}", nn.Conv2d(width, 1, 1))  # training only
            self.add_module(f"gdt_convs_{level}", _gate_convs(width, gdt))
            self.add_module(f"gdt_convs_pred_{level}", _head(gdt))  # training only
            self.add_module(f"gdt_convs_attn_{level}", _head(gdt))

    def gate(self, level: int, p: torch.Tensor) -> torch.Tensor:
        """Scale a stage output by its gradient-attention map: p * sigmoid(attn(convs(p)))."""
        attn = self.get_submodule(f"gdt_convs_attn_{level}")(self.get_submodule(f"gdt_convs_{level}")(p))
        return p * torch.sigmoid(attn)  # [B, C, h, w] * [B, 1, h, w]

    def forward(
        self, image: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor, x3: torch.Tensor, x4: torch.Tensor
    ) -> torch.Tensor:
        size = x4.shape[-2:]
        p = self.gate(4, self.decoder_block4(torch.cat((x4, self.ipt_blk5(image_tiles(image, size))), dim=1)))
        size = x3.shape[-2:]
        s = resize(p, size) + self.lateral_block4(x3)
        p = self.gate(3, self.decoder_block3(torch.cat((s, self.ipt_blk4(image_tiles(image, size))), dim=1)))
        size = x2.shape[-2:]
        s = resize(p, size) + self.lateral_block3(x2)
        p = self.gate(2, self.decoder_block2(torch.cat((s, self.ipt_blk3(image_tiles(image, size))), dim=1)))
        size = x1.shape[-2:]
        s = resize(p, size) + self.lateral_block2(x1)
        p = self.decoder_block1(torch.cat((s, self.ipt_blk2(image_tiles(image, size))), dim=1))
        s = resize(p, image.shape[-2:])
        return self.conv_out1(torch.cat((s, self.ipt_blk1(image)), dim=1))  # [B, 1, H, W] logits


class BiRefNet(nn.Module):
    """Normalised image [B, 3, H, W] (H, W multiples of 32) -> foreground logits [B, 1, H, W].

    The official model returns a one-element list in eval mode; this returns the tensor itself.
    """

    def __init__(self, params: BiRefNetParams | None = None) -> None:
        super().__init__()
        params = params or BiRefNetParams()
        self.params = params
        self.bb = SwinTransformer(params.embed_dim, params.depths, params.num_heads, params.window, params.mlp_ratio)
        dims = [params.embed_dim * 2**s for s in range(len(params.depths))]
        channels = tuple(2 * d for d in reversed(dims))  # (x4, x3, x2, x1): full- and half-size features
        context = sum(channels[1:])  # x1, x2, x3 squeezed into x4
        self.squeeze_module = nn.Sequential(BasicDecBlk(channels[0] + context, channels[0], params))
        self.decoder = Decoder(channels, params)

    def encode(self, image: torch.Tensor) -> list[torch.Tensor]:
        """[x1, x2, x3, x4]: backbone features of the image and of its half-size copy, concatenated."""
        h, w = image.shape[-2:]
        full = self.bb(image)
        half = self.bb(resize(image, (h // 2, w // 2)))
        return [torch.cat((f, resize(g, f.shape[-2:])), dim=1) for f, g in zip(full, half, strict=True)]

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x1, x2, x3, x4 = self.encode(image)  # 1/4 .. 1/32 of the image
        size = x4.shape[-2:]
        x4 = torch.cat((resize(x1, size), resize(x2, size), resize(x3, size), x4), dim=1)  # context in front
        x4 = self.squeeze_module(x4)
        return self.decoder(image, x1, x2, x3, x4)
