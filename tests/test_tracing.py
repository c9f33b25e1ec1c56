"""Trace context across processes (microturn.telemetry.tracing): carriers round-trip, hostile ones are
ignored, and sampling keeps a call whole or not at all while always keeping error spans."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from microturn.config import ConfigError, load_settings
from microturn.telemetry import tracing


def provider(ratio: float) -> tuple[trace.Tracer, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    p = TracerProvider(sampler=tracing.sampler(ratio))
    p.add_span_processor(SimpleSpanProcessor(exporter))
    return p.get_tracer("test"), exporter


def test_a_carrier_names_the_span_it_came_from():
    tracer, _ = provider(1.0)
    with tracer.start_as_current_span("sender") as span:
        got = tracing.carrier()
        assert set(got) == {"traceparent"} and tracing.carrier(span) == got
    remote = tracing.span_context_from(got)
    assert remote is not None and remote.is_remote
    assert (remote.trace_id, remote.span_id) == (
        span.get_span_context().trace_id,
        span.get_span_context().span_id,
    )
    with tracer.start_as_current_span("receiver", context=tracing.context_from(got)) as child:
        assert child.parent.span_id == span.get_span_context().span_id


@pytest.mark.parametrize(
    "carrier",
    [
        {},
        {"traceparent": "not a traceparent"},
        {"traceparent": "00-" + "0" * 32 + "-" + "0" * 16 + "-01"},  # all-zero ids are invalid
        {"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01", "tracestate": "x" * 5000},  # oversized
        {f"k{i}": "v" for i in range(50)},  # too many entries
    ],
)
def test_an_unusable_carrier_is_ignored_not_an_error(carrier):
    assert tracing.context_from(carrier) is None and tracing.span_context_from(carrier) is None
    assert tracing.parent(None) is None


def test_ratio_zero_keeps_no_call_but_every_error_span():
    tracer, exporter = provider(0.0)
    with tracer.start_as_current_span("call") as call:
        assert not call.get_span_context().trace_flags.sampled
        with tracer.start_as_current_span("chunk") as chunk:
            assert not chunk.get_span_context().trace_flags.sampled  # follows its parent
        with tracer.start_as_current_span("edge.error", attributes={tracing.ERROR: True}) as err:
            assert err.get_span_context().trace_flags.sampled
    assert [s.name for s in exporter.get_finished_spans()] == ["edge.error"]


def test_ratio_one_keeps_the_whole_call_and_a_sampled_parent_is_followed_at_any_ratio():
    tracer, exporter = provider(1.0)
    with tracer.start_as_current_span("call"), tracer.start_as_current_span("chunk"):
        sent = tracing.carrier()
    assert [s.name for s in exporter.get_finished_spans()] == ["chunk", "call"]
    other, other_exporter = provider(0.0)  # another process, sampling nothing itself
    with other.start_as_current_span("replica", context=tracing.context_from(sent)) as span:
        assert span.get_span_context().trace_flags.sampled
    assert [s.name for s in other_exporter.get_finished_spans()] == ["replica"]


def test_the_ratio_is_a_checked_setting():
    assert load_settings().telemetry.trace_sample_ratio == 1.0
    assert (
        load_settings(overrides={"telemetry": {"trace_sample_ratio": 0.1}}).telemetry.trace_sample_ratio
        == 0.1
    )
    with pytest.raises(ConfigError, match="trace_sample_ratio"):
        load_settings(overrides={"telemetry": {"trace_sample_ratio": 1.5}})


def test_spans_reach_a_real_otlp_receiver_with_their_ids():
    """The exporter the services use (OTLP/gRPC, batched) against the collector's protocol."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from microturn.telemetry import session_attributes

    from .otlp import OtlpReceiver

    with OtlpReceiver() as receiver:
        p = TracerProvider(resource=Resource.create({"service.name": "edge"}), sampler=tracing.sampler(1.0))
        p.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=receiver.endpoint, insecure=True)))
        tracer = p.get_tracer("test")
        with (
            tracer.start_as_current_span("edge.session", attributes=session_attributes("s1")) as call,
            tracer.start_as_current_span("edge.chunk", attributes=session_attributes("s1", 7)),
        ):
            pass
        p.shutdown()  # flushes
        got = {s.name: s for s in receiver.spans()}
    assert set(got) == {"edge.session", "edge.chunk"}
    chunk, root = got["edge.chunk"], got["edge.session"]
    assert chunk.service == "edge" and chunk.attributes == {"session.id": "s1", "chunk.index": 7}
    assert chunk.parent_span_id == root.span_id and root.parent_span_id == ""
    assert root.trace_id == f"{call.get_span_context().trace_id:032x}"
