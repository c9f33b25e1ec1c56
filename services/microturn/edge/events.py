"""Data-channel messages between the browser and the edge (JSON text, one object per message),
JSON parsing for client input, and the accounting of every error the edge sends a client."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any

from opentelemetry import metrics

from microturn.telemetry import RateLimitedLog
from microturn.v1 import interaction_pb2, media_pb2

log = logging.getLogger(__name__)

BAD_MESSAGE = "BAD_MESSAGE"


class BadMessage(ValueError):
    pass


class BadJson(ValueError):
    """Client JSON the edge will not parse; the message says why without echoing the input."""


_JSON_SIGNIFICANT = re.compile(r'[\[\]{}"\\]')


def json_depth(text: str, limit: int) -> int:
    """How deeply ``text`` nests arrays and objects, counted no further than ``limit + 1``.

    Checked before ``json.loads``: its C parser recurses once per level, so a few KB of ``[``
    raise RecursionError (no ValueError) from deep inside the parser."""
    depth = deepest = 0
    in_string = False
    escaped = -1  # the position a backslash in a string escapes
    for m in _JSON_SIGNIFICANT.finditer(text):
        i, ch = m.start(), m.group()
        if in_string:
            if i == escaped:
                continue
            if ch == "\\":
                escaped = i + 1
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if depth > limit:
                break
        elif ch in "]}":
            depth -= 1
    return deepest


def loads_json(raw: str | bytes, max_depth: int) -> object:
    """``json.loads`` for untrusted input: UTF-8 only, at most ``max_depth`` levels, and every
    failure a BadJson (the parser also raises RecursionError, and ValueErrors that are no
    JSONDecodeError, e.g. for an integer of more than 4300 digits)."""
    if isinstance(raw, bytes | bytearray):
        try:
            text = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadJson(f"not UTF-8 text (bad byte at offset {exc.start})") from None
    else:
        text = raw
    if json_depth(text, max_depth) > max_depth:
        raise BadJson(f"JSON nested deeper than {max_depth} levels")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadJson(f"not JSON: {exc.msg} at character {exc.pos}") from None
    except (ValueError, RecursionError) as exc:
        raise BadJson(f"not JSON the edge can read ({type(exc).__name__})") from None


def utf8_len(text: str, what: str) -> int:
    """Bytes of ``text`` in UTF-8; BadMessage for lone surrogates (a JSON ``"\\ud800"`` decodes to
    one), which no UTF-8 encoder — aiortc's, protobuf's — would accept later."""
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise BadMessage(f"{what} is not valid Unicode (a lone surrogate such as \\ud800)") from None


def parse_client_message(raw: object, max_bytes: int, max_text_bytes: int, max_depth: int) -> str:
    """The typed text of a browser message, or BadMessage saying what is wrong with it."""
    if not isinstance(raw, str):
        raise BadMessage("messages must be JSON text, not binary")
    size = len(raw.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise BadMessage(f"message of {size} bytes, at most {max_bytes}")
    utf8_len(raw, "the message")
    try:
        msg = loads_json(raw, max_depth)
    except BadJson as exc:
        raise BadMessage(str(exc)) from None
    if not isinstance(msg, dict) or msg.get("type") != "text":
        raise BadMessage('expected {"type": "text", "text": "..."}')
    text = msg.get("text")
    if not isinstance(text, str) or not text.strip():
        raise BadMessage('"text" must be a non-empty string')
    n = utf8_len(text, '"text"')
    if n > max_text_bytes:
        raise BadMessage(f"text of {n} bytes, at most {max_text_bytes} per message")
    return text


class ClientErrors:
    """Every error the edge sends a client (data-channel ``error`` events, 4xx answers): counted
    by code, and logged at most once per code per interval with the number left out since, since
    a client can trigger them as fast as it can send. The metric has no session label."""

    def __init__(
        self,
        meter: metrics.Meter,
        log_interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._counter = meter.create_counter(
            "microturn_edge_client_errors",
            unit="{error}",
            description="errors sent to clients (data-channel error events, 4xx answers), by code",
        )
        self._log = RateLimitedLog(log, log_interval_s, level=logging.INFO, clock=clock)

    def report(self, code: str, message: str, session_id: str | None = None) -> None:
        self._counter.add(1, {"code": code})
        fields = {"session.id": session_id} if session_id else {}
        self._log.log(code, f"client error {code}: {message}", **fields)


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
