"""Settings models (see the package docstring for precedence and naming)."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
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

    url: str | None = Field(
        None, description="external NATS URL, e.g. nats://nats:4222; unset: embedded server"
    )
    host: str = "127.0.0.1"
    port: Port = 4222
    monitor_port: Port = 8222
    user: str | None = Field(
        None,
        description="NATS user of this service (one per service: interaction, background, tools, setup; "
        "see microturn.bus.permissions); unset: connect without credentials",
    )
    password: SecretStr | None = Field(None, description="password of nats.user (never logged)")
    tls_ca: Path | None = Field(
        None, description="PEM CA bundle that verifies the NATS server's certificate; set: TLS is required"
    )
    tls_cert: Path | None = Field(None, description="PEM client certificate for mutual TLS (with tls_key)")
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert")
    tls_handshake_first: bool = Field(
        False,
        description="start TLS before the server's first message (the server needs tls.handshake_first); "
        "without it a server that offers no TLS is only detected after the credentials were sent",
    )

    _check_ports = field_validator("port", "monitor_port")(_port)

    @field_validator("user")
    @classmethod
    def _user_token(cls, v: str | None) -> str | None:
        # The user name is part of the connection's inbox prefix (_INBOX.<user>): one subject token.
        if v is not None and not (
            0 < len(v) <= 64 and all(c.isascii() and (c.isalnum() or c in "_-") for c in v)
        ):
            raise ValueError(f"a NATS user is 1-64 letters, digits, '_' or '-', got {v!r}")
        return v

    @model_validator(mode="after")
    def _pairs(self) -> NatsSettings:
        if (self.user is None) != (self.password is None):
            raise ValueError("set both nats.user and nats.password, or neither")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("set both nats.tls_cert and nats.tls_key (mutual TLS), or neither")
        return self

    @property
    def tls(self) -> bool:
        """Whether the connection must use TLS (a CA, a client certificate, handshake first, or a
        ``tls://`` URL; without a CA the system's trusted CAs verify the server)."""
        return (
            self.tls_ca is not None
            or self.tls_cert is not None
            or self.tls_handshake_first
            or self.client_url.startswith("tls://")
        )

    @property
    def client_url(self) -> str:
        return self.url or f"nats://{self.host}:{self.port}"


class RaySettings(_Section):
    """The Ray cluster that hosts the interaction deployment."""

    address: str | None = Field(None, description="existing cluster address; unset: start a local head")
    port: Port = 6380
    dashboard_port: Port = 8265
    dashboard_agent_port: Port = 52365
    # Ray reserves 10002-19999 for workers by default; keep this outside that range.
    client_server_port: Port = 10001
    num_cpus: int | None = Field(None, ge=1, description="CPUs the local head offers (default: all)")

    _check_ports = field_validator("port", "dashboard_port", "dashboard_agent_port", "client_server_port")(
        _port
    )


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


class ServeAutoscalingSettings(_Section):
    """Serve autoscaling of the interaction deployment on the replicas' own load signal (see
    microturn.interaction.autoscaling): each replica's load is its sessions over ``target_sessions``
    or its tick time over ``target_tick_utilisation`` of the micro-turn, whichever is higher."""

    enabled: bool = Field(
        False,
        description="autoscale between min_replicas and max_replicas; false: interaction.replicas fixed",
    )
    min_replicas: int = Field(
        1, ge=0, le=1024, description="fewest replicas (0: scale to zero; the first call then waits for one)"
    )
    max_replicas: int = Field(4, ge=1, le=1024, description="most replicas (the cluster must fit them)")
    target_sessions: int = Field(
        24,
        ge=1,
        le=4096,
        description="sessions per replica the deployment is sized for (below interaction.session_slots: the "
        "slots above it take the calls that arrive while a scale-up happens)",
    )
    target_tick_utilisation: float = Field(
        0.6,
        gt=0,
        le=1,
        description="share of the micro-turn a replica's tick may take at its target (the time signal, for "
        "hardware that is full before its slots are)",
    )
    headroom_sessions: int = Field(
        0, ge=0, le=100_000, description="sessions of spare capacity kept on top of the live ones"
    )
    upscale_delay_s: float = Field(
        5.0, ge=0, le=3600, description="load above target this long adds replicas"
    )
    downscale_delay_s: float = Field(
        120.0,
        ge=0,
        le=86_400,
        description="load below target this long removes replicas (their sessions drain: interaction.drain_policy)",
    )
    look_back_period_s: float = Field(
        10.0, gt=0, le=3600, description="the load signal is the mean over this window"
    )
    metrics_interval_s: float = Field(
        2.0, gt=0, le=600, description="replicas report their load to the Serve controller this often"
    )

    @model_validator(mode="after")
    def _bounds(self) -> ServeAutoscalingSettings:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) is above max_replicas ({self.max_replicas})"
            )
        if self.look_back_period_s <= self.metrics_interval_s:
            raise ValueError(
                f"look_back_period_s ({self.look_back_period_s}) must be longer than metrics_interval_s "
                f"({self.metrics_interval_s}): the mean needs more than one report"
            )
        return self


