"""dMel featuriser, its inverse, the dMel embedding and the Griffin-Lim vocoder."""

from __future__ import annotations

import math

import pytest
import torch

from microturn.model import InteractionModel, preset
from microturn.model.dmel import DMel, DMelEmbedding

CFG = preset("test")


def tone(freq: float, seconds: float, amp: float = 0.3) -> torch.Tensor:
    t = torch.arange(int(16_000 * seconds)) / 16_000
    return amp * torch.sin(2 * math.pi * freq * t)


def test_round_trip_error_is_within_half_a_level():
    dm = DMel(CFG)
    g = torch.Generator().manual_seed(0)
    pcm = tone(440, 1.0) + tone(1800, 1.0, 0.1) + 0.01 * torch.randn(16_000, generator=g)
    lm = dm.logmel(pcm[None])
    levels = dm.quantize(lm)
    assert levels.dtype == torch.long and int(levels.min()) >= 0 and int(levels.max()) <= CFG.n_levels - 1
    back = dm.dequantize(levels)
    half_step = (CFG.log_max - CFG.log_min) / (CFG.n_levels - 1) / 2
    assert float((back - lm).abs().max()) <= half_step + 1e-5
    # level centres are fixed points
    assert torch.equal(dm.quantize(back), levels)


def test_shape_and_range():
    dm = DMel(CFG)
    lm = dm.logmel(torch.zeros(2, 3200))
    assert lm.shape == (2, 16, 80)  # 12.5 ms hop: 16 frames per 200 ms
    assert float(lm.min()) == pytest.approx(CFG.log_min)  # silence clamps to the floor
    loud = dm.logmel(tone(1000, 0.2, 1.0)[None])
    assert float(loud.max()) <= CFG.log_max


def test_chunked_featurisation_equals_whole_signal():
    """Causal framing: a chunk needs only the previous win - hop samples."""
    dm = DMel(CFG)
    pcm = tone(300, 0.6) + tone(2500, 0.6, 0.05)
    whole = dm.logmel(pcm[None])
    hist = torch.zeros(1, dm.history)
    parts = []
    for c in range(3):
        chunk = pcm[None, c * 3200 : (c + 1) * 3200]
        parts.append(dm.logmel(chunk, hist))
        hist = torch.cat([hist, chunk], 1)[:, -dm.history :]
    assert torch.allclose(torch.cat(parts, 1), whole, atol=1e-5)


def test_tone_lands_in_the_right_channel():
    dm = DMel(CFG)
    lm = dm.logmel(tone(1000, 0.2)[None])[0, 8]
    centres = dm.fb.argmax(0).float() * 8000 / (dm.n_bins - 1)
    assert abs(float(centres[int(lm.argmax())]) - 1000) < 120


def test_embedding_is_a_sum_of_per_channel_level_vectors():
    emb = DMelEmbedding(CFG)
    g = torch.Generator().manual_seed(1)
    levels = torch.randint(0, CFG.n_levels, (3, CFG.frames_per_audio_token, CFG.n_mels), generator=g)
    got = emb(levels)
    w = emb.weight.view(CFG.frames_per_audio_token, CFG.n_mels, CFG.n_levels, -1)
    for i in range(3):
        want = sum(
            w[f, c, levels[i, f, c]] for f in range(CFG.frames_per_audio_token) for c in range(CFG.n_mels)
        )
        assert torch.allclose(got[i], want, atol=1e-5)


@pytest.mark.parametrize("freq", [300, 700, 1500])
def test_vocoder_reproduces_the_pitch(freq):
    m = InteractionModel(preset("test", vocoder_iters=2))
    pcm = tone(freq, 0.8)
    out = m.vocoder.vocode(m.dmel.logmel(pcm[None]))
    assert out.shape == (1, 12_800) and float(out.abs().max()) <= 1.0
    spec = torch.fft.rfft(out[0, 3200:] * torch.hann_window(9600))
    peak_hz = int(spec.abs().argmax()) * 16_000 / 9600
    assert abs(peak_hz - freq) < 60


def test_vocoder_is_silent_on_silence_and_checks_length():
    m = InteractionModel(preset("test"))
    lm = m.dmel.logmel(torch.zeros(1, 6400))
    assert float(m.vocoder.vocode(lm).abs().max()) < 1e-2
    with pytest.raises(ValueError, match="multiple of frames_per_chunk"):
        m.vocoder.vocode(lm[:, :10])
