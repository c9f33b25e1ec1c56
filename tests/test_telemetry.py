"""Telemetry: the /metrics and /healthz endpoint, session attributes on spans and metrics, and
structured logs. Each scenario runs in a fresh interpreter because OpenTelemetry's global
providers can be installed once per process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from microturn.localrun.ports import free_port


def run_py(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})},
    )  # fmt: skip


def test_metrics_health_and_spans():
    port = free_port()
    res = run_py(
        f"""
        import json, urllib.request, urllib.error
        from microturn.config import load_settings
        from microturn.telemetry import setup_telemetry, session_attributes
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        tel = setup_telemetry("svc", load_settings().telemetry)
        assert setup_telemetry("svc", load_settings().telemetry) is tel   # once per process
        spans = InMemorySpanExporter()
        tel.tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
        def get(path):
            try:
                with urllib.request.urlopen("http://127.0.0.1:{port}" + path) as r:
                    return r.status, r.read().decode()
            except urllib.error.HTTPError as e:
                return e.code, e.read().decode()
        before = get("/healthz")[0]
        tel.set_ready()
        after = get("/healthz")[0]
        tel.meter.create_counter("microturn_chunks_total").add(3, {{"code": "X"}})
        with tel.tracer.start_as_current_span("tick", attributes=session_attributes("s1", 42)):
            pass
        status, body = get("/metrics")
        span = spans.get_finished_spans()[0]
        print(json.dumps({{"before": before, "after": after, "status": status, "body": body,
                          "missing": get("/nope")[0], "attrs": dict(span.attributes),
                          "service": span.resource.attributes["service.name"]}}))
        tel.shutdown()
        """,
        env={"MICROTURN_TELEMETRY__METRICS_PORT": str(port)},
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert (out["before"], out["after"], out["status"], out["missing"]) == (503, 200, 200, 404)
    assert "microturn_chunks_total{" in out["body"] and 'code="X"' in out["body"]
    assert out["attrs"] == {"session.id": "s1", "chunk.index": 42}
    assert out["service"] == "svc"


def test_json_logs_carry_session_chunk_and_trace():
    res = run_py(
        """
        import logging
        from microturn.config import load_settings
        from microturn.telemetry import configure_logging, log_context, setup_telemetry
        tel = setup_telemetry("svc", load_settings().telemetry)
        configure_logging("svc", "json", "INFO")
        log = logging.getLogger("microturn.test")
        with tel.tracer.start_as_current_span("work"), log_context(session_id="s9", chunk_index=5):
            log.info("chunk done")
        log.info("outside")
        """
    )
    assert res.returncode == 0, res.stderr
    lines = [json.loads(line) for line in res.stderr.strip().splitlines()]
    inside, outside = lines[-2], lines[-1]
    assert inside["msg"] == "chunk done" and inside["service"] == "svc"
    assert inside["session.id"] == "s9" and inside["chunk.index"] == 5
    assert len(inside["trace_id"]) == 32
    assert "session.id" not in outside and "trace_id" not in outside


def test_console_span_export():
    res = run_py(
        """
        from microturn.config import load_settings
        from microturn.telemetry import setup_telemetry, session_attributes
        tel = setup_telemetry("svc", load_settings().telemetry)
        with tel.tracer.start_as_current_span("tick", attributes=session_attributes("s2", 1)):
            pass
        tel.shutdown()
        """,
        env={"MICROTURN_TELEMETRY__TRACES": "console"},
    )
    assert res.returncode == 0, res.stderr
    assert '"name": "tick"' in res.stdout and '"session.id": "s2"' in res.stdout


def test_http_clients_per_request_lines_stay_out_of_an_info_log():
    res = run_py(
        """
        import logging
        from microturn.telemetry import configure_logging
        configure_logging("svc", "text", "INFO")
        logging.getLogger("httpx").info("HTTP Request: GET http://x/ 200")
        logging.getLogger("httpx").warning("httpx trouble")
        logging.getLogger("microturn.rollout").info("rollout step")
        configure_logging("svc", "text", "DEBUG")
        logging.getLogger("httpx").info("HTTP Request: debug run")
        """
    )
    assert res.returncode == 0, res.stderr
    assert "HTTP Request: GET" not in res.stderr and "httpx trouble" in res.stderr
    assert "rollout step" in res.stderr and "HTTP Request: debug run" in res.stderr
