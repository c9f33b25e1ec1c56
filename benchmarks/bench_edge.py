"""Edge benchmark: how many WebRTC sessions one edge process carries before its output pacing
degrades, its CPU per session, and the mouth-to-ear round trip with an echo-like model.

The edge runs as its own process (`python -m microturn.edge`, so its CPU is measured alone);
this process runs an echo interaction service on gRPC (echo_stack.py: each output chunk is its input
chunk's audio, a model with zero compute, so what is measured is the edge and the chunking) and N aiortc
clients whose mic sends 100 ms tone markers every second. Per level: jitter of the returned 20 ms
audio frames (arrival-time deviation from the 20 ms grid, p50/p99), edge CPU % per session, and
mouth-to-ear (marker sent -> marker heard), p50/p99. Timing is measured here, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import math
import sys
import time

import av
import httpx
import numpy as np
import psutil
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from echo_stack import echo_edge

from microturn.edge.jitter import set_audio_prefetch

RATE = 48_000
FRAME = 960  # 20 ms
MARK_EVERY_S, MARK_LEN_S = 1.0, 0.1


class MarkerMic(MediaStreamTrack):
    """48 kHz mic: silence with a 1 kHz marker of MARK_LEN_S every MARK_EVERY_S; records send times."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self.i = 0
        self.start: float | None = None
        self.marks: list[float] = []

    async def recv(self) -> av.AudioFrame:
        if self.start is None:
            self.start = time.monotonic()
        wait = self.start + self.i * 0.02 - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        t = (self.i * FRAME + np.arange(FRAME)) / RATE
        on = (t % MARK_EVERY_S) < MARK_LEN_S
        if on[0] and (self.i * FRAME / RATE) % MARK_EVERY_S < 0.02:
            self.marks.append(time.monotonic())
        pcm = np.where(on, 10000 * np.sin(2 * math.pi * 1000 * t), 0).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = RATE, self.i * FRAME, fractions.Fraction(1, RATE)
        self.i += 1
        return frame


class Caller:
    def __init__(self, base: str, prefetch: int) -> None:
        self.base = base
        self.prefetch = prefetch  # this client's own inbound jitter buffer (frames)
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.mic = MarkerMic()
        self.arrivals: list[float] = []
        self.heard: list[float] = []
        self._loud = False

    async def call(self, http: httpx.AsyncClient) -> None:
        info = (await http.post(f"{self.base}/api/sessions")).json()
        self.sid, self.auth = info["session_id"], {"Authorization": f"Bearer {info['token']}"}
        self.pc.createDataChannel("events")
        self.pc.addTrack(self.mic)
        self.pc.on("track", lambda tr: asyncio.ensure_future(self._listen(tr)))
        await self.pc.setLocalDescription(await self.pc.createOffer())
        r = await http.post(f"{self.base}/api/sessions/{self.sid}/offer", headers=self.auth,
                            json={"sdp": self.pc.localDescription.sdp, "type": "offer"})  # fmt: skip
        r.raise_for_status()
        await self.pc.setRemoteDescription(RTCSessionDescription(**r.json()))
        set_audio_prefetch(self.pc, self.prefetch)

    async def _listen(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except Exception:
                return
            now = time.monotonic()
            self.arrivals.append(now)
            loud = float(np.abs(frame.to_ndarray()).mean()) > 1000
            if loud and not self._loud:
                self.heard.append(now)
            self._loud = loud

    async def hang_up(self, http: httpx.AsyncClient) -> None:
        await http.delete(f"{self.base}/api/sessions/{self.sid}", headers=self.auth)
        await self.pc.close()

    def mouth_to_ear_ms(self) -> list[float]:
        out = []
        for sent in self.mic.marks:
            later = [h for h in self.heard if sent < h < sent + MARK_EVERY_S * 0.9]
            if later:
                out.append((later[0] - sent) * 1000)
        return out

    def jitter_ms(self, skip: int) -> list[float]:
        a = np.array(self.arrivals[skip:])
        if a.size < 10:
            return []
        grid = a[0] + 0.02 * np.arange(a.size)
        dev = (a - grid) - np.median(a - grid)
        return list(np.abs(dev) * 1000)


async def run_level(
    base: str, edge: psutil.Process, n: int, seconds: float, prefetch: int
) -> dict[str, float]:
    callers = [Caller(base, prefetch) for _ in range(n)]
    async with httpx.AsyncClient(timeout=30) as http:
        await asyncio.gather(*(c.call(http) for c in callers))
        await asyncio.sleep(2.0)  # warm up
        marks = [len(c.arrivals) for c in callers]
        edge.cpu_percent(None)
        await asyncio.sleep(seconds)
        cpu = edge.cpu_percent(None)
        await asyncio.gather(*(c.hang_up(http) for c in callers))
    jitter = [j for c, m in zip(callers, marks, strict=True) for j in c.jitter_ms(m)]
    m2e = [x for c in callers for x in c.mouth_to_ear_ms()]
    return {
        "n": n,
        "cpu_per_session": cpu / n,
        "cpu": cpu,
        "jitter_p50": float(np.percentile(jitter, 50)) if jitter else float("nan"),
        "jitter_p99": float(np.percentile(jitter, 99)) if jitter else float("nan"),
        "m2e_p50": float(np.percentile(m2e, 50)) if m2e else float("nan"),
        "m2e_p99": float(np.percentile(m2e, 99)) if m2e else float("nan"),
    }


async def main_async(
    levels: list[int], seconds: float, edge_prefetch: int, client_prefetch: int
) -> list[dict[str, float]]:
    async with echo_edge(MICROTURN_EDGE__AUDIO_JITTER_PREFETCH_FRAMES=str(edge_prefetch)) as (base, proc):
        edge = psutil.Process(proc.pid)
        return [await run_level(base, edge, n, seconds, client_prefetch) for n in levels]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sessions", default="1,4,8,16", help="comma-separated session counts")
    p.add_argument("--seconds", type=float, default=6.0, help="measured seconds per level")
    p.add_argument("--edge-prefetch", type=int, default=0,
                   help="the edge's edge.audio_jitter_prefetch_frames (aiortc's own: 4)")  # fmt: skip
    p.add_argument("--client-prefetch", type=int, default=0,
                   help="the callers' own inbound jitter buffer, frames (aiortc's 4 adds 80 ms no browser adds)")  # fmt: skip
    ns = p.parse_args()
    levels = [int(x) for x in ns.sessions.split(",")]
    rows = asyncio.run(main_async(levels, ns.seconds, ns.edge_prefetch, ns.client_prefetch))
    print("\nEdge (one process) with an echo model; clients in another process on the same 2 cores")
    print(
        "| sessions | edge CPU % | CPU % per session | pacing jitter p50 ms | p99 ms | mouth-to-ear p50 ms | p99 ms |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['n']} | {r['cpu']:.0f} | {r['cpu_per_session']:.1f} | {r['jitter_p50']:.1f} | {r['jitter_p99']:.1f} "
              f"| {r['m2e_p50']:.0f} | {r['m2e_p99']:.0f} |")  # fmt: skip
    base = rows[0]["jitter_p99"]
    degraded = [r["n"] for r in rows if r["jitter_p99"] > max(2 * base, base + 10)]
    print(f"\npacing degrades (p99 jitter > 2x the 1-session value and +10 ms) at: "
          f"{f'{degraded[0]} sessions' if degraded else 'none of the measured levels'}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
