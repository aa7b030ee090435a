"""Packed variable-length attention: each batch item attends to its own keys only, on either backend."""

import math

import pytest
import torch

from engine.errors import EngineInputError
from engine.models import build_model
from engine.sparse import SparseTensor
from engine.sparse.attention import dense_attention, set_attention_backend, varlen_attention


def _reference(q, k, v, q_lens, kv_lens):
    """Per-item softmax(q k^T / sqrt(D)) v in float64, written out independently."""
    outs, q0, k0 = [], 0, 0
    for lq, lk in zip(q_lens, kv_lens, strict=True):
        qi = q[q0 : q0 + lq].double().transpose(0, 1)  # [H, lq, D]
        ki = k[k0 : k0 + lk].double().transpose(0, 1)
        vi = v[k0 : k0 + lk].double().transpose(0, 1)
        weights = torch.softmax(qi @ ki.transpose(1, 2) / math.sqrt(q.shape[-1]), dim=-1)
        outs.append((weights @ vi).transpose(0, 1))  # [lq, H, Dv]
        q0, k0 = q0 + lq, k0 + lk
    return torch.cat(outs).float()


def _packed(lens, heads=3, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(sum(lens), heads, dim, generator=g)


@pytest.mark.parametrize("backend", ["sdpa", "naive"])
@pytest.mark.parametrize(
    ("q_lens", "kv_lens"),
    [([7, 13, 2], [7, 13, 2]), ([7, 13, 2], [5, 5, 5]), ([4, 4], [6, 6]), ([0, 9, 3], [0, 9, 3]), ([11], [11])],
)
def test_varlen_attention_equals_per_item_attention(backend, q_lens, kv_lens):
    q, k, v = _packed(q_lens, seed=1), _packed(kv_lens, seed=2), _packed(kv_lens, seed=3)
    out = varlen_attention(q, k, v, q_lens, kv_lens, backend)
    assert out.shape == q.shape
    torch.testing.assert_close(out, _reference(q, k, v, q_lens, kv_lens), atol=2e-6, rtol=1e-5)


def test_items_do_not_see_each_other():
    lens = [6, 10]
    q, k, v = _packed(lens, seed=4), _packed(lens, seed=5), _packed(lens, seed=6)
    base = varlen_attention(q, k, v, lens, lens)
    k2, v2 = k.clone(), v.clone()
    k2[6:] += 3.0
    v2[6:] -= 1.0
    moved = varlen_attention(q, k2, v2, lens, lens)
    assert torch.equal(moved[:6], base[:6]), "item 0 changed when only item 1's keys changed"
    assert not torch.allclose(moved[6:], base[6:])


def test_sdpa_and_naive_backends_agree_on_long_sequences():
    lens = [300, 170]
    q, k, v = (_packed(lens, heads=2, dim=32, seed=s) * 2 for s in (7, 8, 9))
    sdpa = varlen_attention(q, k, v, lens, lens, "sdpa")
    naive = varlen_attention(q, k, v, lens, lens, "naive")
    torch.testing.assert_close(sdpa, naive, atol=2e-6, rtol=1e-5)


def test_dense_attention_matches_packed_form():
    q, k, v = (torch.randn(2, 9, 3, 8, generator=torch.Generator().manual_seed(s)) for s in (10, 11, 12))
    dense = dense_attention(q, k, v)
    packed = varlen_attention(q.reshape(18, 3, 8), k.reshape(18, 3, 8), v.reshape(18, 3, 8), [9, 9], [9, 9])
    assert torch.equal(dense.reshape(18, 3, 8), packed)


def test_bad_inputs_are_refused():
    q = _packed([4, 4])
    with pytest.raises(EngineInputError, match="sequence lengths"):
        varlen_attention(q, q, q, [4, 3], [4, 3])
    with pytest.raises(EngineInputError, match="query sequences"):
        varlen_attention(q, q, q, [4, 4], [8])
    with pytest.raises(EngineInputError, match="no keys"):
        varlen_attention(q, q[:4], q[:4], [4, 4], [4, 0])
    with pytest.raises(EngineInputError, match="backend"):
        varlen_attention(q, q, q, [4, 4], [4, 4], "flash")


def test_backend_is_a_per_module_setting_and_both_give_the_same_flow_output():
    config = {
        "name": "SLatFlowModel",
        "args": {
            "resolution": 8,
            "in_channels": 4,
            "out_channels": 4,
            "model_channels": 32,
            "cond_channels": 8,
            "num_blocks": 2,
            "num_heads": 2,
            "mlp_ratio": 2.0,
            "pe_mode": "rope",
            "share_mod": True,
            "qk_rms_norm": True,
            "qk_rms_norm_cross": True,
        },
    }
    torch.manual_seed(0)
    model = build_model(config, device="cpu").eval()
    g = torch.Generator().manual_seed(1)
    coords = torch.cat([torch.zeros(12, 1), torch.randint(0, 8, (12, 3), generator=g)], dim=1).int()
    coords = torch.cat([coords, torch.cat([torch.ones(5, 1), torch.randint(0, 8, (5, 3), generator=g)], 1).int()])
    x = SparseTensor(torch.randn(17, 4, generator=g), coords)
    t, cond = torch.tensor([700.0, 200.0]), torch.randn(2, 5, 8, generator=g)

    with torch.no_grad():
        sdpa = model(x, t, cond).feats
        set_attention_backend(model, "naive")
        backends = {m.attention_backend for m in model.modules() if hasattr(m, "attention_backend")}
        naive = model(x, t, cond).feats
    assert backends == {"naive"}
    assert not torch.equal(sdpa, naive), "the backend switch had no effect"
    torch.testing.assert_close(naive, sdpa, atol=1e-5, rtol=1e-5)
