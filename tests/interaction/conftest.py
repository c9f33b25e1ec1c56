"""Fixtures for the interaction service: an InteractionCore on a real grpc.aio server (no Ray)."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator

import grpc
import numpy as np
import pytest
import torch

from microturn.bus import Bus
from microturn.config import load_settings
from microturn.interaction.client import InteractionSession
from microturn.interaction.core import InteractionCore
from microturn.interaction.grpc_server import start_server
from microturn.localrun.ports import free_port
from microturn.model import InteractionModel, preset
from microturn.protocol.chunks import input_chunk
from microturn.protocol.clock import ChunkClock, now_unix_ms

APP = "interaction"


def tiny_model() -> InteractionModel:
    torch.manual_seed(0)
    return InteractionModel(preset("tiny"), version="tiny-test")


def tone(index: int, samples: int = 3200) -> bytes:
    """A different, deterministic 200 ms of audio per chunk index."""
    t = np.arange(samples) / 16000
    freq = 200 + 37 * (index % 11)
    return (3000 * np.sin(2 * math.pi * freq * t)).astype("<i2").tobytes()


def chunk_for(session_id: str, k: int, t0: int, **kw):
    return input_chunk(session_id, k, t0, tone(k), **kw)


def session_origin() -> int:
    """A session origin on a boundary, slightly in the past (so chunks are due at once)."""
    return ChunkClock().floor(now_unix_ms()) - 200


@pytest.fixture
async def core_server(request) -> AsyncIterator[tuple[InteractionCore, grpc.aio.Channel]]:
    overrides = getattr(request, "param", {}) or {}
    settings = load_settings(
        overrides={"interaction": {"bus": False, "session_slots": 4, "tick_grace_ms": 20, **overrides}}
    )
    core = InteractionCore(settings, "replica-test", model=tiny_model())
    port = free_port()
    server = await start_server(core, "127.0.0.1", port)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield core, channel
    finally:
        await channel.close()
        await server.stop(grace=None)
        await core.drain()


@pytest.fixture
async def bridged(nats_server):
    """A replica with its NATS bridge on a real server: (core, channel, a bus client, settings)."""
    settings = load_settings(
        overrides={
            "nats": {"port": nats_server.port, "monitor_port": nats_server.monitor_port},
            "interaction": {"bus": True, "session_slots": 2, "tick_grace_ms": 20},
        }
    )
    core = InteractionCore(settings, "replica-bus", model=tiny_model())
    port = free_port()
    server = await start_server(core, "127.0.0.1", port)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    bus = await Bus.connect(nats_server.url, settings.bus, name="test")
    try:
        yield core, channel, bus, settings
    finally:
        await bus.close()
        await channel.close()
        await server.stop(grace=None)
        await core.drain()


def new_session(channel, sid: str, t0: int, seed: int = 7, **kw) -> InteractionSession:
    return InteractionSession(channel, APP, sid, seed=seed, t0_ms=t0, **kw)


def assert_same_continuation(outs: list, reference: list) -> None:
    """Output chunks equal a reference run's: same indices and text, PCM within 2 LSB."""
    for a, b in zip(outs, reference, strict=True):
        assert a.header.chunk_index == b.header.chunk_index
        assert a.text == b.text
        pa, pb = (np.frombuffer(x.audio.pcm_s16le, dtype=np.int16).astype(int) for x in (a, b))
        assert np.abs(pa - pb).max() <= 2, f"chunk {a.header.chunk_index} differs from the reference"
