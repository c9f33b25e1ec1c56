"""The Tools gRPC API over TLS (tools.grpc_tls_cert / grpc_tls_key) and mutual TLS
(tools.grpc_tls_client_ca), with certificates generated here: a client that trusts the CA (and, for
mutual TLS, holds a certificate it signed) is served; a plaintext client, one that trusts another CA,
and one without the right client certificate are refused."""

from __future__ import annotations

import grpc
import pytest
from pydantic import ValidationError

from microturn.config import ConfigError, NatsSettings, Settings, ToolsSettings
from microturn.localrun.ports import free_port
from microturn.tools import ToolExecutor, build_registry
from microturn.tools.grpc_server import start_grpc
from microturn.tools.service import ToolsService
from microturn.v1 import tools_pb2, tools_pb2_grpc
from tests.tls_certs import make_pki


@pytest.fixture
def pki(tmp_path):
    return make_pki(tmp_path / "pki")


@pytest.fixture
def executor(tmp_path) -> ToolExecutor:
    return ToolExecutor(build_registry(ToolsSettings(project_docs_dir=None, knowledge_dir=tmp_path)))


def calc() -> tools_pb2.ToolCall:
    return tools_pb2.ToolCall(
        call_id="c1", tool="calculator", schema="calculator.v1", arguments_json='{"expression": "6*7"}'
    )


def credentials(pki, *, ca=None, cert=None, key=None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=(ca or pki.ca).read_bytes(),
        private_key=key.read_bytes() if key else None,
        certificate_chain=cert.read_bytes() if cert else None,
    )


async def call(target: str, creds: grpc.ChannelCredentials | None) -> tools_pb2.ToolResult:
    channel = (
        grpc.aio.secure_channel(target, creds) if creds is not None else grpc.aio.insecure_channel(target)
    )
    async with channel:
        stub = tools_pb2_grpc.ToolsStub(channel)
        return await stub.Call(calc(), timeout=10)


async def refused(target: str, creds: grpc.ChannelCredentials | None) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(target, creds)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    return err.value


async def test_tls(executor, pki):
    port = free_port()
    server = await start_grpc(
        executor, "127.0.0.1", port, 1 << 20, tls_cert=pki.server_cert, tls_key=pki.server_key
    )
    target = f"localhost:{port}"
    try:
        result = await call(target, credentials(pki))
        assert result.WhichOneof("outcome") == "result_json", result
        assert "42" in result.result_json
        await refused(target, None)  # plaintext
        await refused(target, credentials(pki, ca=pki.other_ca))  # does not trust the server
    finally:
        await server.stop(0)


async def test_mutual_tls(executor, pki):
    port = free_port()
    server = await start_grpc(
        executor,
        "127.0.0.1",
        port,
        1 << 20,
        tls_cert=pki.server_cert,
        tls_key=pki.server_key,
        tls_client_ca=pki.ca,
    )
    target = f"localhost:{port}"
    try:
        result = await call(target, credentials(pki, cert=pki.client_cert, key=pki.client_key))
        assert "42" in result.result_json
        await refused(target, credentials(pki))  # no client certificate
        await refused(target, credentials(pki, cert=pki.other_client_cert, key=pki.other_client_key))
        await refused(target, None)
    finally:
        await server.stop(0)


async def test_tools_service_serves_grpc_with_tls_from_settings(nats_server, pki):
    port = free_port()
    tools = ToolsSettings(
        grpc_port=port,
        grpc_tls_cert=pki.server_cert,
        grpc_tls_key=pki.server_key,
        grpc_tls_client_ca=pki.ca,
        knowledge_preload=False,
        project_docs_dir=None,
        knowledge_dir=None,
    )
    service = ToolsService(Settings(nats=NatsSettings(url=nats_server.url), tools=tools))
    await service.start()
    try:
        result = await call(f"localhost:{port}", credentials(pki, cert=pki.client_cert, key=pki.client_key))
        assert "42" in result.result_json
        await refused(f"localhost:{port}", credentials(pki))
    finally:
        await service.stop()


def test_settings(pki, tmp_path):
    with pytest.raises(ValidationError, match=r"grpc_tls_cert and tools\.grpc_tls_key"):
        ToolsSettings(grpc_tls_cert=pki.server_cert)
    with pytest.raises(ValidationError, match="grpc_tls_client_ca needs"):
        ToolsSettings(grpc_tls_client_ca=pki.ca)
    with pytest.raises(ConfigError, match="MICROTURN_TOOLS__GRPC_TLS_KEY"):
        from microturn.tools.grpc_server import server_credentials

        server_credentials(pki.server_cert, tmp_path / "missing.pem")
