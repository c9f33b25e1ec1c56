"""One typed settings layer for every service.

Precedence, highest first: explicit overrides (CLI flags), environment variables
(``MICROTURN_<SECTION>__<FIELD>``, e.g. ``MICROTURN_NATS__PORT=4333``), a YAML config file
(``MICROTURN_CONFIG=path.yaml`` or ``--config``), then the embedded defaults, which run the whole
system on one machine. Invalid settings raise :class:`ConfigError` at start, naming the setting
and the environment variable that sets it.
"""

from microturn.config.settings import (
    BackgroundSettings,
    BusSettings,
    ConfigError,
    EdgeSettings,
    InteractionSettings,
    LimitsSettings,
    NatsSettings,
    RaySettings,
    RolloutSettings,
    Settings,
    TelemetrySettings,
    ToolsSettings,
    load_settings,
    setting_paths,
    unknown_env_vars,
)

__all__ = [
    "BackgroundSettings",
    "BusSettings",
    "ConfigError",
    "EdgeSettings",
    "InteractionSettings",
    "LimitsSettings",
    "NatsSettings",
    "RaySettings",
    "RolloutSettings",
    "Settings",
    "TelemetrySettings",
    "ToolsSettings",
    "load_settings",
    "setting_paths",
    "unknown_env_vars",
]
