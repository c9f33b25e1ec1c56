"""The executor: one batched micro-turn over preallocated buffers (no tensor allocation in steady state).

Everything the step touches is allocated here once: the per-slot KV ring (keys stored already rotated),
ring positions, audio/vocoder history, and flat work buffers sized for all slots at the longest token
count. Ops write with ``out=`` or in place; scalars are 0-dim constant tensors (a Python scalar in an
arithmetic op makes a temporary tensor). The host side (``engine.py``) only writes into numpy-backed
staging arrays that alias torch tensors.

Rows and slots: a step covers the contiguous slot range ``[lo, lo + rows)`` that contains all its sessions
(slots are handed out lowest-first, so this is usually exactly the active sessions). Row ``r`` is slot
``lo + r``. Rows whose slot is not in the step ("holes") are computed on dummy input and discarded: their
KV writes go to a spare trash slot and their small state is never committed. Attention then reads each
row's own KV as a plain view of the cache range, so no KV is ever copied or gathered.

Two kinds of step share the buffers: ``run`` (a live micro-turn: prefill, then one forward per output
token, sampling as it goes) and ``run_forced`` (rebuilding a session: every token of the micro-turn is
known — what the model fed back to itself travels with the output chunk — so the whole turn is one
forward and nothing is sampled or vocoded).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from microturn.model import tokens as tk
from microturn.model.flow import time_embedding
from microturn.model.hmlp import cells_view
from microturn.model.model import InteractionModel
from microturn.model.moe import MoE

NEG_POS = -(2**40)  # ring position of an empty entry: never inside any window


class Executor:
    def __init__(
        self,
        model: InteractionModel,
        num_slots: int,
        device: torch.device,
        moe_gather_max_tokens: int | None = None,
    ):
        cfg, lay = model.cfg, model.layout
        self.model, self.cfg, self.lay, self.device = model, cfg, lay, device
        self.num_slots = num_slots
        self.trash = num_slots
        # decode tokens up to this count use gather + GEMV; beyond it, gathering k experts per token would
        # copy more weight bytes than running all experts once, so the dense-all path is used instead
        e_k = max(cfg.n_experts, 1) // max(cfg.top_k, 1)
        self.moe_gather_max_tokens = max(1, e_k) if moe_gather_max_tokens is None else moe_gather_max_tokens
        self.S, self.T, self.P = cfg.n_sinks, lay.turn_len, lay.n_prefill
        self.window = cfg.window_turns * self.T
        # a block writes its entries before its first query reads: P for a live prefill, T for a forced turn
        self.block = max(self.P, self.T)
        self.ring = self.window + self.block
        self.ctx = self.S + self.ring
        self.n_dec = lay.n_text_out + lay.n_audio_out - 1
        self.L, self.nkv, self.H, self.hd = cfg.n_layers, cfg.n_kv_heads, cfg.n_heads, cfg.head_dim
        self.group = self.H // self.nkv
        B, d, dev = num_slots, cfg.d_model, device
        f32 = dict(device=dev, dtype=torch.float32)
        i64 = dict(device=dev, dtype=torch.long)

        # ---- persistent per-slot state (slot num_slots is the trash slot) ----
        self.k_cache = torch.zeros(self.L, B + 1, self.nkv, self.ctx, self.hd, **f32)
        self.v_cache = torch.zeros(self.L, B + 1, self.nkv, self.ctx, self.hd, **f32)
        self.ring_pos = torch.full((B + 1, self.ctx), NEG_POS, **i64)
        self.audio_hist = torch.zeros(B, cfg.win - cfg.hop, **f32)
        self.voc_tail = torch.zeros(B, model.vocoder.tail_len, **f32)
        self.pending = torch.zeros(B, cfg.frames_per_audio_token, cfg.n_mels, **i64)
        sk = model.sink_kv()
        self.sink_k = torch.stack([k for k, _ in sk]).to(dev)  # [L, nkv, S, hd]
        self.sink_v = torch.stack([v for _, v in sk]).to(dev)
        self.sink_pos = torch.arange(self.S, **i64)

        # ---- host staging (numpy views of torch tensors; pinned when the device is a GPU) ----
        pin = dev.type == "cuda"
        spc = cfg.samples_per_chunk

        def host(shape: tuple[int, ...], dtype: torch.dtype) -> tuple[np.ndarray, Tensor, Tensor]:
            h = torch.zeros(shape, dtype=dtype, pin_memory=pin)
            d_ = h if dev.type == "cpu" else torch.zeros(shape, dtype=dtype, device=dev)
            return h.numpy(), h, d_

        fs = cfg.frame_size
        self.h_pcm, self.t_pcm, self.d_pcm = host((B, spc), torch.int16)
        self.h_video, self.t_video, self.d_video = host((B, fs, fs, 3), torch.uint8)
        self.h_has_video, self.t_has_video, self.d_has_video = host((B,), torch.bool)
        self.h_text, self.t_text, self.d_text = host((B, lay.n_text_in), torch.long)
        # positions and write indices: prefill block, one block per decode forward, the forced-turn block
        nblk, NB = 2 + self.n_dec, B * self.block
        self.forced_blk = nblk - 1
        self.h_pos, self.t_pos, self.d_pos = host((nblk, NB), torch.long)
        self.h_kvidx, self.t_kvidx, self.d_kvidx = host((nblk, NB * self.nkv), torch.long)
        self.h_rpidx, self.t_rpidx, self.d_rpidx = host((nblk, NB), torch.long)
        self.h_part, self.t_part, self.d_part = host((2, B), torch.long)  # rows, slots of the step's sessions
        self.h_ids, self.t_ids, self.d_ids = host((lay.n_text_out, B), torch.long)
        self.h_pcm_out, self.t_pcm_out, self.d_pcm_out = host((B, spc), torch.int16)
        self.h_energy, self.t_energy, self.d_energy = host((B,), torch.float32)
        # what a live step fed back (for the output's resume state) and what a forced step must feed
        n_lev = lay.n_audio_out * cfg.frames_per_audio_token * cfg.n_mels
        self.h_aout, self.t_aout, self.d_aout = host((B, n_lev), torch.uint8)
        self.h_tail, self.t_tail, self.d_tail = host((B, model.vocoder.tail_len), torch.float32)
        self.h_fids, self.t_fids, self.d_fids = host((lay.n_text_out, B), torch.long)
        self.h_flev, self.t_flev, self.d_flev = host((B, n_lev), torch.long)

        # ---- constants ----
        c = lambda v, dt=torch.float32: torch.tensor(v, dtype=dt, device=dev)  # noqa: E731
        self.c_zero, self.c_ninf = c(0.0), c(float("-inf"))
        self.c_window = c(self.window, torch.long)
        self.c_scale = c(1.0 / math.sqrt(self.hd))
        self.c_inv_d = c(1.0 / d)
        self.c_eps = c(cfg.norm_eps)
        self.c_ln_eps = c(1e-5)
        self.c_inv_temp = c(1.0 / cfg.temperature if cfg.temperature > 0 else 1.0)
        self.c_half, self.c_center = c(model.flow.half), c(model.flow.center)
        self.c_flow_temp = c(cfg.flow_temperature)
        self.c_i16 = c(32767.0)
        self.c_inv_melsum = c(1.0 / (cfg.frames_per_chunk * cfg.n_mels))
        self.c_one = c(1.0)
        self.sink_col = torch.zeros(self.ctx, dtype=torch.bool, device=dev)
        self.sink_col[: self.S] = True
        self.inv_freq = model.transformer.inv_freq.to(dev)
        self.emb_base = model.audio_in_emb.base.to(dev)  # [fpt * mels]

        # per-token offsets for the prefill ([last audio-out of previous turn, IN .. OUT]) and decode tokens
        off = model.offset_emb.detach()
        self.pre_offset = (
            torch.cat([off[self.T - 1 : self.T], off[: lay.out_marker + 1]]).to(dev).contiguous()
        )
        dec_offsets = [lay.text_out + j for j in range(lay.n_text_out)] + [
            lay.audio_out + j for j in range(lay.n_audio_out - 1)
        ]
        self.dec_offset = off[dec_offsets].to(dev).contiguous()  # [n_dec, d]
        # flow head: time embedding through in_t plus in_x's bias, per Euler step
        fl = model.flow
        ts = torch.arange(cfg.flow_steps, dtype=torch.float32) / cfg.flow_steps
        with torch.no_grad():
            self.flow_tproj = (fl.in_t(time_embedding(ts.to(dev))) + fl.in_x.bias).contiguous()
        self.c_dt = 1.0 / cfg.flow_steps

        # ---- flat work buffers ----
        N = B * self.block
        ff = cfg.d_ff if cfg.n_experts == 0 else cfg.d_ff_expert
        E, K = max(cfg.n_experts, 1), cfg.top_k
        hh = self.hd // 2
        G = min(B, self.moe_gather_max_tokens)  # gathered expert weights are only needed for this many tokens
        F_ = cfg.frames_per_chunk
        nb = cfg.win // 2 + 1
        lvl = cfg.n_levels
        fpt, nm = cfg.frames_per_audio_token, cfg.n_mels
        sizes = {
            "x": N * d,
            "h": N * d,
            "tmpd": N * d,
            "sq": N * d,
            "stat": N,
            "q": N * self.H * self.hd,
            "qb": N * self.H * self.hd,
            "k": N * self.nkv * self.hd,
            "krot": N * self.nkv * self.hd,
            "v": N * self.nkv * self.hd,
            "scores": N * self.H * self.ctx,
            "probs": N * self.H * self.ctx,
            "ob": N * self.H * self.hd,
            "ao": N * self.H * self.hd,
            "maskf": N * self.ctx,
            "posf": N,
            "ang": N * hh,
            "cos": N * hh,
            "sin": N * hh,
            "ff_a": N * (ff * E if cfg.n_experts else ff),
            "ff_b": N * (ff * E if cfg.n_experts else ff),
            "router": N * E,
            "topv": N * K,
            "topw": N * K,
            "gate": N * E,
            "xr": B * K * d,
            "wg": G * K * ff * d if cfg.n_experts else 1,
            "wu": G * K * ff * d if cfg.n_experts else 1,
            "wd": G * K * ff * d if cfg.n_experts else 1,
            "hg": B * K * ff,
            "hu": B * K * ff,
            "yg": B * K * d,
            "sig": B * (cfg.win - cfg.hop + spc),
            "frames": B * F_ * cfg.win,
            "spec": B * F_ * 2 * nb,
            "power": B * F_ * nb,
            "logmel": B * F_ * nm,
            "lscratch": B * F_ * nm,
            "onehot": B * lay.n_audio_in * fpt * nm * lvl,
            "embtmp": B * max(lay.n_audio_in, lay.n_text_in, 1) * d,
            "cells": B * lay.n_video * cfg.patch * cfg.patch * 3,
            "v1": B * lay.n_video * 16 * cfg.hmlp_dims[0],
            "v1s": B * lay.n_video * 16 * cfg.hmlp_dims[0],
            "v2": B * lay.n_video * 4 * cfg.hmlp_dims[1],
            "v2s": B * lay.n_video * 4 * cfg.hmlp_dims[1],
            "vstat": B * lay.n_video * 16,
            "vtok": B * lay.n_video * d,
            "logits": B * tk.VOCAB_SIZE,
            "gumbel": B * lay.n_text_out * tk.VOCAB_SIZE,
            "noise": B * lay.n_audio_out * cfg.mel_dim,
            "cpart": B * cfg.flow_hidden,
            "fx": B * cfg.mel_dim,
            "fh": B * cfg.flow_hidden,
            "fh2": B * cfg.flow_hidden,
            "fv": B * cfg.mel_dim,
            "melout": B * F_ * nm,
            "pcmf": B * spc,
            "hist_rows": B * (cfg.win - cfg.hop),
            "tail_rows": B * model.vocoder.tail_len,
            "commit": B * max(spc, fpt * nm * lvl),
        }
        self.buf = {k: torch.zeros(v, **f32) for k, v in sizes.items()}
        self.f64 = {k: torch.zeros(N * hh, device=dev, dtype=torch.float64) for k in ("posf", "ang", "cs")}
        lsizes = {
            "qlo": N,
            "topi": N * K,
            "gidx": B * K,
            "lev": B * F_ * nm,
            "ohidx": B * lay.n_audio_in * fpt * nm,
            "aout": B * lay.n_audio_out * fpt * nm,
            "commit": B * fpt * nm,
        }
        self.lbuf = {k: torch.zeros(v, **i64) for k, v in lsizes.items()}
        self.mask_a = torch.zeros(N * self.ctx, dtype=torch.bool, device=dev)
        self.mask_b = torch.zeros(N * self.ctx, dtype=torch.bool, device=dev)
        self.ones_oh = torch.ones(B * lay.n_audio_in * fpt * nm, **f32)
        self.voc_ws = model.vocoder.workspace(B, dev)
        self._ln_const = {c_: torch.tensor(1.0 / c_, device=dev) for c_ in cfg.hmlp_dims}
        self.gens: list[torch.Generator] = [torch.Generator(device=dev) for _ in range(B)]
        self.records: list[dict[str, Tensor]] | None = None  # set by the engine when recording

    # ---- helpers ----------------------------------------------------------------------------------
    def b(self, name: str, *shape: int) -> Tensor:
        n = math.prod(shape)
        return self.buf[name][:n].view(*shape)

    def lb(self, name: str, *shape: int) -> Tensor:
        n = math.prod(shape)
        return self.lbuf[name][:n].view(*shape)

    def _rmsnorm(self, x: Tensor, w: Tensor, out: Tensor) -> None:
        n = x.shape[0]
        sq, stat = self.b("sq", *x.shape), self.b("stat", n, 1)
        torch.mul(x, x, out=sq)
        torch.sum(sq, -1, keepdim=True, out=stat)
        stat.mul_(self.c_inv_d).add_(self.c_eps).rsqrt_()
        torch.mul(x, stat, out=out)
        out.mul_(w)

    def _layernorm_(
        self, x: Tensor, w: Tensor, bias: Tensor, scratch: Tensor, stat: Tensor, inv_c: Tensor
    ) -> None:
        torch.sum(x, -1, keepdim=True, out=stat)
        stat.mul_(inv_c)
        x.sub_(stat)
        torch.mul(x, x, out=scratch)
        torch.sum(scratch, -1, keepdim=True, out=stat)
        stat.mul_(inv_c).add_(self.c_ln_eps).rsqrt_()
        x.mul_(stat).mul_(w).add_(bias)

    # ---- slot lifecycle ---------------------------------------------------------------------------
    def reset_slot(self, slot: int) -> None:
        """Fresh session state: sinks in place, ring empty, zero audio history."""
        self.k_cache[:, slot, :, : self.S].copy_(self.sink_k)
        self.v_cache[:, slot, :, : self.S].copy_(self.sink_v)
        self.ring_pos[slot, : self.S].copy_(self.sink_pos)
        self.ring_pos[slot, self.S :].fill_(NEG_POS)
        self.audio_hist[slot].zero_()
        self.voc_tail[slot].zero_()
        self.pending[slot].zero_()

    def slot_state(self, slot: int) -> dict[str, Tensor]:
        """Copies of one slot's device state (tests and debugging; allocates)."""
        return {
            "k": self.k_cache[:, slot].clone(),
            "v": self.v_cache[:, slot].clone(),
            "ring_pos": self.ring_pos[slot].clone(),
            "audio_hist": self.audio_hist[slot].clone(),
            "voc_tail": self.voc_tail[slot].clone(),
            "pending": self.pending[slot].clone(),
        }

    # ---- the step ---------------------------------------------------------------------------------
    @torch.no_grad()
    def run(self, lo: int, rows: int, n_part: int, seeds: list[tuple[int, int]]) -> None:
        """Run one micro-turn for rows ``[0, rows)`` (slots ``lo ..``); staging arrays are filled by the
        caller. ``seeds`` lists (row, sampling seed) for the participating rows."""
        cfg, lay = self.cfg, self.lay
        Bw, P, d = rows, self.P, cfg.d_model
        self._upload()
        # per-session randomness: Gumbel noise for text, Euler start noise for audio
        gum = self.b("gumbel", self.num_slots, lay.n_text_out, tk.VOCAB_SIZE)
        noise = self.b("noise", self.num_slots, lay.n_audio_out, cfg.mel_dim)
        for r, seed in seeds:
            g = self.gens[r]
            g.manual_seed(seed)
            torch.rand(lay.n_text_out, tk.VOCAB_SIZE, generator=g, out=gum[r])
            torch.randn(lay.n_audio_out, cfg.mel_dim, generator=g, out=noise[r])
            noise[r].mul_(self.c_flow_temp)
        gw = gum[:Bw]
        gw.clamp_(min=1e-10, max=1.0 - 1e-7).log_().neg_().log_().neg_()

        x = self.b("x", Bw, P, d)
        self._embed_prefill(lo, Bw, x)
        hidden = self._forward(lo, Bw, P, 0, moe_gather=False)
        last = hidden.view(Bw, P, d)[:, P - 1]
        rec = self.records
        if rec is not None:
            rec.append({"hidden_pre": hidden.view(Bw, P, d).clone()})
        emb_w = self.model.tok_emb.weight
        for j in range(lay.n_text_out):
            self._sample_text(last, j, Bw)
            x1 = self.b("x", Bw, d)
            torch.index_select(emb_w, 0, self.d_ids[j, :Bw], out=x1)
            x1.add_(self.dec_offset[j])
            hidden = self._forward(lo, Bw, 1, 1 + j, moe_gather=True)
            last = hidden
        for j in range(lay.n_audio_out):
            self._flow(last, j, Bw)
            if rec is not None:
                rec[-1][f"cond{j}"] = last.clone()
            if j == lay.n_audio_out - 1:
                break
            x1 = self.b("x", Bw, d)
            self._embed_audio_out(self.lb("aout", Bw, lay.n_audio_out, cfg.mel_dim)[:, j], Bw, x1)
            x1.add_(self.dec_offset[lay.n_text_out + j])
            hidden = self._forward(lo, Bw, 1, 1 + lay.n_text_out + j, moe_gather=True)
            last = hidden
        # vocoder, speaking energy, outputs
        mel = self.b("melout", Bw, cfg.frames_per_chunk, cfg.n_mels)
        tail = self.b("tail_rows", Bw, self.model.vocoder.tail_len)
        tail.copy_(self.voc_tail[lo : lo + Bw])
        pcmf = self.b("pcmf", Bw, cfg.samples_per_chunk)
        self.model.vocoder.chunk_(self.voc_ws, Bw, mel, tail, pcmf)
        torch.sum(mel.view(Bw, -1), -1, out=self.d_energy[:Bw])
        self.d_energy[:Bw].mul_(self.c_inv_melsum)
        pcmf.mul_(self.c_i16).round_()
        self.d_pcm_out[:Bw].copy_(pcmf)
        # commit the participating rows' small state
        rows_i, slots_i = self.d_part[0, :n_part], self.d_part[1, :n_part]
        self._commit(self.audio_hist, self.b("hist_rows", Bw, self.audio_hist.shape[1]), rows_i, slots_i)
        self._commit(self.voc_tail, tail, rows_i, slots_i)
        aout = self.lb("aout", Bw, lay.n_audio_out, cfg.frames_per_audio_token, cfg.n_mels)
        tmp = self.lb("commit", n_part, cfg.frames_per_audio_token, cfg.n_mels)
        torch.index_select(aout[:, lay.n_audio_out - 1], 0, rows_i, out=tmp)
        self.pending.index_copy_(0, slots_i, tmp)
        self.d_aout[:Bw].copy_(aout.view(Bw, -1))
        self.d_tail[:Bw].copy_(tail)
        if self.device.type != "cpu":
            for h, d_ in (
                (self.t_ids, self.d_ids),
                (self.t_pcm_out, self.d_pcm_out),
                (self.t_energy, self.d_energy),
                (self.t_aout, self.d_aout),
                (self.t_tail, self.d_tail),
            ):
                h.copy_(d_)

    @torch.no_grad()
    def run_forced(self, lo: int, rows: int, n_part: int, n_layers: int | None = None) -> None:
        """Rebuild one micro-turn of rows ``[0, rows)`` whose every token is known: the input chunk plus
        the staged text-in ids (``h_text``), text-out ids (``h_fids``) and audio-out levels (``h_flev``)
        the model produced when it ran live. One forward over the whole turn writes its KV; the audio
        history and the fed-back audio token are committed; the vocoder tail is not (the caller restores
        it from the last rebuilt turn). Only the KV of the first ``n_layers`` layers is written (the
        rest is not needed yet, see ``Engine.kv_layers``), and the top one's attention and feed-forward
        are skipped: nothing reads this turn's output."""
        cfg, lay = self.cfg, self.lay
        Bw, P, T, d = rows, self.P, self.T, cfg.d_model
        self._upload((self.t_fids, self.d_fids), (self.t_flev, self.d_flev))
        x = self.b("x", Bw, T, d)
        self._embed_prefill(lo, Bw, x[:, :P])
        tmp = self.b("embtmp", Bw, d)
        nt = lay.n_text_out
        for j in range(nt):
            torch.index_select(self.model.tok_emb.weight, 0, self.d_fids[j, :Bw], out=tmp)
            torch.add(tmp, self.dec_offset[j], out=x[:, P + j])
        lev = self.d_flev[:Bw].view(Bw, lay.n_audio_out, cfg.frames_per_audio_token * cfg.n_mels)
        for j in range(lay.n_audio_out - 1):
            self._embed_audio_out(lev[:, j], Bw, tmp)
            torch.add(tmp, self.dec_offset[nt + j], out=x[:, P + nt + j])
        self._forward(lo, Bw, T, self.forced_blk, moe_gather=False, kv_layers=n_layers or self.L)
        rows_i, slots_i = self.d_part[0, :n_part], self.d_part[1, :n_part]
        self._commit(self.audio_hist, self.b("hist_rows", Bw, self.audio_hist.shape[1]), rows_i, slots_i)
        last = self.lb("commit", n_part, cfg.frames_per_audio_token * cfg.n_mels)
        torch.index_select(lev[:, lay.n_audio_out - 1], 0, rows_i, out=last)
        self.pending.view(self.num_slots, -1).index_copy_(0, slots_i, last)

    def _upload(self, *extra: tuple[Tensor, Tensor]) -> None:
        """Copy the staged inputs to the device (nothing to do on the CPU: staging is the tensor)."""
        if self.device.type == "cpu":
            return
        for h, d_ in (
            (self.t_pcm, self.d_pcm),
            (self.t_video, self.d_video),
            (self.t_has_video, self.d_has_video),
            (self.t_text, self.d_text),
            (self.t_pos, self.d_pos),
            (self.t_kvidx, self.d_kvidx),
            (self.t_rpidx, self.d_rpidx),
            (self.t_part, self.d_part),
            *extra,
        ):
            d_.copy_(h, non_blocking=True)

    def _commit(self, state: Tensor, rows_buf: Tensor, rows_i: Tensor, slots_i: Tensor) -> None:
        n = rows_i.shape[0]
        tmp = self.b("commit", n, *rows_buf.shape[1:])
        torch.index_select(rows_buf, 0, rows_i, out=tmp)
        state.index_copy_(0, slots_i, tmp)

    # ---- embeddings -------------------------------------------------------------------------------
    def _dmel_embed(self, levels: Tensor, table: Tensor, out: Tensor) -> None:
        """levels [n, fpt*mels] (long) -> out [n, d] = sum of the table rows (one-hot product)."""
        n = levels.shape[0]
        idx = self.lb("ohidx", n, levels.shape[1])
        torch.add(levels, self.emb_base, out=idx)
        oh = self.b("onehot", n, table.shape[0])
        oh.zero_()
        oh.scatter_(1, idx, self.ones_oh[: idx.numel()].view(n, -1))
        torch.mm(oh, table, out=out)

    def _embed_audio_out(self, levels: Tensor, Bw: int, out: Tensor) -> None:
        self._dmel_embed(levels.reshape(Bw, -1), self.model.audio_out_emb.weight, out)

    def _embed_prefill(self, lo: int, Bw: int, x: Tensor) -> None:
        cfg, lay, m = self.cfg, self.lay, self.model
        d = cfg.d_model
        tmp = self.b("embtmp", Bw, d)
        # 0: previous turn's last audio-out token
        self._dmel_embed(self.pending[lo : lo + Bw].view(Bw, -1), m.audio_out_emb.weight, tmp)
        x[:, 0].copy_(tmp)
        x[:, 1 + lay.in_marker].copy_(m.tok_emb.weight[tk.IN].expand(Bw, d))
        x[:, 1 + lay.out_marker].copy_(m.tok_emb.weight[tk.OUT].expand(Bw, d))
        # video
        v0 = 1 + lay.video
        if self.h_has_video[:Bw].any():  # (host staging) a voice-only step skips the hMLP
            vt = self._hmlp(Bw)
            torch.where(
                self.d_has_video[:Bw].view(Bw, 1, 1),
                vt,
                m.no_video.unsqueeze(0),
                out=x[:, v0 : v0 + lay.n_video],
            )
        else:
            x[:, v0 : v0 + lay.n_video].copy_(m.no_video.expand(Bw, -1, -1))
        # audio in: featurise (causal frames with the slot's history) -> levels -> one-hot embedding
        lev = self._featurize(lo, Bw)
        na = lay.n_audio_in
        at = self.b("embtmp", Bw * na, d)
        self._dmel_embed(lev.view(Bw * na, -1), m.audio_in_emb.weight, at)
        a0 = 1 + lay.audio_in
        x[:, a0 : a0 + na].copy_(at.view(Bw, na, d))
        # text in
        nt = lay.n_text_in
        tt = self.b("embtmp", Bw * nt, d)
        torch.index_select(m.tok_emb.weight, 0, self.d_text[:Bw].view(-1), out=tt)
        t0 = 1 + lay.text_in
        x[:, t0 : t0 + nt].copy_(tt.view(Bw, nt, d))
        x.add_(self.pre_offset)

    def _featurize(self, lo: int, Bw: int) -> Tensor:
        cfg, dm = self.cfg, self.model.dmel
        hist, F_, nm = cfg.win - cfg.hop, cfg.frames_per_chunk, cfg.n_mels
        sig = self.b("sig", Bw, hist + cfg.samples_per_chunk)
        sig[:, :hist].copy_(self.audio_hist[lo : lo + Bw])
        sig[:, hist:].copy_(self.d_pcm[:Bw])
        sig[:, hist:].mul_(dm.c_pcm)
        frames = self.b("frames", Bw, F_, cfg.win)
        frames.copy_(sig.unfold(1, cfg.win, cfg.hop))
        lm = self.b("logmel", Bw * F_, nm)
        dm.logmel_(
            frames.view(Bw * F_, cfg.win),
            self.b("spec", Bw * F_, 2 * dm.n_bins),
            self.b("power", Bw * F_, dm.n_bins),
            lm,
        )
        lev = self.lb("lev", Bw * F_, nm)
        dm.quantize_(lm, self.b("lscratch", Bw * F_, nm), lev)
        self.b("hist_rows", Bw, hist).copy_(sig[:, sig.shape[1] - hist :])
        return lev

    def _hmlp(self, Bw: int) -> Tensor:
        cfg, hm = self.cfg, self.model.hmlp
        nv, c1, c2 = self.lay.n_video, cfg.hmlp_dims[0], cfg.hmlp_dims[1]
        py = cfg.frame_size // cfg.patch
        cell = cfg.hmlp_cell
        cells = self.b("cells", Bw, py, py, 2, 2, 2, 2, cell, cell, 3)
        cells.copy_(cells_view(self.d_video[:Bw], cfg.patch, cell))
        cells.mul_(hm.c_scale).add_(hm.c_shift)
        n1 = Bw * nv * 16
        h1 = self.b("v1", n1, c1)
        torch.addmm(hm.fc1.bias, cells.view(n1, -1), hm.fc1.weight.t(), out=h1)
        self._layernorm_(
            h1, hm.ln1.weight, hm.ln1.bias, self.b("v1s", n1, c1), self.b("vstat", n1, 1), self._inv(c1)
        )
        F.silu(h1, inplace=True)
        n2 = Bw * nv * 4
        h2 = self.b("v2", n2, c2)
        torch.addmm(hm.fc2.bias, h1.view(n2, 4 * c1), hm.fc2.weight.t(), out=h2)
        self._layernorm_(
            h2, hm.ln2.weight, hm.ln2.bias, self.b("v2s", n2, c2), self.b("vstat", n2, 1), self._inv(c2)
        )
        F.silu(h2, inplace=True)
        vt = self.b("vtok", Bw, nv, cfg.d_model)
        torch.addmm(hm.fc3.bias, h2.view(Bw * nv, 4 * c2), hm.fc3.weight.t(), out=vt.view(Bw * nv, -1))
        vt.add_(self.model.video_pos)
        return vt

    def _inv(self, c: int) -> Tensor:
        return self._ln_const[c]

    # ---- transformer ------------------------------------------------------------------------------
    def _forward(
        self, lo: int, Bw: int, tq: int, blk_i: int, moe_gather: bool, kv_layers: int | None = None
    ) -> Tensor:
        """Run the layers over ``x`` (already embedded) for block ``blk_i`` of positions/write indices.
        Returns the final-normed hidden states [Bw * tq, d] (a view of a work buffer); with
        ``kv_layers`` it only writes the KV of that many layers and returns nothing useful."""
        cfg = self.cfg
        d, nkv, H, hd, g, ctx = cfg.d_model, self.nkv, self.H, self.hd, self.group, self.ctx
        hh = hd // 2
        N = Bw * tq
        x = self.b("x", N, d)
        pos = self.d_pos[blk_i, :N].view(Bw, tq)
        kvidx = self.d_kvidx[blk_i, : N * nkv]
        rpidx = self.d_rpidx[blk_i, :N]
        # ring positions first: the new tokens are visible to themselves (causal within the chunk)
        self.ring_pos.view(-1).index_copy_(0, rpidx, pos.reshape(-1))
        rp = self.ring_pos[lo : lo + Bw].view(Bw, 1, ctx)
        ma = self.mask_a[: N * ctx].view(Bw, tq, ctx)
        mb = self.mask_b[: N * ctx].view(Bw, tq, ctx)
        qlo = self.lb("qlo", Bw, tq)
        torch.le(rp, pos.view(Bw, tq, 1), out=ma)
        torch.sub(pos, self.c_window, out=qlo)
        torch.gt(rp, qlo.view(Bw, tq, 1), out=mb)
        ma.logical_and_(mb).logical_or_(self.sink_col)
        maskf = self.b("maskf", Bw, tq, ctx)
        torch.where(ma, self.c_zero, self.c_ninf, out=maskf)
        # RoPE tables (angles in float64, like the model)
        posf = self.f64["posf"][:N].view(Bw, tq, 1)
        posf.copy_(pos.view(Bw, tq, 1))
        ang = self.f64["ang"][: N * hh].view(Bw, tq, hh)
        torch.mul(posf, self.inv_freq, out=ang)
        cs = self.f64["cs"][: N * hh].view(Bw, tq, hh)
        cos, sin = self.b("cos", Bw, tq, hh), self.b("sin", Bw, tq, hh)
        torch.cos(ang, out=cs)
        cos.copy_(cs)
        torch.sin(ang, out=cs)
        sin.copy_(cs)
        cq, sq_ = cos.view(Bw, tq, 1, 1, hh), sin.view(Bw, tq, 1, 1, hh)
        ck, sk = cos.view(Bw, tq, 1, hh), sin.view(Bw, tq, 1, hh)

        h = self.b("h", N, d)
        tmpd = self.b("tmpd", N, d)
        q = self.b("q", N, H * hd)
        k = self.b("k", N, nkv * hd)
        v = self.b("v", N, nkv * hd)
        krot = self.b("krot", Bw, tq, nkv, hd)
        qb = self.b("qb", Bw, nkv, g, tq, hd)
        qbp = qb.permute(0, 3, 1, 2, 4)
        sc = self.b("scores", Bw * nkv, g * tq, ctx)
        pr = self.b("probs", Bw * nkv, g * tq, ctx)
        ob = self.b("ob", Bw * nkv, g * tq, hd)
        ao = self.b("ao", Bw, tq, nkv, g, hd)
        for li, blk in enumerate(self.model.transformer.blocks):
            at = blk.attn
            self._rmsnorm(x, blk.attn_norm.weight, h)
            torch.mm(h, at.wk.weight.t(), out=k)
            torch.mm(h, at.wv.weight.t(), out=v)
            kv_ = k.view(Bw, tq, nkv, hd)
            k1, k2 = kv_[..., :hh], kv_[..., hh:]
            torch.mul(k1, ck, out=krot[..., :hh])
            krot[..., :hh].addcmul_(k2, sk, value=-1.0)
            torch.mul(k1, sk, out=krot[..., hh:])
            krot[..., hh:].addcmul_(k2, ck)
            kc, vc = self.k_cache[li], self.v_cache[li]
            kc.view(-1, hd).index_copy_(0, kvidx, krot.view(-1, hd))
            vc.view(-1, hd).index_copy_(0, kvidx, v.view(-1, hd))
            if kv_layers is not None and li == kv_layers - 1:
                return x  # the KV is written; nothing reads this layer's output
            torch.mm(h, at.wq.weight.t(), out=q)
            qv = q.view(Bw, tq, nkv, g, hd)
            q1, q2 = qv[..., :hh], qv[..., hh:]
            torch.mul(q1, cq, out=qbp[..., :hh])
            qbp[..., :hh].addcmul_(q2, sq_, value=-1.0)
            torch.mul(q1, sq_, out=qbp[..., hh:])
            qbp[..., hh:].addcmul_(q2, cq)
            qb.mul_(self.c_scale)
            K = kc[lo : lo + Bw].view(Bw * nkv, ctx, hd)
            V = vc[lo : lo + Bw].view(Bw * nkv, ctx, hd)
            torch.bmm(qb.view(Bw * nkv, g * tq, hd), K.transpose(1, 2), out=sc)
            sc.view(Bw, nkv, g, tq, ctx).add_(maskf.view(Bw, 1, 1, tq, ctx))
            torch.softmax(sc, -1, out=pr)
            torch.bmm(pr, V, out=ob)
            ao.copy_(ob.view(Bw, nkv, g, tq, hd).permute(0, 3, 1, 2, 4))
            torch.mm(ao.view(N, H * hd), at.wo.weight.t(), out=tmpd)
            x.add_(tmpd)
            self._rmsnorm(x, blk.ffn_norm.weight, h)
            if isinstance(blk.ffn, MoE):
                if moe_gather and self.moe_gather_max_tokens >= N:
                    self._moe_gather(blk.ffn, h, tmpd)
                else:
                    self._moe_dense(blk.ffn, h, tmpd)
            else:
                f = blk.ffn
                ff = f.w_gate.weight.shape[0]
                a, b_ = self.b("ff_a", N, ff), self.b("ff_b", N, ff)
                torch.mm(h, f.w_gate.weight.t(), out=a)
                torch.mm(h, f.w_up.weight.t(), out=b_)
                F.silu(a, inplace=True)
                a.mul_(b_)
                torch.mm(a, f.w_down.weight.t(), out=tmpd)
            x.add_(tmpd)
        out = self.b("h", N, d)
        self._rmsnorm(x, self.model.transformer.norm.weight, out)
        return out

    def _route(self, moe: MoE, h: Tensor) -> tuple[Tensor, Tensor]:
        n, k = h.shape[0], moe.top_k
        logits = self.b("router", n, moe.n_experts)
        torch.mm(h, moe.router.weight.t(), out=logits)
        topv, topi, topw = self.b("topv", n, k), self.lb("topi", n, k), self.b("topw", n, k)
        torch.topk(logits, k, dim=-1, out=(topv, topi))
        torch.softmax(topv, -1, out=topw)
        return topw, topi

    def _moe_gather(self, moe: MoE, h: Tensor, out: Tensor) -> None:
        """Gather + GEMV: per token, copy its k experts' weights and do matrix-vector products."""
        n, k, f, d = h.shape[0], moe.top_k, moe.d_ff, moe.d
        w, idx = self._route(moe, h)
        flat = idx.view(-1)
        wg, wu, wd = self.b("wg", n * k, f, d), self.b("wu", n * k, f, d), self.b("wd", n * k, f, d)
        torch.index_select(moe.w_gate, 0, flat, out=wg)
        torch.index_select(moe.w_up, 0, flat, out=wu)
        torch.index_select(moe.w_down, 0, flat, out=wd)
        xr = self.b("xr", n, k, d)
        xr.copy_(h.view(n, 1, d).expand(n, k, d))
        hg, hu = self.b("hg", n * k, f, 1), self.b("hu", n * k, f, 1)
        torch.bmm(wg, xr.view(n * k, d, 1), out=hg)
        torch.bmm(wu, xr.view(n * k, d, 1), out=hu)
        F.silu(hg, inplace=True)
        hg.mul_(hu)
        yg = self.b("yg", n * k, 1, d)
        torch.bmm(hg.view(n * k, 1, f), wd, out=yg)
        yv = yg.view(n, k, d)
        yv.mul_(w.view(n, k, 1))
        torch.sum(yv, 1, out=out)

    def _moe_dense(self, moe: MoE, h: Tensor, out: Tensor) -> None:
        """All experts on every token, combined by a dense gate matrix (prefill)."""
        n, e, f = h.shape[0], moe.n_experts, moe.d_ff
        w, idx = self._route(moe, h)
        gate = self.b("gate", n, e)
        gate.zero_()
        gate.scatter_(1, idx, w)
        a, b_ = self.b("ff_a", n, e * f), self.b("ff_b", n, e * f)
        torch.mm(h, moe.w_gate.view(e * f, -1).t(), out=a)
        torch.mm(h, moe.w_up.view(e * f, -1).t(), out=b_)
        F.silu(a, inplace=True)
        a.mul_(b_)
        a.view(n, e, f).mul_(gate.view(n, e, 1))
        torch.mm(a, moe.w_down.view(e * f, -1), out=out)

    # ---- heads ------------------------------------------------------------------------------------
    def _sample_text(self, hidden: Tensor, j: int, Bw: int) -> None:
        logits = self.b("logits", Bw, tk.VOCAB_SIZE)
        torch.mm(hidden, self.model.lm_head.weight.t(), out=logits)
        if self.records is not None:
            self.records[-1][f"logits{j}"] = logits.clone()
        if self.cfg.temperature > 0:
            logits.mul_(self.c_inv_temp)
            logits.add_(self.b("gumbel", self.num_slots, self.lay.n_text_out, tk.VOCAB_SIZE)[:Bw, j])
        torch.argmax(logits, dim=-1, out=self.d_ids[j, :Bw])

    def _flow(self, cond: Tensor, j: int, Bw: int) -> None:
        cfg, fl = self.cfg, self.model.flow
        cpart = self.b("cpart", Bw, cfg.flow_hidden)
        torch.mm(cond, fl.in_c.weight.t(), out=cpart)
        xx = self.b("fx", Bw, cfg.mel_dim)
        xx.copy_(self.b("noise", self.num_slots, self.lay.n_audio_out, cfg.mel_dim)[:Bw, j])
        fh, fh2, fv = (
            self.b("fh", Bw, cfg.flow_hidden),
            self.b("fh2", Bw, cfg.flow_hidden),
            self.b("fv", Bw, cfg.mel_dim),
        )
        for i in range(cfg.flow_steps):
            torch.addmm(cpart, xx, fl.in_x.weight.t(), out=fh)
            fh.add_(self.flow_tproj[i])
            F.silu(fh, inplace=True)
            torch.addmm(fl.fc.bias, fh, fl.fc.weight.t(), out=fh2)
            F.silu(fh2, inplace=True)
            torch.addmm(fl.out.bias, fh2, fl.out.weight.t(), out=fv)
            xx.add_(fv, alpha=self.c_dt)
        fpt = cfg.frames_per_audio_token
        mel = self.b("melout", Bw, cfg.frames_per_chunk, cfg.n_mels)[:, j * fpt : (j + 1) * fpt]
        mv = xx.view(Bw, fpt, cfg.n_mels)
        mv.mul_(self.c_half).add_(self.c_center).clamp_(cfg.log_min, cfg.log_max)
        lev = self.lb("aout", Bw, self.lay.n_audio_out, fpt, cfg.n_mels)[:, j]
        self.model.dmel.quantize_(mv, self.b("fv", Bw, fpt, cfg.n_mels), lev)
        # the vocoder gets the mel snapped to the dMel levels the model was trained on (its targets are
        # level centres): the flow head's small errors, a constant hiss over "silence", round away
        self.model.dmel.dequantize_(lev, mel)
