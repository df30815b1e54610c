// faceprint web UI: plain DOM code over the /v1 API. Server data is only ever inserted with textContent.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { key: sessionStorage.getItem("faceprint-key") || "", auth: true, webcamShots: [], stream: null };

function headers(extra = {}) {
  return state.key ? { ...extra, Authorization: `Bearer ${state.key}` } : extra;
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: headers(options.headers || {}) });
  if (response.status === 204) return null;
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const message = body.detail || body.title || `HTTP ${response.status}`;
    const error = new Error(`${response.status} ${body.code || ""}: ${message}`);
    error.body = body;
    throw error;
  }
  return body;
}

function showError(error) {
  $("error").textContent = error ? String(error.message || error) : "";
}

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function addNumber(form, name, input) {
  if (input.value !== "") form.append(name, input.value);
}

// -- tabs and key --------------------------------------------------------------------------------------
for (const button of document.querySelectorAll("#tabs button")) {
  button.addEventListener("click", () => {
    for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("active", b === button);
    for (const s of document.querySelectorAll(".tab")) s.classList.toggle("active", s.id === `tab-${button.dataset.tab}`);
    showError(null);
    if (button.dataset.tab === "subjects") loadSubjects(true);
    if (button.dataset.tab === "audit") loadAudit();
    if (button.dataset.tab === "drift") loadDrift();
  });
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  state.key = $("api-key").value.trim();
  sessionStorage.setItem("faceprint-key", state.key);
  $("api-key").value = "";
  refreshStatus();
});

async function refreshStatus() {
  try {
    const info = await api("/v1/info");
    state.auth = info.auth;
    const who = !info.auth ? "no authentication (demo mode)" : state.key ? "key set" : "enter an API key";
    // Every model the server has loaded (collections may be pinned to different ones), each with its detector.
    const models = (info.models || []).map((m) => `${m.model_id} (${m.detector})`).join(", ");
    const missing = Object.keys(info.unavailable || {});
    const unserved = missing.length ? ` · not served: ${missing.join(", ")}` : "";
    $("status").textContent = `v${info.version} · ${models || "loading"}${unserved} · ${who}`;
    $("key-form").hidden = !info.auth;
  } catch (error) {
    $("status").textContent = "server unreachable";
  }
}

// -- identify -------------------------------------------------------------------------------------------
// A face's liveness as a short label ("live 0.99" / "ATTACK 0.01") and whether it passed.
function livenessLabel(liveness) {
  return `${liveness.live ? "live" : "ATTACK"} ${Number(liveness.score).toFixed(2)}`;
}

function livenessText(liveness) {
  const rates = liveness.apcer === null ? "uncalibrated" : `APCER ${liveness.apcer}, BPCER ${liveness.bpcer}`;
  return `${livenessLabel(liveness)} (P(live) ${liveness.live ? ">=" : "<"} ${Number(liveness.threshold).toFixed(2)}; ${rates}; ${liveness.model})`;
}

function identifyLabel(face) {
  const who = face.refused ? "not searched" : face.match || "unknown";
  return face.liveness ? `${who} · ${livenessLabel(face.liveness)}` : who;
}

// Boxes with a label on a canvas: label(face) → text, ok(face) → green or red. Text only, never HTML.
function drawFaces(file, faces, canvasId = "identify-canvas", label = identifyLabel, ok = (f) => Boolean(f.match)) {
  return new Promise((resolve) => {
    const img = new Image();
    img.onload = () => {
      const canvas = $(canvasId);
      const scale = Math.min(1, 720 / img.naturalWidth);
      canvas.width = Math.round(img.naturalWidth * scale);
      canvas.height = Math.round(img.naturalHeight * scale);
      const ctx = canvas.getContext("2d");
      ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
      ctx.lineWidth = 3;
      ctx.font = "bold 16px system-ui, sans-serif";
      for (const face of faces) {
        const [x1, y1, x2, y2] = face.box.map((v) => v * scale);
        const text = label(face);
        ctx.strokeStyle = ok(face) ? "#1a7f37" : "#b42318";
        ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
        const width = ctx.measureText(text).width + 8;
        ctx.fillStyle = ctx.strokeStyle;
        ctx.fillRect(x1, Math.max(0, y1 - 22), width, 22);
        ctx.fillStyle = "#fff";
        ctx.fillText(text, x1 + 4, Math.max(16, y1 - 6));
      }
      URL.revokeObjectURL(img.src);
      resolve();
    };
    img.src = URL.createObjectURL(file);
  });
}

