"""The settings layer: defaults, file, environment, overrides, and errors that name the setting."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from microturn.config import ConfigError, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    import os

    for name in list(os.environ):
        if name.startswith("MICROTURN_"):
            monkeypatch.delenv(name)


def test_defaults_run_one_machine():
    s = load_settings()
    assert s.nats.url is None and s.nats.client_url == "nats://127.0.0.1:4222"
    assert s.ray.address is None
    assert s.limits.chunk_ms == 200 and s.limits.sample_rate_hz == 16000
    assert s.state_dir == Path(".state")


def test_precedence_file_env_override(tmp_path, monkeypatch):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("nats:\n  port: 4301\n  monitor_port: 8301\nedge:\n  port: 8181\n")
    s = load_settings(cfg)
    assert (s.nats.port, s.nats.monitor_port, s.edge.port) == (4301, 8301, 8181)
    monkeypatch.setenv("MICROTURN_NATS__PORT", "4302")
    s = load_settings(cfg)
    assert (s.nats.port, s.nats.monitor_port) == (4302, 8301)  # env beats file, file keeps the rest
    s = load_settings(cfg, overrides={"nats": {"port": 4303}})
    assert s.nats.port == 4303  # explicit override beats env
    monkeypatch.setenv("MICROTURN_CONFIG", str(cfg))
    assert load_settings().edge.port == 8181


def test_errors_name_setting_and_env_var(monkeypatch):
    monkeypatch.setenv("MICROTURN_NATS__PORT", "99999")
    monkeypatch.setenv("MICROTURN_LIMITS__CHUNK_MS", "300")
    with pytest.raises(ConfigError) as err:
        load_settings()
    text = str(err.value)
    assert "nats.port (MICROTURN_NATS__PORT)" in text and "65535" in text
    assert "limits.chunk_ms (MICROTURN_LIMITS__CHUNK_MS)" in text and "divide 1000" in text


def test_unknown_setting_is_an_error(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("nats:\n  prot: 1\n")
    with pytest.raises(ConfigError, match=r"nats\.prot"):
        load_settings(cfg)


def test_bad_type_and_literal(monkeypatch):
    monkeypatch.setenv("MICROTURN_TELEMETRY__TRACES", "loud")
    with pytest.raises(ConfigError, match=r"telemetry\.traces .*'off', 'console' or 'otlp'"):
        load_settings()


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("nats: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_settings(bad)


def test_settings_are_frozen():
    s = load_settings()
    with pytest.raises(ValidationError, match="frozen"):
        s.nats.port = 1  # type: ignore[misc]


def test_ice_port_range_and_advertised_address(monkeypatch):
    monkeypatch.setenv("MICROTURN_EDGE__ICE_PORT_MIN", "50000")
    monkeypatch.setenv("MICROTURN_EDGE__ICE_PORT_MAX", "50099")
    monkeypatch.setenv("MICROTURN_EDGE__ICE_ADVERTISED_ADDRESS", "2001:DB8::1")
    edge = load_settings().edge
    assert (edge.ice_port_min, edge.ice_port_max) == (50000, 50099)
    assert edge.ice_advertised_address == "2001:db8::1" and edge.ice_transport_policy == "all"
    default = load_settings(overrides={"edge": {"ice_port_min": None, "ice_port_max": None}}).edge
    assert default.ice_port_min is None and default.ice_port_max is None


@pytest.mark.parametrize(
    ("edge", "message"),
    [
        ({"ice_port_min": 50000}, r"set both edge\.ice_port_min and edge\.ice_port_max, or neither"),
        ({"ice_port_max": 50000}, r"set both edge\.ice_port_min and edge\.ice_port_max, or neither"),
        (
            {"ice_port_min": 50010, "ice_port_max": 50000},
            r"ice_port_min \(50010\) is above edge\.ice_port_max \(50000\)",
        ),
        ({"ice_port_min": 80, "ice_port_max": 90}, r"edge\.ice_port_min .*between 1024 and 65535, got 80"),
        (
            {"ice_port_min": 50000, "ice_port_max": 70000},
            r"edge\.ice_port_max .*between 1024 and 65535, got 70000",
        ),
        (
            {"ice_advertised_address": "node-1.example"},
            r"edge\.ice_advertised_address .*must be an IP address",
        ),
        ({"ice_transport_policy": "relay"}, r"relay.* needs a turn: or turns: server in edge\.ice_servers"),
        (
            {"ice_transport_policy": "relay", "ice_servers": [{"urls": ["stun:stun.example:3478"]}]},
            r"needs a turn:",
        ),
    ],
)
def test_bad_ice_settings_say_what_is_wrong(edge, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(overrides={"edge": edge})
