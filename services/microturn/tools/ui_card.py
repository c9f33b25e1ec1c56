"""UI cards: a small titled card the client shows (the background service pushes it to the session)."""

from __future__ import annotations

from typing import Any

from microturn.bus.delegations import (
    CARD_BODY_CHARS,
    CARD_FIELD_NAME_CHARS,
    CARD_FIELD_VALUE_CHARS,
    CARD_FIELDS,
    CARD_ID_CHARS,
    CARD_TITLE_CHARS,
)
from microturn.tools.registry import Tool, ToolContext

MAX_FIELDS = CARD_FIELDS  # the session reader cuts any card to the same limits


def ui_card_tool() -> Tool:
    async def run(args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
        return {
            "card_id": args.get("card_id") or f"card-{ctx.call_id[:16] or 'x'}",
            "title": args["title"].strip(),
            "body": args.get("body", "").strip(),
            "fields": {str(k): str(v) for k, v in (args.get("fields") or {}).items()},
        }

    return Tool(
        name="ui_card",
        description="Show the user a card with a title, a body and up to 12 labelled values.",
        schema="ui_card.v1",
        parameters={
            "type": "object",
            "properties": {
                "title": {"type": "string", "minLength": 1, "maxLength": CARD_TITLE_CHARS},
                "body": {"type": "string", "maxLength": CARD_BODY_CHARS},
                "fields": {
                    "type": "object",
                    "maxProperties": MAX_FIELDS,
                    "propertyNames": {"maxLength": CARD_FIELD_NAME_CHARS},
                    "additionalProperties": {"type": "string", "maxLength": CARD_FIELD_VALUE_CHARS},
                },
                "card_id": {"type": "string", "pattern": f"^[A-Za-z0-9_-]{{1,{CARD_ID_CHARS}}}$"},
            },
            "required": ["title"],
            "additionalProperties": False,
        },
        run=run,
        timeout_ms=500,
        max_argument_bytes=8192,
        max_result_bytes=8192,
    )
