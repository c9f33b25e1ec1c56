"""``python -m microturn.edge`` (same as ``microturn edge``): serve the edge with uvicorn until
SIGTERM/SIGINT."""

from __future__ import annotations

import sys

import uvicorn

from microturn.config import ConfigError, Settings, load_settings
from microturn.edge.app import create_app
from microturn.telemetry import configure_logging, setup_telemetry


def serve(settings: Settings) -> int:
    configure_logging("edge", settings.telemetry.log_format, settings.telemetry.log_level)
    telemetry = setup_telemetry("edge", settings.telemetry)
    app = create_app(settings, on_started=telemetry.set_ready)
    uvicorn.run(app, host=settings.edge.host, port=settings.edge.port, log_config=None, access_log=False)
    telemetry.shutdown()
    return 0


def main() -> int:
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"microturn edge: {exc}", file=sys.stderr)
        return 2
    return serve(settings)


if __name__ == "__main__":
    sys.exit(main())
