"""A supervised child process: its own process group, log lines prefixed with its name, a
readiness probe, and a stop that escalates from SIGTERM to SIGKILL for the whole group (Ray's
head spawns a tree of helpers; killing the group is what leaves nothing behind)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

import psutil


@dataclass(frozen=True)
class ServiceSpec:
    """How to run and probe one child of ``microturn up``."""

    name: str
    argv: list[str]
    ready: Callable[[], bool]
    # What to print in the ready banner, e.g. "nats://127.0.0.1:4222".
    endpoints: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    ready_timeout_s: float = 60.0
    # Seconds between SIGTERM and SIGKILL of the group.
    stop_grace_s: float = 10.0


_COLORS = ["36", "35", "33", "32", "34", "31"]


class ManagedProcess:
    def __init__(self, spec: ServiceSpec, out: TextIO = sys.stdout, color_index: int = 0) -> None:
        self.spec = spec
        self.out = out
        self.proc: asyncio.subprocess.Process | None = None
        self.recent: deque[str] = deque(maxlen=30)
        self._pump: asyncio.Task[None] | None = None
        color = _COLORS[color_index % len(_COLORS)]
        use_color = hasattr(out, "isatty") and out.isatty()
        label = f"{spec.name:>11} |"
        self._prefix = f"\x1b[{color}m{label}\x1b[0m " if use_color else f"{label} "

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self) -> None:
        env = {**os.environ, **self.spec.env, "PYTHONUNBUFFERED": "1"}
        self.proc = await asyncio.create_subprocess_exec(
            *self.spec.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        self._pump = asyncio.create_task(self._pump_logs(self.proc))

    async def _pump_logs(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            text = line.decode(errors="replace").rstrip()
            self.recent.append(text)
            self.out.write(self._prefix + text + "\n")
            self.out.flush()

    async def wait_ready(self) -> None:
        """Poll the probe until it passes; fail early, with the last log lines, if the process exits."""
        deadline = time.monotonic() + self.spec.ready_timeout_s
        while True:
            if not self.running:
                raise RuntimeError(
                    f"{self.spec.name} exited with code {self.returncode} before it was ready" + self._tail()
                )
            if await asyncio.to_thread(self.spec.ready):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.spec.name} not ready after {self.spec.ready_timeout_s:.0f}s" + self._tail()
                )
            await asyncio.sleep(0.2)

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode if self.proc else None

    async def wait(self) -> int:
        assert self.proc is not None
        return await self.proc.wait()

    async def stop(self) -> None:
        if self.proc is None:
            return
        pgid = self.proc.pid  # start_new_session: the child leads its own group
        if self.running:
            _killpg(pgid, signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), self.spec.stop_grace_s)
            except TimeoutError:
                self.out.write(f"{self._prefix}did not stop in {self.spec.stop_grace_s:.0f}s: killing\n")
        # Helpers of the child (Ray's raylet, workers, dashboard) may outlive the leader.
        _killpg(pgid, signal.SIGKILL)
        await self.proc.wait()
        if self._pump is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._pump, 2)

    def _tail(self) -> str:
        if not self.recent:
            return ""
        return "\nlast log lines:\n" + "\n".join(f"  {line}" for line in self.recent)


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group."""
    members = []
    for proc in psutil.process_iter(["pid", "status"]):
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if proc.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(proc.pid) == pgid:
                members.append(proc.pid)
    return members


def kill_group(pgid: int) -> None:
    _killpg(pgid, signal.SIGKILL)
