"""Checkpoints: ``<path>`` is a safetensors file with the weights; its metadata holds the JSON config and the
version string (one file to ship and to hash). Loading checks every tensor's name and shape against the
model the config builds and names each mismatch."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from microturn.model.config import ModelConfig
from microturn.model.model import InteractionModel

FORMAT = "microturn-interaction-v1"


class CheckpointError(ValueError):
    """A checkpoint is unreadable or does not match the model its config describes."""


def save_checkpoint(
    model: InteractionModel, path: str | Path, version: str, dtype: torch.dtype | None = None
) -> Path:
    """``dtype`` stores floating-point weights in that type (float16 halves a shipped file); loading
    always gives the model's own float32 parameters back."""
    if not version:
        raise CheckpointError("version must be a non-empty string")
    path = Path(path)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    meta = {"format": FORMAT, "version": version, "config": json.dumps(model.cfg.to_dict())}
    save_file(state, str(path), metadata=meta)
    return path


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> InteractionModel:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"checkpoint {path} is not a readable safetensors file: {e}") from e
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    if not meta.get("version"):
        raise CheckpointError(f"checkpoint {path} has no version string")
    try:
        cfg = ModelConfig.from_dict(json.loads(meta["config"]))
    except (KeyError, json.JSONDecodeError, ValueError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path}: bad config: {e}") from e
    model_class = InteractionModel
    if meta.get("script"):  # a scripted test model on these weights (microturn.model.scripted)
        from microturn.model.scripted import model_class as scripted_class

        model_class = scripted_class(meta["script"])
    model = model_class(cfg, version=meta["version"])
    expected = model.state_dict()
    problems = []
    for k in sorted(set(expected) - set(tensors)):
        problems.append(f"missing tensor {k} (expected shape {tuple(expected[k].shape)})")
    for k in sorted(set(tensors) - set(expected)):
        problems.append(f"unexpected tensor {k} (shape {tuple(tensors[k].shape)})")
    for k in sorted(set(tensors) & set(expected)):
        if tuple(tensors[k].shape) != tuple(expected[k].shape):
            problems.append(
                f"tensor {k}: shape {tuple(tensors[k].shape)} in checkpoint, {tuple(expected[k].shape)} in model"
            )
    if problems:
        raise CheckpointError(f"checkpoint {path} does not match its config: " + "; ".join(problems))
    model.load_state_dict(tensors)
    return model.to(device).eval()


# The embedded default model: shipped inside the distribution, used by `make up` and `make eval`.
SHIPPED_CHECKPOINT = Path(__file__).resolve().parent.parent / "checkpoints" / "microturn-tiny.safetensors"


def checkpoint_version(path: str | Path) -> str:
    """The version string a checkpoint declares, read from its metadata only (no tensors)."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            version = (f.metadata() or {}).get("version")
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"checkpoint {path} is not a readable safetensors file: {e}") from e
    if not version:
        raise CheckpointError(f"checkpoint {path} has no version string")
    return version


def shipped_checkpoints() -> dict[str, Path]:
    """Version -> file of every checkpoint shipped in the distribution."""
    return {checkpoint_version(p): p for p in sorted(SHIPPED_CHECKPOINT.parent.glob("*.safetensors"))}


def load_or_init(
    checkpoint: str | Path | None = None, preset_name: str = "tiny", seed: int = 0
) -> InteractionModel:
    """``checkpoint`` if given, else the shipped default if present, else a randomly initialised
    ``preset_name`` model whose version says ``untrained`` (so every output chunk says so too)."""
    if checkpoint is None and SHIPPED_CHECKPOINT.is_file():
        checkpoint = SHIPPED_CHECKPOINT
    if checkpoint is not None:
        return load_checkpoint(checkpoint)
    return init_untrained(preset_name, seed)


def init_untrained(preset_name: str = "tiny", seed: int = 0) -> InteractionModel:
    """A seeded random initialisation (the same weights in every process)."""
    from microturn.model.config import preset

    torch.manual_seed(seed)
    return InteractionModel(preset(preset_name), version=f"{preset_name}-untrained")
