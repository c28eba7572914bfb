// whisper-at's page: upload or record audio, stream the transcription from
// /v1/audio/transcriptions, draw the sound timeline, offer the transcript as files.
// Plain JavaScript, no framework and nothing fetched from elsewhere.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const COLOURS = ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563"];
const state = { file: null, body: null, segments: [], url: null, recorder: null, tags: false };

function setStatus(text, error = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", error);
}

function choose(file) {
  state.file = file;
  $("chosen").textContent = `${file.name} (${(file.size / 1024).toFixed(0)} KiB)`;
  $("run").disabled = false;
  if (state.url) URL.revokeObjectURL(state.url);
  state.url = URL.createObjectURL(file);
  $("audio").src = state.url;
  $("player").hidden = false;
}

function seek(seconds) {
  const audio = $("audio");
  audio.currentTime = seconds;
  audio.play().catch(() => {}); // autoplay may be refused; the position is set anyway
}

// HH:MM:SS,mmm as the server's files have it (hours optional: WebVTT from openai-whisper)
function clock(seconds, separator, hours = true) {
  const ms = Math.round(seconds * 1000);
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  const h = Math.floor(ms / 3600000), m = Math.floor(ms / 60000) % 60, s = Math.floor(ms / 1000) % 60;
  const head = hours || h > 0 ? `${pad(h)}:` : "";
  return `${head}${pad(m)}:${pad(s)}${separator}${pad(ms % 1000, 3)}`;
}

function short(seconds) {
  return `${Math.floor(seconds / 60)}:${String(Math.floor(seconds % 60)).padStart(2, "0")}`;
}

// --- the transcript -------------------------------------------------------------------
function addSegment(segment) {
  state.segments.push(segment);
  const item = document.createElement("li");
  item.dataset.start = segment.start;
  item.dataset.end = segment.end;
  const time = document.createElement("span");
  time.className = "time";
  time.textContent = `${short(segment.start)}–${short(segment.end)}`;
  item.append(time, document.createTextNode(segment.text.trim()));
  for (const tag of segment.audio_tags || []) {
    const chip = document.createElement("span");
    chip.className = "tag";
    chip.textContent = `${tag.label} ${tag.probability.toFixed(2)}`;
    item.append(chip);
  }
  item.addEventListener("click", () => seek(segment.start));
  $("transcript").append(item);
  $("transcript-section").hidden = false;
}

// --- the timeline: top classes' probabilities, transcript segments, sound events ------
function el(name, attributes, parent) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  if (parent) parent.append(node);
  return node;
}

