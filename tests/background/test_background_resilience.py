"""Services as real processes (``python -m microturn.background`` / ``microturn.tools``): two instances
share the work with none done twice; a SIGKILLed instance's task is redelivered and answered once;
timers survive a restart; hostile tool input leaves the service serving."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter

import grpc
import httpx
import psutil
from background_helpers import collect, collect_many, kinds, make_settings, request
from fake_openai import fake_openai_server

from microturn.background import BackgroundService
from microturn.bus import Bus, DelegationClient, subjects
from microturn.localrun.ports import free_port
from microturn.v1 import delegation_pb2, tools_pb2, tools_pb2_grpc

Code = tools_pb2.ToolErrorCode


async def wait_for_log(procs, pattern: str, timeout_s: float = 30.0):
    """The first process whose log matches ``pattern``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for p in procs:
            if re.search(pattern, p.log()):
                return p
        await asyncio.sleep(0.05)
    raise AssertionError(f"no process logged {pattern!r}")


async def stored_updates(bus: Bus, session_id: str) -> list[delegation_pb2.BackgroundUpdate]:
    """Every update JetStream holds for a session (what any reader could ever be handed)."""
    info = await bus.js.stream_info(
        subjects.UPDATES_STREAM, subjects_filter=subjects.update_subject(session_id)
    )
    count = (info.state.subjects or {}).get(subjects.update_subject(session_id), 0)
    sub = await bus.js.subscribe(
        subjects.update_subject(session_id), stream=subjects.UPDATES_STREAM, ordered_consumer=True
    )
    try:
        return [
            delegation_pb2.BackgroundUpdate.FromString((await sub.next_msg(timeout=5)).data)
            for _ in range(count)
        ]
    finally:
        await sub.unsubscribe()


async def test_two_instances_of_each_service_share_work_none_twice(nats_server, spawn):
    settings = make_settings(nats_server.url)
    procs = [spawn(m, settings) for m in ("background", "background", "tools", "tools")]
    await asyncio.gather(*(p.wait_ready() for p in procs))
    bus = await Bus.connect(nats_server.url, settings.bus)
    client = DelegationClient(bus)
    sessions = [f"s-share-{i}" for i in range(4)]
    readers = {s: await client.session_updates(s) for s in sessions}
    try:
        reqs = [request(sessions[k % 4], f"what is {k} + {k}") for k in range(24)]
        for req in reqs:
            await client.delegate(req)
        got: dict[str, list] = {}
        for session in sessions:
            ids = {r.delegation_id for r in reqs if r.session_id == session}
            got.update(await collect_many(readers[session], ids))
        for req in reqs:
            k = int(req.context.request.split()[2])
            assert kinds(got[req.delegation_id]) == ["partial", "final"]
            assert got[req.delegation_id][-1].final.text == f"{k} + {k} = {2 * k}"
    finally:
        for r in readers.values():
            await r.close()
        await bus.close()
    finals = 0.0
    async with httpx.AsyncClient() as http:
        for p in procs[:2]:
            scraped = (await http.get(f"http://127.0.0.1:{p.metrics_port}/metrics")).text
            finals += sum(
                float(m)
                for m in re.findall(
                    r'microturn_delegations_total\{[^}]*outcome="final"[^}]*\} (\S+)', scraped
                )
            )
    assert finals == len(reqs)  # the services' own count agrees: each delegation answered once
    background_logs = [p.log() for p in procs[:2]]
    started = Counter(d for log in background_logs for d in re.findall(r"delegation (d-\w+) started", log))
    assert set(started) == {r.delegation_id for r in reqs}
    assert max(started.values()) == 1, "a delegation was worked on twice"
    assert all("started" in log for log in background_logs), "one background instance got no work"
    tool_logs = [p.log() for p in procs[2:]]
    calls = Counter(c for log in tool_logs for c in re.findall(r"tool call (\w+) started", log))
    assert len(calls) == len(reqs) and max(calls.values()) == 1
    assert all("tool call" in log for log in tool_logs), "one tools instance got no work"