$("identify-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  showError(null);
  const file = $("identify-file").files[0];
  if (!file) return;
  const form = new FormData();
  form.append("image", file);
  addNumber(form, "threshold", $("identify-threshold"));
  addNumber(form, "fmr", $("identify-fmr"));
  if ($("identify-liveness").checked) form.append("liveness", "flag");
  const list = $("identify-results");
  list.replaceChildren(el("li", "identifying…", "muted"));
  try {
    const result = await api("/v1/identify", { method: "POST", body: form });
    await drawFaces(file, result.faces);
    list.replaceChildren();
    if (!result.faces.length) list.append(el("li", "no face found", "muted"));
    result.faces.forEach((face, i) => {
      const item = el("li");
      item.append(el("span", `face ${i + 1}: `));
      item.append(el("span", face.match || "unknown", face.match ? "match" : "unknown"));
      if (face.score !== null) item.append(el("span", ` score ${face.score.toFixed(3)}`, "muted"));
      if (face.refused) item.append(el("span", ` · ${face.refused}`, "unknown"));
      if (face.liveness) {
        item.append(el("span", ` · ${livenessText(face.liveness)}`, face.liveness.live ? "match" : "unknown"));
      }
      const others = face.candidates.filter((c) => c.subject !== face.match).slice(0, 3);
      if (others.length) {
        item.append(el("span", ` · also: ${others.map((c) => `${c.subject} ${c.score.toFixed(3)}`).join(", ")}`, "muted"));
      }
      list.append(item);
    });
    list.dataset.done = "1";
  } catch (error) {
    list.replaceChildren();
    showError(error);
  }
});

// -- enrol ------------------------------------------------------------------------------------------------
$("webcam-start").addEventListener("click", async () => {
  showError(null);
  try {
    state.stream = await navigator.mediaDevices.getUserMedia({ video: true });
    $("webcam-video").srcObject = state.stream;
    $("webcam-video").classList.add("on");
    $("webcam-capture").disabled = false;
  } catch (error) {
    showError(`webcam: ${error.message || error}`);
  }
});

$("webcam-capture").addEventListener("click", () => {
  const video = $("webcam-video");
  const canvas = document.createElement("canvas");
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  canvas.getContext("2d").drawImage(video, 0, 0);
  canvas.toBlob((blob) => {
    state.webcamShots.push(blob);
    $("webcam-count").textContent = `${state.webcamShots.length} webcam photo(s)`;
  }, "image/jpeg", 0.92);
});

$("enrol-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  showError(null);
  const files = [...$("enrol-files").files];
  if (!files.length && !state.webcamShots.length) {
    showError("choose photos or capture from the webcam");
    return;
  }
  const out = $("enrol-result");
  out.replaceChildren(el("li", "enrolling…", "muted"));
  const body = { name: $("enrol-name").value.trim() };
  if ($("enrol-consent-by").value.trim()) {
    // Purposes: comma-separated, each one the collection knows (default: access-control).
    const purposes = $("enrol-consent-purpose").value.split(",").map((p) => p.trim()).filter((p) => p);
    body.consent = { given_by: $("enrol-consent-by").value.trim(), purposes: purposes.length ? purposes : ["access-control"] };
  }
  try {
    const subject = await api("/v1/subjects", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    const form = new FormData();
    for (const file of files) form.append("image", file);
    state.webcamShots.forEach((blob, i) => form.append("image", blob, `webcam-${i + 1}.jpg`));
    let report;
    try {
      report = await api(`/v1/subjects/${encodeURIComponent(subject.id)}/faces`, { method: "POST", body: form });
    } catch (error) {
      // Nothing usable: remove the empty subject again so a retry can reuse the name.
      await api(`/v1/subjects/${encodeURIComponent(subject.id)}`, { method: "DELETE" }).catch(() => {});
      report = null;
      const images = (error.body && error.body.images) || [];
      out.replaceChildren(...images.map((o) => el("li", `${o.image}: rejected — ${o.reasons.join("; ")}`, "unknown")));
      throw error;
    }
    out.replaceChildren(el("li", `${subject.name}: ${report.accepted} photo(s) enrolled, ${report.rejected} rejected`, "match"));
    for (const o of report.images) {
      out.append(el("li", `${o.image}: ${o.accepted ? "enrolled" : `rejected — ${o.reasons.join("; ")}`}`, o.accepted ? "" : "unknown"));
    }
    state.webcamShots = [];
    $("webcam-count").textContent = "";
  } catch (error) {
    showError(error);
  }
});

