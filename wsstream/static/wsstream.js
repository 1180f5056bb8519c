// wsstream.js: a small browser client for wsstream's /ws dialect. One file, no dependencies:
// copy it into your app. Microphone -> AudioWorklet -> binary pcm16 frames; reply frames ->
// AudioWorklet ring buffer -> speakers; marks echoed when played; `clear` flushes the buffer.
//
//   import { WsStream } from "./wsstream.js";
//   const s = new WsStream({ url: "wss://example.com/ws" });
//   s.on("log", (e) => console.log(e.data, e.t));   // started_talking, pause_detected, ...
//   s.on("error", (e) => alert(e.message));
//   await s.start();   // asks for the microphone, connects, streams
//   await s.stop();    // stops the mic; the server finishes its reply, then closes
//
// Events (s.on(name, fn) returns a function that unsubscribes):
//   state {state}            "connecting" | "open" | "closing" | "closed"
//   log {data, t, ...}       the server's log events, as sent
//   vad {p: [...], t}        per-window speech probabilities (with {debug: true})
//   level {rms, peak}        input level of each captured chunk, linear 0..1
//   audio {bytes, samples}   a reply frame arrived and was queued for playback
//   mark {name}              the server marked the end of a reply (echoed once played)
//   played {name}            that mark's audio has been played and the mark echoed back
//   clear {dropped}          barge-in: `dropped` queued samples were thrown away
//   message {...}            any other JSON message (fetch_output, warning, ...)
//   error {kind, message}    kind: "microphone" | "server_full" | "closed" | "connect" | "server" | "audio"

const WORKLETS = String.raw`
class WsstreamCapture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.size = options.processorOptions.chunk;   // samples per message
    this.buf = new Int16Array(this.size);
    this.n = 0; this.sum = 0; this.peak = 0;
    this.on = true;
    this.port.onmessage = (e) => { if (e.data === "stop") this.on = false; };
  }
  process(inputs) {
    const ch = inputs[0] && inputs[0][0];
    if (!this.on) return false;
    if (!ch) return true;
    for (let i = 0; i < ch.length; i++) {
      const x = Math.max(-1, Math.min(1, ch[i]));
      this.sum += x * x;
      const a = x < 0 ? -x : x;
      if (a > this.peak) this.peak = a;
      this.buf[this.n++] = x < 0 ? x * 0x8000 : x * 0x7fff;
      if (this.n === this.size) {
        const out = this.buf;
        this.port.postMessage({ pcm: out.buffer, rms: Math.sqrt(this.sum / this.size), peak: this.peak },
                              [out.buffer]);
        this.buf = new Int16Array(this.size);
        this.n = 0; this.sum = 0; this.peak = 0;
      }
    }
    return true;
  }
}
registerProcessor("wsstream-capture", WsstreamCapture);

// A ring buffer of float samples. Marks sit at write positions; when playback passes one it
// is reported back. After running dry it waits for a little audio (prebuffer) before resuming,
// and ramps the edges so that starts, underruns and clears do not click.
class WsstreamPlayback extends AudioWorkletProcessor {
  constructor(options) {
    const o = options.processorOptions;
    super();
    this.ring = new Float32Array(o.capacity);
    this.read = 0; this.write = 0;          // absolute sample counters
    this.prebuffer = o.prebuffer;
    this.playing = false;
    this.marks = [];                        // [{name, at}]
    this.last = 0;                          // last output sample, for fade-outs
    this.underruns = 0;
    this.reportEvery = Math.round(sampleRate / 10);
    this.sinceReport = 0;
    this.port.onmessage = (e) => this.onMessage(e.data);
  }
  onMessage(m) {
    if (m.type === "push") {
      const s = new Float32Array(m.samples);
      const free = this.ring.length - (this.write - this.read);
      if (s.length > free) {                 // overflow: drop the oldest audio
        this.read += s.length - free;
      }
      for (let i = 0; i < s.length; i++) this.ring[(this.write + i) % this.ring.length] = s[i];
      this.write += s.length;
    } else if (m.type === "mark") {
      this.marks.push({ name: m.name, at: this.write });
      if (this.write === this.read) this.flushMarks(this.read);
    } else if (m.type === "clear") {
      const dropped = this.write - this.read;
      this.read = this.write;
      this.playing = false;
      const names = this.marks.map((k) => k.name);
      this.marks = [];
      this.port.postMessage({ type: "cleared", dropped, marks: names });
    }
  }
  flushMarks(pos) {
    while (this.marks.length && this.marks[0].at <= pos) {
      this.port.postMessage({ type: "played", name: this.marks.shift().name, position: pos });
    }
  }
  process(inputs, outputs) {
    const out = outputs[0][0];
    const avail = this.write - this.read;
    if (!this.playing && avail > 0 && (avail >= this.prebuffer || this.marks.length)) this.playing = true;
    let i = 0;
    if (this.playing) {
      const n = Math.min(out.length, avail);
      for (; i < n; i++) out[i] = this.ring[(this.read + i) % this.ring.length];
      this.read += n;
      this.last = n ? out[n - 1] : this.last;
      if (n < out.length) {                   // ran dry
        this.playing = false;
        if (!this.marks.length || this.marks[0].at > this.read) this.underruns++;
      }
      this.flushMarks(this.read);
    }
    for (; i < out.length; i++) {             // silence, ramping down from the last sample
      this.last *= 0.9;
      out[i] = this.last;
    }
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);
    this.sinceReport += out.length;
    if (this.sinceReport >= this.reportEvery) {
      this.sinceReport = 0;
      this.port.postMessage({ type: "status", played: this.read, buffered: this.write - this.read,
                              underruns: this.underruns });
    }
    return true;
  }
}
registerProcessor("wsstream-playback", WsstreamPlayback);
`;

