"""The local Ray head (``ray start --head --block``) as a supervised child.

Every port Ray opens by default at a fixed number is set explicitly from settings, so two local
runs (or a run and the tests) never collide silently; the rest are chosen by Ray at random.
"""

from __future__ import annotations

import sys
import tempfile
import urllib.request
from pathlib import Path

from microturn.config import RaySettings
from microturn.localrun.process import ServiceSpec

# Unix socket paths are limited to 107 bytes; Ray puts its sockets ~65 bytes deep in the temp dir.
_MAX_TEMP_DIR = 40


def ray_temp_dir(state_dir: Path) -> Path:
    """Ray's temp dir inside the state dir, or under the system temp dir when that path is too long."""
    path = (state_dir / "ray").resolve()
    if len(str(path)) > _MAX_TEMP_DIR:
        path = Path(tempfile.gettempdir()) / f"microturn-ray-{abs(hash(str(path))) % 10**8}"
    return path


def ray_head_spec(settings: RaySettings, state_dir: Path, host: str = "127.0.0.1") -> ServiceSpec:
    ray = str(Path(sys.executable).parent / "ray")
    argv = [
        ray, "start", "--head", "--block",
        "--node-ip-address", host,
        "--port", str(settings.port),
        "--dashboard-host", host,
        "--dashboard-port", str(settings.dashboard_port),
        "--dashboard-agent-listen-port", str(settings.dashboard_agent_port),
        "--ray-client-server-port", str(settings.client_server_port),
        "--temp-dir", str(ray_temp_dir(state_dir)),
        "--disable-usage-stats",
        "--include-dashboard", "true",
    ]  # fmt: skip
    if settings.num_cpus is not None:
        argv += ["--num-cpus", str(settings.num_cpus)]
    dashboard = f"http://{host}:{settings.dashboard_port}"

    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"{dashboard}/api/gcs_healthz", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    return ServiceSpec(
        name="ray",
        argv=argv,
        ready=ready,
        endpoints={"address": f"{host}:{settings.port}", "dashboard": dashboard},
        env={"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"},
        ready_timeout_s=120.0,
        stop_grace_s=5.0,
    )
