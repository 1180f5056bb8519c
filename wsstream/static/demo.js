// The demo page: wires wsstream.js to the live view. Query options: ?threshold=0.5 (the line
// drawn on the trace; match the server's), ?processing=0 (no echo cancellation / noise
// suppression / auto gain on the microphone), ?url=ws://host:port/ws.
import { WsStream } from "./wsstream.js";

const params = new URLSearchParams(location.search);
const THRESHOLD = Number(params.get("threshold") ?? 0.5);
const WINDOW_S = 0.032;        // one VAD window (512 samples at 16 kHz, 256 at 8 kHz)
const TRACE_S = 12;            // seconds of history on the trace

// Everything the page knows, for people (devtools) and tests.
const demo = {
  state: "idle", sampleRate: null,
  events: [],                  // {data, t, at} where at = ms since Start
  vadWindows: 0,
  audioFramesReceived: 0, audioBytesReceived: 0,
  scheduledSamples: 0, playedSamples: 0, bufferedSamples: 0, underruns: 0,
  marksReceived: [], marksEchoed: [], clears: 0, droppedSamples: 0,
  delaysMs: [], errors: [], level: { rms: 0, peak: 0 },
};
window.wsstreamDemo = demo;

const $ = (id) => document.getElementById(id);
let client = null;
let t0 = 0;
let pauseAt = null;
let failed = false;            // an error was shown since the last Start
const trace = [];              // [t, p]
const markers = [];            // [t, kind]

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = false;
}

function setState(state, text) {
  demo.state = state;
  $("conn").dataset.state = state;
  $("conn-text").textContent = text ?? {
    idle: "not connected", connecting: "connecting…", open: "connected, listening",
    closing: "finishing the reply…", closed: "disconnected", error: "error",
  }[state] ?? state;
}

function addEvent(data, t, details = "") {
  const at = performance.now() - t0;
  demo.events.push({ data, t, at, details });
  const row = document.createElement("tr");
  row.className = `ev-${data}`;
  for (const text of [`${(at / 1000).toFixed(2)} s`, t == null ? "" : `${t.toFixed(2)} s`, data, details]) {
    const td = document.createElement("td");
    td.textContent = text;
    row.appendChild(td);
  }
  const body = $("events");
  body.prepend(row);
  while (body.children.length > 200) body.lastChild.remove();
}

const median = (xs) => { const s = [...xs].sort((a, b) => a - b); return s[Math.floor(s.length / 2)]; };

function wire(s) {
  s.on("state", ({ state }) => {
    if (!failed || state !== "closed") setState(state);  // keep showing the error
    if (state === "closed") {
      $("start").disabled = false;
      $("stop").disabled = true;
      $("hint").textContent = "Press Start to talk again.";
    }
  });
  s.on("error", ({ kind, message }) => {
    failed = true;
    demo.errors.push({ kind, message });
    showError(message);
    setState("error", { server_full: "server full", microphone: "no microphone", closed: "disconnected",
                        connect: "cannot connect" }[kind] ?? "error");
  });
  s.on("log", (e) => {
    let details = "";
    if (e.data === "pause_detected") {
      pauseAt = performance.now();
      details = `utterance ${e.speech_s?.toFixed(2)} s${e.reason && e.reason !== "pause" ? `, ${e.reason}` : ""}`;
    }
    addEvent(e.data, e.t, details);
    if (["started_talking", "pause_detected", "response_starting"].includes(e.data)) markers.push([e.t, e.data]);
  });
  s.on("vad", ({ p, t }) => {
    demo.vadWindows += p.length;
    for (let i = 0; i < p.length; i++) trace.push([t - (p.length - 1 - i) * WINDOW_S, p[i]]);
    const cut = trace.length - Math.ceil((TRACE_S + 2) / WINDOW_S);
    if (cut > 0) trace.splice(0, cut);
  });
  s.on("level", (level) => { demo.level = level; });
  s.on("audio", ({ bytes, samples }) => {
    demo.audioFramesReceived++;
    demo.audioBytesReceived += bytes;
    demo.scheduledSamples += samples;
    if (pauseAt !== null) {
      const ms = performance.now() - pauseAt;
      pauseAt = null;
      demo.delaysMs.push(ms);
      $("delay").textContent = ms.toFixed(0);
      $("delay-stats").textContent = `median ${median(demo.delaysMs).toFixed(0)} ms over ${demo.delaysMs.length} ` +
        (demo.delaysMs.length === 1 ? "reply" : "replies");
    }
  });
  s.on("mark", ({ name }) => demo.marksReceived.push(name));
  s.on("played", ({ name }) => {
    demo.marksEchoed.push(name);
    addEvent("mark", null, `${name} played, echoed`);
  });
  s.on("clear", ({ dropped }) => {
    demo.clears++;
    demo.droppedSamples += dropped;
    pauseAt = null;
    addEvent("clear", null, `barge-in: dropped ${(dropped / demo.sampleRate * 1000).toFixed(0)} ms of reply audio`);
  });
}

async function start() {
  $("error").hidden = true;
  failed = false;
  $("start").disabled = true;
  $("hint").textContent = "";
  const processing = params.get("processing") !== "0";
  client ??= new WsStream({
    url: params.get("url") ?? undefined,
    debug: true,
    audio: { echoCancellation: processing, noiseSuppression: processing, autoGainControl: processing },
  });
  if (!client._wired) { wire(client); client._wired = true; }
  t0 = performance.now();
  try {
    await client.start();
    demo.sampleRate = client.sampleRate;
    $("stop").disabled = false;
    $("hint").textContent = `Microphone at ${client.sampleRate} Hz. Speak, then pause.`;
  } catch {
    $("start").disabled = false;
  }
}

