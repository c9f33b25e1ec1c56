"""Per-service NATS users against a real nats-server started with the rendered authorization
(microturn.bus.permissions): `microturn bus setup` creates the topology as `setup`; then each
service does its real work with its own user and `bus.manage_topology` off (a delegation round trip
through the tools and background services, a timer, a stored cancellation, dead letters) without a
single permissions violation, and every step outside a user's hops is refused by the server."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.request
import uuid

import pytest
from nats.js.api import StreamConfig
from pydantic import SecretStr

from microturn.background import BackgroundService
from microturn.bus import Bus, DelegationClient, WorkQueue, durable, subjects
from microturn.bus.connection import PermissionDenied
from microturn.bus.permissions import (
    SERVICE_USERS,
    USERS,
    EnvVar,
    inbox_prefix,
    permission_table,
    permissions_data,
    render_authorization,
)
from microturn.bus.setup import setup
from microturn.bus.streams import SERVICE_CONSUMERS, stream_configs
from microturn.config import BackgroundSettings, BusSettings, NatsSettings, Settings, ToolsSettings
from microturn.localrun.nats import NatsServer, nats_server_binary
from microturn.tools.service import ToolsService
from microturn.v1 import delegation_pb2, tools_pb2

ErrorCode = delegation_pb2.DelegationErrorCode
BUS = BusSettings(
    ack_wait_s=2.0,
    max_attempts=2,
    retry_delay_s=0.1,
    shutdown_grace_s=2.0,
    publish_timeout_s=5.0,
    manage_topology=False,
)


def settings_for(server: NatsServer, user: str | None, passwords: dict[str, str], **bus) -> Settings:
    nats = NatsSettings(
        url=server.url,
        user=user,
        password=SecretStr(passwords[user]) if user else None,
    )
    return Settings(
        nats=nats,
        bus=BUS.model_copy(update=bus),
        tools=ToolsSettings(
            grpc_enabled=False, knowledge_preload=False, project_docs_dir=None, knowledge_dir=None
        ),
        background=BackgroundSettings(tool_timeout_s=40.0, default_deadline_s=60.0),
    )


async def connect(server: NatsServer, user: str, passwords: dict[str, str], **bus) -> Bus:
    s = settings_for(server, user, passwords, **bus)
    return await Bus.connect(s.nats, s.bus, name=f"test-{user}", connect_timeout_s=10)


def jsz(server: NatsServer) -> dict[str, set[str]]:
    """Streams and their consumers, from the monitoring endpoint (no NATS user involved)."""
    url = f"http://{server.host}:{server.monitor_port}/jsz?streams=true&consumers=true"
    with urllib.request.urlopen(url, timeout=5) as r:
        data = json.load(r)
    out: dict[str, set[str]] = {}
    for account in data.get("account_details", []):
        for stream in account.get("stream_detail", []):
            out[stream["name"]] = {c["name"] for c in stream.get("consumer_detail") or []}
    return out


def stream_messages(server: NatsServer, name: str) -> int:
    url = f"http://{server.host}:{server.monitor_port}/jsz?streams=true"
    with urllib.request.urlopen(url, timeout=5) as r:
        data = json.load(r)
    for account in data.get("account_details", []):
        for stream in account.get("stream_detail", []):
            if stream["name"] == name:
                return stream["state"]["messages"]
    raise AssertionError(f"no stream {name}")


async def eventually(check, timeout_s: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout_s}s")
        await asyncio.sleep(0.05)


async def violated(bus: Bus, entry: str, timeout_s: float = 10.0) -> None:
    """The server reported a permissions violation ``entry`` ("publish <subject>" or
    "subscription <subject>"; nats-py reports subjects in lower case) on this connection."""
    await eventually(
        lambda: entry.lower() in (v.lower() for v in bus.permission_violations),
        timeout_s,
        f"violation {entry!r} (seen: {list(bus.permission_violations)})",
    )


@pytest.fixture
async def topology(secure_nats, passwords):
    """The streams and the services' consumers, made by `microturn bus setup` as user `setup`."""
    created = await setup(settings_for(secure_nats, "setup", passwords), timeout_s=20)
    return created


