// segswap playground: a plain client of the public API, nothing more. A run is a v2 job (POST /v2/seg-swap,
// multipart) followed through its Server-Sent Events (progress, previews, the end), then its output; selecting
// is POST /v1/seg-mask. The snippets show the one-call v1 request that makes the same image. Erase is a run with
// mode=erase and no object.

const API_PATH = "v1/seg-swap"; // relative, so the page also works behind a path prefix
const JOBS_PATH = "v2/seg-swap";
const REQUESTS_PATH = "v2/requests";
const SELECT_PATH = "v1/seg-mask";
const MODELS_PATH = "v1/models";
const CLICK_PX = 4; // a drag shorter than this (screen pixels) is a click: a point, not a box
const KEY_STORAGE = "segswap.apiKey";
const SENDABLE_TYPES = { "image/png": "png", "image/jpeg": "jpg", "image/webp": "webp" };
const OUTPUT_EXTENSIONS = { png: "png", jpeg: "jpg", webp: "webp" };
const MASK_RGB = [255, 45, 111];
const MASK_THRESHOLD = 128; // the server's threshold, so an uploaded mask means the same here and there
const UNDO_BYTES = 256 * 1024 * 1024;
const TILE_BOX = 240;

const STATUS_TEXT = {
  400: ["Bad request", "A parameter or an image was refused; the message names it."],
  401: ["Unauthorized", "Check the API key field (it is sent as the x-api-key header)."],
  403: ["Forbidden", "This API key is not allowed to use this route (/v1/seg-swap, /v1/seg-mask)."],
  404: ["Not found", "This server has no /v1/seg-swap route: is it a segswap server?"],
  406: ["Not acceptable", "The key has too few credits left, or the request's content type was refused."],
  413: ["Too large", "The request or an image is larger than this server accepts: use smaller images."],
  429: ["Too many requests", "The server is busy or this key's rate limit was reached."],
  500: ["Internal error", "The server failed on this request; its log has the request id."],
  502: ["Bad gateway", "The engine is unavailable."],
  503: ["Unavailable", "The engine is loading, draining or unavailable."],
  504: ["Timed out", "The request took longer than the server's time limit."],
};

const $ = (id) => document.getElementById(id);
const els = {
  apiKey: $("api-key"), apiKeyShow: $("api-key-show"),
  run: $("run"), erase: $("erase"), cancel: $("cancel"), progress: $("progress"), elapsed: $("elapsed"), status: $("status"), error: $("error"),
  progressBar: $("progress-bar"), progressSteps: $("progress-steps"), progressPreview: $("progress-preview"),
  mainDrop: $("main-drop"), mainFile: $("main-file"), stage: $("stage"), mainPreview: $("main-preview"),
  maskCanvas: $("mask-canvas"), brushCursor: $("brush-cursor"), selectBox: $("select-box"), selectPoints: $("select-points"), brushSize: $("brush-size"), brushSizeOut: $("brush-size-out"),
  undo: $("undo"), clear: $("clear"), invert: $("invert"), maskFile: $("mask-file"), saveMask: $("save-mask"), saveMask2: $("save-mask-2"),
  objectDrop: $("object-drop"), objectFile: $("object-file"), tilePreview: $("tile-preview"), tileNote: $("tile-note"),
  params: $("params"), seed: $("seed"), seedRandom: $("seed-random"), format: $("image_format"), quality: $("image_quality"),
  compare: $("compare"), before: $("result-before"), after: $("result-after"), split: $("compare-split"),
  resultEmpty: $("result-empty"), resultMeta: $("result-meta"), resultInfo: $("result-info"), reuseSeed: $("reuse-seed"),
  download: $("download"), curl: $("snippet-curl"), python: $("snippet-python"),
};
const mask = els.maskCanvas.getContext("2d", { willReadFrequently: true });

const state = {
  main: null, // {blob, image}: the bytes sent and the decoded image
  object: null,
  result: null, // {blob, url, seed}
  controller: null, // AbortController of the requests in flight
  job: null, // the v2 request id of the run in flight
  timer: null,
  pasteTarget: null,
  tool: "brush",
  stroke: null, // last point of the stroke being painted
  undo: [],
  drag: null, // the select tool's drag: {start, end} in image pixels and screen pixels
  maskBox: null, // [left, top, right, bottom] of the painted mask (right, bottom exclusive), null when empty
  points: [], // the select tool's clicks: [x, y, 1 inside | 0 outside] in image pixels
  modelSets: [], // GET /v1/models' cards: {id, arch, loras, default, ...}
};

// ---------- images in ----------

function loadImage(blob) {
  const image = new Image();
  image.src = URL.createObjectURL(blob);
  return image.decode().then(
    () => image,
    () => {
      URL.revokeObjectURL(image.src);
      throw new Error("the browser cannot read this file as an image");
    },
  );
}

function canvasOf(width, height) {
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  return canvas;
}

function canvasToPng(canvas) {
  return new Promise((resolve, reject) => {
    canvas.toBlob((blob) => (blob ? resolve(blob) : reject(new Error("could not encode PNG"))), "image/png");
  });
}