async function stop() {
  $("stop").disabled = true;
  await client?.stop();
}

$("start").addEventListener("click", start);
$("stop").addEventListener("click", stop);
window.addEventListener("error", (e) => demo.errors.push({ kind: "page", message: String(e.message) }));
window.addEventListener("unhandledrejection", (e) => demo.errors.push({ kind: "page", message: String(e.reason) }));

// ---- drawing -------------------------------------------------------------------

const canvas = $("trace");
const ctx2d = canvas.getContext("2d");
const css = getComputedStyle(document.documentElement);
const color = (name) => css.getPropertyValue(name).trim();
const MARK_COLORS = { started_talking: color("--st"), pause_detected: color("--pd"), response_starting: color("--rs") };
const MARK_LABELS = { started_talking: "talking", pause_detected: "pause", response_starting: "reply" };

let shownDb = -80, lastDraw = performance.now();

function draw() {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
  }
  const g = ctx2d;
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, w, h);
  const left = 34, right = w - 6, chipTop = 2, top = 34, bottom = h - 20;
  const end = Math.max(TRACE_S, trace.length ? trace[trace.length - 1][0] : 0);
  const begin = end - TRACE_S;
  const x = (t) => left + (t - begin) / TRACE_S * (right - left);
  const y = (p) => bottom - p * (bottom - top);

  g.font = "11px system-ui, sans-serif";
  g.fillStyle = "#667085";
  g.strokeStyle = "#eef0f3";
  g.lineWidth = 1;
  g.textAlign = "right";
  g.textBaseline = "middle";
  for (const p of [0, 0.25, 0.5, 0.75, 1]) {
    g.beginPath(); g.moveTo(left, y(p) + 0.5); g.lineTo(right, y(p) + 0.5); g.stroke();
    g.fillText(p.toFixed(2), left - 5, y(p));
  }
  g.textAlign = "center";
  g.textBaseline = "top";
  for (let s = Math.ceil(begin); s <= end; s += 1) {
    if (s < 0 || x(s) + 10 > w) continue;
    g.fillText(`${s}s`, x(s), bottom + 5);
  }

  // Event markers: a line at the event's audio time and a labelled chip above the plot;
  // chips that would overlap (pause detected and reply starting often coincide) stack up.
  const rows = [];
  g.font = "600 10px system-ui, sans-serif";
  g.textAlign = "left";
  g.textBaseline = "middle";
  for (const [t, kind] of markers) {
    if (t < begin) continue;
    const mx = x(t);
    g.strokeStyle = MARK_COLORS[kind];
    g.lineWidth = 2;
    g.beginPath(); g.moveTo(mx, chipTop); g.lineTo(mx, bottom); g.stroke();
    const label = MARK_LABELS[kind];
    const cw = g.measureText(label).width + 8;
    const cx = Math.min(mx, right - cw);       // keep the chip inside the canvas
    let r = rows.findIndex((endX) => endX < cx - 2);
    if (r < 0) { r = rows.length; rows.push(0); }
    if (r > 1) continue;  // two rows of chips at most
    rows[r] = cx + cw;
    const cy = chipTop + r * 14;
    g.fillStyle = MARK_COLORS[kind];
    g.beginPath(); g.roundRect(cx, cy, cw, 12, 3); g.fill();
    g.fillStyle = "#fff";
    g.fillText(label, cx + 4, cy + 6.5);
  }

  // The probability trace, filled.
  const pts = trace.filter(([t]) => t >= begin);
  if (pts.length > 1) {
    g.beginPath();
    g.moveTo(x(pts[0][0]), y(0));
    for (const [t, p] of pts) g.lineTo(x(t), y(p));
    g.lineTo(x(pts[pts.length - 1][0]), y(0));
    g.closePath();
    g.fillStyle = "rgba(37, 99, 235, 0.18)";
    g.fill();
    g.beginPath();
    pts.forEach(([t, p], i) => (i ? g.lineTo(x(t), y(p)) : g.moveTo(x(t), y(p))));
    g.strokeStyle = color("--speech");
    g.lineWidth = 1.5;
    g.stroke();
  }

  // Threshold.
  g.setLineDash([6, 4]);
  g.strokeStyle = color("--threshold");
  g.lineWidth = 1.5;
  g.beginPath(); g.moveTo(left, y(THRESHOLD)); g.lineTo(right, y(THRESHOLD)); g.stroke();
  g.setLineDash([]);

  // Level meter and playback numbers.
  const now = performance.now();
  const instant = 20 * Math.log10(Math.max(demo.level.rms, 1e-4));
  shownDb = Math.max(instant, shownDb - (now - lastDraw) * 0.03);  // falls 30 dB/s
  lastDraw = now;
  const db = shownDb;
  const listening = demo.state === "open";
  $("level-bar").style.width = listening ? `${Math.max(0, Math.min(100, (db + 60) / 60 * 100))}%` : "0";
  $("level-db").textContent = listening ? db.toFixed(0) : "–";
  const pb = client?.playback;
  if (pb) {
    demo.playedSamples = pb.played;
    demo.bufferedSamples = pb.buffered;
    demo.underruns = pb.underruns;
  }
  $("frames").textContent = demo.audioFramesReceived;
  $("buffered").textContent = demo.sampleRate ? `${(demo.bufferedSamples / demo.sampleRate * 1000).toFixed(0)} ms` : "0 ms";
  $("marks").textContent = demo.marksEchoed.length;
  $("clears").textContent = demo.clears;
  requestAnimationFrame(draw);
}
requestAnimationFrame(draw);
