"""A local stand-in for an OpenAI-compatible server (vLLM, SGLang, hosted): ``POST /v1/chat/completions``
with ``stream: true`` answered as SSE ``data:`` lines of ``chat.completion.chunk`` objects, tool calls
as ``delta.tool_calls`` fragments, then ``data: [DONE]``.

Scripted by the delegated request: "compute EXPR" asks for the calculator (arguments split across
chunks), then answers with the tool's result; "card TITLE" asks for a UI card; "slow" streams an
answer word by word over seconds; "fail" answers HTTP 500.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from microturn.localrun.ports import free_port


def _chunk(delta: dict[str, Any], finish: str | None = None) -> str:
    body = {
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": "fake",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return f"data: {json.dumps(body)}\n\n"


def make_app(requests: list[dict[str, Any]], slow_words: int = 12, slow_delay_s: float = 0.25) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def completions(request: Request):
        body = await request.json()
        requests.append(body)
        messages = body["messages"]
        asked = next(m["content"] for m in reversed(messages) if m["role"] == "user")
        if "fail" in asked:
            return JSONResponse({"error": {"message": "model overloaded"}}, status_code=500)

        async def stream() -> AsyncIterator[str]:
            yield _chunk({"role": "assistant", "content": ""})
            if messages[-1]["role"] == "tool":
                result = json.loads(messages[-1]["content"])
                text = f"The answer is {result['text']}." if "text" in result else "Done, the card is up."
                for word in re.findall(r"\S+\s*", text):
                    yield _chunk({"content": word})
                yield _chunk({}, "stop")
            elif m := re.search(r"compute (.+)$", asked):
                args = json.dumps({"expression": m.group(1)})
                yield _chunk({"content": "Let me work that out. "})
                yield _chunk(
                    {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                     "function": {"name": "calculator", "arguments": ""}}]}
                )  # fmt: skip
                for i in range(0, len(args), 7):
                    yield _chunk({"tool_calls": [{"index": 0, "function": {"arguments": args[i : i + 7]}}]})
                yield _chunk({}, "tool_calls")
            elif m := re.search(r"card (.+)$", asked):
                args = json.dumps({"title": m.group(1), "body": "from the model"})
                yield _chunk(
                    {"tool_calls": [{"index": 0, "id": "call_c", "type": "function",
                                     "function": {"name": "ui_card", "arguments": args}}]}
                )  # fmt: skip
                yield _chunk({}, "tool_calls")
            elif "slow" in asked:
                for i in range(slow_words):
                    yield _chunk({"content": f"word{i} "})
                    await asyncio.sleep(slow_delay_s)
                yield _chunk({}, "stop")
            else:
                yield _chunk({"content": "I cannot help with that."})
                yield _chunk({}, "stop")
            yield "data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    return app


@asynccontextmanager
async def fake_openai_server(**kw) -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """Serve the fake model on a free loopback port; yields (base URL, list of received request bodies)."""
    requests: list[dict[str, Any]] = []
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            make_app(requests, **kw), host="127.0.0.1", port=port, log_level="warning", lifespan="off"
        )
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/v1", requests
    finally:
        server.should_exit = True
        await task
