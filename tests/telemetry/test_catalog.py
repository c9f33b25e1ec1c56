"""The metric catalog (microturn.telemetry.catalog): well-formed, its exported names are what the real
Prometheus exporter makes of each instrument, and docs/METRICS.md's table is generated from it."""

from __future__ import annotations

import re
from pathlib import Path

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import Observation
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from microturn.telemetry import catalog
from microturn.telemetry.catalog import EXPORTER_LABELS, METRICS, Kind

ROOT = Path(__file__).resolve().parents[2]
BOUNDED_LABELS = {"replica", "version", "code", "reason", "outcome", "backend", "tool", "via", "hop", "type"}


def test_names_are_snake_case_unique_and_labels_bounded():
    for m in METRICS:
        assert re.fullmatch(r"microturn_[a-z][a-z0-9]*(_[a-z0-9]+)*", m.name), m.name
        assert set(m.labels) <= BOUNDED_LABELS, f"{m.name}: {set(m.labels) - BOUNDED_LABELS}"
        assert m.services and set(m.services) <= set(catalog.SERVICES), m.name
        assert m.help and "|" not in m.help + m.needs, m.name
    samples = [s for m in METRICS for s in m.samples]
    assert len(samples) == len(set(samples)) and len({m.family for m in METRICS}) == len(METRICS)
    assert all(m.unit == "ms" for m in METRICS if m.kind is Kind.HISTOGRAM and "duration" in m.name)


def exported(metric: catalog.Metric) -> tuple[str, str, set[str], set[str]]:
    """(family, type, sample names, label keys) the real exporter gives one data point of ``metric``."""
    registry = CollectorRegistry()
    provider = MeterProvider(metric_readers=[PrometheusMetricReader(registry=registry)])
    meter = provider.get_meter("catalog-test")
    attrs = {k: "x" for k in metric.labels}
    kw = {"unit": metric.unit, "description": metric.help}
    if metric.kind is Kind.COUNTER:
        meter.create_counter(metric.name, **kw).add(1, attrs)
    elif metric.kind is Kind.HISTOGRAM:
        meter.create_histogram(metric.name, **kw).record(1.0, attrs)
    else:
        meter.create_observable_gauge(metric.name, [lambda _: [Observation(1.0, attrs)]], **kw)
    try:
        (family,) = [f for f in text_string_to_metric_families(generate_latest(registry).decode())
                     if f.name.startswith("microturn_")]  # fmt: skip
    finally:
        provider.shutdown()
    return (
        family.name,
        family.type,
        {s.name for s in family.samples},
        {k for s in family.samples for k in s.labels} - set(EXPORTER_LABELS),
    )


def test_the_exported_names_are_what_the_exporter_makes():
    for m in METRICS:
        family, kind, samples, labels = exported(m)
        assert (family, kind) == (m.family, m.kind.value), m.name
        assert samples == set(m.samples), m.name
        assert labels == set().union(*(m.sample_labels(s) for s in m.samples)), m.name


def test_the_doc_table_is_the_catalog():
    doc = (ROOT / "docs" / "METRICS.md").read_text()
    assert catalog.with_table(doc) == doc, (
        "docs/METRICS.md is stale: run python -m microturn.telemetry.catalog"
    )
    for m in METRICS:
        assert f"`{m.samples[0] if m.kind is not Kind.HISTOGRAM else m.family}`" in doc


def test_the_check_fails_on_a_stale_doc(tmp_path):
    stale = tmp_path / "METRICS.md"
    stale.write_text(f"# x\n{catalog.BEGIN}| old |\n{catalog.END}\n")
    assert catalog.main(["--doc", str(stale), "--check"]) == 1
    assert catalog.main(["--doc", str(stale)]) == 0
    assert catalog.main(["--doc", str(stale), "--check"]) == 0
    assert "`microturn_tick_duration_milliseconds`" in stale.read_text()
