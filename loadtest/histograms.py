"""Latency histograms that merge exactly across shards.

A load test on several generator machines (shards) must report one p99 for the whole run, and
percentiles of percentiles are wrong. HdrHistogram keeps counts in fixed log-linear buckets (3
significant digits: any value is off by at most 0.1 %), so shard histograms add bucket by bucket
and the merged percentiles are those of one histogram of every value. ``encode()`` is HdrHistogram's
compressed base64 (V2) form, which is what a shard's ``result.json`` carries.
"""

from __future__ import annotations

import math
from typing import Any

from hdrh.histogram import HdrHistogram

LOWEST_MS = 1
HIGHEST_MS = 10 * 60 * 1000  # 10 minutes: anything longer is clamped (and counted in ``clamped``)
SIGNIFICANT_DIGITS = 3
SUMMARY_PERCENTILES = (50.0, 90.0, 95.0, 99.0)


class LatencyHistogram:
    """Milliseconds from 1 ms to 10 min at 3 significant digits (values under 1 ms count as 0)."""

    def __init__(self, hdr: HdrHistogram | None = None) -> None:
        self._h = hdr or HdrHistogram(LOWEST_MS, HIGHEST_MS, SIGNIFICANT_DIGITS)
        self.clamped = 0  # values above HIGHEST_MS recorded as HIGHEST_MS (not carried by encode())

    @classmethod
    def of(cls, values_ms: Any) -> LatencyHistogram:
        """A histogram of an iterable of milliseconds (``None`` entries are skipped)."""
        h = cls()
        for v in values_ms:
            if v is not None:
                h.record(v)
        return h

    def record(self, ms: float, count: int = 1) -> None:
        """Record ``ms`` (``count`` times). Negative or non-finite values are a caller's bug."""
        if not math.isfinite(ms) or ms < 0:
            raise ValueError(f"latency must be a finite number of ms >= 0, got {ms!r}")
        value = round(ms)
        if value > HIGHEST_MS:
            value = HIGHEST_MS
            self.clamped += count
        self._h.record_value(value, count)

    def merge(self, other: LatencyHistogram) -> LatencyHistogram:
        """Add ``other``'s counts into this histogram (exact: same buckets); returns self."""
        if other.count:  # hdrh's add() of an empty histogram would reset min to 0
            self._h.add(other._h)
            self.clamped += other.clamped
        return self

    def copy(self) -> LatencyHistogram:
        return LatencyHistogram().merge(self)

    @property
    def count(self) -> int:
        return int(self._h.get_total_count())

    @property
    def min(self) -> float | None:
        return float(self._h.get_min_value()) if self.count else None

    @property
    def max(self) -> float | None:
        return float(self._h.get_max_value()) if self.count else None

    @property
    def mean(self) -> float | None:
        return float(self._h.get_mean_value()) if self.count else None

    def percentile(self, p: float) -> float | None:
        """The value at percentile ``p`` (0..100], or ``None`` when nothing was recorded."""
        if not 0 <= p <= 100:
            raise ValueError(f"percentile must be in 0..100, got {p!r}")
        return float(self._h.get_value_at_percentile(p)) if self.count else None

    def percentiles(self, ps: tuple[float, ...] = SUMMARY_PERCENTILES) -> dict[float, float | None]:
        """Several percentiles in one pass over the buckets."""
        if not self.count:
            return dict.fromkeys(ps)
        return {p: float(v) for p, v in self._h.get_percentile_to_value_dict(list(ps)).items()}

    def buckets(self) -> list[tuple[float, int]]:
        """(bucket's highest equivalent value in ms, count) for every recorded bucket, ascending:
        what the report's CDF and percentile plots are drawn from."""
        out: list[tuple[float, int]] = []
        for item in self._h.get_recorded_iterator():
            value = self._h.get_highest_equivalent_value(item.value_iterated_to)
            out.append((float(value), int(item.count_at_value_iterated_to)))
        return out

    def cdf(self) -> list[tuple[float, float]]:
        """(value ms, fraction of values <= it), ascending."""
        total = self.count
        acc = 0
        out: list[tuple[float, float]] = []
        for value, n in self.buckets():
            acc += n
            out.append((value, acc / total))
        return out

    def encode(self) -> str:
        """HdrHistogram's compressed base64 (V2) form; ``decode`` reads it back bucket for bucket."""
        return self._h.encode().decode("ascii")

    @classmethod
    def decode(cls, encoded: str) -> LatencyHistogram:
        """The histogram ``encode()`` wrote (raises ``ValueError`` on anything else)."""
        try:
            hdr = HdrHistogram.decode(encoded.encode("ascii"))
        except Exception as exc:  # hdrh raises TypeError, zlib.error, its own cookie errors
            raise ValueError(f"not an encoded HdrHistogram ({type(exc).__name__}: {exc})") from exc
        h = cls()
        h.merge(cls(hdr))  # into the canonical range, so every decoded histogram merges directly
        return h

    def to_summary(self) -> dict[str, float | int | None]:
        """p50, p90, p95, p99, max (ms) and count: what tables and result.json show."""
        ps = self.percentiles()
        return {
            "p50": ps[50.0],
            "p90": ps[90.0],
            "p95": ps[95.0],
            "p99": ps[99.0],
            "max": self.max,
            "count": self.count,
        }

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LatencyHistogram):
            return NotImplemented
        return self.buckets() == other.buckets()

    def __repr__(self) -> str:
        return f"LatencyHistogram(count={self.count}, p50={self.percentile(50)}, max={self.max})"


def merged(histograms: list[LatencyHistogram]) -> LatencyHistogram:
    """A new histogram holding the counts of all of ``histograms``."""
    out = LatencyHistogram()
    for h in histograms:
        out.merge(h)
    return out
