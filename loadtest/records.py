"""What one caller measured: the records every caller mode (aiortc, browser) fills in and the
results, SLO gates and report read. Times are seconds on the generator's wall clock
(``time.time()``), so shards on different machines line up on one timeline; durations are
milliseconds. ``None`` means "not measured" (e.g. no answer came), never zero."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA_VERSION = 1


@dataclass
class TurnRecord:
    """One turn of a scenario: the caller spoke (or typed) and waited for the model."""

    index: int
    kind: str  # "speech" | "text" | "barge_in"
    said_at: float  # start of the prompt audio (or the typed message)
    speech_end_at: float | None  # the user's end of speech (known from the prompt); None for text
    answer_onset_at: float | None = None  # onset of the model's speech in the received audio
    turn_latency_ms: float | None = None  # speech_end -> answer onset (text: sent -> onset)
    barge_in_at: float | None = None  # barge_in turns: when the caller started talking over the model
    yield_ms: float | None = None  # barge_in turns: barge-in -> the model's speech stopped


@dataclass
class StatsSample:
    """One getStats()/aiortc stats sample of the received audio (cumulative counters)."""

    at: float
    packets_received: int = 0
    packets_lost: int = 0
    jitter_ms: float | None = None
    jitter_buffer_delay_ms: float | None = None  # per emitted sample, averaged over the sample period
    concealed_samples: int = 0
    silent_concealed_samples: int = 0
    total_samples_received: int = 0
    rtt_ms: float | None = None
    bitrate_kbps: float | None = None


@dataclass
class SessionRecord:
    """One call from dial to hangup."""

    caller: str  # e.g. "aiortc-0-3" / "browser-1-0": mode, worker, index
    mode: str  # "aiortc" | "browser"
    scenario: str
    shard: int = 0
    session_id: str = ""
    model_version: str = ""
    dialed_at: float = 0.0
    connected_at: float | None = None  # ICE/DTLS connected (media can flow)
    first_audio_at: float | None = None  # first model audio frame received
    setup_ms: float | None = None  # dial -> connected
    first_audio_ms: float | None = None  # dial -> first model audio
    ended_at: float | None = None
    failure: str = ""  # why the call failed ("" if it did not): setup, dropped, error event...
    errors: dict[str, int] = field(default_factory=dict)  # error events by code
    turns: list[TurnRecord] = field(default_factory=list)
    audio_gaps_ms: list[float] = field(default_factory=list)  # received-audio gaps over 100 ms
    underruns: int = 0  # playout had nothing to play (browser: silent concealment events)
    stats: list[StatsSample] = field(default_factory=list)
    # what the caller itself cost and saw (browser: browser_rss_mb, page_rss_mb, cpu_core_share,
    # received_audio_s...); never part of the SLOs, reported so an overloaded generator shows
    caller_metrics: dict[str, float] = field(default_factory=dict)

    @property
    def failed_setup(self) -> bool:
        return self.connected_at is None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SessionRecord:
        d = dict(d)
        d["turns"] = [TurnRecord(**t) for t in d.get("turns", [])]
        d["stats"] = [StatsSample(**s) for s in d.get("stats", [])]
        return cls(**d)
