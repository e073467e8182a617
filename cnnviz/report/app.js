/* cnnviz report: the page script (inlined into every page).
 *
 * Figures are embedded as compact JSON (JSON script blocks with ids "fig-N") and drawn
 * with Plotly when they come into view; figures inside a closed <details> (a layer group, a
 * secondary figure) are drawn when it is opened. Links to a layer open the group holding it.
 * The page makes no network request: plotly.js is embedded (deflated) or already loaded.
 */
(function () {
  "use strict";
  var cfgEl = document.getElementById("cnnviz-config");
  var CFG = cfgEl ? JSON.parse(cfgEl.textContent) : {};
  var scrollKey = "cnnviz-scroll:" + location.pathname;
  var reloading = CFG.live && CFG.status === "running";

  // -- the writer's heartbeat (a single-file page built with live=True) ------------------------
  function writerStopped(beat) {
    if (typeof beat !== "number") { return false; }
    return Date.now() / 1000 - beat > CFG.stale_s;
  }
  function showStopped(banner, beat) {
    if (!banner) { return; }
    var when = new Date(beat * 1000).toLocaleString();
    banner.className = "banner failed";
    banner.textContent = "The writer stopped responding (last heartbeat " + when +
      "): training was probably killed. This page no longer reloads.";
  }
  if (reloading && writerStopped(CFG.heartbeat)) { reloading = false; }
  if (reloading && "scrollRestoration" in history) { history.scrollRestoration = "manual"; }

  // -- decoding the compact figure JSON ----------------------------------------------------------
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
      if (keys.length === 1 && keys[0] === "_ref") {
        var s = shared[v._ref];
        return Array.isArray(s) ? s.slice() : s;
      }
      var o = {};
      for (var i = 0; i < keys.length; i++) { o[keys[i]] = decode(v[keys[i]], shared); }
      return o;
    }
    return v;
  }

  // -- the activation maps' colour-scale switch ------------------------------------------------
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

  // -- drawing -------------------------------------------------------------------------------
  var parsed = new Promise(function (resolve) {
    if (document.readyState !== "loading") { resolve(); return; }
    document.addEventListener("DOMContentLoaded", function () { resolve(); });
  });
  function specOf(el) {
    // A figure's data may sit further down the file than its slot: wait until it is parsed.
    if (el._cnnvizSpec) { return Promise.resolve(el._cnnvizSpec); }
    var block = document.getElementById(el.dataset.fig);
    var found = block ? Promise.resolve(block) : parsed.then(function () {
      var late = document.getElementById(el.dataset.fig);
      if (!late) { throw new Error("its data is missing from the page"); }
      return late;
    });
    return found.then(function (b) { return JSON.parse(b.textContent); });
  }
  function render(el) {
    if (el.dataset.state) { return el._cnnvizPromise || Promise.resolve(); }
    el.dataset.state = "drawing";
    var p = specOf(el).then(function (spec) {
      var jobs = [];
      prefetch(spec, jobs);
      return Promise.all(jobs).then(function () { return spec; });
    }).then(function (spec) {
      var shared = spec._shared || [];
      var data = decode(spec.data, shared), layout = decode(spec.layout, shared);
      layout.template = CFG.template || window.cnnvizTemplate;
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
  var ready = loadPlotly();
  var io = null;
  function watch(root) {
    var figs = Array.prototype.slice.call((root || document).querySelectorAll(".fig[data-fig]"));
    ready.then(function () {
      figs.forEach(function (el) {
        if (el._cnnvizWatched) { return; }
        el._cnnvizWatched = true;
        if (io) { io.observe(el); } else { render(el); }
      });
    });
  }
  ready.then(function () {
    if ("IntersectionObserver" in window) {
      // A figure in a closed <details> has no box: it intersects once its group is opened.
      io = new IntersectionObserver(function (entries) {
        entries.forEach(function (en) {
          if (en.isIntersecting) { io.unobserve(en.target); render(en.target); }
        });
      }, { rootMargin: "600px 0px" });
    }
    watch(document);
  }, function (err) {
    console.error("cnnviz: " + err.message);
    var fail = function () {
      document.querySelectorAll(".fig[data-fig]").forEach(function (el) {
        if (el.querySelector(".fig-error")) { return; }
        var box = document.createElement("div");
        box.className = "fig-error";
        box.textContent = "Figures cannot be drawn: " + err.message;
        el.appendChild(box);
      });
    };
    fail();
    document.addEventListener("DOMContentLoaded", fail);
  });
  // (Re)draw a figure slot from a spec given in script (the live page's data files).
  function show(el, spec) {
    el._cnnvizSpec = spec;
    if (spec && spec.layout && spec.layout.height) { el.style.height = spec.layout.height + "px"; }
    if (el.dataset.state) {
      el.dataset.state = "";
      el._cnnvizPromise = null;
      return ready.then(function () { return render(el); });
    }
    watch(el.parentNode);
    return ready;
  }
  window.cnnviz = {
    show: show,
    render: function (el) { return ready.then(function () { return render(el); }); },
    renderAll: function () {
      return ready.then(function () {
        var figs = Array.prototype.slice.call(document.querySelectorAll(".fig[data-fig]"));
        return Promise.all(figs.map(render));
      });
    },
    watch: watch,
    start: function () { watch(document); },
    decode: decode,
    ready: ready,
    reveal: reveal
  };
  window.cnnvizRender = window.cnnviz.render;
  window.cnnvizRenderAll = window.cnnviz.renderAll;

  // -- navigation: links open the groups that hold their target ---------------------------------
  function openAround(el) {
    for (var p = el; p; p = p.parentElement) {
      if (p.tagName === "DETAILS" && !p.open) { p.open = true; }
    }
  }
  function markCurrent(id) {
    var nav = document.getElementById("toc");
    if (!nav) { return; }
    nav.querySelectorAll("a.current").forEach(function (a) { a.classList.remove("current"); });
    var link = nav.querySelector('a[href="#' + CSS.escape(id) + '"]');
    if (link) {
      link.classList.add("current");
      openAround(link);
      var r = link.getBoundingClientRect(), n = nav.getBoundingClientRect();
      if (r.top < n.top || r.bottom > n.bottom) { link.scrollIntoView({block: "nearest"}); }
    }
  }
  function reveal(id) {
    var el = document.getElementById(id);
    if (!el) { return null; }
    openAround(el);
    if (el.tagName === "DETAILS") { el.open = true; }
    el.scrollIntoView({block: "start"});
    markCurrent(id);
    return el;
  }
  document.addEventListener("click", function (ev) {
    var a = ev.target.closest && ev.target.closest('a[href^="#"]');
    if (!a || ev.defaultPrevented || ev.button !== 0 || ev.metaKey || ev.ctrlKey) { return; }
    var id = decodeURIComponent(a.getAttribute("href").slice(1));
    if (!id || !document.getElementById(id)) { return; }
    ev.preventDefault();  // also keeps a link inside a <summary> from toggling it shut
    reveal(id);
    if (history.replaceState) { history.replaceState(null, "", "#" + encodeURIComponent(id)); }
  });
  // -- once the page is parsed: the hash target, the picker, the live reload ------------------
  function init() {
    watch(document);
    if (CFG.live && CFG.status === "running" && writerStopped(CFG.heartbeat)) {
      showStopped(document.getElementById("live-banner"), CFG.heartbeat);
    }
    if (location.hash.length > 1) {
      var first = decodeURIComponent(location.hash.slice(1));
      if (document.getElementById(first)) { setTimeout(function () { reveal(first); }, 0); }
    }

    // -- the layer picker: filter the navigation's layer list, Enter jumps to the first match ----
    var filter = document.getElementById("layer-filter");
    if (filter) {
      var items = Array.prototype.slice.call(document.querySelectorAll("nav#toc li.layer"));
      var groups = Array.prototype.slice.call(document.querySelectorAll("nav#toc li.group"));
      var apply = function () {
        var q = filter.value.trim().toLowerCase(), shown = 0;
        items.forEach(function (li) {
          var hit = !q || (li.dataset.name || "").toLowerCase().indexOf(q) >= 0;
          li.classList.toggle("hidden", !hit);
          if (hit) { shown++; }
        });
        groups.forEach(function (g) {
          var any = g.querySelector("li.layer:not(.hidden)") !== null;
          g.classList.toggle("hidden", Boolean(q) && !any);
          var d = g.querySelector("details");
          if (d && q) { d.open = any; }
        });
        var hint = document.getElementById("layer-filter-hint");
        if (hint) {
          hint.textContent = q ? shown + " matching layers; Enter opens the first" : hint.dataset.idle;
        }
      };
      filter.addEventListener("input", apply);
      filter.addEventListener("keydown", function (ev) {
        if (ev.key !== "Enter") { return; }
        var hit = document.querySelector("nav#toc li.layer:not(.hidden) a");
        if (hit) {
          ev.preventDefault();
          var id = decodeURIComponent(hit.getAttribute("href").slice(1));
          reveal(id);
          if (history.replaceState) { history.replaceState(null, "", "#" + encodeURIComponent(id)); }
        }
      });
    }

    // -- a single-file page built while the run was training reloads itself ---------------------
    var saved = null;
    try {
      saved = sessionStorage.getItem(scrollKey);
      sessionStorage.removeItem(scrollKey);
    } catch (e) {}
    if (saved !== null) { window.scrollTo(0, parseFloat(saved) || 0); }
    if (reloading) {
      var pause = document.getElementById("live-pause");
      var tick = function () {
        if (writerStopped(CFG.heartbeat)) {
          showStopped(document.getElementById("live-banner"), CFG.heartbeat);
          return;
        }
        if (pause && pause.checked) { setTimeout(tick, CFG.reload_ms); return; }
        try { sessionStorage.setItem(scrollKey, String(window.scrollY)); } catch (e) {}
        location.reload();
      };
      setTimeout(tick, CFG.reload_ms);
    }
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
