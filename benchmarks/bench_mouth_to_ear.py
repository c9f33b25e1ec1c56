"""Mouth-to-ear in a real Chromium call with an echo model: the caller's microphone to the caller's
speaker, through the browser's own WebRTC stack (Opus, its NetEq jitter buffer) and the edge.

A headless Chromium page makes the call the way the browser client does (POST /api/sessions, an offer
with every candidate, the answer). Its microphone is WebAudio: 100 ms tone beeps scheduled at known
times on the page's AudioContext clock; the remote track plays through an <audio> element (so Chromium
decodes and jitter-buffers it as it would for a listener) and is analysed on the same AudioContext,
where an AudioWorklet notes when each beep comes back. Mouth-to-ear = heard - scheduled, on one clock.
Not included: the sound card's own input and output latency (there is none headless). The edge's
waterfall for the call (``/api/sessions/{id}/timing``) says where the time went. Timing is measured
here, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
from pathlib import Path

import httpx
import numpy as np
from echo_stack import echo_edge

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from loadtest.browser_caller import CHROMIUM, chromium_args  # noqa: E402

PAGE = "/bench/m2e.html"
HTML = """<!doctype html><meta charset=utf-8><title>m2e</title><audio id=a autoplay muted></audio>
<script>
const WORKLET = `class Ear extends AudioWorkletProcessor {
  constructor() { super(); this.loud = false; this.quiet = 0; }
  process(inputs) {
    const x = inputs[0][0];
    if (x) {
      let e = 0; for (let i = 0; i < x.length; i++) e += x[i] * x[i];
      const rms = Math.sqrt(e / x.length);
      if (rms > 0.05 && !this.loud && this.quiet > 40) this.port.postMessage(currentTime);
      if (rms > 0.05) { this.loud = true; this.quiet = 0; } else { this.quiet += 1; if (this.quiet > 40) this.loud = false; }
    }
    return true;
  }
}
registerProcessor("ear", Ear);`;

async function mic() {
  const ctx = new AudioContext({ sampleRate: 48000, latencyHint: "interactive" });
  await ctx.audioWorklet.addModule(URL.createObjectURL(new Blob([WORKLET], { type: "text/javascript" })));
  const osc = ctx.createOscillator(); osc.frequency.value = 1000;
  const gain = ctx.createGain(); gain.gain.value = 0;
  const dest = ctx.createMediaStreamDestination();
  osc.connect(gain).connect(dest); osc.start();
  return { ctx, gain, stream: dest.stream };
}

function listen(ctx, pc, heard) {
  pc.ontrack = (ev) => {
    const stream = ev.streams[0] || new MediaStream([ev.track]);
    document.getElementById("a").srcObject = stream;  // Chromium feeds WebAudio only from a playing remote stream
    const ear = new AudioWorkletNode(ctx, "ear");
    ear.port.onmessage = (m) => heard.push(m.data);
    ctx.createMediaStreamSource(stream).connect(ear);
  };
}

async function gathered(pc) {
  await new Promise((ok) => { if (pc.iceGatheringState === "complete") ok(); else pc.onicegatheringstatechange = () => pc.iceGatheringState === "complete" && ok(); });
}

async function beep(m, pc, beeps, spacing, lead) {
  await new Promise((ok) => { const t = setInterval(() => { if (pc.connectionState === "connected") { clearInterval(t); ok(); } }, 20); });
  const t0 = m.ctx.currentTime + lead, sent = [];
  for (let i = 0; i < beeps; i++) {
    const t = t0 + i * spacing + Math.random() * 0.2;  // anywhere in a micro-turn
    m.gain.gain.setValueAtTime(0.5, t); m.gain.gain.setValueAtTime(0, t + 0.1); sent.push(t);
  }
  await new Promise((ok) => setTimeout(ok, (lead + beeps * spacing + 1.5) * 1000));
  let jitter = null;
  (await pc.getStats()).forEach((r) => { if (r.type === "inbound-rtp" && r.kind === "audio" && r.jitterBufferEmittedCount)
    jitter = 1000 * r.jitterBufferDelay / r.jitterBufferEmittedCount; });
  return { sent, jitter_buffer_ms: jitter, output_latency_ms: 1000 * (m.ctx.outputLatency || 0),
           base_latency_ms: 1000 * (m.ctx.baseLatency || 0) };
}

// the call, as the browser client makes it
async function call(beeps, spacing, lead) {
  const m = await mic(), heard = [];
  const created = await (await fetch("/api/sessions", { method: "POST" })).json();
  const auth = { "Authorization": "Bearer " + created.token, "Content-Type": "application/json" };
  const pc = new RTCPeerConnection({ iceServers: [] });
  pc.createDataChannel("events");
  pc.addTrack(m.stream.getAudioTracks()[0], m.stream);
  listen(m.ctx, pc, heard);
  await pc.setLocalDescription(await pc.createOffer());
  await gathered(pc);
  const answer = await (await fetch(`/api/sessions/${created.session_id}/offer`, { method: "POST", headers: auth,
    body: JSON.stringify({ sdp: pc.localDescription.sdp, type: "offer" }) })).json();
  await pc.setRemoteDescription(answer);
  const got = await beep(m, pc, beeps, spacing, lead);
  return { ...got, heard, session_id: created.session_id, token: created.token };
}