// The server takes PNG, JPEG and WEBP; anything else the browser can read is re-encoded losslessly.
async function sendableBlob(blob, image) {
  if (blob.type in SENDABLE_TYPES) return blob;
  const canvas = canvasOf(image.naturalWidth, image.naturalHeight);
  canvas.getContext("2d").drawImage(image, 0, 0);
  return canvasToPng(canvas);
}

function fileName(stem, blob) {
  return `${stem}.${(blob && SENDABLE_TYPES[blob.type]) || "png"}`;
}

async function acceptImage(target, blob) {
  try {
    if (target === "mask") {
      await loadMask(blob);
      return;
    }
    const image = await loadImage(blob);
    const file = { blob: await sendableBlob(blob, image), image };
    if (target === "main") setMain(file);
    else setObject(file);
    hideError();
  } catch (err) {
    showError(`Could not use this ${target === "mask" ? "mask" : "image"}`, err.message);
  }
}

function setMain(file) {
  state.controller?.abort();
  clearResult();
  if (state.main) URL.revokeObjectURL(state.main.image.src);
  state.main = file;
  const { naturalWidth: width, naturalHeight: height } = file.image;
  els.mainPreview.src = file.image.src;
  els.maskCanvas.width = width; // resizing also clears the mask
  els.maskCanvas.height = height;
  state.undo = [];
  state.points = [];
  drawSelectPoints();
  els.selectBox.hidden = true;
  els.stage.hidden = false;
  setStatus(`Main image ${width}×${height}. Paint the region to replace.`);
  updateTools();
  updateSnippets();
}

function setObject(file) {
  if (state.object) URL.revokeObjectURL(state.object.image.src);
  state.object = file;
  drawTiles();
  updateSnippets();
}

// ---------- drop, paste, file inputs ----------

function isTyping(target) {
  return Boolean(target.closest?.("textarea, select, input:not([type=range]):not([type=radio]):not([type=file])"));
}

function pasteTarget() {
  if (state.pasteTarget) return state.pasteTarget;
  return state.main && !state.object ? "object" : "main";
}

function armPasteTarget(target) {
  state.pasteTarget = target;
  els.mainDrop.classList.toggle("armed", target === "main");
  els.objectDrop.classList.toggle("armed", target === "object");
}

function onPaste(event) {
  if (isTyping(event.target)) return;
  const file = [...event.clipboardData.files].find((f) => f.type.startsWith("image/"));
  if (!file) return;
  event.preventDefault();
  acceptImage(pasteTarget(), file);
}

function initDropzone(zone) {
  const target = zone.dataset.target;
  zone.addEventListener("pointerdown", () => armPasteTarget(target));
  zone.addEventListener("focusin", () => armPasteTarget(target));
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", (event) => {
    if (!zone.contains(event.relatedTarget)) zone.classList.remove("dragging");
  });
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    const file = event.dataTransfer.files[0];
    if (file) acceptImage(target, file);
    else showError("Nothing to use in this drop", "Drop an image file (from your files, not a web page).");
  });
}

function initFileInput(input, target) {
  input.addEventListener("change", () => {
    if (input.files[0]) acceptImage(target, input.files[0]);
    input.value = ""; // so choosing the same file again fires change again
  });
}

// ---------- the mask ----------

function pushUndo() {
  const { width, height } = els.maskCanvas;
  const depth = Math.max(1, Math.floor(UNDO_BYTES / (width * height * 4)));
  state.undo.push(mask.getImageData(0, 0, width, height));
  if (state.undo.length > depth) state.undo.shift();
}

function undo() {
  const snapshot = state.undo.pop();
  if (snapshot) mask.putImageData(snapshot, 0, 0);
  updateTools();
}

function clearMask() {
  state.points = [];
  drawSelectPoints();
  els.selectBox.hidden = true;
  pushUndo();
  mask.clearRect(0, 0, els.maskCanvas.width, els.maskCanvas.height);
  updateTools();
}

function invertMask() {
  pushUndo();
  mask.save();
  mask.globalCompositeOperation = "xor"; // opaque over the painting: alpha becomes 1 - alpha
  mask.fillStyle = `rgb(${MASK_RGB})`;
  mask.fillRect(0, 0, els.maskCanvas.width, els.maskCanvas.height);
  mask.restore();
  updateTools();
}

function canvasPoint(event) {
  const rect = els.maskCanvas.getBoundingClientRect();
  return {
    x: ((event.clientX - rect.left) * els.maskCanvas.width) / rect.width,
    y: ((event.clientY - rect.top) * els.maskCanvas.height) / rect.height,
  };
}

// The size slider is in screen pixels, so the brush feels the same whatever the image's size.
function brushRadius() {
  const rect = els.maskCanvas.getBoundingClientRect();
  return (Number(els.brushSize.value) / 2) * (els.maskCanvas.width / rect.width);
}

