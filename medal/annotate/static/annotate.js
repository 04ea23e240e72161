// medal annotate: the page. The server (medal/annotate/app.py) validates and writes; this script edits.
// Every request is same-origin and carries the launch's secret in its HttpOnly cookie; the server's gate
// (medal/annotate/guard.py) accepts exactly the content types sent here: image/png, application/json, no body.
// Masks are edited as one byte per image pixel (0/1) at the image's full size, painted with whole-pixel discs
// (no anti-aliasing), so the PNG sent on Accept holds exactly the pixels the person set.
"use strict";

const $ = (id) => document.getElementById(id);
let state = null;   // /api/state
let pos = 0;        // index of the shown item

function message(text, kind) {
  const el = $("message");
  el.textContent = text;
  el.className = kind || "";
}

async function loadState() {
  const response = await fetch("/api/state");
  const reply = await response.json();
  if (!response.ok) {   // e.g. a page left open from an earlier launch: its cookie holds the old secret
    message(reply.error, "error");
    throw new Error(reply.error);
  }
  state = reply;
  $("mode").textContent = state.mode === "masks"
    ? `— hand masks, round ${state.round} (${state.strategy})` : "— gold standards for the enhancer";
  $(state.mode).hidden = false;
}

function progress() {
  const done = state.items.filter((i) => i.answered).length;
  $("progress").textContent = `${pos + 1} of ${state.items.length} · ${done} answered`;
  if (done === state.items.length) {
    message(`All ${done} answered. Press Finish, then rerun the command that stopped to continue.`, "ok");
  }
}

function nextUnanswered(from) {
  for (let k = 1; k <= state.items.length; k++) {
    const j = (from + k) % state.items.length;
    if (!state.items[j].answered) return j;
  }
  return from;
}

function keyOf(event) {
  if ((event.ctrlKey || event.metaKey) && event.key.toLowerCase() === "z") return "undo";
  return event.key;
}

// ---------------------------------------------------------------- masks mode
const masks = {
  width: 0, height: 0, bits: null, proposal: null, history: [], tool: "brush", last: null, drawing: false,
};

function maskCanvas() { return $("mask"); }

function renderMask() {
  const c = maskCanvas();
  const ctx = c.getContext("2d");
  const img = ctx.createImageData(masks.width, masks.height);
  for (let p = 0; p < masks.bits.length; p++) {
    if (masks.bits[p]) { img.data[4 * p] = 255; img.data[4 * p + 1] = 40; img.data[4 * p + 2] = 40; img.data[4 * p + 3] = 255; }
  }
  ctx.putImageData(img, 0, 0);
}

function loadBits(url, width, height) {
  return new Promise((resolve) => {
    const bits = new Uint8Array(width * height);
    if (!url) { resolve(bits); return; }
    const im = new Image();
    im.onload = () => {
      const c = document.createElement("canvas");
      c.width = width; c.height = height;
      const ctx = c.getContext("2d");
      ctx.drawImage(im, 0, 0);
      const data = ctx.getImageData(0, 0, width, height).data;
      for (let p = 0; p < bits.length; p++) bits[p] = data[4 * p] > 127 ? 1 : 0;
      resolve(bits);
    };
    im.src = url;
  });
}

function drawOverlay(url, canvas, width, height) {
  canvas.width = width; canvas.height = height;
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, width, height);
  if (!url) return;
  const im = new Image();
  im.onload = () => {
    const c = document.createElement("canvas");
    c.width = width; c.height = height;
    const cx = c.getContext("2d");
    cx.drawImage(im, 0, 0);
    const src = cx.getImageData(0, 0, width, height);
    const out = ctx.createImageData(width, height);
    for (let p = 0; p < width * height; p++) {   // disagreement as yellow, alpha = strength
      out.data[4 * p] = 255; out.data[4 * p + 1] = 220; out.data[4 * p + 2] = 0; out.data[4 * p + 3] = src.data[4 * p];
    }
    ctx.putImageData(out, 0, 0);
  };
  im.src = url;
}

async function showMask(k) {
  pos = k;
  const item = state.items[k];
  masks.width = item.width; masks.height = item.height;
  const stage = $("stage");
  stage.style.height = `${Math.round(512 * item.height / item.width)}px`;
  $("radiograph").src = `/masks/${encodeURIComponent(item.id)}/image.png`;
  const c = maskCanvas();
  c.width = item.width; c.height = item.height;
  masks.proposal = await loadBits(item.has_proposal ? `/masks/${encodeURIComponent(item.id)}/proposal.png` : null,
                                  item.width, item.height);
  masks.bits = masks.proposal.slice();
  masks.history = [];
  renderMask();
  drawOverlay(item.has_disagreement ? `/masks/${encodeURIComponent(item.id)}/disagreement.png` : null,
              $("disagreement"), item.width, item.height);
  const score = item.score === null ? "initial random draw (no score)" : `${state.strategy} score ${item.score.toPrecision(4)}`
    + (item.rank ? ` (rank ${item.rank} of ${item.pool} in the pool)` : "");
  $("why").textContent = `${item.id}: ${score}` + (item.has_disagreement ? "; yellow = where the committee's members disagree" : "")
    + (item.answered ? " · answered" : "");
  message("");
  progress();
}

