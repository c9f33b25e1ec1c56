"""An edge process wired to an echo 'model' (each output chunk is its input chunk's audio: zero
compute, so what a benchmark measures is the edge, WebRTC and the chunking). Shared by the edge
benchmarks; not a benchmark itself."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import grpc
import httpx

from microturn.localrun.ports import free_port
from microturn.v1 import interaction_pb2, interaction_pb2_grpc, media_pb2


class EchoServicer(interaction_pb2_grpc.InteractionServicer):
    """The Interaction protocol with an echo model; it stamps its hops as a replica does, so the
    edge's waterfall has every hop."""

    async def Converse(self, request_iterator, context):
        async for msg in request_iterator:
            kind = msg.WhichOneof("kind")
            if kind == "open":
                yield interaction_pb2.ServerMessage(
                    accepted=interaction_pb2.SessionAccepted(
                        session_id=msg.open.session_id, replica_id="echo", model_version="echo"
                    )
                )
            elif kind == "chunk":
                received = time.time_ns() // 1000
                c = msg.chunk
                out = media_pb2.OutputChunk(header=c.header, audio=c.audio, model_version="echo")
                out.header.hops.add(hop="interaction-recv", sent_unix_us=received)
                out.header.hops.add(hop="interaction", sent_unix_us=time.time_ns() // 1000)
                yield interaction_pb2.ServerMessage(chunk=out)
            else:
                return


@contextlib.asynccontextmanager
async def echo_edge(**env: str) -> AsyncIterator[tuple[str, subprocess.Popen]]:
    """(the edge's base URL, its process): `python -m microturn.edge` on free loopback ports, talking
    to an echo servicer in this process; ``env``: more MICROTURN_* settings for the edge."""
    from microturn.edge.server import pin_host_candidates

    pin_host_candidates(["127.0.0.1"])
    grpc_port, edge_port = free_port(), free_port()
    server = grpc.aio.server()
    interaction_pb2_grpc.add_InteractionServicer_to_server(EchoServicer(), server)
    server.add_insecure_port(f"127.0.0.1:{grpc_port}")
    await server.start()
    penv = {k: v for k, v in os.environ.items() if not k.startswith("MICROTURN_")}
    penv.update(MICROTURN_EDGE__PORT=str(edge_port), MICROTURN_EDGE__INTERACTION_TARGET=f"127.0.0.1:{grpc_port}",
                MICROTURN_EDGE__ICE_HOST_ADDRESSES='["127.0.0.1"]', MICROTURN_EDGE__MAX_SESSIONS="200",
                MICROTURN_TELEMETRY__LOG_LEVEL="WARNING", **env)  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "microturn.edge"], env=penv)
    base = f"http://127.0.0.1:{edge_port}"
    try:
        async with httpx.AsyncClient() as http:
            for _ in range(200):
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(f"{base}/healthz")).status_code == 200:
                        break
                await asyncio.sleep(0.1)
        yield base, proc
    finally:
        proc.terminate()
        proc.wait(30)
        await server.stop(None)
