"""Tracer and meter providers plus the per-service HTTP endpoint for /metrics and /healthz.

Export: OTLP (gRPC) when an endpoint is configured, console spans when asked, otherwise spans are
created (so ids propagate) but not exported. Metrics always feed the Prometheus registry, which
the service's /metrics endpoint serves; OTLP metrics are added when an endpoint is set.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry import metrics, trace
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from microturn.config import TelemetrySettings
from microturn.telemetry.tracing import sampler

log = logging.getLogger(__name__)


class _Handler(BaseHTTPRequestHandler):
    telemetry: Telemetry

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, generate_latest(), CONTENT_TYPE_LATEST)
        elif path in ("/healthz", "/readyz"):
            ready = self.telemetry.ready.is_set()
            self._send(200 if ready else 503, b"ok\n" if ready else b"starting\n", "text/plain")
        else:
            self._send(404, b"not found: try /metrics or /healthz\n", "text/plain")

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # scrapes are not worth a log line
        pass


@dataclass
class Telemetry:
    """What a service gets back: its tracer and meter, and the readiness flag its /healthz reports."""

    service: str
    tracer: trace.Tracer
    meter: metrics.Meter
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    ready: threading.Event = field(default_factory=threading.Event)
    http: ThreadingHTTPServer | None = None

    @property
    def metrics_url(self) -> str | None:
        if self.http is None:
            return None
        host, port = self.http.server_address[:2]
        return f"http://{host}:{port}/metrics"

    def set_ready(self, ready: bool = True) -> None:
        (self.ready.set if ready else self.ready.clear)()

    def shutdown(self) -> None:
        if self.http is not None:
            self.http.shutdown()
            self.http.server_close()
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


_current: Telemetry | None = None
_lock = threading.Lock()


def setup_telemetry(service: str, settings: TelemetrySettings) -> Telemetry:
    """Install the global providers once per process and start the metrics endpoint if configured.

    A second call in the same process returns the first set-up (OpenTelemetry's global providers
    can be set only once, and the Prometheus registry is process-wide).
    """
    global _current
    with _lock:
        if _current is not None:
            return _current
        resource = Resource.create({"service.name": service, "service.namespace": "microturn"})

        tracer_provider = TracerProvider(resource=resource, sampler=sampler(settings.trace_sample_ratio))
        if settings.otlp_endpoint:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            tracer_provider.add_span_processor(
                BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otlp_endpoint, insecure=True))
            )
        elif settings.traces == "console":
            tracer_provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
        trace.set_tracer_provider(tracer_provider)

        readers: list[MetricReader] = [PrometheusMetricReader()]
        if settings.otlp_endpoint:
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

            readers.append(
                PeriodicExportingMetricReader(
                    OTLPMetricExporter(endpoint=settings.otlp_endpoint, insecure=True)
                )
            )
        meter_provider = MeterProvider(resource=resource, metric_readers=readers)
        metrics.set_meter_provider(meter_provider)

        tel = Telemetry(
            service=service,
            tracer=trace.get_tracer(f"microturn.{service}"),
            meter=metrics.get_meter(f"microturn.{service}"),
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
        )
        if settings.metrics_port:
            handler = type("Handler", (_Handler,), {"telemetry": tel})
            tel.http = ThreadingHTTPServer((settings.metrics_host, settings.metrics_port), handler)
            threading.Thread(target=tel.http.serve_forever, name="metrics-http", daemon=True).start()
            log.info("metrics at %s", tel.metrics_url)
        _current = tel
        return tel
