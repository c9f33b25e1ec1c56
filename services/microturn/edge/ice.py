"""ICE on the edge: which addresses and UDP ports host candidates use, and which address the
answer advertises for them. All of it is process-wide, because aioice offers none of it per
connection.

**The port range is an adaptation of aioice 0.13.0** (what aiortc 1.16 uses). aioice binds each host
candidate with ``loop.create_datagram_endpoint(..., local_addr=(address, 0))`` inside
``Connection.get_component_candidates``, so the OS picks any ephemeral port and there is no option
to restrict it (aioice issue #47; PRs #63 and #112 were never merged). A firewall, a hostPort list
or a security group needs a known range, so :func:`use_port_range` runs aioice's own
``get_component_candidates`` unchanged except for that one bind: the function is rebuilt from its
code object with ``asyncio.get_running_loop()`` answering a loop wrapper whose
``create_datagram_endpoint`` turns ``local_addr=(address, 0)`` into a free port of the range. STUN
and TURN sockets, mDNS and everything else keep the real loop. Before patching, the source of the
method is checked to still make exactly that one call on ``loop``; if aioice changed, applying the
range raises :class:`IcePatchError` instead of silently binding elsewhere.
"""

from __future__ import annotations

import asyncio
import errno
import inspect
import ipaddress
import logging
import random
import re
import types
from collections.abc import Callable
from typing import Any

import aioice
import aioice.ice

log = logging.getLogger(__name__)

WRITTEN_FOR_AIOICE = "0.13.0"
_ORIGINAL_GATHER = aioice.ice.Connection.get_component_candidates
# what get_component_candidates must contain for the rebuilt copy to change only the host bind
_LOOP_LOOKUP = "loop=asyncio.get_running_loop()"
_HOST_BIND = "loop.create_datagram_endpoint(lambda:StunProtocol(self),local_addr=(address,0))"


class IcePatchError(RuntimeError):
    """aioice's internals are not what the port-range adaptation was written for."""


def pin_host_candidates(addresses: list[str]) -> None:
    """Gather ICE host candidates only on these addresses (aioice otherwise uses every interface
    except loopback). For a single-machine run on 127.0.0.1, or to advertise one pod address."""
    pinned = list(addresses)
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: [  # type: ignore[assignment]
        a for a in pinned if (":" in a and use_ipv6) or (":" not in a and use_ipv4)
    ]


def use_port_range(port_min: int | None, port_max: int | None) -> None:
    """From now on, in this process, bind host-candidate sockets to a free UDP port in
    ``port_min..port_max`` (both None: aioice's own code again, the OS chooses)."""
    if port_min is None and port_max is None:
        aioice.ice.Connection.get_component_candidates = _ORIGINAL_GATHER  # type: ignore[method-assign]
        return
    if port_min is None or port_max is None or not 1 <= port_min <= port_max <= 65535:
        raise ValueError(f"an ICE port range needs 1 <= min <= max <= 65535, got {port_min}..{port_max}")
    aioice.ice.Connection.get_component_candidates = _gather_in_range(port_min, port_max)  # type: ignore[method-assign]


async def bind_in_range(
    loop: asyncio.AbstractEventLoop,
    protocol_factory: Callable[[], asyncio.DatagramProtocol],
    address: str,
    port_min: int,
    port_max: int,
) -> tuple[asyncio.DatagramTransport, asyncio.DatagramProtocol]:
    """A UDP endpoint on ``address`` at the first free port from a random start in the range,
    wrapping around. When every port is taken: an error logged, and OSError(EADDRINUSE), which
    aioice treats as any failed bind (that address gives no candidate)."""
    count = port_max - port_min + 1
    start = random.randrange(count)
    for i in range(count):
        port = port_min + (start + i) % count
        try:
            return await loop.create_datagram_endpoint(protocol_factory, local_addr=(address, port))  # type: ignore[return-value]
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:  # e.g. EADDRNOTAVAIL: not an address of this host
                raise
    log.error(
        "no free UDP port for an ICE host candidate on %s: all %d ports of edge.ice_port_min..ice_port_max "
        "(%d-%d) are in use, so this call gets no candidate there; widen the range (a call holds one "
        "port per host address once bundled) or lower edge.max_sessions",
        address, count, port_min, port_max,
    )  # fmt: skip
    raise OSError(errno.EADDRINUSE, f"no free UDP port in {port_min}-{port_max} on {address}")


