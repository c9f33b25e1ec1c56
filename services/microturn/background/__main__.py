"""``python -m microturn.background``: run the background service until SIGTERM/SIGINT."""

from microturn.background.service import BackgroundService
from microturn.bus.lifecycle import serve_main

if __name__ == "__main__":
    serve_main("background", BackgroundService)
