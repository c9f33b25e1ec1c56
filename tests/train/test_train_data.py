"""Gym sessions -> training batches: shapes, targets, the engine's text-in queue, weights, caching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from microturn.gym import generate
from microturn.model import InteractionModel, preset
from microturn.model import tokens as tk
from microturn.train.data import (
    SessionBank,
    batch_rng,
    collate,
    loss_weights,
    render_example,
    sample_batch,
    text_in_tokens,
)

CFG = preset("test")
W = (8.0, 2.0, 4.0)


@pytest.fixture(scope="module")
def bank(tmp_path_factory) -> SessionBank:
    return SessionBank(CFG, cache_dir=tmp_path_factory.mktemp("bank"))


def test_example_has_the_shapes_and_targets_the_model_expects():
    s = generate("delegation", 3)
    ex = render_example("delegation", 3, CFG)
    n = s.num_chunks
    assert ex.n_turns == n
    assert ex.levels_in.shape == (n * CFG.frames_per_chunk, CFG.n_mels)
    assert ex.video.shape == (n, 80, 80, 3) and ex.video.dtype == np.uint8
    assert np.array_equal(ex.video, s.video[:, -1])
    assert ex.text_in.shape == (n, CFG.n_text_in)
    assert ex.text_out.tolist() == s.text_out_tokens(CFG.n_text_out)
    assert ex.levels_out.shape == (n, 4, CFG.frames_per_audio_token, CFG.n_mels)
    assert ex.levels_in.max() < CFG.n_levels and ex.levels_out.max() < CFG.n_levels
    # target audio: loud where the model speaks, the floor level where its track is digital silence
    spk = s.target_speaking()
    assert np.array_equal(ex.speaking, spk)
    assert ex.levels_out[spk].max() > 8
    silent = [k for k in range(n) if not s.target_pcm[max(0, k - 1) * 3200 : (k + 1) * 3200].any()]
    assert silent and ex.levels_out[silent].max() == 0
    # a typed request as bytes, the delegation's updates wrapped in <bg> ... </bg>, in order, as the
    # engine queues them
    flat = [t for t in ex.text_in.reshape(-1).tolist() if t != tk.PAD]
    queued = [[*(t for u in typed for t in tk.encode_text(u)), *(t for u in bg for t in tk.encode_background(u))]
              for typed, bg in zip(s.text_in, s.background_in, strict=True)]  # fmt: skip
    assert flat == [t for chunk in queued for t in chunk]
    assert s.meta["typed"] and tk.BG_START in flat
    assert tk.DELEG_START in ex.text_out


def test_text_in_queue_spreads_long_text_over_micro_turns():
    out = text_in_tokens([["abcde"], [], ["f"], []], [[], ["x"], [], []], per_chunk=2)
    d = [[tk.describe([t]) for t in row] for row in out.tolist()]
    assert d == [["a", "b"], ["c", "d"], ["e", "<bg>"], ["x", "</bg>"]]
    assert text_in_tokens([[], ["f"]], [[], []], 2).tolist() == [[tk.PAD, tk.PAD], [ord("f"), tk.PAD]]


def test_start_speaking_events_get_the_onset_weight():
    h, i, x = ord("h"), ord("i"), ord("x")
    text_out = np.array([[tk.SIL, h], [i, tk.SIL], [tk.SIL, tk.SIL], [tk.DELEG_START, x], [tk.SIL, tk.SIL]])
    speaking = np.array([False, True, True, False, True])
    tw, fw = loss_weights(text_out, speaking, onset=8.0, speech=2.0, flow_onset=4.0)
    assert tw.tolist() == [[1, 8], [2, 1], [1, 1], [8, 2], [1, 1]]
    assert fw.tolist() == [1, 4, 1, 1, 4]
    # a session that starts speaking in its very first slot: that is an onset too
    tw, fw = loss_weights(np.array([[h, i]]), np.array([True]), 8.0, 2.0, 4.0)
    assert tw.tolist() == [[8, 2]] and fw.tolist() == [4]


def test_collate_pads_with_masked_silent_turns_and_judges_onsets_on_the_whole_session(bank):
    a, b = bank.get("timespeak", 0), bank.get("turntaking", 1)
    n = max(a.n_turns, b.n_turns) + 3
    batch = collate([a, b], [0, 0], n, CFG, W, pos_offset=7)
    t = batch.turns
    assert t.text_out.shape == (2, n, CFG.n_text_out) and t.text_in.shape == (2, n, CFG.n_text_in)
    assert t.audio_out.shape == (2, n, 4, 4, CFG.n_mels) and t.audio_in_levels.shape == (2, n * 16, 80)
    assert t.video.shape == (2, n, 80, 80, 3) and t.has_video.shape == (2, n)
    assert batch.pos_offset == 7 and batch.n_real_turns == a.n_turns + b.n_turns
    for row, ex in enumerate((a, b)):
        m = ex.n_turns
        assert t.has_video[row, :m].all() and not t.has_video[row, m:].any()
        assert (batch.text_weight[row, m:] == 0).all() and (batch.flow_weight[row, m:] == 0).all()
        assert (batch.text_weight[row, :m] >= 1).all()
        assert (t.text_out[row, m:] == tk.SIL).all() and (t.text_in[row, m:] == tk.PAD).all()
        assert (t.text_out[row, :m].numpy() == ex.text_out).all()
    # the model takes the batch as is
    out = InteractionModel(CFG)(t, with_losses=False)
    assert out.text_logits.shape == (2, n, CFG.n_text_out, tk.VOCAB_SIZE)
    # crop just after a word's first slot: its continuation is not mistaken for a start
    flat = a.text_out.reshape(-1)
    k = next(j for j in range(1, len(flat)) if flat[j] != tk.SIL and flat[j - 1] != tk.SIL and j % 2 == 0)
    crop = collate([a], [k // CFG.n_text_out], 4, CFG, W)
    assert crop.text_weight[0, 0, 0] == W[1]


def test_batches_are_a_pure_function_of_seed_and_step(bank):
    fams = ["timespeak", "turntaking"]

    def batch(seed: int, step: int):
        return sample_batch(bank, fams, range(2), 3, 20, batch_rng(seed, step), W, 0.5, 100)

    b1, b2, b3 = batch(0, 5), batch(0, 5), batch(0, 6)
    for k in ("text_in", "text_out", "audio_out", "audio_in_levels", "video"):
        assert torch.equal(getattr(b1.turns, k), getattr(b2.turns, k))
    assert b1.pos_offset == b2.pos_offset
    assert torch.equal(b1.text_weight, b2.text_weight)
    differ = [
        not torch.equal(batch(0, s).turns.audio_in_levels, b1.turns.audio_in_levels)
        or batch(0, s).pos_offset != b1.pos_offset
        for s in range(6, 12)
    ]
    assert any(differ) and b3.turns.text_out.shape[0] == 3
    assert max(b1.turns.text_out.shape[1], b3.turns.text_out.shape[1]) <= 20


def test_length_grouped_batches_draw_the_same_sessions_with_less_padding(bank):
    """A group of 4 batches holds exactly the crops 4 x batch_size uniform draws give, sorted by
    length across the group: each batch pads less than ungrouped ones."""
    fams = ["timespeak", "turntaking", "delegation", "idle"]
    seeds = range(6)

    def real_fraction(batches) -> float:
        return sum(b.n_real_turns for b in batches) / sum(b.turns.text_out.shape[0] * b.turns.text_out.shape[1]
                                                          for b in batches)  # fmt: skip

    grouped, plain = [], []
    for g in range(6):
        grouped += [
            sample_batch(bank, fams, seeds, 3, 60, batch_rng(0, g), W, group=4, index=i) for i in range(4)
        ]
        plain += [sample_batch(bank, fams, seeds, 3, 60, batch_rng(1, 4 * g + i), W) for i in range(4)]
    lengths = [b.turns.text_out.shape[1] for b in grouped[:4]]
    assert lengths == sorted(lengths)
    all_at_once = sample_batch(bank, fams, seeds, 12, 60, batch_rng(0, 0), W)
    assert sum(b.n_real_turns for b in grouped[:4]) == all_at_once.n_real_turns
    assert real_fraction(grouped) > real_fraction(plain)
    with pytest.raises(ValueError, match="outside a group"):
        sample_batch(bank, fams, seeds, 3, 60, batch_rng(0, 0), W, group=4, index=4)


def test_session_bank_renders_once_then_reads_the_cache(tmp_path):
    first = SessionBank(CFG, cache_dir=tmp_path)
    ex = first.get("cuespeak", 4)
    assert first.rendered == 1 and first.path("cuespeak", 4).is_file()
    again = SessionBank(CFG, cache_dir=tmp_path)
    ex2 = again.get("cuespeak", 4)
    assert again.rendered == 0
    for k in ("levels_in", "video", "text_in", "text_out", "levels_out", "speaking"):
        assert np.array_equal(getattr(ex, k), getattr(ex2, k)), k
    # a different feature layout gets its own cache
    other = SessionBank(preset("test", n_text_out=3), cache_dir=tmp_path)
    assert other.dir != again.dir
    # the held-out eval seeds are never rendered for training
    with pytest.raises(ValueError, match="seeds must be in"):
        again.get("cuespeak", 1_000_000)
