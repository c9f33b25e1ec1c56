"""The microturn interaction model (PyTorch): dMel audio, hMLP video, byte text, a RoPE/GQA transformer
with dense or MoE SwiGLU, a flow-matching mel head and a Griffin-Lim vocoder."""

from microturn.model.checkpoint import (
    SHIPPED_CHECKPOINT,
    CheckpointError,
    init_untrained,
    load_checkpoint,
    load_or_init,
    save_checkpoint,
)
from microturn.model.config import PRESETS, ConfigError, ModelConfig, preset
from microturn.model.layout import TurnLayout
from microturn.model.model import InteractionModel, ModelOutput, TurnBatch

__all__ = [
    "PRESETS",
    "SHIPPED_CHECKPOINT",
    "CheckpointError",
    "ConfigError",
    "InteractionModel",
    "ModelConfig",
    "ModelOutput",
    "TurnBatch",
    "TurnLayout",
    "init_untrained",
    "load_checkpoint",
    "load_or_init",
    "preset",
    "save_checkpoint",
]