function drawTimeline(body) {
  const width = 1000, left = 190, plot = 140, row = 18;
  const duration = Math.max(body.duration || 0, 0.001);
  const curves = body.class_curves || [];
  const events = body.sound_events || [];
  const eventLabels = [...new Set(events.map((e) => e.label))];
  const height = plot + 30 + row + 8 + eventLabels.length * row + 24;
  const x = (t) => left + ((width - left - 10) * t) / duration;
  const svg = el("svg", { viewBox: `0 0 ${width} ${height}`, role: "img" });
  el("title", {}, svg).textContent = "Sound classes over time, transcript segments and sound events";

  // probabilities of the top classes, one step line each, one step per tag window
  el("line", { x1: left, x2: width - 10, y1: plot + 10, y2: plot + 10, stroke: "#999" }, svg);
  for (const p of [0, 0.5, 1]) {
    el("text", { x: left - 6, y: plot + 14 - p * plot, "text-anchor": "end" }, svg).textContent = p;
  }
  const res = body.at_time_res;
  curves.forEach((curve, k) => {
    const points = [];
    curve.probabilities.forEach((p, i) => {
      const y = plot + 10 - p * plot;
      points.push(`${x(i * res)},${y}`, `${x(Math.min((i + 1) * res, duration))},${y}`);
    });
    const line = el("polyline", { points: points.join(" "), fill: "none",
      stroke: COLOURS[k % COLOURS.length], "stroke-width": 2, class: "curve" }, svg);
    el("title", {}, line).textContent = curve.label;
  });

  // transcript segments
  let y = plot + 30;
  el("text", { x: left - 6, y: y + 13, "text-anchor": "end" }, svg).textContent = "speech";
  for (const segment of state.segments) {
    const bar = el("rect", { x: x(segment.start), y, height: row - 4, rx: 3, fill: "#93c5fd",
      width: Math.max(2, x(segment.end) - x(segment.start)), class: "segment",
      "data-start": segment.start }, svg);
    el("title", {}, bar).textContent = segment.text.trim();
    bar.addEventListener("click", () => seek(segment.start));
  }
  y += row + 8;

  // sound events, one row per class
  eventLabels.forEach((label, k) => {
    const top = y + k * row;
    const name = el("text", { x: left - 6, y: top + 13, "text-anchor": "end" }, svg);
    name.textContent = label.length > 30 ? `${label.slice(0, 29)}…` : label;
    el("title", {}, name).textContent = label;
    const curve = curves.findIndex((c) => c.label === label);
    const colour = curve >= 0 ? COLOURS[curve % COLOURS.length] : "#fdba74";
    for (const event of events.filter((e) => e.label === label)) {
      const bar = el("rect", { x: x(event.start), y: top, height: row - 4, rx: 3,
        width: Math.max(2, x(event.end) - x(event.start)), fill: colour, class: "event",
        "data-start": event.start }, svg);
      el("title", {}, bar).textContent =
        `${label} ${short(event.start)}–${short(event.end)} (${event.probability.toFixed(2)})`;
      bar.addEventListener("click", () => seek(event.start));
    }
  });

  // time axis and play head
  const axis = height - 6;
  const step = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600].find((s) => duration / s <= 10) || 1200;
  for (let t = 0; t <= duration; t += step) {
    el("text", { x: x(t), y: axis, "text-anchor": "middle" }, svg).textContent = short(t);
  }
  const head = el("line", { x1: left, x2: left, y1: 0, y2: height - 18, stroke: "#111",
    "stroke-dasharray": "3 3", id: "playhead" }, svg);
  $("audio").ontimeupdate = () => {
    const t = $("audio").currentTime;
    head.setAttribute("x1", x(Math.min(t, duration)));
    head.setAttribute("x2", x(Math.min(t, duration)));
    for (const item of $("transcript").children) {
      item.classList.toggle("playing", t >= +item.dataset.start && t < +item.dataset.end);
    }
  };
  $("timeline").replaceChildren(svg);
  $("legend").replaceChildren(...curves.map((curve, k) => {
    const span = document.createElement("span");
    span.style.setProperty("--colour", COLOURS[k % COLOURS.length]);
    span.textContent = curve.label;
    return span;
  }));
  $("timeline-section").hidden = false;
}

// --- downloads: the same text as the API's srt / vtt (with captions=true for the cues) --
function dialogue(vtt) {
  const blocks = state.segments.map((s, i) => {
    const times = `${clock(s.start, vtt ? "." : ",", !vtt)} --> ${clock(s.end, vtt ? "." : ",", !vtt)}`;
    const text = s.text.trim().replaceAll("-->", "->");
    return vtt ? `${times}\n${text}\n\n` : `${i + 1}\n${times}\n${text}\n\n`;
  });
  return (vtt ? "WEBVTT\n\n" : "") + blocks.join("");
}

function escapeVtt(text) {
  return text.replaceAll("&", "&amp;").replaceAll("<", "&lt;").replaceAll(">", "&gt;");
}

// captions with sound cues ([dog barking]) from the server's caption_cues
function cueCaptions(cues, vtt) {
  if (!vtt) {
    return cues.map((c, i) => `${i + 1}\n${clock(c.start, ",")} --> ${clock(c.end, ",")}\n` +
      `${[c.sound, c.dialogue].filter(Boolean).join("\n")}\n`).join("\n");
  }
  const blocks = cues.map((c) => {
    const lines = [];
    if (c.sound) lines.push(`<c.sound>${escapeVtt(c.sound)}</c>`);
    if (c.dialogue) lines.push(escapeVtt(c.dialogue));
    return `${clock(c.start, ".")} --> ${clock(c.end, ".")}\n${lines.join("\n")}\n`;
  });
  return ["WEBVTT\n", ...blocks].join("\n");
}

function offer(id, name, text, type) {
  const link = $(id);
  if (link.href) URL.revokeObjectURL(link.href);
  link.href = URL.createObjectURL(new Blob([text], { type }));
  link.download = name;
}

