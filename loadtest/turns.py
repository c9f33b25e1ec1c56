"""The model's speech as a caller heard it, and what each turn of the call measured: one
implementation for every caller mode (aiortc, browser), so both measure turns alike."""

from __future__ import annotations

import asyncio
import contextlib

import numpy as np

from loadtest.records import TurnRecord


class ReceivedSpeech:
    """The received audio fed live to the onset detector. ``changed`` is set whenever a feed
    confirmed a new onset (a caller waiting for an answer wakes on it)."""

    def __init__(self, sample_rate: int) -> None:
        from loadtest.onset import OnsetDetector  # lazily: it imports torch for Silero VAD

        self.rate = sample_rate
        self.detector = OnsetDetector(sample_rate=sample_rate)
        self.changed = asyncio.Event()
        self.samples = 0
        self.segments = 0

    def feed(self, pcm: np.ndarray, t0: float) -> None:
        self.samples += len(pcm)
        self.segments += 1
        if self.detector.feed(pcm, t0):
            self.changed.set()

    def close(self) -> None:
        """End of the stream: an answer still being spoken gets its offset."""
        with contextlib.suppress(RuntimeError):
            self.detector.flush()

    def first_after(self, t: float, before: float | None = None) -> float | None:
        """The first onset at or after ``t``, if it came no later than ``before``."""
        on = self.detector.first_onset_after(t)
        return None if on is None or (before is not None and on > before) else on

    def yielded_at(self, t: float) -> float | None:
        """When the model's speech that was going on at ``t`` stopped; None if it was not speaking
        at ``t`` (nothing to yield) or had not stopped by the end of the call."""
        for span in self.detector.speech_spans():
            if span.onset <= t and (span.offset is None or span.offset > t):
                return span.offset
        return None


def settle_turns(
    turns: list[TurnRecord], speech: ReceivedSpeech, answer_timeout_s: float, ended_at: float
) -> list[TurnRecord]:
    """Every turn's answer and barge-in yield from all the onsets found (the live wait may have
    missed a late detection). A turn whose answer window the hangup cut short is dropped: whether
    the model would have answered it is unknown, so it counts neither as answered nor as not."""
    speech.close()
    kept = []
    for t in turns:
        ref = t.speech_end_at if t.speech_end_at is not None else t.said_at
        limit = ref + answer_timeout_s
        on = speech.first_after(ref, before=limit)
        if on is None and limit > ended_at:
            continue
        t.answer_onset_at = on
        t.turn_latency_ms = None if on is None else round((on - ref) * 1000, 1)
        if t.barge_in_at is not None:
            off = speech.yielded_at(t.barge_in_at)
            t.yield_ms = None if off is None else round((off - t.barge_in_at) * 1000, 1)
        kept.append(t)
    return kept
