"""The interaction model: encoder-free early fusion of audio, video and text in one decoder.

``forward`` runs a full token sequence (teacher forcing) and returns text logits, flow-head conditions and
the training losses; the streaming engine computes the same function one micro-turn at a time (tested),
through each module's allocation-free step and, for the token layout, ``embed_prefill_`` /
``embed_text_out_`` / ``embed_audio_out_`` here (the same tokens ``embed`` lays out).
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
from microturn.model.hmlp import HMLP, HMLPWorkspace
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
    # optional audio-out levels the model reads back as its own audio, when they differ from the targets
    # ``audio_out`` (training feeds a corrupted copy: ``train.objective.corrupt_feedback``)
    audio_out_fed: Tensor | None = None

    @property
    def n_turns(self) -> int:
        return self.text_in.shape[1]


@dataclass
class ModelOutput:
    hidden: Tensor  # [B, S + n*T, d] final-normed
    text_logits: Tensor  # [B, n, n_text_out, V]
    flow_cond: Tensor  # [B, n, n_audio_out, d]
    losses: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class EmbedWorkspace:
    """Buffers of the streaming embedding steps for up to ``rows`` micro-turns."""

    idx: Tensor  # long [rows * n_audio_in * frames_per_audio_token * n_mels]
    gather: Tensor  # dMel table rows gathered per chunk of tokens [c * frames * mels, d]
    tmp: Tensor  # [rows * max(n_audio_in, n_text_in) * d]
    video: Tensor  # [rows * n_video * d]
    hmlp: HMLPWorkspace


def _weighted_mean(x: Tensor, w: Tensor | None) -> Tensor:
    return x.mean() if w is None else (x * w).sum() / w.sum().clamp_min(1e-8)


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
        a_out = self.audio_out_emb(batch.audio_out if batch.audio_out_fed is None else batch.audio_out_fed)
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

    # --- streaming embedding (engine) -----------------------------------------------------------
    def embed_workspace(
        self, rows: int, gather_tokens: int, device: torch.device | str = "cpu"
    ) -> EmbedWorkspace:
        """``gather_tokens``: dMel tokens embedded per gather (a few on a CPU, so the rows stay in cache)."""
        cfg, lay, d = self.cfg, self.layout, self.cfg.d_model
        p = cfg.frames_per_audio_token * cfg.n_mels
        return EmbedWorkspace(
            idx=torch.zeros(rows * lay.n_audio_in * p, dtype=torch.long, device=device),
            gather=torch.zeros(gather_tokens * p, d, device=device),
            tmp=torch.zeros(rows * max(lay.n_audio_in, lay.n_text_in, 1) * d, device=device),
            video=torch.zeros(rows * lay.n_video * d, device=device),
            hmlp=self.hmlp.workspace(rows, device),
        )

    def _dmel_embed_(self, emb: DMelEmbedding, levels: Tensor, ws: EmbedWorkspace, out: Tensor) -> Tensor:
        n, p = levels.shape
        return emb.embed_(levels, ws.idx[: n * p].view(n, p), ws.gather, out)

    def embed_prefill_(
        self,
        ws: EmbedWorkspace,
        pending: Tensor,
        video: Tensor,
        has_video: Tensor,
        any_video: bool,
        audio_levels: Tensor,
        text_in: Tensor,
        out: Tensor,
    ) -> Tensor:
        """A live micro-turn's prefill tokens, allocation-free: the previous turn's last audio-out token
        (``pending`` levels [R, frames*mels]), then [IN] video audio-in text-in [OUT], each with its
        offset embedding, as ``embed`` lays them out -> out [R, 1 + out_marker + 1, d]. video uint8
        [R, H, W, 3] with ``has_video`` [R] (``any_video`` False skips the hMLP), audio_levels
        [R * n_audio_in, frames*mels], text_in [R, n_text_in]."""
        lay, d = self.layout, self.cfg.d_model
        r = out.shape[0]
        self._dmel_embed_(self.audio_out_emb, pending, ws, out[:, 0])
        out[:, 1 + lay.in_marker].copy_(self.tok_emb.weight[tk.IN].expand(r, d))
        out[:, 1 + lay.out_marker].copy_(self.tok_emb.weight[tk.OUT].expand(r, d))
        v0, nv = 1 + lay.video, lay.n_video
        if any_video:
            vt = ws.video[: r * nv * d].view(r, nv, d)
            self.hmlp.step_(video, ws.hmlp, vt)
            vt.add_(self.video_pos)
            torch.where(has_video.view(r, 1, 1), vt, self.no_video.unsqueeze(0), out=out[:, v0 : v0 + nv])
        else:
            out[:, v0 : v0 + nv].copy_(self.no_video.expand(r, -1, -1))
        na, nt = lay.n_audio_in, lay.n_text_in
        at = ws.tmp[: r * na * d].view(r * na, d)
        self._dmel_embed_(self.audio_in_emb, audio_levels, ws, at)
        out[:, 1 + lay.audio_in : 1 + lay.audio_in + na].copy_(at.view(r, na, d))
        tt = ws.tmp[: r * nt * d].view(r * nt, d)
        torch.index_select(self.tok_emb.weight, 0, text_in.reshape(-1), out=tt)
        out[:, 1 + lay.text_in : 1 + lay.text_in + nt].copy_(tt.view(r, nt, d))
        out[:, 0].add_(self.offset_emb[lay.turn_len - 1])
        out[:, 1:].add_(self.offset_emb[: lay.out_marker + 1])
        return out

    def embed_text_out_(self, ids: Tensor, j: int, out: Tensor) -> Tensor:
        """Text-out token ``j`` of a micro-turn: ids [R] -> out [R, d] (token + offset embedding)."""
        torch.index_select(self.tok_emb.weight, 0, ids, out=out)
        return out.add_(self.offset_emb[self.layout.text_out + j])

    def embed_audio_out_(self, levels: Tensor, j: int, ws: EmbedWorkspace, out: Tensor) -> Tensor:
        """Audio-out token ``j``: levels [R, frames*mels] -> out [R, d] (dMel + offset embedding)."""
        self._dmel_embed_(self.audio_out_emb, levels, ws, out)
        return out.add_(self.offset_emb[self.layout.audio_out + j])

    # --- full forward ----------------------------------------------------------------------------
    def positions(self, n_turns: int, offset: int = 0, device: torch.device | str = "cpu") -> Tensor:
        """Absolute positions of sinks + ``n_turns`` micro-turns starting at chunk index ``offset``
        (sinks stay at ``0 .. S-1``; micro-turn ``k`` sits where the engine puts chunk ``offset + k``)."""
        s, t = self.cfg.n_sinks, self.layout.turn_len
        sinks = torch.arange(s, device=device)
        return torch.cat([sinks, s + offset * t + torch.arange(n_turns * t, device=device)])

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
        pos_offset: int = 0,
        text_weight: Tensor | None = None,
        flow_weight: Tensor | None = None,
    ) -> ModelOutput:
        """Teacher-forced forward. Losses: ``text_ce`` (cross-entropy of the text-out tokens, weighted
        per slot by ``text_weight`` [B, n, n_text_out]), ``flow`` (flow matching of the audio-out
        tokens, weighted per micro-turn by ``flow_weight`` [B, n]), ``moe_aux``; unit weights when not
        given. ``pos_offset`` puts the first micro-turn at that chunk index (the training objective)."""
        cfg, lay = self.cfg, self.layout
        x = self.embed(batch)
        pos = self.positions(batch.n_turns, pos_offset, x.device)
        hidden, logits, cond, aux = self.heads(x, pos, window_turns)
        out = ModelOutput(hidden=hidden, text_logits=logits, flow_cond=cond)
        if with_losses:
            b, n = batch.text_out.shape[:2]
            ce = F.cross_entropy(
                logits.float().reshape(-1, tk.VOCAB_SIZE), batch.text_out.reshape(-1), reduction="none"
            )
            x1 = self.flow.normalize(self.dmel.dequantize(batch.audio_out)).reshape(-1, cfg.mel_dim)
            mse = self.flow.loss_rows(cond.reshape(-1, cfg.d_model), x1, generator)
            text_ce = _weighted_mean(ce, None if text_weight is None else text_weight.reshape(-1))
            fw = None if flow_weight is None else flow_weight[:, :, None].expand(b, n, lay.n_audio_out)
            flow = _weighted_mean(mse, None if fw is None else fw.reshape(-1))
            aux = aux.float()
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
