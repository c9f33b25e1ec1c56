"""The ``Tools`` gRPC service: the same executor as the bus side, for callers that want a plain RPC.

With ``tools.grpc_tls_cert`` and ``tools.grpc_tls_key`` the port speaks TLS only; with
``tools.grpc_tls_client_ca`` too, a client must present a certificate that CA signed (mutual TLS).
"""

from __future__ import annotations

from pathlib import Path

import grpc
from opentelemetry import trace

from microturn.bus import subjects
from microturn.config import ConfigError
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


def _read(path: Path, setting: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        env = "MICROTURN_TOOLS__" + setting.split(".", 1)[1].upper()
        raise ConfigError(f"{setting} ({env}): cannot read {path}: {exc}") from None


def server_credentials(cert: Path, key: Path, client_ca: Path | None = None) -> grpc.ServerCredentials:
    """TLS credentials from PEM files; ``client_ca``: clients must present a certificate it signed."""
    return grpc.ssl_server_credentials(
        [(_read(key, "tools.grpc_tls_key"), _read(cert, "tools.grpc_tls_cert"))],
        root_certificates=_read(client_ca, "tools.grpc_tls_client_ca") if client_ca is not None else None,
        require_client_auth=client_ca is not None,
    )


async def start_grpc(
    executor: ToolExecutor,
    host: str,
    port: int,
    max_message_bytes: int,
    *,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    tls_client_ca: Path | None = None,
) -> grpc.aio.Server:
    """Serve the Tools API on ``host:port``: TLS when ``tls_cert`` and ``tls_key`` are given."""
    if (tls_cert is None) != (tls_key is None) or (tls_client_ca is not None and tls_cert is None):
        raise ConfigError(
            "tools.grpc_tls_cert and tools.grpc_tls_key go together (and grpc_tls_client_ca needs them)"
        )
    credentials = server_credentials(tls_cert, tls_key, tls_client_ca) if tls_cert and tls_key else None
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
    )
    tools_pb2_grpc.add_ToolsServicer_to_server(ToolsServicer(executor), server)
    address = f"{host}:{port}"
    bound = (
        server.add_secure_port(address, credentials)
        if credentials is not None
        else server.add_insecure_port(address)
    )
    if not bound:
        raise OSError(f"cannot listen on {host}:{port} (tools.grpc_port / MICROTURN_TOOLS__GRPC_PORT)")
    await server.start()
    return server
