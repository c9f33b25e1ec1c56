"""The chart's wiring, run: render it, take each container's command, environment and config file
from the manifests, run them as local processes (the cluster's service names mapped to loopback),
and make a real WebRTC call through them.

What stands in for the cluster: a nats-server started with the users and permissions that
charts/nats-values.yaml gives the official NATS chart (passwords from the chart's own Secret), a local
Ray head carrying the worker pods' environment, and the chart's serveConfigV2 deployed to it through
the Serve REST API — exactly as KubeRay submits it. Everything else is the rendered chart.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from microturn.bus.permissions import SERVICE_USERS, SETUP
from microturn.config import RaySettings
from microturn.interaction.serve_config import deploy_config, wait_running
from microturn.localrun.nats import NatsServer
from microturn.localrun.ports import free_port
from microturn.localrun.process import ManagedProcess, ServiceSpec
from microturn.localrun.ray import ray_head_spec
from microturn.localrun.supervisor import http_ok

from .chart_contract import Container, configmaps, containers, secrets, serve_config, write_config_files
from .chart_helpers import CHART, render

pytestmark = pytest.mark.slow

SERVICE_DNS = re.compile(r"\b[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9-]+)*\.svc(\.cluster\.local)?\b")
CALL_SECONDS = 20


def on_loopback(env: dict[str, str], root: Path) -> dict[str, str]:
    """The container's environment for a local process: cluster DNS names -> 127.0.0.1, the pod's
    /tmp -> a directory of this test."""
    out = {}
    for k, v in env.items():
        v = SERVICE_DNS.sub("127.0.0.1", v)
        if v.startswith("/tmp") and not v.startswith(str(root)):
            v = str(root / v.lstrip("/"))
        out[k] = v
    return out


def process_env(c: Container, manifests, root: Path) -> dict[str, str]:
    # The node's IP (downward API) is loopback here: one machine.
    env = on_loopback(write_config_files(c, manifests, root, host_ip="127.0.0.1"), root)
    # The ConfigMap files it mounts (the edge's routing table) at their written copies, the cluster's
    # service names in them on loopback too.
    for path in c.mounted_files(configmaps(manifests)):
        local = root / path.lstrip("/")
        local.write_text(SERVICE_DNS.sub("127.0.0.1", local.read_text()))
        env = {k: str(local) if v == path else v for k, v in env.items()}
    return {**env, "PYTHONUNBUFFERED": "1"}


def argv(c: Container) -> list[str]:
    assert c.command[:1] == ["microturn"], c.command
    return [sys.executable, "-m", "microturn", *c.command[1:]]


def by_name(manifests) -> dict[str, Container]:
    found = {}
    for c in containers(manifests):
        key = c.component if not c.owner_kind.startswith("RayService/") else c.owner_kind.split("/")[1]
        found.setdefault(key, c)
    return found


async def test_the_rendered_chart_carries_a_real_call(tmp_path):
    ports = {
        "edge.port": free_port(),
        "interaction.grpcPort": free_port(),
        "interaction.httpPort": free_port(),
        "tools.grpcPort": free_port(),
        "tools.metricsPort": free_port(),
        "background.metricsPort": free_port(),
    }
    nats_port, nats_monitor = free_port(), free_port()
    ice_lo = free_port() // 2 * 2 % 20_000 + 20_000  # below the OS's ephemeral range
    sets = {
        **{k: str(v) for k, v in ports.items()},
        "nats.url": f"nats://127.0.0.1:{nats_port}",
        "edge.media.udpPortMin": str(ice_lo),
        "edge.media.udpPortMax": str(ice_lo + 40),
        "interaction.serve.replicas": "1",
        "interaction.serve.numCpus": "1",
        # No API server here to patch the edge pod's deletion cost on.
        "edge.podDeletionCost.enabled": "false",
    }
    manifests = render([CHART / "ci" / "cpu-only.yaml"], sets)
    c = by_name(manifests)
    (nats_secret,) = [s for name, s in secrets(manifests).items() if set(s) >= {*SERVICE_USERS, SETUP}]
    # The NATS users the nats-values file declares, with the chart Secret's passwords.
    declared = yaml.safe_load((CHART.parent / "nats-values.yaml").read_text())["config"]["merge"][
        "authorization"
    ]
    assert {u["user"] for u in declared["users"]} == set(nats_secret)
    nats = NatsServer(tmp_path / "nats", port=nats_port, monitor_port=nats_monitor, users=nats_secret)
    procs: list[ManagedProcess] = []

    async def run(name: str, container: Container, ready, command: list[str] | None = None, extra=None):
        env = {**process_env(container, manifests, tmp_path / name), **(extra or {})}
        spec = ServiceSpec(
            name=name, argv=command or argv(container), ready=ready, env=env, ready_timeout_s=300
        )
        proc = ManagedProcess(spec, sys.stdout)
        procs.append(proc)
        await proc.start()
        await proc.wait_ready()
        return proc

    with nats:
        try:
            # 1. The hook Job: streams and durable consumers, as the setup user.
            job = c["bus-setup"]
            out = subprocess.run(
                argv(job),
                env=process_env(job, manifests, tmp_path / "setup"),
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert out.returncode == 0, out.stderr
            assert len(json.loads(out.stdout.splitlines()[-1])["ready"]) >= 3
            # 2. The bus services, ready on their probes' ports.
            for name in ("tools", "background"):
                port = ports[f"{name}.metricsPort"]
                await run(name, c[name], http_ok(f"http://127.0.0.1:{port}/healthz"))
            # 3. A Ray head with the worker pods' environment, then the chart's serveConfigV2.
            worker = next(v for k, v in c.items() if k.endswith("workers"))
            ray = RaySettings(
                port=free_port(),
                dashboard_port=free_port(),
                dashboard_agent_port=free_port(),
                client_server_port=free_port(),
                num_cpus=2,
            )
            head = ray_head_spec(ray, tmp_path / "ray-state")
            await run("ray", worker, head.ready, command=head.argv, extra=head.env)
            config = serve_config(manifests)
            dashboard = f"http://127.0.0.1:{ray.dashboard_port}"
            await asyncio.to_thread(deploy_config, dashboard, config)
            app = config["applications"][0]["name"]
            await asyncio.to_thread(wait_running, dashboard, app, 300)
            # 4. The edge; the call's host candidates on loopback (its pinned node IP here). It applies
            # the chart's routing table: every new call asks for interaction.modelVersion at the
            # stable version's gRPC Service, and the replicas must serve that version.
            edge_url = f"http://127.0.0.1:{ports['edge.port']}"
            await run("edge", c["edge"], http_ok(f"{edge_url}/healthz"))
            with urllib.request.urlopen(f"{edge_url}/healthz", timeout=5) as r:
                assert "routing epoch 0" in r.read().decode()
            # 5. A real call, as `helm test` makes it.
            call = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "loadtest.smoke", "--url", edge_url, "--seconds", str(CALL_SECONDS),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
            stdout, _ = await asyncio.wait_for(call.communicate(), 300)
            lines = stdout.decode(errors="replace").strip().splitlines()
            verdict = json.loads(lines[-1])
            assert verdict["passed"], f"call failed: {verdict['failures']}\n" + "\n".join(lines[-20:])
            assert verdict["chunks"] >= 0.8 * CALL_SECONDS / 0.2
        finally:
            for proc in reversed(procs):
                await proc.stop()
