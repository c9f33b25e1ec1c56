"""The executor: one batched micro-turn over preallocated buffers (no tensor allocation in steady state).

Everything the step touches is allocated here once: the per-slot KV ring (keys stored already rotated),
ring positions, audio/vocoder history, and work buffers sized for all slots at the longest token count
(flat ones here, and each model module's workspace). Ops write with ``out=`` or in place; scalars are 0-dim
constant tensors (a Python scalar in an arithmetic op makes a temporary tensor).

The model math is the modules' own streaming steps, next to their ``forward`` (``DMel.levels_``,
``InteractionModel.embed_prefill_``, ``RMSNorm.forward_``, ``Attention.kv_`` / ``attend_``,
``SwiGLU.step_``, ``MoE.gather_gemv_`` / ``dense_all_``, ``FlowHead.sample_``, ``GriffinLim.chunk_``),
each tested equal to its forward; this file is orchestration: buffers, the KV-ring layout and masks, the
block loop, sampling noise and the commit of each session's small state.

The boundary: the scheduler (``engine.py``) hands ``execute`` a ``StepPlan`` (slots, chunk indices, seeds,
inputs) and gets a ``StepResult`` back. Everything about rows, positions, the KV layout and ring indices
is derived here, into numpy staging arrays that alias (pinned) torch tensors.

Rows and slots: a step covers the contiguous slot range ``[lo, lo + rows)`` that contains all its sessions
(slots are handed out lowest-first, so this is usually exactly the active sessions). Row ``r`` is slot
``lo + r``. Rows whose slot is not in the step ("holes") are computed on dummy input and discarded: their
KV writes go to a spare trash slot and their small state is never committed. Attention then reads each
row's own KV as a plain view of the cache range, so no KV is ever copied or gathered.

Precision (``interaction.precision``): fp32, or bf16 copies of the attention projections, feed-forward /
MoE and flow-head weights made once at init, with those layers' activations in bf16 and everything else
(norms, residual stream, KV ring, RoPE, attention scores and softmax, sampling, featuriser, vocoder) in
fp32; the same at every batch size (batch invariance; a bf16 MoE engine also fixes its decode path by
capacity). ``stage_timer`` (a ``StageTimer``, None in serving) times each stage of a live step.

Two kinds of step share the buffers: ``run`` (a live micro-turn: prefill, then one forward per output
token, sampling as it goes) and ``run_forced`` (rebuilding a session: every token of the micro-turn is
known — what the model fed back to itself travels with the output chunk — so the whole turn is one
forward and nothing is sampled or vocoded).
"""

from __future__ import annotations

import copy
import math
import time
from collections import defaultdict

import numpy as np
import torch
from torch import Tensor

from microturn.engine.types import StepObserver, StepPlan, StepResult
from microturn.model import tokens as tk
from microturn.model.flow import FlowHead
from microturn.model.model import InteractionModel
from microturn.model.moe import MoE
from microturn.model.transformer import rope_cos_sin_

PRECISIONS = ("fp32", "bf16")  # the engine's arithmetic (``interaction.precision``)
NEG_POS = -(2**40)  # ring position of an empty entry: never inside any window
EMB_CHUNK_CPU = 16  # dMel tokens per embedding gather on a CPU (16 x 320 rows of d: cache-sized; measured)


class StageTimer:
    """Wall time per stage of live steps (``benchmarks/bench_engine.py``): set ``Executor.stage_timer``
    to one; ``lap(name)`` adds the time since the previous lap to ``totals[name]``. Serving leaves the
    attribute None and the step only tests it (no clock reads, no allocation)."""

    STAGES = ("stage", "featurise", "embed", "prefill", "decode", "sample", "flow", "vocoder", "commit")

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self.steps = 0
        self._t = 0.0

    def start(self) -> None:
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.totals[name] += now - self._t
        self._t = now

    def reset(self) -> None:
        self.totals.clear()
        self.steps = 0


