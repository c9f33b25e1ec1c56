"""NATS over TLS through Bus.connect: a real nats-server with `tls { cert_file, key_file, ca_file,
verify }` (certificates generated here), mutual TLS with per-service users, and every way of not
holding the right keys refused, including a plaintext client."""

from __future__ import annotations

import json
import socket

import pytest
from pydantic import SecretStr, ValidationError

from microturn.bus import Bus, DelegationClient
from microturn.bus.permissions import generate_passwords
from microturn.bus.setup import setup
from microturn.config import BusSettings, ConfigError, NatsSettings, Settings
from microturn.localrun.nats import NatsServer
from microturn.v1 import delegation_pb2
from tests.tls_certs import make_pki

BUS = BusSettings(publish_timeout_s=5.0, storage="memory")


@pytest.fixture
def pki(tmp_path):
    return make_pki(tmp_path / "pki")


@pytest.fixture
def passwords():
    return generate_passwords()


@pytest.fixture
def mtls_nats(tmp_path, pki, passwords):
    """TLS only, client certificates signed by the test CA required, per-service users."""
    with NatsServer(
        store_dir=tmp_path / "nats",
        users=passwords,
        tls_cert=pki.server_cert,
        tls_key=pki.server_key,
        tls_ca=pki.ca,
    ) as server:
        yield server


def tls_settings(server: NatsServer, pki, user: str | None = None, passwords=None, **kw) -> NatsSettings:
    values = {
        "url": server.url,
        "tls_ca": pki.ca,
        "tls_cert": pki.client_cert,
        "tls_key": pki.client_key,
        **kw,
    }
    if user:
        values.update(user=user, password=SecretStr(passwords[user]))
    return NatsSettings(**{k: v for k, v in values.items() if v is not None})


async def test_services_work_over_mutual_tls_with_their_users(mtls_nats, pki, passwords):
    assert mtls_nats.url.startswith("tls://")
    settings = Settings(nats=tls_settings(mtls_nats, pki, "setup", passwords), bus=BUS)
    created = await setup(settings, timeout_s=20)
    assert "MT_DELEGATIONS/background" in created
    bus = await Bus.connect(
        tls_settings(mtls_nats, pki, "interaction", passwords),
        BUS.model_copy(update={"manage_topology": False}),
    )
    try:
        req = delegation_pb2.DelegationRequest(delegation_id="d-tls", session_id="s-tls")
        assert await DelegationClient(bus).delegate(req)
        assert not bus.permission_violations
    finally:
        await bus.close()


async def test_a_plaintext_client_is_refused(mtls_nats):
    """Not even the protocol is spoken in the clear: the server announces TLS as required and drops a
    client that sends CONNECT without a handshake (no PONG comes back)."""
    with socket.create_connection((mtls_nats.host, mtls_nats.port), timeout=10) as conn:
        info = conn.recv(65536).decode()
        assert info.startswith("INFO ")
        assert json.loads(info[5:].strip())["tls_required"] is True
        conn.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\nPING\r\n')
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
        assert b"PONG" not in data


@pytest.mark.parametrize(
    ("case", "why"),
    [
        ("no TLS settings", "CERTIFICATE_VERIFY_FAILED"),  # nats-py tries the system CAs: not ours
        ("no client certificate", "CERTIFICATE_REQUIRED"),
        ("trusts another CA", "CERTIFICATE_VERIFY_FAILED"),  # the server is not verified
        ("client certificate of another CA", "UNKNOWN_CA"),
    ],
)
async def test_tls_without_the_right_keys_is_refused(mtls_nats, pki, passwords, case, why):
    user = {"user": "setup", "password": SecretStr(passwords["setup"])}
    nats = {
        "no TLS settings": NatsSettings(url=mtls_nats.url.replace("tls://", "nats://"), **user),
        "no client certificate": NatsSettings(url=mtls_nats.url, tls_ca=pki.ca, **user),
        "trusts another CA": tls_settings(mtls_nats, pki, "setup", passwords, tls_ca=pki.other_ca),
        "client certificate of another CA": tls_settings(
            mtls_nats, pki, "setup", passwords, tls_cert=pki.other_client_cert, tls_key=pki.other_client_key
        ),
    }[case]
    with pytest.raises(ConnectionError, match="TLS failed") as err:
        await Bus.connect(nats, BUS, connect_timeout_s=20)
    assert why in str(err.value).upper()
    assert passwords["setup"] not in str(err.value)


async def test_tls_settings_refuse_a_server_without_tls(nats_server, pki):
    """A client told to use TLS does not fall back to plaintext when the server offers none."""
    nats = NatsSettings(url=nats_server.url, tls_ca=pki.ca)
    with pytest.raises(ConnectionError, match="does not require TLS"):
        await Bus.connect(nats, BUS, connect_timeout_s=20)


async def test_tls_handshake_first(tmp_path, pki):
    with NatsServer(
        store_dir=tmp_path / "nats",
        tls_cert=pki.server_cert,
        tls_key=pki.server_key,
        tls_handshake_first=True,
    ) as server:
        bus = await Bus.connect(NatsSettings(url=server.url, tls_ca=pki.ca, tls_handshake_first=True), BUS)
        try:
            ack = await bus.publish("mt.dead.tls", b"x")
            assert ack.stream == "MT_DEAD"
        finally:
            await bus.close()


def test_settings_validation(tmp_path, pki):
    with pytest.raises(ValidationError, match=r"tls_cert and nats\.tls_key"):
        NatsSettings(tls_cert=pki.client_cert)
    with pytest.raises(ValidationError, match=r"nats\.user and nats\.password"):
        NatsSettings(user="tools")
    with pytest.raises(ValidationError, match=r"nats\.user and nats\.password"):
        NatsSettings(password=SecretStr("x"))
    with pytest.raises(ValidationError, match="NATS user"):
        NatsSettings(user="tools.evil", password=SecretStr("x"))
    s = NatsSettings(user="tools", password=SecretStr("hunter2-secret"), tls_ca=pki.ca)
    assert "hunter2-secret" not in repr(s) and "hunter2-secret" not in str(s.model_dump())
    assert s.tls and not NatsSettings().tls and NatsSettings(url="tls://nats:4222").tls


async def test_unreadable_tls_files_name_the_setting(tmp_path, nats_server):
    with pytest.raises(ConfigError, match=r"nats\.tls_ca"):
        await Bus.connect(NatsSettings(url=nats_server.url, tls_ca=tmp_path / "missing.pem"), BUS)