function paint(from, to) {
  const radius = brushRadius();
  mask.save();
  mask.globalCompositeOperation = state.tool === "eraser" ? "destination-out" : "source-over";
  mask.fillStyle = mask.strokeStyle = `rgb(${MASK_RGB})`;
  mask.lineWidth = 2 * radius;
  mask.lineCap = "round";
  mask.beginPath();
  mask.arc(to.x, to.y, radius, 0, 2 * Math.PI);
  mask.fill();
  if (from) {
    mask.beginPath();
    mask.moveTo(from.x, from.y);
    mask.lineTo(to.x, to.y);
    mask.stroke();
  }
  mask.restore();
}

function onPointerDown(event) {
  if (event.button !== 0 || !state.main) return;
  event.preventDefault();
  els.maskCanvas.setPointerCapture(event.pointerId);
  if (state.tool === "select") {
    state.drag = { start: canvasPoint(event), screen: [event.clientX, event.clientY], outside: event.shiftKey };
    return;
  }
  pushUndo();
  state.stroke = canvasPoint(event);
  paint(null, state.stroke);
}

function onPointerMove(event) {
  if (state.tool === "select") {
    if (state.drag) drawSelectBox(state.drag.start, canvasPoint(event));
    return;
  }
  moveBrushCursor(event);
  if (!state.stroke) return;
  const point = canvasPoint(event);
  paint(state.stroke, point);
  state.stroke = point;
}

function onPointerUp(event) {
  if (state.drag) {
    finishSelection(event);
    return;
  }
  if (!state.stroke) return;
  state.stroke = null;
  updateTools();
}

function moveBrushCursor(event) {
  const rect = els.stage.getBoundingClientRect();
  const size = `${els.brushSize.value}px`;
  Object.assign(els.brushCursor.style, {
    left: `${event.clientX - rect.left}px`, top: `${event.clientY - rect.top}px`, width: size, height: size,
  });
  els.brushCursor.classList.toggle("eraser", state.tool === "eraser");
  els.brushCursor.hidden = false;
}

function setTool(tool) {
  state.tool = tool;
  document.querySelector(`input[name=tool][value=${tool}]`).checked = true;
  els.maskCanvas.classList.toggle("selecting", tool === "select");
  els.brushCursor.hidden = true;
  if (tool !== "select") els.selectBox.hidden = true;
}

// ---------- the select tool: a box or clicks, the mask drawn by the server ----------

function drawSelectBox(from, to) {
  const scale = els.maskCanvas.getBoundingClientRect().width / els.maskCanvas.width;
  Object.assign(els.selectBox.style, {
    left: `${Math.min(from.x, to.x) * scale}px`, top: `${Math.min(from.y, to.y) * scale}px`,
    width: `${Math.abs(to.x - from.x) * scale}px`, height: `${Math.abs(to.y - from.y) * scale}px`,
  });
  els.selectBox.hidden = false;
}

function finishSelection(event) {
  const { start, screen, outside } = state.drag;
  state.drag = null;
  const end = canvasPoint(event);
  const { width, height } = els.maskCanvas;
  const clamp = (value, high) => Math.max(0, Math.min(high, Math.round(value)));
  if (Math.hypot(event.clientX - screen[0], event.clientY - screen[1]) < CLICK_PX) {
    els.selectBox.hidden = true;
    state.points.push([clamp(end.x, width - 1), clamp(end.y, height - 1), outside ? 0 : 1]);
    drawSelectPoints();
    if (state.points.some((point) => point[2] === 1)) select("points", state.points.map((p) => p.join(",")).join(";"));
    return;
  }
  state.points = [];
  drawSelectPoints();
  const box = [Math.min(start.x, end.x), Math.min(start.y, end.y), Math.max(start.x, end.x), Math.max(start.y, end.y)];
  select("box", [clamp(box[0], width), clamp(box[1], height), clamp(box[2], width), clamp(box[3], height)].join(","));
}

function drawSelectPoints() {
  const scale = els.maskCanvas.getBoundingClientRect().width / els.maskCanvas.width;
  els.selectPoints.replaceChildren(
    ...state.points.map(([x, y, inside]) => {
      const dot = document.createElement("div");
      dot.className = `select-point ${inside ? "inside" : "outside"}`;
      Object.assign(dot.style, { left: `${x * scale}px`, top: `${y * scale}px` });
      return dot;
    }),
  );
}

async function select(kind, value) {
  const form = new FormData();
  form.append("main_image", state.main.blob, fileName("main", state.main.blob));
  form.append(kind, value);
  const started = performance.now();
  setStatus("Selecting…");
  try {
    const headers = apiKey() ? { "x-api-key": apiKey() } : {};
    const response = await fetch(SELECT_PATH, { method: "POST", headers, body: form });
    if (!response.ok) {
      showError(...(await describeHttpError(response)));
      setStatus("");
      return;
    }
    await loadMask(await response.blob());
    setStatus(`Selected by ${response.headers.get("x-segswap-segmenter")} in ${seconds(started)}: refine it with the brush.`);
  } catch (err) {
    showError("Network error: no answer from the server", `${err.message}. Is segswap still running at ${location.host}?`);
  }
}

