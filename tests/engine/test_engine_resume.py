"""Rebuilding a session from a bounded span of resume points: exact continuation, bounded cost."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from engine_helpers import make_chunks

from microturn.engine import ChunkOutput, Engine, EngineError, InvalidChunkError
from microturn.model import InteractionModel, preset


@pytest.fixture(scope="module")
def model() -> InteractionModel:
    torch.manual_seed(3)
    return InteractionModel(preset("test"), version="test-resume").eval()


def run_live(eng: Engine, sid: str, chunks) -> list[ChunkOutput]:
    return [eng.step([c])[0] for c in chunks]


def in_window_kv(eng: Engine, sid: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """K and V of the ring entries a next query can see (sinks and the last window of positions),
    ordered by position, and those positions."""
    ex, s = eng.ex, eng.sessions[sid]
    pos = ex.ring_pos[s.slot]
    newest = int(pos.max())
    keep = (pos > newest - ex.window) | (torch.arange(ex.ctx) < ex.S)
    order = torch.argsort(pos[keep])
    k = ex.k_cache[:, s.slot][:, :, keep][:, :, order]
    v = ex.v_cache[:, s.slot][:, :, keep][:, :, order]
    return k, v, pos[keep][order]


def assert_continues_like(ref: list[ChunkOutput], got: list[ChunkOutput]) -> None:
    assert [o.chunk_index for o in got] == [o.chunk_index for o in ref]
    assert [o.text for o in got] == [o.text for o in ref]
    for r, g in zip(ref, got, strict=True):
        assert np.abs(r.pcm.astype(np.int32) - g.pcm).max() <= 100  # float rounding only
        assert np.array_equal(r.resume.text_out_ids, g.resume.text_out_ids)
        # quantised audio levels: a float-rounding flip at a level boundary is at most one level
        assert np.abs(r.resume.audio_out_levels.astype(int) - g.resume.audio_out_levels).max() <= 1


def resumed(model, sid, seed, chunks, outs, at: int, span: int | None = None) -> Engine:
    """A fresh engine (the session in another slot, next to another session) rebuilt at chunk ``at``."""
    eng = Engine(model, 3)
    eng.open("neighbour", 99)
    eng.step(make_chunks("neighbour", 1, seed=77))
    items = [(c, o.resume) for c, o in zip(chunks[:at], outs[:at], strict=True)]
    eng.resume(sid, seed, items if span is None else items[-span:])
    return eng


def test_resume_span_is_layers_times_window_plus_one(model):
    eng = Engine(model, 1)
    assert eng.resume_span == model.cfg.n_layers * model.cfg.window_turns + 1


def test_resume_from_the_last_span_continues_exactly(model):
    n, at = 40, 25
    chunks = make_chunks("a", n, seed=5, texts={19: ["a long typed message that spans many turns"]})
    live = Engine(model, 2)
    live.open("a", 42)
    ref = run_live(live, "a", chunks)
    assert ref[at - 1].resume.queued_text_ids, "the resume point should carry queued text"
    # the live engine's window state at `at` (a second live run stopped there)
    probe = Engine(model, 2)
    probe.open("a", 42)
    run_live(probe, "a", chunks[:at])
    eng = resumed(model, "a", 42, chunks, ref, at)
    assert eng.sessions["a"].slot != probe.sessions["a"].slot
    for a, b in zip(in_window_kv(probe, "a"), in_window_kv(eng, "a"), strict=True):
        if a.dtype == torch.long:
            assert torch.equal(a, b)
        else:
            assert torch.allclose(a, b, atol=1e-4)
    assert eng.sessions["a"].snapshot() == probe.sessions["a"].snapshot()
    assert_continues_like(ref[at:], run_live(eng, "a", chunks[at:]))


def test_a_span_one_turn_short_is_not_exact(model):
    """Guard for the bound: with one micro-turn fewer than resume_span the window KV differs."""
    n, at = 30, 20
    chunks = make_chunks("a", n, seed=6)
    live = Engine(model, 1)
    live.open("a", 7)
    ref = run_live(live, "a", chunks)
    probe = Engine(model, 1)
    probe.open("a", 7)
    run_live(probe, "a", chunks[:at])
    short = resumed(model, "a", 7, chunks, ref, at, span=Engine(model, 1).resume_span - 1)
    full = resumed(model, "a", 7, chunks, ref, at)
    kp, kf, ks = (in_window_kv(e, "a")[0] for e in (probe, full, short))
    assert torch.allclose(kp, kf, atol=1e-4)
    assert (kp - ks).abs().max() > 1e-3


def test_a_young_session_resumes_from_its_first_chunk(model):
    chunks = make_chunks("a", 12, seed=8, texts={1: ["hi there"]})
    live = Engine(model, 1)
    live.open("a", 3)
    ref = run_live(live, "a", chunks)
    eng = resumed(model, "a", 3, chunks, ref, 4)
    assert_continues_like(ref[4:], run_live(eng, "a", chunks[4:]))


def test_a_ten_minute_session_resumes_at_the_cost_of_a_short_one(model, monkeypatch):
    """3,000 micro-turns (10 minutes of media, run faster than real time): the rebuild runs the same
    number of forced micro-turns as for a session just past one span, and continues exactly."""
    n = 3000 + 20
    chunks = make_chunks("a", n, seed=9, texts={k: ["tick"] for k in range(0, n, 97)})
    live = Engine(model, 1)
    live.open("a", 5)
    ref = run_live(live, "a", chunks)
    calls = {"n": 0}
    real = Engine.resume_steps

    def counting(self, items, remaining=None):
        calls["n"] += len(items)
        return real(self, items, remaining)

    monkeypatch.setattr(Engine, "resume_steps", counting)
    span = Engine(model, 1).resume_span
    costs = {}
    for at in (span + 1, 3000):
        calls["n"] = 0
        eng = resumed(model, "a", 5, chunks, ref, at)
        costs[at] = calls["n"]
        assert_continues_like(ref[at : at + 20], run_live(eng, "a", chunks[at : at + 20]))
    assert costs == {span + 1: span, 3000: span}


def test_hostile_resume_points_are_rejected_and_release_the_slot(model):
    chunks = make_chunks("a", 4, seed=2)
    live = Engine(model, 1)
    live.open("a", 1)
    outs = run_live(live, "a", chunks)
    eng = Engine(model, 1)
    good = outs[-1].resume
    bad = [
        dict(text_in_ids=[10**6] * len(good.text_in_ids)),
        dict(text_out_ids=[]),
        dict(audio_out_levels=np.full_like(good.audio_out_levels, 200)),
        dict(audio_out_levels=good.audio_out_levels[:10]),
        dict(vocoder_tail=np.full_like(good.vocoder_tail, np.nan)),
        dict(queued_text_ids=[1] * (eng.text_queue_limit + 1)),
        dict(decoder_pending=b"\xff" * 9),
    ]
    for change in bad:
        rp = type(good)(**{**good.__dict__, **change})
        with pytest.raises(InvalidChunkError, match="resume"):
            eng.resume("a", 1, [(chunks[0], rp)])
        assert eng.free_slots == 1
    with pytest.raises(EngineError):
        eng.resume("a", 1, [])
    # a session being rebuilt takes no live step
    eng.resume_begin("a", 1)
    with pytest.raises(EngineError, match="rebuilt"):
        eng.step([chunks[0]])
