"""Turn-taking latency of one session, as a replica can see it: from the end of the caller's turn in
the session's input to the model starting to speak (the engine's ``SpeakingChanged(speaking=True)``).

How it is measured (``TurnClock``, a few fields per session, nothing kept per chunk):

- the caller's **end of turn** is the end of the last loud 50 ms frame of input audio (RMS above
  ``SPEECH_RMS``) once a later frame is quiet again, or the end of a micro-turn that carried typed
  text (the edge puts text typed during chunk k into chunk k, so it is complete by its end);
- the **answer** is the first micro-turn after that end of turn whose output starts the model
  speaking; its latency is the replica's wall clock when that output is ready minus the end of
  turn. Both are Unix milliseconds: a chunk's media times are the edge's wall clock.

So it covers the rest of the caller's last chunk after they went quiet (chunking), the edge's cut
delay, the hop to the replica, the wait for a tick and the step. It does not cover the caller's
capture and the WebRTC path to the edge, the way back (replica -> edge -> browser), the browser's
jitter buffer and playout, or the clock offset between the edge's and the replica's hosts.

Not recorded: a start of speech while the caller is still talking (an overlap or a backchannel, not
a turn taken: it clears the pending turn), a start of speech with no caller turn since the last
answer, and an answer later than ``ANSWER_WITHIN_MS`` (the model did not answer that turn). A pause
the model takes as the end of a turn counts as one. A plain energy threshold is fooled by loud
breaths and noise (an end of turn later than the real one: a shorter latency) and misses very
quiet talkers; chunks replayed to rebuild a session are not heard (no output is made for them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SPEECH_RMS = 500.0  # int16 RMS of a 50 ms frame that counts as speech (about -36 dBFS)
FRAME_MS = 50
ANSWER_WITHIN_MS = 10_000


@dataclass
class TurnClock:
    """One session's turn bookkeeping (constant size)."""

    turn_end_ms: int | None = None  # the caller's latest end of turn not yet answered
    talking: bool = False  # the caller's last heard frame was loud

    def heard(
        self, pcm: np.ndarray, media_start_ms: int, duration_ms: int, sample_rate: int, typed: bool
    ) -> None:
        """One micro-turn of the caller's input (int16 PCM), in the order the model hears them."""
        frame = sample_rate * FRAME_MS // 1000
        n = len(pcm) // frame if frame else 0
        if n:
            x = pcm[: n * frame].astype(np.float32).reshape(n, frame)
            loud = np.flatnonzero(np.sqrt((x * x).mean(axis=1)) > SPEECH_RMS)
            if loud.size:
                self.turn_end_ms = media_start_ms + (int(loud[-1]) + 1) * FRAME_MS
                self.talking = int(loud[-1]) == n - 1
            else:
                self.talking = False
        if typed:
            self.turn_end_ms = max(self.turn_end_ms or 0, media_start_ms + duration_ms)

    def answered(self, now_ms: int) -> int | None:
        """The model starts speaking at ``now_ms``: the latency of the turn it answers, or None."""
        end, self.turn_end_ms = self.turn_end_ms, None
        if end is None or self.talking:
            return None
        latency = now_ms - end
        return latency if 0 <= latency <= ANSWER_WITHIN_MS else None
