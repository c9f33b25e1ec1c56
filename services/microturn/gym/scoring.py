"""What scorers see of a model's output, and the matching rules every family shares.

A scorer gets one channel at a time: the model's text channel or its speech as heard by the
recogniser, as timed words plus per-chunk activity, plus the delegation events. Timing is in
micro-turns; "± one micro-turn" means a word counts if its onset chunk is within 1 of the target.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

ONES = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
TENS = ["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
NUMBER_WORDS = (*ONES, *TENS)
TOLERANCE = 1


@dataclass(frozen=True)
class TimedWord:
    text: str
    chunk: int  # onset micro-turn
    sample: int  # onset sample in the aligned output track


@dataclass
class Observed:
    """One channel of a model's output for one session."""

    channel: str  # "text" or "speech"
    words: list[TimedWord]
    active: np.ndarray  # bool per chunk: the model is producing output in this chunk
    delegations: list[tuple[int, str]]

    def words_between(self, first: int, last: int) -> list[TimedWord]:
        """Words with onset chunk in [first, last]."""
        return [w for w in self.words if first <= w.chunk <= last]


@dataclass
class SessionScore:
    score: float  # 0..100
    metrics: dict[str, float] = field(default_factory=dict)


def number_words(n: int) -> list[str]:
    if not 0 <= n < 100:
        raise ValueError(f"only 0..99 are spoken by the gym, got {n}")
    if n < 20:
        return [ONES[n]]
    tens, ones = divmod(n, 10)
    return [TENS[tens - 2]] + ([ONES[ones]] if ones else [])


def parse_number(words: list[str]) -> int | None:
    """The number spoken by ``words`` ("fifty one" → 51), or None."""
    if len(words) == 1 and words[0] in ONES:
        return ONES.index(words[0])
    if words and words[0] in TENS:
        base = 20 + 10 * TENS.index(words[0])
        if len(words) == 1:
            return base
        if len(words) == 2 and words[1] in ONES[1:10]:
            return base + ONES.index(words[1])
    return None


def match_timed(
    expected: list[tuple[str, int]], observed: list[TimedWord], tol: int = TOLERANCE
) -> tuple[int, int, list[int]]:
    """Greedy one-to-one matching of expected (word, chunk) to observed words of the same text
    with onset within ``tol`` chunks. Returns (matched, unmatched observed, onset errors)."""
    used: set[int] = set()
    errors: list[int] = []
    for text, chunk in expected:
        best = None
        for i, w in enumerate(observed):
            if i in used or w.text != text or abs(w.chunk - chunk) > tol:
                continue
            if best is None or abs(w.chunk - chunk) < abs(observed[best].chunk - chunk):
                best = i
        if best is not None:
            used.add(best)
            errors.append(observed[best].chunk - chunk)
    return len(used), len(observed) - len(used), errors


def timed_words_score(expected: list[tuple[str, int]], observed: list[TimedWord]) -> SessionScore:
    """100 × matched / (expected + extra words): right word, right micro-turn, nothing else."""
    matched, extra, errors = match_timed(expected, observed)
    denom = len(expected) + extra
    return SessionScore(
        100.0 * matched / denom if denom else 100.0,
        {
            "recall": matched / len(expected) if expected else 1.0,
            "extra_words": float(extra),
            **({"onset_error_chunks": float(np.mean(np.abs(errors)))} if errors else {}),
        },
    )


def interval_iou(a: tuple[int, int], b: tuple[int, int]) -> float:
    """IoU of half-open chunk intervals [start, stop)."""
    inter = max(0, min(a[1], b[1]) - max(a[0], b[0]))
    union = (a[1] - a[0]) + (b[1] - b[0]) - inter
    return inter / union if union > 0 else 0.0
