// The langground page: one image, its expressions, the server's predictions drawn on a canvas.
// Plain JS, no build step. Boxes arrive in the image's original pixels; the canvas shows the image at
// `scale`, and every drawn box is also listed in canvas.dataset.boxes (canvas pixels) for tests.
"use strict";

const COLORS = ["#ff1f5b", "#00a0e0", "#ffb000", "#7a3cff", "#00c26e", "#ff6f00", "#d10fd1", "#3c5cff"];
const MAX_SIDE = 760;
const $ = (id) => document.getElementById(id);
const state = { model: null, file: null, image: null, data: null };

function headers() {
  const key = $("api-key").value.trim() || localStorage.getItem("langground-api-key") || "";
  return key ? { Authorization: `Bearer ${key}` } : {};
}

function showError(message) {
  $("error").textContent = message || "";
  $("error").hidden = !message;
}

async function loadModel() {
  const res = await fetch("/v1/model", { headers: headers() });
  if (res.status === 401) {
    $("key-row").hidden = false;
    $("model-line").textContent = "this server needs an API key";
    return;
  }
  const m = await res.json();
  state.model = m;
  const vqa = m.answers_questions;
  $("model-line").textContent =
    `${m.name} · task ${m.task} · ${m.input_size}² input · ${m.vocabulary_size}-word vocabulary` +
    (m.trained_on ? ` · trained on ${m.trained_on}` : "");
  $("texts-label").textContent = vqa ? "Questions, one per line" : "Expressions, one per line";
  $("run").textContent = vqa ? "Answer" : "Ground";
  if (m.explain === false) {
    $("explain").disabled = true;
    $("explain").parentElement.title = "this model exposes no attention maps";
  }
  updateButton();
}

function updateButton() {
  $("run").disabled = !(state.model && state.image && $("texts").value.trim());
}

function setFile(file) {
  if (!file) return;
  state.file = file;
  const img = new Image();
  img.onload = () => {
    state.image = img;
    state.data = null;
    $("drop-text").textContent = `${file.name || "image"} (${img.naturalWidth}×${img.naturalHeight})`;
    draw();
    updateButton();
  };
  img.onerror = () => showError(`${file.name}: the browser cannot display this image`);
  img.src = URL.createObjectURL(file);
}

async function run() {
  showError("");
  const vqa = state.model.answers_questions;
  const form = new FormData();
  form.append("image", state.file, state.file.name || "image");
  form.append(vqa ? "questions" : "expressions", $("texts").value);
  form.append("explain", $("explain").checked ? "true" : "false");
  $("run").disabled = true;
  const t0 = performance.now();
  try {
    const res = await fetch(vqa ? "/v1/answer" : "/v1/ground", { method: "POST", body: form, headers: headers() });
    const ms = performance.now() - t0;
    const data = await res.json();
    if (res.status === 401) $("key-row").hidden = false;
    if (!res.ok) {
      showError(`${res.status}: ${data.error}`);
      return;
    }
    if ($("api-key").value.trim()) localStorage.setItem("langground-api-key", $("api-key").value.trim());
    state.data = data;
    $("latency").textContent = `${ms.toFixed(0)} ms round trip · ${data.latency_ms.toFixed(0)} ms on the server`;
    $("latency").dataset.ms = ms.toFixed(1);
    showError(data.warnings.map((w) => `note: ${w}`).join("\n"));
    draw();
  } catch (err) {
    showError(String(err));
  } finally {
    updateButton();
  }
}

// pycocotools' compressed RLE string -> run lengths (maskApi.c rleFrString).
function rleCounts(s) {
  const counts = [];
  let p = 0;
  while (p < s.length) {
    let x = 0, k = 0, more = 1;
    while (more) {
      const c = s.charCodeAt(p) - 48;
      x |= (c & 0x1f) << (5 * k);
      more = c & 0x20;
      p++; k++;
      if (!more && (c & 0x10)) x |= -1 << (5 * k);
    }
    if (counts.length > 2) x += counts[counts.length - 2];
    counts.push(x);
  }
  return counts;
}

function maskCanvas(rle, color) {
  const [h, w] = rle.size;
  const off = document.createElement("canvas");
  off.width = w; off.height = h;
  const octx = off.getContext("2d");
  const img = octx.createImageData(w, h);
  const [r, g, b] = [1, 3, 5].map((i) => parseInt(color.slice(i, i + 2), 16));
  let i = 0, on = false;
  for (const n of rleCounts(rle.counts)) {
    if (on) {
      for (let j = i; j < i + n; j++) {  // column-major (Fortran) order
        const q = ((j % h) * w + Math.floor(j / h)) * 4;
        img.data[q] = r; img.data[q + 1] = g; img.data[q + 2] = b; img.data[q + 3] = 110;
      }
    }
    i += n; on = !on;
  }
  octx.putImageData(img, 0, 0);
  return off;
}

