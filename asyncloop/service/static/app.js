// The service's page: lists the jobs (polling GET /api/jobs), draws each job's loss curve from its event stream
// (GET /api/jobs/<id>/events, server-sent events), submits and cancels jobs. Plain JS, nothing from the network.
"use strict";

const FINAL = new Set(["completed", "stopped", "cancelled", "failed"]);
const POLL_MS = 1000;
const views = new Map();  // job id -> {el, job, train: [[step, loss]], valid: [[step, loss]], source, dirty}

function $(selector, root = document) { return root.querySelector(selector); }

async function api(method, path, body) {
  const options = { method, headers: {} };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  const data = await response.json();
  if (!response.ok) throw new Error(data.error || `${response.status} ${response.statusText}`);
  return data;
}

function fmt(value, digits = 4) {
  return typeof value === "number" ? value.toPrecision(digits) : "–";
}

function viewFor(job) {
  let view = views.get(job.id);
  if (view) return view;
  const el = $("#job-template").content.firstElementChild.cloneNode(true);
  el.dataset.jobId = job.id;
  $(".job-id", el).textContent = job.id;
  $(".job-name", el).textContent = job.spec.name;
  const s = job.spec;
  $(".job-spec", el).textContent =
    `${s.dataset} · ${s.layers}×${s.hidden} MLP · ${s.epochs} epochs · lr ${s.lr} · batch ${s.batch_size} · ${s.runner} runner`;
  $(".cancel", el).addEventListener("click", () => cancelJob(job.id));
  $("#jobs").prepend(el);  // newest first
  view = { el, job, train: [], valid: [], source: null, dirty: true };
  views.set(job.id, view);
  return view;
}

function update(job) {
  const view = viewFor(job);
  view.job = job;
  const el = view.el;
  el.dataset.state = job.state;
  const state = $(".state", el);
  state.textContent = job.state;
  state.className = `state ${job.state}`;
  const p = job.progress;
  $(".progress", el).textContent = `epoch ${p.epochs}/${p.epochs_total} · step ${p.steps}` +
    (p.steps_total ? `/${p.steps_total}` : "");
  $(".cancel", el).disabled = FINAL.has(job.state);
  const latest = job.latest || {};
  const accuracy = latest["Epoch/ValidationPhase/Metrics/Accuracy"];
  let foot = `train loss ${fmt(latest["Step/TrainingPhase/Metrics/Loss"])}` +
    ` · validation loss ${fmt(latest["Epoch/ValidationPhase/Metrics/Loss"])}` +
    ` · validation accuracy ${fmt(accuracy, 3)}`;
  if (job.error) foot += ` · error: ${job.error}`;
  $(".job-foot", el).textContent = foot;
  if (job.state !== "queued" && !view.source && !view.ended) follow(view);
}

function follow(view) {
  // One stream per job; it replays the job's records from the start, then goes live. EventSource reconnects by
  // itself after a network error, sending Last-Event-ID, so the server resumes where it stopped.
  const source = new EventSource(`/api/jobs/${encodeURIComponent(view.job.id)}/events`);
  view.source = source;
  source.addEventListener("record", (message) => {
    const record = JSON.parse(message.data);
    if (record.kind !== "value" || record.name !== "Loss" || typeof record.value !== "number") return;
    const tag = record.group.join("/");
    if (tag === "Step/TrainingPhase/Metrics") view.train.push([record.index, record.value]);
    else if (tag === "Epoch/ValidationPhase/Metrics") view.valid.push([record.index, record.value]);
    else return;
    view.dirty = true;
  });
  source.addEventListener("end", (message) => {
    source.close();
    view.ended = true;
    update(JSON.parse(message.data));
  });
}

