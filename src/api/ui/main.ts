/**
 * The chat UI: pick or paste an image, paint the region (brush / eraser / box) on a mask canvas of the
 * image's own size, or click points (include / Shift+click exclude) that POST /v1/regions/segment turns
 * into the mask; ask; the answer streams in from POST /v1/regions/ask (server-sent events over fetch,
 * since EventSource cannot POST). Follow-ups reuse the conversation until the region changes.
 */

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;

const drop = $<HTMLDivElement>("drop");
const fileInput = $<HTMLInputElement>("file");
const stage = $<HTMLDivElement>("stage");
const imageCanvas = $<HTMLCanvasElement>("image-canvas");
const maskCanvas = $<HTMLCanvasElement>("mask-canvas");
const boxPreview = $<HTMLDivElement>("box-preview");
const pointsLayer = $<HTMLDivElement>("points-layer");
const pointTools = $<HTMLDivElement>("point-tools");
const pointStatus = $<HTMLSpanElement>("point-status");
const tools = $<HTMLDivElement>("tools");
const brushSize = $<HTMLInputElement>("brush-size");
const regionNote = $<HTMLSpanElement>("region-note");
const messages = $<HTMLOListElement>("messages");
const form = $<HTMLFormElement>("ask-form");
const question = $<HTMLTextAreaElement>("question");
const askButton = $<HTMLButtonElement>("ask");

const MASK_COLOUR = "#ffd60a";

interface State {
  image?: Blob;
  /** The original image as a data URL (for POST /v1/regions/segment), read once per image. */
  imageDataUrl?: Promise<string>;
  conversationId?: string;
  busy: boolean;
  maskDirty: boolean;
}
const state: State = { busy: false, maskDirty: false };

// ---------- image loading ----------

async function loadImage(blob: Blob): Promise<void> {
  if (!blob.type.startsWith("image/")) {
    showError("That file is not an image. Choose a PNG, JPEG, WebP or GIF file.");
    return;
  }
  let bitmap: ImageBitmap;
  try {
    bitmap = await createImageBitmap(blob);
  } catch {
    showError("This browser could not open that image. Try a PNG or JPEG file.");
    return;
  }
  state.image = blob;
  state.imageDataUrl = undefined;
  clearPoints();
  for (const c of [imageCanvas, maskCanvas]) {
    c.width = bitmap.width;
    c.height = bitmap.height;
  }
  imageCanvas.getContext("2d")!.drawImage(bitmap, 0, 0);
  bitmap.close();
  clearMask();
  drop.hidden = true;
  stage.hidden = false;
  tools.hidden = false;
  resetConversation();
}

fileInput.addEventListener("change", () => {
  const file = fileInput.files?.[0];
  if (file) void loadImage(file);
  fileInput.value = "";
});
drop.addEventListener("dragover", (e) => {
  e.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  const file = e.dataTransfer?.files[0];
  if (file) void loadImage(file);
});
document.addEventListener("paste", (e) => {
  const item = [...(e.clipboardData?.items ?? [])].find((i) => i.type.startsWith("image/"));
  const file = item?.getAsFile();
  if (file) {
    e.preventDefault();
    void loadImage(file);
  }
});

// ---------- region drawing ----------

const maskContext = () => maskCanvas.getContext("2d")!;
type Tool = "brush" | "eraser" | "box" | "point";
const currentTool = () =>
  (document.querySelector<HTMLInputElement>('input[name="tool"]:checked')?.value ?? "brush") as Tool;

function clearMask(): void {
  maskContext().clearRect(0, 0, maskCanvas.width, maskCanvas.height);
  regionChanged();
}

/** Any pixel painted? (The mask canvas is transparent where nothing is drawn.) */
function maskHasRegion(): boolean {
  const { data } = maskContext().getImageData(0, 0, maskCanvas.width, maskCanvas.height);
  for (let i = 3; i < data.length; i += 4) if (data[i] > 0) return true;
  return false;
}

