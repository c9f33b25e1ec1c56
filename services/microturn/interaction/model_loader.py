"""Which model a replica serves: a checkpoint from settings, the shipped default, or — when no
checkpoint exists yet — a randomly initialised preset whose version says so."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from microturn.config import InteractionSettings
from microturn.model import InteractionModel, load_checkpoint, preset

log = logging.getLogger(__name__)

# Where the trained default checkpoint is shipped inside the distribution.
SHIPPED_CHECKPOINT = Path(__file__).resolve().parent.parent / "checkpoints" / "microturn-tiny.safetensors"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_model(settings: InteractionSettings) -> InteractionModel:
    if settings.checkpoint:
        model = load_checkpoint(settings.checkpoint)
    elif SHIPPED_CHECKPOINT.exists():
        model = load_checkpoint(SHIPPED_CHECKPOINT)
    else:
        torch.manual_seed(0)
        model = InteractionModel(preset(settings.model_preset), version=f"{settings.model_preset}-untrained")
        log.warning(
            "no checkpoint configured or shipped: serving an untrained %s model", settings.model_preset
        )
    log.info("serving model %s", model.version)
    return model
