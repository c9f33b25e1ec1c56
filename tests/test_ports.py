"""Port helpers of the local run: a run of consecutive free ports (a base port and its neighbours)."""

from __future__ import annotations

import socket

from microturn.localrun.ports import free_port_run, port_is_free


def test_a_run_of_free_ports_is_free_all_along():
    base = free_port_run(3)
    assert all(port_is_free("127.0.0.1", base + i) for i in range(3))


def test_a_base_whose_neighbour_is_taken_is_skipped(monkeypatch):
    from microturn.localrun import ports

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        candidates = iter([taken - 1, ports.free_port()])  # the first base's +1 is held
        monkeypatch.setattr(ports, "free_port", lambda host="127.0.0.1": next(candidates))
        base = ports.free_port_run(2)
        assert base != taken - 1 and taken not in (base, base + 1)
