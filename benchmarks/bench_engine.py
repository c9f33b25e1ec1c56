"""Engine benchmark: tick time vs sessions and vs session age, memory per slot, steady-state allocations.

Run as a script (``make bench``). Prints a table and the numbers the design asks for:
  fixed + per-session cost      a least-squares line through the min tick times at B = 1 .. 64, and the
                                sessions one core holds inside half a micro-turn (100 ms) by that line
  tick(32) / tick(1)            batching (kept for history: falling fixed cost makes it worse)
  tick(10 min) / tick(0)        flat per-chunk cost over a session (goal <= 1.05)
  allocations per steady step   (goal 0; counted with the torch profiler's memory events)
  rebuild(10 min) / rebuild(1 min)  recovery cost flat in session age (goal 1)

Noise: the tick times of different configurations are taken in interleaved rounds (other processes on a
shared machine then disturb all alike) and ratios use the minimum of each.

Session age: "1 min" is real (300 consecutive micro-turns); "10 min" starts sessions at chunk index
2990 (the engine takes gaps in chunk indices: positions follow chunk indices), runs window + 2 turns so the
KV ring is full and wrapped, then measures; "0 min" reopens fresh sessions every round and times their first micro-turn. The positions, RoPE angles and ring state are exactly those of
a 10-minute session, only the (irrelevant) older history differs.

Env: BENCH_THREADS (torch threads, default 1), BENCH_DEVICE (default cuda if available else cpu).
"""

from __future__ import annotations

import os
import statistics
import time

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from microturn.engine import ChunkInput, Engine
from microturn.model import InteractionModel, preset

THREADS = int(os.environ.get("BENCH_THREADS", "1"))
DEVICE = os.environ.get("BENCH_DEVICE", "cuda" if torch.cuda.is_available() else "cpu")
torch.set_num_threads(THREADS)


def chunk(sid: str, k: int, rng: np.random.Generator) -> ChunkInput:
    t = np.arange(3200) / 16_000 + k * 0.2
    pcm = (3000 * np.sin(2 * np.pi * 220 * t) + rng.normal(0, 300, 3200)).astype(np.int16)
    video = rng.integers(0, 256, (1, 80, 80, 3), dtype=np.uint8) if k % 2 == 0 else None
    return ChunkInput(sid, k, pcm, video, ["hi"] if k % 10 == 0 else [])


def sync() -> None:
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


def timed_ticks(eng: Engine, sids: list[str], start: int, n: int, rng: np.random.Generator) -> list[float]:
    out = []
    for k in range(start, start + n):
        batch = [chunk(s, k, rng) for s in sids]
        sync()
        t0 = time.perf_counter()
        eng.step(batch)
        sync()
        out.append(time.perf_counter() - t0)
    return out


def cost_line(ticks: dict[int, tuple[float, float]]) -> tuple[float, float]:
    """(fixed ms, ms per session): least-squares line through the min tick times."""
    bs = np.array(sorted(ticks), dtype=float)
    slope, fixed = np.polyfit(bs, [ticks[int(b)][1] for b in bs], 1)
    return float(fixed), float(slope)


def tick_ms(
    model: InteractionModel, sizes: tuple[int, ...], warm: int = 3, rounds: int = 9
) -> dict[int, tuple[float, float]]:
    """(median, min) tick time in ms per session count. Engines are stepped in interleaved rounds so a
    burst of load from other processes on a shared machine hits every size alike; ratios use the min
    (the least disturbed sample)."""
    engines = {}
    rng = np.random.default_rng(0)
    for b in sizes:
        eng = Engine(model, b, device=DEVICE)
        sids = [f"s{i}" for i in range(b)]
        for i, s in enumerate(sids):
            eng.open(s, i)
        timed_ticks(eng, sids, 0, warm, rng)
        engines[b] = (eng, sids)
    times: dict[int, list[float]] = {b: [] for b in sizes}
    for r in range(rounds):
        for b, (eng, sids) in engines.items():
            times[b] += timed_ticks(eng, sids, warm + r, 1, rng)
    return {b: (1000 * statistics.median(ts), 1000 * min(ts)) for b, ts in times.items()}


