/* cnnviz live page: follows a running fit through small data scripts beside the page.
 *
 * Every poll_ms the page adds <script src="report_live/index.js?n=..."> (classic scripts load
 * from file://, where fetch is blocked). index.js calls cnnvizLive.index(...) with the run's
 * status and heartbeat and, per layer, the version of its data file; the page then loads the
 * files that changed for the layers on screen (layer-<i>.js), the new metrics (metrics-<n>.js)
 * and, when the metric names change, the curves' layout (curves.js). It stops when the
 * writer's heartbeat is older than stale_s, and reloads once index.js says the final report
 * has replaced this page.
 */
(function () {
  "use strict";
  var CFG = JSON.parse(document.getElementById("cnnviz-live").textContent);
  window.cnnvizTemplate = CFG.template;
  var st = {
    stopped: false, structure: "", layers: {}, loaded: {}, wanted: {}, metricsSeen: 0,
    points: [], curves: null, curvesVersion: 0, index: null
  };
  var live = window.cnnvizLive = { polls: 0, loads: 0, state: st };
  var banner = document.getElementById("live-banner");

  function load(name) {
    return new Promise(function (resolve) {
      var s = document.createElement("script");
      s.src = CFG.dir + "/" + name + "?n=" + Date.now() + "-" + (live.loads++);
      s.onload = s.onerror = function () { s.remove(); resolve(); };
      document.head.appendChild(s);
    });
  }
  function poll() {
    if (st.stopped) { return; }
    live.polls++;
    load("index.js").then(function () {
      if (!st.stopped) { setTimeout(poll, CFG.poll_ms); }
    });
  }
  function stale(beat) {
    return typeof beat === "number" && Date.now() / 1000 - beat > CFG.stale_s;
  }
  function say(cls, text) { banner.className = "banner " + cls; banner.textContent = text; }

  // -- the layer sections, built from the index (names, ids, versions, groups) ----------------
  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    if (text !== undefined) { e.textContent = text; }
    return e;
  }
  var io = "IntersectionObserver" in window ? new IntersectionObserver(function (entries) {
    entries.forEach(function (en) {
      var id = en.target.dataset.layerId;
      st.wanted[id] = en.isIntersecting;
      if (en.isIntersecting) { fetchLayer(id); }
    });
  }, { rootMargin: "400px 0px" }) : null;
  function section(row) {
    var id = String(row[1]);
    var sec = el("section", { "class": "card live-layer", id: "layer-" + id });
    sec.dataset.layerId = id;
    var h = el("h2", {}, row[0] + " ");
    h.appendChild(el("span", { "class": "muted" }, row[3] || ""));
    sec.appendChild(h);
    sec.appendChild(el("p", { "class": "note live-label" }, "waiting for data…"));
    ["filters", "activations"].forEach(function (k) {
      // no data-fig until its data arrives: only slots with data are watched and drawn
      var f = el("div", { "class": "fig", style: "height:0px" });
      f.dataset.kind = k;
      sec.appendChild(f);
    });
    if (io) { io.observe(sec); } else { st.wanted[id] = true; }
    return sec;
  }
  function structure(idx) {
    var key = JSON.stringify([idx.layers.map(function (r) { return r[1]; }), idx.groups]);
    if (key === st.structure) { return; }
    st.structure = key;
    var root = document.getElementById("live-sections"), nav = document.getElementById("live-nav");
    root.textContent = "";
    nav.textContent = "";
    var byId = {};
    idx.layers.forEach(function (r) { byId[r[1]] = r; });
    var groups = idx.groups || [[null, idx.layers.map(function (r) { return r[1]; })]];
    groups.forEach(function (g, gi) {
      var holder = root, navList = nav;
      if (g[0] !== null) {
        var d = el("details", { "class": "group", id: "live-group-" + gi });
        var sm = el("summary", {});
        sm.appendChild(el("span", {}, g[0]));
        sm.appendChild(el("span", { "class": "sum-facts" }, g[1].length + " layers"));
        d.appendChild(sm);
        holder = el("div", { "class": "group-body" });
        d.appendChild(holder);
        root.appendChild(d);
        var li = el("li", { "class": "group" }), nd = el("details", {});
        var ns = el("summary", {});
        ns.appendChild(el("a", { href: "#live-group-" + gi }, g[0]));
        nd.appendChild(ns);
        navList = el("ul", {});
        nd.appendChild(navList);
        li.appendChild(nd);
        nav.appendChild(li);
      }
      g[1].forEach(function (id) {
        var r = byId[id];
        if (!r) { return; }
        holder.appendChild(section(r));
        var item = el("li", { "class": "sub layer" });
        item.dataset.name = r[0];
        item.appendChild(el("a", { href: "#layer-" + id, title: r[0] }, r[0]));
        navList.appendChild(item);
      });
    });
    st.loaded = {};
    document.getElementById("live-layers-note").textContent = idx.layers.length +
      " layers recorded; each shows the newest filters and activation maps" +
      (idx.groups ? " (open a group to see its layers)." : ".");
  }
  function fetchLayer(id) {
    var row = st.layers[id];
    if (!row) { return; }
    if (st.loaded[id] === row[2] || st.loading === id + ":" + row[2]) { return; }
    st.loading = id + ":" + row[2];
    load("layer-" + id + ".js");
  }
  live.layer = function (d) {
    st.loaded[d.id] = d.version;
    var sec = document.getElementById("layer-" + d.id);
    if (!sec) { return; }
    sec.querySelector(".live-label").textContent = "newest data: " + d.label;
    var slots = sec.querySelectorAll(".fig");
    d.figs.forEach(function (spec, i) {
      if (!slots[i]) { return; }
      slots[i].setAttribute("data-fig", "live-" + d.id + "-" + i);
      window.cnnviz.show(slots[i], spec);
    });
  };

  // -- training curves: the layout comes from curves.js, the points from metrics-<n>.js --------
  var curvesEl = document.getElementById("live-curves-fig");
  function drawCurves() {
    if (!st.curves || !st.points.length) { return; }
    var spec = JSON.parse(JSON.stringify(st.curves));
    var pts = st.points.slice().sort(function (a, b) { return a.epoch - b.epoch; });
    spec.data.forEach(function (t) {
      var name = t.meta;
      t.x = []; t.y = [];
      pts.forEach(function (p) {
        if (typeof p[name] === "number") { t.x.push(p.epoch); t.y.push(p[name]); }
      });
    });
    curvesEl.style.display = "";
    document.getElementById("live-curves-note").textContent =
      "Per epoch, from the metrics the LightningModule logs (" + pts.length + " epochs).";
    window.cnnviz.show(curvesEl, spec);
  }
  live.curves = function (d) {
    if (d.version < st.curvesVersion) { return; }
    st.curvesVersion = d.version;
    st.curves = d.spec;
    drawCurves();
  };
  live.metrics = function (d) {
    if (st.points.some(function (p) { return p.n === d.n; })) { return; }
    st.points.push(d);
    drawCurves();
  };

  // -- the index ------------------------------------------------------------------------------
  live.index = function (idx) {
    st.index = idx;
    if (idx.final) {
      st.stopped = true;
      say("done", "Training ended: loading the full report…");
      setTimeout(function () { location.reload(); }, 300);
      return;
    }
    if (idx.status === "running" && stale(idx.heartbeat)) {
      st.stopped = true;
      var when = new Date(idx.heartbeat * 1000).toLocaleString();
      say("failed", "The writer stopped responding (last heartbeat " + when + "): training " +
        "was probably killed. This page no longer updates.");
      return;
    }
    if (idx.status === "running") {
      say("live", "Training is running" + (idx.event ? ": newest event " + idx.event : "") +
        ". This page updates itself every " + Math.round(CFG.poll_ms / 1000) + " s.");
    } else if (idx.status) {
      say(idx.status === "finished" ? "done" : "failed", "The run is " + idx.status +
        "; waiting for the full report…");
    }
    var chips = document.getElementById("live-chips");
    chips.textContent = "";
    [["status: " + (idx.status || "?"), ""], ["events: " + idx.seq, ""],
     ["epochs with metrics: " + idx.metrics, ""],
     [idx.errors ? idx.errors + " callback errors (the full report lists them)" : "", "bad"]]
      .forEach(function (c) { if (c[0]) { chips.appendChild(el("span", { "class": "chip " + c[1] }, c[0])); } });
    structure(idx);
    idx.layers.forEach(function (r) { st.layers[String(r[1])] = r; });
    idx.layers.forEach(function (r) { if (st.wanted[String(r[1])]) { fetchLayer(String(r[1])); } });
    if (idx.curves > st.curvesVersion) { load("curves.js"); }
    for (var n = st.metricsSeen; n < idx.metrics; n++) { load("metrics-" + n + ".js"); }
    st.metricsSeen = Math.max(st.metricsSeen, idx.metrics);
  };

  // -- the layer picker -------------------------------------------------------------------------
  var filter = document.getElementById("live-filter");
  filter.addEventListener("input", function () {
    var q = filter.value.trim().toLowerCase();
    document.querySelectorAll("#live-nav li.layer").forEach(function (li) {
      li.classList.toggle("hidden", Boolean(q) && li.dataset.name.toLowerCase().indexOf(q) < 0);
    });
    document.querySelectorAll("#live-nav li.group").forEach(function (g) {
      var any = g.querySelector("li.layer:not(.hidden)") !== null;
      g.classList.toggle("hidden", Boolean(q) && !any);
      g.querySelector("details").open = Boolean(q) && any;
    });
  });
  filter.addEventListener("keydown", function (ev) {
    if (ev.key !== "Enter") { return; }
    var hit = document.querySelector("#live-nav li.layer:not(.hidden) a");
    if (hit) { ev.preventDefault(); window.cnnviz.reveal(hit.getAttribute("href").slice(1)); }
  });
  poll();
})();