function setBrushSize(value) {
  els.brushSize.value = value;
  els.brushSizeOut.textContent = els.brushSize.value;
}

// Like the server: an alpha channel that is not fully opaque carries the mask, else the luminance does.
function maskFromPixels(pixels) {
  const data = pixels.data;
  let alphaCarries = false;
  for (let i = 3; i < data.length && !alphaCarries; i += 4) alphaCarries = data[i] < 255;
  const out = new ImageData(pixels.width, pixels.height);
  for (let i = 0; i < data.length; i += 4) {
    const value = alphaCarries ? data[i + 3] : (data[i] * 299 + data[i + 1] * 587 + data[i + 2] * 114) / 1000;
    if (value >= MASK_THRESHOLD) out.data.set([...MASK_RGB, 255], i);
  }
  return out;
}

async function loadMask(blob) {
  if (!state.main) throw new Error("add the main image first: the mask goes over it");
  const image = await loadImage(blob);
  const { width, height } = els.maskCanvas;
  const scratch = canvasOf(width, height).getContext("2d", { willReadFrequently: true });
  scratch.imageSmoothingEnabled = false; // nearest-neighbour, as the server resizes masks
  scratch.drawImage(image, 0, 0, width, height);
  URL.revokeObjectURL(image.src);
  pushUndo();
  mask.putImageData(maskFromPixels(scratch.getImageData(0, 0, width, height)), 0, 0);
  updateTools();
  hideError();
}

// What is sent: the painting at the main image's natural size, white = replace, black = keep.
function maskPng() {
  const { width, height } = els.maskCanvas;
  const painted = mask.getImageData(0, 0, width, height).data;
  const out = new ImageData(width, height);
  for (let i = 0; i < painted.length; i += 4) {
    const value = painted[i + 3] >= MASK_THRESHOLD ? 255 : 0;
    out.data.set([value, value, value, 255], i);
  }
  const canvas = canvasOf(width, height);
  canvas.getContext("2d").putImageData(out, 0, 0);
  return canvasToPng(canvas);
}

async function saveMask() {
  if (!state.main) {
    showError("No mask yet", "Add the main image and paint the mask first.");
    return;
  }
  downloadBlob(await maskPng(), "mask.png");
}

function downloadBlob(blob, name) {
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = name;
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
}

function updateTools() {
  const noMain = !state.main;
  for (const button of [els.clear, els.invert, els.saveMask, els.maskFile]) button.disabled = noMain;
  els.undo.disabled = state.undo.length === 0;
  state.maskBox = noMain ? null : paintedBox();
  els.erase.disabled = Boolean(state.controller) || !state.maskBox;
  drawTiles();
}

// The box of the painted pixels, as the server's mask box: right and bottom exclusive; null when none is painted.
function paintedBox() {
  const { width, height } = els.maskCanvas;
  const data = mask.getImageData(0, 0, width, height).data;
  let [left, top, right, bottom] = [width, height, 0, 0];
  for (let y = 0; y < height; y += 1) {
    for (let x = 0, i = y * width * 4 + 3; x < width; x += 1, i += 4) {
      if (data[i] < MASK_THRESHOLD) continue;
      if (x < left) left = x;
      if (x >= right) right = x + 1;
      top = Math.min(top, y);
      bottom = y + 1;
    }
  }
  return right > left ? [left, top, right, bottom] : null;
}

// ---------- parameters ----------

function paramControls() {
  return [...els.params.elements].filter((el) => el.name);
}

function defaultOf(el) {
  if (el.tagName === "SELECT") return ([...el.options].find((o) => o.defaultSelected) || el.options[0]).value;
  return el.defaultValue;
}

// Only what differs from the contract's defaults is sent, so the request and its snippets stay short; `erase`
// (the Erase button) sends mode=erase whatever the mode field says.
function requestParams(erase = false) {
  const params = [];
  for (const el of paramControls()) {
    const value = el.tagName === "TEXTAREA" ? el.value : el.value.trim();
    if (value === defaultOf(el) || (value === "" && el.type === "number")) continue;
    if (el.name === "image_quality" && els.format.value === "png") continue;
    if (el.name === "mode" && erase) continue;
    params.push([el.name, value]);
  }
  if (erase) params.push(["mode", "erase"]);
  return params;
}

function describeRange(el) {
  const text = `${el.min} to ${el.max}, default ${defaultOf(el)}`;
  const hint = el.closest(".field").querySelector(".hint");
  return hint?.dataset.extra ? `${text} · ${hint.dataset.extra}` : text;
}

function initHints() {
  for (const el of paramControls()) {
    if (el.type !== "number" && el.type !== "range") continue;
    let hint = el.closest(".field").querySelector(".hint");
    if (!hint) {
      hint = document.createElement("small");
      hint.className = "hint";
      el.closest(".field").append(hint);
    }
    hint.textContent = describeRange(el);
  }
}