# -- the table itself ----------------------------------------------------------------------------
def test_table_is_plain_data_and_edge_has_no_user():
    data = permissions_data()
    assert json.loads(json.dumps(data)) == data
    assert set(data) == set(USERS) == {"interaction", "background", "tools", "setup", "rollout"}
    assert "edge" not in data
    for user, perms in data.items():
        assert set(perms) == {"publish", "subscribe"}
        assert f"{inbox_prefix(user)}.>" in perms["subscribe"]
        assert "_INBOX.>" not in perms["subscribe"], "a shared inbox would expose other users' replies"
        assert not any(p.startswith("$JS.API.STREAM.DELETE") for p in perms["publish"])
        assert not any(s in (">", "$JS.API.>") for s in perms["publish"] + perms["subscribe"])
    # Every service durable is pulled by exactly one user, and only setup creates it (strict mode).
    for d in SERVICE_CONSUMERS:
        pullers = [
            u for u, p in data.items() if f"$JS.API.CONSUMER.MSG.NEXT.{d.stream}.{d.name}" in p["publish"]
        ]
        assert len(pullers) == 1, (d, pullers)
        creators = [
            u
            for u, p in data.items()
            if f"$JS.API.CONSUMER.DURABLE.CREATE.{d.stream}.{d.name}" in p["publish"]
        ]
        assert creators == ["setup"]
    creators = [u for u, p in data.items() if any(".STREAM.CREATE." in s for s in p["publish"])]
    assert creators == ["setup"]
    # Topology mode: each service may also create the streams and its own consumers.
    managed = permissions_data(manage_topology=True)
    assert "$JS.API.CONSUMER.DURABLE.CREATE.MT_TOOL_CALLS.tools" in managed["tools"]["publish"]
    assert "$JS.API.CONSUMER.DURABLE.CREATE.MT_TOOL_CALLS.tools" not in managed["background"]["publish"]
    assert all("$JS.API.STREAM.CREATE.MT_UPDATES" in managed[u]["publish"] for u in SERVICE_USERS)
    table = permission_table()
    assert all(rule.why for p in table.values() for rule in (*p.publish, *p.subscribe))


def test_rendered_block_is_a_valid_nats_server_config(tmp_path, passwords):
    for block in (
        render_authorization(passwords),
        render_authorization({u: EnvVar(f"PW_{u.upper()}") for u in USERS}, manage_topology=True),
    ):
        path = tmp_path / "auth.conf"
        path.write_text(block)
        env = {f"PW_{u.upper()}": "x" for u in USERS}
        check = subprocess.run(
            [nats_server_binary(), "-t", "-c", str(path)], capture_output=True, text=True, env=env, timeout=30
        )
        assert check.returncode == 0, check.stdout + check.stderr
    assert passwords["tools"] in render_authorization(passwords)
    with pytest.raises(ValueError, match="no permissions defined"):
        render_authorization({"edge": "x"})
    with pytest.raises(ValueError, match="quotes"):
        render_authorization({"tools": 'a"b'})


