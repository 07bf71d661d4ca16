// SpineNode's page: upload and segment (POST /api/segment), and the node's recent DICOM jobs (GET /api/jobs).
// Plain JavaScript, no build step, nothing loaded from elsewhere.
"use strict";

const COBB_NAMES = ["Cobb angle, main curve", "Cobb angle, second curve", "Cobb angle, third curve"];
const REFRESH_MS = 5000;
const CLASS_ORDER = ["V", "T1", "Spine"];

const $ = (id) => document.getElementById(id);
const state = { models: [], busy: false, lastJobs: "" };

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (value !== undefined && value !== null) node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function fmt(value, digits = 2) {
  if (value === null || value === undefined) return "n/a";
  return typeof value === "number" ? value.toFixed(digits) : String(value);
}

// the challenge writes "no curve" as 0 degrees with one vertebra (T1 or L5) as both end vertebrae
function endVertebrae(curve) {
  return curve.upper === curve.lower ? "no curve" : `${curve.upper}–${curve.lower}`;
}

async function getJSON(url) {
  const response = await fetch(url, { headers: { Accept: "application/json" } });
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return response.json();
}

// --- health ---------------------------------------------------------------------------------------
async function refreshHealth() {
  try {
    const h = await getJSON("/api/health");
    const badge = $("health");
    badge.textContent = `${h.status} · ${h.dicom.ae_title}:${h.dicom.port}` + (h.dicom.accepting ? "" : " (not accepting)");
    badge.className = `badge ${h.status}`;
    const summary = $("node-summary");
    summary.replaceChildren(
      el("span", {}, "AE title ", el("b", {}, h.dicom.ae_title), ` port ${h.dicom.port}`),
      el("span", {}, "queue ", el("b", {}, `${h.queue.pending} pending, ${h.queue.running} running, ${h.queue.failed} failed`)),
      el("span", {}, "deliveries ", el("b", {}, `${h.deliveries.pending} pending, ${h.deliveries.failed} failed`)),
      el("span", {}, "models loaded ", el("b", {}, h.models.filter((m) => m.loaded).map((m) => m.name).join(", ") || "none")),
    );
  } catch (err) {
    $("health").textContent = "node unreachable";
    $("health").className = "badge degraded";
  }
}

// --- models ---------------------------------------------------------------------------------------
function selectedModel() {
  return state.models.find((m) => m.name === $("model").value);
}

function showModelWarning() {
  const model = selectedModel();
  $("model-warning").textContent = model ? model.disclaimer : "";
  $("model-warning").hidden = !(model && model.disclaimer);
}

async function loadModels() {
  state.models = await getJSON("/api/models");
  const select = $("model");
  select.replaceChildren(
    ...state.models.map((m) =>
      el("option", { value: m.name, selected: m.default ? "selected" : null },
        m.display_name ? `${m.name} — ${m.display_name}` : m.name),
    ),
  );
  showModelWarning();
}

// --- upload ---------------------------------------------------------------------------------------
function setStatus(text, error = false) {
  const status = $("status");
  status.textContent = text;
  status.className = error ? "status error" : "status";
}

function clearResult() {
  $("result").hidden = true;
  for (const id of ["original", "mask", "overlay"]) $(id).removeAttribute("src");
  $("metrics").querySelector("tbody").replaceChildren();
  $("downloads").replaceChildren();
  $("notes").textContent = "";
  $("file").value = "";
  setStatus("");
}

