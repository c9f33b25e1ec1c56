"""Port checks: a clash is reported before anything starts, naming the setting to change."""

from __future__ import annotations

import socket
from collections.abc import Iterable


class PortInUseError(RuntimeError):
    pass


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def check_ports_free(ports: Iterable[tuple[str, str, int]]) -> None:
    """Raise PortInUseError listing every (setting, host, port) that is already taken."""
    taken = [(name, host, port) for name, host, port in ports if not port_is_free(host, port)]
    if taken:
        lines = "\n".join(f"  {host}:{port} ({name})" for name, host, port in taken)
        raise PortInUseError(
            "ports already in use — stop whatever holds them (`make down` if it is an earlier run) "
            f"or choose others:\n{lines}"
        )


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS considers free right now (for tests and ephemeral servers)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def free_port_run(count: int, host: str = "127.0.0.1", tries: int = 50) -> int:
    """The first of ``count`` consecutive ports that are all free right now (a base port whose
    neighbours are used too, such as telemetry.local_metrics_base_port)."""
    for _ in range(tries):
        base = free_port(host)
        if base + count - 1 <= 65535 and all(port_is_free(host, base + i) for i in range(1, count)):
            return base
    raise PortInUseError(f"found no {count} consecutive free ports on {host} in {tries} tries")


def wait_for_port(host: str, port: int, timeout_s: float) -> bool:
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False