class InteractionSettings(_Section):
    """The interaction service (Ray Serve deployment around the streaming engine)."""

    grpc_port: Port = 9000
    http_port: Port = 8000
    host: str = "127.0.0.1"
    app_name: str = "interaction"
    replicas: int = Field(1, ge=1, le=1024)
    num_cpus: float = Field(1.0, gt=0, description="ray_actor_options.num_cpus of each replica")
    num_gpus: float = Field(0.0, ge=0, description="ray_actor_options.num_gpus of each replica")
    device: str = Field("auto", description="torch device for the engine: auto, cpu, cuda, cuda:N")
    torch_threads: int = Field(1, ge=1, le=256, description="intra-op threads of the engine step")
    precision: Literal["fp32", "bf16"] = Field(
        "fp32",
        description="engine arithmetic: fp32, or bf16 weight copies and activations in the transformer's "
        "projections and feed-forward and in the flow head (norms, residual stream, KV ring, attention, "
        "sampling, featuriser and vocoder stay fp32); the same at every batch size. bf16 pays on CPUs "
        "with AVX512-BF16/AMX and on GPUs; gate it with `make eval` (fp32 vs bf16 scores)",
    )
    checkpoint: str | None = Field(None, description="model checkpoint dir; unset: the shipped default")
    model_preset: str = Field(
        "tiny", description="preset for a randomly initialised model when no checkpoint"
    )
    tick_grace_ms: int = Field(30, ge=0, le=150, description="wait after each boundary for late chunks")
    session_slots: int = Field(32, ge=1, le=4096)
    max_pending_chunks: int = Field(
        10,
        ge=1,
        le=1000,
        description="chunks whose media has not ended a session may queue (a sender ahead of real time)",
    )
    max_backlog_chunks: int = Field(
        300,
        ge=1,
        le=100_000,
        description="chunks whose media already ended (resent after a recovery) a session may queue for catch-up; "
        "above it the oldest are dropped, each with a DROPPED error",
    )
    spare_work_guard_ms: int = Field(
        30,
        ge=0,
        le=500,
        description="rebuild/catch-up work between ticks stops this long before the next tick",
    )
    detach_timeout_s: float = Field(
        30.0, ge=0, le=3600, description="keep a session whose stream dropped this long for a reconnect"
    )
    drain_policy: Literal["migrate", "wait"] = Field(
        "migrate",
        description="a replica being removed (scale-down, redeploy): migrate its sessions to other replicas "
        "at once (make before break, no output gap), or wait up to drain_wait_s for them to end and then "
        "migrate the rest. Either way it takes no new session",
    )
    drain_wait_s: float = Field(
        600.0, ge=0, le=86_400, description="drain_policy wait: how long sessions may end by themselves"
    )
    drain_timeout_s: float = Field(
        8.0,
        ge=0,
        le=3600,
        description="a draining replica serves its sessions this long while their clients move them; those "
        "still here then are ended with UNKNOWN_SESSION (their clients recover them elsewhere with a replay). "
        "Serve's graceful_shutdown_timeout_s is derived from the drain settings",
    )
    stop_poll_s: float = Field(
        1.0,
        gt=0,
        le=60,
        description="a replica asks the Serve controller this often whether it is being stopped, to start "
        "its drain while its streams are still open",
    )
    stats_interval_s: float = Field(
        2.0, gt=0, le=600, description="publish this replica's service report (for rollouts) this often"
    )
    fault_tick_delay_ms: int = Field(
        0,
        ge=0,
        le=5000,
        description="fault injection: every engine step takes this much longer (rehearse a slow model: "
        "deadline misses, an automatic rollback, autoscaling on tick time); 0 in production",
    )
    autoscaling: ServeAutoscalingSettings = ServeAutoscalingSettings()
    retry_after_ms: int = Field(1000, ge=0, le=60_000, description="suggested wait in over-capacity errors")
    context_utterances: int = Field(32, ge=1, le=1024, description="utterances kept for delegation context")
    delegation_deadline_s: float = Field(30.0, gt=0, le=3600)
    bus: bool = Field(True, description="connect to NATS for delegations and background updates")

    _check_ports = field_validator("grpc_port", "http_port")(_port)

    @model_validator(mode="after")
    def _target_below_slots(self) -> InteractionSettings:
        if self.autoscaling.enabled and self.autoscaling.target_sessions >= self.session_slots:
            raise ValueError(
                f"autoscaling.target_sessions ({self.autoscaling.target_sessions}) must be below session_slots "
                f"({self.session_slots}): the free slots take the calls that arrive during a scale-up"
            )
        return self

    @property
    def graceful_shutdown_timeout_s(self) -> float:
        """How long Serve lets a replica it removes live: noticing the stop, the drain, and a margin
        for the last streams to close before it is killed."""
        waited = self.drain_wait_s if self.drain_policy == "wait" else 0.0
        return self.stop_poll_s + waited + self.drain_timeout_s + 5.0

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v not in ("auto", "cpu", "cuda") and not (v.startswith("cuda:") and v[5:].isdigit()):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {v!r}")
        return v


