"""Kernel tests: Triton kernels against the torch references.

Without a GPU the kernels run under the Triton interpreter (``TRITON_INTERPRET=1``, fp32, tiny shapes);
the variable must be set before triton is first imported, hence here, at collection. With a GPU they run
compiled (fp32 with IEEE dots), and the ``gpu`` tests add bf16 accuracy and CUDA-graph capture.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
# triton reads TRITON_INTERPRET when a kernel is defined: if something imported triton first (without
# it), the kernels would be compiled for a GPU that is not there
LATE = not HAS_CUDA and sys.modules.get("triton") is not None and os.environ.get("TRITON_INTERPRET") != "1"
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped with a reason without one)")


@pytest.fixture
def device() -> torch.device:
    """Where kernel-vs-reference tests run: the GPU when there is one, else the CPU (interpreter)."""
    return torch.device("cuda" if HAS_CUDA else "cpu")


@pytest.fixture
def need_triton() -> None:
    """Skip when triton is missing, except in CI (CI=true), where the Makefile installs it: a failure."""
    from kernels.dispatch import _triton_import_error

    if LATE:
        pytest.fail(
            "triton was imported before tests/kernels set TRITON_INTERPRET=1: run tests/kernels in its own process"
        )
    err = _triton_import_error()
    if err is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"triton is required in CI but does not import: {err}")
    pytest.skip(f"triton is not installed ({err})")
