// diffuse explore: the forward process in the browser. The schedules repeat
// src/core/schedule.rs operation for operation (f64 both sides), so the page's alpha_bar
// equals `diffuse schedule`'s; the image and the noise come embedded from the Rust side.
"use strict";

const DATA = JSON.parse(document.getElementById("data").textContent);

// diffusers' default (beta_start, beta_end); cosine ignores them (betas capped at 0.999).
const DEFAULT_RANGE = { "scaled-linear": [0.00085, 0.012] };
const RANGE = [1e-4, 0.02];
const MAX_BETA = 0.999;

// numpy/torch-style linspace, both ends included (schedule.rs `linspace`).
function linspace(start, end, n) {
  if (n === 0) return [];
  if (n === 1) return [start];
  const step = (end - start) / (n - 1);
  const v = [];
  for (let i = 0; i < n; i++) v.push(start + step * i);
  v[n - 1] = end;
  return v;
}

function makeBetas(kind, T, start, end) {
  switch (kind) {
    case "linear":
      return linspace(start, end, T);
    case "scaled-linear":
      return linspace(Math.sqrt(start), Math.sqrt(end), T).map((b) => b * b);
    case "cosine": {
      const f = (u) => {
        const c = Math.cos(((u + 0.008) / 1.008) * (Math.PI / 2));
        return c * c;
      };
      const out = [];
      for (let i = 0; i < T; i++) {
        const t1 = i / T;
        const t2 = (i + 1) / T;
        out.push(Math.min(1 - f(t2) / f(t1), MAX_BETA));
      }
      return out;
    }
    case "sigmoid":
      return linspace(-6, 6, T).map((x) => (1 / (1 + Math.exp(-x))) * (end - start) + start);
    case "quadratic": {
      const out = [];
      for (let i = 0; i < T; i++) {
        const u = (i + 1) / T;
        out.push(start + (end - start) * u * u);
      }
      return out;
    }
  }
  throw new Error("unknown schedule " + kind);
}

// Lin et al. 2023, Algorithm 1 (schedule.rs `rescale_zero_terminal_snr`).
function rescaleZeroSnr(betas) {
  let acc = 1;
  const s = betas.map((b) => {
    acc *= 1 - b;
    return Math.sqrt(acc);
  });
  const first = s[0];
  const last = s[s.length - 1];
  const ab = s.map((x) => {
    const r = ((x - last) * first) / (first - last);
    return r * r;
  });
  const out = [1 - ab[0]];
  for (let i = 1; i < ab.length; i++) out.push(1 - ab[i] / ab[i - 1]);
  return out;
}

// The schedule for a configuration, or an error message (the checks of schedule.rs).
function schedule(cfg) {
  const { kind, T, start, end, zeroSnr } = cfg;
  if (!Number.isInteger(T) || T < 2 || T > 100000) return { error: "T must be a whole number in [2, 100000]" };
  if (kind !== "cosine") {
    if (!(start > 0 && start < 1 && end > 0 && end < 1))
      return { error: "beta_start and beta_end must both lie in (0, 1)" };
    if (end <= start) return { error: "beta_end must be greater than beta_start" };
  }
  let betas = makeBetas(kind, T, start, end);
  if (zeroSnr) betas = rescaleZeroSnr(betas);
  let acc = 1;
  const alphaBar = betas.map((b) => (acc *= 1 - b));
  return { betas, alphaBar };
}

const $ = (id) => document.getElementById(id);
const state = { table: null, t: 500, xt: null };

function config() {
  return {
    kind: $("schedule").value,
    T: Number($("T").value),
    start: Number($("beta-start").value),
    end: Number($("beta-end").value),
    zeroSnr: $("zero-snr").checked,
  };
}

// Float32 little-endian base64 -> Float64Array.
function floats(b64) {
  const bin = atob(b64);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return Float64Array.from(new Float32Array(bytes.buffer));
}

const IMG = { c: DATA.c, h: DATA.h, w: DATA.w, x0: floats(DATA.x0), eps: floats(DATA.eps) };

// [-1, 1] to a grey level as the Rust side writes PNGs (imageio::tensor_to_rgb).
const level = (x) => Math.round((Math.min(Math.max(x, -1), 1) + 1) * 127.5);

function paint(canvas, values) {
  const { c, h, w } = IMG;
  canvas.width = w;
  canvas.height = h;
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(w, h);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const p = (y * w + x) * 4;
      for (let k = 0; k < 3; k++) img.data[p + k] = level(values[Math.min(k, c - 1) * h * w + y * w + x]);
      img.data[p + 3] = 255;
    }
  }
  ctx.putImageData(img, 0, 0);
}