// -- verify -----------------------------------------------------------------------------------------------
$("verify-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  showError(null);
  const form = new FormData();
  form.append("image_a", $("verify-a").files[0]);
  form.append("image_b", $("verify-b").files[0]);
  addNumber(form, "threshold", $("verify-threshold"));
  if ($("verify-liveness").checked) form.append("liveness", "flag");
  const out = $("verify-result");
  const live = $("verify-liveness-result");
  live.replaceChildren();
  out.textContent = "comparing…";
  out.className = "verdict muted";
  try {
    const r = await api("/v1/verify", { method: "POST", body: form });
    for (const [name, liveness] of Object.entries(r.liveness || {})) {
      if (liveness) live.append(el("li", `${name}: ${livenessText(liveness)}`, liveness.live ? "match" : "unknown"));
    }
    if (r.decision === "not_live") {
      out.textContent = `Not live — ${r.reasons.join("; ")}`;
      out.className = "verdict unknown";
      return;
    }
    const fmr = r.fmr === null ? "FMR unknown" : `FMR ${Number(r.fmr).toExponential(1)}`;
    out.textContent = `${r.same_person ? "Same person" : "Different people"} — score ${r.score.toFixed(3)}, threshold ${r.threshold.toFixed(3)} (${fmr})`;
    out.className = `verdict ${r.same_person ? "match" : "unknown"}`;
  } catch (error) {
    out.textContent = "";
    showError(error);
  }
});

// -- liveness -----------------------------------------------------------------------------------------------
$("liveness-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  showError(null);
  const file = $("liveness-file").files[0];
  if (!file) return;
  const form = new FormData();
  form.append("image", file);
  addNumber(form, "threshold", $("liveness-threshold"));
  const list = $("liveness-results");
  delete list.dataset.done;
  list.replaceChildren(el("li", "checking…", "muted"));
  try {
    const result = await api("/v1/liveness", { method: "POST", body: form });
    await drawFaces(file, result.faces, "liveness-canvas", livenessLabel, (f) => f.live);
    list.replaceChildren();
    if (!result.faces.length) list.append(el("li", "no face found", "muted"));
    result.faces.forEach((face, i) => {
      const item = el("li");
      item.append(el("span", `face ${i + 1}: `));
      item.append(el("span", livenessText(face), face.live ? "match" : "unknown"));
      list.append(item);
    });
    list.dataset.done = "1";
  } catch (error) {
    list.replaceChildren();
    showError(error);
  }
});

// -- subjects -----------------------------------------------------------------------------------------------
let subjectsCursor = null;

async function loadSubjects(reset) {
  showError(null);
  const body = $("subjects-body");
  if (reset) {
    subjectsCursor = null;
    body.replaceChildren();
  }
  const params = new URLSearchParams({ limit: "50" });
  if (subjectsCursor) params.set("cursor", subjectsCursor);
  const filter = $("subjects-filter").value.trim();
  if (filter) params.set("name", filter);
  try {
    const page = await api(`/v1/subjects?${params}`);
    for (const s of page.items) {
      const row = el("tr");
      row.append(el("td", s.name), el("td", s.templates), el("td", (s.created_at || "").slice(0, 19).replace("T", " ")), el("td", s.id, "id"));
      const cell = el("td");
      const del = el("button", "Delete");
      del.type = "button";
      del.addEventListener("click", async () => {
        if (!confirm(`Delete ${s.name} and all their faces?`)) return;
        try {
          await api(`/v1/subjects/${encodeURIComponent(s.id)}`, { method: "DELETE" });
          row.remove();
        } catch (error) {
          showError(error);
        }
      });
      cell.append(del);
      row.append(cell);
      body.append(row);
    }
    subjectsCursor = page.next_cursor;
    $("subjects-more").hidden = !subjectsCursor;
  } catch (error) {
    showError(error);
  }
}

