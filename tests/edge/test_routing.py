"""The edge applies the routing table of model versions to new calls (edge.routing_file): each call
picks its version once, from its id; a table change affects only later calls; a bad table is reported
and the last good one stays in force."""

from __future__ import annotations

import asyncio
import logging
import os

import torch
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from microturn.config import load_settings
from microturn.edge.routing import RoutingWatcher
from microturn.edge.server import EdgeServer
from microturn.interaction.core import InteractionCore
from microturn.interaction.grpc_server import start_server
from microturn.localrun.ports import free_port
from microturn.model import InteractionModel, preset
from microturn.rollout.routing import Route, RoutingTable

from .conftest import edge_settings, wait_until
from .webrtc_client import EdgeClient

VERSION = "tiny-test"  # what the edge_stack replica serves


def watcher(path, reader=None) -> RoutingWatcher:
    provider = MeterProvider([reader] if reader else [])
    return RoutingWatcher(path, "interaction", provider.get_meter("test"), poll_s=0.01)


def touch_later(path) -> None:
    st = path.stat()
    os.utime(path, (st.st_atime + 5, st.st_mtime + 5))  # a new mtime even within the clock's resolution


def test_without_a_table_calls_go_to_the_default_application(tmp_path):
    w = watcher(None)
    assert w.route("s1") == Route("", "interaction") and w.epoch is None


def test_the_table_routes_new_calls_and_a_changed_file_is_picked_up(tmp_path):
    path = tmp_path / "routing.json"
    RoutingTable(1, {"v1": 100}).write(path)
    w = watcher(path)
    assert w.epoch == 1 and w.route("abc") == Route("v1", "interaction")
    RoutingTable(2, {"v1": 0, "v2": 100}, apps={"v2": "interaction-v2"}).write(path)
    touch_later(path)
    w.reload()
    assert w.epoch == 2 and w.route("abc") == Route("v2", "interaction-v2")


def test_a_bad_table_is_reported_once_counted_and_the_last_good_one_kept(tmp_path, caplog):
    path = tmp_path / "routing.json"
    RoutingTable(4, {"v1": 100}).write(path)
    reader = InMemoryMetricReader()
    w = watcher(path, reader)
    path.write_text('{"epoch": 5, "weights": {"v1": 70}}')
    with caplog.at_level(logging.ERROR, "microturn.edge.routing"):
        for _ in range(3):
            touch_later(path)
            w.reload()
    assert w.epoch == 4 and w.route("x") == Route("v1", "interaction")
    errors = [r for r in caplog.records if "routing table" in r.getMessage()]
    assert (
        len(errors) == 1
        and "add up to 100" in errors[0].getMessage()
        and "epoch 4 stays" in errors[0].getMessage()
    )
    points = {m.name: m.data.data_points for rm in reader.get_metrics_data().resource_metrics
              for sm in rm.scope_metrics for m in sm.metrics}  # fmt: skip
    assert sum(p.value for p in points["microturn_edge_routing_errors"]) == 3
    assert [p.value for p in points["microturn_edge_routing_epoch"]] == [4]
    path.unlink()
    w.reload()  # a missing file is a problem too, not a crash
    assert w.epoch == 4


async def test_a_version_in_another_cluster_gets_its_own_channel(tmp_path):
    path = tmp_path / "routing.json"
    RoutingTable(2, {"v1": 0, "v2": 100}, targets={"v2": "127.0.0.1:9"}).write(path)
    edge = EdgeServer(load_settings(overrides={"edge": {"routing_file": str(path)}}))
    await edge.start()
    try:
        session, _, _ = edge.create()
        assert session.route.target == "127.0.0.1:9" and session.channel is not edge.channel
        assert edge.create()[0].channel is session.channel  # one channel per target
    finally:
        await edge.stop()


def test_the_edge_server_reads_the_file_named_by_its_settings(tmp_path):
    path = tmp_path / "routing.json"
    RoutingTable(3, {"v1": 100}).write(path)
    edge = EdgeServer(load_settings(overrides={"edge": {"routing_file": str(path)}}))
    assert edge.routing.epoch == 3 and edge.routing.path == path


async def call_events(stack, table: RoutingTable, tmp_path) -> tuple[EdgeClient, list[dict]]:
    path = tmp_path / "routing.json"
    table.write(path)
    stack.edge.routing.path = path
    stack.edge.routing.reload()
    client = EdgeClient(stack.url, video=False)
    await client.connect()
    return client, client.events