function snapshot() { masks.history.push(masks.bits.slice()); if (masks.history.length > 50) masks.history.shift(); }

function paintDisc(cx, cy, value) {
  const r = Number($("size").value);
  const x0 = Math.max(0, Math.floor(cx - r)), x1 = Math.min(masks.width - 1, Math.ceil(cx + r));
  const y0 = Math.max(0, Math.floor(cy - r)), y1 = Math.min(masks.height - 1, Math.ceil(cy + r));
  for (let y = y0; y <= y1; y++) {
    for (let x = x0; x <= x1; x++) {
      if ((x - cx) * (x - cx) + (y - cy) * (y - cy) <= r * r) masks.bits[y * masks.width + x] = value;
    }
  }
}

function paintLine(a, b) {
  const value = masks.tool === "brush" ? 1 : 0;
  const steps = Math.max(1, Math.ceil(2 * Math.hypot(b.x - a.x, b.y - a.y)));
  for (let s = 0; s <= steps; s++) {
    paintDisc(a.x + (b.x - a.x) * s / steps, a.y + (b.y - a.y) * s / steps, value);
  }
  renderMask();
}

function imagePoint(event) {
  const rect = maskCanvas().getBoundingClientRect();
  return { x: (event.clientX - rect.left) * masks.width / rect.width - 0.5,
           y: (event.clientY - rect.top) * masks.height / rect.height - 0.5 };
}

function neighbours(p, w, h) {
  const x = p % w, y = (p - x) / w, out = [];
  if (x > 0) out.push(p - 1);
  if (x < w - 1) out.push(p + 1);
  if (y > 0) out.push(p - w);
  if (y < h - 1) out.push(p + w);
  return out;
}

function fillHoles() {   // background not reachable from the border becomes hand
  const { width: w, height: h, bits } = masks;
  const outside = new Uint8Array(w * h), queue = [];
  for (let p = 0; p < w * h; p++) {
    const x = p % w, y = (p - x) / w;
    if ((x === 0 || y === 0 || x === w - 1 || y === h - 1) && !bits[p]) { outside[p] = 1; queue.push(p); }
  }
  while (queue.length) {
    for (const q of neighbours(queue.pop(), w, h)) if (!bits[q] && !outside[q]) { outside[q] = 1; queue.push(q); }
  }
  snapshot();
  for (let p = 0; p < w * h; p++) if (!outside[p]) bits[p] = 1;
  renderMask();
}

function keepLargest() {   // 4-connected components of the hand; all but the largest removed
  const { width: w, height: h, bits } = masks;
  const label = new Int32Array(w * h);
  let best = 0, bestSize = 0, next = 0;
  for (let p = 0; p < w * h; p++) {
    if (!bits[p] || label[p]) continue;
    next += 1; label[p] = next;
    const queue = [p]; let size = 0;
    while (queue.length) {
      const q = queue.pop(); size += 1;
      for (const n of neighbours(q, w, h)) if (bits[n] && !label[n]) { label[n] = next; queue.push(n); }
    }
    if (size > bestSize) { best = next; bestSize = size; }
  }
  snapshot();
  for (let p = 0; p < w * h; p++) if (label[p] !== best) bits[p] = 0;
  renderMask();
}