class IceServer(_Section):
    urls: list[str]
    username: str | None = None
    credential: str | None = None


class EdgeSettings(_Section):
    """The WebRTC edge (aiortc + FastAPI)."""

    host: str = "127.0.0.1"
    port: Port = 8080
    interaction_target: str | None = Field(
        None,
        description="host:port of the Interaction gRPC endpoint; unset: this machine's interaction.grpc_port",
    )
    max_sessions: int = Field(40, ge=1, le=10_000, description="sessions per edge process (~20-25 per core)")
    ice_servers: list[IceServer] = Field(
        default_factory=list, description="STUN/TURN servers; none by default"
    )
    ice_host_addresses: list[str] = Field(
        default_factory=list, description="gather host candidates only on these addresses (e.g. 127.0.0.1)"
    )
    ice_port_min: int | None = Field(
        None,
        description="lowest UDP port of ICE host candidates (with ice_port_max; both unset: any ephemeral "
        "port). One port per call and host address: open this range in the firewall",
    )
    ice_port_max: int | None = Field(
        None, description="highest UDP port of ICE host candidates (see ice_port_min)"
    )
    ice_advertised_address: str | None = Field(
        None,
        description="IP address the answer gives for host candidates instead of the bound one, ports unchanged "
        "(a hostPort or 1:1 NAT: the node's or public IP); unset: the bound address",
    )
    turn_shared_secret: SecretStr | None = Field(
        None,
        description="the TURN server's shared secret (coturn use-auth-secret / static-auth-secret): turn: "
        "servers in ice_servers without a username get per-session credentials from it (TURN REST API), "
        "so no long-lived TURN password reaches a browser",
    )
    turn_credential_ttl_s: float = Field(
        3600.0, gt=0, le=7 * 86_400, description="per-session TURN credentials are valid this long"
    )
    ice_transport_policy: Literal["all", "relay"] = Field(
        "all",
        description="relay: the edge offers only TURN relay candidates (needs a turn: server in ice_servers)",
    )
    token_secret: str | None = Field(
        None, description="HMAC key of session tokens; unset: random per process"
    )
    token_ttl_s: float = Field(300.0, gt=0, le=86_400, description="a session token is valid this long")
    debug_token: str | None = Field(
        None,
        min_length=16,
        description="bearer token that reads any call's latency waterfall (/api/sessions/{id}/timing, "
        "`microturn trace`); unset: only each call's own token reads its own",
    )
    open_retry_s: float = Field(
        60.0,
        ge=0,
        le=3600,
        description="while every interaction replica is over capacity (or unreachable), keep retrying a call's "
        "session open this long, at the pace the replica asks (retry_after_ms): the caller hears 'waiting' "
        "while a scale-up brings a replica, then the call goes live without the browser doing anything",
    )
    routing_file: Path | None = Field(
        None,
        description="the routing table of model versions (JSON {epoch, weights, apps}, written by a rollout): "
        "each new call picks its version from it once; unset: every call goes to interaction.app_name",
    )
    routing_poll_s: float = Field(
        1.0, gt=0, le=300, description="re-read routing_file this often when it changed"
    )
    pod_name: str | None = Field(
        None,
        description="this edge's Kubernetes pod (downward API metadata.name). Set: the edge keeps the pod's "
        "controller.kubernetes.io/pod-deletion-cost annotation equal to its live sessions, so a scale-down "
        "removes the emptiest edge first (the pod's ServiceAccount needs get and patch on pods)",
    )
    pod_namespace: str | None = Field(
        None, description="namespace of pod_name; unset: the ServiceAccount's namespace file in the pod"
    )
    deletion_cost_interval_s: float = Field(
        5.0,
        gt=0,
        le=3600,
        description="with pod_name: update the pod-deletion-cost annotation at most this often",
    )
    offer_timeout_s: float = Field(30.0, gt=0, le=3600, description="reap a session with no offer after this")
    idle_timeout_s: float = Field(30.0, gt=0, le=3600, description="reap a session with no media this long")
    max_sdp_bytes: int = Field(32_768, ge=1024, le=1 << 20)
    max_datachannel_bytes: int = Field(4096, ge=64, le=1 << 20)
    max_json_depth: int = Field(
        8,
        ge=2,
        le=64,
        description="nesting depth of JSON accepted in offer bodies and data-channel messages "
        "(both are flat objects; the parser recurses per level, so deep input is refused first)",
    )
    client_error_log_interval_s: float = Field(
        10.0,
        ge=0,
        le=3600,
        description="log at most one line per client error code this often (all are counted)",
    )
    video_every_n: int = Field(
        6, ge=1, le=300, description="keep every Nth camera frame (30 fps / 6 = 5 fps)"
    )
    cut_delay_ms: int = Field(10, ge=0, le=100, description="cut a chunk this long after its boundary")
    audio_jitter_prefetch_frames: int = Field(
        0,
        ge=0,
        le=8,
        description="inbound audio frames held before one is decoded: 0 decodes each on arrival (a packet "
        "arriving after a later one is dropped); n > 0 is aiortc's reordering buffer holding n (aiortc's own "
        "default is 4: 80 ms added to every turn)",
    )
    playout_max_ms: int = Field(
        600, ge=100, le=10_000, description="output jitter buffer bound; older audio dropped"
    )

    _check_ports = field_validator("port")(_port)

    @field_validator("ice_port_min", "ice_port_max")
    @classmethod
    def _ice_port(cls, v: int | None) -> int | None:
        if v is not None and not 1024 <= v <= 65535:
            raise ValueError(f"an ICE UDP port must be between 1024 and 65535, got {v}")
        return v

    @field_validator("ice_advertised_address")
    @classmethod
    def _ip_address(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            return str(ipaddress.ip_address(v))
        except ValueError:
            raise ValueError(
                f"ice_advertised_address must be an IP address (no host name), got {v!r}"
            ) from None

    @model_validator(mode="after")
    def _ice_consistent(self) -> EdgeSettings:
        lo, hi = self.ice_port_min, self.ice_port_max
        if (lo is None) != (hi is None):
            raise ValueError("set both edge.ice_port_min and edge.ice_port_max, or neither")
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"edge.ice_port_min ({lo}) is above edge.ice_port_max ({hi})")
        if self.ice_transport_policy == "relay" and not any(
            u.split(":", 1)[0] in ("turn", "turns") for s in self.ice_servers for u in s.urls
        ):
            raise ValueError(
                'edge.ice_transport_policy "relay" needs a turn: or turns: server in edge.ice_servers'
            )
        return self


