"""Scaled dot-product attention over packed variable-length sequences, and its dense special case.

The flow transformers pack the tokens of every batch item into one `[N, H, D]` tensor; `lens` says how
many rows each item owns. Each item attends only to its own keys, as flash-attn's varlen kernels do in
the official code (which has no CPU path). Here every sequence goes through torch's SDPA: flash or
memory-efficient kernels on CUDA, the blocked flash kernel on CPU, so no `[L, L]` score matrix is
materialised. Items of equal length run as one batched call. On the CPU in fp32 this gives the same
bits as the official classes run with per-sequence SDPA on the same machine.

"naive" computes softmax(QK^T / sqrt(D)) V explicitly in the input dtype (the official naive backend):
it materialises the scores and exists for cross-checks only.

The backend is an attribute of each attention module (`attention_backend`), set from `Runtime.attention`
with `set_attention_backend(model, name)`: there is no global switch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import EngineInputError
from engine.runtime import ATTENTION_BACKENDS


def check_backend(backend: str) -> str:
    if backend not in ATTENTION_BACKENDS:
        raise EngineInputError(f"attention backend must be one of {ATTENTION_BACKENDS}, got {backend!r}")
    return backend


def _naive(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Heads-first `[B, H, L, D]` attention with an explicit softmax (scores materialised)."""
    scores = (q @ k.transpose(-2, -1)) * (1 / math.sqrt(q.shape[-1]))  # [B, H, Lq, Lk]
    return torch.softmax(scores, dim=-1) @ v


def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "sdpa") -> torch.Tensor:
    """Attention of `q` [B, Lq, H, D] over `k`, `v` [B, Lk, H, D(v)], per batch item; returns [B, Lq, H, Dv]."""
    qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, H, L, D]
    if check_backend(backend) == "sdpa":
        out = F.scaled_dot_product_attention(qh, kh, vh)
    else:
        out = _naive(qh, kh, vh)
    return out.transpose(1, 2)  # [B, Lq, H, Dv]


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_lens: list[int],
    kv_lens: list[int],
    backend: str = "sdpa",
) -> torch.Tensor:
    """Packed attention: rows `q_lens[b]` of `q` [Nq, H, D] attend to rows `kv_lens[b]` of `k`, `v` [Nk, H, D].

    Returns [Nq, H, Dv] in the row order of `q`.
    """
    if len(q_lens) != len(kv_lens):
        raise EngineInputError(f"attention: {len(q_lens)} query sequences but {len(kv_lens)} key sequences")
    if sum(q_lens) != q.shape[0] or sum(kv_lens) != k.shape[0] or k.shape[0] != v.shape[0]:
        raise EngineInputError(
            f"attention: sequence lengths (q {sum(q_lens)}, kv {sum(kv_lens)}) do not match the packed "
            f"tensors (q {q.shape[0]}, k {k.shape[0]}, v {v.shape[0]} rows)"
        )
    if any(lq > 0 and lk == 0 for lq, lk in zip(q_lens, kv_lens, strict=True)):
        raise EngineInputError("attention: a batch item has queries but no keys to attend to")
    batch, heads = len(q_lens), q.shape[1]
    if batch == 0:
        return q.new_empty((0, heads, v.shape[-1]))
    if len(set(q_lens)) == 1 and len(set(kv_lens)) == 1:
        lq, lk = q_lens[0], kv_lens[0]
        out = dense_attention(
            q.reshape(batch, lq, heads, -1), k.reshape(batch, lk, heads, -1), v.reshape(batch, lk, heads, -1), backend
        )
        return out.reshape(batch * lq, heads, -1)
    outs, q0, k0 = [], 0, 0
    for lq, lk in zip(q_lens, kv_lens, strict=True):
        if lq > 0:
            qs, ks = slice(q0, q0 + lq), slice(k0, k0 + lk)
            outs.append(dense_attention(q[None, qs], k[None, ks], v[None, ks], backend)[0])  # [lq, H, Dv]
        q0, k0 = q0 + lq, k0 + lk
    return torch.cat(outs, dim=0)


def set_attention_backend(model: nn.Module, backend: str) -> nn.Module:
    """Point every attention module inside `model` at `backend` ("sdpa" or "naive")."""
    check_backend(backend)
    for module in model.modules():
        if hasattr(module, "attention_backend"):
            module.attention_backend = backend
    return model
