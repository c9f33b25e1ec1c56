"""Attribute names shared by spans, metrics and logs, so one session can be followed across services."""

from __future__ import annotations

SESSION_ID = "session.id"
CHUNK_INDEX = "chunk.index"
SERVICE = "service.name"


def session_attributes(session_id: str, chunk_index: int | None = None) -> dict[str, str | int]:
    """Span attributes for work on one session (and one chunk of it).

    For spans and logs only, never metric labels: session ids and chunk indices are unbounded (every
    call adds a series that outlives it); metrics take bounded labels (docs/METRICS.md).
    """
    attrs: dict[str, str | int] = {SESSION_ID: session_id}
    if chunk_index is not None:
        attrs[CHUNK_INDEX] = chunk_index
    return attrs
