"""The micro-turn layout the gym shares with the model and engine.

One chunk is 200 ms: 3200 int16 samples at 16 kHz, one 80×80 RGB video frame, and the typed text
or background updates that arrived during it. Output chunk k is produced right after input chunk k.
"""

from __future__ import annotations

SAMPLE_RATE = 16_000
CHUNK_MS = 200
CHUNK_SAMPLES = SAMPLE_RATE * CHUNK_MS // 1000
FRAME_SIZE = 80
FRAMES_PER_CHUNK = 1
CHUNKS_PER_SECOND = 1000 // CHUNK_MS
# Text-in tokens one micro-turn carries (the shipped presets' n_text_in): typed text and background
# updates queue and are read 3 bytes per micro-turn, so a reaction to them can start only once read.
TEXT_IN_PER_CHUNK = 3


def seconds_to_chunks(seconds: float) -> int:
    return round(seconds * CHUNKS_PER_SECOND)


def sample_to_chunk(sample: int) -> int:
    return sample // CHUNK_SAMPLES


def chunk_to_sample(chunk: int) -> int:
    return chunk * CHUNK_SAMPLES


def read_by(chunk: int, n_tokens: int) -> int:
    """The micro-turn that reads the last of ``n_tokens`` text-in tokens queued in ``chunk`` (with
    nothing else queued before them)."""
    return chunk + max(1, -(-n_tokens // TEXT_IN_PER_CHUNK)) - 1
