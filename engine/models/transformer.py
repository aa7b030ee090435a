"""The TRELLIS.2 flow transformer (spec §3.0, §3.1, §3.3): blocks and the shared model torso.

Both flow families run one code path on packed tokens `[N, C]`: the dense sparse-structure flow packs
its `B x R^3` grid tokens, the SLat flows use the SparseTensor's rows. `Sequences` says which rows belong
to which batch item; every item attends only to its own tokens and its own condition tokens.

Precision (spec §3.0 "Precision machinery"): only the Linear layers inside `blocks` hold the torso dtype
(bf16 in the released configs). The embedders, `adaLN_modulation`, input/output layers, the per-block
`modulation` vectors, `norm2`'s affine parameters and the RMS gammas stay fp32. Casts happen at the
points the official code casts, so a bf16 model rounds where the reference rounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import EngineInputError
from engine.models.common import LayerNorm32, cast_torso, final_layer_norm, parse_dtype
from engine.models.rope import DEFAULT_ROPE_FREQ, apply_rope
from engine.sparse.attention import varlen_attention

FREQUENCY_EMBEDDING_SIZE = 256


@dataclass(frozen=True)
class Sequences:
    """How packed tokens `[N, C]` split into batch items, and what each item attends to."""

    lens: list[int]  # tokens per item
    batch_index: torch.Tensor | None  # [N] item of each token; None when there is one item
    phases: torch.Tensor | None  # [N, head_dim/2] complex64 RoPE phases; None without RoPE
    cond_lens: list[int] = field(default_factory=list)  # condition tokens per item (set by the torso)

    def per_token(self, values: torch.Tensor) -> torch.Tensor:
        """Per-item rows `[B, C]` as rows broadcastable against the tokens `[N, C]`."""
        if values.shape[0] == 1 or self.batch_index is None:
            return values
        return values[self.batch_index]


# -- leaf modules -------------------------------------------------------------------------------


class MultiHeadRMSNorm(nn.Module):
    """Per-head L2 normalisation times a learned gamma and sqrt(head_dim), computed in fp32."""

    def __init__(self, head_dim: int, heads: int) -> None:
        super().__init__()
        self.scale = head_dim**0.5
        self.gamma = nn.Parameter(torch.ones(heads, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., H, D]
        return (F.normalize(x.float(), dim=-1) * self.gamma * self.scale).to(x.dtype)


class TimestepEmbedder(nn.Module):
    """Sinusoidal embedding of `1000 * t` (cos first, width 256) followed by an MLP, all in fp32."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(FREQUENCY_EMBEDDING_SIZE, channels), nn.SiLU(), nn.Linear(channels, channels)
        )

    @staticmethod
    def sinusoid(t: torch.Tensor, dim: int = FREQUENCY_EMBEDDING_SIZE, max_period: float = 10000.0) -> torch.Tensor:
        """`[B, dim]`; frequencies in the exp form on the CPU (the pow form differs in the last bits)."""
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device="cpu") / half)
        args = t[:, None].float() * freqs.to(t.device)[None]  # [B, half]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
        return emb

    def forward(self, t: torch.Tensor) -> torch.Tensor:  # [B] -> [B, C]
        return self.mlp(self.sinusoid(t))


