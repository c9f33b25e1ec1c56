"""The engine's streaming embedding steps lay out the same tokens as ``InteractionModel.embed``."""

from __future__ import annotations

import pytest
import torch
from test_model_core import random_batch

from microturn.model import InteractionModel, preset

CFG = preset("test")


@pytest.mark.parametrize("any_video", [True, False])
def test_embedding_steps_equal_embed(any_video):
    """Turn 1 of two: prefill (turn 0's last audio-out token, then [IN] .. [OUT] of turn 1), each
    text-out token and each audio-out token, against the rows ``embed`` puts at those positions."""
    torch.manual_seed(0)
    model = InteractionModel(CFG).eval()
    lay, b = model.layout, 2
    batch = random_batch(CFG, b, 2, seed=4)
    if not any_video:
        batch.has_video.zero_()
    else:
        batch.has_video[:, 1] = torch.tensor([True, False])
    fpt, nm, na = CFG.frames_per_audio_token, CFG.n_mels, lay.n_audio_in
    with torch.no_grad():
        ref = model.embed(batch)[:, CFG.n_sinks + lay.turn_len :]  # turn 1
        prev_last = model.embed(batch)[:, CFG.n_sinks + lay.turn_len - 1]  # turn 0's last audio-out
        ws = model.embed_workspace(b, 3)
        levels = model.dmel.levels(batch.pcm)[:, CFG.frames_per_chunk :]  # turn 1's frames
        pre = torch.empty(b, lay.n_prefill, CFG.d_model)
        model.embed_prefill_(
            ws,
            batch.audio_out[:, 0, -1].reshape(b, -1),
            batch.video[:, 1],
            batch.has_video[:, 1],
            any_video,
            levels.reshape(b * na, fpt * nm),
            batch.text_in[:, 1],
            pre,
        )
        assert torch.allclose(pre[:, 0], prev_last, atol=1e-5)
        assert torch.allclose(pre[:, 1:], ref[:, : lay.out_marker + 1], atol=1e-5)
        out = torch.empty(b, CFG.d_model)
        for j in range(lay.n_text_out):
            model.embed_text_out_(batch.text_out[:, 1, j], j, out)
            assert torch.allclose(out, ref[:, lay.text_out + j], atol=1e-6)
        for j in range(lay.n_audio_out):
            model.embed_audio_out_(batch.audio_out[:, 1, j].reshape(b, -1), j, ws, out)
            assert torch.allclose(out, ref[:, lay.audio_out + j], atol=1e-5)