function draw() {
  const canvas = $("canvas"), ctx = canvas.getContext("2d");
  const img = state.image;
  if (!img) return;
  // Large photos shrink to MAX_SIDE; small scenes are shown up to twice their size.
  const scale = Math.min(2, MAX_SIDE / Math.max(img.naturalWidth, img.naturalHeight));
  canvas.width = Math.round(img.naturalWidth * scale);
  canvas.height = Math.round(img.naturalHeight * scale);
  canvas.dataset.scale = String(scale);
  ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
  const list = $("results");
  list.replaceChildren();
  $("attention").replaceChildren();
  const drawn = [];
  const results = state.data ? state.data.results : [];
  results.forEach((r, k) => {
    const color = COLORS[k % COLORS.length];
    const li = document.createElement("li");
    const sw = document.createElement("span");
    sw.className = "swatch"; sw.style.background = color;
    li.append(sw, document.createTextNode(r.expression + " "));
    const num = document.createElement("span");
    num.className = "num";
    if ("answer" in r) {
      num.textContent = r.answers.map((a) => `${a.answer} ${a.score.toFixed(2)}`).join(" · ");
      li.dataset.answer = r.answer;
    } else {
      if (r.mask) ctx.drawImage(maskCanvas(r.mask, color), 0, 0, canvas.width, canvas.height);
      if (r.box) {
        const b = r.box;
        const x = Math.round(b.xmin * scale), y = Math.round(b.ymin * scale);
        const w = Math.round((b.xmax - b.xmin) * scale), h = Math.round((b.ymax - b.ymin) * scale);
        ctx.lineWidth = 3; ctx.strokeStyle = color;
        ctx.strokeRect(x, y, w, h);
        label(ctx, `${k + 1}`, x, y, color);
        drawn.push({ index: k, x, y, w, h, color });
        Object.assign(li.dataset, { xmin: b.xmin, ymin: b.ymin, xmax: b.xmax, ymax: b.ymax });
      }
      const parts = [r.score == null ? "no box" : `score ${r.score.toFixed(2)}`];
      if (r.no_target != null) parts.push(`no-target ${r.no_target.toFixed(2)}`);
      if (r.unknown_words && r.unknown_words.length) parts.push(`unknown: ${r.unknown_words.join(", ")}`);
      for (const [name, gates] of Object.entries(r.subnet || {})) {  // a gated model's chosen subnet
        parts.push(`${name}: ${gates.filter((g) => g > 0.5).length}/${gates.length} on`);
      }
      num.textContent = parts.join(" · ");
    }
    li.append(num);
    list.append(li);
    if (r.attention) drawAttention(r, color);
  });
  canvas.dataset.boxes = JSON.stringify(drawn);
  canvas.dataset.drawn = String(drawn.length);
}

function label(ctx, text, x, y, color) {
  ctx.font = "bold 13px system-ui, sans-serif";
  const w = ctx.measureText(text).width + 8;
  const top = y >= 18 ? y - 18 : y + 3;
  ctx.fillStyle = color;
  ctx.fillRect(x + 3, top, w, 16);
  ctx.fillStyle = "#fff";
  ctx.fillText(text, x + 7, top + 12);
}

function drawAttention(result, color) {
  const box = document.createElement("div");
  const title = document.createElement("h3");
  title.textContent = `“${result.expression}”: where each word looks`;
  title.style.color = color;
  box.append(title);
  for (const [stage, urls] of Object.entries(result.attention)) {
    const row = document.createElement("div");
    row.className = "row";
    urls.forEach((url, i) => row.append(attentionTile(url, `${result.words[i]} (${stage})`)));
    box.append(row);
  }
  $("attention").append(box);
}

function attentionTile(url, caption) {
  const fig = document.createElement("figure");
  const c = document.createElement("canvas");
  const img = state.image;
  const s = 120 / Math.max(img.naturalWidth, img.naturalHeight);
  c.width = Math.round(img.naturalWidth * s); c.height = Math.round(img.naturalHeight * s);
  const heat = new Image();
  heat.onload = () => {
    const ctx = c.getContext("2d");
    ctx.drawImage(img, 0, 0, c.width, c.height);
    const off = document.createElement("canvas");
    off.width = c.width; off.height = c.height;
    const octx = off.getContext("2d");
    octx.drawImage(heat, 0, 0, c.width, c.height);
    const px = octx.getImageData(0, 0, c.width, c.height);
    for (let q = 0; q < px.data.length; q += 4) {  // grey -> a red glow, opaque only where the word looks
      const v = px.data[q] / 255;
      px.data[q] = 255; px.data[q + 1] = Math.round(60 + 150 * v * v); px.data[q + 2] = 40;
      px.data[q + 3] = Math.round(215 * v * v);
    }
    octx.putImageData(px, 0, 0);
    ctx.drawImage(off, 0, 0);
  };
  heat.src = url;
  const cap = document.createElement("figcaption");
  cap.textContent = caption;
  fig.append(c, cap);
  return fig;
}

const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  setFile(e.dataTransfer.files[0]);
});
$("file").addEventListener("change", (e) => setFile(e.target.files[0]));
$("texts").addEventListener("input", updateButton);
$("run").addEventListener("click", run);
$("texts").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey) && !$("run").disabled) run(); });
$("api-key").addEventListener("change", loadModel);
loadModel().catch((err) => showError(String(err)));
