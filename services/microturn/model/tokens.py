"""Byte-level text tokens plus a few special tokens.

Bytes keep the vocabulary tiny and language-agnostic (no tokenizer to train or ship); the special tokens
mark the micro-turn structure and the spans the engine parses (delegation) or injects (background updates).
"""

from __future__ import annotations

N_BYTES = 256
PAD = 256  # an empty text-in or text-out slot
IN = 257  # start of a micro-turn's input tokens
OUT = 258  # start of a micro-turn's output tokens
SIL = 259  # the model says nothing in this text-out slot (explicit silence)
DELEG_START = 260  # the model opens a delegation request ...
DELEG_END = 261  # ... and closes it: the bytes between are the request
BG_START = 262  # a background update starts in text-in ...
BG_END = 263  # ... and ends
VOCAB_SIZE = 264

SPECIAL_NAMES = {
    PAD: "<pad>",
    IN: "<in>",
    OUT: "<out>",
    SIL: "<sil>",
    DELEG_START: "<deleg>",
    DELEG_END: "</deleg>",
    BG_START: "<bg>",
    BG_END: "</bg>",
}


def encode_text(text: str) -> list[int]:
    """Typed text as UTF-8 bytes."""
    return list(text.encode("utf-8"))


def encode_background(text: str) -> list[int]:
    """A background update wrapped in its markers so the model can tell it from typed text."""
    return [BG_START, *text.encode("utf-8"), BG_END]


def decode_bytes(ids: list[int]) -> str:
    """Byte tokens back to text; special tokens are dropped, broken UTF-8 is replaced."""
    return bytes(i for i in ids if 0 <= i < N_BYTES).decode("utf-8", errors="replace")


def describe(ids: list[int]) -> str:
    """Readable rendering with special tokens named (for logs and tests)."""
    out: list[str] = []
    for i in ids:
        out.append(SPECIAL_NAMES[i] if i in SPECIAL_NAMES else bytes([i]).decode("latin-1"))
    return "".join(out)
