"""``python -m microturn.tools``: run the tools service until SIGTERM/SIGINT."""

from microturn.bus.lifecycle import serve_main
from microturn.tools.service import ToolsService

if __name__ == "__main__":
    serve_main("tools", ToolsService)