function plot(canvas, series, t, yRange) {
  const ctx = canvas.getContext("2d");
  const { width: W, height: H } = canvas;
  const pad = 30;
  ctx.clearRect(0, 0, W, H);
  ctx.strokeStyle = "#ccc";
  ctx.strokeRect(pad, 8, W - pad - 8, H - pad - 8);
  const n = series[0].values.length;
  const [lo, hi] = yRange;
  const X = (i) => pad + ((W - pad - 8) * i) / Math.max(n - 1, 1);
  const Y = (v) => 8 + (H - pad - 16) * (1 - (v - lo) / (hi - lo || 1));
  ctx.fillStyle = "#555";
  ctx.font = "11px sans-serif";
  ctx.fillText(hi.toPrecision(3), 2, 16);
  ctx.fillText(lo.toPrecision(3), 2, H - pad);
  ctx.fillText("t = 0", pad, H - 10);
  ctx.fillText("T-1", W - 30, H - 10);
  for (const s of series) {
    ctx.strokeStyle = s.color;
    ctx.lineWidth = 2;
    ctx.beginPath();
    s.values.forEach((v, i) => {
      const y = Y(Math.min(Math.max(v, lo), hi));
      if (i === 0) ctx.moveTo(X(i), y);
      else ctx.lineTo(X(i), y);
    });
    ctx.stroke();
  }
  ctx.strokeStyle = "#000";
  ctx.lineWidth = 1;
  ctx.beginPath();
  ctx.moveTo(X(t), 8);
  ctx.lineTo(X(t), H - pad);
  ctx.stroke();
}

const fmt = (v) => (Number.isFinite(v) ? (Math.abs(v) >= 1e-3 && Math.abs(v) < 1e4 ? v.toFixed(6) : v.toExponential(4)) : String(v));

function show(id, v) {
  $(id).textContent = fmt(v);
  $(id).dataset.value = String(v); // full precision, for tests and copy-paste
}

// Everything that depends on t.
function updateT() {
  const { betas, alphaBar } = state.table;
  const t = Math.min(Number($("t").value), betas.length - 1);
  state.t = t;
  $("t-value").textContent = t;
  const ab = alphaBar[t];
  const a = Math.sqrt(ab);
  const b = Math.sqrt(1 - ab);
  const snr = ab / (1 - ab);
  show("v-beta", betas[t]);
  show("v-ab", ab);
  show("v-sqrt-ab", a);
  show("v-sqrt-1m", b);
  show("v-snr", snr);
  show("v-log-snr", Math.log(snr));
  $("formula").textContent = `x_${t} = ${a.toFixed(4)} · x0 + ${b.toFixed(4)} · ε`;
  const xt = new Float64Array(IMG.x0.length);
  for (let i = 0; i < xt.length; i++) xt[i] = a * IMG.x0[i] + b * IMG.eps[i];
  state.xt = xt;
  paint($("xt"), xt);
  $("xt-caption").textContent = `x_${t}`;
  const maxBeta = Math.max(...betas);
  plot($("curves"), [
    { values: alphaBar, color: "#1f77b4" },
    { values: alphaBar.map(Math.sqrt), color: "#ff7f0e" },
    { values: alphaBar.map((x) => Math.sqrt(1 - x)), color: "#2ca02c" },
    { values: betas.map((x) => x / maxBeta), color: "#d62728" },
  ], t, [0, 1]);
  const logSnr = alphaBar.map((x) => Math.log(x / (1 - x)));
  const finite = logSnr.filter(Number.isFinite);
  plot($("logsnr"), [{ values: logSnr, color: "#1f77b4" }], t, [Math.min(...finite), Math.max(...finite)]);
}

// Everything that depends on the schedule's parameters.
function updateSchedule() {
  const cfg = config();
  const cosine = cfg.kind === "cosine";
  $("beta-start").disabled = cosine;
  $("beta-end").disabled = cosine;
  const table = schedule(cfg);
  $("error").hidden = !table.error;
  if (table.error) {
    $("error").textContent = table.error;
    return;
  }
  state.table = table;
  $("t").max = String(cfg.T - 1);
  updateT();
}

function setRange() {
  const [s, e] = DEFAULT_RANGE[$("schedule").value] || RANGE;
  $("beta-start").value = String(s);
  $("beta-end").value = String(e);
}

// The settings the page was written with.
const init = DATA.init;
$("schedule").value = init.schedule;
$("T").value = String(init.T);
$("beta-start").value = String(init.start);
$("beta-end").value = String(init.end);
$("zero-snr").checked = init.zeroSnr;
$("t").max = String(init.T - 1);
$("t").value = String(init.t);
$("seed").textContent = DATA.seed;
paint($("x0"), IMG.x0);
paint($("eps"), IMG.eps);
$("schedule").addEventListener("change", () => {
  setRange();
  updateSchedule();
});
for (const id of ["T", "beta-start", "beta-end", "zero-snr"]) $(id).addEventListener("change", updateSchedule);
$("t").addEventListener("input", updateT);
updateSchedule();

// For tests and the curious: the page's state and its schedule function.
window.explore = { state, schedule, updateSchedule, updateT };