function refreshControls() {
  for (const output of els.params.querySelectorAll("output[for]")) output.value = $(output.htmlFor.value).value;
  els.quality.disabled = els.format.value === "png";
  drawTiles();
  updateSnippets();
}

function intIn(el, low, high) {
  return Math.min(high, Math.max(low, Number.parseInt(el.value, 10) || low));
}

// Live preview of what the engine receives. A pattern (mode pattern, or auto with a repeat above 1) is `across`
// tiles over the grown mask's box and `down` tiles down, each box width / across by box height / down: the
// tile's aspect follows the box's (pipelines/placement/patterns.py, the same cell edges). Before a mask is
// painted, the tiles keep the object's aspect. An object is placed whole.
function drawTiles() {
  const object = state.object;
  const mode = $("mode").value;
  els.tilePreview.hidden = !object || mode === "erase";
  if (!object) return;
  const { naturalWidth: width, naturalHeight: height } = object.image;
  if (mode === "erase") {
    els.tileNote.textContent = `Object ${width}×${height}: not used by an erase.`;
    return;
  }
  const across = intIn($("horizontal_repeat"), 1, 10);
  const down = intIn($("vertical_repeat"), 1, 10);
  const pattern = mode === "pattern" || (mode === "auto" && (across > 1 || down > 1));
  const [cols, rows] = pattern ? [across, down] : [1, 1];
  const box = pattern ? grownBox() : null;
  const [areaWidth, areaHeight] = box ? [box[2] - box[0], box[3] - box[1]] : [width * cols, height * rows];
  const scale = Math.min(TILE_BOX / areaWidth, TILE_BOX / areaHeight);
  els.tilePreview.width = Math.max(1, Math.round(areaWidth * scale));
  els.tilePreview.height = Math.max(1, Math.round(areaHeight * scale));
  const xs = cellEdges(els.tilePreview.width, cols);
  const ys = cellEdges(els.tilePreview.height, rows);
  const ctx = els.tilePreview.getContext("2d");
  for (let row = 0; row < rows; row += 1) {
    for (let col = 0; col < cols; col += 1) {
      ctx.drawImage(object.image, xs[col], ys[row], xs[col + 1] - xs[col], ys[row + 1] - ys[row]);
    }
  }
  els.tileNote.textContent = `Object ${width}×${height}, ${tilingNote(pattern, box, across, down)}.`;
}

function tilingNote(pattern, box, across, down) {
  if (!pattern) return "placed whole (a repeat above 1, or mode pattern, tiles it)";
  if (!box) return `${across}×${down} tiles: paint the mask to see them at its box's shape`;
  const [width, height] = [box[2] - box[0], box[3] - box[1]];
  const tile = `${Math.round(width / across)}×${Math.round(height / down)}`;
  return `${across}×${down} tiles over the grown mask's ${width}×${height} px box, each about ${tile} px`;
}

// Where `count` cells over `length` pixels start, and the end: as patterns.cell_edges.
function cellEdges(length, count) {
  return Array.from({ length: count + 1 }, (_, i) => Math.floor((i * length) / count));
}

// The painted mask's box grown by growmask (a disk grows it by its radius each way), within the image.
function grownBox() {
  if (!state.maskBox) return null;
  const grow = intIn($("growmask"), 0, 20);
  const [left, top, right, bottom] = state.maskBox;
  const { width, height } = els.maskCanvas;
  return [Math.max(0, left - grow), Math.max(0, top - grow),
    Math.min(width, right + grow), Math.min(height, bottom + grow)];
}

// ---------- API key ----------

function apiKey() {
  return els.apiKey.value.trim();
}

// The Model list: the sets GET /v1/models names (it needs the key), the server's default first and not sent.
async function loadModelSets() {
  const select = $("model_set");
  const chosen = select.value;
  try {
    const headers = apiKey() ? { "x-api-key": apiKey() } : {};
    const response = await fetch(MODELS_PATH, { headers });
    if (!response.ok) return;
    const sets = (await response.json()).data || [];
    state.modelSets = sets;
    select.replaceChildren(select.options[0]);
    for (const set of sets) {
      if (set.default) {
        select.options[0].textContent = `server default (${set.id})`;
        continue;
      }
      select.append(new Option(`${set.id} (${set.arch})`, set.id, false, set.id === chosen));
    }
  } catch {
    // the list stays as it is: the server's default still runs
  }
  fillLoras();
}

// The LoRA list: those of the chosen model set (the default's when none is chosen); "none" first and not sent.
function fillLoras() {
  const select = $("lora");
  const chosen = select.value;
  const modelSet = $("model_set").value;
  const set = state.modelSets.find((card) => (modelSet ? card.id === modelSet : card.default));
  select.replaceChildren(select.options[0]);
  for (const name of set?.loras || []) select.append(new Option(name, name, false, name === chosen));
  updateSnippets();
}

