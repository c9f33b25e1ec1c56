"""A scripted interaction model: the shipped weights with a small script on the text-out channel.

Why it exists: the shipped ``microturn-tiny`` model was trained on the gym, where every request is
spoken. It opens a delegation when a user *says* an arithmetic or weather question (14 of 14 in an
in-process check) but never when one is *typed* (0 of 8), and it never speaks a background result
(docs/MODEL_CARD.md). A test of the whole two-model loop -- a typed request delegated to the background
model, its tools' result spoken back -- needs a model that does both. This one runs the real model
(same checkpoint, same engine, same batched step: every token is computed and fed back as usual) and
only replaces some of the text-out tokens it samples:

* **typed text** (text-in bytes outside ``<bg>`` markers): once the model has read a whole typed
  message (a text-in slot is empty again), it writes ``<deleg>`` + the message + ``</deleg>``, so the
  engine opens a delegation whose request is what the caller typed;
* **a background update** (``<bg> ... </bg>`` in text-in): once read, it says the update's text (at
  most ``MAX_REPLY_BYTES``), so its captions carry the result;
* anything else -- its audio, its own delegations from speech, its text while the script is quiet --
  is the real model's. The script waits while the model is inside a delegation span of its own.

It is selected like any model, by its checkpoint: ``write_scripted_checkpoint`` copies a checkpoint's
weights and config and adds the metadata ``script`` (and the version ``<base>-scripted``);
``load_checkpoint`` then builds a ``ScriptedModel``, whose ``executor_class`` the engine uses. For a
local run: ``python -m microturn.model.scripted /tmp/scripted.safetensors`` and
``MICROTURN_INTERACTION__CHECKPOINT=/tmp/scripted.safetensors make up``.

The script's state lives beside each slot and is rebuilt by a session's rebuild (the forced turns are
read like live ones), as far as the rebuilt span reaches back. It is a test model, not a product.
"""

from __future__ import annotations

import argparse
import copy
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from microturn.engine.executor import Executor
from microturn.model import tokens as tk
from microturn.model.checkpoint import SHIPPED_CHECKPOINT, CheckpointError
from microturn.model.model import InteractionModel

SCRIPT = "typed-delegation-v1"  # the checkpoint metadata value that selects this model
MAX_REQUEST_BYTES = 400  # of a typed message, as the delegation request
MAX_REPLY_BYTES = 160  # of a background update, as said


def _utf8_prefix(data: bytes, limit: int) -> bytes:
    """At most ``limit`` bytes of ``data``, cut on a character boundary."""
    return data[:limit].decode("utf-8", errors="ignore").encode("utf-8")


@dataclass
class SlotScript:
    """What the script of one session slot has read and still has to write."""

    typed: bytearray = field(default_factory=bytearray)  # typed bytes read, not yet delegated
    update: bytearray | None = None  # inside a background update: its bytes so far
    say: deque[int] = field(default_factory=deque)  # text-out tokens still to write
    model_span: bool = False  # the model opened a delegation span of its own (the script waits)

    def read(self, text_in: list[int]) -> None:
        """One micro-turn's text-in tokens."""
        empty_slot = False
        for t in text_in:
            if t == tk.BG_START:
                self.update = bytearray()
            elif t == tk.BG_END:
                if self.update is not None:
                    self.say.extend(_utf8_prefix(bytes(self.update), MAX_REPLY_BYTES))
                    self.say.append(ord(" "))
                self.update = None
            elif t < tk.N_BYTES:
                (self.update if self.update is not None else self.typed).append(t)
            elif t == tk.PAD:
                empty_slot = True
        if self.typed and empty_slot and self.update is None:  # the whole typed message is read
            self.say.extend(
                [tk.DELEG_START, *_utf8_prefix(bytes(self.typed), MAX_REQUEST_BYTES), tk.DELEG_END]
            )
            self.typed.clear()

    def next_token(self, sampled: int) -> int:
        """The text-out token written where the model sampled ``sampled``."""
        if self.say and not self.model_span:
            token = self.say.popleft()
            self._track(token, scripted=True)
            return token
        self._track(sampled, scripted=False)
        return sampled

    def forced(self, token: int) -> None:
        """A rebuild feeds a token written live: the script's own if it is the next one it would write."""
        if self.say and not self.model_span and token == self.say[0]:
            self.say.popleft()
            self._track(token, scripted=True)
        else:
            self._track(token, scripted=False)

    def _track(self, token: int, scripted: bool) -> None:
        if token == tk.DELEG_END:
            self.model_span = False
        elif token == tk.DELEG_START and not scripted:
            self.model_span = True