def age_ms(model: InteractionModel, n_sessions: int, rounds: int = 15) -> dict[str, tuple[float, float]]:
    """Tick time of sessions aged 0, 1 and 10 minutes, stepped in interleaved rounds."""
    rng = np.random.default_rng(1)
    sids = [f"s{i}" for i in range(n_sessions)]
    engines = {}
    for age in ("0 min", "1 min", "10 min"):
        eng = Engine(model, n_sessions, device=DEVICE)
        for i, s in enumerate(sids):
            eng.open(s, i)
        engines[age] = eng
    timed_ticks(engines["0 min"], sids, 0, 3, rng)  # warm-up only
    timed_ticks(engines["1 min"], sids, 0, 300, rng)  # a real minute of micro-turns
    w = model.cfg.window_turns + 2  # fill and wrap the ring at 10-minute positions
    timed_ticks(engines["10 min"], sids, 3000 - w, w, rng)
    times: dict[str, list[float]] = {a: [] for a in engines}
    for r in range(rounds):
        young = engines["0 min"]
        for i, s in enumerate(sids):  # a fresh session each round: its first micro-turn
            young.close(s)
            young.open(s, i)
        times["0 min"] += timed_ticks(young, sids, 0, 1, rng)
        times["1 min"] += timed_ticks(engines["1 min"], sids, 300 + r, 1, rng)
        times["10 min"] += timed_ticks(engines["10 min"], sids, 3000 + r, 1, rng)
    return {a: (1000 * statistics.median(ts), 1000 * min(ts)) for a, ts in times.items()}


def rebuild_ms(model: InteractionModel, rounds: int = 7) -> dict[str, tuple[float, float, int]]:
    """Time to rebuild a session (``Engine.resume`` from its last resume points) at 1 and 10 minutes of
    age, in interleaved rounds, and the forced micro-turns it ran: the cost must not grow with age."""
    rng = np.random.default_rng(3)
    spans = {}
    for age, n in (("1 min", 300), ("10 min", 3000)):
        live = Engine(model, 1, device=DEVICE)
        live.open("s", 1)
        chunks = [chunk("s", k, rng) for k in range(n)]
        spans[age] = list(zip(chunks, [live.step([c])[0].resume for c in chunks], strict=True))
    eng = Engine(model, 1, device=DEVICE)
    times: dict[str, list[float]] = {age: [] for age in spans}
    for _ in range(rounds):
        for age, items in spans.items():
            sync()
            t0 = time.perf_counter()
            eng.resume("s", 1, items)
            sync()
            times[age].append(time.perf_counter() - t0)
    return {a: (1000 * statistics.median(ts), 1000 * min(ts), eng.resume_span) for a, ts in times.items()}


def allocations_per_step(model: InteractionModel, n_sessions: int) -> int:
    eng = Engine(model, n_sessions + 1, device=DEVICE)
    sids = [f"s{i}" for i in range(n_sessions + 1)]
    for i, s in enumerate(sids):
        eng.open(s, i)
    rng = np.random.default_rng(2)
    step_sids = sids[:1] + sids[2:]  # leave a hole in the slot range, like a real tick can
    timed_ticks(eng, step_sids, 0, 3, rng)
    batch = [chunk(s, 3, rng) for s in step_sids]
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEVICE.startswith("cuda") else [])
    with profile(activities=acts, profile_memory=True) as prof:
        eng.step(batch)
    return sum(1 for e in prof.events() if e.cpu_memory_usage > 0 or getattr(e, "device_memory_usage", 0) > 0)


