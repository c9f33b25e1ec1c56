// microturn browser client: mic (+ optional camera) to the edge over WebRTC, the model's voice back,
// captions / events / cards over the "events" data channel. Plain script, no build step.
//
// Test / automation hook: window.microturn = {start(opts), stop(), stats(), events, state, ...}.
"use strict";

(function () {
  const MAX_EVENTS = 10000; // the in-memory event list is bounded; the on-screen log is shorter
  const MAX_LOG_ROWS = 200;
  const MAX_CAPTION_CHARS = 4000;
  const ICE_GATHER_TIMEOUT_MS = 5000;
  const STATS_INTERVAL_MS = 1000;
  const DEFAULT_MAX_RETRIES = 5;
  const MAX_BACKOFF_S = 30;

  const $ = (id) => document.getElementById(id);
  const ui = {
    start: $("start"), stop: $("stop"), camera: $("camera"), echo: $("echo"), status: $("status"),
    form: $("text-form"), text: $("text"), send: $("send"), audio: $("remote-audio"),
    video: $("local-video"), captions: $("captions"), cards: $("cards"), log: $("log"),
    speaking: $("speaking"),
    stat: {
      model: $("stat-model"), chunks: $("stat-chunks"), rtt: $("stat-rtt"),
      jitter: $("stat-jitter"), inPackets: $("stat-in-packets"), outAudio: $("stat-out-audio"),
      outVideo: $("stat-out-video"), session: $("stat-session"),
    },
  };

  // Everything about the current call; replaced wholesale on each start().
  let call = null;
  let runId = 0; // bumps on every start/stop so stale async work can tell it was cancelled

  const api = {
    state: "idle",
    events: [], // every data-channel message (parsed) plus local "client" events, in arrival order
    session: null, // {session_id, expires_at_unix_ms, limits} of the current call
    modelVersion: null,
    chunks: 0, // output chunks seen ("chunk" events)
    lastChunk: -1,
    lastError: null,
    start, stop, stats: () => Object.assign({}, latestStats), sendText,
  };
  window.microturn = api;

  let latestStats = emptyStats();

  function emptyStats() {
    return {
      timestamp: null,
      currentRoundTripTime: null,
      inboundAudio: { packetsReceived: 0, packetsLost: 0, jitter: null, bytesReceived: 0 },
      outboundAudio: { packetsSent: 0, bytesSent: 0 },
      outboundVideo: { packetsSent: 0, bytesSent: 0, framesEncoded: 0 },
      connectionState: null,
      iceConnectionState: null,
    };
  }

  // ---------------------------------------------------------------- UI helpers

  function setState(state, text) {
    api.state = state;
    ui.status.dataset.state = state;
    if (text !== undefined) ui.status.textContent = text;
  }

  function recordEvent(ev) {
    api.events.push(ev);
    if (api.events.length > MAX_EVENTS) api.events.splice(0, api.events.length - MAX_EVENTS);
  }

  function log(kind, text) {
    const li = document.createElement("li");
    li.className = "log-" + kind;
    const time = document.createElement("time");
    time.textContent = new Date().toLocaleTimeString();
    const tag = document.createElement("span");
    tag.className = "tag";
    tag.textContent = kind;
    const body = document.createElement("span");
    body.className = "body";
    body.textContent = text;
    li.append(time, tag, body);
    ui.log.append(li);
    while (ui.log.childElementCount > MAX_LOG_ROWS) ui.log.firstElementChild.remove();
    ui.log.scrollTop = ui.log.scrollHeight;
  }

  function clientEvent(kind, detail) {
    recordEvent({ type: "client", kind, detail, t: Date.now() });
  }

  function showError(code, message) {
    api.lastError = { code, message };
    clientEvent("error", { code, message });
    log("error", code + ": " + message);
    setState("error", "Error: " + message);
  }

  function setControls(running) {
    ui.start.disabled = running;
    ui.camera.disabled = running;
    ui.echo.disabled = running;
    ui.stop.disabled = !running;
    const chatReady = running && call && call.dc && call.dc.readyState === "open";
    ui.text.disabled = !chatReady;
    ui.send.disabled = !chatReady;
  }

  function resetView() {
    ui.captions.textContent = "";
    ui.cards.replaceChildren(emptyNote("No cards yet."));
    ui.speaking.hidden = true;
    api.modelVersion = null;
    api.chunks = 0;
    api.lastChunk = -1;
    api.lastError = null;
    latestStats = emptyStats();
    renderStats();
  }

  function emptyNote(text) {
    const p = document.createElement("p");
    p.className = "empty";
    p.textContent = text;
    return p;
  }

  const fmt = {
    ms: (s) => (s == null ? "–" : (s * 1000).toFixed(1) + " ms"),
    n: (v) => (v == null ? "–" : String(v)),
  };

  function renderStats() {
    const s = latestStats;
    ui.stat.model.textContent = api.modelVersion || "–";
    ui.stat.chunks.textContent = String(api.chunks);
    ui.stat.rtt.textContent = fmt.ms(s.currentRoundTripTime);
    ui.stat.jitter.textContent = fmt.ms(s.inboundAudio.jitter);
    ui.stat.inPackets.textContent = s.timestamp == null ? "–"
      : s.inboundAudio.packetsReceived + " / " + s.inboundAudio.packetsLost;
    ui.stat.outAudio.textContent = s.timestamp == null ? "–" : String(s.outboundAudio.packetsSent);
    ui.stat.outVideo.textContent = s.timestamp == null ? "–" : String(s.outboundVideo.packetsSent);
    ui.stat.session.textContent = api.session ? api.session.session_id : "–";
  }

  // ---------------------------------------------------------------- HTTP

  class HttpError extends Error {
    constructor(status, detail, retryAfter) {
      super(detail);
      this.status = status;
      this.retryAfter = retryAfter;
    }
  }

  async function fetchJson(url, init) {
    const resp = await fetch(url, init);
    let body = null;
    const text = await resp.text();
    if (text) {
      try { body = JSON.parse(text); } catch (_) { body = { detail: text.slice(0, 200) }; }
    }
    if (!resp.ok) {
      let detail = body && body.detail !== undefined ? body.detail : resp.statusText;
      if (typeof detail !== "string") detail = JSON.stringify(detail);
      const ra = parseInt(resp.headers.get("Retry-After") || "", 10);
      throw new HttpError(resp.status, detail || "HTTP " + resp.status, Number.isFinite(ra) ? ra : null);
    }
    return body;
  }

  function sleep(ms, myRun) {
    return new Promise((resolve, reject) => {
      const t0 = Date.now();
      const tick = () => {
        if (myRun !== runId) return reject(new Cancelled());
        const left = ms - (Date.now() - t0);
        if (left <= 0) return resolve();
        setTimeout(tick, Math.min(left, 250));
      };
      tick();
    });
  }

  class Cancelled extends Error {}

  // POST /api/sessions, retrying 503 ("edge full") with backoff up to maxRetries.
  async function createSession(base, maxRetries, myRun) {
    for (let attempt = 0; ; attempt++) {
      try {
        return await fetchJson(base + "/api/sessions", { method: "POST" });
      } catch (err) {
        if (!(err instanceof HttpError) || err.status !== 503 || attempt >= maxRetries) throw err;
        const backoff = Math.min(MAX_BACKOFF_S, 2 ** attempt);
        const wait = Math.max(err.retryAfter || 0, backoff);
        clientEvent("retry", { attempt: attempt + 1, wait_s: wait, detail: err.message });
        log("retry", "server full (" + err.message + "), retry " + (attempt + 1) + "/" + maxRetries + " in " + wait + " s");
        for (let left = wait; left > 0; left--) {
          setState("waiting", "Server full, retrying in " + left + " s (attempt " + (attempt + 1) + " of " + maxRetries + ")");
          await sleep(1000, myRun);
        }
        setState("starting", "Retrying…");
      }
    }
  }

  function waitIceGathering(pc) {
    if (pc.iceGatheringState === "complete") return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => { cleanup(); resolve(false); }, ICE_GATHER_TIMEOUT_MS);
      const onChange = () => { if (pc.iceGatheringState === "complete") { cleanup(); resolve(true); } };
      const cleanup = () => { clearTimeout(timer); pc.removeEventListener("icegatheringstatechange", onChange); };
      pc.addEventListener("icegatheringstatechange", onChange);
    });
  }

  // ---------------------------------------------------------------- call lifecycle

  /**
   * Start a call. opts: {camera: bool, echoCancellation: bool, baseUrl: string, maxRetries: int,
   *   audio: MediaTrackConstraints (overrides echoCancellation)}. Unset options follow the page's
   * checkboxes. Echo cancellation stays on by default: with speakers the model would hear itself.
   * Resolves once the answer is applied (media may still be connecting); rejects on failure.
   */
  async function start(opts) {
    opts = opts || {};
    if (call) await stop();
    const myRun = ++runId;
    const camera = opts.camera !== undefined ? !!opts.camera : ui.camera.checked;
    ui.camera.checked = camera;
    const echo = opts.echoCancellation !== undefined ? !!opts.echoCancellation : ui.echo.checked;
    ui.echo.checked = echo;
    const base = (opts.baseUrl || "").replace(/\/$/, "");
    const maxRetries = opts.maxRetries !== undefined ? opts.maxRetries : DEFAULT_MAX_RETRIES;

    resetView();
    call = { base, pc: null, dc: null, stream: null, session: null, statsTimer: null, run: myRun };
    api.session = null;
    setControls(true);
    setState("starting", "Starting…");
    clientEvent("start", { camera, echoCancellation: echo });
    log("client", "starting" + (camera ? " with camera" : ""));

    try {
      const audio = opts.audio || { echoCancellation: echo, channelCount: 1 };
      const constraints = { audio, video: camera ? { width: 320, height: 240, frameRate: 15 } : false };
      let stream;
      try {
        stream = await navigator.mediaDevices.getUserMedia(constraints);
      } catch (err) {
        throw new Error("microphone" + (camera ? "/camera" : "") + " unavailable: " + err.message);
      }
      if (myRun !== runId) { stream.getTracks().forEach((t) => t.stop()); throw new Cancelled(); }
      call.stream = stream;
      if (camera) ui.video.srcObject = stream;

      const session = await createSession(base, maxRetries, myRun);
      if (myRun !== runId) { deleteSession(base, session).catch(() => {}); throw new Cancelled(); }
      call.session = session;
      api.session = { session_id: session.session_id, expires_at_unix_ms: session.expires_at_unix_ms, limits: session.limits };
      renderStats();
      log("client", "session " + session.session_id);

      const pc = new RTCPeerConnection({ iceServers: session.ice_servers || [] });
      call.pc = pc;
      // The data channel must exist before the offer so it is negotiated in it.
      const dc = pc.createDataChannel("events");
      call.dc = dc;
      wireDataChannel(dc, myRun);

      const audioTrack = stream.getAudioTracks()[0];
      pc.addTransceiver(audioTrack, { direction: "sendrecv", streams: [stream] });
      const videoTrack = stream.getVideoTracks()[0];
      if (videoTrack) pc.addTransceiver(videoTrack, { direction: "sendonly", streams: [stream] });

      pc.ontrack = (ev) => {
        if (ev.track.kind !== "audio") return;
        ui.audio.srcObject = ev.streams && ev.streams[0] ? ev.streams[0] : new MediaStream([ev.track]);
        const p = ui.audio.play();
        if (p && p.catch) p.catch((e) => log("client", "audio autoplay blocked: " + e.message));
      };
      pc.onconnectionstatechange = () => {
        if (myRun !== runId) return;
        clientEvent("connection", { state: pc.connectionState });
        log("client", "connection " + pc.connectionState);
        if (pc.connectionState === "failed") {
          showError("connection_failed", "media connection failed");
          runId++;
          teardown(true).then(() => setControls(false));
        }
      };

      await pc.setLocalDescription(await pc.createOffer());
      const complete = await waitIceGathering(pc);
      if (!complete) log("client", "ICE gathering did not complete in time; sending the candidates found so far");
      if (myRun !== runId) throw new Cancelled();

      setState("connecting", "Connecting…");
      const answer = await fetchJson(base + "/api/sessions/" + encodeURIComponent(session.session_id) + "/offer", {
        method: "POST",
        headers: { "Content-Type": "application/json", Authorization: "Bearer " + session.token },
        body: JSON.stringify({ sdp: pc.localDescription.sdp, type: "offer" }),
      });
      if (myRun !== runId) throw new Cancelled();
      await pc.setRemoteDescription(answer);
      call.statsTimer = setInterval(() => refreshStats(myRun), STATS_INTERVAL_MS);
      log("client", "answer applied");
    } catch (err) {
      if (err instanceof Cancelled || myRun !== runId) return;
      const code = err instanceof HttpError ? httpCode(err.status) : "client";
      const message = err instanceof HttpError && err.status === 503 ? "server full, gave up after retries: " + err.message : err.message;
      await teardown(true);
      showError(code, message);
      setControls(false);
      throw err;
    }
  }

  // The edge ended the call (reaped, failed, replica gone): release our side; no DELETE needed.
  function serverClosed() {
    runId++;
    teardown(false).then(() => setControls(false));
  }

  function httpCode(status) {
    return { 400: "bad_request", 401: "unauthorized", 404: "unknown_session", 409: "conflict", 503: "server_full" }[status] || "http_" + status;
  }

  /** Stop the call: DELETE the session, close the data channel and the peer connection. */
  async function stop() {
    runId++;
    if (!call) { setControls(false); return; }
    await teardown(true);
    clientEvent("stop", {});
    log("client", "stopped");
    setState("closed", "Stopped.");
    setControls(false);
  }

  function deleteSession(base, session) {
    return fetch(base + "/api/sessions/" + encodeURIComponent(session.session_id), {
      method: "DELETE", headers: { Authorization: "Bearer " + session.token }, keepalive: true,
    });
  }

  // Release the call's resources; with release, DELETE the session on the edge first.
  async function teardown(release) {
    const c = call;
    call = null;
    if (!c) return;
    if (c.statsTimer) clearInterval(c.statsTimer);
    if (c.pc) { try { await refreshStatsOf(c.pc); } catch (_) { /* best effort: keep the last numbers */ } }
    if (release && c.session) {
      try {
        const resp = await deleteSession(c.base, c.session);
        clientEvent("deleted", { status: resp.status });
        if (resp.status !== 204 && resp.status !== 404) log("error", "DELETE session: HTTP " + resp.status);
      } catch (err) {
        log("error", "DELETE session failed: " + err.message);
      }
    }
    if (c.dc) { try { c.dc.close(); } catch (_) { /* already closed */ } }
    if (c.pc) { try { c.pc.close(); } catch (_) { /* already closed */ } }
    if (c.stream) c.stream.getTracks().forEach((t) => t.stop());
    ui.audio.srcObject = null;
    ui.video.srcObject = null;
    ui.speaking.hidden = true;
  }

  // ---------------------------------------------------------------- data channel

  function wireDataChannel(dc, myRun) {
    dc.onopen = () => {
      if (myRun !== runId) return;
      clientEvent("datachannel", { state: "open" });
      log("client", "data channel open");
      setControls(true);
    };
    dc.onclose = () => {
      if (myRun !== runId) return;
      clientEvent("datachannel", { state: "closed" });
      log("client", "data channel closed");
      setControls(true);
    };
    dc.onmessage = (ev) => {
      if (myRun !== runId) return;
      let msg;
      try { msg = JSON.parse(ev.data); } catch (_) { log("error", "bad message from edge"); return; }
      if (!msg || typeof msg.type !== "string") return;
      recordEvent(msg);
      handleMessage(msg);
    };
  }

  const STATE_TEXT = {
    connecting: "Connecting…", live: "Live — talk, show something, or type.",
    recovering: "Reconnecting to the model…", waiting: "Waiting for the model…", closed: "Closed by the server.",
  };

  function handleMessage(msg) {
    switch (msg.type) {
      case "state":
        setState(msg.state, (STATE_TEXT[msg.state] || msg.state) + (msg.detail ? " (" + msg.detail + ")" : ""));
        log("state", msg.state + (msg.detail ? ": " + msg.detail : ""));
        if (msg.state === "closed") serverClosed();
        break;
      case "caption":
        if (msg.text) appendCaption(msg.text);
        break;
      case "speaking":
        ui.speaking.hidden = !msg.speaking;
        break;
      case "delegation":
        log("delegation", "asked the background model: " + msg.request);
        break;
      case "background":
        log("background", msg.text);
        break;
      case "card":
        showCard(msg);
        log("card", msg.title || msg.card_id);
        break;
      case "error":
        api.lastError = { code: msg.code, message: msg.message };
        log("error", msg.code + ": " + msg.message);
        break;
      case "chunk":
        api.chunks += 1;
        api.lastChunk = msg.chunk;
        if (msg.model_version && msg.model_version !== api.modelVersion) {
          api.modelVersion = msg.model_version;
        }
        ui.stat.chunks.textContent = String(api.chunks);
        ui.stat.model.textContent = api.modelVersion || "–";
        break;
      default:
        break; // unknown types are kept in events but not shown
    }
  }

  function appendCaption(text) {
    let s = ui.captions.textContent + text;
    if (s.length > MAX_CAPTION_CHARS) s = "…" + s.slice(s.length - MAX_CAPTION_CHARS);
    ui.captions.textContent = s;
    ui.captions.scrollTop = ui.captions.scrollHeight;
  }

  function showCard(msg) {
    const id = "card-" + String(msg.card_id);
    const card = document.createElement("article");
    card.className = "card";
    card.dataset.cardId = String(msg.card_id);
    const h = document.createElement("h3");
    h.textContent = msg.title || "";
    const p = document.createElement("p");
    p.textContent = msg.body || "";
    card.append(h, p);
    const fields = msg.fields && typeof msg.fields === "object" ? Object.entries(msg.fields) : [];
    if (fields.length) {
      const dl = document.createElement("dl");
      for (const [k, v] of fields) {
        const dt = document.createElement("dt");
        dt.textContent = k;
        const dd = document.createElement("dd");
        dd.textContent = String(v);
        dl.append(dt, dd);
      }
      card.append(dl);
    }
    const existing = Array.from(ui.cards.children).find((el) => el.dataset && el.dataset.cardId === String(msg.card_id));
    const empty = ui.cards.querySelector(".empty");
    if (empty) empty.remove();
    card.id = id.replace(/[^A-Za-z0-9_-]/g, "_");
    if (existing) existing.replaceWith(card);
    else ui.cards.prepend(card);
  }

  /** Send typed text to the model. Returns true when sent. */
  function sendText(text) {
    text = String(text || "").trim();
    if (!text) return false;
    if (!call || !call.dc || call.dc.readyState !== "open") { log("error", "not connected: text not sent"); return false; }
    const limit = call.session && call.session.limits && call.session.limits.max_text_bytes;
    const bytes = new TextEncoder().encode(text).length;
    if (limit && bytes > limit) { log("error", "text too long (" + bytes + " bytes, limit " + limit + ")"); return false; }
    call.dc.send(JSON.stringify({ type: "text", text }));
    clientEvent("text", { text });
    log("you", text);
    return true;
  }

  // ---------------------------------------------------------------- stats

  async function refreshStats(myRun) {
    if (!call || myRun !== runId || !call.pc) return;
    try {
      await refreshStatsOf(call.pc);
    } catch (err) {
      log("error", "getStats: " + err.message);
    }
  }

  async function refreshStatsOf(pc) {
    const report = await pc.getStats();
    const s = emptyStats();
    s.timestamp = Date.now();
    s.connectionState = pc.connectionState;
    s.iceConnectionState = pc.iceConnectionState;
    let selectedPairId = null;
    const pairs = [];
    report.forEach((r) => {
      if (r.type === "transport" && r.selectedCandidatePairId) selectedPairId = r.selectedCandidatePairId;
      else if (r.type === "candidate-pair") pairs.push(r);
      else if (r.type === "inbound-rtp" && r.kind === "audio") {
        s.inboundAudio.packetsReceived += r.packetsReceived || 0;
        s.inboundAudio.packetsLost += r.packetsLost || 0;
        s.inboundAudio.bytesReceived += r.bytesReceived || 0;
        if (r.jitter !== undefined) s.inboundAudio.jitter = r.jitter;
      } else if (r.type === "outbound-rtp" && r.kind === "audio") {
        s.outboundAudio.packetsSent += r.packetsSent || 0;
        s.outboundAudio.bytesSent += r.bytesSent || 0;
      } else if (r.type === "outbound-rtp" && r.kind === "video") {
        s.outboundVideo.packetsSent += r.packetsSent || 0;
        s.outboundVideo.bytesSent += r.bytesSent || 0;
        s.outboundVideo.framesEncoded += r.framesEncoded || 0;
      }
    });
    const pair = pairs.find((p) => p.id === selectedPairId) || pairs.find((p) => p.nominated && p.state === "succeeded");
    if (pair && pair.currentRoundTripTime !== undefined) s.currentRoundTripTime = pair.currentRoundTripTime;
    latestStats = s;
    renderStats();
    return s;
  }

  // ---------------------------------------------------------------- wiring

  ui.start.addEventListener("click", () => { start({}).catch(() => {}); });
  ui.stop.addEventListener("click", () => { stop(); });
  ui.form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    if (sendText(ui.text.value)) ui.text.value = "";
  });
  // Release the session on the server when the tab goes away (fetch keepalive survives unload).
  window.addEventListener("pagehide", () => {
    if (call && call.session) {
      const c = call;
      runId++;
      call = null;
      deleteSession(c.base, c.session).catch(() => {});
      try { c.pc && c.pc.close(); } catch (_) { /* closing anyway */ }
    }
  });
  renderStats();
})();