async def test_killed_background_instance_task_is_redelivered_and_final_arrives_once(nats_server, spawn):
    async with fake_openai_server(slow_words=12, slow_delay_s=0.3) as (url, requests):
        settings = make_settings(nats_server.url, background={"backend": "openai", "openai_base_url": url})
        procs = [spawn("background", settings) for _ in range(2)]
        await asyncio.gather(*(p.wait_ready() for p in procs))
        bus = await Bus.connect(nats_server.url, settings.bus)
        client = DelegationClient(bus)
        updates = await client.session_updates("s-kill")
        try:
            req = request("s-kill", "answer slow please")
            await client.delegate(req)
            holder = await wait_for_log(procs, rf"delegation {req.delegation_id} started \(attempt 1\)")
            while len(requests) < 1:
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)  # mid-stream: some partials are out
            holder.kill()
            got = await collect(updates, req.delegation_id)
            other = next(p for p in procs if p is not holder)
            assert re.search(rf"delegation {req.delegation_id} started \(attempt 2\)", other.log())
            assert [u.seq for u in got] == list(range(1, len(got) + 1))
            assert kinds(got).count("final") == 1
            assert got[-1].final.text == " ".join(f"word{i}" for i in range(12))
            assert len(requests) == 2  # the model was asked again by the surviving instance
            stored = await stored_updates(bus, "s-kill")
            assert [u.WhichOneof("kind") for u in stored].count("final") == 1
            assert len({u.seq for u in stored}) == len(stored), "an update was stored twice"
        finally:
            await updates.close()
            await bus.close()


async def test_killed_tools_instance_mid_call_is_redelivered(nats_server, spawn):
    """The first knowledge search loads the embedding model (seconds): the instance is killed then."""
    settings = make_settings(nats_server.url)
    procs = [spawn("tools", settings) for _ in range(2)]
    await asyncio.gather(*(p.wait_ready() for p in procs))
    background = BackgroundService(settings)
    await background.start()
    bus = await Bus.connect(nats_server.url, settings.bus)
    client = DelegationClient(bus)
    updates = await client.session_updates("s-toolkill")
    try:
        req = request("s-toolkill", "what is a micro-turn?")
        await client.delegate(req)
        holder = await wait_for_log(procs, r"tool call \w+ started: knowledge_search \(attempt 1\)")
        holder.kill()
        got = await collect(updates, req.delegation_id, timeout_s=120)
        assert kinds(got)[-1] == "final" and "200 millisecond" in got[-1].final.text
        other = next(p for p in procs if p is not holder)
        assert re.search(r"tool call \w+ started: knowledge_search \(attempt 2\)", other.log())
    finally:
        await updates.close()
        await bus.close()
        await background.stop()


async def test_timer_survives_a_tools_restart(nats_server, spawn):
    settings = make_settings(nats_server.url)
    first = spawn("tools", settings)
    await first.wait_ready()
    background = BackgroundService(settings)
    await background.start()
    bus = await Bus.connect(nats_server.url, settings.bus)
    client = DelegationClient(bus)
    updates = await client.session_updates("s-timer-restart")
    try:
        req = request("s-timer-restart", "set a timer for 4 seconds for the pasta")
        await client.delegate(req)
        got = await collect(updates, req.delegation_id)
        assert "pasta" in got[-1].final.text
        first.kill()  # the timer is pending in JetStream, not in this process
        second = spawn(
            "tools",
            settings.model_copy(
                update={"tools": settings.tools.model_copy(update={"grpc_port": free_port()})}
            ),
        )
        await second.wait_ready()
        fired = await updates.next(timeout_s=30)
        assert fired is not None and "pasta" in fired.update.final.text
        await fired.ack()
        assert await updates.next(timeout_s=1.5) is None  # fired once
    finally:
        await updates.close()
        await bus.close()
        await background.stop()