# -- setup, then the real work with each service's own user ---------------------------------------
async def test_setup_creates_the_topology_and_services_work_with_only_their_permissions(
    secure_nats, passwords, topology
):
    assert set(topology) >= {c.name for c in stream_configs(BUS)}
    found = jsz(secure_nats)
    assert set(found) == {c.name for c in stream_configs(BUS)}
    for d in SERVICE_CONSUMERS:
        assert d.name in found[d.stream], (d, found)
    # Idempotent: a second run updates in place.
    assert await setup(settings_for(secure_nats, "setup", passwords), timeout_s=20) == topology

    tools = ToolsService(settings_for(secure_nats, "tools", passwords))
    background = BackgroundService(settings_for(secure_nats, "background", passwords))
    await tools.start()
    await background.start()
    interaction = await connect(secure_nats, "interaction", passwords)
    client = DelegationClient(interaction)
    buses = {"tools": tools.bus, "background": background.bus, "interaction": interaction}
    try:
        # A delegation round trip: interaction -> background -> tools -> background -> interaction.
        session = f"s-{uuid.uuid4().hex[:8]}"
        updates = await client.session_updates(session)
        req = delegation_pb2.DelegationRequest(
            delegation_id=f"d-{uuid.uuid4().hex[:8]}",
            session_id=session,
            context=delegation_pb2.ContextPackage(request="What is 12 times (3 plus 4)?"),
            deadline_unix_ms=int((time.time() + 60) * 1000),
        )
        assert await client.delegate(req)
        got = await read_until_last(updates, req.delegation_id)
        assert got[-1].final.text == "12 * (3 + 4) = 84"

        # A timer: the tools user stores it (mt.timer.*), pulls it from its timers durable, checks the
        # stored cancellations, and publishes the fired update to the session.
        timer = delegation_pb2.DelegationRequest(
            delegation_id=f"d-{uuid.uuid4().hex[:8]}",
            session_id=session,
            context=delegation_pb2.ContextPackage(request="remind me in 2 seconds to stretch"),
            deadline_unix_ms=int((time.time() + 60) * 1000),
        )
        await client.delegate(timer)
        got = await read_until_last(updates, timer.delegation_id)
        assert got[-1].WhichOneof("kind") == "final"
        fired = await read_until_last(updates, "timer-", prefix=True)
        assert "stretch" in fired[-1].final.text

        # A cancellation stored before the delegation is picked up (background reads MT_CANCELS).
        cancelled = delegation_pb2.DelegationRequest(
            delegation_id=f"d-{uuid.uuid4().hex[:8]}",
            session_id=session,
            context=delegation_pb2.ContextPackage(request="What is 2 plus 2?"),
        )
        await client.cancel(session, cancelled.delegation_id)
        await client.delegate(cancelled)
        got = await read_until_last(updates, cancelled.delegation_id)
        assert got[-1].error.code == ErrorCode.DELEGATION_ERROR_CODE_CANCELLED
        await updates.close(delete=True)  # interaction drops its session consumer
        await eventually(lambda: f"session-{session}" not in jsz(secure_nats)[subjects.UPDATES_STREAM])

        # Dead letters: garbage a user may publish is dead-lettered by the service that pulls it.
        dead_before = stream_messages(secure_nats, subjects.DEAD_STREAM)
        await interaction.publish(subjects.DELEGATION_REQUEST, b"\xff not a request", msg_id="junk-1")
        await background.bus.publish(subjects.TOOL_CALL, b"\xff not a call", msg_id="junk-2")
        await eventually(
            lambda: stream_messages(secure_nats, subjects.DEAD_STREAM) == dead_before + 2,
            what="2 dead letters",
        )
        # The background's stored-result fallback of tool calls (MT_TOOL_RESULTS) is readable to it.
        assert (
            await background.bus.last_message(
                subjects.TOOL_RESULTS_STREAM, subjects.tool_result_subject("never-called")
            )
            is None
        )

        for user, bus in buses.items():
            assert bus is not None and bus.user == user
            assert not bus.permission_violations, (user, list(bus.permission_violations))
    finally:
        await interaction.close()
        await background.stop()
        await tools.stop()


async def read_until_last(updates, delegation_id: str, prefix: bool = False, timeout_s: float = 60.0):
    out = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        delivery = await updates.next(timeout_s=max(deadline - time.monotonic(), 0.01))
        if delivery is None:
            break
        await delivery.ack()
        did = delivery.update.delegation_id
        if not (did.startswith(delegation_id) if prefix else did == delegation_id):
            continue
        out.append(delivery.update)
        if delivery.is_last:
            return out
    raise AssertionError(f"no last update for {delegation_id} within {timeout_s}s; got {out}")


async def test_services_refuse_to_start_without_setup_when_they_may_not_create(secure_nats, passwords):
    """manage_topology on, strict permissions: the service's stream creation is refused by the
    server, and that is reported as a permissions error, not as NATS being away."""
    with pytest.raises(PermissionDenied, match=r"(?i)\$JS\.API\.STREAM\.INFO"):
        await connect(secure_nats, "background", passwords, manage_topology=True)


