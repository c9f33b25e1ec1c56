"""Which model a replica serves, and on which device."""

from __future__ import annotations

import logging

import torch

from microturn.config import InteractionSettings
from microturn.model import InteractionModel, load_or_init

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_model(settings: InteractionSettings) -> InteractionModel:
    """The configured checkpoint, else the shipped default, else an untrained preset (logged)."""
    model = load_or_init(settings.checkpoint, settings.model_preset)
    if "untrained" in model.version:
        log.warning(
            "no checkpoint configured or shipped: serving an untrained %s model", settings.model_preset
        )
    log.info("serving model %s", model.version)
    return model
