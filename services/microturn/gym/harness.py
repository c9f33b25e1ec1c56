"""The evaluation harness: run a responder over sessions chunk by chunk (as fast as it can,
sample-aligned: output sample n belongs to input sample n), then score both output channels.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from microturn.gym.asr import Recognizer, make_recognizer
from microturn.gym.layout import CHUNK_SAMPLES, SAMPLE_RATE
from microturn.gym.responders import Responder
from microturn.gym.scoring import Observed, TimedWord, match_timed
from microturn.gym.session import Session, speech_activity
from microturn.gym.tasks import FAMILIES, MODEL_VOCAB, get_family

CHANNELS = ("text", "speech")


@dataclass
class OutputTrack:
    """A responder's whole output for one session, aligned sample for sample with the input."""

    session_id: str
    pcm: np.ndarray
    text: list[str]
    delegations: list[tuple[int, str]]
    model_version: str = ""


def run_sessions(responder: Responder, sessions: list[Session]) -> list[OutputTrack]:
    """Drive ``responder`` over ``sessions``, up to ``responder.max_sessions`` at a time."""
    tracks: dict[str, OutputTrack] = {}
    batch = max(1, int(responder.max_sessions))
    for i in range(0, len(sessions), batch):
        group = sessions[i : i + batch]
        for s in group:
            responder.open(s)
            tracks[s.session_id] = OutputTrack(
                s.session_id, np.zeros(s.num_chunks * CHUNK_SAMPLES, np.int16), [], []
            )
        live = list(group)
        k = 0
        while live:
            outs = responder.step([(s.session_id, k) for s in live])
            if len(outs) != len(live):
                raise RuntimeError(f"{responder.label} returned {len(outs)} chunks for {len(live)} sessions")
            for s, out in zip(live, outs, strict=True):
                pcm = np.asarray(out.pcm)
                if pcm.shape != (CHUNK_SAMPLES,) or pcm.dtype != np.int16:
                    raise RuntimeError(
                        f"{responder.label}: output chunk must be int16 [{CHUNK_SAMPLES}], got {pcm.dtype} {pcm.shape}"
                    )
                t = tracks[s.session_id]
                t.pcm[k * CHUNK_SAMPLES : (k + 1) * CHUNK_SAMPLES] = pcm
                t.text.append(out.text or "")
                t.delegations += [(k, r) for r in out.delegations]
                t.model_version = out.model_version or t.model_version
            k += 1
            for s in [s for s in live if s.num_chunks <= k]:
                responder.close(s.session_id)
                live.remove(s)
    return [tracks[s.session_id] for s in sessions]


def text_words(text: list[str]) -> list[TimedWord]:
    """The text channel as timed words. Text is a stream (a model spells a word over several
    micro-turns), so chunks are joined and each word is timed by the chunk of its first character."""
    out: list[TimedWord] = []
    word, onset = "", 0
    for k, t in enumerate([*text, " "]):
        for ch in t.lower():
            if ch.isalnum() or ch == "'":
                if not word:
                    onset = k
                word += ch
            elif word:
                out.append(TimedWord(word, onset, onset * CHUNK_SAMPLES))
                word = ""
    return out


def observe(track: OutputTrack, recognizer: Recognizer) -> dict[str, Observed]:
    """Both channels: the text channel and the speech channel heard by ``recognizer``."""
    words = text_words(track.text)
    text_active = np.zeros(len(track.text), bool)
    for w in words:
        text_active[w.chunk] = True
    return {
        "text": Observed("text", words, text_active, list(track.delegations)),
        "speech": Observed(
            "speech", recognizer.recognize(track.pcm), speech_activity(track.pcm), list(track.delegations)
        ),
    }


# A spoken word agrees with the text channel if it is the same word with its onset within this many
# micro-turns of the text's: a word's audio starts in the micro-turn its first letters are written in
# and a 3-byte text stream spells longer words over the next ones.
AGREEMENT_TOLERANCE = 2


def agreement(obs: dict[str, Observed]) -> tuple[int, int]:
    """(words of the text channel the recogniser also heard, words of the text channel): how much of
    what the model writes its voice says intelligibly. Only vocabulary words count (the recogniser
    knows no others)."""
    said = [(w.text, w.chunk) for w in obs["text"].words if w.text in MODEL_VOCAB]
    matched, _, _ = match_timed(said, obs["speech"].words, AGREEMENT_TOLERANCE)
    return matched, len(said)


@dataclass
class FamilyResult:
    family: str
    title: str
    metric: str
    seeds: list[int]
    score: dict[str, float]  # channel → mean score
    metrics: dict[str, dict[str, float]]  # channel → metric → mean over sessions that report it
    per_session: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class RunResult:
    responder: str
    model_version: str
    families: dict[str, FamilyResult]
    audio_seconds: float
    wall_seconds: float

    @property
    def realtime_factor(self) -> float:
        """Seconds of audio processed per wall-clock second (>1: faster than real time)."""
        return self.audio_seconds / self.wall_seconds if self.wall_seconds > 0 else float("inf")

    def mean(self, channel: str) -> float:
        return float(np.mean([f.score[channel] for f in self.families.values()]))

    def agreement(self) -> tuple[int, int]:
        """(heard, written) vocabulary words pooled over every session: see ``agreement``."""
        rows = [r["agreement"] for f in self.families.values() for r in f.per_session]
        return sum(r[0] for r in rows), sum(r[1] for r in rows)


def evaluate(
    responder: Responder,
    families: list[str] | None = None,
    seeds: list[int] | None = None,
    recognizer: str | Recognizer = "template",
) -> RunResult:
    """Generate sessions, run ``responder`` over all of them together, score every family."""
    names = list(FAMILIES) if families is None else families
    fams = [get_family(n) for n in names]
    seeds = [0] if seeds is None else seeds
    sessions = [f.generate(seed) for f in fams for seed in seeds]
    asr = make_recognizer(recognizer, MODEL_VOCAB) if isinstance(recognizer, str) else recognizer
    t0 = time.perf_counter()
    tracks = run_sessions(responder, sessions)
    wall = time.perf_counter() - t0
    by_id = {t.session_id: t for t in tracks}
    results: dict[str, FamilyResult] = {}
    for fam in fams:
        per_session = []
        for s in (s for s in sessions if s.family == fam.name):
            obs = observe(by_id[s.session_id], asr)
            row: dict[str, Any] = {"seed": s.seed, "agreement": agreement(obs)}
            for ch in CHANNELS:
                sc = fam.score(s, obs[ch])
                row[ch] = {"score": sc.score, **sc.metrics}
            per_session.append(row)
        score = {ch: float(np.mean([r[ch]["score"] for r in per_session])) for ch in CHANNELS}
        metrics: dict[str, dict[str, float]] = {}
        for ch in CHANNELS:
            keys = sorted({k for r in per_session for k in r[ch] if k != "score"})
            metrics[ch] = {k: float(np.mean([r[ch][k] for r in per_session if k in r[ch]])) for k in keys}
        results[fam.name] = FamilyResult(
            fam.name, fam.title, fam.metric, list(seeds), score, metrics, per_session
        )
    versions = {t.model_version for t in tracks if t.model_version}
    audio = sum(s.num_chunks for s in sessions) * CHUNK_SAMPLES / SAMPLE_RATE
    return RunResult(responder.label, ",".join(sorted(versions)), results, audio, wall)