function regionChanged(): void {
  state.maskDirty = true;
  const has = maskCanvas.width > 0 && maskHasRegion();
  regionNote.textContent = has ? "Region drawn." : "No region drawn: the whole image is used.";
  // A new region is a new question about the image: the next question starts a new conversation.
  if (state.conversationId) {
    endConversation();
    addNote("The region changed: the next question starts a new conversation.");
  }
}

/** Pointer position in image pixels (the canvas is displayed scaled). */
function toImage(e: PointerEvent): { x: number; y: number } {
  const r = maskCanvas.getBoundingClientRect();
  return {
    x: ((e.clientX - r.left) / r.width) * maskCanvas.width,
    y: ((e.clientY - r.top) / r.height) * maskCanvas.height,
  };
}

function brushRadius(): number {
  // The slider is in screen pixels; scale so the brush looks the same size at any zoom.
  const r = maskCanvas.getBoundingClientRect();
  return (Number(brushSize.value) / 2) * (maskCanvas.width / Math.max(1, r.width));
}

let drawing:
  | { tool: Exclude<Tool, "point">; last: { x: number; y: number }; start: { x: number; y: number } }
  | undefined;

function stroke(
  from: { x: number; y: number },
  to: { x: number; y: number },
  tool: "brush" | "eraser",
): void {
  const ctx = maskContext();
  ctx.save();
  ctx.globalCompositeOperation = tool === "eraser" ? "destination-out" : "source-over";
  ctx.strokeStyle = ctx.fillStyle = MASK_COLOUR;
  ctx.lineCap = ctx.lineJoin = "round";
  ctx.lineWidth = brushRadius() * 2;
  ctx.beginPath();
  ctx.moveTo(from.x, from.y);
  ctx.lineTo(to.x, to.y);
  ctx.stroke();
  ctx.beginPath();
  ctx.arc(to.x, to.y, brushRadius(), 0, Math.PI * 2);
  ctx.fill();
  ctx.restore();
}

function showBoxPreview(a: { x: number; y: number }, b: { x: number; y: number }): void {
  const sx = maskCanvas.getBoundingClientRect().width / maskCanvas.width;
  boxPreview.hidden = false;
  boxPreview.style.left = `${Math.min(a.x, b.x) * sx}px`;
  boxPreview.style.top = `${Math.min(a.y, b.y) * sx}px`;
  boxPreview.style.width = `${Math.abs(a.x - b.x) * sx}px`;
  boxPreview.style.height = `${Math.abs(a.y - b.y) * sx}px`;
}

maskCanvas.addEventListener("pointerdown", (e) => {
  e.preventDefault();
  const p = toImage(e);
  const tool = currentTool();
  if (tool === "point") {
    if (e.button === 0) addPoint(p, e.shiftKey ? 0 : 1);
    return;
  }
  maskCanvas.setPointerCapture(e.pointerId);
  drawing = { tool, last: p, start: p };
  if (tool !== "box") stroke(p, p, tool);
});
maskCanvas.addEventListener("pointermove", (e) => {
  if (!drawing) return;
  const p = toImage(e);
  if (drawing.tool === "box") showBoxPreview(drawing.start, p);
  else stroke(drawing.last, p, drawing.tool);
  drawing.last = p;
});
function endDrawing(e: PointerEvent): void {
  if (!drawing) return;
  const p = toImage(e);
  if (drawing.tool === "box") {
    boxPreview.hidden = true;
    const x = Math.min(drawing.start.x, p.x);
    const y = Math.min(drawing.start.y, p.y);
    const ctx = maskContext();
    ctx.fillStyle = MASK_COLOUR;
    ctx.fillRect(x, y, Math.abs(p.x - drawing.start.x), Math.abs(p.y - drawing.start.y));
  }
  drawing = undefined;
  regionChanged();
}
maskCanvas.addEventListener("pointerup", endDrawing);
maskCanvas.addEventListener("pointercancel", endDrawing);
$("clear-region").addEventListener("click", () => {
  clearPoints();
  clearMask();
});

