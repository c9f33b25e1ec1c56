"""The scripted test model (microturn.model.scripted): loaded from a checkpoint like any model, it
delegates what is typed and says what the background model answers, in the real engine; a rebuilt
session continues its script; everything else is the real model's."""

from __future__ import annotations

import numpy as np
import pytest

from microturn.engine import ChunkInput, DelegationOpened, Engine
from microturn.model import SHIPPED_CHECKPOINT, CheckpointError, InteractionModel, load_checkpoint
from microturn.model.checkpoint import checkpoint_version
from microturn.model.scripted import ScriptedModel, write_scripted_checkpoint

pytestmark = pytest.mark.skipif(not SHIPPED_CHECKPOINT.is_file(), reason="no shipped checkpoint")
SILENCE = np.zeros(3200, np.int16)


@pytest.fixture(scope="module")
def scripted(tmp_path_factory) -> ScriptedModel:
    path = write_scripted_checkpoint(tmp_path_factory.mktemp("scripted") / "s.safetensors")
    assert checkpoint_version(path) == checkpoint_version(SHIPPED_CHECKPOINT) + "-scripted"
    model = load_checkpoint(path)
    assert isinstance(model, ScriptedModel)
    return model


def run(engine: Engine, sid: str, n: int, typed=None, background=None, start: int = 0):
    outs = []
    for k in range(start, start + n):
        chunk = ChunkInput(
            sid, k, SILENCE, None, list((typed or {}).get(k, [])), list((background or {}).get(k, []))
        )
        outs += engine.step([chunk])
    return outs


def delegations(outs) -> list[tuple[int, str]]:
    return [(o.chunk_index, e.request) for o in outs for e in o.events if isinstance(e, DelegationOpened)]


def test_a_typed_request_is_delegated_and_the_answer_said(scripted):
    engine = Engine(scripted, 2)
    engine.open("s", seed=3)
    request = "timer for 3 seconds for tea"
    answer = "Timer set for tea: 3 seconds. I'll tell you when it's done."
    outs = run(engine, "s", 30, typed={2: [request]})
    (opened,) = delegations(outs)
    # read at 3 bytes per micro-turn, then written at 3 per micro-turn: opened after both
    assert opened[1] == request and opened[0] >= 2 + 2 * len(request) // 3
    outs = run(engine, "s", 60, background={30: [answer]}, start=30)
    said = "".join(o.text for o in outs)
    assert answer in said, said
    assert not delegations(outs)


def test_the_shipped_weights_do_not_delegate_typed_text(scripted):
    """The reason the scripted model exists (the same request, the same engine, the real model)."""
    real = load_checkpoint(SHIPPED_CHECKPOINT)
    assert type(real) is InteractionModel
    engine = Engine(real, 1)
    engine.open("s", seed=3)
    assert not delegations(run(engine, "s", 30, typed={2: ["timer for 3 seconds for tea"]}))


def test_a_rebuilt_session_goes_on_with_its_script(scripted):
    """Rebuilt from its last turns while the answer is being said, a session says the rest of it."""
    answer = "The answer is 391, since 17 times 23 is 391."
    a = Engine(scripted, 1)
    a.open("s", seed=5)
    outs = run(a, "s", 30, background={2: [answer]})
    span = [(ChunkInput("s", o.chunk_index, SILENCE, None, [], [answer] if o.chunk_index == 2 else []), o.resume)
            for o in outs]  # fmt: skip
    cut = next(i for i, o in enumerate(outs) if o.text.strip()) + 3  # a few turns into the answer
    rest = run(a, "s", 30, start=30)
    b = Engine(scripted, 1)
    b.resume("s", 5, span[:cut])
    again = run(b, "s", 60 - cut, start=cut)
    said = "".join(o.text for o in outs[:cut]) + "".join(o.text for o in again)
    assert answer in said, said
    assert [o.text for o in again[: 30 - cut]] == [o.text for o in outs[cut:]]
    assert [o.text for o in again[30 - cut :]] == [o.text for o in rest]


def test_an_unknown_script_is_a_checkpoint_error(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = write_scripted_checkpoint(tmp_path / "s.safetensors")
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    save_file(tensors, str(path), metadata={**meta, "script": "make-it-up"})
    with pytest.raises(CheckpointError, match="unknown model script 'make-it-up'"):
        load_checkpoint(path)