async def test_topology_mode_lets_services_create_what_they_use(tmp_path, passwords):
    with NatsServer(store_dir=tmp_path / "nats", users=passwords, manage_topology=True) as server:
        buses = [await connect(server, u, passwords, manage_topology=True) for u in SERVICE_USERS]
        try:
            by_user = dict(zip(SERVICE_USERS, buses, strict=True))
            queues = [
                WorkQueue(by_user[user], consumer=durable(name), kind=kind, handler=_noop, concurrency=1)
                for user, name, kind in (
                    ("background", subjects.BACKGROUND_CONSUMER, "delegation"),
                    ("tools", subjects.TOOLS_CONSUMER, "tool"),
                    ("tools", subjects.TIMERS_CONSUMER, "timer"),
                )
            ]
            for q in queues:
                await q.start()
            found = jsz(server)
            assert set(found) == {c.name for c in stream_configs(BUS)}
            assert all(d.name in found[d.stream] for d in SERVICE_CONSUMERS)
            for q in queues:
                await q.stop(0)
            for user, bus in by_user.items():
                assert not bus.permission_violations, (user, list(bus.permission_violations))
            # Still no one but its service may pull a queue.
            with pytest.raises(PermissionDenied):
                await by_user["interaction"].retrying(
                    lambda: by_user["interaction"].js.add_consumer(
                        subjects.TOOL_CALLS_STREAM, durable_name="tools"
                    ),
                    "steal the tools consumer",
                )
        finally:
            for bus in buses:
                await bus.close()


async def _noop(msg, attempt) -> None:
    return None


# -- refusals ------------------------------------------------------------------------------------
async def test_wrong_or_missing_credentials_are_refused(secure_nats, passwords):
    for nats in (
        NatsSettings(url=secure_nats.url, user="tools", password=SecretStr("not-the-password")),
        NatsSettings(url=secure_nats.url, user="tools", password=SecretStr(passwords["background"])),
        NatsSettings(url=secure_nats.url, user="edge", password=SecretStr("x")),
        NatsSettings(url=secure_nats.url),
    ):
        with pytest.raises(ConnectionError, match="refused the credentials") as err:
            await Bus.connect(nats, BUS, connect_timeout_s=20)
        assert "Authorization Violation" in str(err.value)
        for secret in passwords.values():
            assert secret not in str(err.value)


async def expect_publish_refused(bus: Bus, subject: str, payload: bytes = b"x") -> None:
    with pytest.raises(PermissionDenied, match=subject.replace(".", r"\.").replace("$", r"\$")):
        await bus.publish(subject, payload)
    await violated(bus, f"publish {subject}")


@pytest.mark.parametrize(
    ("user", "subject"),
    [
        ("interaction", subjects.tool_result_subject("c1")),  # forge a tool result
        ("interaction", subjects.TOOL_CALL),  # run tools itself
        ("interaction", subjects.update_subject("s1")),  # feed a session
        ("interaction", subjects.timer_subject("s1")),
        ("tools", subjects.DELEGATION_REQUEST),  # tools cannot delegate
        ("tools", subjects.cancel_subject("s1")),
        ("tools", subjects.TOOL_CALL),
        ("tools", subjects.dead_subject("delegation")),
        ("background", subjects.tool_result_subject("c1")),
        ("background", subjects.DELEGATION_REQUEST),
        ("background", subjects.timer_subject("s1")),
        ("setup", subjects.DELEGATION_REQUEST),  # the admin job sends no work
        ("setup", subjects.update_subject("s1")),
    ],
)
async def test_publishing_outside_ones_hops_is_refused(secure_nats, passwords, topology, user, subject):
    bus = await connect(secure_nats, user, passwords)
    try:
        await expect_publish_refused(bus, subject)
    finally:
        await bus.close()