async def test_hostile_tool_input_gets_clear_errors_and_the_service_keeps_serving(nats_server, spawn):
    settings = make_settings(nats_server.url)
    proc = spawn("tools", settings)
    await proc.wait_ready()
    rss_before = psutil.Process(proc.proc.pid).memory_info().rss
    hostile = [
        (
            "calculator",
            json.dumps({"expression": "__import__('os').system('true')"}),
            Code.TOOL_ERROR_CODE_EXECUTION_FAILED,
        ),
        ("calculator", json.dumps({"expression": "9**9**9"}), Code.TOOL_ERROR_CODE_EXECUTION_FAILED),
        ("calculator", json.dumps({"expression": "1+" * 200_000 + "1"}), Code.TOOL_ERROR_CODE_TOO_LARGE),
        ("calculator", '{"expression": "1+', Code.TOOL_ERROR_CODE_INVALID_ARGUMENTS),
        ("calculator", '"just a string"', Code.TOOL_ERROR_CODE_INVALID_ARGUMENTS),
        ("shell", "{}", Code.TOOL_ERROR_CODE_UNKNOWN_TOOL),
        ("clock", json.dumps({"timezone": "x" * 10_000}), Code.TOOL_ERROR_CODE_TOO_LARGE),
        ("ui_card", json.dumps({"title": ""}), Code.TOOL_ERROR_CODE_INVALID_ARGUMENTS),
    ]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{settings.tools.grpc_port}") as channel:
        stub = tools_pb2_grpc.ToolsStub(channel)
        listed = await stub.ListTools(tools_pb2.ListToolsRequest())
        schemas = {t.name: t.schema for t in listed.tools}
        assert set(schemas) == {"calculator", "clock", "timer", "knowledge_search", "ui_card"}
        for i, (tool, args, code) in enumerate(hostile):
            call = tools_pb2.ToolCall(
                call_id=f"h{i}", tool=tool, schema=schemas.get(tool, "x.v1"), arguments_json=args
            )
            result = await stub.Call(call, timeout=10)
            assert result.WhichOneof("outcome") == "error", (tool, args[:50])
            assert result.error.code == code and result.error.message, (tool, result.error)
        ok = await stub.Call(
            tools_pb2.ToolCall(
                call_id="ok",
                tool="calculator",
                schema="calculator.v1",
                arguments_json='{"expression": "6*7"}',
            )
        )
        assert json.loads(ok.result_json)["value"] == 42
    # The same over the bus, plus bytes that are not a ToolCall at all.
    bus = await Bus.connect(nats_server.url, settings.bus)
    try:
        from microturn.tools import ToolClient

        tc = ToolClient(bus, timeout_s=10)
        res = await tc.call(
            "calculator", {"expression": "9**9**9"}, schema="calculator.v1", call_id="nats-h1"
        )
        assert res.error.code == Code.TOOL_ERROR_CODE_EXECUTION_FAILED and "exponent" in res.error.message
        await bus.publish(subjects.TOOL_CALL, b"\xff\xfe not protobuf", msg_id="garbage")
        res = await tc.call("calculator", {"expression": "2**10"}, schema="calculator.v1", call_id="nats-ok")
        assert json.loads(res.result_json)["value"] == 1024
    finally:
        await bus.close()
    assert proc.proc.poll() is None, "the tools service died"
    async with httpx.AsyncClient() as http:
        scraped = (await http.get(f"http://127.0.0.1:{proc.metrics_port}/metrics")).text
    assert re.search(
        r'microturn_tool_calls_total\{[^}]*outcome="TOOL_ERROR_CODE_UNKNOWN_TOOL"[^}]*tool="\(unknown\)"',
        scraped,
    )
    assert re.search(
        r'microturn_tool_calls_total\{[^}]*outcome="ok"[^}]*tool="calculator"[^}]*via="nats"', scraped
    )
    assert psutil.Process(proc.proc.pid).memory_info().rss - rss_before < 200 << 20


async def test_sigterm_hands_unfinished_work_back_at_once(nats_server, spawn):
    """Graceful stop: in-flight work gets shutdown_grace_s to finish, then is nak'ed (not left to ack_wait)."""
    async with fake_openai_server(slow_words=12, slow_delay_s=0.3) as (url, _requests):
        settings = make_settings(
            nats_server.url,
            background={"backend": "openai", "openai_base_url": url},
            bus={"shutdown_grace_s": 0.3, "ack_wait_s": 30.0},  # redelivery can only come from the nak
        )
        procs = [spawn("background", settings) for _ in range(2)]
        await asyncio.gather(*(p.wait_ready() for p in procs))
        bus = await Bus.connect(nats_server.url, settings.bus)
        client = DelegationClient(bus)
        updates = await client.session_updates("s-term")
        try:
            req = request("s-term", "answer slow please")
            await client.delegate(req)
            holder = await wait_for_log(procs, rf"delegation {req.delegation_id} started \(attempt 1\)")
            await asyncio.sleep(0.5)
            assert holder.stop() == 0  # SIGTERM: clean exit
            try:
                got = await collect(updates, req.delegation_id, timeout_s=20)  # well before ack_wait
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n" + "\n".join(p.log()[-2000:] for p in procs)) from None
            assert kinds(got).count("final") == 1
            other = next(p for p in procs if p is not holder)
            assert re.search(rf"delegation {req.delegation_id} started \(attempt 2\)", other.log())
        finally:
            await updates.close()
            await bus.close()
