"""A real OTLP/gRPC receiver for tests: the OpenTelemetry collector's TraceService and MetricsService
(the collector's own protocol, from opentelemetry-proto) on a free loopback port, keeping everything it
is sent. No collector binary installs from the package registries here, so the services under test
export to this instead, over the same wire protocol a collector speaks."""

from __future__ import annotations

import threading
from concurrent import futures
from dataclasses import dataclass

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from microturn.localrun.ports import free_port


def value(v: common_pb2.AnyValue) -> object:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


def attributes(kvs) -> dict[str, object]:
    return {kv.key: value(kv.value) for kv in kvs}


@dataclass(frozen=True)
class ReceivedSpan:
    service: str  # the exporting service's service.name
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str  # "" for a root
    attributes: dict[str, object]
    links: tuple[str, ...]  # span ids this span links to

    @classmethod
    def of(cls, service: str, s: trace_pb2.Span) -> ReceivedSpan:
        return cls(service, s.name, s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex(),
                   attributes(s.attributes), tuple(link.span_id.hex() for link in s.links))  # fmt: skip


class OtlpReceiver(
    trace_service_pb2_grpc.TraceServiceServicer, metrics_service_pb2_grpc.MetricsServiceServicer
):
    def __init__(self) -> None:
        self.port = free_port()
        self._spans: list[ReceivedSpan] = []
        self.metric_names: set[tuple[str, str]] = set()  # (service, metric name)
        self._lock = threading.Lock()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self._server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(self, self._server)
        self._server.add_insecure_port(f"127.0.0.1:{self.port}")

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> OtlpReceiver:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop(grace=None)

    def Export(self, request, context):
        if isinstance(request, trace_service_pb2.ExportTraceServiceRequest):
            with self._lock:
                for rs in request.resource_spans:
                    service = str(attributes(rs.resource.attributes).get("service.name", ""))
                    self._spans += [ReceivedSpan.of(service, s) for ss in rs.scope_spans for s in ss.spans]
            return trace_service_pb2.ExportTraceServiceResponse()
        with self._lock:
            for rm in request.resource_metrics:
                service = str(attributes(rm.resource.attributes).get("service.name", ""))
                self.metric_names |= {(service, m.name) for sm in rm.scope_metrics for m in sm.metrics}
        return metrics_service_pb2.ExportMetricsServiceResponse()

    def spans(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self._spans)