class _RangeLoop:
    """The running loop, except that a host-candidate bind takes its port from the range."""

    def __init__(self, loop: asyncio.AbstractEventLoop, port_min: int, port_max: int) -> None:
        self._loop, self._min, self._max = loop, port_min, port_max

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)

    async def create_datagram_endpoint(
        self, protocol_factory: Any, local_addr: Any = None, **kwargs: Any
    ) -> Any:
        if kwargs or local_addr is None or local_addr[1] != 0:
            return await self._loop.create_datagram_endpoint(
                protocol_factory, local_addr=local_addr, **kwargs
            )
        return await bind_in_range(self._loop, protocol_factory, local_addr[0], self._min, self._max)


class _AsyncioInRange(types.ModuleType):
    """``asyncio`` as the rebuilt method sees it: the real module but for get_running_loop."""

    def __init__(self, port_min: int, port_max: int) -> None:
        super().__init__("asyncio")
        self._min, self._max = port_min, port_max

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    def get_running_loop(self) -> _RangeLoop:
        return _RangeLoop(asyncio.get_running_loop(), self._min, self._max)


def check_aioice() -> None:
    """Raise IcePatchError unless aioice's get_component_candidates uses its loop for exactly one
    thing, the host-candidate bind this module redirects."""
    where = f"aioice {aioice.__version__} (the ICE port range was written for {WRITTEN_FOR_AIOICE})"
    try:
        source = inspect.getsource(_ORIGINAL_GATHER)
    except (OSError, TypeError) as exc:
        raise IcePatchError(f"{where}: cannot read Connection.get_component_candidates: {exc}") from None
    flat = re.sub(r"\s+", "", source)
    uses = re.findall(r"\bloop\.\w+", source)
    if flat.count(_LOOP_LOOKUP) != 1 or flat.count(_HOST_BIND) != 1 or len(uses) != 1:
        raise IcePatchError(
            f"{where}: Connection.get_component_candidates no longer binds host candidates with "
            f"loop.create_datagram_endpoint(..., local_addr=(address, 0)) alone (its loop is used for "
            f"{uses}); edge.ice_port_min/ice_port_max cannot be honoured until microturn.edge.ice is updated"
        )
    if _ORIGINAL_GATHER.__closure__ is not None:
        raise IcePatchError(f"{where}: Connection.get_component_candidates became a closure")


def _gather_in_range(port_min: int, port_max: int) -> Callable[..., Any]:
    check_aioice()
    # aioice's globals as of now, but for `asyncio`; rebuilt at each use_port_range call
    module_globals = dict(vars(aioice.ice), asyncio=_AsyncioInRange(port_min, port_max))
    fn = types.FunctionType(
        _ORIGINAL_GATHER.__code__, module_globals, _ORIGINAL_GATHER.__name__, _ORIGINAL_GATHER.__defaults__
    )
    fn.__kwdefaults__ = _ORIGINAL_GATHER.__kwdefaults__
    fn.__qualname__ = _ORIGINAL_GATHER.__qualname__
    fn.__doc__ = f"aioice's get_component_candidates, host candidates bound in {port_min}-{port_max}."
    return fn


def advertise_host_candidates(sdp: str, address: str) -> str:
    """The SDP with every host candidate of ``address``'s IP family (and the ``c=`` lines naming
    their address) carrying ``address``; ports unchanged. For a pod reached through a hostPort or a
    1:1 NAT, where the browser must send to the node's address, not the bound one."""
    advertised = ipaddress.ip_address(address)
    bound = {a for a, _, kind in sdp_candidates(sdp) if kind == "host" and _family(a) == advertised.version}

    def rewrite(line: str) -> str:
        body = line.rstrip("\r\n")
        parts = body.split(" ")
        if body.startswith("a=candidate:") and len(parts) >= 8 and parts[7] == "host" and parts[4] in bound:
            parts[4] = str(advertised)
        elif body.startswith("c=IN ") and len(parts) == 3 and parts[2] in bound:
            parts = ["c=IN", f"IP{advertised.version}", str(advertised)]
        return " ".join(parts) + line[len(body) :]

    return "".join(rewrite(line) for line in sdp.splitlines(keepends=True))


def sdp_candidates(sdp: str) -> list[tuple[str, int, str]]:
    """(address, port, type) of every candidate line of an SDP."""
    out = []
    for line in sdp.splitlines():
        parts = line.split(" ")
        if line.startswith("a=candidate:") and len(parts) >= 8 and parts[5].isdigit() and parts[6] == "typ":
            out.append((parts[4], int(parts[5]), parts[7]))
    return out


def _family(host: str) -> int | None:
    try:
        return ipaddress.ip_address(host).version
    except ValueError:  # an mDNS name
        return None
