"""UI cards: a small titled card the client shows (the background service pushes it to the session)."""

from __future__ import annotations

from typing import Any

from microturn.tools.registry import Tool, ToolContext

MAX_FIELDS = 12


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
                "title": {"type": "string", "minLength": 1, "maxLength": 120},
                "body": {"type": "string", "maxLength": 2000},
                "fields": {
                    "type": "object",
                    "maxProperties": MAX_FIELDS,
                    "propertyNames": {"maxLength": 40},
                    "additionalProperties": {"type": "string", "maxLength": 200},
                },
                "card_id": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
            },
            "required": ["title"],
            "additionalProperties": False,
        },
        run=run,
        timeout_ms=500,
        max_argument_bytes=8192,
        max_result_bytes=8192,
    )