$("subjects-refresh").addEventListener("click", () => loadSubjects(true));
$("subjects-more").addEventListener("click", () => loadSubjects(false));
$("subjects-filter").addEventListener("change", () => loadSubjects(true));

// -- clusters ------------------------------------------------------------------------------------------------
// The server keeps the clustering; every correction answers the new one, which is re-rendered as it comes.
const clusterState = { data: null, selected: [], face: null };
const THUMB_PREFIX = "data:image/jpeg;base64,";

function faceImage(face) {
  const img = document.createElement("img");
  // Only the server's own JPEG data URIs are shown (the CSP allows data: images); anything else is skipped.
  if (typeof face.thumbnail === "string" && face.thumbnail.startsWith(THUMB_PREFIX)) img.src = face.thumbnail;
  img.alt = String(face.photo || "face");
  img.title = `${face.photo || ""} · ${face.id}`;
  img.dataset.face = face.id;
  img.classList.toggle("selected", clusterState.face === face.id);
  img.addEventListener("click", (event) => {
    event.stopPropagation();
    clusterState.face = clusterState.face === face.id ? null : face.id;
    renderClusters();
  });
  return img;
}

function clusterOf(faceId) {
  for (const c of clusterState.data.clusters) if (c.faces.some((f) => f.id === faceId)) return c.id;
  return null;
}

function renderClusters() {
  const data = clusterState.data;
  const list = $("clusters-list");
  list.replaceChildren();
  $("clusters-actions").hidden = !data;
  if (!data) return;
  const ids = new Set(data.clusters.map((c) => c.id));
  clusterState.selected = clusterState.selected.filter((id) => ids.has(id));
  const allFaces = [...data.clusters.flatMap((c) => c.faces), ...data.outliers].map((f) => f.id);
  if (!allFaces.includes(clusterState.face)) clusterState.face = null;
  $("clusters-summary").textContent =
    `${data.photos} photo(s), ${data.faces} face(s): ${data.clusters.length} cluster(s), ` +
    `${data.outliers.length} unclustered · threshold ${data.threshold} (${data.rule}) · ${data.model}`;
  for (const c of data.clusters) {  // largest first, as the server orders them
    const box = el("div", null, "cluster");
    box.classList.toggle("selected", clusterState.selected.includes(c.id));
    const title = el("h3", `Cluster ${c.id} · ${c.size} face(s) · cohesion ${Number(c.cohesion).toFixed(3)}`);
    title.addEventListener("click", () => {
      const at = clusterState.selected.indexOf(c.id);
      if (at >= 0) clusterState.selected.splice(at, 1);
      else clusterState.selected = [...clusterState.selected, c.id].slice(-2);
      renderClusters();
    });
    const grid = el("div", null, "faces");
    for (const f of c.faces) grid.append(faceImage(f));
    box.append(title, grid);
    list.append(box);
  }
  if (data.outliers.length) {
    const box = el("div", null, "cluster");
    const grid = el("div", null, "faces");
    for (const f of data.outliers) grid.append(faceImage(f));
    box.append(el("h3", `Unclustered · ${data.outliers.length} face(s)`), grid);
    list.append(box);
  }
  const sel = clusterState.selected;
  const faceCluster = clusterState.face ? clusterOf(clusterState.face) : null;
  $("clusters-selection").textContent =
    `selected: ${sel.length ? sel.map((id) => `cluster ${id}`).join(" + ") : "no cluster (click a title)"}` +
    `${clusterState.face ? " · 1 face" : " · no face (click a thumbnail)"}`;
  $("clusters-merge").disabled = sel.length !== 2;
  $("clusters-move").disabled = !(clusterState.face && sel.length === 1 && sel[0] !== faceCluster);
  $("clusters-not").disabled = !(clusterState.face && faceCluster !== null);
  $("clusters-name-run").disabled = sel.length !== 1;
}