async def test_a_call_runs_on_the_version_the_table_picked(edge_stack, tmp_path):
    client, events = await call_events(edge_stack, RoutingTable(3, {VERSION: 100}), tmp_path)
    try:
        await wait_until(lambda: len(client.chunk_arrivals()) >= 5, 60, "output chunks")
        session = edge_stack.edge.sessions[client.session_id]
        assert session.route == Route(VERSION, "interaction") and session.grpc.model_version == VERSION
        versions = {e["model_version"] for e in events if e.get("type") == "chunk"}
        assert versions == {VERSION}
    finally:
        await client.close()


async def test_a_version_no_replica_serves_gets_a_clear_error_not_a_hang(edge_stack, tmp_path):
    client, events = await call_events(edge_stack, RoutingTable(3, {"no-such-version": 100}), tmp_path)
    try:
        await wait_until(lambda: any(e.get("type") == "error" for e in events), 60, "the error event")
        (error,) = [e for e in events if e.get("type") == "error"]
        assert "no-such-version" in error["message"] and "not served here" in error["message"], error
        assert client.session_id not in edge_stack.core.sessions
    finally:
        await client.close()


async def test_a_call_whose_version_is_retired_ends_with_a_clear_error(edge_stack, tmp_path):
    client, events = await call_events(edge_stack, RoutingTable(3, {VERSION: 100}), tmp_path)
    try:
        await wait_until(lambda: len(client.chunk_arrivals()) >= 3, 60, "output chunks")
        sid = client.session_id
        RoutingTable(
            4, {"next": 100}, retired={VERSION: "tiny-test was rolled back; start a new call"}
        ).write(edge_stack.edge.routing.path)
        touch_later(edge_stack.edge.routing.path)
        edge_stack.edge.routing.reload()
        await wait_until(lambda: sid not in edge_stack.edge.sessions, 10, "the call to end")
        await wait_until(lambda: any(e.get("type") == "error" for e in events), 10, "the error event")
        (error,) = [e for e in events if e.get("type") == "error"]
        assert error["code"] == "VERSION_RETIRED" and "rolled back" in error["message"]
    finally:
        await client.close()


async def test_a_call_whose_version_is_retired_moves_to_the_next_one_and_goes_on(edge_stack, tmp_path):
    """Replay-compatible versions: past the drain deadline the call moves (routing table ``moves``) to
    the version taking new calls, here served by another gRPC endpoint, and its output goes on there for
    ten seconds with no error, and the browser is told."""
    torch.manual_seed(1)
    settings = edge_settings(free_port())
    nxt = InteractionCore(
        settings, "replica-next", model=InteractionModel(preset("tiny"), version="tiny-next")
    )
    server = await start_server(nxt, "127.0.0.1", settings.interaction.grpc_port)
    target = f"127.0.0.1:{settings.interaction.grpc_port}"
    client, events = await call_events(edge_stack, RoutingTable(3, {VERSION: 100}), tmp_path)
    try:
        await wait_until(lambda: len(client.chunk_arrivals()) >= 3, 60, "output chunks")
        sid = client.session_id
        RoutingTable(4, {VERSION: 0, "tiny-next": 100}, targets={"tiny-next": target}).retire(
            VERSION, "tiny-test is being retired; moved to tiny-next", move_to="tiny-next"
        ).write(edge_stack.edge.routing.path)
        touch_later(edge_stack.edge.routing.path)
        edge_stack.edge.routing.reload()
        await wait_until(lambda: sid in nxt.sessions, 10, "the call on the next version")
        moved_at = len([e for e in events if e.get("type") == "chunk"])
        await asyncio.sleep(10)
        chunks = [e for e in events if e.get("type") == "chunk"]
        after = [e["model_version"] for e in chunks[moved_at + 5 :]]
        assert len(after) >= 30 and set(after) == {"tiny-next"}, after  # 10 s at 5 chunks/s, less slack
        assert not [e for e in events if e.get("type") == "error"]
        assert sid in edge_stack.edge.sessions and edge_stack.edge.sessions[sid].route.version == "tiny-next"
        assert any("moving to model version tiny-next" in e.get("detail", "") for e in events)
    finally:
        await client.close()
        await server.stop(grace=None)
        await nxt.drain(timeout_s=0)
