"""Streaming equals the full forward; sessions are batch-invariant; steady-state steps allocate nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from engine_helpers import Recorder, full_forward_diffs, make_chunks
from torch.profiler import ProfilerActivity, profile

from microturn.engine import ChunkInput, Engine
from microturn.model import InteractionModel, preset


@pytest.fixture(scope="module", params=["dense", "moe"])
def model(request) -> InteractionModel:
    torch.manual_seed(0)
    kw = {} if request.param == "dense" else {"n_experts": 4, "top_k": 2, "d_ff_expert": 32}
    return InteractionModel(preset("test", **kw)).eval()


def test_streaming_equals_full_forward_after_the_ring_wraps(model):
    check_streaming(model, gather_max=None)


@pytest.mark.parametrize("gather_max", [0, 1000])
def test_moe_decode_paths_stream_equal(gather_max):
    """MoE decode forced to dense-all (0) or to gather + GEMV for every batch size (1000)."""
    torch.manual_seed(0)
    moe = InteractionModel(preset("test", n_experts=4, top_k=2, d_ff_expert=32)).eval()
    check_streaming(moe, gather_max)


def check_streaming(model: InteractionModel, gather_max: int | None) -> None:
    rec = Recorder(model.cfg)
    eng = Engine(model, 4, moe_gather_max_tokens=gather_max, observer=rec)
    eng.open("other", 3)
    eng.open("a", 11)
    n = 12  # window is 3 turns: the ring wraps several times
    assert n * model.layout.turn_len > eng.ex.ring
    chunks = make_chunks("a", n, seed=1, texts={1: ["hello, world"], 6: ["more"]})
    others = make_chunks("other", n, seed=2)
    for k in range(n):
        eng.step([chunks[k]] + ([others[k]] if k % 2 else []))
    d_logits, d_cond = full_forward_diffs(model, eng, rec, "a", chunks)
    assert d_logits < 1e-4 and d_cond < 1e-4
    # a one-slot engine (no other rows in the tick) agrees too
    rec2 = Recorder(model.cfg)
    eng2 = Engine(model, 1, moe_gather_max_tokens=gather_max, observer=rec2)
    eng2.open("a", 11)
    for c in chunks:
        eng2.step([c])
    assert full_forward_diffs(model, eng2, rec2, "a", chunks)[1] < 1e-4


def test_full_mask_differs_from_window(model):
    """Guard for the test above: with a longer window the reference really changes."""
    rec = Recorder(model.cfg)
    eng = Engine(model, 1, observer=rec)
    eng.open("a", 1)
    chunks = make_chunks("a", 8, seed=4)
    for c in chunks:
        eng.step([c])
    recs = rec.of(eng, "a")
    from microturn.model import TurnBatch

    batch = TurnBatch(
        pcm=torch.from_numpy(np.concatenate([c.pcm for c in chunks]))[None],
        video=torch.zeros(1, 8, 80, 80, 3, dtype=torch.uint8),
        has_video=torch.tensor([[c.video is not None for c in chunks]]),
        text_in=torch.stack([r["text_in"] for r in recs])[None],
        text_out=torch.stack([r["text_out"] for r in recs])[None],
        audio_out=torch.stack([r["audio_out"] for r in recs])[None],
    )
    for i, c in enumerate(chunks):
        if c.video is not None:
            batch.video[0, i] = torch.from_numpy(c.video[-1])
    with torch.no_grad():
        w = model(batch, with_losses=False).flow_cond
        full = model(batch, with_losses=False, window_turns=100).flow_cond
    streamed = torch.stack([torch.stack([r[f"cond{j}"] for j in range(4)]) for r in recs])[None]
    assert (w - streamed).abs().max() < 1e-4
    assert (full - streamed).abs().max() > 1e-3


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_batch_invariance(model, precision):
    """The same precision at every batch size: a session's outputs do not depend on its neighbours."""
    chunks = {s: make_chunks(s, 6, seed=ord(s)) for s in "abcdef"}
    alone = Engine(model, 8, precision=precision)
    alone.open("a", 7)
    ref = [alone.step([c])[0] for c in chunks["a"]]
    crowd = Engine(model, 8, precision=precision)
    for s in "bcdaef":
        crowd.open(s, 7 if s == "a" else ord(s))
    got = []
    for k in range(6):
        sel = ["a"] + (["b", "f"] if k % 2 else ["c", "d", "e"])  # varying batch, holes in the slot range
        outs = crowd.step([chunks[s][k] for s in sel])
        assert [o.session_id for o in outs] == sel
        got.append(outs[0])
    for r, g in zip(ref, got, strict=True):
        assert r.text == g.text and r.chunk_index == g.chunk_index
        assert (
            np.abs(r.pcm.astype(np.int32) - g.pcm).max() <= 100
        )  # float rounding only (0.3 % of full scale)
    # and a different seed really changes the session's outputs
    other = Engine(model, 1, precision=precision)
    other.open("a", 8)
    diff = [other.step([c])[0] for c in chunks["a"]]
    assert any(d.text != r.text for d, r in zip(diff, ref, strict=True)) or any(
        np.abs(d.pcm.astype(np.int32) - r.pcm).max() > 1000 for d, r in zip(diff, ref, strict=True)
    )


def count_allocations(fn) -> int:
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return sum(1 for e in prof.events() if e.cpu_memory_usage > 0)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_no_tensor_allocation_in_steady_state(model, precision):
    eng = Engine(model, 4, precision=precision)
    for s in "abc":
        eng.open(s, 1)
    chunks = {s: make_chunks(s, 6, seed=ord(s), texts={4: ["typed text"]}) for s in "abc"}
    for k in range(3):
        eng.step([chunks[s][k] for s in "ac"])
    assert count_allocations(lambda: eng.step([chunks[s][3] for s in "ac"])) == 0
    assert count_allocations(lambda: eng.step([chunks[s][4] for s in "abc"])) == 0
    eng.step([chunks["a"][5]])  # one session: MoE decode takes the gather + GEMV path
    assert count_allocations(lambda: eng.step([ChunkInput("a", 6, chunks["a"][5].pcm, None, [])])) == 0
    # the counter does see allocations
    assert count_allocations(lambda: torch.zeros(16) + 1) >= 2
