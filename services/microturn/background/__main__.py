"""``python -m microturn.background``: run the background service until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio

from microturn.background.service import BackgroundService
from microturn.bus.lifecycle import run_until_signalled
from microturn.config import load_settings
from microturn.telemetry import configure_logging, setup_telemetry


def main() -> None:
    settings = load_settings()
    configure_logging("background", settings.telemetry.log_format, settings.telemetry.log_level)
    telemetry = setup_telemetry("background", settings.telemetry)
    try:
        asyncio.run(run_until_signalled(BackgroundService(settings), telemetry))
    finally:
        telemetry.shutdown()


if __name__ == "__main__":
    main()