function showQuality(quality, measurements) {
  const q = $("quality");
  const reliable = !quality || quality.reliable;
  q.textContent = reliable
    ? ""
    : `No reliable segmentation was obtained: ${quality.reasons.join("; ")}. The mask is not a result.`;
  q.className = reliable ? "quality" : "quality unreliable";
  q.hidden = reliable;
  const rows = [];
  if (reliable && measurements) {
    measurements.cobb.forEach((c, i) =>
      rows.push(el("tr", { dataset: { measurement: `cobb-${i}` } },
        el("td", {}, COBB_NAMES[i] || `Cobb angle ${i + 1}`), el("td", {}, `${fmt(c.angle_deg, 1)}°`),
        el("td", {}, endVertebrae(c)))));
    if (measurements.t1_tilt_deg !== null) {
      rows.push(el("tr", { dataset: { measurement: "t1-tilt" } },
        el("td", { title: measurements.t1_tilt_convention }, "T1 tilt"),
        el("td", {}, `${fmt(measurements.t1_tilt_deg, 1)}°`), el("td", {}, "T1")));
    }
    for (const note of measurements.notes) rows.push(el("tr", {}, el("td", { colspan: 3 }, note)));
  }
  $("measurements").querySelector("tbody").replaceChildren(...rows);
  $("measurements").hidden = !rows.length;
}

function showResult(r) {
  $("result-model").textContent = `${r.model.display_name || r.model.name} (${r.model.name} ${r.model.version})`;
  $("result-warning").textContent = r.model.disclaimer || "";
  $("result-warning").hidden = !r.model.disclaimer;
  showQuality(r.quality, r.measurements);
  $("result-timing").textContent =
    `${r.input.kind.toUpperCase()} ${r.input.columns}×${r.input.rows} · inference ${fmt(r.timing_ms.inference, 0)} ms · total ${fmt(r.timing_ms.total, 0)} ms`;
  $("original").src = r.urls.original;
  $("mask").src = r.urls.mask;
  $("overlay").src = r.urls.overlay;
  const rows = CLASS_ORDER.filter((name) => r.classes[name]).map((name) => {
    const c = r.classes[name];
    const area = c.area_unit === "mm2" ? `${fmt(c.area, 0)} mm²` : `${fmt(c.area, 0)} px`;
    return el("tr", { class: `class-${name}`, dataset: { class: name } },
      el("td", {}, name === "Spine" ? "Spine (V ∪ T1)" : name),
      el("td", {}, c.pixels),
      el("td", {}, fmt(c.coverage_percent, 2)),
      el("td", {}, area),
      el("td", {}, fmt(c.mean_confidence, 3)),
      el("td", {}, fmt(c.flip_dice, 3)),
      el("td", {}, fmt(c.flip_jaccard, 3)),
    );
  });
  $("metrics").querySelector("tbody").replaceChildren(...rows);
  const links = [["metrics", "metrics JSON"], ["seg", "SEG"], ["sr", "SR"], ["sc", "overlay SC"]]
    .filter(([key]) => r.urls[key])
    .map(([key, label]) => el("a", { href: r.urls[key], download: "" }, label));
  $("downloads").replaceChildren(...(links.length ? ["Download: ", ...links] : []));
  $("notes").textContent = r.notes.length ? `Notes: ${r.notes.join("; ")}` : "";
  $("result").hidden = false;
}

async function upload(file) {
  if (!file || state.busy) return;
  state.busy = true;
  clearResult();
  setStatus(`Segmenting ${file.name} …`);
  const form = new FormData();
  form.append("file", file, file.name);
  form.append("model", $("model").value);
  try {
    const response = await fetch("/api/segment", { method: "POST", body: form });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail || body);
      setStatus(`${file.name}: ${detail} (HTTP ${response.status})`, true);
      return;
    }
    showResult(body);
    setStatus(`${file.name} segmented.`);
  } catch (err) {
    setStatus(`${file.name}: ${err.message}`, true);
  } finally {
    state.busy = false;
  }
}

function setUpUpload() {
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files.length) upload(e.dataTransfer.files[0]);
  });
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") $("file").click(); });
  $("file").addEventListener("change", () => upload($("file").files[0]));
  $("clear").addEventListener("click", clearResult);
  $("model").addEventListener("change", showModelWarning);
}

