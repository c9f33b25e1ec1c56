"""The ``Tools`` gRPC service: the same executor as the bus side, for callers that want a plain RPC."""

from __future__ import annotations

import grpc
from opentelemetry import trace

from microturn.bus import subjects
from microturn.telemetry import session_attributes
from microturn.tools.executor import ToolExecutor
from microturn.tools.metrics import record_call
from microturn.v1 import tools_pb2, tools_pb2_grpc

tracer = trace.get_tracer("microturn.tools")


class ToolsServicer(tools_pb2_grpc.ToolsServicer):
    def __init__(self, executor: ToolExecutor) -> None:
        self.executor = executor

    async def Call(
        self, request: tools_pb2.ToolCall, context: grpc.aio.ServicerContext
    ) -> tools_pb2.ToolResult:
        with tracer.start_as_current_span(
            f"tool {request.tool[:40]}",
            attributes={
                # only ids that are ids go on the span (the executor refuses the others)
                **session_attributes(request.session_id if subjects.is_id(request.session_id) else ""),
                "tool.call_id": request.call_id[:128],
                "rpc.system": "grpc",
            },
        ):
            result = await self.executor.execute(request)
            record_call(self.executor, request, result, "grpc")
            return result

    async def ListTools(
        self, request: tools_pb2.ListToolsRequest, context: grpc.aio.ServicerContext
    ) -> tools_pb2.ListToolsResponse:
        return tools_pb2.ListToolsResponse(tools=[t.spec() for t in self.executor.registry])


async def start_grpc(executor: ToolExecutor, host: str, port: int, max_message_bytes: int) -> grpc.aio.Server:
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
    )
    tools_pb2_grpc.add_ToolsServicer_to_server(ToolsServicer(executor), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if not bound:
        raise OSError(f"cannot listen on {host}:{port} (tools.grpc_port / MICROTURN_TOOLS__GRPC_PORT)")
    await server.start()
    return server