@pytest.mark.parametrize(
    ("user", "stream", "consumer"),
    [
        ("interaction", subjects.TOOL_CALLS_STREAM, subjects.TOOLS_CONSUMER),
        ("interaction", subjects.DELEGATIONS_STREAM, subjects.BACKGROUND_CONSUMER),
        ("background", subjects.TOOL_CALLS_STREAM, subjects.TOOLS_CONSUMER),
        ("background", subjects.TIMERS_STREAM, subjects.TIMERS_CONSUMER),
        ("tools", subjects.DELEGATIONS_STREAM, subjects.BACKGROUND_CONSUMER),
        ("setup", subjects.TOOL_CALLS_STREAM, subjects.TOOLS_CONSUMER),
    ],
)
async def test_nobody_pulls_another_services_queue(secure_nats, passwords, topology, user, stream, consumer):
    bus = await connect(secure_nats, user, passwords)
    try:
        sub = await bus.js.pull_subscribe_bind(consumer, stream=stream)
        with pytest.raises((TimeoutError, asyncio.TimeoutError)):
            await sub.fetch(batch=1, timeout=1.0)
        entry = f"publish $JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}".lower()
        await violated(bus, entry)
        # The WorkQueue of that consumer takes nothing either: each of its fetches is refused.
        taken = []

        async def take(msg, attempt) -> None:
            taken.append(msg)

        queue = WorkQueue(bus, consumer=durable(consumer), kind="x", handler=take, concurrency=1)
        await queue.start()
        refused = sum(v.lower() == entry for v in bus.permission_violations)
        await eventually(
            lambda: sum(v.lower() == entry for v in bus.permission_violations) >= refused + 2,
            what="two refused fetches of the work queue",
        )
        await queue.stop(0)
        assert not taken
    finally:
        await bus.close()


@pytest.mark.parametrize("user", ["interaction", "background", "tools", "setup"])
async def test_nobody_but_setup_alters_streams_and_nobody_deletes_them(
    secure_nats, passwords, topology, user
):
    bus = await connect(secure_nats, user, passwords)
    js = bus.js
    updated = stream_configs(BUS)[0]
    cases = [
        (
            f"$JS.API.STREAM.DELETE.{subjects.DELEGATIONS_STREAM}",
            lambda: js.delete_stream(subjects.DELEGATIONS_STREAM),
        ),
        (
            f"$JS.API.STREAM.PURGE.{subjects.TOOL_CALLS_STREAM}",
            lambda: js.purge_stream(subjects.TOOL_CALLS_STREAM),
        ),
        (
            f"$JS.API.CONSUMER.DELETE.{subjects.DELEGATIONS_STREAM}.{subjects.BACKGROUND_CONSUMER}",
            lambda: js.delete_consumer(subjects.DELEGATIONS_STREAM, subjects.BACKGROUND_CONSUMER),
        ),
        ("$JS.API.STREAM.CREATE.EVIL", lambda: js.add_stream(StreamConfig(name="EVIL", subjects=["mt.>"]))),
    ]
    if user != "setup":
        cases += [
            (f"$JS.API.STREAM.UPDATE.{updated.name}", lambda: js.update_stream(updated)),
            (f"$JS.API.STREAM.CREATE.{updated.name}", lambda: js.add_stream(updated)),
            (
                f"$JS.API.CONSUMER.DURABLE.CREATE.{subjects.TOOL_CALLS_STREAM}.{subjects.TOOLS_CONSUMER}",
                lambda: js.add_consumer(subjects.TOOL_CALLS_STREAM, durable_name=subjects.TOOLS_CONSUMER),
            ),
        ]
    try:
        for api, op in cases:
            with pytest.raises(PermissionDenied):
                await bus.unless_denied(api, op)
            await violated(bus, f"publish {api}")
        if user == "setup":  # altering is its job
            await js.update_stream(updated)
        assert set(jsz(secure_nats)) == {c.name for c in stream_configs(BUS)}
    finally:
        await bus.close()


