"""Counter-based sampling noise: backends agree (bit-identical uniforms), a session's noise does not
depend on its batch, and the distributions are right."""

from __future__ import annotations

import math

import pytest
import torch

import kernels
from kernels.reference import noise_ref, philox4x32

SEEDS = torch.tensor([1, 2, -5, 2**40 + 3, 7])
CHUNKS = torch.tensor([0, 7, 2**33 + 1, 5, 0])


def test_philox_known_answer():
    """Philox-4x32-10 test vector of the Random123 distribution (key 0, counter 0)."""
    z = torch.zeros(1, dtype=torch.long)
    words = [int(w) for w in philox4x32(z, z, z, z, z)]
    assert words == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]


@pytest.mark.parametrize("kind", ["uniform", "normal", "gumbel"])
@pytest.mark.parametrize("n", [1, 6, 37])
def test_triton_matches_reference(need_triton, device, kind, n):
    seed, chunk = SEEDS.to(device), CHUNKS.to(device)
    for stream in (0, 1, 5):
        ref = noise_ref(seed, chunk, stream, n, kind)
        got = kernels.sampling_noise(seed, chunk, stream, n, kind=kind, backend="triton")
        assert got.shape == (5, n) and got.dtype == torch.float32
        if kind == "uniform":
            assert torch.equal(got, ref)  # the documented bit-identical part
        else:
            torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_batch_independence(need_triton, device, backend):
    seed, chunk = SEEDS.to(device), CHUNKS.to(device)
    full = kernels.sampling_noise(seed, chunk, 1, 20, backend=backend)
    perm = torch.tensor([3, 0, 4], device=device)
    part = kernels.sampling_noise(seed[perm], chunk[perm], 1, 20, backend=backend)
    assert torch.equal(part, full[perm])
    alone = kernels.sampling_noise(seed[2:3], chunk[2:3], 1, 20, backend=backend)
    assert torch.equal(alone[0], full[2])


def test_out_rows_may_be_strided(need_triton, device):
    buf = torch.full((5, 3, 16), float("nan"), device=device)
    out = buf[:, 1, :]  # rows 48 floats apart
    kernels.sampling_noise(
        SEEDS.to(device), CHUNKS.to(device), 2, 16, kind="gumbel", out=out, backend="triton"
    )
    torch.testing.assert_close(
        out, noise_ref(SEEDS, CHUNKS, 2, 16, "gumbel").to(device), atol=1e-5, rtol=1e-5
    )
    assert torch.isnan(buf[:, 0]).all() and torch.isnan(buf[:, 2]).all()


def test_keys_and_counters_separate_streams():
    base = noise_ref(torch.tensor([9]), torch.tensor([4]), 0, 64, "uniform")
    for seed, chunk, stream in [(10, 4, 0), (9, 5, 0), (9, 4, 1), (9 + 2**32, 4, 0), (9, 4 + 2**32, 0)]:
        other = noise_ref(torch.tensor([seed]), torch.tensor([chunk]), stream, 64, "uniform")
        assert not torch.equal(other, base), (seed, chunk, stream)
    again = noise_ref(torch.tensor([9]), torch.tensor([4]), 0, 64, "uniform")
    assert torch.equal(again, base)


def test_distributions():
    b, n = 64, 1024
    seed = torch.arange(b) * 7919 + 1
    chunk = torch.arange(b) % 5
    u = noise_ref(seed, chunk, 0, n, "uniform")
    assert u.min() > 0 and u.max() < 1 and abs(u.mean() - 0.5) < 0.01
    z = noise_ref(seed, chunk, 1, n, "normal")
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
    assert abs((z**4).mean() - 3) < 0.1  # Gaussian kurtosis
    g = noise_ref(seed, chunk, 2, n, "gumbel")
    assert torch.isfinite(g).all() and abs(g.mean() - 0.5772) < 0.02 and abs(g.var() - math.pi**2 / 6) < 0.05


def test_argument_errors():
    s = torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="unknown noise kind"):
        kernels.sampling_noise(s, s, 0, 4, kind="laplace")
    with pytest.raises(ValueError, match="must be"):
        kernels.sampling_noise(s, s[:1], 0, 4)
    with pytest.raises(ValueError, match="float32"):
        kernels.sampling_noise(s, s, 0, 4, out=torch.zeros(2, 4, dtype=torch.float64))
