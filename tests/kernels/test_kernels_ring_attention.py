"""Ring attention with sinks: the Triton kernel against the reference, and the reference against the
model's full-sequence attention with ``window_sink_mask`` (what the engine's ring must reproduce)."""

from __future__ import annotations

import math

import pytest
import torch

import kernels
from kernels.reference import ring_attention_ref

NEG = -(2**40)  # the executor's empty-slot position


def ring_positions(lens: list[int], n_sinks: int, ring: int, n_slots: int, empty: int = NEG) -> torch.Tensor:
    """ring_pos [n_slots, S + ring] after each session wrote positions S .. S + len - 1 (slot r holds
    position ``S + (p - S) % ring``, the executor's layout); sinks at slots 0 .. S-1; rest empty."""
    rp = torch.full((n_slots, n_sinks + ring), empty, dtype=torch.long)
    for s, n in enumerate(lens):
        rp[s, :n_sinks] = torch.arange(n_sinks)
        for p in range(n_sinks, n_sinks + n):
            rp[s, n_sinks + (p - n_sinks) % ring] = p
    return rp


def last_positions(lens: list[int], n_sinks: int, tq: int) -> torch.Tensor:
    return torch.stack([torch.arange(n_sinks + n - tq, n_sinks + n) for n in lens])


def run_both(q, k, v, rp, qpos, n_sinks, window, slots, **kw):
    ref = ring_attention_ref(q, k, v, rp, qpos, n_sinks, window, slots)
    out = kernels.ring_attention(
        q, k, v, rp, qpos, n_sinks=n_sinks, window=window, slots=slots, backend="triton", **kw
    )
    assert out.shape == q.shape and out.dtype == q.dtype
    return out, ref


@pytest.mark.parametrize(
    ("h", "nkv", "hd", "splits"),
    [(4, 2, 16, 1), (4, 1, 16, 3), (2, 2, 24, 2)],  # GQA, MQA with a split ring, MHA with hd not a power of 2
)
def test_decode_matches_reference(need_triton, device, h, nkv, hd, splits):
    torch.manual_seed(0)
    S, window, ring = 2, 10, 14
    # one short session (empty slots), one wrapped twice, one just wrapped; rows read permuted slots
    lens, n_slots = [3, 31, 15, 0], 5
    rp = ring_positions(lens, S, ring, n_slots).to(device)
    slots = torch.tensor([2, 0, 1], device=device)
    slot_lens = [lens[2], lens[0], lens[1]]
    k = torch.randn(n_slots, nkv, S + ring, hd, device=device)
    v = torch.randn(n_slots, nkv, S + ring, hd, device=device)
    qpos = last_positions(slot_lens, S, 1).to(device)
    q = torch.randn(3, 1, h, hd, device=device)
    out, ref = run_both(q, k, v, rp, qpos, S, window, slots, num_splits=splits)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("tq", [3, 20])  # 20 x G=4 rows: two query tiles of 64
def test_prefill_chunk_causal_with_padding(need_triton, device, tq):
    torch.manual_seed(1)
    S, window, ring, h, nkv, hd = 2, 12, 40, 8, 2, 16
    lens = [tq + 1, 45, tq + 30]
    rp = ring_positions(lens, S, ring, 3).to(device)
    k = torch.randn(3, nkv, S + ring, hd, device=device)
    v = torch.randn(3, nkv, S + ring, hd, device=device)
    qpos = last_positions(lens, S, tq).to(device)
    qpos[0, :2] = -1  # session 0 has a shorter chunk: its first rows are padding
    q = torch.randn(3, tq, h, hd, device=device)
    out, ref = run_both(q, k, v, rp, qpos, S, window, None, num_splits=2)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
    assert torch.count_nonzero(out[0, :2]) == 0  # padding rows are zero


def test_empty_slots_marked_minus_one(need_triton, device):
    """-1 marks an empty slot as well as the executor's large negative value."""
    torch.manual_seed(2)
    S, window, ring = 2, 100, 20  # window > filled length: only emptiness keeps slots out
    rp_neg = ring_positions([5], S, ring, 1)
    rp_m1 = ring_positions([5], S, ring, 1, empty=-1)
    k, v = torch.randn(2, 1, 1, S + ring, 16, device=device).unbind(0)
    q = torch.randn(1, 1, 2, 16, device=device)
    qpos = last_positions([5], S, 1).to(device)
    a, ref = run_both(q, k, v, rp_m1.to(device), qpos, S, window, None)
    b, _ = run_both(q, k, v, rp_neg.to(device), qpos, S, window, None)
    torch.testing.assert_close(a, ref, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)


def test_mask_matters(device):
    """Guard against a vacuous comparison: hiding one visible slot changes the answer."""
    torch.manual_seed(3)
    S, window, ring = 2, 6, 10
    rp = ring_positions([12], S, ring, 1).to(device)
    k, v = torch.randn(2, 1, 1, S + ring, 8, device=device).unbind(0)
    q = torch.randn(1, 1, 1, 8, device=device)
    qpos = last_positions([12], S, 1).to(device)
    a = ring_attention_ref(q, k, v, rp, qpos, S, window)
    rp2 = rp.clone()
    rp2[0, 0] = -1  # a sink disappears
    b = ring_attention_ref(q, k, v, rp2, qpos, S, window)
    assert (a - b).abs().max() > 1e-3


@pytest.mark.parametrize("length", [5, 9, 23, 40])
def test_reference_equals_full_attention_with_window_sink_mask(length):
    """The ring (window + block slots, positions wrapping) gives the same answer as attention over the
    whole sequence with the model's mask, for a query at the last position, before and after wrap."""
    from microturn.model.transformer import window_sink_mask

    torch.manual_seed(4)
    S, window, block, nkv, h, hd = 2, 8, 3, 1, 2, 8
    ring = window + block
    total = S + length
    kf = torch.randn(total, nkv, hd)
    vf = torch.randn(total, nkv, hd)
    q = torch.randn(1, 1, h, hd)
    pos = torch.arange(total)
    allowed = window_sink_mask(pos, S, window)[-1]  # the last query's row
    s = torch.einsum("hd,phd->hp", q[0, 0], kf.repeat_interleave(h // nkv, 1)) / math.sqrt(hd)
    s = s.masked_fill(~allowed, float("-inf"))
    full = torch.einsum("hp,phd->hd", torch.softmax(s, -1), vf.repeat_interleave(h // nkv, 1))

    rp = ring_positions([length], S, ring, 1)
    kc = torch.zeros(1, nkv, S + ring, hd)
    vc = torch.zeros(1, nkv, S + ring, hd)
    for slot in range(S + ring):
        p = int(rp[0, slot])
        if p >= 0:
            kc[0, :, slot], vc[0, :, slot] = kf[p], vf[p]
    out = ring_attention_ref(q, kc, vc, rp, torch.tensor([[total - 1]]), S, window)
    torch.testing.assert_close(out[0, 0], full, atol=1e-5, rtol=1e-5)


def test_shape_errors():
    q = torch.zeros(1, 1, 3, 8)
    k = torch.zeros(1, 2, 4, 8)
    with pytest.raises(ValueError, match="does not match"):
        kernels.ring_attention(
            q,
            k,
            k,
            torch.zeros(1, 4, dtype=torch.long),
            torch.zeros(1, 1, dtype=torch.long),
            n_sinks=1,
            window=2,
        )
