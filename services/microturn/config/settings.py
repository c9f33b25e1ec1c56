"""Settings models (see the package docstring for precedence and naming)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

ENV_PREFIX = "MICROTURN_"
CONFIG_ENV = "MICROTURN_CONFIG"

Port = int  # validated by _port below: 1..65535


def _port(v: int) -> int:
    if not 1 <= v <= 65535:
        raise ValueError(f"port must be between 1 and 65535, got {v}")
    return v


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NatsSettings(_Section):
    """The message bus. Without ``url`` the local run starts an embedded nats-server."""

    url: str | None = Field(None, description="external NATS URL, e.g. nats://nats:4222; unset: embedded server")
    host: str = "127.0.0.1"
    port: Port = 4222
    monitor_port: Port = 8222

    _check_ports = field_validator("port", "monitor_port")(_port)

    @property
    def client_url(self) -> str:
        return self.url or f"nats://{self.host}:{self.port}"


class RaySettings(_Section):
    """The Ray cluster that hosts the interaction deployment."""

    address: str | None = Field(None, description="existing cluster address; unset: start a local head")
    port: Port = 6380
    dashboard_port: Port = 8265
    num_cpus: int | None = Field(None, ge=1, description="CPUs the local head offers (default: all)")

    _check_ports = field_validator("port", "dashboard_port")(_port)


class LimitsSettings(_Section):
    """Input limits every service enforces on a micro-turn (what a chunk may carry)."""

    chunk_ms: int = Field(200, ge=20, le=1000)
    sample_rate_hz: Literal[16000] = 16000
    video_width: int = Field(80, ge=8, le=1024)
    video_height: int = Field(80, ge=8, le=1024)
    max_video_frames_per_chunk: int = Field(4, ge=0, le=30)
    max_text_bytes_per_chunk: int = Field(1024, ge=0, le=65536)

    @field_validator("chunk_ms")
    @classmethod
    def _divides_second(cls, v: int) -> int:
        if 1000 % v:
            raise ValueError(f"chunk_ms must divide 1000 so boundaries sit on whole seconds, got {v}")
        return v


class InteractionSettings(_Section):
    """The interaction service (Ray Serve deployment around the streaming engine)."""

    grpc_port: Port = 9000
    http_port: Port = 8000
    tick_grace_ms: int = Field(30, ge=0, le=150, description="wait after each boundary for late chunks")
    session_slots: int = Field(32, ge=1, le=4096)

    _check_ports = field_validator("grpc_port", "http_port")(_port)


class EdgeSettings(_Section):
    """The WebRTC edge (aiortc + FastAPI)."""

    host: str = "127.0.0.1"
    port: Port = 8080
    max_sessions: int = Field(40, ge=1, le=10_000, description="sessions per edge process")

    _check_ports = field_validator("port")(_port)


class TelemetrySettings(_Section):
    """Traces, metrics and logs (see microturn.telemetry)."""

    traces: Literal["off", "console", "otlp"] = "off"
    otlp_endpoint: str | None = Field(None, description="OTLP gRPC endpoint; setting it turns on OTLP export")
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(0, ge=0, le=65535, description="Prometheus /metrics port; 0: none")
    log_format: Literal["json", "text"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class Settings(BaseSettings):
    """Everything configurable, grouped by section."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", frozen=True
    )

    state_dir: Path = Field(Path(".state"), description="where the local run keeps data, pids and logs")
    nats: NatsSettings = NatsSettings()
    ray: RaySettings = RaySettings()
    limits: LimitsSettings = LimitsSettings()
    interaction: InteractionSettings = InteractionSettings()
    edge: EdgeSettings = EdgeSettings()
    telemetry: TelemetrySettings = TelemetrySettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The YAML file is merged in load_settings as init values below the environment.
        return init_settings, env_settings


class ConfigError(ValueError):
    """A setting is invalid; the message names it and says how to set it."""


def _env_name(loc: tuple[Any, ...]) -> str:
    return ENV_PREFIX + "__".join(str(p).upper() for p in loc if not isinstance(p, int))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist ({CONFIG_ENV} or --config)") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _env_overrides(environ: Any) -> set[tuple[str, ...]]:
    keys = set()
    for name in environ:
        if name.startswith(ENV_PREFIX) and name != CONFIG_ENV:
            keys.add(tuple(name[len(ENV_PREFIX) :].lower().split("__")))
    return keys


def load_settings(
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> Settings:
    """Build the settings or raise ConfigError naming every invalid setting."""
    path = config_file or os.environ.get(CONFIG_ENV)
    file_values = _read_yaml(Path(path)) if path else {}
    # Environment beats the file: drop file values the environment sets, so pydantic-settings'
    # env source (which only fills fields not passed to __init__) can supply them.
    for key in _env_overrides(os.environ):
        node = file_values
        for part in key[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(key[-1], None)
    init = _deep_merge(file_values, overrides or {})
    try:
        return Settings(**init)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            dotted = ".".join(str(p) for p in loc)
            lines.append(f"  {dotted} ({_env_name(loc)}): {err['msg']} (got {err.get('input')!r})")
        raise ConfigError("invalid settings:\n" + "\n".join(lines)) from None
