"""A real TURN server for tests: Debian's coturn (``turnserver``) on loopback, long-term credentials
for one static user, UDP only, loopback peers allowed (coturn refuses them by default)."""

from __future__ import annotations

import contextlib
import secrets
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..need import need

USER, PASSWORD, REALM = "edge", "turn-test-secret", "microturn.test"


@dataclass(frozen=True)
class TurnServer:
    host: str
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"turn:{self.host}:{self.port}?transport=udp"

    def ice_server(self) -> dict[str, object]:
        """As in edge.ice_servers (and the browser's RTCIceServer)."""
        return {"urls": [self.url], "username": USER, "credential": PASSWORD}


def turnserver_binary() -> str:
    """The coturn binary; missing: a failure under CI=true (the pipeline must run this), a skip elsewhere."""
    path = shutil.which("turnserver")
    need([] if path else ["coturn's turnserver"], "make system-deps installs it")
    assert path is not None
    return path


def _stun_answers(host: str, port: int, timeout_s: float) -> bool:
    """Whether a STUN Binding request to host:port gets its response (the server is up)."""
    txid = secrets.token_bytes(12)
    request = struct.pack("!HHI", 0x0001, 0, 0x2112A442) + txid
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout_s)
        try:
            s.sendto(request, (host, port))
            data, _ = s.recvfrom(2048)
        except OSError:  # timeout, or ICMP port unreachable while it starts
            return False
    return len(data) >= 20 and data[8:20] == txid and data[:2] == b"\x01\x01"


@contextlib.contextmanager
def run_turnserver(
    workdir: Path, port: int, host: str = "127.0.0.1", shared_secret: str | None = None
) -> Iterator[TurnServer]:
    """coturn with one static user, or (``shared_secret``) the TURN REST API's time-limited
    credentials (``use-auth-secret``), which the edge derives per session."""
    binary = turnserver_binary()
    workdir.mkdir(parents=True, exist_ok=True)
    conf, log = workdir / "turnserver.conf", workdir / "turnserver.log"
    conf.write_text(
        "\n".join(
            [
                f"listening-ip={host}",
                f"relay-ip={host}",
                f"listening-port={port}",
                *(
                    ["use-auth-secret", f"static-auth-secret={shared_secret}"]
                    if shared_secret
                    else ["lt-cred-mech", f"user={USER}:{PASSWORD}"]
                ),
                f"realm={REALM}",
                "fingerprint",
                "no-tls",
                "no-dtls",
                "no-tcp-relay",
                "no-cli",
                "allow-loopback-peers",  # the edge and the client are on 127.0.0.1
                f"userdb={workdir / 'turndb'}",
                f"pidfile={workdir / 'turnserver.pid'}",
                "log-file=stdout",
                "verbose",
                "",
            ]
        )
    )
    with log.open("wb") as out:
        proc = subprocess.Popen([binary, "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while not _stun_answers(host, port, 0.2):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-3000:]
                raise RuntimeError(
                    f"turnserver did not come up on {host}:{port} (exit {proc.poll()}):\n{tail}"
                )
        yield TurnServer(host, port, log)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