// the browser's own share: the same mic and ear, through two peer connections inside the page (Opus
// both ways, NetEq, WebAudio) and no server, no micro-turn
async function loopback(beeps, spacing, lead) {
  const m = await mic(), heard = [];
  const a = new RTCPeerConnection({ iceServers: [] }), b = new RTCPeerConnection({ iceServers: [] });
  a.addTrack(m.stream.getAudioTracks()[0], m.stream);
  listen(m.ctx, b, heard);
  await a.setLocalDescription(await a.createOffer()); await gathered(a);
  await b.setRemoteDescription(a.localDescription);
  await b.setLocalDescription(await b.createAnswer()); await gathered(b);
  await a.setRemoteDescription(b.localDescription);
  const got = await beep(m, b, beeps, spacing, lead);
  return { ...got, heard };
}
</script>"""


def mouth_to_ear_ms(sent: list[float], heard: list[float], spacing: float) -> list[float]:
    """Each beep's first return within the spacing after it (a beep never heard: left out)."""
    out = []
    for t in sent:
        later = [h for h in heard if t < h < t + spacing * 0.9]
        if later:
            out.append((later[0] - t) * 1000)
    return out


async def in_page(base: str, what: str, beeps: int, spacing: float) -> dict:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=chromium_args(), headless=True)
        try:
            page = await browser.new_page()
            await page.route(base + PAGE, lambda route: route.fulfill(body=HTML, content_type="text/html"))
            await page.goto(base + PAGE)
            got = await page.evaluate(f"([b, s]) => {what}(b, s, 2.0)", [beeps, spacing])
        finally:
            await browser.close()
    got["m2e_ms"] = mouth_to_ear_ms(got["sent"], got["heard"], spacing)
    return got


async def run(beeps: int, spacing: float, env: dict[str, str], baseline: bool) -> dict[str, object]:
    token = secrets.token_urlsafe(24)
    async with echo_edge(MICROTURN_EDGE__DEBUG_TOKEN=token, **env) as (base, _):
        got = await in_page(base, "call", beeps, spacing)
        if baseline:
            got["browser_only"] = await in_page(base, "loopback", beeps, spacing)
        async with httpx.AsyncClient() as http:
            timing = (await http.get(f"{base}/api/sessions/{got['session_id']}/timing",
                                     headers={"Authorization": f"Bearer {token}"})).json()  # fmt: skip
    got["waterfall"] = timing.get("summary", {})
    return got


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--beeps", type=int, default=20, help="beeps in the call (one every --spacing s)")
    p.add_argument("--spacing", type=float, default=1.0, help="seconds between beeps")
    p.add_argument("--set", action="append", default=[], metavar="SETTING=VALUE",
                   help="an edge setting, e.g. cut_delay_ms=5 (repeatable)")  # fmt: skip
    p.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                   help="also measure the browser's own share: the same beeps through two peer connections "
                        "inside the page, no server and no micro-turn (default: on)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print everything measured as JSON")
    ns = p.parse_args()
    if not Path(CHROMIUM).exists():
        print(f"bench_mouth_to_ear: needs Chromium at {CHROMIUM} (make system-deps)", file=sys.stderr)
        return 2
    env = {f"MICROTURN_EDGE__{k.strip().upper()}": v for k, v in (s.split("=", 1) for s in ns.set)}
    got = asyncio.run(run(ns.beeps, ns.spacing, env, ns.baseline))
    if ns.json:
        print(json.dumps(got, indent=2))
    m2e = got["m2e_ms"]
    print(
        "\nMouth-to-ear in headless Chromium (WebAudio mic -> WebRTC -> edge -> echo -> edge -> NetEq -> WebAudio)"
    )
    if not m2e:
        print(f"no beep came back (heard {len(got['heard'])} onsets)")
        return 1
    print("| path | beeps heard | p50 ms | p99 ms | Chromium jitter buffer ms |\n|---|---:|---:|---:|---:|")
    rows = [("the call (edge, echo model)", got)]
    if "browser_only" in got:
        rows.append(("the browser alone (page loopback)", got["browser_only"]))
    for name, r in rows:
        ms = r["m2e_ms"] or [float("nan")]
        print(f"| {name} | {len(r['m2e_ms'])}/{len(r['sent'])} | {np.percentile(ms, 50):.0f} "
              f"| {np.percentile(ms, 99):.0f} | {r['jitter_buffer_ms'] or float('nan'):.0f} |")  # fmt: skip
    if "browser_only" in got and got["browser_only"]["m2e_ms"]:
        rest = np.percentile(m2e, 50) - 200 - np.percentile(got["browser_only"]["m2e_ms"], 50)
        print(
            f"\nthe call p50 = 200 ms micro-turn + the browser's own p50 + {rest:.0f} ms (edge, transport, frame phases)"
        )
    print("\nthe edge's waterfall for the call (ms): " + ", ".join(
        f"{hop} {v['p50']:.1f}/{v['p99']:.1f}" for hop, v in got["waterfall"].items()) + " (p50/p99)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
