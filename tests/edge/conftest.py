"""The edge under test: the real interaction core on a grpc.aio server (no Ray) and the edge app
on uvicorn, both in this event loop on free loopback ports, with host ICE candidates pinned to
127.0.0.1. ``inputs`` records every chunk the model received (a spy on Engine.step)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass, field

import pytest
import uvicorn

from microturn.config import load_settings
from microturn.edge.app import create_app
from microturn.edge.server import EdgeServer
from microturn.interaction.core import InteractionCore
from microturn.interaction.grpc_server import start_server
from microturn.localrun.ports import free_port

from ..interaction.conftest import tiny_model


@dataclass
class EdgeStack:
    url: str
    edge: EdgeServer
    core: InteractionCore
    inputs: dict[str, list] = field(default_factory=lambda: defaultdict(list))


async def start_uvicorn(app, port: int) -> tuple[uvicorn.Server, asyncio.Task[None]]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    return server, task


def edge_settings(grpc_port: int, **edge: object):
    return load_settings(
        overrides={
            "interaction": {"bus": False, "session_slots": 4, "tick_grace_ms": 20, "grpc_port": grpc_port},
            "edge": {"ice_host_addresses": ["127.0.0.1"], "token_ttl_s": 60, **edge},
        }
    )


@pytest.fixture
async def edge_stack(request):
    edge_overrides = getattr(request, "param", {}) or {}
    grpc_port = free_port()
    settings = edge_settings(grpc_port, **edge_overrides)
    core = InteractionCore(settings, "replica-edge", model=tiny_model())
    grpc_server = await start_server(core, "127.0.0.1", grpc_port)
    app = create_app(settings)
    port = free_port()
    server, task = await start_uvicorn(app, port)
    stack = EdgeStack(url=f"http://127.0.0.1:{port}", edge=app.state.edge, core=core)
    step = core.engine.step_isolated

    def spy(inputs):
        for c in inputs:
            stack.inputs[c.session_id].append(c)
        return step(inputs)

    core.engine.step_isolated = spy
    try:
        yield stack
    finally:
        server.should_exit = True
        await task
        await grpc_server.stop(grace=None)
        await core.drain()


async def wait_until(predicate, timeout_s: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)