def main() -> None:
    t_start = time.perf_counter()
    print(f"device={DEVICE} torch_threads={THREADS} torch={torch.__version__}")
    rows = []
    for name in ("tiny", "tiny-moe"):
        torch.manual_seed(0)
        model = InteractionModel(preset(name)).eval()
        sizes = (1, 4, 16, 32, 64) if name == "tiny" else (1, 32)
        ticks = tick_ms(model, sizes)
        eng = Engine(model, 1, device=DEVICE)
        rows.append((name, model, ticks, eng.slot_bytes()))
    print()
    print("tick time per micro-turn, median / min of 9 ticks (ms); per-session cost = min / sessions")
    hdr = " ".join(f"{'B=' + str(b):>15}" for b in (1, 4, 16, 32, 64))
    print(f"{'preset':<10} {'params':>8} {'slot MiB':>8} {hdr}")
    for name, model, ticks, slot in rows:
        cells = " ".join(
            f"{ticks[b][0]:>7.1f} /{ticks[b][1]:>6.1f}" if b in ticks else f"{'-':>15}"
            for b in (1, 4, 16, 32, 64)
        )
        print(f"{name:<10} {model.num_params() / 1e6:>7.2f}M {slot / 2**20:>8.2f} {cells}")
        per = " ".join(
            f"{ticks[b][1] / b:>12.1f}/s" if b in ticks else f"{'-':>15}" for b in (1, 4, 16, 32, 64)
        )
        print(f"{'':<10} {'':>8} {'':>8} {per}")
    tiny = rows[0][1]
    ages = age_ms(tiny, 4)
    rebuilds = rebuild_ms(tiny)
    allocs = allocations_per_step(tiny, 4)
    allocs_moe = allocations_per_step(rows[1][1], 4)
    print()
    print(
        "session age (tiny, 4 sessions), median / min of 15 interleaved ticks:  "
        + "  ".join(f"{k}: {v[0]:.1f} / {v[1]:.1f} ms" for k, v in ages.items())
    )
    print(
        "session rebuild after a replica loss (tiny, Engine.resume), median / min of 5:  "
        + "  ".join(
            f"{k}: {v[0]:.0f} / {v[1]:.0f} ms ({v[2]} forced micro-turns)" for k, v in rebuilds.items()
        )
    )
    t = {b: v[1] for b, v in rows[0][2].items()}
    fixed, per = cost_line(rows[0][2])
    print()
    print(
        f"tiny: fixed cost {fixed:.1f} ms + {per:.2f} ms per session (line through the minimums); "
        f"sessions per core in half a micro-turn (100 ms): {(100 - fixed) / per:.0f}"
    )
    print()
    print("ratios")
    print(f"  tick(32) / tick(1)        = {t[32] / t[1]:.2f}   (goal <= 4 on CPU)")
    print(f"  tick(64) / tick(1)        = {t[64] / t[1]:.2f}")
    moe = {b: v[1] for b, v in rows[1][2].items()}
    print(f"  tiny-moe tick(32)/tick(1) = {moe[32] / moe[1]:.2f}")
    print(
        f"  tick(10 min) / tick(0)    = {ages['10 min'][1] / ages['0 min'][1]:.3f}  (goal <= 1.05; min; median ratio {ages['10 min'][0] / ages['0 min'][0]:.3f})"
    )
    print(f"  tick(1 min) / tick(0)     = {ages['1 min'][1] / ages['0 min'][1]:.3f}")
    print(
        f"  rebuild(10 min) / rebuild(1 min) = {rebuilds['10 min'][1] / rebuilds['1 min'][1]:.3f}  (goal 1: bounded by the span)"
    )
    print(f"  allocations per steady step = {allocs} (tiny), {allocs_moe} (tiny-moe)  (goal 0)")
    print(f"  realtime margin, 1 session  = {200 / t[1]:.1f}x (200 ms micro-turn / tick)")
    print(f"(benchmark took {time.perf_counter() - t_start:.0f} s)")


if __name__ == "__main__":
    main()