async function clusterAction(action, body) {
  showError(null);
  try {
    clusterState.data = await api(`/v1/clusters/${encodeURIComponent(clusterState.data.id)}/${action}`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    clusterState.face = null;
    clusterState.selected = [];
    renderClusters();
  } catch (error) {
    showError(error);
  }
}

$("clusters-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  showError(null);
  const form = new FormData();
  for (const file of $("clusters-files").files) form.append("image", file, file.name);
  addNumber(form, "threshold", $("clusters-threshold"));
  addNumber(form, "fmr", $("clusters-fmr"));
  addNumber(form, "min_faces", $("clusters-min"));
  $("clusters-run").disabled = true;
  $("clusters-summary").textContent = "clustering…";
  try {
    clusterState.data = await api("/v1/clusters", { method: "POST", body: form });
    clusterState.selected = [];
    clusterState.face = null;
    $("clusters-named").replaceChildren();
  } catch (error) {
    clusterState.data = null;
    $("clusters-summary").textContent = "";
    showError(error);
  } finally {
    $("clusters-run").disabled = false;
    renderClusters();
  }
});

$("clusters-merge").addEventListener("click", () => {
  const [a, b] = clusterState.selected;
  clusterAction("merge", { a, b });
});
$("clusters-move").addEventListener("click", () => {
  clusterAction("move", { face: clusterState.face, cluster: clusterState.selected[0] });
});
$("clusters-not").addEventListener("click", () => {
  clusterAction("not-this-person", { face: clusterState.face, cluster: clusterOf(clusterState.face) });
});
$("clusters-name-run").addEventListener("click", async () => {
  const subject = $("clusters-name").value.trim();
  if (!subject) {
    showError("enter the subject's name first");
    return;
  }
  showError(null);
  const cluster = clusterState.selected[0];
  const list = $("clusters-named");
  try {
    const report = await api(`/v1/clusters/${encodeURIComponent(clusterState.data.id)}/name`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ cluster, subject }),
    });
    list.append(el("li", `cluster ${cluster} → ${report.subject}: ${report.accepted} photo(s) enrolled, ${report.rejected} rejected`, "match"));
    for (const o of report.images.filter((i) => !i.accepted)) list.append(el("li", `${o.image}: ${o.reasons.join("; ")}`, "muted"));
  } catch (error) {
    showError(error);
    for (const o of (error.body && error.body.images) || []) list.append(el("li", `${o.image}: ${o.reasons.join("; ")}`, "muted"));
  }
});

// -- audit ---------------------------------------------------------------------------------------------------
async function loadAudit() {
  showError(null);
  try {
    const page = await api("/v1/audit?limit=50");
    const body = $("audit-body");
    body.replaceChildren();
    for (const e of page.items) {
      const row = el("tr");
      row.append(
        el("td", (e.at || "").slice(0, 19).replace("T", " ")),
        el("td", e.action),
        el("td", e.status),
        el("td", e.key_id || "-"),
        el("td", (e.subject_ids || []).join(", ") || "-", "id"),
        el("td", (e.scores || []).map((s) => s.toFixed(3)).join(", ") || "-"),
        el("td", e.decision || "-"),
      );
      body.append(row);
    }
  } catch (error) {
    showError(error);
  }
}

$("audit-refresh").addEventListener("click", loadAudit);

// -- drift ---------------------------------------------------------------------------------------------------
// GET /v1/drift: per collection and source, a sentence saying what moved and a row per feature.
async function loadDrift() {
  showError(null);
  const list = $("drift-list");
  list.dataset.done = "0";
  try {
    const report = await api("/v1/drift");
    list.replaceChildren();
    if (!report.items.length) list.append(el("p", "No faces recorded yet.", "hint"));
    for (const item of report.items) {
      const block = el("div", null, "drift");
      block.append(el("h3", `${item.collection} · ${item.source}`), el("p", item.summary, "drift-summary"));
      const table = el("table");
      const head = el("tr");
      for (const h of ["Feature", "Baseline median", "Current median", "PSI", "KS p-value", "Faces (base / now)", ""]) {
        head.append(el("th", h));
      }
      table.append(el("thead"), el("tbody"));
      table.tHead.append(head);
      for (const f of item.features) {
        const row = el("tr", null, f.drifted ? "unknown" : "");
        row.append(
          el("td", f.feature),
          el("td", f.baseline_median),
          el("td", f.current_median),
          el("td", f.psi),
          el("td", f.ks_pvalue),
          el("td", `${f.baseline_n} / ${f.current_n}`),
          el("td", f.drifted ? "drifted" : ""),
        );
        table.tBodies[0].append(row);
      }
      block.append(table);
      list.append(block);
    }
    list.dataset.done = "1";
  } catch (error) {
    showError(error);
  }
}

$("drift-refresh").addEventListener("click", loadDrift);

