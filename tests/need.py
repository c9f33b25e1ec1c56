"""Tests that need a binary or browser the Makefile installs: skip with the reason on a developer's
machine, fail under CI (``CI=true``), where a missing tool means the setup is broken."""

from __future__ import annotations

import os

import pytest


def under_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def need(missing: list[str], how: str) -> None:
    """Skip (or, under CI, fail) when anything in ``missing`` is absent; ``how`` says how to get it."""
    if not missing:
        return
    message = f"needs {', '.join(missing)} ({how})"
    if under_ci():
        pytest.fail(f"{message}: missing under CI=true, where the Makefile must have installed it")
    pytest.skip(message)