function initApiKey() {
  try {
    els.apiKey.value = localStorage.getItem(KEY_STORAGE) || "";
  } catch {
    // storage blocked (private mode): the key just is not remembered
  }
  els.apiKey.addEventListener("input", () => {
    try {
      if (apiKey()) localStorage.setItem(KEY_STORAGE, apiKey());
      else localStorage.removeItem(KEY_STORAGE);
    } catch {
      // as above
    }
    updateSnippets();
  });
  els.apiKeyShow.addEventListener("click", () => {
    const show = els.apiKey.type === "password";
    els.apiKey.type = show ? "text" : "password";
    els.apiKeyShow.textContent = show ? "hide" : "show";
    els.apiKeyShow.setAttribute("aria-pressed", String(show));
  });
}

// ---------- running ----------

// An erase (the Erase button, or mode erase) needs no object: none is sent.
function erasing(erase) {
  return erase || $("mode").value === "erase";
}

function missingInput(erase) {
  if (!state.main) return ["Add a main image", "Drop, paste or choose the scene to edit."];
  if (!state.object && !erasing(erase)) {
    return ["Add an object image", "Drop, paste or choose the object or pattern to put in the mask, or Erase instead."];
  }
  if (/[^\x20-\x7e]/.test(apiKey())) return ["The API key has characters a header cannot carry", "Paste the key again."];
  return null;
}

async function buildBody(erase) {
  const form = new FormData();
  form.append("main_image", state.main.blob, fileName("main", state.main.blob));
  form.append("mask_image", await maskPng(), "mask.png");
  if (!erasing(erase)) form.append("object_image", state.object.blob, fileName("object", state.object.blob));
  for (const [name, value] of requestParams(erase)) form.append(name, value);
  form.append("priority", "interactive"); // someone is watching: ahead of batch jobs (v2 only, not in the snippets)
  return form;
}

async function run(event, erase = false) {
  event?.preventDefault();
  if (state.controller) return;
  const missing = missingInput(erase);
  if (missing) {
    showError(...missing);
    return;
  }
  hideError();
  const controller = new AbortController();
  state.controller = controller;
  const started = performance.now();
  setRunning(true);
  try {
    const headers = apiKey() ? { "x-api-key": apiKey() } : {};
    const body = await buildBody(erase);
    const submitted = await fetch(JOBS_PATH, { method: "POST", headers, body, signal: controller.signal });
    if (!submitted.ok) {
      showError(...(await describeHttpError(submitted)));
      setStatus(`Failed after ${seconds(started)}.`);
      return;
    }
    const job = (await submitted.json()).request_id;
    state.job = job;
    const end = await followJob(job, headers, controller.signal);
    if (end.event !== "completed") {
      showError(end.event === "cancelled" ? "Cancelled" : `The job failed: ${end.data.error || "no reason given"}`);
      setStatus(`${end.event === "cancelled" ? "Cancelled" : "Failed"} after ${seconds(started)}.`);
      return;
    }
    const output = await fetch(`${REQUESTS_PATH}/${job}/output`, { headers, signal: controller.signal });
    if (!output.ok) {
      showError(...(await describeHttpError(output)));
      return;
    }
    await showResult(await output.blob(), output.headers);
    setStatus(`Done in ${seconds(started)}.`);
  } catch (err) {
    if (controller.signal.aborted) setStatus("Cancelled.");
    else showError("Network error: no answer from the server", `${err.message}. Is segswap still running at ${location.host}?`);
  } finally {
    state.controller = null;
    state.job = null;
    setRunning(false);
  }
}

// The job's event stream (GET /v2/requests/{id}/events?previews=1), read with fetch so that the key travels as a
// header (EventSource cannot send one). Returns the last event: completed, failed or cancelled.
async function followJob(job, headers, signal) {
  const response = await fetch(`${REQUESTS_PATH}/${job}/events?previews=1`, { headers, signal });
  if (!response.ok || !response.body) throw new Error(`the progress stream answered ${response.status}`);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) throw new Error("the progress stream ended before the job did");
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const message = parseEvent(buffer.slice(0, cut));
      buffer = buffer.slice(cut + 2);
      if (!message) continue; // a keep-alive comment
      if (["completed", "failed", "cancelled"].includes(message.event)) return message;
      showProgress(message);
    }
  }
}

function parseEvent(block) {
  let event = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) event = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
  }
  return data.length ? { event, data: JSON.parse(data.join("\n")) } : null;
}

function showProgress({ event, data }) {
  if (event === "status") setStatus(data.status === "QUEUED" ? "Queued…" : "Running…");
  if (event === "progress") {
    els.progressBar.max = data.total;
    els.progressBar.value = data.step;
    els.progressSteps.textContent = `step ${data.step} of ${data.total}`;
  }
  if (event === "preview") {
    els.progressPreview.src = data.image;
    els.progressPreview.hidden = false;
  }
}

async function cancelRun() {
  const job = state.job;
  state.controller?.abort();
  if (!job) return;
  const headers = apiKey() ? { "x-api-key": apiKey() } : {};
  await fetch(`${REQUESTS_PATH}/${job}`, { method: "DELETE", headers }).catch(() => {}); // a started job runs on
}