// -- videos --------------------------------------------------------------------------------------------------
// The clip is uploaded as a job; its progress is polled; once done the local file plays (it never comes back
// from the server) above a timeline of its tracks: one bar per track from its first to its last frame.
const videoState = { url: null, fps: 25, frames: 0 };

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function trackLabel(track) {
  const who = track.subject || "unknown";
  const score = track.score === null || track.score === undefined ? "" : ` ${Number(track.score).toFixed(3)}`;
  return `#${track.track_id} ${who}${score}`;
}

function renderTimeline(job) {
  const tracks = (job.summary && job.summary.tracks) || [];
  const timeline = $("videos-timeline");
  const list = $("videos-tracks");
  timeline.replaceChildren();
  list.replaceChildren();
  videoState.fps = job.fps || 25;
  videoState.frames = Math.max(job.frame_count || 0, job.frames_done || 0, 1);
  const playhead = el("div", null, "playhead");
  playhead.id = "videos-playhead";
  for (const track of tracks) {
    const lane = el("div", null, "lane");
    const bar = el("div", trackLabel(track), track.subject ? "bar named" : "bar");
    bar.dataset.track = String(track.track_id);
    bar.dataset.start = String(track.first_frame / videoState.fps);
    bar.title = `${trackLabel(track)} · frames ${track.first_frame}–${track.last_frame}`;
    bar.style.left = `${(100 * track.first_frame) / videoState.frames}%`;
    bar.style.width = `${(100 * (track.last_frame - track.first_frame + 1)) / videoState.frames}%`;
    bar.addEventListener("click", () => {
      const player = $("videos-player");
      player.currentTime = Number(bar.dataset.start);
      player.play().catch(() => {});
    });
    lane.append(bar);
    timeline.append(lane);
    const item = el("li");
    item.append(el("span", track.subject || "unknown", track.subject ? "match" : "unknown"));
    const seconds = `${(track.first_frame / videoState.fps).toFixed(1)}–${(track.last_frame / videoState.fps).toFixed(1)} s`;
    item.append(el("span", ` · track #${track.track_id} · ${seconds} · ${track.evidence_frames} good frame(s)` +
      (track.score === null ? "" : ` · score ${Number(track.score).toFixed(3)}`), "muted"));
    list.append(item);
  }
  timeline.append(playhead);
  timeline.hidden = false;
  list.dataset.done = "1";
}

$("videos-player").addEventListener("timeupdate", () => {
  const playhead = $("videos-playhead");
  const player = $("videos-player");
  if (!playhead || !player.duration) return;
  playhead.style.left = `${(100 * player.currentTime) / player.duration}%`;
});

$("videos-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  showError(null);
  const file = $("videos-file").files[0];
  if (!file) return;
  const form = new FormData();
  form.append("video", file);
  addNumber(form, "every", $("videos-every"));
  addNumber(form, "threshold", $("videos-threshold"));
  const list = $("videos-tracks");
  list.replaceChildren();
  delete list.dataset.done;
  $("videos-timeline").hidden = true;
  const bar = $("videos-progress");
  bar.hidden = false;
  bar.value = 0;
  $("videos-run").disabled = true;
  try {
    let job = await api("/v1/videos", { method: "POST", body: form });
    while (job.status === "queued" || job.status === "running") {
      bar.value = job.progress;
      $("videos-status").textContent = `${job.status} · frame ${job.frames_done}${job.frame_count ? ` of ${job.frame_count}` : ""}`;
      await sleep(500);
      job = await api(`/v1/videos/${encodeURIComponent(job.id)}`);
    }
    if (job.status !== "done") throw new Error(`the job failed: ${job.error || "unknown error"}`);
    bar.value = 1;
    const named = job.summary.tracks.filter((t) => t.subject).length;
    $("videos-status").textContent = `done in ${Number(job.seconds).toFixed(1)} s · ${job.summary.tracks.length} track(s), ${named} named`;
    if (videoState.url) URL.revokeObjectURL(videoState.url);
    videoState.url = URL.createObjectURL(file);
    const player = $("videos-player");
    player.src = videoState.url;
    player.hidden = false;
    renderTimeline(job);
  } catch (error) {
    $("videos-status").textContent = "";
    showError(error);
  } finally {
    $("videos-run").disabled = false;
  }
});

refreshStatus();