/** The painted region as a black/white PNG of the image's size (white = region). */
async function maskPng(): Promise<Blob> {
  const out = document.createElement("canvas");
  out.width = maskCanvas.width;
  out.height = maskCanvas.height;
  const src = maskContext().getImageData(0, 0, maskCanvas.width, maskCanvas.height);
  const dst = new ImageData(maskCanvas.width, maskCanvas.height);
  for (let i = 0; i < src.data.length; i += 4) {
    const v = src.data[i + 3] >= 128 ? 255 : 0;
    dst.data[i] = dst.data[i + 1] = dst.data[i + 2] = v;
    dst.data[i + 3] = 255;
  }
  out.getContext("2d")!.putImageData(dst, 0, 0);
  return new Promise((resolve, reject) =>
    out.toBlob((b) => (b ? resolve(b) : reject(new Error("could not encode the mask"))), "image/png"),
  );
}

// ---------- points: clicks the server's segmenter turns into the mask ----------

interface ClickPoint {
  /** Image pixels. */
  x: number;
  y: number;
  /** 1 = include, 0 = exclude. */
  label: 0 | 1;
}

interface SegmentResponse {
  width: number;
  height: number;
  mask: { png: string };
  score: number;
  timings?: { embeddings_cached?: boolean };
}

const points: {
  list: ClickPoint[];
  /** The points the mask on the canvas came from: where a failed click goes back to. */
  settled: ClickPoint[];
  /** The request in flight (only the newest click's; a newer click aborts the older one). */
  controller?: AbortController;
  pending?: Promise<void>;
} = { list: [], settled: [] };

const POINT_HINT = "Click an object; Shift+click excludes.";

function addPoint(p: { x: number; y: number }, label: 0 | 1): void {
  // Whole pixels inside the image (the server accepts 0..width, 0..height).
  const x = Math.min(maskCanvas.width, Math.max(0, Math.round(p.x)));
  const y = Math.min(maskCanvas.height, Math.max(0, Math.round(p.y)));
  points.list.push({ x, y, label });
  renderPoints();
  points.pending = segmentPoints();
}

/** Forgets the points (the mask stays) and drops the request in flight. */
function clearPoints(): void {
  points.controller?.abort();
  points.controller = undefined;
  points.list = [];
  points.settled = [];
  setSegmenting(false);
  pointStatus.textContent = POINT_HINT;
  renderPoints();
}

function renderPoints(): void {
  pointsLayer.replaceChildren(
    ...points.list.map((p) => {
      const marker = document.createElement("span");
      marker.className = `point ${p.label === 1 ? "include" : "exclude"}`;
      marker.style.left = `${(p.x / maskCanvas.width) * 100}%`;
      marker.style.top = `${(p.y / maskCanvas.height) * 100}%`;
      return marker;
    }),
  );
  showPointTools();
}

function showPointTools(): void {
  pointTools.hidden = currentTool() !== "point" && points.list.length === 0;
}
for (const radio of document.querySelectorAll<HTMLInputElement>('input[name="tool"]')) {
  radio.addEventListener("change", showPointTools);
}

function setSegmenting(on: boolean): void {
  stage.classList.toggle("segmenting", on);
  stage.setAttribute("aria-busy", String(on));
}

function readImageDataUrl(image: Blob): Promise<string> {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result as string);
    reader.onerror = () => reject(reader.error ?? new Error("could not read the image"));
    reader.readAsDataURL(image);
  });
}

/** The server's mask PNG (one channel, 255 inside) as mask-canvas pixels of the canvas's size. */
async function maskPixels(dataUrl: string): Promise<ImageData> {
  const base64 = dataUrl.slice(dataUrl.indexOf(",") + 1);
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  const bitmap = await createImageBitmap(new Blob([bytes], { type: "image/png" }), {
    colorSpaceConversion: "none",
    premultiplyAlpha: "none",
  });
  const { width, height } = maskCanvas;
  const scratch = document.createElement("canvas");
  scratch.width = width;
  scratch.height = height;
  const ctx = scratch.getContext("2d")!;
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(bitmap, 0, 0, width, height);
  bitmap.close();
  const src = ctx.getImageData(0, 0, width, height).data;
  const out = new ImageData(width, height);
  // The painted mask's own colour, opaque inside, transparent outside: to Ask it is a painted region.
  const [r, g, b] = [1, 3, 5].map((i) => parseInt(MASK_COLOUR.slice(i, i + 2), 16));
  for (let i = 0; i < src.length; i += 4) {
    if (src[i] < 128) continue;
    out.data[i] = r;
    out.data[i + 1] = g;
    out.data[i + 2] = b;
    out.data[i + 3] = 255;
  }
  return out;
}