function seconds(started) {
  return `${((performance.now() - started) / 1000).toFixed(1)} s`;
}

function setRunning(running) {
  els.run.disabled = running;
  updateTools();
  els.cancel.hidden = !running;
  els.progress.hidden = !running;
  clearInterval(state.timer);
  if (!running) return;
  els.progressBar.max = 1;
  els.progressBar.value = 0;
  els.progressSteps.textContent = "";
  els.progressPreview.hidden = true;
  els.progressPreview.removeAttribute("src");
  const started = performance.now();
  const tick = () => {
    els.elapsed.textContent = seconds(started);
  };
  tick();
  state.timer = setInterval(tick, 100);
  setStatus("Running…");
}

async function errorSentence(response) {
  const text = await response.text().catch(() => "");
  try {
    const { error } = JSON.parse(text);
    if (typeof error === "string" && error) return error;
  } catch {
    // not JSON: a proxy's page, or plain text
  }
  const plain = (response.headers.get("content-type") || "").startsWith("text/plain");
  return plain && text.trim() ? text.trim().slice(0, 300) : "(the server sent no error message)";
}

function retryAfterText(value) {
  if (!value) return "";
  const trimmed = value.trim();
  const wait = /^\d+$/.test(trimmed) ? Number(trimmed) : Math.round((Date.parse(trimmed) - Date.now()) / 1000);
  return Number.isFinite(wait) ? `Retry after ${Math.max(0, wait)} s.` : "";
}

async function describeHttpError(response) {
  const [name, hint] = STATUS_TEXT[response.status] || [response.statusText || "Error", ""];
  const sentence = await errorSentence(response);
  const requestId = response.headers.get("x-request-id");
  const details = [hint, retryAfterText(response.headers.get("retry-after")), requestId && `Request id: ${requestId}.`];
  return [`${response.status} ${name}: ${sentence}`, details.filter(Boolean).join("\n")];
}

// ---------- the result ----------

async function showResult(blob, headers) {
  const image = await loadImage(blob);
  clearResult();
  const seed = headers.get("x-seed-value");
  state.result = { blob, url: image.src, seed };
  els.before.src = state.main.image.src;
  els.after.src = image.src;
  const extension = { "image/jpeg": "jpg", "image/webp": "webp" }[blob.type] || "png";
  els.download.href = image.src;
  els.download.download = `segswap-result${seed ? `-seed${seed}` : ""}.${extension}`;
  els.resultInfo.textContent = resultInfo(image, headers);
  els.reuseSeed.hidden = !seed;
  els.compare.hidden = false;
  els.resultMeta.hidden = false;
  els.resultEmpty.hidden = true;
}

function resultInfo(image, headers) {
  const parts = [`${image.naturalWidth}×${image.naturalHeight}`];
  const engine = headers.get("x-segswap-engine");
  const seed = headers.get("x-seed-value");
  const generation = headers.get("x-generation-time");
  const credits = headers.get("x-remaining-credits");
  if (engine) parts.push(`engine ${engine}`);
  if (seed) parts.push(`seed ${seed}`);
  if (generation) parts.push(`generated in ${Number(generation).toFixed(2)} s`);
  if (credits) parts.push(`${credits} credits left`);
  return parts.join(" · ");
}

function clearResult() {
  if (state.result) URL.revokeObjectURL(state.result.url);
  state.result = null;
  els.before.removeAttribute("src");
  els.after.removeAttribute("src");
  els.download.removeAttribute("href");
  els.compare.hidden = true;
  els.resultMeta.hidden = true;
  els.resultEmpty.hidden = false;
}

// ---------- messages ----------

function setStatus(text) {
  els.status.textContent = text;
}

function showError(title, detail = "") {
  const strong = document.createElement("strong");
  strong.textContent = title;
  els.error.replaceChildren(strong, detail);
  els.error.hidden = false;
}

function hideError() {
  els.error.hidden = true;
  els.error.replaceChildren();
}

// ---------- snippets ----------