@pytest.mark.parametrize(
    ("user", "subject"),
    [
        ("interaction", subjects.TOOL_CALL),  # snoop on tool calls
        ("interaction", f"{subjects.PREFIX}.>"),
        ("interaction", "_INBOX.>"),  # everyone's replies
        ("interaction", f"{inbox_prefix('tools')}.>"),  # what the tools pull
        ("tools", subjects.update_subject("s1")),
        ("tools", f"{subjects.PREFIX}.cancel.>"),
        ("background", f"{inbox_prefix('interaction')}.>"),
        ("background", subjects.DELEGATION_REQUEST),
        ("setup", f"{subjects.PREFIX}.>"),
    ],
)
async def test_subscribing_outside_ones_hops_is_refused(secure_nats, passwords, topology, user, subject):
    bus = await connect(secure_nats, user, passwords)
    try:
        got = []

        async def take(msg) -> None:
            got.append(msg)

        await bus.nc.subscribe(subject, cb=take)
        await bus.nc.flush()
        await violated(bus, f"subscription {subject}")
    finally:
        await bus.close()


async def test_interaction_reads_only_session_updates(secure_nats, passwords, topology):
    """The interaction user creates, reads and deletes session consumers on MT_UPDATES only."""
    interaction = await connect(secure_nats, "interaction", passwords)
    background = await connect(secure_nats, "background", passwords)
    try:
        update = delegation_pb2.BackgroundUpdate(delegation_id="d1", session_id="s1", seq=1)
        update.final.text = "done"
        await background.publish(subjects.update_subject("s1"), update, msg_id="d1:1")
        updates = await DelegationClient(interaction).session_updates("s1")
        delivery = await updates.next(timeout_s=10)
        assert delivery is not None and delivery.update.final.text == "done"
        await delivery.ack()
        await updates.close(delete=True)
        assert not interaction.permission_violations
        # A consumer on another stream is refused.
        with pytest.raises(PermissionDenied):
            await interaction.retrying(
                lambda: interaction.js.add_consumer(subjects.TOOL_RESULTS_STREAM, durable_name="peek"),
                "peek at tool results",
            )
        # Stored tool results are not the interaction's to read either.
        with pytest.raises(PermissionDenied):
            await interaction.last_message(subjects.TOOL_RESULTS_STREAM, subjects.tool_result_subject("c1"))
        result = tools_pb2.ToolResult(call_id="c1")
        with pytest.raises(PermissionDenied):
            await interaction.publish(subjects.tool_result_subject("c1"), result)
    finally:
        await background.close()
        await interaction.close()


# -- the local run ------------------------------------------------------------------------------
async def test_passwords_that_look_like_config_values_still_work(tmp_path):
    """nats-server parses an environment variable's value as config: the server gets it quoted."""
    odd = {"setup": "-fuPcd9PodQ", "tools": "2-8xt0TUvPSD", "background": "true", "interaction": "1k"}
    with NatsServer(store_dir=tmp_path / "nats", users=odd) as server:
        for user in odd:
            bus = await connect(server, user, odd)
            await bus.close()


def test_local_run_gives_each_child_its_own_user(tmp_path, monkeypatch):
    from microturn.localrun.supervisor import build_specs

    monkeypatch.delenv("MICROTURN_NATS__USER", raising=False)
    monkeypatch.delenv("MICROTURN_NATS__PASSWORD", raising=False)
    specs = {s.name: s for s in build_specs(Settings(state_dir=tmp_path / "state"))}
    users = {name: spec.env.get("MICROTURN_NATS__USER") for name, spec in specs.items()}
    assert users == {
        "nats": None,
        "tools": "tools",
        "background": "background",
        "ray": "interaction",  # Serve replicas inherit the Ray head's environment
        "interaction": None,  # the deployer does not connect; the Serve config carries no secret
        "rollout": "rollout",  # the rollout controller reads the replicas' reports
        "edge": None,  # the edge does not use NATS
    }
    secrets_ = {specs[n].env["MICROTURN_NATS__PASSWORD"] for n in ("tools", "background", "ray")}
    assert len(secrets_) == 3
    assert all(
        specs[n].env["MICROTURN_BUS__MANAGE_TOPOLOGY"] == "false" for n in ("tools", "background", "ray")
    )
    config = (tmp_path / "state" / "nats" / "nats-server.conf").read_text()
    assert "authorization" in config and "$MT_NATS_PASSWORD_TOOLS" in config
    assert not any(p in config for p in secrets_), "the config file holds no password"
    assert "--config" in specs["nats"].argv
    # A new run, new passwords.
    again = {s.name: s for s in build_specs(Settings(state_dir=tmp_path / "state"))}
    assert again["tools"].env["MICROTURN_NATS__PASSWORD"] != specs["tools"].env["MICROTURN_NATS__PASSWORD"]
    # With an external NATS the run passes no credentials of its own.
    external = build_specs(
        Settings(state_dir=tmp_path / "ext", nats=NatsSettings(url="nats://elsewhere:4222"))
    )
    assert not any("MICROTURN_NATS__USER" in s.env for s in external)


