// The run report's sample grid: cards rendered from the JSON blob a page at a time, with filters, sorting
// and the per-image evidence overlay. State lives in the URL hash, so a filtered view is a link
// (report.html#status=fail&task=counting&overlay=1; overlay=ID,ID opens single images). No network, no library.
(function () {
  "use strict";
  var CARDS = JSON.parse(document.getElementById("cards").textContent);
  var PAGE = 60;
  var SVGNS = "http://www.w3.org/2000/svg";
  var controls = document.getElementById("controls");
  var grid = document.getElementById("grid");
  var state = {task: "", status: "", kind: "", q: "", min: "", max: "", sort: "id", page: "0", overlay: ""};

  function readHash() {
    var params = new URLSearchParams(location.hash.replace(/^#/, ""));
    Object.keys(state).forEach(function (k) { state[k] = params.get(k) || (k === "sort" ? "id" : k === "page" ? "0" : ""); });
  }
  function writeHash() {
    var params = new URLSearchParams();
    Object.keys(state).forEach(function (k) {
      if (state[k] && !(k === "sort" && state[k] === "id") && !(k === "page" && state[k] === "0")) params.set(k, state[k]);
    });
    history.replaceState(null, "", "#" + params.toString());
  }
  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function counts(key) {
    var seen = {};
    CARDS.forEach(function (c) { if (c[key]) seen[c[key]] = (seen[c[key]] || 0) + 1; });
    return Object.keys(seen).sort().map(function (k) { return [k, seen[k]]; });
  }
  function select(name, label, options) {
    var wrap = el("label", {}, label + " ");
    var sel = el("select", {name: name, id: "f-" + name});
    options.forEach(function (o) { var opt = el("option", {value: o[0]}, o[1]); sel.appendChild(opt); });
    sel.value = state[name];
    sel.addEventListener("change", function () { state[name] = sel.value; state.page = "0"; update(); });
    wrap.appendChild(sel);
    return wrap;
  }
  function input(name, label, type) {
    var wrap = el("label", {}, label + " ");
    var box = el("input", {name: name, id: "f-" + name, type: type, step: "any"});
    box.value = state[name];
    box.addEventListener("input", function () { state[name] = box.value; state.page = "0"; update(); });
    wrap.appendChild(box);
    return wrap;
  }
  function withCounts(key, all) {
    return [["", all]].concat(counts(key).map(function (p) { return [p[0], p[0] + " (" + p[1] + ")"]; }));
  }
  function buildControls() {
    controls.textContent = "";
    if (counts("task").length) controls.appendChild(select("task", "Task", withCounts("task", "all tasks")));
    controls.appendChild(select("status", "Result", withCounts("status", "all")));
    if (counts("kind").length) controls.appendChild(select("kind", "Failure", withCounts("kind", "any reason")));
    controls.appendChild(input("q", "Search", "search"));
    controls.appendChild(input("min", "Score ≥", "number"));
    controls.appendChild(input("max", "≤", "number"));
    controls.appendChild(select("sort", "Sort", [["id", "id"], ["score", "score ↑"], ["-score", "score ↓"],
      ["prompt", "prompt"], ["task", "task"]]));
    var all = el("label", {}, "");
    var box = el("input", {type: "checkbox", id: "f-overlay"});
    box.checked = state.overlay === "1";
    box.addEventListener("change", function () { state.overlay = box.checked ? "1" : ""; update(); });
    all.appendChild(box);
    all.appendChild(document.createTextNode(" show all overlays"));
    controls.appendChild(all);
  }
  function matches(c) {
    if (state.task && c.task !== state.task) return false;
    if (state.status && c.status !== state.status) return false;
    if (state.kind && c.kind !== state.kind) return false;
    var lo = parseFloat(state.min), hi = parseFloat(state.max);
    if (!isNaN(lo) && !(c.score !== null && c.score >= lo)) return false;
    if (!isNaN(hi) && !(c.score !== null && c.score <= hi)) return false;
    if (state.q) {
      var q = state.q.toLowerCase();
      if ((c.prompt + " " + c.reason + " " + c.id).toLowerCase().indexOf(q) < 0) return false;
    }
    return true;
  }
  function sorted(list) {
    var key = state.sort.replace(/^-/, ""), sign = state.sort[0] === "-" ? -1 : 1;
    return list.slice().sort(function (a, b) {
      var x = a[key], y = b[key];
      if (x === y) return a.id < b.id ? -1 : a.id > b.id ? 1 : 0;
      if (x === null || x === undefined) return 1;  // missing scores last either way
      if (y === null || y === undefined) return -1;
      return (x < y ? -1 : 1) * sign;
    });
  }
  function opened() { return state.overlay && state.overlay !== "1" ? state.overlay.split(",") : []; }
  function fmt(v) { return typeof v === "number" ? (Math.round(v * 1000) / 1000).toString() : String(v); }

  function overlay(ev) {
    var size = ev.size || [1, 1];
    var svg = document.createElementNS(SVGNS, "svg");
    svg.setAttribute("viewBox", "0 0 " + size[0] + " " + size[1]);
    svg.setAttribute("preserveAspectRatio", "xMidYMid meet");
    svg.setAttribute("class", "ev");
    var font = Math.max(size[0], size[1]) / 16;
    function shape(d, kind) {
      var g = document.createElementNS(SVGNS, "g");
      var bad = kind === "kept" && d.failed && d.failed.length;
      var colour = kind === "below" ? "#bbbbbb" : bad ? "#ff3b3b" : "#22dd55";
      g.setAttribute("class", kind + (bad ? " failed" : ""));
      g.setAttribute("opacity", kind === "below" ? "0.75" : "1");
      var b = d.box, w = b[2] - b[0], h = b[3] - b[1];
      if (d.mask) {
        var cw = w / d.mask.w, ch = h / d.mask.h;
        for (var i = 0; i < d.mask.bits.length; i++) {
          if (d.mask.bits[i] !== "1") continue;
          var cell = document.createElementNS(SVGNS, "rect");
          cell.setAttribute("x", b[0] + (i % d.mask.w) * cw); cell.setAttribute("y", b[1] + Math.floor(i / d.mask.w) * ch);
          cell.setAttribute("width", cw); cell.setAttribute("height", ch);
          cell.setAttribute("fill", colour); cell.setAttribute("fill-opacity", "0.3");
          g.appendChild(cell);
        }
      }
      var rect = document.createElementNS(SVGNS, "rect");
      rect.setAttribute("x", b[0]); rect.setAttribute("y", b[1]); rect.setAttribute("width", w); rect.setAttribute("height", h);
      rect.setAttribute("fill", "none"); rect.setAttribute("stroke", colour);
      rect.setAttribute("stroke-width", Math.max(size[0], size[1]) / 110);
      if (kind === "below") rect.setAttribute("stroke-dasharray", font / 2);
      g.appendChild(rect);
      var text = describe(d, kind, ev.threshold, true);
      var tag = document.createElementNS(SVGNS, "rect");  // a label chip, readable over any image
      var top = Math.max(b[1] - font * 1.2, 0);
      var width = text.length * font * 0.56 + font * 0.4, left = Math.max(Math.min(b[0], size[0] - width), 0);
      tag.setAttribute("x", left); tag.setAttribute("y", top);
      tag.setAttribute("width", width); tag.setAttribute("height", font * 1.2);
      tag.setAttribute("fill", colour); tag.setAttribute("fill-opacity", kind === "below" ? "0.8" : "0.9");
      g.appendChild(tag);
      var label = document.createElementNS(SVGNS, "text");
      label.setAttribute("x", left + font * 0.2); label.setAttribute("y", top + font * 0.95);
      label.setAttribute("font-size", font); label.setAttribute("fill", "#000");
      label.textContent = text;
      g.appendChild(label);
      svg.appendChild(g);
    }
    (ev.below || []).forEach(function (d) { shape(d, "below"); });
    (ev.kept || []).forEach(function (d) { shape(d, "kept"); });
    return svg;
  }
  function describe(d, kind, threshold, short) {
    if (kind === "below") return d["class"] + " " + fmt(d.score) + (d.score < threshold ? " < " : " ≤ ") + fmt(threshold);
    return d["class"] + " " + fmt(d.score) + (d.color ? " " + d.color : "") + (d.failed && d.failed.length ? (short ? " ✗" : " ✗ " + d.failed.join(",")) : "");
  }
  function evidenceList(ev) {
    var ul = el("ul", {"class": "ev-list"});
    (ev.kept || []).forEach(function (d) { ul.appendChild(el("li", {"class": d.failed && d.failed.length ? "bad" : ""}, describe(d, "kept"))); });
    (ev.below || []).forEach(function (d) { ul.appendChild(el("li", {"class": "dim"}, describe(d, "below", ev.threshold))); });
    if (!ul.children.length) ul.appendChild(el("li", {"class": "dim"}, "no detection of the prompt's objects at all"));
    return ul;
  }
  function ocr(ops) {
    var div = el("div", {"class": "ocr", title: "expected text against what OCR read (red: missing, green: read instead)"});
    div.appendChild(el("span", {"class": "dim"}, "text: "));
    ops.forEach(function (op) { div.appendChild(op[0] === "=" ? document.createTextNode(op[1]) : el(op[0] === "-" ? "del" : "ins", {}, op[1])); });
    return div;
  }
  function qa(items) {
    var det = el("details", {});
    var scored = items.filter(function (it) { return it.s !== undefined; });
    var passed = scored.filter(function (it) { return it.s >= 0.5; }).length;
    det.appendChild(el("summary", {}, items.length + " questions" + (scored.length ? ", " + passed + " passed" : "")));
    var ol = el("ol", {"class": "qa"});
    items.forEach(function (it) {
      var text = it.q + (it.a !== undefined ? " → " + it.a : "") + (it.gold !== undefined ? " (expected " + it.gold + ")" : "")
        + (it.s !== undefined && it.a === undefined ? " → " + fmt(it.s) : "");
      ol.appendChild(el("li", {"class": it.s === undefined ? "" : it.s >= 0.5 ? "yes" : "no"}, text));
    });
    det.appendChild(ol);
    return det;
  }
  function echo(e, prompt) {
    // PromptEcho: the VLM was asked e.asked about the image and scored on answering with the prompt;
    // each token is shaded by how unlikely it found it, the least likely few are named in the summary.
    var det = el("details", {"class": "echo"});
    var worst = e.tokens.slice().sort(function (x, y) { return x[2] - y[2]; }).slice(0, 3);
    det.appendChild(el("summary", {}, "asked “" + e.asked + "”; least expected: " + worst.map(function (t) {
      return "“" + prompt.slice(t[0], t[1]).trim() + "” p " + fmt(Math.exp(t[2]));
    }).join(", ")));
    var text = el("div", {"class": "echo-text"}), at = 0;
    e.tokens.forEach(function (t) {
      if (t[0] > at) text.appendChild(document.createTextNode(prompt.slice(at, t[0])));
      var p = Math.exp(t[2]), span = el("span", {title: "p " + fmt(p) + " (log " + fmt(t[2]) + ")"}, prompt.slice(t[0], t[1]));
      span.style.background = "rgba(220,40,40," + (0.6 * (1 - p)).toFixed(2) + ")";
      text.appendChild(span);
      at = Math.max(at, t[1]);
    });
    if (at < prompt.length) text.appendChild(document.createTextNode(prompt.slice(at)));
    det.appendChild(text);
    return det;
  }
  function card(c) {
    var fig = el("figure", {"class": "card " + c.status, "data-id": c.id});
    var pic = el("div", {"class": "pic"});
    var link = el("a", {href: c.img, target: "_blank"});
    link.appendChild(el("img", {loading: "lazy", src: c.thumb || c.img, alt: c.id + ": " + c.prompt}));
    pic.appendChild(link);
    if (c.ev) {
      pic.appendChild(overlay(c.ev));
      var btn = el("button", {"class": "why", type: "button", "aria-pressed": "false", title: "draw the detections"}, "why");
      btn.addEventListener("click", function () {
        var on = fig.classList.toggle("show-ev");
        btn.setAttribute("aria-pressed", on ? "true" : "false");
        if (state.overlay !== "1") {
          var ids = opened().filter(function (x) { return x !== c.id; });
          state.overlay = (on ? ids.concat([c.id]) : ids).join(",");
          writeHash();
        }
      });
      pic.appendChild(btn);
      if (state.overlay === "1" || opened().indexOf(c.id) >= 0) {
        fig.classList.add("show-ev");
        btn.setAttribute("aria-pressed", "true");
      }
    }
    fig.appendChild(pic);
    var cap = el("figcaption", {});
    var head = c.id + (c.task ? " · " + c.task : "") + (c.score !== null ? " · score " + fmt(c.score) : "") + " · " + c.status;
    cap.appendChild(el("div", {}, head));
    cap.appendChild(el("div", {"class": "prompt"}, c.prompt));
    if (c.rendered) cap.appendChild(el("div", {"class": "rendered"}, "rendered: " + c.rendered));
    if (c.reason) cap.appendChild(el("div", {"class": "reason"}, c.reason));
    if (c.ev) cap.appendChild(evidenceList(c.ev));
    if (c.ocr) cap.appendChild(ocr(c.ocr));
    if (c.qa) cap.appendChild(qa(c.qa));
    if (c.echo) cap.appendChild(echo(c.echo, c.prompt));
    fig.appendChild(cap);
    return fig;
  }
  function pager(total, page, pages) {
    var bar = el("div", {"class": "pager"});
    var prev = el("button", {type: "button"}, "‹ prev"), next = el("button", {type: "button"}, "next ›");
    prev.disabled = page <= 0; next.disabled = page >= pages - 1;
    prev.addEventListener("click", function () { state.page = String(page - 1); update(); });
    next.addEventListener("click", function () { state.page = String(page + 1); update(); });
    var first = total ? page * PAGE + 1 : 0, last = Math.min(total, (page + 1) * PAGE);
    bar.appendChild(prev);
    bar.appendChild(el("span", {"class": "shown"}, first + "–" + last + " of " + total + " (" + CARDS.length + " images)"));
    bar.appendChild(next);
    return bar;
  }
  function update() {
    writeHash();
    var list = sorted(CARDS.filter(matches));
    var pages = Math.max(1, Math.ceil(list.length / PAGE));
    var page = Math.min(Math.max(parseInt(state.page, 10) || 0, 0), pages - 1);
    grid.textContent = "";
    grid.setAttribute("data-matching", String(list.length));
    grid.appendChild(pager(list.length, page, pages));
    var box = el("div", {"class": "cards"});
    list.slice(page * PAGE, (page + 1) * PAGE).forEach(function (c) { box.appendChild(card(c)); });
    grid.appendChild(box);
  }
  readHash();
  buildControls();
  update();
  window.addEventListener("hashchange", function () { readHash(); buildControls(); update(); });
})();
