"""The dispatch layer: auto picks by device, explicit choices fail loudly, bad names are rejected."""

from __future__ import annotations

import logging

import pytest
import torch

import kernels
from kernels import dispatch


@pytest.fixture(autouse=True)
def _restore_default():
    before = kernels.get_default_backend()
    yield
    kernels.set_default_backend(before)


def test_auto_on_cpu_is_torch_even_under_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    x = torch.zeros(2)
    assert dispatch.resolve("op", x, backend="auto") == "torch"
    kernels.set_default_backend("auto")
    assert dispatch.resolve("op", x) == "torch"


def test_torch_backend_always_torch():
    assert dispatch.resolve("op", torch.zeros(1), backend="torch") == "torch"


def test_explicit_triton_on_cpu_without_interpreter_raises(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(kernels.BackendUnavailable, match=r"(TRITON_INTERPRET|does not import)"):
        dispatch.resolve("ring_attention", torch.zeros(1), backend="triton")


def test_explicit_triton_without_triton_raises_and_auto_falls_back(monkeypatch):
    monkeypatch.setattr(
        dispatch, "_triton_import_error", lambda: "ModuleNotFoundError: No module named 'triton'"
    )
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(kernels.BackendUnavailable, match="triton does not import"):
        dispatch.resolve("moe_decode", torch.zeros(1), backend="triton")
    assert dispatch.resolve("moe_decode", torch.zeros(1), backend="auto") == "torch"


def test_explicit_triton_under_interpreter_runs(need_triton, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert dispatch.resolve("op", torch.zeros(1), backend="triton") == "triton"


def test_unknown_backend_is_rejected():
    with pytest.raises(ValueError, match="unknown kernels backend 'cuda'"):
        kernels.set_default_backend("cuda")
    with pytest.raises(ValueError, match=r"expected one of \['auto', 'torch', 'triton'\]"):
        kernels.sampling_noise(
            torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long), 0, 4, backend="gpu"
        )


def test_default_backend_is_used_and_settable():
    kernels.set_default_backend("torch")
    assert kernels.get_default_backend() == "torch"
    assert dispatch.resolve("op", torch.zeros(1)) == "torch"


def test_choice_logged_once(caplog, monkeypatch):
    monkeypatch.setattr(dispatch, "_logged", set())
    with caplog.at_level(logging.INFO, logger="kernels"):
        for _ in range(3):
            dispatch.resolve("some_op", torch.zeros(1), backend="auto")
    msgs = [r.getMessage() for r in caplog.records if "some_op" in r.getMessage()]
    assert msgs == ["kernels: some_op runs on the torch backend (requested auto)"]


def test_torch_backend_fills_out():
    seed, chunk = torch.tensor([3, 4]), torch.tensor([0, 1])
    out = torch.full((2, 6), float("nan"))
    res = kernels.sampling_noise(seed, chunk, 0, 6, kind="uniform", out=out, backend="torch")
    assert res is out
    assert torch.equal(out, kernels.reference.noise_ref(seed, chunk, 0, 6, "uniform"))