class ScriptedExecutor(Executor):
    """The engine's executor with a ``SlotScript`` per slot applied to the sampled text-out tokens."""

    def __init__(self, model: InteractionModel, num_slots: int, *args, **kwargs) -> None:
        super().__init__(model, num_slots, *args, **kwargs)
        self.scripts = [SlotScript() for _ in range(num_slots)]
        self._live: list[int] = []  # rows of the live step in progress
        self._lo = 0

    def reset_slot(self, slot: int) -> None:
        super().reset_slot(slot)
        self.scripts[slot] = SlotScript()

    def run(self, lo: int, rows: int, n_part: int, seeds: list[tuple[int, int]]) -> None:
        self._lo, self._live = lo, [r for r, _ in seeds]
        before = {lo + r: copy.deepcopy(self.scripts[lo + r]) for r in self._live}
        for r in self._live:
            self.scripts[lo + r].read([int(x) for x in self.h_text[r]])
        try:
            super().run(lo, rows, n_part, seeds)
        except BaseException:  # the step did not happen (the engine may retry it): neither did the script's
            for slot, script in before.items():
                self.scripts[slot] = script
            raise
        finally:
            self._live = []

    def _sample_text(self, hidden: Tensor, j: int, Bw: int) -> None:
        super()._sample_text(hidden, j, Bw)
        for r in self._live:
            sampled = int(self.d_ids[j, r])
            token = self.scripts[self._lo + r].next_token(sampled)
            if token != sampled:
                self.d_ids[j, r] = token  # fed back as the model's own token by the next forward

    def run_forced(self, lo: int, rows: int, n_part: int, n_layers: int | None = None) -> None:
        for r in (int(x) for x in self.h_part[0, :n_part]):
            script = self.scripts[lo + r]
            script.read([int(x) for x in self.h_text[r]])
            for j in range(self.lay.n_text_out):
                script.forced(int(self.h_fids[j, r]))
        super().run_forced(lo, rows, n_part, n_layers)


class ScriptedModel(InteractionModel):
    """The interaction model whose engine applies the script (same weights, same forward)."""

    executor_class = ScriptedExecutor


def model_class(script: str) -> type[InteractionModel]:
    if script != SCRIPT:
        raise CheckpointError(f"unknown model script {script!r} (known: {SCRIPT!r})")
    return ScriptedModel


def write_scripted_checkpoint(
    out: str | Path, base: str | Path = SHIPPED_CHECKPOINT, version: str | None = None
) -> Path:
    """A copy of checkpoint ``base`` that loads as the scripted model, as ``version`` (default: the
    base's version + ``-scripted``)."""
    out = Path(out)
    try:
        with safe_open(str(base), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"checkpoint {base} is not a readable safetensors file: {e}") from e
    if not meta.get("version"):
        raise CheckpointError(f"checkpoint {base} has no version string")
    meta.update(script=SCRIPT, version=version or f"{meta['version']}-scripted")
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out), metadata=meta)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m microturn.model.scripted",
        description="Write a checkpoint that loads as the scripted model (typed requests delegated, "
        "background results said): point interaction.checkpoint at it.",
    )
    p.add_argument("out", type=Path)
    p.add_argument(
        "--base", type=Path, default=SHIPPED_CHECKPOINT, help="checkpoint to copy (default: shipped)"
    )
    p.add_argument("--version", default=None, help="version string (default: the base's + '-scripted')")
    ns = p.parse_args(argv)
    print(write_scripted_checkpoint(ns.out, ns.base, ns.version))


if __name__ == "__main__":
    main()