const ERRORS = {
  NotAllowedError: "Microphone access was refused. Allow the microphone for this page and press Start again.",
  NotFoundError: "No microphone was found. Connect one and press Start again.",
  NotReadableError: "The microphone is in use by another application or could not be opened.",
  SecurityError: "The microphone is only available on secure pages (https:// or http://localhost).",
};

const CLOSE_REASONS = {
  1001: "the server is shutting down or restarting",
  1006: "the network connection was lost",
  1011: "the server hit an internal error",
  1013: "the server is overloaded",
};

export class WsStream {
  /**
   * @param {object} [options]
   * @param {string} [options.url]  WebSocket URL; default: /ws on the page's own host
   * @param {boolean} [options.debug]  ask the server for per-window speech probabilities
   * @param {object} [options.inputs]  additional inputs for the reply function
   * @param {MediaTrackConstraints} [options.audio]  microphone constraints
   * @param {number} [options.frameMs]  captured audio per binary frame (default 20)
   * @param {number} [options.prebufferMs]  playback waits for this much audio after running dry (default 60)
   */
  constructor(options = {}) {
    const loc = globalThis.location;
    this.url = options.url ?? `${loc.protocol === "https:" ? "wss:" : "ws:"}//${loc.host}/ws`;
    this.options = { debug: false, frameMs: 20, prebufferMs: 60, ...options };
    this.state = "closed";
    this.context = null;
    this._handlers = new Map();
    this._closingByUs = false;
  }

  on(name, fn) {
    if (!this._handlers.has(name)) this._handlers.set(name, new Set());
    this._handlers.get(name).add(fn);
    return () => this._handlers.get(name).delete(fn);
  }

  _emit(name, detail) {
    for (const fn of this._handlers.get(name) ?? []) {
      try { fn(detail); } catch (err) { console.error(`wsstream: a "${name}" handler failed`, err); }
    }
  }

  _setState(state) {
    this.state = state;
    this._emit("state", { state });
  }

  _fail(kind, message, extra = {}) {
    this._emit("error", { kind, message, ...extra });
  }

