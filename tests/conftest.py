"""Shared fixtures: real servers on free loopback ports, cleaned up after each test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from microturn.localrun.nats import NatsServer


@pytest.fixture
def nats_server(tmp_path) -> Iterator[NatsServer]:
    """A real nats-server with JetStream (file storage under tmp_path)."""
    with NatsServer(store_dir=tmp_path / "nats") as server:
        yield server


@pytest.fixture
def passwords() -> dict[str, str]:
    """Fresh passwords for every NATS user of the permission table."""
    from microturn.bus.permissions import generate_passwords

    return generate_passwords()


@pytest.fixture
def secure_nats(tmp_path, passwords) -> Iterator[NatsServer]:
    """A real nats-server that admits only the permission table's users, with their permissions."""
    with NatsServer(store_dir=tmp_path / "nats", users=passwords) as server:
        yield server


@pytest.fixture
def spans():
    """Every span this process finishes from now on, in memory (the global SDK provider gets one
    more processor; OpenTelemetry lets a process set its provider only once)."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(TracerProvider())
    processor = SimpleSpanProcessor(exporter)
    trace.get_tracer_provider().add_span_processor(processor)
    yield exporter
    exporter.shutdown()  # (a processor cannot be removed: a shut-down exporter drops what it gets)


from .fuzzing import tally  # noqa: E402, F401  (the fuzz targets' shared fixture)
