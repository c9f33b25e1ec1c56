// microturn load-test caller: one call per page, no UI, driven from Python (loadtest/browser_caller.py)
// through window.lt. The microphone is a WebAudio MediaStreamAudioDestinationNode fed with prompt
// buffers scheduled at exact AudioContext times, so the user's end of speech is known to the sample;
// the model's audio is tapped from the remote track as PCM stamped on the same clock. Times handed
// to Python are wall-clock milliseconds (performance.timeOrigin + performance.now()).
"use strict";

(function () {
  const RATE = 48000;
  const TAP_BLOCKS = 15; // 15 x 128 frames = 40 ms per captured chunk
  const STATS_INTERVAL_MS = 1000;
  const ICE_GATHER_TIMEOUT_MS = 5000;
  const CLOCK_WINDOW = 50; // clock-offset samples kept (one per 100 ms: the last 5 s)
  const MAX_QUEUED_CHUNKS = 1500; // ~60 s of audio if Python stops draining; older chunks are dropped
  const MAX_QUEUED_EVENTS = 2000;

  const wallNow = () => performance.timeOrigin + performance.now();

  // The tap runs on the audio thread: it copies the remote audio into 40 ms chunks with the
  // context frame of their first sample (frames are contiguous, so gaps are visible to Python).
  const TAP_WORKLET = `
    class LtTap extends AudioWorkletProcessor {
      constructor() { super(); this.size = 128 * ${TAP_BLOCKS}; this.buf = new Float32Array(this.size); this.n = 0; this.first = 0; }
      process(inputs) {
        const ch = inputs[0] && inputs[0][0];
        if (!ch) { this.flush(); return true; }
        if (this.n > 0 && (currentFrame !== this.first + this.n || this.n + ch.length > this.size)) this.flush();
        if (this.n === 0) this.first = currentFrame;
        this.buf.set(ch, this.n);
        this.n += ch.length;
        if (this.n === this.size) this.flush();
        return true;
      }
      flush() {
        if (this.n === 0) return;
        const pcm = this.n === this.size ? this.buf : this.buf.slice(0, this.n);
        this.port.postMessage({ frame: this.first, pcm }, [pcm.buffer]);
        this.buf = new Float32Array(this.size);
        this.n = 0;
      }
    }
    registerProcessor("lt-tap", LtTap);`;

  const st = {
    base: "", ctx: null, mic: null, pc: null, dc: null, session: null, videoStream: null, remoteEl: null,
    statsTimer: null, clockTimer: null, offsets: [], tapKind: null,
    audio: [], dropped: 0, events: [], stats: [],
    connectedAt: null, firstAudioAt: null, closed: false,
  };

  function event(ev) {
    ev.t = wallNow();
    st.events.push(ev);
    if (st.events.length > MAX_QUEUED_EVENTS) st.events.splice(0, st.events.length - MAX_QUEUED_EVENTS);
  }

  // ------------------------------------------------------------------ clock: context time <-> wall
  // ctx.currentTime advances once per render callback, so wall - currentTime is a sawtooth whose
  // lower edge is the true offset; the minimum over a sliding window follows slow drift.
  function sampleClock() {
    if (!st.ctx) return;
    st.offsets.push(wallNow() - st.ctx.currentTime * 1000);
    if (st.offsets.length > CLOCK_WINDOW) st.offsets.shift();
  }
  function offsetMs() {
    if (!st.offsets.length) sampleClock();
    return Math.min(...st.offsets);
  }
  const ctxToWall = (sec) => sec * 1000 + offsetMs();
  const wallToCtx = (ms) => (ms - offsetMs()) / 1000;

  // ------------------------------------------------------------------ PCM <-> base64
  function b64ToInt16(b64) {
    const bin = atob(b64);
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    return new Int16Array(bytes.buffer, 0, bytes.length >> 1);
  }
  function int16ToB64(pcm) {
    const bytes = new Uint8Array(pcm.buffer, pcm.byteOffset, pcm.byteLength);
    let bin = "";
    for (let i = 0; i < bytes.length; i += 0x8000) bin += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    return btoa(bin);
  }
  function toInt16(f32) {
    const out = new Int16Array(f32.length);
    for (let i = 0; i < f32.length; i++) {
      const v = Math.max(-1, Math.min(1, f32[i]));
      out[i] = v < 0 ? v * 32768 : v * 32767;
    }
    return out;
  }

  function onTapped(frame, f32) {
    st.audio.push({ frame, pcm: toInt16(f32) });
    if (st.audio.length > MAX_QUEUED_CHUNKS) { st.audio.shift(); st.dropped += 1; }
  }

  // ------------------------------------------------------------------ audio graph
  async function setupAudio() {
    const ctx = new AudioContext({ sampleRate: RATE, latencyHint: "interactive" });
    st.ctx = ctx;
    if (ctx.state !== "running") await ctx.resume();
    if (ctx.state !== "running") throw new Error("AudioContext is " + ctx.state + " (autoplay policy?)");
    st.mic = ctx.createMediaStreamDestination();
    st.mic.channelCount = 1;
    sampleClock();
    st.clockTimer = setInterval(sampleClock, 100);
  }

  async function tapRemote(stream) {
    const ctx = st.ctx;
    // Chromium only feeds a remote WebRTC stream into WebAudio while a media element plays it.
    const el = new Audio();
    el.muted = true;
    el.srcObject = stream;
    st.remoteEl = el;
    el.play().catch((e) => event({ type: "client", kind: "warning", detail: "remote element: " + e.message }));
    const src = ctx.createMediaStreamSource(stream);
    const sink = ctx.createGain();
    sink.gain.value = 0; // keeps the tap pulled by the graph, silently
    sink.connect(ctx.destination);
    if (ctx.audioWorklet) {
      const url = URL.createObjectURL(new Blob([TAP_WORKLET], { type: "application/javascript" }));
      await ctx.audioWorklet.addModule(url);
      const node = new AudioWorkletNode(ctx, "lt-tap", { numberOfInputs: 1, numberOfOutputs: 1, channelCount: 1, channelCountMode: "explicit" });
      node.port.onmessage = (m) => onTapped(m.data.frame, m.data.pcm);
      src.connect(node);
      node.connect(sink);
      st.tapKind = "worklet";
    } else {
      // No AudioWorklet (an insecure origin): the deprecated ScriptProcessor, on the main thread.
      const node = ctx.createScriptProcessor(2048, 1, 1);
      node.onaudioprocess = (e) => onTapped(Math.round(e.playbackTime * ctx.sampleRate), e.inputBuffer.getChannelData(0).slice());
      src.connect(node);
      node.connect(sink);
      st.tapKind = "script-processor";
    }
  }

  // ------------------------------------------------------------------ HTTP (same origin as the edge)
  async function fetchJson(path, init) {
    const resp = await fetch(path, init);
    const text = await resp.text();
    let body = null;
    try { body = text ? JSON.parse(text) : null; } catch (_) { body = { detail: text.slice(0, 200) }; }
    if (!resp.ok) {
      const err = new Error("HTTP " + resp.status + " on " + path + ": " + JSON.stringify(body && body.detail !== undefined ? body.detail : body));
      err.status = resp.status;
      err.retryAfter = parseFloat(resp.headers.get("Retry-After") || "");
      throw err;
    }
    return body;
  }

  async function createSession(maxRetries) {
    for (let attempt = 0; ; attempt++) {
      try {
        return await fetchJson(st.base + "/api/sessions", { method: "POST" });
      } catch (err) {
        if (err.status !== 503 || attempt >= maxRetries) throw err;
        const waitS = Math.max(Number.isFinite(err.retryAfter) ? err.retryAfter : 0, Math.min(30, 2 ** attempt));
        event({ type: "client", kind: "retry", detail: "edge full, retry in " + waitS + " s" });
        await new Promise((r) => setTimeout(r, waitS * 1000));
      }
    }
  }

  function waitIceGathering(pc) {
    if (pc.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => { clearTimeout(timer); pc.removeEventListener("icegatheringstatechange", on); resolve(); };
      const on = () => { if (pc.iceGatheringState === "complete") done(); };
      const timer = setTimeout(done, ICE_GATHER_TIMEOUT_MS);
      pc.addEventListener("icegatheringstatechange", on);
    });
  }

  // ------------------------------------------------------------------ the call

  /** Dial: session, peer connection with the session's ICE servers, offer/answer. opts: {video,
   *  maxRetries, base: the edge's path prefix}. Resolves {session_id, dialed_at_ms, sample_rate}
   *  once the answer is applied; a failure leaves what it got (the session) for hangup() to free. */
  async function dial(opts) {
    opts = opts || {};
    const dialedAt = wallNow();
    st.base = String(opts.base || "").replace(/\/$/, "");
    await setupAudio();
    const session = await createSession(opts.maxRetries !== undefined ? opts.maxRetries : 5);
    st.session = session;
    const pc = new RTCPeerConnection({ iceServers: session.ice_servers || [] });
    st.pc = pc;
    const dc = pc.createDataChannel("events"); // before the offer, so the offer negotiates it
    st.dc = dc;
    dc.onopen = () => event({ type: "client", kind: "datachannel", state: "open" });
    dc.onclose = () => event({ type: "client", kind: "datachannel", state: "closed" });
    dc.onmessage = (m) => onMessage(m.data);

    const micTrack = st.mic.stream.getAudioTracks()[0];
    pc.addTransceiver(micTrack, { direction: "sendrecv", streams: [st.mic.stream] });
    if (opts.video) {
      st.videoStream = await navigator.mediaDevices.getUserMedia({ video: { width: 320, height: 240, frameRate: 15 }, audio: false });
      pc.addTransceiver(st.videoStream.getVideoTracks()[0], { direction: "sendonly", streams: [st.videoStream] });
    }
    pc.ontrack = (ev) => {
      if (ev.track.kind !== "audio") return;
      const stream = ev.streams && ev.streams[0] ? ev.streams[0] : new MediaStream([ev.track]);
      const first = () => { if (st.firstAudioAt === null) { st.firstAudioAt = wallNow(); event({ type: "client", kind: "first_audio" }); } };
      if (!ev.track.muted) first();
      ev.track.addEventListener("unmute", first);
      tapRemote(stream).catch((e) => event({ type: "client", kind: "error", detail: "audio tap: " + e.message }));
    };
    pc.onconnectionstatechange = () => {
      if (pc.connectionState === "connected" && st.connectedAt === null) st.connectedAt = wallNow();
      event({ type: "client", kind: "connection", state: pc.connectionState });
    };

    await pc.setLocalDescription(await pc.createOffer());
    await waitIceGathering(pc);
    const answer = await fetchJson(st.base + "/api/sessions/" + encodeURIComponent(session.session_id) + "/offer", {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: "Bearer " + session.token },
      body: JSON.stringify({ sdp: pc.localDescription.sdp, type: "offer" }),
    });
    await pc.setRemoteDescription(answer);
    st.statsTimer = setInterval(() => { collectStats().catch(() => {}); }, STATS_INTERVAL_MS);
    return { session_id: session.session_id, dialed_at_ms: dialedAt, sample_rate: st.ctx.sampleRate };
  }

  // Data-channel events, trimmed to what the records need (chunk events are 5 a second).
  let lastVersion = null;
  function onMessage(data) {
    let msg;
    try { msg = JSON.parse(data); } catch (_) { event({ type: "error", code: "CLIENT_UNREADABLE_EVENT" }); return; }
    if (!msg || typeof msg.type !== "string") return;
    switch (msg.type) {
      case "chunk":
        if (msg.model_version && msg.model_version !== lastVersion) {
          lastVersion = msg.model_version;
          event({ type: "model_version", model_version: msg.model_version });
        }
        break;
      case "state": event({ type: "state", state: msg.state, detail: msg.detail || "" }); break;
      case "error": event({ type: "error", code: String(msg.code || "?"), detail: String(msg.message || "").slice(0, 200) }); break;
      case "speaking": event({ type: "speaking", speaking: !!msg.speaking, chunk: msg.chunk }); break;
      default: break;
    }
  }

  /** Play int16 48 kHz PCM (base64) into the microphone starting at wall time atMs (or as soon as
   *  possible if that has passed). Returns the wall time the first sample is rendered at. */
  function play(b64, atMs) {
    const pcm = b64ToInt16(b64);
    const buf = st.ctx.createBuffer(1, pcm.length, RATE);
    const ch = buf.getChannelData(0);
    for (let i = 0; i < pcm.length; i++) ch[i] = pcm[i] / 32768;
    const src = st.ctx.createBufferSource();
    src.buffer = buf;
    src.connect(st.mic);
    const when = Math.max(wallToCtx(atMs), st.ctx.currentTime + 0.02);
    src.start(when);
    return ctxToWall(when);
  }

  /** Type a message on the data channel; returns the wall time it was sent, or null if closed. */
  function sendText(text) {
    if (!st.dc || st.dc.readyState !== "open") return null;
    st.dc.send(JSON.stringify({ type: "text", text: String(text) }));
    return wallNow();
  }

  async function collectStats() {
    if (!st.pc || st.closed) return;
    const report = await st.pc.getStats();
    const s = { t: wallNow(), packetsReceived: 0, packetsLost: 0, jitter: null, jitterBufferDelay: 0,
      jitterBufferEmittedCount: 0, concealedSamples: 0, silentConcealedSamples: 0, totalSamplesReceived: 0,
      bytesReceived: 0, rtt: null };
    let pairId = null;
    const pairs = {};
    report.forEach((r) => {
      if (r.type === "inbound-rtp" && r.kind === "audio") {
        s.packetsReceived += r.packetsReceived || 0;
        s.packetsLost += r.packetsLost || 0;
        if (r.jitter !== undefined) s.jitter = r.jitter;
        s.jitterBufferDelay += r.jitterBufferDelay || 0;
        s.jitterBufferEmittedCount += r.jitterBufferEmittedCount || 0;
        s.concealedSamples += r.concealedSamples || 0;
        s.silentConcealedSamples += r.silentConcealedSamples || 0;
        s.totalSamplesReceived += r.totalSamplesReceived || 0;
        s.bytesReceived += r.bytesReceived || 0;
      } else if (r.type === "transport" && r.selectedCandidatePairId) {
        pairId = r.selectedCandidatePairId;
      } else if (r.type === "candidate-pair") {
        pairs[r.id] = r;
      }
    });
    const pair = pairs[pairId] || Object.values(pairs).find((p) => p.nominated && p.state === "succeeded");
    if (pair && pair.currentRoundTripTime !== undefined) s.rtt = pair.currentRoundTripTime;
    st.stats.push(s);
    return s;
  }

  /** Everything new since the last drain: received audio merged into contiguous segments
   *  ({t0_ms, b64}), data-channel and client events, stats samples. */
  function drain() {
    const off = offsetMs();
    const segments = [];
    let cur = null;
    for (const c of st.audio) {
      if (cur && c.frame === cur.end) { cur.parts.push(c.pcm); cur.end += c.pcm.length; }
      else { cur = { frame: c.frame, end: c.frame + c.pcm.length, parts: [c.pcm] }; segments.push(cur); }
    }
    st.audio = [];
    const audio = segments.map((s) => {
      const pcm = new Int16Array(s.end - s.frame);
      let at = 0;
      for (const p of s.parts) { pcm.set(p, at); at += p.length; }
      return { t0_ms: (s.frame / st.ctx.sampleRate) * 1000 + off, b64: int16ToB64(pcm) };
    });
    const out = {
      audio, events: st.events, stats: st.stats, dropped_chunks: st.dropped,
      connected_at_ms: st.connectedAt, first_audio_at_ms: st.firstAudioAt, tap: st.tapKind,
      connection: st.pc ? st.pc.connectionState : null, sample_rate: st.ctx ? st.ctx.sampleRate : null,
    };
    st.events = [];
    st.stats = [];
    return out;
  }

  /** Hang up as the browser client's Stop does: last stats, DELETE the session, close the data
   *  channel and the peer connection (before the browser goes away), then the audio. */
  async function hangup() {
    if (st.closed || !st.ctx) return { delete_status: null };
    if (st.statsTimer) clearInterval(st.statsTimer);
    try { await collectStats(); } catch (_) { /* keep the last numbers */ }
    st.closed = true;
    let status = null;
    if (st.session) {
      try {
        const resp = await fetch(st.base + "/api/sessions/" + encodeURIComponent(st.session.session_id), {
          method: "DELETE", headers: { Authorization: "Bearer " + st.session.token },
        });
        status = resp.status;
      } catch (err) {
        event({ type: "client", kind: "error", detail: "DELETE failed: " + err.message });
      }
    }
    try { if (st.dc) st.dc.close(); } catch (_) { /* already closed */ }
    try { if (st.pc) st.pc.close(); } catch (_) { /* already closed */ }
    if (st.videoStream) st.videoStream.getTracks().forEach((t) => t.stop());
    if (st.remoteEl) st.remoteEl.srcObject = null;
    if (st.clockTimer) clearInterval(st.clockTimer);
    const pcState = st.pc ? st.pc.connectionState : null;
    try { if (st.ctx) await st.ctx.close(); } catch (_) { /* closing anyway */ }
    return { delete_status: status, pc_state: pcState };
  }

  window.lt = { dial, play, sendText, drain, hangup, wallNow };
})();
