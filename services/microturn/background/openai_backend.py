"""Background backend for any OpenAI-compatible chat-completions endpoint (vLLM, SGLang, hosted).

Speaks the streaming protocol directly with httpx: SSE ``data:`` lines of ``chat.completion.chunk``
objects, text in ``delta.content``, tool calls assembled from ``delta.tool_calls`` fragments (by
index), ``[DONE]`` at the end. Text is streamed on as partial updates; tool calls run through the
tool service and their results go back to the model, for at most ``max_tool_steps`` rounds.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from microturn.background.backend import DelegationContext, DelegationFailed, card_from_json
from microturn.background.updates import ErrorCode
from microturn.config import BackgroundSettings
from microturn.tools.registry import ToolRegistry
from microturn.v1 import delegation_pb2

log = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "You are the background assistant of a realtime voice agent. The agent delegated a request to you "
    "with the conversation so far. Use the tools when they help, then answer briefly in plain spoken "
    "language (no markdown); the agent will say your answer to the user. If you cannot help, say so plainly."
)
_ROLES = {
    delegation_pb2.SPEAKER_USER: "user",
    delegation_pb2.SPEAKER_MODEL: "assistant",
    delegation_pb2.SPEAKER_BACKGROUND: "assistant",
}


def build_messages(ctx: DelegationContext) -> list[dict[str, Any]]:
    """System prompt, the bounded recent conversation, then the request itself."""
    s = ctx.settings
    req = ctx.request
    now = datetime.now(UTC).isoformat(timespec="seconds")
    system = f"{SYSTEM_PROMPT}\nNow: {now} UTC. User time zone: {ctx.timezone}."
    if req.context.language:
        system += f" Answer in language: {req.context.language}."
    history: list[dict[str, Any]] = []
    budget = s.max_context_chars
    for u in reversed(
        req.context.utterances[-s.max_context_utterances :] if s.max_context_utterances else []
    ):
        if not u.text or budget - len(u.text) < 0:
            break
        budget -= len(u.text)
        history.append({"role": _ROLES.get(u.speaker, "user"), "content": u.text})
    history.reverse()
    request = req.context.request or ctx.text
    return [
        {"role": "system", "content": system},
        *history,
        {"role": "user", "content": f"[delegated request] {request[: s.max_context_chars]}"},
    ]


@dataclass
class _Round:
    content: str = ""
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    finish_reason: str | None = None


class OpenAIBackend:
    name = "openai"

    def __init__(self, settings: BackgroundSettings, registry: ToolRegistry) -> None:
        self.settings = settings
        self.registry = registry
        headers = {"Accept": "text/event-stream"}
        if settings.openai_api_key is not None:
            headers["Authorization"] = f"Bearer {settings.openai_api_key.get_secret_value()}"
        self.http = httpx.AsyncClient(
            base_url=settings.openai_base_url.rstrip("/"), headers=headers, timeout=settings.openai_timeout_s
        )

    async def close(self) -> None:
        await self.http.aclose()

    async def run(self, ctx: DelegationContext) -> None:
        messages = build_messages(ctx)
        tools = [t.openai_function() for t in self.registry]
        for _ in range(self.settings.max_tool_steps + 1):
            rnd = await self._complete(ctx, messages, tools)
            if not rnd.tool_calls:
                await ctx.updates.final(rnd.content.strip() or ctx.updates.streamed_text.strip())
                return
            calls = [rnd.tool_calls[i] for i in sorted(rnd.tool_calls)]
            messages.append({"role": "assistant", "content": rnd.content or None, "tool_calls": calls})
            for call in calls:
                messages.append(
                    {"role": "tool", "tool_call_id": call["id"], "content": await self._run_tool(ctx, call)}
                )
        raise DelegationFailed(
            ErrorCode.DELEGATION_ERROR_CODE_INTERNAL,
            f"gave up after {self.settings.max_tool_steps} rounds of tool calls without an answer",
        )

    async def _run_tool(self, ctx: DelegationContext, call: dict[str, Any]) -> str:
        name = call["function"]["name"]
        result = await ctx.tools.call_json(name, call["function"]["arguments"] or "{}")
        if result.WhichOneof("outcome") == "error":
            return json.dumps({"error": result.error.message})
        if name == "ui_card":
            await ctx.updates.card(card_from_json(json.loads(result.result_json)))
        return result.result_json

    async def _complete(
        self, ctx: DelegationContext, messages: list[dict[str, Any]], tools: list[dict]
    ) -> _Round:
        s = self.settings
        body = {
            "model": s.openai_model,
            "messages": messages,
            "tools": tools,
            "tool_choice": "auto",
            "stream": True,
            "temperature": s.openai_temperature,
            "max_tokens": s.openai_max_tokens,
        }
        rnd = _Round()
        pending = ""
        try:
            async with self.http.stream("POST", "/chat/completions", json=body) as resp:
                if resp.status_code >= 400:
                    detail = (await resp.aread())[:300].decode(errors="replace")
                    retryable = resp.status_code >= 500 or resp.status_code == 429
                    raise DelegationFailed(
                        ErrorCode.DELEGATION_ERROR_CODE_BACKEND_UNAVAILABLE,
                        f"model endpoint answered {resp.status_code}: {detail}",
                        retryable=retryable,
                    )
                async for line in resp.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    text = self._absorb(rnd, data)
                    if text:
                        pending += text
                        # Coalesce tokens into word-sized partials: one bus message per token is waste.
                        if len(pending) >= 24 and pending[-1].isspace():
                            await ctx.updates.partial(pending)
                            pending = ""
        except httpx.HTTPError as exc:
            raise DelegationFailed(
                ErrorCode.DELEGATION_ERROR_CODE_BACKEND_UNAVAILABLE,
                f"model endpoint {s.openai_base_url} unreachable: {type(exc).__name__}: {exc}",
                retryable=True,
            ) from None
        if pending:
            await ctx.updates.partial(pending)
        return rnd

    @staticmethod
    def _absorb(rnd: _Round, data: str) -> str:
        try:
            chunk = json.loads(data)
        except ValueError:
            raise DelegationFailed(
                ErrorCode.DELEGATION_ERROR_CODE_BACKEND_UNAVAILABLE,
                f"model endpoint sent invalid JSON: {data[:200]}",
            ) from None
        if "error" in chunk:
            raise DelegationFailed(
                ErrorCode.DELEGATION_ERROR_CODE_BACKEND_UNAVAILABLE, f"model endpoint error: {chunk['error']}"
            )
        text = ""
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("content"):
                text += delta["content"]
                rnd.content += delta["content"]
            for frag in delta.get("tool_calls") or []:
                slot = rnd.tool_calls.setdefault(
                    frag.get("index", 0),
                    {"id": "", "type": "function", "function": {"name": "", "arguments": ""}},
                )
                if frag.get("id"):
                    slot["id"] = frag["id"]
                fn = frag.get("function") or {}
                slot["function"]["name"] += fn.get("name") or ""
                slot["function"]["arguments"] += fn.get("arguments") or ""
            if choice.get("finish_reason"):
                rnd.finish_reason = choice["finish_reason"]
        for i, slot in rnd.tool_calls.items():
            if not slot["id"]:
                slot["id"] = f"call_{i}_{int(time.time() * 1000)}"
        return text