  /** Ask for the microphone, open the socket, start streaming. Resolves once audio flows. */
  async start() {
    if (this.ws) throw new Error("already started");
    this._closingByUs = false;
    let stream;
    try {
      if (!navigator.mediaDevices?.getUserMedia) {
        throw Object.assign(new Error("no mediaDevices"), { name: "SecurityError" });
      }
      const audio = this.options.audio ?? { echoCancellation: true, noiseSuppression: true, autoGainControl: true };
      stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1, ...audio } });
    } catch (err) {
      this._fail("microphone", ERRORS[err.name] ?? `Could not open the microphone: ${err.message || err.name}`,
                 { cause: err.name });
      throw err;
    }
    this.stream = stream;
    try {
      await this._setupAudio(stream);
    } catch (err) {
      this._stopTracks();
      this._fail("audio", `Could not start audio processing: ${err.message}`);
      throw err;
    }
    await this._connect();
  }

  async _setupAudio(stream) {
    const ctx = this.context ?? new AudioContext({ latencyHint: "interactive" });
    this.context = ctx;
    if (!this._workletsLoaded) {
      const url = URL.createObjectURL(new Blob([WORKLETS], { type: "text/javascript" }));
      try { await ctx.audioWorklet.addModule(url); } finally { URL.revokeObjectURL(url); }
      this._workletsLoaded = true;
    }
    await ctx.resume();
    this.sampleRate = ctx.sampleRate;
    this.source = ctx.createMediaStreamSource(stream);
    this.capture = new AudioWorkletNode(ctx, "wsstream-capture", {
      numberOfInputs: 1, numberOfOutputs: 0, channelCount: 1, channelCountMode: "explicit",
      processorOptions: { chunk: Math.round(ctx.sampleRate * this.options.frameMs / 1000) },
    });
    this.capture.port.onmessage = (e) => this._onCaptured(e.data);
    this.source.connect(this.capture);
    if (!this.player) {
      this.player = new AudioWorkletNode(ctx, "wsstream-playback", {
        numberOfInputs: 0, numberOfOutputs: 1, outputChannelCount: [1],
        processorOptions: { capacity: ctx.sampleRate * 120, prebuffer: Math.round(ctx.sampleRate * this.options.prebufferMs / 1000) },
      });
      this.player.port.onmessage = (e) => this._onPlayer(e.data);
      this.player.connect(ctx.destination);
    }
  }

  _connect() {
    return new Promise((resolve, reject) => {
      this._setState("connecting");
      const ws = new WebSocket(this.url);
      ws.binaryType = "arraybuffer";
      this.ws = ws;
      let opened = false;
      ws.onopen = () => {
        opened = true;
        ws.send(JSON.stringify({
          event: "start",
          format: { encoding: "pcm16", sample_rate: this.sampleRate },
          debug: !!this.options.debug,
          ...(this.options.inputs ? { inputs: this.options.inputs } : {}),
        }));
        this._setState("open");
        resolve();
      };
      ws.onmessage = (e) => this._onMessage(e.data);
      ws.onclose = (e) => {
        this.ws = null;
        this._stopTracks();
        if (!opened) {
          this._fail("connect", `Could not connect to the server at ${this.url}.`);
          reject(new Error("could not connect"));
        } else if (!this._closingByUs && !this._full) {
          const why = CLOSE_REASONS[e.code] ?? e.reason ?? "";
          this._fail("closed", `The connection to the server was closed${why ? `: ${why}` : ""} (code ${e.code}).`,
                     { code: e.code, reason: e.reason });
        } else if (this._closingByUs && e.code !== 1000 && e.code !== 1005) {
          this._fail("closed", `The server closed the connection with code ${e.code}${e.reason ? ": " + e.reason : ""}.`,
                     { code: e.code, reason: e.reason });
        }
        this._full = false;
        this._setState("closed");
      };
    });
  }

  _onCaptured({ pcm, rms, peak }) {
    this._emit("level", { rms, peak });
    if (this.ws?.readyState === WebSocket.OPEN && !this._closingByUs) this.ws.send(pcm);
  }

  _onMessage(data) {
    if (typeof data !== "string") {
      // pcm16 little-endian (every platform browsers run on is little-endian).
      const pcm = new Int16Array(data, 0, data.byteLength >> 1);
      const f = new Float32Array(pcm.length);
      for (let i = 0; i < pcm.length; i++) f[i] = pcm[i] / 32768;
      this.player.port.postMessage({ type: "push", samples: f.buffer }, [f.buffer]);
      this._emit("audio", { bytes: data.byteLength, samples: pcm.length });
      return;
    }
    let msg;
    try { msg = JSON.parse(data); } catch { return; }
    if (msg.type === "log") this._emit("log", msg);
    else if (msg.type === "vad") this._emit("vad", msg);
    else if (msg.event === "mark") {
      this._emit("mark", { name: msg.mark?.name });
      this.player.port.postMessage({ type: "mark", name: msg.mark?.name });
    } else if (msg.event === "clear") {
      this.player.port.postMessage({ type: "clear" });
    } else if (msg.status === "failed") {
      this._full = true;
      const limit = msg.meta?.limit;
      const text = msg.meta?.error === "concurrency_limit_reached"
        ? `The server is full${limit ? ` (${limit} conversations at once)` : ""}. Try again in a moment.`
        : `The server refused the connection: ${msg.meta?.error ?? "unknown reason"}.`;
      this._fail("server_full", text, { meta: msg.meta });
    } else if (msg.type === "error") {
      this._fail("server", `Server: ${msg.data}`);
    } else {
      this._emit("message", msg);
    }
  }

  _onPlayer(m) {
    if (m.type === "played") {
      if (this.ws?.readyState === WebSocket.OPEN) {
        this.ws.send(JSON.stringify({ event: "mark", mark: { name: m.name } }));
      }
      this._emit("played", { name: m.name });
    } else if (m.type === "cleared") {
      // Marks of audio that was thrown away are answered at once (as Twilio does).
      for (const name of m.marks) this._onPlayer({ type: "played", name });
      this._emit("clear", { dropped: m.dropped });
    } else if (m.type === "status") {
      this.playback = m;
    }
  }

  /** Send new additional inputs for the reply function (used from the next reply on). */
  setInputs(data) {
    this.ws?.send(JSON.stringify({ event: "input", data }));
  }

  /** Ask for a reply now, without waiting for a pause. */
  trigger() {
    this.ws?.send(JSON.stringify({ event: "trigger" }));
  }

  _stopTracks() {
    if (this.capture) {
      this.capture.port.postMessage("stop");
      this.source?.disconnect();
      this.capture = this.source = null;
    }
    this.stream?.getTracks().forEach((t) => t.stop());
    this.stream = null;
  }

  /** Stop the microphone; the server finishes the reply in progress, sends it and closes. */
  async stop() {
    this._stopTracks();
    const ws = this.ws;
    if (!ws) return;
    this._closingByUs = true;
    this._setState("closing");
    if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ event: "stop" }));
    await new Promise((resolve) => {
      if (ws.readyState === WebSocket.CLOSED) resolve();
      else ws.addEventListener("close", resolve, { once: true });
    });
  }

  /** Hang up at once: mic off, socket closed, queued reply audio dropped. */
  close() {
    this._stopTracks();
    this._closingByUs = true;
    this.ws?.close(1000, "client closed");
    this.player?.port.postMessage({ type: "clear" });
  }
}