function shellQuote(text) {
  return /^[\w@%+=:,./-]+$/.test(text) ? text : `'${text.replace(/'/g, `'\\''`)}'`;
}

const pyString = (text) => JSON.stringify(text); // a JSON string is a valid Python literal
const isNumber = (text) => /^-?\d+(\.\d+)?$/.test(text);

function snippetParts() {
  return {
    url: new URL(API_PATH, window.location.href).href,
    files: [
      ["main_image", fileName("main", state.main?.blob)],
      ["mask_image", "mask.png"],
      ...(erasing(false) ? [] : [["object_image", fileName("object", state.object?.blob)]]),
    ],
    params: requestParams(),
    output: `result.${OUTPUT_EXTENSIONS[els.format.value] || "png"}`,
    withKey: Boolean(apiKey()),
  };
}

function curlSnippet({ url, files, params, output, withKey }) {
  const args = [`curl -sS ${shellQuote(url)}`];
  if (withKey) args.push('-H "x-api-key: $SEGSWAP_API_KEY"');
  for (const [name, file] of files) args.push(`-F ${name}=@${file}`);
  // --form-string: curl reads a leading @ or < in -F values as a file to upload
  for (const [name, value] of params) args.push(`${isNumber(value) ? "-F" : "--form-string"} ${shellQuote(`${name}=${value}`)}`);
  args.push(`-o ${output}`);
  return args.join(" \\\n  ");
}

function pythonSnippet({ url, files, params, output, withKey }) {
  const lines = withKey ? ["import os", ""] : [];
  lines.push("import httpx", "", "response = httpx.post(", `    ${pyString(url)},`);
  if (withKey) lines.push('    headers={"x-api-key": os.environ["SEGSWAP_API_KEY"]},');
  lines.push("    files={", ...files.map(([name, file]) => `        ${pyString(name)}: open(${pyString(file)}, "rb"),`), "    },");
  if (params.length) {
    const values = params.map(([name, value]) => `        ${pyString(name)}: ${isNumber(value) ? value : pyString(value)},`);
    lines.push("    data={", ...values, "    },");
  }
  lines.push(
    "    timeout=600,",
    ")",
    "if response.is_error:",
    '    raise SystemExit(f"{response.status_code}: {response.text}")',
    `with open(${pyString(output)}, "wb") as out:`,
    "    out.write(response.content)",
  );
  return lines.join("\n");
}

function updateSnippets() {
  const parts = snippetParts();
  els.curl.textContent = `${parts.withKey ? "# export SEGSWAP_API_KEY=<your key>\n" : ""}${curlSnippet(parts)}`;
  els.python.textContent = pythonSnippet(parts);
}

async function copyText(button) {
  const code = $(button.dataset.copy);
  try {
    await navigator.clipboard.writeText(code.textContent);
  } catch {
    // no clipboard API off a secure origin: select the text for Ctrl+C instead
    window.getSelection().selectAllChildren(code);
    button.textContent = "press Ctrl+C";
    return;
  }
  button.textContent = "copied";
  setTimeout(() => {
    button.textContent = "copy";
  }, 1500);
}

// ---------- wiring ----------

function onKeyDown(event) {
  if (isTyping(event.target) || event.altKey) return;
  const key = event.key.toLowerCase();
  const command = event.ctrlKey || event.metaKey;
  if (command && key === "z") {
    event.preventDefault();
    undo();
    return;
  }
  const shortcuts = {
    b: () => setTool("brush"),
    e: () => setTool("eraser"),
    s: () => setTool("select"),
    "[": () => setBrushSize(Number(els.brushSize.value) - 5),
    "]": () => setBrushSize(Number(els.brushSize.value) + 5),
  };
  if (!command) shortcuts[key]?.();
}

function wireMaskTools() {
  const canvas = els.maskCanvas;
  canvas.addEventListener("pointerdown", onPointerDown);
  canvas.addEventListener("pointermove", onPointerMove);
  canvas.addEventListener("pointerup", onPointerUp);
  canvas.addEventListener("pointercancel", onPointerUp);
  canvas.addEventListener("pointerleave", () => {
    els.brushCursor.hidden = true;
  });
  for (const radio of document.querySelectorAll("input[name=tool]")) radio.addEventListener("change", () => setTool(radio.value));
  els.brushSize.addEventListener("input", () => setBrushSize(els.brushSize.value));
  els.undo.addEventListener("click", undo);
  els.clear.addEventListener("click", clearMask);
  els.invert.addEventListener("click", invertMask);
  els.saveMask.addEventListener("click", saveMask);
  els.saveMask2.addEventListener("click", saveMask);
  initFileInput(els.maskFile, "mask");
}

function wireParams() {
  els.params.addEventListener("input", refreshControls);
  els.params.addEventListener("change", refreshControls);
  els.params.addEventListener("submit", run);
  els.params.addEventListener("reset", () => setTimeout(refreshControls)); // values change after the event
  els.seedRandom.addEventListener("click", () => {
    els.seed.value = "-1";
    refreshControls();
  });
  els.reuseSeed.addEventListener("click", () => {
    if (state.result?.seed) els.seed.value = state.result.seed;
    refreshControls();
  });
}

function init() {
  initDropzone(els.mainDrop);
  initDropzone(els.objectDrop);
  initFileInput(els.mainFile, "main");
  initFileInput(els.objectFile, "object");
  document.addEventListener("paste", onPaste);
  document.addEventListener("keydown", onKeyDown);
  // A drop that misses a zone must not navigate away from the page (and lose the mask).
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
  wireMaskTools();
  wireParams();
  els.cancel.addEventListener("click", cancelRun);
  els.erase.addEventListener("click", () => run(null, true));
  els.split.addEventListener("input", () => els.compare.style.setProperty("--split", `${els.split.value}%`));
  for (const button of document.querySelectorAll("button.copy")) button.addEventListener("click", () => copyText(button));
  initApiKey();
  els.apiKey.addEventListener("change", loadModelSets);
  $("model_set").addEventListener("change", fillLoras);
  loadModelSets();
  initHints();
  refreshControls();
  updateTools();
}

init();
