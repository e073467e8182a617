"""The report page's style sheet and script (kept as strings so the report is one file)."""

from __future__ import annotations

__all__ = ["APP_JS", "STYLE"]

STYLE = r"""
:root { --fg: #1d232b; --muted: #5b6675; --line: #e3e7ee; --accent: #2563eb; --bg: #f6f7f9; }
* { box-sizing: border-box; }
html { scroll-behavior: auto; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial,
  sans-serif; color: var(--fg); background: var(--bg); }
.layout { display: grid; grid-template-columns: 250px minmax(0, 1fr); }
nav#toc { position: sticky; top: 0; height: 100vh; overflow-y: auto; padding: 18px 14px 40px;
  border-right: 1px solid var(--line); background: #fff; font-size: 13px; }
nav#toc .brand { font-weight: 700; font-size: 16px; margin: 0 0 12px; }
nav#toc ul { list-style: none; margin: 0; padding: 0; }
nav#toc li { margin: 1px 0; }
nav#toc li.sub { padding-left: 12px; }
nav#toc a { color: var(--fg); text-decoration: none; display: block; padding: 2px 6px;
  border-radius: 4px; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
nav#toc a:hover { background: #eef2ff; color: var(--accent); }
nav#toc .kind { color: var(--muted); font-size: 11px; }
main { padding: 22px 30px 60px; max-width: 1140px; min-width: 0; }
h1 { font-size: 24px; margin: 0 0 6px; }
h2 { font-size: 19px; margin: 0 0 10px; }
h3 { font-size: 15px; margin: 16px 0 6px; color: #333; }
section.card { background: #fff; border: 1px solid var(--line); border-radius: 8px;
  padding: 16px 20px; margin: 0 0 22px; scroll-margin-top: 10px; }
.muted { color: var(--muted); }
.note { color: var(--muted); font-size: 13px; margin: 4px 0 10px; }
.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 18px; margin: 8px 0;
  font-size: 14px; }
.facts dt { color: var(--muted); }
.facts dd { margin: 0; }
.chips { display: flex; flex-wrap: wrap; gap: 6px; margin: 6px 0 10px; }
.chip { display: inline-block; padding: 1px 9px; border-radius: 11px; font-size: 12.5px;
  background: #eef2ff; color: #1e3a8a; }
.chip.warn { background: #fff4e5; color: #8a4b00; }
.chip.bad { background: #fde8e8; color: #9b1c1c; }
.chip.ok { background: #e7f6ec; color: #1e6b35; }
.status { font-weight: 600; }
.banner { padding: 8px 12px; border-radius: 6px; margin: 0 0 14px; font-size: 14px; }
.banner.live { background: #e8f1ff; border: 1px solid #b9d3ff; }
.banner.failed { background: #fde8e8; border: 1px solid #f5b5b5; }
.fig { width: 100%; position: relative; contain: strict; }
.scale-toggle { font-size: 13px; color: var(--muted); margin: 2px 0 0; }
.scale-toggle label { margin-left: 12px; cursor: pointer; color: var(--fg); }
details.more { margin: 6px 0 12px; }
figure.panel { margin: 6px 0 14px; max-width: 100%; }
.panel-img { position: relative; line-height: 0; }
.panel-img img { width: 100%; height: auto; display: block; image-rendering: pixelated; }
.panel-img .cell { position: absolute; }
.panel-img .cell[title]:hover { outline: 2px solid #ff2d2d; z-index: 1; }
.panel-img .cell.box { outline: 2px solid #ff2d2d; box-shadow: inset 0 0 0 1px #fff; }
.panel-img .cell.tag span { position: absolute; left: 1px; top: 1px; font: 10px/1.3 system-ui,
  sans-serif; background: rgba(255, 255, 255, 0.85); color: #222; padding: 0 3px;
  border-radius: 2px; }
figure.panel figcaption { font-size: 12px; line-height: 1.4; color: var(--muted);
  margin-top: 4px; }
.fig:not(.drawn)::before { content: "figure loads when scrolled into view"; position: absolute;
  top: 40%; width: 100%; text-align: center; color: #aab; font-size: 13px; }
.fig .fig-error { color: #9b1c1c; padding: 12px; }
.tablewrap { overflow-x: auto; }
table.grid { border-collapse: collapse; font-size: 12.5px; }
table.grid th, table.grid td { padding: 3px 9px; border-bottom: 1px solid var(--line);
  text-align: left; white-space: nowrap; }
table.grid th { background: #f3f5f8; position: sticky; top: 0; }
table.grid td.num { text-align: right; font-variant-numeric: tabular-nums; }
code, pre { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  font-size: 0.9em; }
pre { background: #f6f8fa; padding: 8px 10px; border-radius: 6px; overflow-x: auto;
  white-space: pre-wrap; }
details > summary { cursor: pointer; color: var(--accent); margin: 6px 0; }
.message { max-width: 760px; margin: 80px auto; background: #fff; border: 1px solid var(--line);
  border-radius: 8px; padding: 26px 30px; }
@media (max-width: 900px) {
  .layout { grid-template-columns: 1fr; }
  nav#toc { position: static; height: auto; border-right: 0; border-bottom: 1px solid var(--line); }
}
"""

