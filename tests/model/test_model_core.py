"""Config presets, token layout, masks, RoPE precision, the full forward with losses, checkpoints."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from microturn.model import (
    CheckpointError,
    ConfigError,
    InteractionModel,
    ModelConfig,
    TurnBatch,
    load_checkpoint,
    preset,
    save_checkpoint,
)
from microturn.model import tokens as tk
from microturn.model.layout import TurnLayout
from microturn.model.transformer import apply_rope, rope_cos_sin, rope_inv_freq, window_sink_mask


def random_batch(cfg: ModelConfig, b: int, n: int, seed: int = 0) -> TurnBatch:
    g = torch.Generator().manual_seed(seed)
    return TurnBatch(
        pcm=torch.randint(-4000, 4000, (b, n * cfg.samples_per_chunk), generator=g, dtype=torch.int16),
        video=torch.randint(
            0, 256, (b, n, cfg.frame_size, cfg.frame_size, 3), generator=g, dtype=torch.uint8
        ),
        has_video=torch.rand(b, n, generator=g) > 0.5,
        text_in=torch.randint(0, tk.VOCAB_SIZE, (b, n, cfg.n_text_in), generator=g),
        text_out=torch.randint(0, tk.VOCAB_SIZE, (b, n, cfg.n_text_out), generator=g),
        audio_out=torch.randint(
            0, cfg.n_levels, (b, n, cfg.n_audio_tokens, cfg.frames_per_audio_token, cfg.n_mels), generator=g
        ),
    )


def test_presets():
    tiny = InteractionModel(preset("tiny"))
    assert tiny.num_params() * 4 <= 30e6  # fp32 checkpoint fits the 30 MB budget
    gpu = preset("gpu-moe")
    assert gpu.n_experts > 1 and gpu.d_model >= 1024
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("huge")
    with pytest.raises(ConfigError, match="n_heads must be a multiple of n_kv_heads"):
        preset("tiny", n_kv_heads=3)
    with pytest.raises(ConfigError, match="sample_rate"):
        preset("tiny", sample_rate=24_000)
    assert ModelConfig.from_dict(preset("test").to_dict()) == preset("test")
    with pytest.raises(ConfigError, match="unknown config fields"):
        ModelConfig.from_dict({"bogus": 1})


def test_layout_is_contiguous_and_documented():
    lay = TurnLayout.from_config(preset("tiny"))
    rows = lay.rows()
    assert rows[0][1] == 0
    for (_, o, n), (_, o2, _) in itertools.pairwise(rows):
        assert o + n == o2
    assert rows[-1][1] + rows[-1][2] == lay.turn_len == 20
    assert lay.n_prefill == lay.out_marker + 2
    assert lay.position(2, 0) == lay.n_sinks + 2 * lay.turn_len


def test_text_tokens():
    assert tk.decode_bytes(tk.encode_text("héllo")) == "héllo"
    ids = tk.encode_background("done")
    assert ids[0] == tk.BG_START and ids[-1] == tk.BG_END
    assert tk.describe([tk.DELEG_START, *b"hi", tk.DELEG_END]) == "<deleg>hi</deleg>"


def test_window_sink_mask_brute_force():
    pos = torch.arange(30)
    m = window_sink_mask(pos, 3, 7)
    for i in range(30):
        for j in range(30):
            assert bool(m[i, j]) == (j < 3 or (i - 7 < j <= i))


def test_rope_is_relative_and_precise_far_into_a_session():
    inv = rope_inv_freq(16, 10_000.0)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 16, generator=g), torch.randn(1, 1, 16, generator=g)

    def score(pq: int, pk: int) -> float:
        cq, sq = rope_cos_sin(torch.tensor([pq]), inv)
        ck, sk = rope_cos_sin(torch.tensor([pk]), inv)
        return float((apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum())

    near = score(12, 5)
    far = score(12 + 3_000_000, 5 + 3_000_000)  # ~2 days of 200 ms turns
    assert far == pytest.approx(near, abs=2e-3)


def test_forward_losses_and_gradients():
    torch.manual_seed(0)
    cfg = preset("test", n_experts=4, d_ff_expert=32)
    m = InteractionModel(cfg)
    out = m(random_batch(cfg, 2, 3), generator=torch.Generator().manual_seed(0))
    lay = m.layout
    assert out.hidden.shape == (2, cfg.n_sinks + 3 * lay.turn_len, cfg.d_model)
    assert out.text_logits.shape == (2, 3, cfg.n_text_out, tk.VOCAB_SIZE)
    for k in ("text_ce", "flow", "moe_aux", "total"):
        assert torch.isfinite(out.losses[k]), k
    out.losses["total"].backward()
    no_grad = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []


def test_precomputed_input_levels_match_pcm():
    cfg = preset("test")
    m = InteractionModel(cfg).eval()
    b = random_batch(cfg, 1, 2, seed=3)
    with torch.no_grad():
        ref = m(b, with_losses=False).hidden
        b.audio_in_levels = m.dmel.levels(b.pcm)
        b.pcm = torch.zeros_like(b.pcm)  # not read any more
        assert torch.equal(m(b, with_losses=False).hidden, ref)


def test_causality():
    """Changing a later turn never changes earlier positions."""
    cfg = preset("test")
    m = InteractionModel(cfg).eval()
    a = random_batch(cfg, 1, 3, seed=1)
    b = random_batch(cfg, 1, 3, seed=1)
    b.text_in[0, 2] = (b.text_in[0, 2] + 1) % tk.VOCAB_SIZE
    b.pcm[0, 2 * 3200 :] = 0
    with torch.no_grad():
        ha = m(a, with_losses=False).hidden
        hb = m(b, with_losses=False).hidden
    cut = cfg.n_sinks + 2 * m.layout.turn_len
    assert torch.allclose(ha[:, :cut], hb[:, :cut], atol=1e-6)
    assert not torch.allclose(ha[:, cut:], hb[:, cut:], atol=1e-3)


def test_checkpoint_round_trip(tmp_path):
    cfg = preset("test")
    m = InteractionModel(cfg).eval()
    p = save_checkpoint(m, tmp_path / "m.safetensors", "v1.2-test")
    m2 = load_checkpoint(p)
    assert m2.version == "v1.2-test" and m2.cfg == cfg
    batch = random_batch(cfg, 1, 2)
    with torch.no_grad():
        assert torch.equal(m(batch, with_losses=False).hidden, m2(batch, with_losses=False).hidden)


def test_checkpoint_mismatch_names_the_tensor(tmp_path):
    m = InteractionModel(preset("test"))
    p = save_checkpoint(m, tmp_path / "m.safetensors", "v1")
    with safe_open(str(p), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    cfg = json.loads(meta["config"])
    cfg["d_ff"] = 256  # the weights were saved with d_ff = 128
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata={**meta, "config": json.dumps(cfg)})
    with pytest.raises(
        CheckpointError, match=r"w_gate\.weight: shape \(128, 64\) in checkpoint, \(256, 64\) in model"
    ):
        load_checkpoint(bad)
    del tensors["lm_head.weight"]
    missing = tmp_path / "missing.safetensors"
    save_file(tensors, str(missing), metadata=meta)
    with pytest.raises(CheckpointError, match=r"missing tensor lm_head\.weight"):
        load_checkpoint(missing)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_checkpoint(junk)
    with pytest.raises(CheckpointError, match="version"):
        save_checkpoint(m, tmp_path / "x.safetensors", "")
