"""The task families, by name."""

from __future__ import annotations

from microturn.gym.tasks import (
    charades,
    cuespeak,
    delegation,
    idle,
    interruption,
    repcount,
    simulspeech,
    timespeak,
    turntaking,
)
from microturn.gym.tasks.base import MODEL_VOCAB, Family

FAMILIES: dict[str, Family] = {
    m.FAMILY.name: m.FAMILY
    for m in (
        timespeak,
        cuespeak,
        repcount,
        charades,
        turntaking,
        interruption,
        simulspeech,
        delegation,
        idle,
    )
}


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown task family {name!r}; expected one of {sorted(FAMILIES)}") from None


__all__ = ["FAMILIES", "MODEL_VOCAB", "Family", "get_family"]