function offerDownloads(body) {
  const stem = (state.file.name || "audio").replace(/\.[^.]*$/, "");
  offer("dl-txt", `${stem}.txt`, state.segments.map((s) => s.text.trim()).join("\n") + "\n", "text/plain");
  offer("dl-srt", `${stem}.srt`, dialogue(false), "application/x-subrip");
  offer("dl-vtt", `${stem}.vtt`, dialogue(true), "text/vtt");
  const cues = body.caption_cues;
  $("dl-sounds").hidden = !cues;
  if (cues) {
    offer("dl-srt-sounds", `${stem}.captions.srt`, cueCaptions(cues, false), "application/x-subrip");
    offer("dl-vtt-sounds", `${stem}.captions.vtt`, cueCaptions(cues, true), "text/vtt");
  }
  offer("dl-json", `${stem}.json`, JSON.stringify(body, null, 1), "application/json");
}

// --- the request: a server-sent event stream of segments, then the whole result --------
async function transcribe(event) {
  event.preventDefault();
  const form = new FormData();
  form.append("file", state.file, state.file.name || "recording.webm");
  form.append("model", "whisper-1");
  form.append("response_format", "verbose_json");
  form.append("stream", "true");
  form.append("at_time_res", $("at-time-res").value);
  form.append("top_k", $("top-k").value);
  form.append("temperature", $("temperature").value || "0");
  if ($("language").value.trim()) form.append("language", $("language").value.trim());
  if ($("prompt").value.trim()) form.append("prompt", $("prompt").value.trim());
  if ($("words").checked) form.append("timestamp_granularities[]", "word");
  if (state.tags) form.append("captions", "true"); // cues timed by words, as the CLI's
  const headers = {};
  if ($("api-key").value) headers.Authorization = `Bearer ${$("api-key").value}`;

  state.segments = [];
  $("transcript").replaceChildren();
  $("timeline-section").hidden = true;
  $("run").disabled = true;
  setStatus("Uploading and transcribing…");
  try {
    const response = await fetch("v1/audio/transcriptions", { method: "POST", body: form, headers });
    if (!response.ok) {
      const failure = await response.json().catch(() => ({}));
      throw new Error(failure.error ? failure.error.message : `HTTP ${response.status}`);
    }
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const message = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = message.split("\n").filter((l) => l.startsWith("data:"))
          .map((l) => l.slice(5).trim()).join("\n");
        if (data) handle(JSON.parse(data));
      }
    }
    if (!state.body) throw new Error("the stream ended before the transcription was done");
  } catch (error) {
    setStatus(`Error: ${error.message}`, true);
  } finally {
    $("run").disabled = false;
  }
}

function handle(message) {
  if (message.error) throw new Error(message.error.message);
  if (message.type === "transcript.text.delta") {
    addSegment(message.segment);
    setStatus(`Transcribing… ${short(message.segment.end)} done`);
  } else if (message.type === "transcript.text.done") {
    state.body = message;
    $("transcript").replaceChildren();
    state.segments = [];
    message.segments.forEach(addSegment);
    drawTimeline(message);
    offerDownloads(message);
    setStatus(`Done: ${message.segments.length} segments, ${message.duration.toFixed(1)} s, ` +
      `language ${message.language}.`);
  }
}

// --- the microphone -------------------------------------------------------------------
async function record() {
  if (state.recorder) {
    state.recorder.stop();
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (error) {
    setStatus(`Cannot use the microphone: ${error.message}`, true);
    return;
  }
  const chunks = [];
  const recorder = new MediaRecorder(stream);
  recorder.ondataavailable = (e) => chunks.push(e.data);
  recorder.onstop = () => {
    stream.getTracks().forEach((track) => track.stop());
    state.recorder = null;
    $("record").textContent = "Record from the microphone";
    $("record").classList.remove("recording");
    const type = recorder.mimeType || "audio/webm";
    choose(new File(chunks, `recording.${type.includes("ogg") ? "ogg" : "webm"}`, { type }));
    setStatus("Recorded. Press Transcribe.");
  };
  recorder.start();
  state.recorder = recorder;
  $("record").textContent = "Stop recording";
  $("record").classList.add("recording");
  setStatus("Recording…");
}

// --- wiring ---------------------------------------------------------------------------
$("file").addEventListener("change", () => $("file").files[0] && choose($("file").files[0]));
$("record").addEventListener("click", record);
$("options").addEventListener("submit", transcribe);
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files[0]) choose(e.dataTransfer.files[0]);
});
fetch("v1/config").then((r) => r.json()).then((config) => {
  $("model-info").textContent = `Model: ${config.model}${config.tags ? "" : " (no tagging head)"}.`;
  $("at-time-res").value = config.at_time_res;
  $("key-label").hidden = !config.auth;
  state.tags = config.tags;
});