// --- node tab -------------------------------------------------------------------------------------
function deliveryCell(job) {
  if (!job.outputs.length) return job.error ? el("span", { class: "delivery-failed" }, job.error) : "—";
  const list = el("div");
  for (const o of job.outputs) {
    const parts = o.deliveries.length
      ? o.deliveries.map((d) => {
          const detail = d.state === "delivered" ? "" : ` (${d.attempts} attempt${d.attempts === 1 ? "" : "s"}${d.last_error ? ": " + d.last_error : ""})`;
          return el("span", { class: `delivery-${d.state}` }, `${d.state} to ${d.destination}${detail}`);
        })
      : [el("span", {}, "kept in the data directory")];
    const line = el("div", {}, el("b", {}, o.kind.toUpperCase() + " "));
    parts.forEach((p, i) => line.append(...(i ? [", ", p] : [p])));
    if (o.pruned_at) line.append(el("span", { class: "pruned" }, ` — file deleted by retention ${o.pruned_at.replace("T", " ").replace(/\.\d+Z$/, "Z")}`));
    list.append(line);
  }
  return list;
}

function jobRow(job) {
  const model = state.models.find((m) => m.name === job.model);
  const quality = job.metrics && job.metrics.quality;
  const cobb = job.metrics && job.metrics.measurements ? job.metrics.measurements.cobb : [];
  const pruned = job.outputs.some((o) => o.pruned_at);
  const thumb = job.urls.thumbnail
    ? el("a", { href: job.urls.sc || job.urls.thumbnail }, el("img", { src: job.urls.thumbnail, alt: `overlay of job ${job.id}`, loading: "lazy" }))
    : pruned ? el("span", { class: "pruned" }, "pruned (retention)") : "—";
  return el("tr", { dataset: { job: job.id } },
    el("td", {}, job.id),
    el("td", {}, (job.received_at || "").replace("T", " ").replace(/\.\d+Z$/, "Z")),
    el("td", { class: `state-${job.state}` }, job.state),
    el("td", {}, job.model, model ? el("div", { class: "warning" }, model.disclaimer) : null,
      quality && !quality.reliable ? el("div", { class: "quality unreliable" }, "no reliable segmentation") : null,
      cobb.length ? el("div", {}, `Cobb ${cobb.map((c) => `${fmt(c.angle_deg, 0)}° ${endVertebrae(c)}`).join(", ")}`) : null),
    el("td", {}, job.inference_ms ? `${fmt(job.inference_ms, 0)} ms` : "—"),
    el("td", {}, thumb),
    el("td", {}, deliveryCell(job)),
  );
}

async function refreshJobs() {
  try {
    const { jobs } = await getJSON("/api/jobs?limit=25");
    const key = JSON.stringify(jobs);
    if (key === state.lastJobs) return;  // unchanged: keep the table (and its images) as it is
    state.lastJobs = key;
    const rows = jobs.length ? jobs.map(jobRow) : [el("tr", {}, el("td", { colspan: 7 }, "No DICOM jobs yet."))];
    $("jobs").querySelector("tbody").replaceChildren(...rows);
  } catch (err) {
    // the health badge says when the node is unreachable
  }
}

function setUpTabs() {
  for (const tab of document.querySelectorAll(".tab")) {
    tab.addEventListener("click", () => {
      for (const other of document.querySelectorAll(".tab")) {
        const active = other === tab;
        other.classList.toggle("active", active);
        other.setAttribute("aria-selected", String(active));
        $(other.dataset.panel).hidden = !active;
      }
      if (tab.id === "tab-node") refreshJobs();
    });
  }
}

async function main() {
  setUpTabs();
  setUpUpload();
  refreshHealth();
  try {
    await loadModels();  // before the jobs: their rows label the demo models
  } catch (err) {
    setStatus(`could not list the models: ${err.message}`, true);
  }
  refreshJobs();
  setInterval(() => {
    if (document.hidden) return;  // a background tab does not poll the node
    refreshHealth();
    if (!$("panel-node").hidden) refreshJobs();
  }, REFRESH_MS);
}

main();
