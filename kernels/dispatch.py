"""Backend choice for the ops in ``kernels``: the torch reference or the Triton kernels.

* ``"torch"``: always the reference (any device, any dtype).
* ``"triton"``: the Triton kernel, or a :class:`BackendUnavailable` naming why it cannot run (triton does
  not import; the tensors are not on a GPU and ``TRITON_INTERPRET=1`` is not set). An explicit choice
  never falls back, so a misconfigured GPU replica fails loudly instead of running 10x slower.
* ``"auto"``: Triton when the tensors are on CUDA and triton imports, else the reference, silently (the
  choice is logged once per op at INFO). On a CPU, auto is always the reference, even under the
  interpreter: the interpreter is for tests, not for serving.

The process-wide default (``set_default_backend``) is what the engine's ``interaction.kernels`` setting
sets; every op also takes ``backend=`` to override it per call.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
from typing import Literal

import torch

log = logging.getLogger("kernels")

Backend = Literal["auto", "torch", "triton"]
BACKENDS: tuple[str, ...] = ("auto", "torch", "triton")

_default: str = "auto"
_logged: set[tuple[str, str]] = set()


class BackendUnavailable(RuntimeError):
    """An explicitly requested backend cannot run here (the message says why)."""


def _check_name(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown kernels backend {name!r}; expected one of {list(BACKENDS)}")
    return name


def set_default_backend(name: str) -> None:
    """Set the process-wide default backend (``"auto" | "torch" | "triton"``)."""
    global _default
    _default = _check_name(name)


def get_default_backend() -> str:
    return _default


def interpreter_enabled() -> bool:
    """``TRITON_INTERPRET=1``: Triton kernels run on the CPU through numpy (tests only)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.cache
def _triton_import_error() -> str | None:
    """None when triton imports, else the import error (cached: importing twice cannot change it)."""
    try:
        importlib.import_module("triton")
        importlib.import_module("triton.language")
    except Exception as e:  # an import can fail with more than ImportError (e.g. a broken libcuda)
        return f"{type(e).__name__}: {e}"
    return None


def triton_available() -> bool:
    return _triton_import_error() is None


def resolve(op: str, *tensors: torch.Tensor, backend: str | None = None) -> str:
    """The backend (``"torch"`` or ``"triton"``) that runs ``op`` on these tensors."""
    name = _check_name(backend if backend is not None else _default)
    if name == "torch":
        chosen = "torch"
    else:
        on_cuda = bool(tensors) and all(t.is_cuda for t in tensors)
        err = _triton_import_error()
        if name == "triton":
            if err is not None:
                raise BackendUnavailable(
                    f"kernels backend 'triton' requested for {op}, but triton does not import ({err})"
                )
            if not on_cuda and not interpreter_enabled():
                devs = sorted({str(t.device) for t in tensors})
                raise BackendUnavailable(
                    f"kernels backend 'triton' requested for {op}, but the tensors are on {devs} (no GPU) "
                    "and TRITON_INTERPRET=1 is not set"
                )
            chosen = "triton"
        else:
            chosen = "triton" if on_cuda and err is None else "torch"
    if (op, chosen) not in _logged:
        _logged.add((op, chosen))
        log.info("kernels: %s runs on the %s backend (requested %s)", op, chosen, name)
    return chosen


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (cached: kernels size their grids by it every call)."""
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())
