"""Data-channel messages between the browser and the edge (JSON text, one object per message)."""

from __future__ import annotations

import json
from typing import Any

from microturn.v1 import interaction_pb2, media_pb2


class BadMessage(ValueError):
    pass


def parse_client_message(raw: object, max_bytes: int, max_text_bytes: int) -> str:
    """The typed text of a browser message, or BadMessage saying what is wrong with it."""
    if not isinstance(raw, str):
        raise BadMessage("messages must be JSON text, not binary")
    if len(raw.encode()) > max_bytes:
        raise BadMessage(f"message of {len(raw.encode())} bytes, at most {max_bytes}")
    try:
        msg = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise BadMessage(f"not JSON: {exc.msg}") from None
    if not isinstance(msg, dict) or msg.get("type") != "text":
        raise BadMessage('expected {"type": "text", "text": "..."}')
    text = msg.get("text")
    if not isinstance(text, str) or not text.strip():
        raise BadMessage('"text" must be a non-empty string')
    if len(text.encode()) > max_text_bytes:
        raise BadMessage(f"text of {len(text.encode())} bytes, at most {max_text_bytes} per message")
    return text


def output_events(out: media_pb2.OutputChunk) -> list[dict[str, Any]]:
    """What the browser shows for one output chunk."""
    k = out.header.chunk_index
    events: list[dict[str, Any]] = [{"type": "chunk", "chunk": k, "model_version": out.model_version}]
    if out.text:
        events.append({"type": "caption", "chunk": k, "text": out.text})
    for ev in out.events:
        kind = ev.WhichOneof("kind")
        if kind == "speaking":
            events.append({"type": "speaking", "chunk": k, "speaking": ev.speaking.speaking})
        elif kind == "delegation_opened":
            d = ev.delegation_opened
            events.append(
                {"type": "delegation", "chunk": k, "delegation_id": d.delegation_id, "request": d.request}
            )
        elif kind == "background_update":
            u = ev.background_update
            events.append(
                {"type": "background", "chunk": k, "delegation_id": u.delegation_id, "text": u.text}
            )
        elif kind == "ui_card":
            c = ev.ui_card
            events.append(
                {
                    "type": "card",
                    "card_id": c.card_id,
                    "title": c.title,
                    "body": c.body,
                    "fields": dict(c.fields),
                }
            )
    return events


def error_event(error: interaction_pb2.Error) -> dict[str, Any]:
    return {"type": "error", "code": interaction_pb2.ErrorCode.Name(error.code), "message": error.message}


def state_event(state: str, detail: str = "") -> dict[str, Any]:
    return {"type": "state", "state": state, "detail": detail}