function maskPng() {
  const c = document.createElement("canvas");
  c.width = masks.width; c.height = masks.height;
  const ctx = c.getContext("2d");
  const img = ctx.createImageData(masks.width, masks.height);
  for (let p = 0; p < masks.bits.length; p++) {
    const v = masks.bits[p] ? 255 : 0;
    img.data[4 * p] = v; img.data[4 * p + 1] = v; img.data[4 * p + 2] = v; img.data[4 * p + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
  return new Promise((resolve) => c.toBlob(resolve, "image/png"));
}

async function acceptMask() {
  const item = state.items[pos];
  const response = await fetch(`/masks/${encodeURIComponent(item.id)}/answer`,
                               { method: "POST", headers: { "Content-Type": "image/png" }, body: await maskPng() });
  const reply = await response.json();
  if (!response.ok) { message(reply.error, "error"); return; }
  item.answered = true;
  if (state.items.some((i) => !i.answered)) await showMask(nextUnanswered(pos));
  message(`${item.id}: saved ${reply.saved}`, "ok");
  progress();
}

function setTool(tool) {
  masks.tool = tool;
  $("brush").classList.toggle("active", tool === "brush");
  $("eraser").classList.toggle("active", tool === "eraser");
}

function setupMasks() {
  const c = maskCanvas();
  c.addEventListener("pointerdown", (e) => {
    snapshot(); masks.drawing = true; masks.last = imagePoint(e);
    c.setPointerCapture(e.pointerId); paintLine(masks.last, masks.last);
  });
  c.addEventListener("pointermove", (e) => {
    if (!masks.drawing) return;
    const p = imagePoint(e); paintLine(masks.last, p); masks.last = p;
  });
  const stop = () => { masks.drawing = false; };
  c.addEventListener("pointerup", stop);
  c.addEventListener("pointercancel", stop);
  $("brush").onclick = () => setTool("brush");
  $("eraser").onclick = () => setTool("eraser");
  $("size").oninput = () => { $("size-value").textContent = $("size").value; };
  $("size-value").textContent = $("size").value;
  $("opacity").oninput = () => { c.style.opacity = Number($("opacity").value) / 100; };
  c.style.opacity = Number($("opacity").value) / 100;
  $("show-disagreement").onchange = () => { $("disagreement").hidden = !$("show-disagreement").checked; };
  $("disagreement").hidden = true;
  $("fill").onclick = fillHoles;
  $("largest").onclick = keepLargest;
  $("undo").onclick = () => { if (masks.history.length) { masks.bits = masks.history.pop(); renderMask(); } };
  $("reset").onclick = () => { snapshot(); masks.bits = masks.proposal.slice(); renderMask(); };
  $("clear").onclick = () => { snapshot(); masks.bits = new Uint8Array(masks.bits.length); renderMask(); };
  setTool("brush");
  const size = (d) => { $("size").value = Number($("size").value) + d; $("size").oninput(); };
  const keys = { b: () => setTool("brush"), e: () => setTool("eraser"), "[": () => size(-1), "]": () => size(1),
                 d: () => { $("show-disagreement").click(); }, f: fillHoles, l: keepLargest, undo: $("undo").onclick,
                 r: $("reset").onclick, c: $("clear").onclick };
  return keys;
}

// ---------------------------------------------------------------- gold mode
const gold = { timer: null };

function sliderValues() {
  const out = {};
  for (const name of Object.keys(state.ranges)) out[name] = Number($(`slider-${name}`).value);
  return out;
}

function setSliders(values) {
  for (const [name, v] of Object.entries(values)) {
    $(`slider-${name}`).value = v;
    $(`value-${name}`).textContent = Number(v).toString();
  }
  refreshPreview();
}

function refreshPreview() {
  clearTimeout(gold.timer);
  gold.timer = setTimeout(() => {
    const item = state.items[pos];
    const query = new URLSearchParams(sliderValues()).toString();
    $("after").src = `/gold/${encodeURIComponent(item.id)}/preview.png?${query}`;
  }, 60);
}

function showGold(k) {
  pos = k;
  const item = state.items[k];
  $("before").src = `/gold/${encodeURIComponent(item.id)}/roi.png`;
  $("stratum").textContent = `${item.id}: ${item.stratum}` + (item.answered ? " · answered (sliders as saved)" : "");
  setSliders(item.settings || item.suggested);
  message("");
  progress();
}

async function acceptGold() {
  const item = state.items[pos];
  const values = sliderValues();
  const response = await fetch(`/gold/${encodeURIComponent(item.id)}/answer`,
                               { method: "POST", headers: { "Content-Type": "application/json" },
                                 body: JSON.stringify(values) });
  const reply = await response.json();
  if (!response.ok) { message(reply.error, "error"); return; }
  item.answered = true; item.settings = values;
  if (state.items.some((i) => !i.answered)) showGold(nextUnanswered(pos));
  message(`${item.id}: saved ${reply.saved}`, "ok");
  progress();
}

function setupGold() {
  const box = $("sliders");
  for (const [name, [lo, hi, step]] of Object.entries(state.ranges)) {
    const label = document.createElement("label");
    label.innerHTML = `${name} <input id="slider-${name}" type="range" min="${lo}" max="${hi}" step="${step}">`
      + ` <span id="value-${name}"></span>`;
    box.appendChild(label);
    label.querySelector("input").addEventListener("input", (e) => {
      $(`value-${name}`).textContent = e.target.value; refreshPreview();
    });
  }
  $("suggested").onclick = () => setSliders(state.items[pos].suggested);
  document.querySelector(".keys").textContent = "Keys: R suggested setting · Enter accept · ← → move";
  return { r: $("suggested").onclick };
}

// ---------------------------------------------------------------- both
async function main() {
  await loadState();
  const show = state.mode === "masks" ? showMask : showGold;
  const keys = state.mode === "masks" ? setupMasks() : setupGold();
  const accept = state.mode === "masks" ? acceptMask : acceptGold;
  $("accept").onclick = accept;
  $("prev").onclick = () => show((pos + state.items.length - 1) % state.items.length);
  $("next").onclick = () => show((pos + 1) % state.items.length);
  $("finish").onclick = async () => {
    const response = await fetch("/api/finish", { method: "POST" });   // no body: the server takes none here
    const reply = await response.json();
    message(response.ok ? reply.message : reply.error, response.ok && reply.done ? "ok" : "error");
  };
  Object.assign(keys, { Enter: accept, ArrowLeft: $("prev").onclick, ArrowRight: $("next").onclick });
  document.addEventListener("keydown", (event) => {
    if (event.target.tagName === "INPUT" && event.target.type !== "range" && event.target.type !== "checkbox") return;
    const action = keys[keyOf(event)];
    if (action) { event.preventDefault(); action(); }
  });
  const first = state.items.findIndex((i) => !i.answered);
  await show(first < 0 ? 0 : first);
  document.body.dataset.ready = "1";
}

main();
