"""The loop: it learns, resumes bit-identically, and writes checkpoints the engine serves."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from microturn.engine import ChunkInput, Engine
from microturn.gym import generate
from microturn.model import load_checkpoint
from microturn.train.__main__ import main
from microturn.train.data import SessionBank
from microturn.train.loop import MODEL_FILE, STATE_FILE, Trainer
from microturn.train.objective import compute_losses
from microturn.train.presets import train_preset

TP = train_preset("test")


@pytest.fixture(scope="module")
def bank(tmp_path_factory) -> SessionBank:
    from microturn.model import preset

    return SessionBank(preset(TP.model), cache_dir=tmp_path_factory.mktemp("bank"))


def fixed_loss(trainer: Trainer) -> dict[str, float]:
    with torch.no_grad():
        losses = compute_losses(trainer.model, trainer.batch_at(0), torch.Generator().manual_seed(0))
    return {k: float(v) for k, v in losses.items()}


def test_loss_decreases_on_a_tiny_overfit_set(bank, tmp_path):
    trainer = Trainer(TP, seed=0, out=tmp_path, bank=bank)  # 2 families x 2 seeds
    before = fixed_loss(trainer)
    rows = trainer.run(30, eval_every=0, quiet=True)
    after = fixed_loss(trainer)
    assert len(rows) == 30 and trainer.step == 30
    assert after["total"] < 0.6 * before["total"]
    assert after["text_ce"] < 0.3 * before["text_ce"]
    assert after["flow"] < before["flow"]
    assert all(np.isfinite(r["total"]) and r["tok_s"] > 0 for r in rows)


def test_resume_continues_bit_identically(bank, tmp_path):
    straight = Trainer(TP, seed=1, out=tmp_path / "a", bank=bank)
    straight.run(2, eval_every=0, quiet=True)
    straight.save()
    rest = [straight.train_step()["total"] for _ in range(3)]

    resumed = Trainer(TP, seed=1, out=tmp_path / "b", bank=bank)
    resumed.load(tmp_path / "a" / STATE_FILE)
    assert resumed.step == 2
    assert [resumed.train_step()["total"] for _ in range(3)] == rest
    for p, q in zip(straight.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(p, q)
    # another seed draws other batches
    other = Trainer(TP, seed=2, out=tmp_path / "c", bank=bank)
    with pytest.raises(ValueError, match="seed"):
        other.load(tmp_path / "a" / STATE_FILE)


def test_resume_takes_the_presets_sampling_settings_but_refuses_other_shapes(bank, tmp_path):
    a = Trainer(TP, seed=0, out=tmp_path / "a", bank=bank)
    a.run(1, eval_every=0, quiet=True)
    a.save()
    greedy = Trainer(
        dataclasses.replace(TP, model_overrides={"temperature": 0.0}), out=tmp_path / "b", bank=bank
    )
    greedy.load(tmp_path / "a" / STATE_FILE)
    assert greedy.step == 1 and greedy.model.cfg.temperature == 0.0
    wider = Trainer(dataclasses.replace(TP, model_overrides={"d_model": 48}), out=tmp_path / "c", bank=bank)
    with pytest.raises(ValueError, match="config differs"):
        wider.load(tmp_path / "a" / STATE_FILE)


def test_saved_checkpoint_runs_through_the_engine(bank, tmp_path):
    trainer = Trainer(TP, seed=0, out=tmp_path, bank=bank)
    trainer.run(3, eval_every=0, quiet=True)
    path = trainer.save()
    model = load_checkpoint(path)
    assert model.version == "test-s3"
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(model.state_dict()[k], v.cpu())
    eng = Engine(model, num_slots=1)
    s = generate("turntaking", 5)
    eng.open(s.session_id, seed=0)
    outs = []
    for k in range(4):
        pcm, video, text, bg = s.input_chunk(k)
        outs += eng.step([ChunkInput(s.session_id, k, pcm, video, text, bg)])
    assert [o.model_version for o in outs] == ["test-s3"] * 4
    assert all(o.pcm.shape == (3200,) for o in outs)
    # the trainer's own model is still trainable (the engine froze only its copy)
    assert all(p.requires_grad for p in trainer.model.parameters())


def test_engine_eval_scores_every_family_and_leaves_the_model_trainable(bank, tmp_path):
    trainer = Trainer(TP, seed=0, out=tmp_path, bank=bank)
    scores = trainer.engine_eval(sessions_per_family=1)
    assert set(scores) == set(TP.families)
    assert all(0 <= s["text"] <= 100 and 0 <= s["speech"] <= 100 for s in scores.values())
    assert all(p.requires_grad for p in trainer.model.parameters())
    trainer.train_step()


def test_cli_trains_saves_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("MICROTURN_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "run"
    monkeypatch.setattr("microturn.train.data.cache_root", lambda: tmp_path / "cache" / "train")
    args = ["--preset", "test", "--steps", "4", "--out", str(out), "--quiet"]
    assert main([*args, "--stop-at", "2"]) == 0
    assert (out / STATE_FILE).is_file() and load_checkpoint(out / MODEL_FILE).version == "test-s2"
    assert main([*args, "--resume"]) == 0
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert load_checkpoint(out / MODEL_FILE).version == "test-s4"
    # pausing did not change the schedule: the lr of each step is the uninterrupted run's
    fresh = Trainer(train_preset("test", steps=4), out=tmp_path / "x")
    assert [r["lr"] for r in rows] == [fresh.lr_at(i) for i in range(4)]


def test_ship_writes_a_versioned_checkpoint(bank, tmp_path):
    trainer = Trainer(TP, seed=0, out=tmp_path / "run", bank=bank)
    trainer.run(1, eval_every=0, quiet=True)
    dest = trainer.ship("microturn-tiny-v9", dest=tmp_path / "ckpt" / "shipped.safetensors")
    shipped = load_checkpoint(dest)
    assert shipped.version == "microturn-tiny-v9"
    # stored in float16 (half the bytes), loaded back as the model's float32 weights
    assert dest.stat().st_size < 0.6 * trainer.save().stat().st_size
    for k, v in shipped.state_dict().items():
        ref = trainer.model.state_dict()[k]
        assert v.dtype == ref.dtype
        torch.testing.assert_close(v, ref, rtol=1e-3, atol=1e-4)
