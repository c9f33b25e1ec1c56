"""Independent recognisers for the model's speech channel.

``TemplateRecognizer`` (default) finds word-like segments by energy and matches each one against
the vocabulary rendered in the fixed model voice, by dynamic time warping over log-mel features.
Every word has two templates: the clean rendering and the same rendering through the model's audio
path (16-level dMel, then streaming Griffin-Lim: the best a model can produce). Clean templates alone
reject even perfectly reproduced targets (measured: DTW distance 7.6-10.3 for all 43 words against a
threshold of 7, while noise and scrambled speech score >= 8.2); with both, reproduced words score
4.4-4.8 and are all recognised, and the negatives stay above 8.
It never sees the model's text channel, so the speech score checks that the model really *said* it.
``SphinxRecognizer`` runs pocketsphinx with a grammar of the same vocabulary; on espeak-ng speech
it is much less accurate (about half the words on our vocabulary), so it is optional.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from typing import Protocol

import numpy as np

from microturn.gym.layout import SAMPLE_RATE, sample_to_chunk
from microturn.gym.scoring import TimedWord
from microturn.gym.speech import MODEL_VOICE, render_word

HOP = 160  # 10 ms
WIN = 400  # 25 ms
N_MELS = 40


class Recognizer(Protocol):
    name: str

    def recognize(self, pcm: np.ndarray) -> list[TimedWord]: ...


@cache
def _mel_filters(n_fft: int = 512, n_mels: int = N_MELS) -> np.ndarray:
    def hz_to_mel(f: np.ndarray) -> np.ndarray:
        return 2595 * np.log10(1 + f / 700)

    mels = np.linspace(hz_to_mel(np.array(60.0)), hz_to_mel(np.array(7600.0)), n_mels + 2)
    hz = 700 * (10 ** (mels / 2595) - 1)
    bins = np.floor((n_fft + 1) * hz / SAMPLE_RATE).astype(int)
    fb = np.zeros((n_mels, n_fft // 2 + 1))
    for i in range(n_mels):
        lo, mid, hi = bins[i], bins[i + 1], max(bins[i + 2], bins[i + 1] + 1)
        fb[i, lo:mid] = (np.arange(lo, mid) - lo) / max(mid - lo, 1)
        fb[i, mid:hi] = (hi - np.arange(mid, hi)) / max(hi - mid, 1)
    return fb


def log_mel(pcm: np.ndarray) -> np.ndarray:
    """[frames, 40] log-mel features at a 10 ms hop."""
    x = pcm.astype(np.float32) / 32768
    if len(x) < WIN:
        x = np.pad(x, (0, WIN - len(x)))
    n = 1 + (len(x) - WIN) // HOP
    idx = np.arange(WIN)[None, :] + HOP * np.arange(n)[:, None]
    spec = np.abs(np.fft.rfft(x[idx] * np.hanning(WIN), n=512)) ** 2
    return np.log(spec @ _mel_filters().T + 1e-6)


def segments(
    pcm: np.ndarray, threshold_rms: float = 150.0, min_gap: int = 8, min_len: int = 8
) -> list[tuple[int, int]]:
    """Sample spans of sound separated by at least ``min_gap`` quiet 10 ms frames."""
    n = len(pcm) // HOP
    frames = pcm[: n * HOP].astype(np.float32).reshape(n, HOP)
    loud = np.sqrt((frames**2).mean(axis=1)) > threshold_rms
    spans: list[list[int]] = []
    for i in np.flatnonzero(loud):
        if spans and i - spans[-1][1] <= min_gap:
            spans[-1][1] = i + 1
        else:
            spans.append([i, i + 1])
    return [(int(a) * HOP, int(b) * HOP) for a, b in spans if b - a >= min_len]


def dtw_distance(seg: np.ndarray, tpl: np.ndarray) -> float:
    """Mean frame distance along the best monotone path that consumes one segment frame per step
    and advances the template by 0, 1 or 2 frames (so it allows 0.5×–∞ speed changes)."""
    cost = np.sqrt(((seg[:, None, :] - tpl[None, :, :]) ** 2).sum(-1))
    inf = np.float32(np.inf)
    d = np.full(tpl.shape[0], inf, dtype=np.float32)
    d[0] = cost[0, 0]
    for i in range(1, seg.shape[0]):
        prev1 = np.concatenate([[inf], d[:-1]])
        prev2 = np.concatenate([[inf, inf], d[:-2]])
        d = cost[i] + np.minimum(np.minimum(d, prev1), prev2)
    return float(d[-1] / seg.shape[0])


def _normalise(feats: np.ndarray) -> np.ndarray:
    return feats - feats.mean(axis=0, keepdims=True)


@cache
def _codec(codec_preset: str) -> tuple:  # (config, DMel, GriffinLim), built once per preset
    from microturn.model import preset
    from microturn.model.dmel import DMel
    from microturn.model.vocoder import GriffinLim

    cfg = preset(codec_preset)
    return cfg, DMel(cfg), GriffinLim(cfg)


def through_model_codec(pcm: np.ndarray, codec_preset: str) -> np.ndarray:
    """``pcm`` as a model of ``codec_preset`` would reproduce it at best: dMel levels, Griffin-Lim."""
    import torch

    cfg, dmel, vocoder = _codec(codec_preset)
    n = -(-len(pcm) // cfg.samples_per_chunk) * cfg.samples_per_chunk
    padded = np.zeros(n, np.int16)
    padded[: len(pcm)] = pcm
    with torch.no_grad():
        mel = dmel.dequantize(dmel.levels(torch.from_numpy(padded)[None]))
        out = vocoder.vocode(mel)[0].mul(32767).round().clamp(-32768, 32767)
    return out.to(torch.int16).numpy()[: len(pcm)]


def _longest_segment(pcm: np.ndarray) -> np.ndarray:
    spans = segments(pcm)
    a, b = max(spans, key=lambda s: s[1] - s[0]) if spans else (0, len(pcm))
    return pcm[a:b]


@dataclass
class TemplateRecognizer:
    """DTW word matcher for the model voice over a closed vocabulary.

    ``codec_preset``: the model preset whose audio path the second set of templates goes through
    (None: clean templates only)."""

    vocab: tuple[str, ...]
    max_distance: float = 7.0
    codec_preset: str | None = "tiny"
    name: str = "template-dtw"

    def __post_init__(self) -> None:
        if not self.vocab:
            raise ValueError("the recogniser needs a non-empty vocabulary")
        self._templates: list[tuple[str, np.ndarray]] = []
        for w in self.vocab:
            pcm = render_word(w, MODEL_VOICE)
            self._templates.append((w, _normalise(log_mel(pcm))))
            if self.codec_preset is not None:
                # placed as a model word is (MODEL_ONSET_SAMPLES into a chunk), then cut out again
                lead = np.zeros(640, np.int16)
                coded = through_model_codec(
                    np.concatenate([lead, pcm, np.zeros(3200, np.int16)]), self.codec_preset
                )
                self._templates.append((w, _normalise(log_mel(_longest_segment(coded)))))

    def classify(self, pcm: np.ndarray) -> tuple[str | None, float]:
        feats = _normalise(log_mel(pcm))
        best, best_d = None, np.inf
        for word, tpl in self._templates:
            if not 0.5 <= feats.shape[0] / tpl.shape[0] <= 2.0:
                continue
            d = dtw_distance(feats, tpl)
            if d < best_d:
                best, best_d = word, d
        return (best, best_d) if best_d <= self.max_distance else (None, best_d)

    def recognize(self, pcm: np.ndarray) -> list[TimedWord]:
        out = []
        for a, b in segments(pcm):
            word, _ = self.classify(pcm[a:b])
            if word is not None:
                out.append(TimedWord(word, sample_to_chunk(a), a))
        return out


@dataclass
class SphinxRecognizer:
    """pocketsphinx with a JSGF grammar ``(w1 | w2 | ...)*`` over the vocabulary."""

    vocab: tuple[str, ...]
    name: str = "pocketsphinx"

    def __post_init__(self) -> None:
        from pocketsphinx import Config, Decoder

        words = sorted(set(self.vocab))
        grammar = "#JSGF V1.0;\ngrammar gym;\npublic <s> = ( " + " | ".join(words) + " )* ;\n"
        self._decoder = Decoder(Config(lm=None, logfn=os.devnull))
        self._decoder.add_jsgf_string("gym", grammar)
        self._decoder.activate_search("gym")

    def recognize(self, pcm: np.ndarray) -> list[TimedWord]:
        d = self._decoder
        d.start_utt()
        d.process_raw(pcm.astype("<i2").tobytes(), full_utt=True)
        d.end_utt()
        out = []
        for seg in d.seg() or []:
            word = seg.word.split("(")[0]
            if word in self.vocab:
                start = seg.start_frame * HOP
                out.append(TimedWord(word, sample_to_chunk(start), start))
        return out


def make_recognizer(kind: str, vocab: tuple[str, ...]) -> Recognizer:
    if kind == "template":
        return TemplateRecognizer(vocab)
    if kind == "sphinx":
        return SphinxRecognizer(vocab)
    raise ValueError(f"unknown recogniser {kind!r}; expected 'template' or 'sphinx'")
