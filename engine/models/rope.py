"""3-D rotary position embedding of the TRELLIS.2 flow transformers (spec §3.0 "3-D RoPE").

A head of width D is read as D/2 complex numbers made of adjacent channel pairs (2j real, 2j+1
imaginary). Each axis gets `F = D // 2 // 3` frequencies; pair j is rotated by `coord * w` with the
x-block first, then y, then z. The `D/2 - 3F` pairs left over at the end are not rotated (phase 1).
"""

from __future__ import annotations

import torch

DEFAULT_ROPE_FREQ = (1.0, 10000.0)


def rope_frequencies(head_dim: int, rope_freq: tuple[float, float] = DEFAULT_ROPE_FREQ, dims: int = 3) -> torch.Tensor:
    """fp32 `[F]`: `rope_freq[0] / rope_freq[1] ** (i / F)`, evaluated in that order on the CPU."""
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head width, got {head_dim}")
    freq_dim = head_dim // 2 // dims
    exponents = torch.arange(freq_dim, dtype=torch.float32, device="cpu") / freq_dim
    return rope_freq[0] / (rope_freq[1] ** exponents)


def rope_phases(
    coords: torch.Tensor, head_dim: int, rope_freq: tuple[float, float] = DEFAULT_ROPE_FREQ
) -> torch.Tensor:
    """complex64 `[N, head_dim/2]` unit phases for integer grid coords `[N, 3]` (x, y, z)."""
    freqs = rope_frequencies(head_dim, rope_freq, coords.shape[-1]).to(coords.device)
    angles = torch.outer(coords.reshape(-1), freqs).reshape(coords.shape[0], -1)  # [N, 3F] fp32
    phases = torch.polar(torch.ones_like(angles), angles)
    pad = head_dim // 2 - phases.shape[-1]
    if pad > 0:
        ones = torch.ones(phases.shape[0], pad, device=phases.device)
        phases = torch.cat([phases, torch.polar(ones, torch.zeros_like(ones))], dim=-1)
    return phases


def grid_coords(resolution: int, device: torch.device | str | None = None) -> torch.Tensor:
    """int64 `[R^3, 3]` coords of a dense R^3 grid in x-major token order (n = x*R*R + y*R + z)."""
    axis = torch.arange(resolution, device=device)
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)


def apply_rope(x: torch.Tensor, phases: torch.Tensor) -> torch.Tensor:
    """Rotate `x` [N, H, D] by per-token `phases` [N, D/2] in complex64; returns x's dtype."""
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))  # [N, H, D/2]
    rotated = pairs * phases.unsqueeze(-2)
    return torch.view_as_real(rotated).reshape(x.shape).to(x.dtype)