/** Sends the points; the answer replaces the mask. A failed click is taken back (points and mask stay). */
async function segmentPoints(): Promise<void> {
  points.controller?.abort();
  const controller = new AbortController();
  points.controller = controller;
  const sent = points.list.slice();
  const stale = () => controller.signal.aborted;
  const fail = (message: string) => {
    points.list = points.settled.slice();
    renderPoints();
    pointStatus.textContent = "That click did not give a region; the previous one is kept.";
    showError(message);
  };
  setSegmenting(true);
  pointStatus.textContent = "Finding the region…";
  try {
    if (!state.image) return;
    state.imageDataUrl ??= readImageDataUrl(state.image);
    const image = await state.imageDataUrl;
    if (stale()) return;
    const response = await fetch("v1/regions/segment", {
      method: "POST",
      headers: { ...authHeaders(), "content-type": "application/json" },
      body: JSON.stringify({
        image,
        points: sent.map((p) => (p.label === 1 ? [p.x, p.y] : [p.x, p.y, 0])),
      }),
      signal: controller.signal,
    });
    let parsed: unknown;
    try {
      parsed = await response.json();
    } catch {
      parsed = undefined;
    }
    if (stale()) return;
    if (!response.ok) return fail(explain(response.status, parsed));
    const result = parsed as SegmentResponse;
    const pixels = await maskPixels(result.mask.png);
    if (stale()) return;
    maskContext().putImageData(pixels, 0, 0);
    points.settled = sent;
    const cached = result.timings?.embeddings_cached ? " (image encoding cached)" : "";
    pointStatus.textContent = `Score ${result.score.toFixed(2)}${cached}`;
    regionChanged();
  } catch {
    if (!stale()) fail("Could not reach the server to find the region. Check that it is running.");
  } finally {
    if (points.controller === controller) {
      points.controller = undefined;
      setSegmenting(false);
    }
  }
}

/** Waits for the newest click's mask (so that Ask uses it); never rejects. */
async function pointsSettled(): Promise<void> {
  while (points.controller && points.pending) await points.pending;
}

document.addEventListener("keydown", (e) => {
  if (e.key === "Escape" && (points.list.length > 0 || points.controller)) clearPoints();
});
$("clear-points").addEventListener("click", clearPoints);

// ---------- conversation ----------

function addMessage(kind: "user" | "assistant" | "error" | "note", text: string): HTMLLIElement {
  const li = document.createElement("li");
  li.className = kind === "note" ? "assistant note" : kind;
  li.textContent = text;
  messages.append(li);
  li.scrollIntoView({ block: "end" });
  return li;
}
const addNote = (text: string) => addMessage("note", text);
const showError = (text: string) => addMessage("error", text);

/** Forgets the current conversation and frees its LLM slot on the server (which has only a few). */
function endConversation(): void {
  if (!state.conversationId) return;
  // Failures do not matter here: the server closes idle conversations itself, only later.
  void fetch(`v1/regions/conversations/${encodeURIComponent(state.conversationId)}`, {
    method: "DELETE",
    headers: authHeaders(),
  }).catch(() => undefined);
  state.conversationId = undefined;
}

function resetConversation(): void {
  endConversation();
  messages.replaceChildren();
}

$("start-over").addEventListener("click", () => {
  clearPoints();
  state.image = undefined;
  state.imageDataUrl = undefined;
  resetConversation();
  stage.hidden = true;
  tools.hidden = true;
  drop.hidden = false;
  question.value = "";
});