function draw(view) {
  const canvas = $("canvas.curve", view.el);
  const ctx = canvas.getContext("2d");
  const W = canvas.width, H = canvas.height, L = 52, R = 12, T = 14, B = 24;
  ctx.clearRect(0, 0, W, H);
  const train = view.train;
  // validation losses are per epoch: place each at the training step that ended its epoch
  const perEpoch = view.job.progress.steps_total ? view.job.progress.steps_total / view.job.progress.epochs_total : 1;
  const valid = view.valid.map(([epoch, loss]) => [epoch * perEpoch, loss]);
  const points = train.concat(valid);
  canvas.dataset.points = String(points.length);
  canvas.dataset.trainPoints = String(train.length);
  canvas.dataset.validPoints = String(valid.length);
  ctx.font = "11px sans-serif";
  ctx.fillStyle = "#666";
  if (points.length === 0) {
    ctx.fillText("waiting for the first step…", L, H / 2);
    return;
  }
  // the x axis grows with the run (a long job's curve would be a sliver on its full length), by whole epochs
  const seen = Math.max(1, ...points.map((p) => p[0]));
  const xmax = Math.min(Math.ceil(seen / perEpoch) * perEpoch, view.job.progress.steps_total || Infinity) || seen;
  let ymin = Math.min(...points.map((p) => p[1])), ymax = Math.max(...points.map((p) => p[1]));
  if (ymax - ymin < 1e-9) { ymax += 0.5; ymin -= 0.5; }
  const x = (v) => L + (W - L - R) * v / xmax;
  const y = (v) => T + (H - T - B) * (1 - (v - ymin) / (ymax - ymin));
  ctx.strokeStyle = "#bbb";
  ctx.beginPath(); ctx.moveTo(L, T); ctx.lineTo(L, H - B); ctx.lineTo(W - R, H - B); ctx.stroke();
  ctx.textAlign = "right";
  ctx.fillText(fmt(ymax, 3), L - 4, T + 8);
  ctx.fillText(fmt(ymin, 3), L - 4, H - B);
  ctx.textAlign = "center";
  ctx.fillText(`training step (axis to ${xmax})`, (L + W - R) / 2, H - 6);
  ctx.strokeStyle = "#1565c0";
  ctx.lineWidth = 1.2;
  ctx.beginPath();
  train.forEach(([s, v], i) => (i ? ctx.lineTo(x(s), y(v)) : ctx.moveTo(x(s), y(v))));
  ctx.stroke();
  ctx.fillStyle = "#ef6c00";
  for (const [s, v] of valid) { ctx.beginPath(); ctx.arc(x(s), y(v), 3.5, 0, 2 * Math.PI); ctx.fill(); }
  ctx.textAlign = "left";
  ctx.fillStyle = "#1565c0"; ctx.fillText("— training loss (per step)", L + 8, T + 8);
  ctx.fillStyle = "#ef6c00"; ctx.fillText("● validation loss (per epoch)", L + 170, T + 8);
}

function frame() {
  for (const view of views.values()) {
    if (view.dirty) { view.dirty = false; draw(view); }
  }
  requestAnimationFrame(frame);
}

async function poll() {
  const health = $("#health");
  try {
    const { jobs } = await api("GET", "/api/jobs");
    for (const job of jobs) update(job);
    $("#no-jobs").hidden = jobs.length > 0;
    $("#job-count").textContent = jobs.length ? `(${jobs.length})` : "";
    const h = await api("GET", "/api/health");
    health.textContent = `healthy · ${h.jobs.running} running · ${h.jobs.queued} queued`;
    health.className = "health ok";
  } catch (error) {
    health.textContent = `unreachable: ${error.message}`;
    health.className = "health down";
  }
  setTimeout(poll, POLL_MS);
}

async function cancelJob(id) {
  try {
    const { job } = await api("POST", `/api/jobs/${encodeURIComponent(id)}/cancel`);
    update(job);
  } catch (error) {
    $("#form-error").textContent = error.message;
  }
}

$("#submit-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = new FormData(event.target);
  const spec = {};
  for (const [key, value] of form.entries()) {
    if (key === "name") { if (value) spec.name = value; }
    else if (key === "dataset" || key === "runner") spec[key] = value;
    else spec[key] = Number(value);
  }
  $("#form-error").textContent = "";
  try {
    const { job } = await api("POST", "/api/jobs", spec);
    update(job);
    $("#no-jobs").hidden = true;
  } catch (error) {
    $("#form-error").textContent = error.message;
  }
});

poll();
requestAnimationFrame(frame);