async def test_local_run_nats_is_ready_once_set_up(tmp_path):
    """The embedded server of `microturn up`, started from its spec: ready means JetStream is up and
    the setup step made the topology as `setup`; then the tools user works with bind-only settings."""
    from microturn.localrun.ports import free_port
    from microturn.localrun.process import ManagedProcess
    from microturn.localrun.supervisor import build_specs

    settings = Settings(
        state_dir=tmp_path / "state",
        nats=NatsSettings(port=free_port(), monitor_port=free_port()),
        bus=BusSettings(storage="memory"),
    )
    specs = {s.name: s for s in build_specs(settings)}
    child = ManagedProcess(specs["nats"], out=open(tmp_path / "nats.log", "w"))  # noqa: SIM115
    await child.start()
    try:
        await child.wait_ready()
        server = NatsServer(
            store_dir=tmp_path / "x", port=settings.nats.port, monitor_port=settings.nats.monitor_port
        )
        found = jsz(server)
        assert set(found) == {c.name for c in stream_configs(BUS)}
        assert all(d.name in found[d.stream] for d in SERVICE_CONSUMERS)
        env = specs["tools"].env
        nats = NatsSettings(
            url=settings.nats.client_url,
            user=env["MICROTURN_NATS__USER"],
            password=SecretStr(env["MICROTURN_NATS__PASSWORD"]),
        )
        bus = await Bus.connect(nats, BusSettings(manage_topology=False), name="tools")
        try:
            result = tools_pb2.ToolResult(call_id="c1")
            await bus.publish(subjects.tool_result_subject("c1"), result, msg_id="c1")
            await expect_publish_refused(bus, subjects.DELEGATION_REQUEST)
        finally:
            await bus.close()
        with pytest.raises(ConnectionError, match="refused the credentials"):
            await Bus.connect(settings.nats.client_url, BusSettings(manage_topology=False))
    finally:
        await child.stop()
        child.out.close()


async def test_interaction_bridge_as_its_user(secure_nats, passwords, topology):
    """The replica's DelegationBridge connects with settings.nats (its user), follows a session,
    delegates, and on close cancels the session's work and drops its consumer: no violation."""
    from microturn.interaction.bridge import DelegationBridge

    got: list[delegation_pb2.BackgroundUpdate] = []

    def sink(session_id, update, ack) -> None:
        got.append(update)
        asyncio.get_running_loop().create_task(ack())

    bridge = DelegationBridge(settings_for(secure_nats, "interaction", passwords), sink)
    bridge.start()
    background = await connect(secure_nats, "background", passwords)
    try:
        assert await bridge.wait_connected(20)
        bridge.follow("s-bridge")
        await bridge.delegate(
            delegation_pb2.DelegationRequest(delegation_id="d-bridge", session_id="s-bridge")
        )
        update = delegation_pb2.BackgroundUpdate(delegation_id="d-bridge", session_id="s-bridge", seq=1)
        update.final.text = "bridged"
        await background.publish(subjects.update_subject("s-bridge"), update, msg_id="d-bridge:1")
        await eventually(lambda: [u.final.text for u in got] == ["bridged"], what="the update at the sink")
        await bridge.end("s-bridge", cancel=True)
        stored = await background.last_message(subjects.CANCELS_STREAM, subjects.cancel_subject("s-bridge"))
        assert stored is not None
        await eventually(lambda: "session-s-bridge" not in jsz(secure_nats)[subjects.UPDATES_STREAM])
        assert bridge.bus is not None and bridge.bus.user == "interaction"
        assert not bridge.bus.permission_violations, list(bridge.bus.permission_violations)
    finally:
        await background.close()
        await bridge.close()
