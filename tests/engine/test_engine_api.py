"""Engine lifecycle: open/close/replay, validation of bad input, text queues, events, versions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from engine_helpers import make_chunks

from microturn.engine import (
    ChunkInput,
    DelegationOpened,
    Engine,
    EngineError,
    EngineFullError,
    InvalidChunkError,
    SpeakingChanged,
    UnknownSessionError,
    step_seed,
)
from microturn.engine.engine import SessionState
from microturn.model import InteractionModel, preset
from microturn.model import tokens as tk


@pytest.fixture(scope="module")
def model() -> InteractionModel:
    torch.manual_seed(1)
    m = InteractionModel(preset("test"), version="test-v7").eval()
    return m


def slot_state(eng: Engine, sid: str) -> dict:
    s = eng.sessions[sid]
    return {**eng.ex.slot_state(s.slot), "host": s.snapshot()}


def assert_same_state(a: dict, b: dict, atol: float = 1e-4) -> None:
    assert a["host"] == b["host"]
    assert torch.equal(a["ring_pos"], b["ring_pos"]) and torch.equal(a["pending"], b["pending"])
    for k in ("k", "v", "audio_hist", "voc_tail"):
        assert torch.allclose(a[k], b[k], atol=atol), k


def test_replay_rebuilds_the_slot_and_continues_exactly(model):
    chunks = make_chunks("a", 9, seed=5, texts={2: ["a long typed message that spans turns"]})
    live = Engine(model, 3)
    live.open("z", 1)
    live.open("y", 2)
    live.open("a", 42)
    for c in chunks[:8]:
        live.step([c])
    before = slot_state(live, "a")
    # a fresh replica: the session lands in a different slot, next to another session
    other = Engine(model, 3)
    other.open("b", 9)
    other.step(make_chunks("b", 1, seed=6))
    with pytest.raises(UnknownSessionError):
        other.step([chunks[8]])
    other.replay("a", 42, chunks[:8])
    assert other.sessions["a"].slot != live.sessions["a"].slot
    assert_same_state(before, slot_state(other, "a"))
    nxt_live, nxt_replayed = live.step([chunks[8]])[0], other.step([chunks[8]])[0]
    assert nxt_live.text == nxt_replayed.text
    assert np.abs(nxt_live.pcm.astype(np.int32) - nxt_replayed.pcm).max() <= 100
    # replaying with the wrong seed does not reproduce the state
    other.replay("a", 43, chunks[:8])
    with pytest.raises(AssertionError):
        assert_same_state(before, slot_state(other, "a"))


def test_replay_rejects_foreign_chunks_and_releases_the_slot_on_error(model):
    eng = Engine(model, 1)
    with pytest.raises(InvalidChunkError, match="session_id"):
        eng.replay("a", 1, make_chunks("b", 2))
    bad = make_chunks("a", 3)
    bad[2].pcm = bad[2].pcm[:100]
    with pytest.raises(InvalidChunkError, match="pcm"):
        eng.replay("a", 1, bad)
    assert eng.free_slots == 1 and "a" not in eng.sessions


def bad_chunks(good: ChunkInput, limit: int) -> list[tuple[ChunkInput, str]]:
    def with_(**kw) -> ChunkInput:
        d = dict(good.__dict__)
        d.update(kw)
        return ChunkInput(**d)

    return [
        (with_(pcm=np.zeros(4800, np.int16), sample_rate=24_000), r"sample_rate: the model takes 16000 Hz"),
        (with_(pcm=np.zeros(4800, np.int16)), r"pcm: expected shape \(3200,\).*24000 Hz"),
        (with_(pcm=np.zeros(3200, np.float32)), "pcm: dtype must be int16"),
        (with_(pcm=np.zeros((2, 3200), np.int16)), r"pcm: expected shape \(3200,\)"),
        (with_(video=np.zeros((1, 64, 64, 3), np.uint8)), r"video: frames must be shaped \[n, 80, 80, 3\]"),
        (with_(video=np.zeros((1, 80, 80, 3), np.float32)), "video: must be a uint8"),
        (with_(video=np.zeros((31, 80, 80, 3), np.uint8)), "video: 31 frames in one chunk, limit 30"),
        (with_(text=["x" * (limit + 1)]), f"text: .* exceed the text-in queue limit of {limit} tokens"),
        (with_(background=["y" * limit]), f"queue limit of {limit}"),
        (with_(text=[b"bytes"]), "text: must be a list of str"),
        (with_(chunk_index=-1), "chunk_index: must be a non-negative int"),
    ]


def test_bad_input_is_rejected_and_the_slot_is_unharmed(model):
    limit = 64
    chunks = make_chunks("a", 5, seed=8)
    ref = Engine(model, 2, text_queue_limit=limit)
    ref.open("a", 5)
    ref_out = [ref.step([c])[0] for c in chunks]
    eng = Engine(model, 2, text_queue_limit=limit)
    eng.open("a", 5)
    eng.open("b", 6)
    got = []
    for k, c in enumerate(chunks):
        if k == 2:
            before = slot_state(eng, "a")
            for bad, msg in bad_chunks(c, limit):
                with pytest.raises(InvalidChunkError, match=msg):
                    eng.validate(bad)
                with pytest.raises(InvalidChunkError, match=msg):
                    eng.step([bad, make_chunks("b", 1, start=k)[0]])  # all-or-nothing: b is untouched too
            assert_same_state(before, slot_state(eng, "a"), atol=0)
            assert eng.sessions["b"].last_index is None
        got.append(eng.step([c])[0])
    for r, g in zip(ref_out, got, strict=True):
        assert r.text == g.text and np.abs(r.pcm.astype(np.int32) - g.pcm).max() <= 100
    with pytest.raises(InvalidChunkError, match="chunk_index: 4 is not after the last processed chunk 4"):
        eng.step([chunks[4]])
    with pytest.raises(InvalidChunkError, match="appears twice"):
        eng.step([make_chunks("b", 1, start=9)[0], make_chunks("b", 1, start=10)[0]])


def test_queue_limit_counts_what_is_already_queued(model):
    eng = Engine(model, 1, text_queue_limit=40)
    eng.open("a", 1)
    c0, c1 = make_chunks("a", 2)
    c0.text = ["x" * 30]
    eng.step([c0])  # the test preset takes 2 bytes per turn: 28 stay queued
    c1.text = ["y" * 20]
    with pytest.raises(InvalidChunkError, match="queue limit of 40"):
        eng.validate(c1)
    c1.text = ["y" * 5]
    eng.validate(c1)


def test_text_beyond_the_budget_carries_over_in_order(model):
    eng = Engine(model, 1)
    eng.open("a", 1)
    chunks = make_chunks("a", 12, texts={0: ["héllo"], 1: ["wörld"]})
    chunks[3].background = ["ok"]
    read = [eng.step([c])[0].resume.text_in_ids for c in chunks]
    fed = [t for r in read for t in r if t != tk.PAD]
    want = [*tk.encode_text("héllo"), *tk.encode_text("wörld"), *tk.encode_background("ok")]
    assert fed == want
    per_turn = [sum(t != tk.PAD for t in r) for r in read]
    assert max(per_turn) == model.cfg.n_text_in and per_turn[0] == model.cfg.n_text_in


def test_slots_open_close_and_errors(model):
    eng = Engine(model, 2)
    assert eng.model_version == "test-v7"
    eng.open("a", 1)
    eng.open("b", 2)
    with pytest.raises(EngineFullError, match="all 2 session slots"):
        eng.open("c", 3)
    with pytest.raises(EngineError, match="already open"):
        eng.open("a", 1)
    with pytest.raises(EngineError, match="session_id"):
        eng.open("bad id!", 1)
    eng.close("a")
    eng.open("c", 3)
    with pytest.raises(UnknownSessionError):
        eng.close("a")
    with pytest.raises(UnknownSessionError):
        eng.step(make_chunks("a", 1))
    out = eng.step(make_chunks("c", 1))[0]
    assert out.model_version == "test-v7" and out.pcm.dtype == np.int16 and out.pcm.shape == (3200,)
    assert eng.step([]) == []
    assert eng.slot_bytes() > 0


def test_chunk_index_gaps_are_allowed(model):
    eng = Engine(model, 1)
    eng.open("a", 1)
    c = make_chunks("a", 3)
    c[2].chunk_index = 10  # a chunk went missing upstream: time still moves on
    for x in c:
        assert eng.step([x])[0].chunk_index == x.chunk_index


def test_delegation_span_becomes_an_event():
    eng_like = Engine.__new__(Engine)
    eng_like.delegation_max_bytes = 8
    s = SessionState("a", 1, 0)
    events: list = []
    ids = [*b"hi ", tk.DELEG_START, *b"find it", tk.DELEG_END, *b"ok", tk.PAD, tk.SIL]
    assert Engine._parse_text(eng_like, s, ids, events) == "hi ok"
    assert events == [DelegationOpened(request="find it")]
    events.clear()
    # spans continue across micro-turns; overlong requests are truncated at the limit
    assert Engine._parse_text(eng_like, s, [tk.DELEG_START, *b"0123"], events) == ""
    assert Engine._parse_text(eng_like, s, [*b"456789", tk.DELEG_END], events) == ""
    assert events == [DelegationOpened(request="01234567")]
    # a stray end marker does nothing; split UTF-8 is reassembled across turns
    events.clear()
    e = "é".encode()
    assert Engine._parse_text(eng_like, s, [tk.DELEG_END, e[0]], events) == ""
    assert Engine._parse_text(eng_like, s, [e[1]], events) == "é"
    assert events == []


@pytest.mark.parametrize("threshold, expect", [(-100.0, [True]), (100.0, [])])
def test_speaking_events(model, threshold, expect):
    eng = Engine(model, 1, speaking_threshold=threshold)
    eng.open("a", 1)
    seen = []
    for c in make_chunks("a", 3):
        seen += [e.speaking for e in eng.step([c])[0].events if isinstance(e, SpeakingChanged)]
    assert seen == expect


def test_step_seed_mixes_both_inputs():
    seeds = {step_seed(s, k) for s in range(20) for k in range(20)}
    assert len(seeds) == 400 and all(0 <= x < 2**63 for x in seeds)


@pytest.mark.parametrize("flow_temperature", [0.0, 1.0])
def test_flow_temperature_scales_the_audio_noise(flow_temperature):
    """At flow temperature 0 the audio is the ODE from the prior's mean: the session seed (which still
    drives the text sampling, greedy here) no longer changes it; at 1 it does."""
    torch.manual_seed(1)
    cfg = preset("test", temperature=0.0, flow_temperature=flow_temperature)
    m = InteractionModel(cfg, version="t").eval()
    pcms = []
    for seed in (1, 2):
        eng = Engine(m, 1)
        eng.open("s", seed=seed)
        pcms.append(np.concatenate([o.pcm for c in make_chunks("s", 3) for o in eng.step([c])]))
    assert np.array_equal(pcms[0], pcms[1]) == (flow_temperature == 0.0)