class Executor:
    def __init__(
        self,
        model: InteractionModel,
        num_slots: int,
        device: torch.device,
        moe_gather_max_tokens: int | None = None,
        precision: str = "fp32",
    ):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.precision = precision
        # bf16: copies of the matmul-heavy weights (attention projections, feed-forward / MoE, flow head)
        # made once here; their activations are bf16, everything else stays fp32 (see _low_precision)
        self.wdt = torch.bfloat16 if precision == "bf16" else torch.float32
        self.blocks, self.flow = self._low_precision(model)
        self.stage_timer: StageTimer | None = None  # benchmark instrumentation; None costs nothing
        cfg, lay = model.cfg, model.layout
        self.model, self.cfg, self.lay, self.device = model, cfg, lay, device
        self.num_slots = num_slots
        self.trash = num_slots
        # decode tokens up to this count use gather + GEMV; beyond it, gathering k experts per token would
        # copy more weight bytes than running all experts once, so the dense-all path is used instead
        e_k = max(cfg.n_experts, 1) // max(cfg.top_k, 1)
        self.moe_gather_max_tokens = max(1, e_k) if moe_gather_max_tokens is None else moe_gather_max_tokens
        if moe_gather_max_tokens is None and precision != "fp32":
            # bf16 rounds the two decode paths apart by more than batch invariance allows (a dMel level
            # flips), so a low-precision engine takes one path at every batch size, chosen by capacity
            self.moe_gather_max_tokens = num_slots if num_slots <= max(1, e_k) else 0
        self.S, self.T, self.P = cfg.n_sinks, lay.turn_len, lay.n_prefill
        self.window = cfg.window_turns * self.T
        # a block writes its entries before its first query reads: P for a live prefill, T for a forced turn
        self.block = max(self.P, self.T)
        self.ring = self.window + self.block
        self.ctx = self.S + self.ring
        self.n_dec = lay.n_text_out + lay.n_audio_out - 1
        self.L, self.nkv, self.H, self.hd = cfg.n_layers, cfg.n_kv_heads, cfg.n_heads, cfg.head_dim
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
        self.c_inv_temp = c(1.0 / cfg.temperature if cfg.temperature > 0 else 1.0)
        self.c_half, self.c_center = c(model.flow.half), c(model.flow.center)
        self.c_flow_temp = c(cfg.flow_temperature)
        self.c_i16 = c(32767.0)
        self.c_inv_melsum = c(1.0 / (cfg.frames_per_chunk * cfg.n_mels))
        self.sink_col = torch.zeros(self.ctx, dtype=torch.bool, device=dev)
        self.sink_col[: self.S] = True
        self.inv_freq = model.transformer.inv_freq.to(dev)

        self.flow_ws = model.flow.workspace(B, dev, self.wdt)

        # ---- flat work buffers ----
        N = B * self.block
        ff = cfg.d_ff if cfg.n_experts == 0 else cfg.d_ff_expert
        hh = self.hd // 2
        G = min(B, self.moe_gather_max_tokens)  # gathered expert weights are only needed for this many tokens
        F_ = cfg.frames_per_chunk
        lvl = cfg.n_levels
        fpt, nm = cfg.frames_per_audio_token, cfg.n_mels
        sizes = {
            "x": N * d,
            "h": N * d,
            "tmpd": N * d,
            "sq": N * d,
            "stat": N,
            "krot": N * self.nkv * self.hd,
            "v": N * self.nkv * self.hd,
            "maskf": N * self.ctx,
            "cos": N * hh,
            "sin": N * hh,
            "ff_a": 1 if cfg.n_experts else N * ff,
            "ff_b": 1 if cfg.n_experts else N * ff,
            "logits": B * tk.VOCAB_SIZE,
            "gumbel": B * lay.n_text_out * tk.VOCAB_SIZE,
            "noise": B * lay.n_audio_out * cfg.mel_dim,
            "fx": B * cfg.mel_dim,
            "fv": B * cfg.mel_dim,
            "melout": B * F_ * nm,
            "pcmf": B * spc,
            "hist_rows": B * (cfg.win - cfg.hop),
            "tail_rows": B * model.vocoder.tail_len,
            "commit": B * max(spc, fpt * nm * lvl),
        }
        self.buf = {k: torch.zeros(v, **f32) for k, v in sizes.items()}
        # the matmul-heavy layers' inputs and outputs, in the weights' dtype (fp32: the same buffers)
        low = self.wdt != torch.float32
        for k in ("h", "tmpd", "ff_a", "ff_b"):  # ("tmpd_w" is cast into "tmpd" for the residual add)
            self.buf[k + "_w"] = torch.zeros(sizes[k], device=dev, dtype=self.wdt) if low else self.buf[k]
        ffn0 = self.blocks[0].ffn
        self.moe_ws = ffn0.workspace(N, G, dev, self.wdt) if isinstance(ffn0, MoE) else None
        self.f64 = {k: torch.zeros(N * hh, device=dev, dtype=torch.float64) for k in ("posf", "ang", "cs")}
        lsizes = {
            "qlo": N,
            "lev": B * F_ * nm,
            "aout": B * lay.n_audio_out * fpt * nm,
            "commit": B * fpt * nm,
        }
        self.lbuf = {k: torch.zeros(v, **i64) for k, v in lsizes.items()}
        self.mask_a = torch.zeros(N * self.ctx, dtype=torch.bool, device=dev)
        self.mask_b = torch.zeros(N * self.ctx, dtype=torch.bool, device=dev)
        self.voc_ws = model.vocoder.workspace(B, dev)
        self.embed_ws = model.embed_workspace(
            B, EMB_CHUNK_CPU if dev.type == "cpu" else B * lay.n_audio_in, dev
        )
        self.dmel_ws = model.dmel.workspace(B, dev)
        # shared by the layers
        self.attn_ws = self.blocks[0].attn.workspace(N, self.ctx, dev, self.wdt, self.k_cache.dtype)
        self.gens: list[torch.Generator] = [torch.Generator(device=dev) for _ in range(B)]
        self.observer: StepObserver | None = None
        self._obs_rows: Tensor | None = None  # rows in plan order, while an observed step runs
        # offsets within a turn of the prefill tokens (after the pending one), the decode tokens and a
        # forced turn (the previous turn's last audio-out token, then the whole turn)
        self._rel_pre = np.arange(lay.out_marker + 1, dtype=np.int64)
        self._rel_dec = np.array(
            [lay.text_out + j for j in range(lay.n_text_out)]
            + [lay.audio_out + j for j in range(lay.n_audio_out - 1)],
            dtype=np.int64,
        )
        self._rel_forced = np.arange(lay.turn_len - 1, dtype=np.int64)
        self._h_off = np.arange(self.nkv, dtype=np.int64) * self.ctx

    def _low_precision(self, model: InteractionModel) -> tuple[torch.nn.ModuleList, FlowHead]:
        """The blocks and flow head the step runs: the model's own (fp32), or copies whose attention
        projections, feed-forward/MoE (router included) and flow-head linears are cast to bf16. Norms
        stay fp32; the KV ring, RoPE, scores and softmax stay fp32 too: at the engine's shapes bf16
        batched attention is no faster on a CPU (oneDNN's per-call overhead on small matrices; measured),
        while bf16 projections and feed-forwards are 2-5x faster at B >= 16."""
        blocks, flow = model.transformer.blocks, model.flow
        if self.wdt == torch.float32:
            return blocks, flow
        blocks = copy.deepcopy(blocks)
        for blk in blocks:
            for lin in (blk.attn.wq, blk.attn.wk, blk.attn.wv, blk.attn.wo):
                lin.to(self.wdt)
            blk.ffn.to(self.wdt)
        return blocks, copy.deepcopy(flow).to(self.wdt)

    # ---- helpers ----------------------------------------------------------------------------------
    def b(self, name: str, *shape: int) -> Tensor:
        n = math.prod(shape)
        return self.buf[name][:n].view(*shape)

    def lb(self, name: str, *shape: int) -> Tensor:
        n = math.prod(shape)
        return self.lbuf[name][:n].view(*shape)

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

    def slot_bytes(self) -> int:
        """Device memory one slot owns (KV ring + ring positions + audio/vocoder history)."""
        per = lambda t, n: t.element_size() * t.numel() // n  # noqa: E731
        return (
            per(self.k_cache, self.num_slots + 1)
            + per(self.v_cache, self.num_slots + 1)
            + per(self.ring_pos, self.num_slots + 1)
            + per(self.audio_hist, self.num_slots)
            + per(self.voc_tail, self.num_slots)
            + per(self.pending, self.num_slots)
        )

    def set_vocoder_tail(self, slot: int, tail: np.ndarray) -> None:
        """A rebuilt session's vocoder state (a forced turn does not vocode)."""
        self.voc_tail[slot].copy_(torch.from_numpy(tail))

    # ---- the boundary -----------------------------------------------------------------------------
    def execute(self, plan: StepPlan) -> StepResult:
        """Run one planned micro-turn: stage its inputs, positions and KV-ring indices, compute (``run``
        or ``run_forced``), read the outputs back in the plan's order."""
        st = self.stage_timer
        if st is not None and plan.forced is None:
            st.start()
            st.steps += 1
        lo, rows, n_part, row_of = self._stage(plan)
        if plan.forced is not None:
            self.run_forced(lo, rows, n_part, plan.kv_layers)
            return StepResult.empty()
        obs = self.observer
        if obs is not None:
            self._obs_rows = torch.tensor(row_of, dtype=torch.long, device=self.device)
        try:
            self.run(lo, rows, n_part, list(zip(row_of, plan.seeds, strict=True)))
        finally:
            self._obs_rows = None
        if st is not None:
            st.lap("commit")
        res = StepResult(
            text_ids=[[int(self.h_ids[j, r]) for j in range(self.lay.n_text_out)] for r in row_of],
            pcm=[self.h_pcm_out[r].copy() for r in row_of],
            energy=[float(self.h_energy[r]) for r in row_of],
            audio_out_levels=[self.h_aout[r].copy() for r in row_of],
            vocoder_tail=[self.h_tail[r].copy() for r in row_of],
        )
        if obs is not None:
            obs.step_done(plan, res)
        return res

    def _observe(self, name: str, rows_value: Tensor) -> None:
        if self.observer is not None and self._obs_rows is not None:
            self.observer.tensor(name, rows_value.index_select(0, self._obs_rows))

    def _stage(self, plan: StepPlan) -> tuple[int, int, int, list[int]]:
        """Fill the staging arrays: inputs per row, positions and write indices per block (holes and
        the missing pending token of a first chunk write to the trash slot). Returns the slot range
        (lo, rows), the number of sessions and each session's row."""
        S, T, ring, nkv, ctx, trash = self.S, self.T, self.ring, self.nkv, self.ctx, self.trash
        forced = plan.forced
        slots = np.asarray(plan.slots, dtype=np.int64)
        lo = int(slots.min())
        rows = int(slots.max()) - lo + 1
        row_of = [int(s) - lo for s in plan.slots]
        self.h_has_video[:rows] = False
        self.h_text[:rows] = tk.PAD
        part = np.zeros(rows, dtype=bool)
        base = np.zeros(rows, dtype=np.int64)
        pend = np.full(rows, -1, dtype=np.int64)
        for i, r in enumerate(row_of):
            part[r] = True
            np.copyto(self.h_pcm[r], plan.pcm[i])
            v = plan.video[i]
            if v is not None:
                np.copyto(self.h_video[r], v)
                self.h_has_video[r] = True
            self.h_text[r] = plan.text_in[i]
            if forced is not None:
                self.h_fids[:, r] = forced[i].text_out_ids
                self.h_flev[r] = forced[i].audio_out_levels
            base[r] = S + plan.chunk_index[i] * T
            prev = plan.prev_index[i]
            if prev is not None:
                pend[r] = S + (prev + 1) * T - 1
        slot_col = (lo + np.arange(rows, dtype=np.int64))[:, None]
        rel = self._rel_forced if forced is not None else self._rel_pre
        pos_pre = base[:, None] + np.concatenate([[-1], rel])[None]
        pos_pre[:, 0] = pend
        valid_pre = np.repeat(part[:, None], pos_pre.shape[1], axis=1)
        valid_pre[:, 0] &= pend >= 0
        pos_pre[~valid_pre] = 0
        blocks = [
            (self.forced_blk if forced is not None else 0, pos_pre, np.where(valid_pre, slot_col, trash))
        ]
        if forced is None:
            pos_dec = (base[:, None] + self._rel_dec[None]).T.copy()  # [n_dec, rows]
            pos_dec[:, ~part] = 0
            ws_dec = np.where(part, slot_col[:, 0], trash)[:, None]
            blocks += [(1 + j, pos_dec[j][:, None], ws_dec) for j in range(self.n_dec)]
        for blk, pos, ws in blocks:
            ring_i = S + (pos - S) % ring
            n = pos.size
            self.h_pos[blk, :n] = pos.reshape(-1)
            self.h_rpidx[blk, :n] = (ws * ctx + ring_i).reshape(-1)
            self.h_kvidx[blk, : n * nkv] = ((ws * nkv * ctx + ring_i)[..., None] + self._h_off).reshape(-1)
        pr = np.nonzero(part)[0]
        self.h_part[0, : len(pr)] = pr
        self.h_part[1, : len(pr)] = pr + lo
        return lo, rows, len(pr), row_of

    # ---- the step ---------------------------------------------------------------------------------
    @torch.no_grad()
    def run(self, lo: int, rows: int, n_part: int, seeds: list[tuple[int, int]]) -> None:
        """The compute of a live micro-turn for rows ``[0, rows)`` (slots ``lo ..``), staged by
        ``execute``; ``seeds`` lists (row, sampling seed) for the participating rows. (A seam: a
        subclass or a test wraps it.)"""
        cfg, lay = self.cfg, self.lay
        Bw, P, d = rows, self.P, cfg.d_model
        st = self.stage_timer
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

        if st is not None:
            st.lap("stage")  # staging, upload and the sampling noise
        x = self.b("x", Bw, P, d)
        self._embed_prefill(lo, Bw, x, st)
        if st is not None:
            st.lap("embed")
        hidden = self._forward(lo, Bw, P, 0, moe_gather=False)
        last = hidden.view(Bw, P, d)[:, P - 1]
        self._observe("hidden_pre", hidden.view(Bw, P, d))
        if st is not None:
            st.lap("prefill")
        for j in range(lay.n_text_out):
            self._sample_text(last, j, Bw)
            self.model.embed_text_out_(self.d_ids[j, :Bw], j, self.b("x", Bw, d))
            if st is not None:
                st.lap("sample")  # text head, sampling and the token's embedding
            hidden = self._forward(lo, Bw, 1, 1 + j, moe_gather=True)
            last = hidden
            if st is not None:
                st.lap("decode")
        for j in range(lay.n_audio_out):
            self._flow(last, j, Bw)
            self._observe(f"cond{j}", last)
            if j == lay.n_audio_out - 1:
                break
            levels = self.lb("aout", Bw, lay.n_audio_out, cfg.mel_dim)[:, j]
            self.model.embed_audio_out_(levels, j, self.embed_ws, self.b("x", Bw, d))
            if st is not None:
                st.lap("flow")  # flow sampling, dMel quantisation and the token's embedding
            hidden = self._forward(lo, Bw, 1, 1 + lay.n_text_out + j, moe_gather=True)
            last = hidden
            if st is not None:
                st.lap("decode")
        if st is not None:
            st.lap("flow")
        # vocoder, speaking energy, outputs
        mel = self.b("melout", Bw, cfg.frames_per_chunk, cfg.n_mels)
        tail = self.b("tail_rows", Bw, self.model.vocoder.tail_len)
        tail.copy_(self.voc_tail[lo : lo + Bw])
        pcmf = self.b("pcmf", Bw, cfg.samples_per_chunk)
        self.model.vocoder.chunk_(self.voc_ws, Bw, mel, tail, pcmf)
        if st is not None:
            st.lap("vocoder")
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
        nt = lay.n_text_out
        for j in range(nt):
            self.model.embed_text_out_(self.d_fids[j, :Bw], j, x[:, P + j])
        lev = self.d_flev[:Bw].view(Bw, lay.n_audio_out, cfg.frames_per_audio_token * cfg.n_mels)
        for j in range(lay.n_audio_out - 1):
            self.model.embed_audio_out_(lev[:, j], j, self.embed_ws, x[:, P + nt + j])
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
    def _embed_prefill(self, lo: int, Bw: int, x: Tensor, st: StageTimer | None = None) -> None:
        lev = self._featurize(lo, Bw)  # causal frames with the slot's audio history
        if st is not None:
            st.lap("featurise")
        self.model.embed_prefill_(
            self.embed_ws,
            self.pending[lo : lo + Bw].view(Bw, -1),
            self.d_video[:Bw],
            self.d_has_video[:Bw],
            bool(self.h_has_video[:Bw].any()),  # (host staging) a voice-only step skips the hMLP
            lev.view(Bw * self.lay.n_audio_in, -1),
            self.d_text[:Bw],
            x,
        )

    def _featurize(self, lo: int, Bw: int) -> Tensor:
        """Input levels of the rows' chunks (frames reach into each slot's audio history); the new
        history goes to ``hist_rows`` until the commit."""
        cfg, hist = self.cfg, self.audio_hist.shape[1]
        lev = self.lb("lev", Bw * cfg.frames_per_chunk, cfg.n_mels)
        new_hist = self.b("hist_rows", Bw, hist)
        return self.model.dmel.levels_(
            self.d_pcm[:Bw], self.audio_hist[lo : lo + Bw], self.dmel_ws, lev, new_hist
        )

    # ---- transformer ------------------------------------------------------------------------------
    def _forward(
        self, lo: int, Bw: int, tq: int, blk_i: int, moe_gather: bool, kv_layers: int | None = None
    ) -> Tensor:
        """Run the layers over ``x`` (already embedded) for block ``blk_i`` of positions/write indices.
        Returns the final-normed hidden states [Bw * tq, d] (a view of a work buffer); with
        ``kv_layers`` it only writes the KV of that many layers and returns nothing useful."""
        cfg = self.cfg
        d, nkv, hd, ctx = cfg.d_model, self.nkv, self.hd, self.ctx
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
        cos, sin = self.b("cos", Bw, tq, hh), self.b("sin", Bw, tq, hh)
        ws64 = (
            self.f64["posf"][:N].view(Bw, tq, 1),
            self.f64["ang"][: N * hh].view(Bw, tq, hh),
            self.f64["cs"][: N * hh].view(Bw, tq, hh),
        )
        rope_cos_sin_(pos, self.inv_freq, ws64, cos, sin)

        # h: the normed residual (fp32); hw, tmpd: the matmul layers' input and output in the weights'
        # dtype (with fp32 weights hw is h itself and the cast is skipped)
        h, hw = self.b("h", N, d), self.b("h_w", N, d)
        tmpd, tmpw = self.b("tmpd", N, d), self.b("tmpd_w", N, d)
        cast = self.wdt != torch.float32
        h3 = hw.view(Bw, tq, d)
        sq, stat = self.b("sq", N, d), self.b("stat", N, 1)
        krot = self.b("krot", Bw, tq, nkv, hd)
        v = self.b("v", Bw, tq, nkv, hd)
        for li, blk in enumerate(self.blocks):
            at = blk.attn
            blk.attn_norm.forward_(x, h, sq, stat)
            if cast:
                hw.copy_(h)
            at.kv_(h3, cos, sin, self.attn_ws, krot, v)
            kc, vc = self.k_cache[li], self.v_cache[li]
            kc.view(-1, hd).index_copy_(0, kvidx, krot.view(-1, hd))
            vc.view(-1, hd).index_copy_(0, kvidx, v.view(-1, hd))
            if kv_layers is not None and li == kv_layers - 1:
                return x  # the KV is written; nothing reads this layer's output
            at.attend_(h3, cos, sin, kc[lo : lo + Bw], vc[lo : lo + Bw], maskf, self.attn_ws, tmpw)
            if cast:
                tmpd.copy_(tmpw)
            x.add_(tmpd)
            blk.ffn_norm.forward_(x, h, sq, stat)
            if cast:
                hw.copy_(h)
            f = blk.ffn
            if isinstance(f, MoE):
                assert self.moe_ws is not None
                if moe_gather and self.moe_gather_max_tokens >= N:
                    f.gather_gemv_(hw, tmpw, self.moe_ws)
                else:
                    f.dense_all_(hw, tmpw, self.moe_ws)
            else:
                ff = f.w_gate.weight.shape[0]
                f.step_(hw, tmpw, self.b("ff_a_w", N, ff), self.b("ff_b_w", N, ff))
            if cast:
                tmpd.copy_(tmpw)
            x.add_(tmpd)
        out = self.b("h", N, d)
        self.model.transformer.norm.forward_(x, out, sq, stat)
        return out

    # ---- heads ------------------------------------------------------------------------------------
    def _sample_text(self, hidden: Tensor, j: int, Bw: int) -> None:
        logits = self.b("logits", Bw, tk.VOCAB_SIZE)
        torch.mm(hidden, self.model.lm_head.weight.t(), out=logits)
        self._observe(f"logits{j}", logits)
        if self.cfg.temperature > 0:
            logits.mul_(self.c_inv_temp)
            logits.add_(self.b("gumbel", self.num_slots, self.lay.n_text_out, tk.VOCAB_SIZE)[:Bw, j])
        torch.argmax(logits, dim=-1, out=self.d_ids[j, :Bw])

    def _flow(self, cond: Tensor, j: int, Bw: int) -> None:
        cfg = self.cfg
        xx = self.b("fx", Bw, cfg.mel_dim)
        xx.copy_(self.b("noise", self.num_slots, self.lay.n_audio_out, cfg.mel_dim)[:Bw, j])
        self.flow.sample_(cond, xx, self.flow_ws)
        fpt = cfg.frames_per_audio_token
        mel = self.b("melout", Bw, cfg.frames_per_chunk, cfg.n_mels)[:, j * fpt : (j + 1) * fpt]
        mv = xx.view(Bw, fpt, cfg.n_mels)
        mv.mul_(self.c_half).add_(self.c_center).clamp_(cfg.log_min, cfg.log_max)
        lev = self.lb("aout", Bw, self.lay.n_audio_out, fpt, cfg.n_mels)[:, j]
        self.model.dmel.quantize_(mv, self.b("fv", Bw, fpt, cfg.n_mels), lev)
        # the vocoder gets the mel snapped to the dMel levels the model was trained on (its targets are
        # level centres): the flow head's small errors, a constant hiss over "silence", round away
        self.model.dmel.dequantize_(lev, mel)