class FeedForwardNet(nn.Module):
    """Linear -> GELU(tanh) -> Linear, hidden width int(C * mlp_ratio)."""

    def __init__(self, channels: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(channels * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class SelfAttention(nn.Module):
    """Multi-head self-attention within each batch item: fused qkv, QK RMS norm, 3-D RoPE."""

    def __init__(self, channels: int, heads: int, use_rope: bool, qk_rms_norm: bool) -> None:
        super().__init__()
        if channels % heads:
            raise EngineInputError(f"model_channels {channels} is not divisible by num_heads {heads}")
        self.heads, self.head_dim = heads, channels // heads
        self.use_rope, self.qk_rms_norm = use_rope, qk_rms_norm
        self.attention_backend = "sdpa"
        self.to_qkv = nn.Linear(channels, 3 * channels)
        if qk_rms_norm:
            self.q_rms_norm = MultiHeadRMSNorm(self.head_dim, heads)
            self.k_rms_norm = MultiHeadRMSNorm(self.head_dim, heads)
        self.to_out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor, seqs: Sequences) -> torch.Tensor:  # [N, C]
        q, k, v = self.to_qkv(x).reshape(x.shape[0], 3, self.heads, self.head_dim).unbind(dim=1)  # [N, H, D]
        if self.qk_rms_norm:
            q, k = self.q_rms_norm(q), self.k_rms_norm(k)
        if self.use_rope:
            q, k = apply_rope(q, seqs.phases), apply_rope(k, seqs.phases)
        h = varlen_attention(q, k, v, seqs.lens, seqs.lens, self.attention_backend)  # [N, H, D]
        return self.to_out(h.reshape(x.shape[0], -1))


class CrossAttention(nn.Module):
    """Each item's tokens attend to that item's condition tokens; QK RMS norm, no RoPE."""

    def __init__(self, channels: int, cond_channels: int, heads: int, qk_rms_norm: bool) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, channels // heads
        self.qk_rms_norm = qk_rms_norm
        self.attention_backend = "sdpa"
        self.to_q = nn.Linear(channels, channels)
        self.to_kv = nn.Linear(cond_channels, 2 * channels)
        if qk_rms_norm:
            self.q_rms_norm = MultiHeadRMSNorm(self.head_dim, heads)
            self.k_rms_norm = MultiHeadRMSNorm(self.head_dim, heads)
        self.to_out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, seqs: Sequences) -> torch.Tensor:  # [N, C], [M, Cc]
        q = self.to_q(x).reshape(x.shape[0], self.heads, self.head_dim)  # [N, H, D]
        k, v = self.to_kv(cond).reshape(cond.shape[0], 2, self.heads, self.head_dim).unbind(dim=1)  # [M, H, D]
        if self.qk_rms_norm:
            q, k = self.q_rms_norm(q), self.k_rms_norm(k)
        h = varlen_attention(q, k, v, seqs.lens, seqs.cond_lens, self.attention_backend)  # [N, H, D]
        return self.to_out(h.reshape(x.shape[0], -1))


# -- the block ----------------------------------------------------------------------------------


class ModulatedTransformerCrossBlock(nn.Module):
    """AdaLN block: modulated self-attention, plain cross-attention (affine norm2), modulated FFN."""

    def __init__(
        self,
        channels: int,
        cond_channels: int,
        heads: int,
        mlp_ratio: float,
        use_rope: bool,
        share_mod: bool,
        qk_rms_norm: bool,
        qk_rms_norm_cross: bool,
    ) -> None:
        super().__init__()
        self.share_mod = share_mod
        self.norm1 = LayerNorm32(channels, elementwise_affine=False, eps=1e-6)
        self.norm2 = LayerNorm32(channels, elementwise_affine=True, eps=1e-6)
        self.norm3 = LayerNorm32(channels, elementwise_affine=False, eps=1e-6)
        self.self_attn = SelfAttention(channels, heads, use_rope, qk_rms_norm)
        self.cross_attn = CrossAttention(channels, cond_channels, heads, qk_rms_norm_cross)
        self.mlp = FeedForwardNet(channels, mlp_ratio)
        if share_mod:
            self.modulation = nn.Parameter(torch.randn(6 * channels) / channels**0.5)
        else:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(channels, 6 * channels))

    def forward(self, x: torch.Tensor, mod: torch.Tensor, cond: torch.Tensor, seqs: Sequences) -> torch.Tensor:
        # x [N, C] torso dtype; mod [B, 6C] torso dtype; cond [M, Cc] torso dtype.
        if self.share_mod:
            # fp32 vector + 16-bit mod promotes to fp32, then one rounding (never round the vector first).
            mod = (self.modulation + mod).to(mod.dtype)
        else:
            mod = self.adaLN_modulation(mod)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.chunk(6, dim=1)  # [B, C] each
        h = self.norm1(x)
        h = h * seqs.per_token(1 + scale_msa) + seqs.per_token(shift_msa)
        h = self.self_attn(h, seqs)
        x = x + h * seqs.per_token(gate_msa)
        h = self.norm2(x)
        x = x + self.cross_attn(h, cond, seqs)
        h = self.norm3(x)
        h = h * seqs.per_token(1 + scale_mlp) + seqs.per_token(shift_mlp)
        h = self.mlp(h)
        return x + h * seqs.per_token(gate_mlp)


# -- the shared torso ---------------------------------------------------------------------------


