"""The transformer modules' streaming steps equal their forward: RMSNorm, RoPE tables, attention (keys and
values written by ``kv_`` into a store, queries attending over it under the same mask)."""

from __future__ import annotations

import copy

import pytest
import torch

from microturn.model import preset
from microturn.model.transformer import (
    Attention,
    RMSNorm,
    rope_cos_sin,
    rope_cos_sin_,
    rope_inv_freq,
    window_sink_mask,
)

CFG = preset("test")


def test_rmsnorm_step_equals_forward():
    torch.manual_seed(0)
    norm = RMSNorm(CFG.d_model, CFG.norm_eps)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        x = torch.randn(7, CFG.d_model)
        out = norm.forward_(x, torch.empty_like(x), torch.empty_like(x), torch.empty(7, 1))
        assert torch.allclose(out, norm(x), atol=1e-6)


def test_rope_tables_step_equals_rope_cos_sin():
    inv = rope_inv_freq(CFG.head_dim, CFG.rope_theta)
    pos = torch.tensor([[0, 5, 10**6], [3, 2**20, 7]])
    hh = CFG.head_dim // 2
    ws64 = (
        torch.empty(2, 3, 1, dtype=torch.float64),
        *(torch.empty(2, 3, hh, dtype=torch.float64) for _ in range(2)),
    )
    cos, sin = torch.empty(2, 3, hh), torch.empty(2, 3, hh)
    rope_cos_sin_(pos, inv, ws64, cos, sin)
    c, s = rope_cos_sin(pos, inv)
    assert torch.equal(cos, c) and torch.equal(sin, s)


@pytest.mark.parametrize("n_kv", [1, 2])
def test_attention_step_equals_forward(n_kv):
    """Two sequences; every key is written by ``kv_`` into a [B, kv_heads, S, hd] store, then all queries
    attend over it with the window + sink mask: equal to ``forward`` under that mask."""
    cfg = preset("test", n_kv_heads=n_kv)
    torch.manual_seed(n_kv)
    at = Attention(cfg).eval()
    b, s, hd = 2, 11, cfg.head_dim
    x = torch.randn(b, s, cfg.d_model)
    pos = torch.arange(s)
    mask = window_sink_mask(pos, 2, 4)
    cos, sin = rope_cos_sin(pos, rope_inv_freq(hd, cfg.rope_theta))
    with torch.no_grad():
        ref = at(x, cos, sin, mask)
        ws = at.workspace(b * s, s)
        k, v = torch.empty(b, s, n_kv, hd), torch.empty(b, s, n_kv, hd)
        cb, sb = cos.expand(b, s, -1).contiguous(), sin.expand(b, s, -1).contiguous()
        at.kv_(x, cb, sb, ws, k, v)
        keys, values = k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous()
        add = torch.where(mask, 0.0, float("-inf")).expand(b, s, s).contiguous()
        out = at.attend_(x, cb, sb, keys, values, add, ws, torch.empty(b * s, cfg.d_model))
    assert torch.allclose(out.view(b, s, -1), ref, atol=1e-5)


def test_bf16_attention_projections_over_an_fp32_store_stay_close():
    """bf16 projection weights and activations (the engine's ``precision: bf16``), keys/values stored and
    attended in fp32: close to the fp32 step."""
    cfg = preset("test", n_kv_heads=2)
    torch.manual_seed(3)
    at = Attention(cfg).eval()
    low = copy.deepcopy(at)
    for lin in (low.wq, low.wk, low.wv, low.wo):
        lin.to(torch.bfloat16)
    b, s, hd = 2, 11, cfg.head_dim
    x = torch.randn(b, s, cfg.d_model)
    pos = torch.arange(s)
    mask = window_sink_mask(pos, 2, 4)
    cos, sin = rope_cos_sin(pos, rope_inv_freq(hd, cfg.rope_theta))
    cb, sb = cos.expand(b, s, -1).contiguous(), sin.expand(b, s, -1).contiguous()
    add = torch.where(mask, 0.0, float("-inf")).expand(b, s, s).contiguous()
    outs = []
    with torch.no_grad():
        for mod, dt in ((at, torch.float32), (low, torch.bfloat16)):
            ws = mod.workspace(b * s, s, dtype=dt)
            k, v = torch.empty(b, s, 2, hd), torch.empty(b, s, 2, hd)
            xi = x.to(dt)
            mod.kv_(xi, cb, sb, ws, k, v)
            keys, values = k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous()
            out = torch.empty(b * s, cfg.d_model, dtype=dt)
            outs.append(mod.attend_(xi, cb, sb, keys, values, add, ws, out).float())
    ref, got = outs
    assert (got - ref).abs().max() < 0.05 * ref.abs().max()
