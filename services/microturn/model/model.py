"""The interaction model: encoder-free early fusion of audio, video and text in one decoder.

``forward`` runs a full token sequence (teacher forcing) and returns text logits, flow-head conditions and
the training losses; the streaming engine computes the same function one micro-turn at a time (tested).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from microturn.model import tokens as tk
from microturn.model.config import ModelConfig
from microturn.model.dmel import DMel, DMelEmbedding
from microturn.model.flow import FlowHead
from microturn.model.hmlp import HMLP
from microturn.model.layout import TurnLayout
from microturn.model.transformer import Transformer, apply_rope, rope_cos_sin, window_sink_mask
from microturn.model.vocoder import GriffinLim


@dataclass
class TurnBatch:
    """A batch of sessions, ``n`` micro-turns each, with every token known (teacher forcing)."""

    pcm: Tensor  # int16 or float in [-1, 1], [B, n * samples_per_chunk]
    video: Tensor  # uint8 [B, n, H, W, 3]
    has_video: Tensor  # bool [B, n]
    text_in: Tensor  # long [B, n, n_text_in]
    text_out: Tensor  # long [B, n, n_text_out]
    audio_out: Tensor  # long dMel levels [B, n, n_audio_out, frames_per_audio_token, n_mels]
    # optional precomputed input levels [B, n * frames_per_chunk, n_mels] (``DMel.levels(pcm)``): training
    # pipelines featurise once instead of every step; when given, ``pcm`` is not read
    audio_in_levels: Tensor | None = None

    @property
    def n_turns(self) -> int:
        return self.text_in.shape[1]


@dataclass
class ModelOutput:
    hidden: Tensor  # [B, S + n*T, d] final-normed
    text_logits: Tensor  # [B, n, n_text_out, V]
    flow_cond: Tensor  # [B, n, n_audio_out, d]
    losses: dict[str, Tensor] = field(default_factory=dict)


class InteractionModel(nn.Module):
    def __init__(self, cfg: ModelConfig, version: str = "untrained"):
        super().__init__()
        self.cfg = cfg
        self.version = version
        self.layout = TurnLayout.from_config(cfg)
        d, lay = cfg.d_model, self.layout
        self.tok_emb = nn.Embedding(tk.VOCAB_SIZE, d)
        nn.init.normal_(self.tok_emb.weight, std=0.02)
        self.audio_in_emb = DMelEmbedding(cfg)
        self.audio_out_emb = DMelEmbedding(cfg)
        self.hmlp = HMLP(cfg)
        self.video_pos = nn.Parameter(torch.randn(lay.n_video, d) * 0.02)
        self.no_video = nn.Parameter(torch.randn(lay.n_video, d) * 0.02)
        self.offset_emb = nn.Parameter(torch.randn(lay.turn_len, d) * 0.02)
        self.sinks = nn.Parameter(torch.randn(cfg.n_sinks, d) * 0.02)
        self.transformer = Transformer(cfg)
        self.lm_head = nn.Linear(d, tk.VOCAB_SIZE, bias=False)
        self.flow = FlowHead(cfg)
        self.dmel = DMel(cfg)
        self.vocoder = GriffinLim(cfg)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # --- embedding -------------------------------------------------------------------------------
    def embed_video(self, video: Tensor, has_video: Tensor) -> Tensor:
        """uint8 [B, n, H, W, 3], bool [B, n] -> [B, n, n_video, d]."""
        b, n = has_video.shape
        v = self.hmlp(video.reshape(b * n, *video.shape[2:])).view(b, n, self.layout.n_video, -1)
        v = v + self.video_pos
        return torch.where(has_video[:, :, None, None], v, self.no_video.expand_as(v))

    def embed(self, batch: TurnBatch) -> Tensor:
        """All tokens in layout order, sinks first: [B, S + n*T, d]."""
        cfg, lay = self.cfg, self.layout
        b, n = batch.text_in.shape[:2]
        levels = batch.audio_in_levels if batch.audio_in_levels is not None else self.dmel.levels(batch.pcm)
        a_in = self.audio_in_emb(levels.view(b, n, lay.n_audio_in, cfg.frames_per_audio_token, cfg.n_mels))
        a_out = self.audio_out_emb(batch.audio_out)
        vid = self.embed_video(batch.video, batch.has_video)
        marker = lambda t: self.tok_emb.weight[t].expand(b, n, 1, -1)  # noqa: E731
        parts = [
            marker(tk.IN),
            vid,
            a_in,
            self.tok_emb(batch.text_in),
            marker(tk.OUT),
            self.tok_emb(batch.text_out),
            a_out,
        ]
        x = torch.cat(parts, dim=2) + self.offset_emb
        return torch.cat([self.sinks.expand(b, -1, -1), x.reshape(b, n * lay.turn_len, -1)], dim=1)

    # --- full forward ----------------------------------------------------------------------------
    def heads(
        self, x: Tensor, pos: Tensor, window_turns: int | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Embedded sequence ``x`` at positions ``pos`` (the engine's sliding-window + sink mask) ->
        (hidden, text logits [B, n, n_text_out, V], flow conditions [B, n, n_audio_out, d], MoE aux).
        Shared by ``forward`` and the training objective (which shifts positions)."""
        cfg, lay = self.cfg, self.layout
        w = cfg.window_turns if window_turns is None else window_turns
        hidden, aux = self.transformer(x, pos, window_sink_mask(pos, cfg.n_sinks, w * lay.turn_len))
        b = x.shape[0]
        turns = hidden[:, cfg.n_sinks :].view(b, -1, lay.turn_len, hidden.shape[-1])
        text_h = turns[:, :, lay.out_marker : lay.out_marker + lay.n_text_out]
        cond = turns[:, :, lay.audio_out - 1 : lay.audio_out - 1 + lay.n_audio_out]
        return hidden, self.lm_head(text_h), cond, aux

    def forward(
        self,
        batch: TurnBatch,
        *,
        window_turns: int | None = None,
        generator: torch.Generator | None = None,
        with_losses: bool = True,
        aux_weight: float = 0.01,
    ) -> ModelOutput:
        cfg = self.cfg
        x = self.embed(batch)
        pos = torch.arange(x.shape[1], device=x.device)
        hidden, logits, cond, aux = self.heads(x, pos, window_turns)
        out = ModelOutput(hidden=hidden, text_logits=logits, flow_cond=cond)
        if with_losses:
            text_ce = F.cross_entropy(logits.reshape(-1, tk.VOCAB_SIZE), batch.text_out.reshape(-1))
            x1 = self.flow.normalize(self.dmel.dequantize(batch.audio_out)).reshape(-1, cfg.mel_dim)
            flow = self.flow.loss(cond.reshape(-1, cfg.d_model), x1, generator)
            out.losses = {
                "text_ce": text_ce,
                "flow": flow,
                "moe_aux": aux,
                "total": text_ce + flow + aux_weight * aux,
            }
        return out

    @torch.no_grad()
    def sink_kv(self) -> list[tuple[Tensor, Tensor]]:
        """Per layer (keys rotated at positions 0..S-1, values), each [n_kv, S, head_dim]. Sinks depend
        only on the weights, so the engine computes them once and copies them into every new slot."""
        cfg = self.cfg
        x = self.sinks[None]
        pos = torch.arange(cfg.n_sinks, device=x.device)
        cos, sin = rope_cos_sin(pos, self.transformer.inv_freq)
        mask = window_sink_mask(pos, cfg.n_sinks, cfg.window_turns * self.layout.turn_len)
        out = []
        for blk in self.transformer.blocks:
            h = blk.attn_norm(x)
            k = apply_rope(blk.attn.wk(h).view(1, -1, cfg.n_kv_heads, cfg.head_dim), cos, sin)
            v = blk.attn.wv(h).view(1, -1, cfg.n_kv_heads, cfg.head_dim)
            out.append((k[0].transpose(0, 1).contiguous(), v[0].transpose(0, 1).contiguous()))
            x, _ = blk(x, cos, sin, mask)
        return out