def pack_cond(cond: torch.Tensor | list[torch.Tensor], batch: int, channels: int) -> tuple[torch.Tensor, list[int]]:
    """Condition tokens as packed rows `[M, Cc]` and per-item lengths, from `[B, L, Cc]` or a list of `[L_b, Cc]`."""
    if isinstance(cond, (list, tuple)):
        items = list(cond)
        if any(c.ndim != 2 for c in items):
            raise EngineInputError("a list of conditions must hold [L, C] tensors, one per batch item")
        packed, lens = torch.cat(items, dim=0), [c.shape[0] for c in items]
    elif isinstance(cond, torch.Tensor) and cond.ndim == 3:
        packed, lens = cond.reshape(-1, cond.shape[-1]), [cond.shape[1]] * cond.shape[0]
    else:
        raise EngineInputError("cond must be a [B, L, C] tensor or a list of [L, C] tensors")
    if len(lens) != batch:
        raise EngineInputError(f"cond has {len(lens)} batch items but the input has {batch}")
    if packed.shape[-1] != channels:
        raise EngineInputError(f"cond has {packed.shape[-1]} channels; this model expects {channels}")
    return packed, lens


class FlowTransformer(nn.Module):
    """Keys and computation shared by the dense and sparse flows: embedders, blocks, in/out layers.

    Subclasses turn their input into packed tokens and a `Sequences` value and call `run_tokens`.
    """

    def __init__(
        self,
        resolution: int,
        in_channels: int,
        model_channels: int,
        cond_channels: int,
        out_channels: int,
        num_blocks: int,
        num_heads: int | None = None,
        num_head_channels: int | None = 64,
        mlp_ratio: float = 4,
        pe_mode: str = "ape",
        rope_freq: tuple[float, float] | list[float] = DEFAULT_ROPE_FREQ,
        dtype: str | torch.dtype = "float32",
        use_checkpoint: bool = False,  # training only
        share_mod: bool = False,
        initialization: str = "vanilla",  # training only
        qk_rms_norm: bool = False,
        qk_rms_norm_cross: bool = False,
    ) -> None:
        """The official flow constructor (its `args`, with the official class defaults)."""
        super().__init__()
        if pe_mode != "rope":
            raise EngineInputError(
                f"pe_mode {pe_mode!r} is not supported: every released TRELLIS.2 flow uses 'rope'; "
                "check that the model config sets pe_mode to 'rope'"
            )
        if num_heads is None and not num_head_channels:
            raise EngineInputError("a flow config needs num_heads or num_head_channels")
        self.resolution = resolution  # the SS flow's grid edge; stored but unused by the sparse flows
        self.in_channels, self.model_channels = in_channels, model_channels
        self.cond_channels, self.out_channels = cond_channels, out_channels
        self.num_heads = num_heads or model_channels // num_head_channels
        self.head_dim = model_channels // self.num_heads
        self.rope_freq = tuple(float(f) for f in (rope_freq or DEFAULT_ROPE_FREQ))
        self.share_mod = share_mod
        self.dtype = parse_dtype(dtype)

        self.t_embedder = TimestepEmbedder(model_channels)
        if share_mod:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(model_channels, 6 * model_channels))
        self.input_layer = nn.Linear(in_channels, model_channels)
        self.blocks = nn.ModuleList(
            ModulatedTransformerCrossBlock(
                model_channels,
                cond_channels,
                self.num_heads,
                mlp_ratio,
                use_rope=True,
                share_mod=share_mod,
                qk_rms_norm=qk_rms_norm,
                qk_rms_norm_cross=qk_rms_norm_cross,
            )
            for _ in range(num_blocks)
        )
        self.out_layer = nn.Linear(model_channels, out_channels)
        self.convert_to(self.dtype)

    def convert_to(self, dtype: str | torch.dtype) -> None:
        """Cast the torso (the Linear layers inside `blocks`) to `dtype`; fp32 on the CPU path."""
        self.dtype = parse_dtype(dtype)
        cast_torso(self.blocks, self.dtype)

    def run_tokens(
        self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | list[torch.Tensor], seqs: Sequences
    ) -> torch.Tensor:
        """Velocity `[N, Cout]` (fp32) for packed input tokens `x` [N, Cin]."""
        batch = len(seqs.lens)
        t = torch.as_tensor(t, device=x.device).reshape(-1)
        if t.shape[0] not in (1, batch):
            raise EngineInputError(f"t has {t.shape[0]} entries; expected 1 or one per batch item ({batch})")
        cond, cond_lens = pack_cond(cond, batch, self.cond_channels)
        seqs = replace(seqs, cond_lens=cond_lens)

        h = self.input_layer(x).to(self.dtype)  # [N, C]
        mod = self.t_embedder(t)  # [B, C] fp32
        if self.share_mod:
            mod = self.adaLN_modulation(mod)  # [B, 6C] fp32
        mod = mod.to(self.dtype)
        cond = cond.to(self.dtype)  # [M, Cc]
        for block in self.blocks:
            h = block(h, mod, cond, seqs)
        h = final_layer_norm(h.to(x.dtype))
        return self.out_layer(h)  # [N, Cout]
