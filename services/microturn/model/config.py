"""Model configuration and named presets.

One frozen dataclass holds every shape the weights, the token layout and the engine depend on, so a
checkpoint's JSON config is enough to rebuild the model and its serving buffers exactly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


class ConfigError(ValueError):
    """A configuration value is out of range or inconsistent."""


@dataclass(frozen=True)
class ModelConfig:
    # audio (dMel): 16 kHz, 12.5 ms hop, 50 ms window, 80 channels, log10 in [-7, 2] with 16 levels
    sample_rate: int = 16_000
    chunk_ms: int = 200
    hop: int = 200
    win: int = 800
    n_mels: int = 80
    n_levels: int = 16
    log_min: float = -7.0
    log_max: float = 2.0
    frames_per_audio_token: int = 4
    # video: one frame per turn cut into patch x patch RGB patches, embedded by a 3-stage hMLP
    frame_size: int = 80
    patch: int = 40
    hmlp_cell: int = 10
    hmlp_dims: tuple[int, int] = (64, 128)
    # token layout (see layout.py)
    n_text_in: int = 3
    n_text_out: int = 3
    n_sinks: int = 4
    window_turns: int = 25
    # transformer
    d_model: int = 192
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 2
    d_ff: int = 512
    rope_theta: float = 10_000.0
    norm_eps: float = 1e-5
    # mixture of experts (n_experts == 0: dense SwiGLU)
    n_experts: int = 0
    top_k: int = 2
    d_ff_expert: int = 256
    # flow head and vocoder
    flow_hidden: int = 256
    flow_steps: int = 4
    vocoder_iters: int = 2
    vocoder_win: int = 400  # synthesis window (2x overlap at the 200-sample hop): 4x cheaper than 800
    temperature: float = 1.0  # text-out sampling (0: greedy)
    # scale of the flow head's start noise. The model voice is one fixed voice, so the target mel given the
    # context is nearly deterministic; a small flow head maps full-scale noise to it only roughly (measured on
    # tiny: 38 % of "silent" mel bins above -6 log10 at 1.0, none at 0.0), so the default integrates the
    # ODE from the prior's mean
    flow_temperature: float = 0.0

    def __post_init__(self) -> None:
        checks = [
            (self.sample_rate == 16_000, f"sample_rate must be 16000, got {self.sample_rate}"),
            (self.samples_per_chunk % self.hop == 0, "chunk length must be a whole number of hops"),
            (self.win % self.hop == 0 and self.win >= self.hop, "win must be a multiple of hop"),
            (
                self.frames_per_chunk % self.frames_per_audio_token == 0,
                "frames per chunk must split into whole audio tokens",
            ),
            (self.frame_size % self.patch == 0, f"frame_size {self.frame_size} must split into patches"),
            (self.patch == self.hmlp_cell * 4, "patch must be 4 x hmlp_cell (two 2x2 merges)"),
            (self.d_model % self.n_heads == 0, "d_model must be divisible by n_heads"),
            (self.head_dim % 2 == 0, "head_dim must be even for RoPE"),
            (self.n_heads % self.n_kv_heads == 0, "n_heads must be a multiple of n_kv_heads"),
            (self.n_experts == 0 or 1 <= self.top_k <= self.n_experts, "top_k must be in [1, n_experts]"),
            (self.window_turns >= 1, "window_turns must be >= 1"),
            (self.n_sinks >= 1, "n_sinks must be >= 1"),
            (self.n_text_in >= 1 and self.n_text_out >= 1, "n_text_in and n_text_out must be >= 1"),
            (self.flow_steps >= 1, "flow_steps must be >= 1"),
            (self.temperature >= 0 and self.flow_temperature >= 0, "temperatures must be >= 0"),
            (
                self.vocoder_win % self.hop == 0 and self.vocoder_win >= 2 * self.hop,
                "vocoder_win must be a multiple of hop, at least 2 hops",
            ),
            (self.n_levels >= 2 and self.log_max > self.log_min, "bad dMel level range"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)

    # derived sizes -------------------------------------------------------------------------------
    @property
    def samples_per_chunk(self) -> int:
        return self.sample_rate * self.chunk_ms // 1000

    @property
    def frames_per_chunk(self) -> int:
        return self.samples_per_chunk // self.hop

    @property
    def n_audio_tokens(self) -> int:
        return self.frames_per_chunk // self.frames_per_audio_token

    @property
    def n_video_tokens(self) -> int:
        return (self.frame_size // self.patch) ** 2

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def mel_dim(self) -> int:
        """Size of one audio token's mel block (frames x channels): what the flow head generates."""
        return self.frames_per_audio_token * self.n_mels

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["hmlp_dims"] = list(self.hmlp_dims)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown config fields: {unknown}")
        d = dict(d)
        if "hmlp_dims" in d:
            d["hmlp_dims"] = tuple(d["hmlp_dims"])
        return cls(**d)


PRESETS: dict[str, ModelConfig] = {
    # ~4 M parameters (~17 MB fp32): trains on 2 CPU cores, one session runs far faster than real time;
    # one KV head (MQA) halves the KV bytes every decode step reads
    "tiny": ModelConfig(n_kv_heads=1),
    # the same with a small MoE, for tests of the MoE paths on CPU
    "tiny-moe": ModelConfig(n_kv_heads=1, n_experts=4, top_k=2, d_ff_expert=128),
    # test-sized: smallest shapes that still exercise every code path
    "test": ModelConfig(
        d_model=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        d_ff=128,
        hmlp_dims=(16, 32),
        flow_hidden=64,
        window_turns=3,
        n_sinks=2,
        n_text_in=2,
        n_text_out=2,
        flow_steps=2,
        vocoder_iters=1,
    ),
    # GPU replica: 16 layers, 16-expert top-2 MoE (~0.9 B parameters, ~0.2 B active), 10 s window
    "gpu-moe": ModelConfig(
        d_model=1024,
        n_layers=16,
        n_heads=16,
        n_kv_heads=4,
        d_ff=2816,
        n_experts=16,
        top_k=2,
        d_ff_expert=1024,
        hmlp_dims=(256, 512),
        flow_hidden=1024,
        window_turns=50,
        flow_steps=8,
        vocoder_iters=8,
        vocoder_win=800,
    ),
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    """A named preset, optionally with fields replaced (e.g. ``preset("tiny", window_turns=8)``)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)
