"""Serve ``InteractionCore`` on a plain grpc.aio server, without Ray: for one-process runs,
debugging, and protocol tests. Production traffic goes through the Serve deployment."""

from __future__ import annotations

import grpc

from microturn.interaction.core import InteractionCore
from microturn.v1 import interaction_pb2_grpc


class CoreServicer(interaction_pb2_grpc.InteractionServicer):
    def __init__(self, core: InteractionCore) -> None:
        self.core = core

    async def Converse(self, request_iterator, context):
        async for message in self.core.converse(aiter(request_iterator)):
            yield message


async def start_server(core: InteractionCore, host: str, port: int) -> grpc.aio.Server:
    server = grpc.aio.server()
    interaction_pb2_grpc.add_InteractionServicer_to_server(CoreServicer(core), server)
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    return server