class TelemetrySettings(_Section):
    """Traces, metrics and logs (see microturn.telemetry)."""

    traces: Literal["off", "console", "otlp"] = "off"
    otlp_endpoint: str | None = Field(None, description="OTLP gRPC endpoint; setting it turns on OTLP export")
    trace_sample_ratio: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="share of new calls traced (a call is traced whole or not at all; error spans always are)",
    )
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(0, ge=0, le=65535, description="Prometheus /metrics port; 0: none")
    local_metrics_base_port: Port = Field(
        9400, description="`microturn up` gives its services /metrics + /healthz ports from here on"
    )
    log_format: Literal["json", "text"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class BusSettings(_Section):
    """JetStream streams and consumers shared by the interaction, background and tool services."""

    storage: Literal["file", "memory"] = "file"
    duplicate_window_s: float = Field(120.0, gt=0, le=86_400, description="message-id de-duplication window")
    ack_wait_s: float = Field(
        30.0, gt=0, le=3600, description="redeliver work not acked (or kept alive) this long"
    )
    max_attempts: int = Field(5, ge=1, le=100, description="deliveries before a message is dead-lettered")
    max_ack_pending: int = Field(
        1000,
        ge=1,
        le=1_000_000,
        description="unacked messages a service's consumer may have out, all instances together",
    )
    manage_topology: bool = Field(
        True,
        description="services create/update the streams and their consumers at start; off when a setup job "
        "(`microturn bus setup`, the chart's hook) does it and their NATS users may not",
    )
    retry_delay_s: float = Field(
        1.0, ge=0, le=600, description="nak delay after a failed attempt (times attempt)"
    )
    publish_timeout_s: float = Field(10.0, gt=0, le=600, description="keep retrying a publish this long")
    max_payload_bytes: int = Field(1 << 20, ge=1024, le=64 << 20)
    updates_max_age_s: float = Field(3600.0, gt=0, description="how long per-session updates are kept")
    tool_results_max_age_s: float = Field(600.0, gt=0)
    cancels_max_age_s: float = Field(3600.0, gt=0)
    dead_letter_max_age_s: float = Field(7 * 86_400.0, gt=0)
    session_consumer_inactive_s: float = Field(
        300.0, gt=0, description="drop a session's update consumer idle this long"
    )
    shutdown_grace_s: float = Field(
        10.0, ge=0, le=600, description="let in-flight work finish this long on SIGTERM"
    )
    max_update_text_bytes: int = Field(
        2048,
        ge=64,
        le=1 << 20,
        description="a background update's text is cut to this many UTF-8 bytes before it reaches the "
        "model (keep it well under the engine's text-in queue of 4096 tokens)",
    )
    max_defer_s: float = Field(
        3600.0, gt=0, le=86_400, description="longest redelivery delay a deferred message is given at once"
    )
    reject_log_burst: int = Field(
        5, ge=1, le=10_000, description="log lines per refusal code and period; the rest are only counted"
    )
    reject_log_period_s: float = Field(10.0, gt=0, le=3600, description="period of reject_log_burst")


class BackgroundSettings(_Section):
    """The background model service (python -m microturn.background)."""

    backend: Literal["planner", "openai"] = "planner"
    concurrency: int = Field(8, ge=1, le=1024, description="delegations in flight per instance")
    default_deadline_s: float = Field(30.0, gt=0, le=3600, description="when a request carries no deadline")
    max_deadline_s: float = Field(300.0, gt=0, le=86_400)
    tool_timeout_s: float = Field(15.0, gt=0, le=600, description="wait this long for one tool result")
    max_tool_steps: int = Field(6, ge=1, le=64, description="tool rounds per delegation")
    max_context_utterances: int = Field(32, ge=0, le=1024)
    max_context_chars: int = Field(16_000, ge=256, le=1_000_000)
    max_answer_chars: int = Field(4000, ge=16, le=1_000_000)
    max_request_chars: int = Field(
        4000, ge=16, le=1_000_000, description="a longer delegated request is refused (UNSUPPORTED)"
    )
    search_min_score: float = Field(0.3, ge=-1, le=1, description="planner: weaker search hits are no answer")
    openai_base_url: str = Field("http://127.0.0.1:8000/v1", description="OpenAI-compatible API root (…/v1)")
    openai_model: str = "default"
    openai_api_key: SecretStr | None = None
    openai_timeout_s: float = Field(60.0, gt=0, le=3600)
    openai_temperature: float = Field(0.2, ge=0, le=2)
    openai_max_tokens: int = Field(512, ge=1, le=131_072)


class RolloutSettings(_Section):
    """The rollout operator on Kubernetes (``microturn rollout operator``; see docs/ROLLOUT.md)."""

    namespace: str | None = Field(
        None, description="namespace of its InteractionRollouts and RayServices; unset: the pod's own"
    )
    rayservice: str = Field(
        "microturn-interaction",
        description="the chart's RayService: the first stable version, copied for candidates",
    )
    routing_configmap: str = Field(
        "microturn-routing",
        description="the ConfigMap (key routing.json) the edges read the routing table from",
    )
    grpc_port: Port = Field(9000, description="gRPC port of each version's Serve proxy")
    interval_s: float = Field(2.0, gt=0, le=60, description="reconcile every InteractionRollout this often")
    peering: str = Field(
        "microturn-rollout",
        description="kopf peering name: of several operator replicas only the one with the highest priority acts",
    )
    priority: int | None = Field(
        None,
        ge=0,
        le=2**31 - 1,
        description="this replica's kopf peering priority (the highest acts); unset: a random one per pod, "
        "so that no two replicas tie (tied peers pause each other)",
    )

    _check_ports = field_validator("grpc_port")(_port)


class ToolsSettings(_Section):
    """The tool-execution service (python -m microturn.tools): NATS work queue plus the gRPC Tools API."""

    grpc_enabled: bool = True
    grpc_host: str = "127.0.0.1"
    grpc_port: Port = 9100
    grpc_tls_cert: Path | None = Field(
        None, description="PEM certificate (chain) of the gRPC Tools API; set with grpc_tls_key: TLS only"
    )
    grpc_tls_key: Path | None = Field(None, description="PEM private key of grpc_tls_cert")
    grpc_tls_client_ca: Path | None = Field(
        None, description="PEM CA bundle: gRPC clients must present a certificate it signed (mutual TLS)"
    )
    concurrency: int = Field(16, ge=1, le=1024, description="tool calls in flight per instance")
    project_docs_dir: Path | None = Field(Path("docs"), description="the project's docs, searched by default")
    knowledge_dir: Path | None = Field(None, description="an extra folder of .md/.txt files to search")
    knowledge_max_files: int = Field(2000, ge=1, le=100_000)
    knowledge_max_file_bytes: int = Field(1 << 20, ge=1024, le=64 << 20)
    knowledge_chunk_chars: int = Field(600, ge=100, le=10_000)
    knowledge_preload: bool = Field(True, description="load the embedding model before reporting ready")
    max_timer_s: int = Field(86_400, ge=1, le=30 * 86_400)
    calculator_max_chars: int = Field(256, ge=1, le=10_000)
    calculator_max_int_bits: int = Field(4096, ge=64, le=1_000_000)
    calculator_max_exponent: int = Field(10_000, ge=1, le=1_000_000)
    timeout_ms: dict[str, int] = Field(
        default_factory=dict, description="per-tool timeout overrides, e.g. {knowledge_search: 30000}"
    )

    _check_ports = field_validator("grpc_port")(_port)

    @model_validator(mode="after")
    def _grpc_tls(self) -> ToolsSettings:
        if (self.grpc_tls_cert is None) != (self.grpc_tls_key is None):
            raise ValueError("set both tools.grpc_tls_cert and tools.grpc_tls_key, or neither")
        if self.grpc_tls_client_ca is not None and self.grpc_tls_cert is None:
            raise ValueError("tools.grpc_tls_client_ca needs tools.grpc_tls_cert and tools.grpc_tls_key")
        return self


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
    bus: BusSettings = BusSettings()
    background: BackgroundSettings = BackgroundSettings()
    tools: ToolsSettings = ToolsSettings()
    rollout: RolloutSettings = RolloutSettings()

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


def setting_paths() -> dict[str, tuple[str, ...]]:
    """Every settable environment variable name -> its path in :class:`Settings`."""
    out: dict[str, tuple[str, ...]] = {}

    def walk(model: type[BaseModel], path: tuple[str, ...]) -> None:
        for name, field in model.model_fields.items():
            sub = (*path, name)
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, sub)
            else:
                out[ENV_PREFIX + "__".join(p.upper() for p in sub)] = sub

    walk(Settings, ())
    return out


def unknown_env_vars(environ: Any = None) -> list[str]:
    """``MICROTURN_*`` variables that name no setting (a typo would otherwise be ignored silently)."""
    environ = os.environ if environ is None else environ
    known = setting_paths()
    return sorted(n for n in environ if n.startswith(ENV_PREFIX) and n != CONFIG_ENV and n not in known)


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