APP_JS = r"""
(function () {
  "use strict";
  var CFG = JSON.parse(document.getElementById("cnnviz-config").textContent);
  var scrollKey = "cnnviz-scroll:" + location.pathname;
  var reloading = CFG.live && CFG.status === "running";
  // A writer that was killed (kill -9) leaves run.json "running": its heartbeat tells.
  function writerStopped() {
    if (typeof CFG.heartbeat !== "number") { return false; }
    return Date.now() / 1000 - CFG.heartbeat > CFG.stale_s;
  }
  function showStopped() {
    var banner = document.getElementById("live-banner");
    if (!banner) { return; }
    var when = new Date(CFG.heartbeat * 1000).toLocaleString();
    banner.className = "banner failed";
    banner.textContent = "The writer stopped responding (last heartbeat " + when +
      "): training was probably killed. This page no longer reloads.";
  }
  if (reloading && writerStopped()) { reloading = false; showStopped(); }
  if (reloading && "scrollRestoration" in history) { history.scrollRestoration = "manual"; }

  function bytesOf(text) {
    var bin = atob(text), n = bin.length, out = new Uint8Array(n);
    for (var i = 0; i < n; i++) { out[i] = bin.charCodeAt(i); }
    return out;
  }
  function reshape(flat, shape, offset) {
    if (shape.length <= 1) { return flat.slice(offset, offset + (shape[0] || flat.length)); }
    var inner = 1, out = [], rest = shape.slice(1);
    for (var k = 0; k < rest.length; k++) { inner *= rest[k]; }
    for (var i = 0; i < shape[0]; i++) { out.push(reshape(flat, rest, offset + i * inner)); }
    return out;
  }
  function inflate(bytes) {
    var stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
    return new Response(stream).arrayBuffer().then(function (buf) { return new Uint8Array(buf); });
  }
  function prefetch(v, jobs) {
    if (Array.isArray(v)) { v.forEach(function (x) { prefetch(x, jobs); }); return; }
    if (v && typeof v === "object") {
      if (v._q !== undefined && v.b !== undefined) {
        if (v.z) { jobs.push(inflate(bytesOf(v.b)).then(function (u) { v._bytes = u; })); }
        return;
      }
      Object.keys(v).forEach(function (k) { prefetch(v[k], jobs); });
    }
  }
  function dequantise(q) {
    var bytes = q._bytes || bytesOf(q.b);
    var codes = q._q === 16 ? new Uint16Array(bytes.buffer, 0, bytes.length >> 1) : bytes;
    var top = q._q === 16 ? 65535 : 255, step = (q.hi - q.lo) / (top - 1);
    var n = codes.length, flat = new Array(n);
    for (var i = 0; i < n; i++) { var c = codes[i]; flat[i] = c === top ? null : q.lo + c * step; }
    return reshape(flat, q.shape, 0);
  }
  function decode(v, shared) {
    if (Array.isArray(v)) { return v.map(function (x) { return decode(x, shared); }); }
    if (v && typeof v === "object") {
      if (v._q !== undefined && v.b !== undefined) { return dequantise(v); }
      var keys = Object.keys(v);
      if (keys.length === 1 && keys[0] === "_ref") { return shared[v._ref].slice(); }
      var o = {};
      for (var i = 0; i < keys.length; i++) { o[keys[i]] = decode(v[keys[i]], shared); }
      return o;
    }
    return v;
  }
  function stretch(z, width) {
    var out = z.map(function (row) { return Array.prototype.slice.call(row); });
    var cols = out.length ? out[0].length : 0;
    for (var x0 = 0; x0 < cols; x0 += width + 1) {
      var x1 = Math.min(x0 + width, cols), lo = Infinity, hi = -Infinity, r, x, v;
      for (r = 0; r < out.length; r++) {
        for (x = x0; x < x1; x++) {
          v = out[r][x];
          if (v !== null && isFinite(v)) { if (v < lo) { lo = v; } if (v > hi) { hi = v; } }
        }
      }
      var span = hi > lo ? hi - lo : 0;
      for (r = 0; r < out.length; r++) {
        for (x = x0; x < x1; x++) {
          v = out[r][x];
          if (v !== null && isFinite(v)) { out[r][x] = span ? (v - lo) / span : 0; }
        }
      }
    }
    return out;
  }
  function applyScale(el, mode) {
    var meta = el.layout && el.layout.meta && el.layout.meta.cnnviz_mosaic;
    if (!meta) { return Promise.resolve(); }
    if (!el._cnnvizLayer) {
      el._cnnvizLayer = el.data.map(function (t) { return {z: t.z, zmin: t.zmin, zmax: t.zmax}; });
    }
    var on = mode === "channel", orig = el._cnnvizLayer;
    return Plotly.restyle(el, {
      z: orig.map(function (o) { return on ? stretch(o.z, meta.width) : o.z; }),
      zmin: orig.map(function (o) { return on ? 0 : o.zmin; }),
      zmax: orig.map(function (o) { return on ? 1 : o.zmax; }),
      "colorbar.title.text": orig.map(function () { return on ? "stretched" : "activation"; })
    });
  }
  document.addEventListener("change", function (ev) {
    var input = ev.target, box = input.closest && input.closest(".scale-toggle");
    if (!box) { return; }
    var el = document.querySelector('.fig[data-fig="' + box.dataset.for + '"]');
    if (!el) { return; }
    el.dataset.scale = input.value;
    if (el.dataset.state === "drawn") { applyScale(el, input.value); }
  });
  function render(el) {
    if (el.dataset.state) { return el._cnnvizPromise || Promise.resolve(); }
    el.dataset.state = "drawing";
    var p = new Promise(function (resolve) {
      var spec = JSON.parse(document.getElementById(el.dataset.fig).textContent);
      var jobs = [];
      prefetch(spec, jobs);
      resolve(Promise.all(jobs).then(function () { return spec; }));
    }).then(function (spec) {
      var shared = spec._shared || [];
      var data = decode(spec.data, shared), layout = decode(spec.layout, shared);
      layout.template = CFG.template;
      layout.autosize = true;
      return Plotly.newPlot(el, data, layout, {
        responsive: true, displaylogo: false, scrollZoom: false,
        modeBarButtonsToRemove: ["select2d", "lasso2d", "autoScale2d"]
      });
    }).then(function () {
      return el.dataset.scale === "channel" ? applyScale(el, "channel") : null;
    }).then(function () { el.dataset.state = "drawn"; el.classList.add("drawn"); });
    p = p.catch(function (err) {
      el.dataset.state = "error";
      var box = document.createElement("div");
      box.className = "fig-error";
      box.textContent = "This figure could not be drawn: " +
        (err && err.message ? err.message : err);
      el.appendChild(box);
      console.error("cnnviz: figure " + el.dataset.fig + " failed:", err);
    });
    el._cnnvizPromise = p;
    return p;
  }
  function loadPlotly() {
    if (typeof Plotly !== "undefined") { return Promise.resolve(); }
    var packed = document.getElementById("cnnviz-plotly");
    if (!packed) {
      return Promise.reject(new Error("plotly.js did not load (offline with a CDN link?); " +
        "rebuild the report without --cdn"));
    }
    if (typeof DecompressionStream === "undefined") {
      return Promise.reject(new Error("this browser cannot unpack the embedded plotly.js " +
        "(it needs DecompressionStream: Chrome 80+, Firefox 113+, Safari 16.4+); " +
        "rebuild the report with --cdn"));
    }
    return inflate(bytesOf(packed.textContent.trim())).then(function (u) {
      var s = document.createElement("script");
      s.textContent = new TextDecoder().decode(u);
      document.head.appendChild(s);
      packed.textContent = "";
      if (typeof Plotly === "undefined") { throw new Error("plotly.js failed to initialise"); }
    });
  }
  var figures = Array.prototype.slice.call(document.querySelectorAll(".fig[data-fig]"));
  var ready = loadPlotly();
  window.cnnvizRender = function (el) { return ready.then(function () { return render(el); }); };
  window.cnnvizRenderAll = function () {
    return ready.then(function () { return Promise.all(figures.map(render)); });
  };
  ready.then(function () {
    if ("IntersectionObserver" in window) {
      var io = new IntersectionObserver(function (entries) {
        entries.forEach(function (en) {
          if (en.isIntersecting) { io.unobserve(en.target); render(en.target); }
        });
      }, { rootMargin: "600px 0px" });
      figures.forEach(function (el) { io.observe(el); });
    } else {
      figures.forEach(render);
    }
  }, function (err) {
    console.error("cnnviz: " + err.message);
    figures.forEach(function (el) {
      var box = document.createElement("div");
      box.className = "fig-error";
      box.textContent = "Figures cannot be drawn: " + err.message;
      el.appendChild(box);
    });
  });
  var saved = null;
  try {
    saved = sessionStorage.getItem(scrollKey);
    sessionStorage.removeItem(scrollKey);
  } catch (e) {}
  if (saved !== null) { window.scrollTo(0, parseFloat(saved) || 0); }
  if (reloading) {
    var pause = document.getElementById("live-pause");
    var tick = function () {
      if (writerStopped()) { showStopped(); return; }
      if (pause && pause.checked) { setTimeout(tick, CFG.reload_ms); return; }
      try { sessionStorage.setItem(scrollKey, String(window.scrollY)); } catch (e) {}
      location.reload();
    };
    setTimeout(tick, CFG.reload_ms);
  }
})();
"""
