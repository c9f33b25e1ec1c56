"""A call's spans at the edge: one for the whole call, and one per micro-turn.

The call span (``edge.session``) is the root of the call's trace: the replica's spans for each stream
of the session (``interaction.open``, after a recovery or a move too) are its children. Each
micro-turn's span (``edge.chunk``) runs from the moment the edge sends the input chunk to the moment
its output chunk is back, and its context travels in the chunk's header, so the replica's
``interaction.chunk`` span (and a delegation opened in that micro-turn, and the background and tool
work it starts) are its children. The output's hop stamps go on the span as the time spent in each
hop. At most ``max_open`` micro-turns wait for their output; an older one is ended unanswered.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import ClassVar

import numpy as np
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from microturn.protocol.clock import now_unix_us
from microturn.telemetry import session_attributes, tracing
from microturn.v1 import chunk_pb2, media_pb2

tracer = trace.get_tracer("microturn.edge")


def hop_spans_us(out: media_pb2.OutputChunk, sent_us: int, received_us: int) -> dict[str, int]:
    """Where one micro-turn's round trip went, from the output's hop stamps (missing ones: left out)."""
    stamps = {h.hop: h.sent_unix_us for h in out.header.hops}
    recv, done = stamps.get("interaction-recv"), stamps.get("interaction")
    spans = {"latency.round_trip_us": received_us - sent_us}
    if out.header.duration_ms:  # the media ended here; the edge sent it this much later
        spans["latency.cut_us"] = sent_us - (out.header.media_start_unix_ms + out.header.duration_ms) * 1000
    if recv is not None:
        spans["latency.to_replica_us"] = recv - sent_us
    if recv is not None and done is not None:
        spans["latency.replica_us"] = done - recv
    if done is not None:
        spans["latency.from_replica_us"] = received_us - done
    return spans


@dataclass(frozen=True)
class TurnTiming:
    """Where one micro-turn's time went (ms), hop by hop, for the call's latency waterfall: the edge
    holding the chunk after its media ended (``cut``), the way to the replica, its queue there, the tick
    (the engine's step), the way back, and the audio already queued for playout ahead of it. None: the
    replica did not stamp that hop."""

    chunk: int
    cut_ms: float | None
    to_replica_ms: float | None
    queue_ms: float | None
    tick_ms: float
    from_replica_ms: float | None
    playout_ms: float
    round_trip_ms: float

    HOPS: ClassVar[tuple[str, ...]] = ("cut", "to_replica", "queue", "tick", "from_replica", "playout")

    @classmethod
    def of(cls, out: media_pb2.OutputChunk, spans_us: dict[str, int], playout_ms: float) -> TurnTiming:
        def ms(key: str) -> float | None:
            return spans_us[key] / 1000 if key in spans_us else None

        tick = out.engine_us / 1000
        replica = ms("latency.replica_us")
        return cls(out.header.chunk_index, ms("latency.cut_us"), ms("latency.to_replica_us"),
                   max(0.0, replica - tick) if replica is not None else None, tick, ms("latency.from_replica_us"),
                   playout_ms, spans_us["latency.round_trip_us"] / 1000)  # fmt: skip

    def hops_ms(self) -> dict[str, float | None]:
        return {hop: getattr(self, f"{hop}_ms") for hop in self.HOPS}


def waterfall(turns: list[TurnTiming]) -> dict[str, object]:
    """A call's recent micro-turns and, per hop, the p50/p99 over them (ms): what ``microturn trace``
    prints and the edge serves at ``/api/sessions/{id}/timing``."""
    summary: dict[str, dict[str, float]] = {}
    for hop in (*TurnTiming.HOPS, "round_trip"):
        values = [v for t in turns if (v := getattr(t, f"{hop}_ms")) is not None]
        if values:
            p50, p99 = np.percentile(values, [50, 99])
            summary[hop] = {"p50": round(float(p50), 2), "p99": round(float(p99), 2), "n": len(values)}
    return {"turns": [asdict(t) for t in turns], "summary": summary}


class CallTrace:
    def __init__(self, session_id: str, model_version: str, max_open: int = 25) -> None:
        self.session_id = session_id
        self.max_open = max_open
        self.span = tracer.start_span(  # the root of the call's trace, whatever task starts it
            "edge.session",
            context=otel_context.Context(),
            attributes={**session_attributes(session_id), "model.version": model_version},
        )
        self._open: OrderedDict[int, tuple[trace.Span, int]] = OrderedDict()  # index -> (span, sent us)

    def carrier(self) -> dict[str, str]:
        """The call span's context, for the interaction stream (``OpenSession.trace_context``)."""
        return tracing.carrier(self.span)

    def chunk_sent(self, header: chunk_pb2.ChunkHeader) -> None:
        """Start the micro-turn's span; its context goes out in the chunk's header."""
        k = header.chunk_index
        span = tracer.start_span(
            "edge.chunk",
            context=trace.set_span_in_context(self.span),
            attributes=session_attributes(self.session_id, k),
        )
        header.trace_context.update(tracing.carrier(span))
        self._open[k] = (span, now_unix_us())
        while len(self._open) > self.max_open:
            _, (old, _) = self._open.popitem(last=False)
            old.set_attribute("chunk.answered", False)
            old.end()

    def output(self, out: media_pb2.OutputChunk) -> dict[str, int]:
        """The micro-turn's output is back: end its span with where the time went; returns that."""
        entry = self._open.pop(out.header.chunk_index, None)
        if entry is None:
            return {}
        span, sent_us = entry
        spans = hop_spans_us(out, sent_us, now_unix_us())
        span.set_attributes({**spans, "chunk.answered": True, "model.version": out.model_version})
        span.end()
        return spans

    def error(self, code: str, message: str) -> None:
        """An error sent to the client: an event on the call span, and a span of its own that is always
        kept (``tracing.ERROR``) even when the call's trace was not sampled."""
        self.span.add_event("error", {"error.code": code, "error.message": message[:256]})
        span = tracer.start_span(
            "edge.error",
            context=trace.set_span_in_context(self.span),
            attributes={**session_attributes(self.session_id), tracing.ERROR: True, "error.code": code},
        )
        span.set_status(Status(StatusCode.ERROR, message[:256]))
        span.end()

    def end(self, reason: str) -> None:
        for span, _ in self._open.values():
            span.set_attribute("chunk.answered", False)
            span.end()
        self._open.clear()
        self.span.set_attribute("session.end_reason", reason[:256])
        self.span.end()
