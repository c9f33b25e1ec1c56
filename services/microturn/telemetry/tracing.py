"""Trace context across processes, and which traces are kept.

A call's trace starts at the edge (its session span, and one span per micro-turn) and goes on in the
replica, on the bus (NATS headers, ``microturn.bus``), in the background service and the tools. Over
gRPC the context travels in-band, in ``OpenSession.trace_context`` and in every chunk's
``ChunkHeader.trace_context`` (a stream carries many micro-turns, each its own span, so stream metadata
alone could not say which one a chunk belongs to), and also in the stream's metadata for proxies and
meshes that read ``traceparent``. Carriers come from clients, so they are bounded and a malformed one
is ignored (W3C trace context says to drop what cannot be parsed), never an error.

Sampling: parent-based with a ratio for new traces (``telemetry.trace_sample_ratio``), so a call is
traced whole or not at all; a span started with ``error=True`` is always kept, so a call that went
wrong leaves its error spans even when its trace was not sampled.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace.sampling import (
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanContext
from opentelemetry.util.types import Attributes

ERROR = "error"  # a span attribute: this span records a failure (always sampled)
MAX_ENTRIES = 4  # traceparent, tracestate and room for baggage; more is not a trace context
MAX_VALUE_BYTES = 512  # tracestate's own limit


class ErrorsAlwaysSampled(Sampler):
    """``inner``'s decision, except that a span started with ``error=True`` is always recorded."""

    def __init__(self, inner: Sampler) -> None:
        self.inner = inner

    def should_sample(
        self,
        parent_context: otel_context.Context | None,
        trace_id: int,
        name: str,
        kind: trace.SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: trace.TraceState | None = None,
    ) -> SamplingResult:
        if attributes and attributes.get(ERROR):
            parent = trace.get_current_span(parent_context).get_span_context()
            return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes, parent.trace_state)
        return self.inner.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return f"ErrorsAlwaysSampled{{{self.inner.get_description()}}}"


def sampler(ratio: float) -> Sampler:
    """New traces kept with probability ``ratio``; spans follow their parent; errors always kept."""
    return ErrorsAlwaysSampled(ParentBased(TraceIdRatioBased(ratio)))


def carrier(span: trace.Span | None = None) -> dict[str, str]:
    """The W3C trace context of ``span`` (default: the current one), ready for a header or a message."""
    out: dict[str, str] = {}
    ctx = trace.set_span_in_context(span) if span is not None else None
    propagate.inject(out, context=ctx)
    return out


def _usable(values: Mapping[str, str]) -> bool:
    return 0 < len(values) <= MAX_ENTRIES and all(
        len(k) <= 64 and len(v.encode()) <= MAX_VALUE_BYTES for k, v in values.items()
    )


def context_from(values: Mapping[str, str]) -> otel_context.Context | None:
    """The context a peer sent (``carrier`` on its side); None when it sent none or an unusable one."""
    if not _usable(values):
        return None
    ctx = propagate.extract(dict(values))
    return ctx if trace.get_current_span(ctx).get_span_context().is_valid else None


def span_context_from(values: Mapping[str, str]) -> SpanContext | None:
    """The remote span a peer's carrier names (to parent or link to it later), or None."""
    ctx = context_from(values)
    return trace.get_current_span(ctx).get_span_context() if ctx is not None else None


def parent(span_context: SpanContext | None) -> otel_context.Context | None:
    """A context whose current span is the (remote) span ``span_context`` names."""
    if span_context is None:
        return None
    return trace.set_span_in_context(trace.NonRecordingSpan(span_context))
