"""The training objective equals the model's own forward, plus position offsets and loss weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from microturn.model import InteractionModel, preset
from microturn.model import tokens as tk
from microturn.train.data import SessionBank, TrainBatch, collate
from microturn.train.objective import compute_losses, corrupt_feedback

CFG = preset("test")
W = (8.0, 2.0, 4.0)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[InteractionModel, SessionBank]:
    torch.manual_seed(0)
    return InteractionModel(CFG), SessionBank(CFG, cache_dir=tmp_path_factory.mktemp("bank"))


def unit(batch: TrainBatch) -> TrainBatch:
    return TrainBatch(
        batch.turns,
        torch.ones_like(batch.text_weight),
        torch.ones_like(batch.flow_weight),
        batch.pos_offset,
        batch.n_real_turns,
    )


def test_matches_model_forward_at_offset_zero_with_unit_weights(setup):
    model, bank = setup
    a, b = bank.get("timespeak", 0), bank.get("turntaking", 0)
    n = min(a.n_turns, b.n_turns)
    batch = unit(collate([a, b], [0, 0], n, CFG, W))
    ref = model(batch.turns, generator=torch.Generator().manual_seed(3)).losses
    got = compute_losses(model, batch, torch.Generator().manual_seed(3))
    for k in ("text_ce", "flow", "moe_aux", "total"):
        torch.testing.assert_close(got[k], ref[k], rtol=1e-5, atol=1e-6)


def test_position_offset_moves_turns_but_not_sinks(setup):
    model, bank = setup
    s, t = CFG.n_sinks, model.layout.turn_len
    p = model.positions(2, 5, torch.device("cpu"))
    assert p.tolist() == list(range(s)) + [s + 5 * t + i for i in range(2 * t)]
    # the relative distance to the sinks changes, so the loss does (tokens among themselves do not)
    ex = bank.get("timespeak", 1)
    b0 = collate([ex], [0], ex.n_turns, CFG, W, pos_offset=0)
    b1 = collate([ex], [0], ex.n_turns, CFG, W, pos_offset=1000)
    l0 = compute_losses(model, b0, torch.Generator().manual_seed(0))["text_ce"]
    l1 = compute_losses(model, b1, torch.Generator().manual_seed(0))["text_ce"]
    assert not torch.allclose(l0, l1)


def test_text_weights_select_what_the_loss_counts(setup):
    model, bank = setup
    ex = bank.get("turntaking", 1)
    batch = collate([ex], [0], ex.n_turns, CFG, W)
    onset = (batch.text_weight == W[0]).nonzero()
    assert len(onset) > 0  # a turn-taking session has at least one spoken answer
    i, k, j = onset[0].tolist()
    only = torch.zeros_like(batch.text_weight)
    only[i, k, j] = 5.0  # one slot, any weight: the weighted mean is that slot's cross-entropy
    logits = model(batch.turns, with_losses=False).text_logits
    want = F.cross_entropy(logits[i, k, j][None], batch.turns.text_out[i, k, j][None])
    got = compute_losses(model, TrainBatch(batch.turns, only, batch.flow_weight, 0, 1))["text_ce"]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert batch.turns.text_out[i, k, j] != tk.SIL


def test_padding_does_not_change_the_text_loss(setup):
    model, bank = setup
    ex = bank.get("timespeak", 0)
    tight = compute_losses(model, collate([ex], [0], ex.n_turns, CFG, W))["text_ce"]
    padded = collate([ex], [0], ex.n_turns + 6, CFG, W)
    assert padded.text_weight[0, ex.n_turns :].sum() == 0
    torch.testing.assert_close(compute_losses(model, padded)["text_ce"], tight, rtol=1e-5, atol=1e-6)


def test_moe_aux_loss_is_part_of_the_total(tmp_path):
    cfg = preset("test", n_experts=4, top_k=2, d_ff_expert=32)
    torch.manual_seed(0)
    model = InteractionModel(cfg)
    ex = SessionBank(cfg, cache_dir=tmp_path).get("timespeak", 0)
    losses = compute_losses(model, collate([ex], [0], ex.n_turns, cfg, W), aux_weight=0.5)
    assert losses["moe_aux"] > 0
    torch.testing.assert_close(losses["total"], losses["text_ce"] + losses["flow"] + 0.5 * losses["moe_aux"])


def test_feedback_corruption_is_seeded_bounded_and_keeps_the_targets(setup):
    model, bank = setup
    ex = bank.get("timespeak", 0)
    batch = collate([ex, ex], [0, 0], ex.n_turns, CFG, W)
    clean = batch.turns.audio_out.clone()
    assert corrupt_feedback(clean, CFG.n_levels, 0.0, 0.0, None) is clean

    def noisy(seed: int, sigma: float, replace: float) -> torch.Tensor:
        return corrupt_feedback(clean, CFG.n_levels, sigma, replace, torch.Generator().manual_seed(seed))

    a = noisy(1, 4.0, 0.25)
    assert torch.equal(a, noisy(1, 4.0, 0.25)) and not torch.equal(a, noisy(2, 4.0, 0.25))
    assert a.shape == clean.shape and a.dtype == clean.dtype
    assert int(a.min()) >= 0 and int(a.max()) < CFG.n_levels
    assert (a != clean).float().mean() > 0.05
    # full replacement is noise spread over all levels, whatever the input was
    r = noisy(3, 0.0, 1.0)
    assert len(torch.unique(r)) == CFG.n_levels and (r != clean).float().mean() > 0.5

    # the model reads the corrupted copy; the flow target and the batch stay clean
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    base = compute_losses(model, batch, g())
    hurt = compute_losses(model, batch, g(), feedback_noise=(0.0, 1.0))
    assert torch.equal(batch.turns.audio_out, clean)
    assert not torch.isclose(base["text_ce"], hurt["text_ce"])
