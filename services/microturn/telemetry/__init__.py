"""One OpenTelemetry set-up for every service: traces, metrics, a /metrics + /healthz endpoint, and
structured logs that carry the session id and chunk index of the work they describe."""

from microturn.telemetry.attributes import CHUNK_INDEX, SESSION_ID, session_attributes
from microturn.telemetry.logs import configure_logging, log_context
from microturn.telemetry.ratelimit import RateLimitedLog
from microturn.telemetry.setup import Telemetry, setup_telemetry

__all__ = [
    "CHUNK_INDEX",
    "SESSION_ID",
    "RateLimitedLog",
    "Telemetry",
    "configure_logging",
    "log_context",
    "session_attributes",
    "setup_telemetry",
]
