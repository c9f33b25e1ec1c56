"""``python -m microturn.tools``: run the tool-execution service until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio

from microturn.bus.lifecycle import run_until_signalled
from microturn.config import load_settings
from microturn.telemetry import configure_logging, setup_telemetry
from microturn.tools.service import ToolsService


def main() -> None:
    settings = load_settings()
    configure_logging("tools", settings.telemetry.log_format, settings.telemetry.log_level)
    telemetry = setup_telemetry("tools", settings.telemetry)
    try:
        asyncio.run(run_until_signalled(ToolsService(settings), telemetry))
    finally:
        telemetry.shutdown()


if __name__ == "__main__":
    main()