function authHeaders(): Record<string, string> {
  const key = localStorage.getItem("region-vqa-api-key");
  return key ? { authorization: `Bearer ${key}` } : {};
}

/** Turns a server error body into words for people; the server's messages already are. */
function explain(status: number, body: unknown): string {
  const err = (body as { error?: { code?: string; message?: string } } | undefined)?.error;
  if (status === 401) return "This server needs an API key.";
  if (status === 413) return "The image is too large for this server. Try a smaller image.";
  if (status === 503)
    return err?.message ?? "The server is busy or still loading its model. Try again in a moment.";
  if (err?.code === "conversation_not_found")
    return "This conversation has expired. Ask again to start a new one.";
  return err?.message ?? `The server answered with an error (HTTP ${status}).`;
}

async function send(text: string): Promise<void> {
  let body: BodyInit;
  const headers: Record<string, string> = authHeaders();
  if (state.conversationId) {
    headers["content-type"] = "application/json";
    // Behind a load balancer (deploy/haproxy.cfg), the header keeps follow-ups on the replica holding
    // the conversation's KV cache.
    headers["x-conversation-id"] = state.conversationId;
    body = JSON.stringify({ conversation_id: state.conversationId, question: text, stream: true });
  } else {
    if (!state.image) {
      showError("Choose an image first.");
      return;
    }
    const fd = new FormData();
    fd.append("image", state.image, "image");
    if (maskHasRegion()) fd.append("mask", await maskPng(), "mask.png");
    else fd.append("region", '"whole"');
    fd.append("question", text);
    fd.append("stream", "true");
    body = fd;
  }

  let response: Response;
  try {
    response = await fetch("v1/regions/ask", { method: "POST", body, headers });
  } catch {
    showError("Could not reach the server. Check that it is running and try again.");
    return;
  }
  if (response.status === 401) {
    const key = prompt("This server needs an API key. Enter it to continue:");
    if (key) {
      localStorage.setItem("region-vqa-api-key", key.trim());
      return send(text);
    }
  }
  if (!response.ok || !response.body) {
    let parsed: unknown;
    try {
      parsed = await response.json();
    } catch {
      parsed = undefined;
    }
    if ((parsed as { error?: { code?: string } })?.error?.code === "conversation_not_found") {
      state.conversationId = undefined;
    }
    showError(explain(response.status, parsed));
    return;
  }

  const bubble = addMessage("assistant", "");
  bubble.classList.add("streaming");
  let answer = "";
  try {
    for await (const event of readEvents(response.body)) {
      const data = JSON.parse(event.data) as Record<string, unknown>;
      if (event.event === "conversation") state.conversationId = data.conversation_id as string;
      else if (event.event === "delta") {
        answer += data.text as string;
        bubble.textContent = answer;
        bubble.scrollIntoView({ block: "end" });
      } else if (event.event === "done") {
        bubble.textContent = (data.answer as string) || "(no answer)";
        if (data.finish_reason === "length") addNote("The answer reached the length limit.");
      } else if (event.event === "error") {
        showError(explain(400, data));
      }
    }
  } catch {
    showError("The connection broke while the answer was streaming. Try asking again.");
  } finally {
    bubble.classList.remove("streaming");
    bubble.dataset.done = "true";
  }
}

/** Server-sent events from a fetch body. */
async function* readEvents(
  stream: ReadableStream<Uint8Array>,
): AsyncGenerator<{ event?: string; data: string }> {
  const reader = stream.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end: number;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event: string | undefined;
      let data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) event = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      if (data) yield { event, data };
    }
  }
}

form.addEventListener("submit", (e) => {
  e.preventDefault();
  const text = question.value.trim();
  if (!text || state.busy) return;
  state.busy = true;
  askButton.disabled = true;
  addMessage("user", text);
  question.value = "";
  // A click still being segmented: ask about its region, not the one before it.
  pointsSettled()
    .then(() => send(text))
    .finally(() => {
      state.busy = false;
      askButton.disabled = false;
      question.focus();
    });
});
question.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) {
    e.preventDefault();
    form.requestSubmit();
  }
});
