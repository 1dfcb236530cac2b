// stale detect --html: timeline, table and player of each video section. Plain DOM and canvas, no library.
// Every string from the data is shown through textContent (never innerHTML).
"use strict";
(function () {
  const ROW_H = 28;  // px, table row (matches .row in the CSS)
  const PAGE = JSON.parse(document.getElementById("page-data").textContent);

  function colour(k, alpha, lightness) {
    const hue = (k * 137.508 + 210) % 360;  // golden-angle hues: neighbouring classes differ
    return "hsla(" + hue.toFixed(1) + ",62%," + (lightness || 46) + "%," + alpha.toFixed(3) + ")";
  }

  function clock(t, digits) {
    t = Math.max(0, t);
    const h = Math.floor(t / 3600), m = Math.floor((t % 3600) / 60);
    let s = (t % 60).toFixed(digits);
    if (s.length < (digits ? 3 + digits : 2)) s = "0" + s;
    return (h ? h + ":" + String(m).padStart(2, "0") : String(m)) + ":" + s;
  }

  function bytes(b64) {
    const bin = atob(b64), out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }

  const TICKS = [0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200];

  class VideoReport {
    constructor(section) {
      const d = JSON.parse(section.querySelector("script.video-data").textContent);
      const q = (sel) => section.querySelector(sel);
      this.section = section;
      this.K = section.querySelectorAll(".lane").length;
      this.duration = Math.max(d.duration, 1e-3);
      const n = d.segments.length;
      this.n = n;
      this.k = new Int32Array(n); this.s = new Float64Array(n); this.e = new Float64Array(n);
      this.score = new Float64Array(n);
      d.segments.forEach((g, i) => { this.k[i] = g[0]; this.s[i] = g[1]; this.e[i] = g[2]; this.score[i] = g[3]; });
      this.byClass = Array.from({ length: this.K }, () => []);
      for (let i = 0; i < n; i++) this.byClass[this.k[i]].push(i);
      // Bars are drawn lowest score first so the best of overlapping segments is on top.
      this.drawOrder = Int32Array.from({ length: n }, (_, i) => i).sort((a, b) => this.score[a] - this.score[b]);
      this.curves = null;
      if (d.curves) {
        const c = d.curves;
        this.curves = c.values.map(bytes);
        const T = this.curves.length ? this.curves[0].length : 0;
        this.times = c.times ? Float64Array.from(c.times) : Float64Array.from({ length: T }, (_, i) => c.t0 + i * c.step);
      }
      this.minScore = 0; this.view = [0, this.duration]; this.time = 0; this.selected = -1;
      this.sortKey = "start"; this.sortDir = 1;
      this.video = q("video.player");
      this.canvas = q("canvas.lanes"); this.axis = q("canvas.axis"); this.plot = q(".plot");
      this.playhead = q(".playhead"); this.tip = q(".tip"); this.clockEl = q(".clock");
      this.rows = q(".rows"); this.spacer = q(".spacer"); this.emptyEl = q(".empty"); this.shownEl = q(".shown");
      this.slider = q("input.min-score"); this.sliderOut = q("output.min-score-value");
      this.pool = [];
      section.querySelectorAll(".lane").forEach((el, k) => { el.querySelector(".swatch").style.background = colour(k, 0.9); });
      this.sortRows();
      this.bind(q);
      this.draw();
      this.setTime(0);
    }

    // ---- time <-> pixels ------------------------------------------------------------------------------------
    width() { return this.canvas.clientWidth || 1; }
    laneH() { return this.canvas.clientHeight / Math.max(this.K, 1); }
    toX(t) { return (t - this.view[0]) * this.width() / (this.view[1] - this.view[0]); }
    toT(x) { return this.view[0] + x * (this.view[1] - this.view[0]) / this.width(); }

    setView(a, b) {
      const span = Math.min(Math.max(b - a, Math.min(1, this.duration)), this.duration);
      a = Math.min(Math.max(a, 0), this.duration - span);
      this.view = [a, a + span];
      this.draw();
      this.placePlayhead();
    }

    zoom(factor, centre) {
      const [a, b] = this.view;
      if (centre === undefined) centre = this.time >= a && this.time <= b ? this.time : (a + b) / 2;
      this.setView(centre - (centre - a) * factor, centre + (b - centre) * factor);
    }

    // ---- drawing --------------------------------------------------------------------------------------------
    draw() {
      const dpr = window.devicePixelRatio || 1, W = this.width();
      const laneH = parseFloat(getComputedStyle(this.section).getPropertyValue("--lane-h")) || 26;
      const H = laneH * this.K;
      this.canvas.style.height = H + "px";
      for (const [cv, h] of [[this.canvas, H], [this.axis, this.axis.clientHeight]]) {
        const w = Math.round(W * dpr), hh = Math.round(h * dpr);
        if (cv.width !== w || cv.height !== hh) { cv.width = w; cv.height = hh; }
      }
      const ctx = this.canvas.getContext("2d");
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      ctx.clearRect(0, 0, W, H);
      const lines = [];  // each class's curve: its area behind the bars, its line over them
      for (let k = 0; k < this.K; k++) {
        if (k % 2) { ctx.fillStyle = "#f8f9fb"; ctx.fillRect(0, k * laneH, W, laneH); }
        if (this.curves && this.curves[k]) lines.push([k, this.drawCurve(ctx, k, laneH, W)]);
      }
      // Bars take the middle of the lane so the curve shows above and below them; an outline separates overlaps.
      const [a, b] = this.view, sx = W / (b - a), pad = Math.round(laneH * 0.28);
      ctx.lineWidth = 1;
      for (let j = 0; j < this.n; j++) {
        const i = this.drawOrder[j];
        if (this.score[i] < this.minScore || this.e[i] < a || this.s[i] > b) continue;
        const x0 = (this.s[i] - a) * sx, x1 = Math.max((this.e[i] - a) * sx, x0 + 2), y = this.k[i] * laneH + pad;
        ctx.fillStyle = colour(this.k[i], 0.15 + 0.85 * this.score[i]);
        ctx.fillRect(x0, y, x1 - x0, laneH - 2 * pad);
        if (x1 - x0 > 4) {
          ctx.strokeStyle = colour(this.k[i], 0.9);
          ctx.strokeRect(Math.round(x0) + 0.5, y + 0.5, Math.max(Math.round(x1 - x0) - 1, 1), laneH - 2 * pad - 1);
        }
      }
      ctx.lineWidth = 1.25;
      for (const [k, line] of lines) {
        if (!line) continue;
        ctx.strokeStyle = colour(k, 0.8, 28);
        ctx.stroke(line);
      }
      if (this.selected >= 0 && this.score[this.selected] >= this.minScore) {
        const i = this.selected, x0 = (this.s[i] - a) * sx, x1 = Math.max((this.e[i] - a) * sx, x0 + 2);
        ctx.strokeStyle = "#111"; ctx.lineWidth = 2;
        ctx.strokeRect(x0, this.k[i] * laneH + pad - 1, x1 - x0, laneH - 2 * pad + 2);
      }
      this.drawAxis(dpr, W);
    }

    // The class's probability as an area filling its lane (drawn now) and a line (returned, drawn over the
    // bars); at most one point per pixel column, the column's max, so 2 hours cost what a minute does.
    drawCurve(ctx, k, laneH, W) {
      const v = this.curves[k], t = this.times, T = v.length;
      if (!T) return null;
      const [a, b] = this.view, sx = W / (b - a), base = (k + 1) * laneH - 1, amp = (laneH - 3) / 255;
      let lo = 0, hi = T - 1;
      while (lo < hi) { const mid = (lo + hi) >> 1; if (t[mid] < a) lo = mid + 1; else hi = mid; }
      const first = Math.max(lo - 1, 0);
      const line = new Path2D();
      let col = null, colX = 0, best = 0, started = false, lastX = 0, firstX = 0;
      const emit = (x, y) => {
        if (!started) { line.moveTo(x, y); firstX = x; started = true; } else line.lineTo(x, y);
        lastX = x;
      };
      for (let i = first; i < T; i++) {
        const x = (t[i] - a) * sx, c = Math.floor(x);
        if (c !== col) {
          if (col !== null) emit(colX, base - best * amp);
          col = c; colX = x; best = v[i];
        } else if (v[i] > best) best = v[i];
        if (t[i] > b) break;
      }
      if (col !== null) emit(colX, base - best * amp);
      if (!started) return null;
      const area = new Path2D(line);
      area.lineTo(lastX, base); area.lineTo(firstX, base); area.closePath();
      ctx.fillStyle = colour(k, 0.16); ctx.fill(area);
      return line;
    }

    drawAxis(dpr, W) {
      const ctx = this.axis.getContext("2d"), H = this.axis.clientHeight;
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      ctx.clearRect(0, 0, W, H);
      const [a, b] = this.view, span = b - a;
      const step = TICKS.find((s) => (s * W) / span >= 90) || 7200;
      ctx.fillStyle = "#5d6678"; ctx.strokeStyle = "#c5cbd6"; ctx.font = "11px system-ui, sans-serif";
      ctx.textBaseline = "middle";
      for (let t = Math.ceil(a / step) * step; t <= b; t += step) {
        const x = Math.round(this.toX(t)) + 0.5;
        ctx.beginPath(); ctx.moveTo(x, H - 6); ctx.lineTo(x, H); ctx.stroke();
        ctx.fillText(clock(t, step < 1 ? 1 : 0), x + 3, H / 2 - 2);
      }
    }

    // ---- playhead and seeking -------------------------------------------------------------------------------
    placePlayhead() {
      const x = this.toX(this.time), inside = this.time >= this.view[0] && this.time <= this.view[1];
      this.playhead.style.display = inside ? "" : "none";
      this.playhead.style.transform = "translateX(" + x.toFixed(1) + "px)";
    }

    setTime(t) {
      this.time = t;
      const [a, b] = this.view;
      if ((t > b || t < a) && this.video && !this.video.paused) {  // follow a playing video
        const span = b - a;
        this.setView(t - 0.1 * span, t + 0.9 * span);
      }
      this.placePlayhead();
      this.clockEl.textContent = clock(t, 1) + " / " + clock(this.duration, 1);
    }

    seek(t, play) {
      t = Math.min(Math.max(t, 0), this.duration);
      const [a, b] = this.view;
      if (t < a || t > b) { const span = b - a; this.setView(t - 0.1 * span, t + 0.9 * span); }
      if (this.video) {
        this.video.currentTime = t;
        if (play) { const p = this.video.play(); if (p) p.catch(() => {}); }
      }
      this.setTime(t);
    }

    select(i, play) {
      this.selected = i;
      this.draw();
      this.renderRows();
      this.seek(this.s[i], play);
    }

    followVideo() {
      const v = this.video;
      if (!v) return;
      const tick = () => { this.setTime(v.currentTime); if (!v.paused && !v.ended) requestAnimationFrame(tick); };
      v.addEventListener("play", () => requestAnimationFrame(tick));
      v.addEventListener("timeupdate", () => this.setTime(v.currentTime));
      v.addEventListener("seeked", () => this.setTime(v.currentTime));
      v.addEventListener("error", () => {
        const el = this.section.querySelector(".player-error");
        el.textContent = "This browser cannot play " + v.getAttribute("src") +
          " (missing, moved, or a format it does not decode). The timeline and the table still work.";
        el.hidden = false;
      });
    }

    // ---- hit testing ----------------------------------------------------------------------------------------
    hit(x, y) {
      const k = Math.floor(y / this.laneH());
      if (k < 0 || k >= this.K) return -1;
      const t = this.toT(x), tol = 3 * (this.view[1] - this.view[0]) / this.width();
      let found = -1;
      for (const i of this.byClass[k]) {
        if (this.score[i] < this.minScore || t < this.s[i] - tol || t > this.e[i] + tol) continue;
        if (found < 0 || this.score[i] > this.score[found]) found = i;
      }
      return found;
    }

    showTip(i, x, y) {
      if (i < 0) { this.tip.hidden = true; return; }
      this.tip.textContent = PAGE.classes[this.k[i]] + "  " + clock(this.s[i], 2) + " – " + clock(this.e[i], 2) +
        "  score " + this.score[i].toFixed(3);
      this.tip.hidden = false;
      const w = this.tip.offsetWidth, W = this.plot.clientWidth;
      this.tip.style.left = Math.min(Math.max(x + 12, 0), W - w - 4) + "px";
      this.tip.style.top = (this.axis.clientHeight + y + 14) + "px";
    }

    // ---- table ----------------------------------------------------------------------------------------------
    sortRows() {
      const key = { label: (i) => PAGE.classes[this.k[i]], start: (i) => this.s[i], end: (i) => this.e[i],
        score: (i) => this.score[i] }[this.sortKey];
      const dir = this.sortDir;
      const idx = [];
      for (let i = 0; i < this.n; i++) if (this.score[i] >= this.minScore) idx.push(i);
      idx.sort((i, j) => { const a = key(i), b = key(j); return (a < b ? -1 : a > b ? 1 : this.s[i] - this.s[j]) * dir; });
      this.order = idx;
      this.section.querySelectorAll(".thead button").forEach((btn) => {
        btn.setAttribute("aria-sort", btn.dataset.key === this.sortKey ? (dir > 0 ? "ascending" : "descending") : "none");
      });
      this.spacer.style.height = idx.length * ROW_H + "px";
      this.emptyEl.hidden = idx.length > 0;
      this.shownEl.textContent = idx.length + " of " + this.n + " segments shown";
      this.renderRows();
    }

    // Only the rows in view (plus a margin) exist in the DOM, so 5,000 segments cost what 20 do.
    renderRows() {
      const first = Math.max(0, Math.floor(this.rows.scrollTop / ROW_H) - 5);
      const count = Math.ceil((this.rows.clientHeight || 300) / ROW_H) + 10;
      const last = Math.min(this.order.length, first + count);
      while (this.pool.length < count) {
        const row = document.createElement("div");
        row.className = "row"; row.setAttribute("role", "row"); row.tabIndex = -1;
        row.innerHTML = '<span role="cell"><i class="dot"></i><b></b></span><span role="cell" class="num"></span>' +
          '<span role="cell" class="num"></span><span role="cell" class="num"><em></em><i class="scorebar"></i></span>';
        this.rows.appendChild(row);
        this.pool.push(row);
      }
      this.pool.forEach((row, p) => {
        const r = first + p;
        if (r >= last) { row.style.display = "none"; return; }
        const i = this.order[r], cells = row.children;
        row.style.display = ""; row.style.top = r * ROW_H + "px"; row.dataset.seg = i;
        row.classList.toggle("selected", i === this.selected);
        cells[0].querySelector(".dot").style.background = colour(this.k[i], 0.9);
        cells[0].querySelector("b").textContent = PAGE.classes[this.k[i]];
        cells[0].title = PAGE.classes[this.k[i]];
        cells[1].textContent = clock(this.s[i], 2);
        cells[2].textContent = clock(this.e[i], 2);
        cells[3].querySelector("em").textContent = this.score[i].toFixed(3);
        cells[3].querySelector(".scorebar").style.width = Math.round(28 * this.score[i]) + "px";
      });
    }

    // ---- events ---------------------------------------------------------------------------------------------
    bind(q) {
      this.followVideo();
      this.slider.addEventListener("input", () => {
        this.minScore = parseFloat(this.slider.value);
        this.sliderOut.textContent = this.minScore.toFixed(2);
        this.sortRows();
        this.draw();
      });
      this.section.querySelectorAll(".thead button").forEach((btn) => btn.addEventListener("click", () => {
        if (this.sortKey === btn.dataset.key) this.sortDir = -this.sortDir;
        else { this.sortKey = btn.dataset.key; this.sortDir = btn.dataset.key === "score" ? -1 : 1; }
        this.sortRows();
      }));
      let pending = false;
      this.rows.addEventListener("scroll", () => {
        if (pending) return;
        pending = true;
        requestAnimationFrame(() => { pending = false; this.renderRows(); });
      });
      this.rows.addEventListener("click", (ev) => {
        const row = ev.target.closest(".row");
        if (row) this.select(parseInt(row.dataset.seg, 10), true);
      });
      this.rows.addEventListener("keydown", (ev) => {  // arrows move the selection through the sorted rows
        if (ev.key !== "ArrowDown" && ev.key !== "ArrowUp" && ev.key !== "Enter") return;
        ev.preventDefault();
        let r = this.order.indexOf(this.selected);
        if (ev.key === "ArrowDown") r = Math.min(r + 1, this.order.length - 1);
        else if (ev.key === "ArrowUp") r = Math.max(r - 1, 0);
        if (r < 0 || !this.order.length) return;
        if (r * ROW_H < this.rows.scrollTop || (r + 1) * ROW_H > this.rows.scrollTop + this.rows.clientHeight) {
          this.rows.scrollTop = r * ROW_H - this.rows.clientHeight / 2;
        }
        this.select(this.order[r], ev.key === "Enter");
      });
      q(".zoom-in").addEventListener("click", () => this.zoom(0.5));
      q(".zoom-out").addEventListener("click", () => this.zoom(2));
      q(".zoom-fit").addEventListener("click", () => this.setView(0, this.duration));

      const cv = this.canvas;
      const local = (ev) => { const r = cv.getBoundingClientRect(); return [ev.clientX - r.left, ev.clientY - r.top]; };
      let drag = null;
      cv.addEventListener("mousedown", (ev) => {
        if (ev.button !== 0) return;
        drag = { x: ev.clientX, view: this.view.slice(), moved: false };
      });
      window.addEventListener("mousemove", (ev) => {
        if (drag) {
          const dx = ev.clientX - drag.x;
          if (Math.abs(dx) > 3) drag.moved = true;
          if (drag.moved) {
            const dt = dx * (drag.view[1] - drag.view[0]) / this.width();
            cv.classList.add("dragging");
            this.setView(drag.view[0] - dt, drag.view[1] - dt);
          }
        }
      });
      window.addEventListener("mouseup", (ev) => {
        if (!drag) return;
        const wasClick = !drag.moved;
        drag = null;
        cv.classList.remove("dragging");
        if (!wasClick || ev.target !== cv) return;
        const [x, y] = local(ev), i = this.hit(x, y);
        if (i >= 0) this.select(i, true);
        else this.seek(this.toT(x), false);
      });
      cv.addEventListener("mousemove", (ev) => {
        const [x, y] = local(ev), i = drag ? -1 : this.hit(x, y);
        cv.classList.toggle("on-segment", i >= 0);
        this.showTip(i, x, y);
      });
      cv.addEventListener("mouseleave", () => { this.tip.hidden = true; });
      this.plot.addEventListener("wheel", (ev) => {
        const [x] = local(ev);
        if (ev.ctrlKey || ev.metaKey) {
          ev.preventDefault();
          this.zoom(Math.exp(ev.deltaY * 0.002), this.toT(x));
        } else if (ev.shiftKey || Math.abs(ev.deltaX) > Math.abs(ev.deltaY)) {
          ev.preventDefault();
          const d = (ev.shiftKey ? ev.deltaY : ev.deltaX) * (this.view[1] - this.view[0]) / this.width();
          this.setView(this.view[0] + d, this.view[1] + d);
        }
      }, { passive: false });
    }
  }

  // Sections are set up when they come near the viewport: a page of hundreds of videos opens at once.
  const reports = new Map();
  const init = (section) => { if (!reports.has(section)) reports.set(section, new VideoReport(section)); };
  const sections = document.querySelectorAll("section.video");
  if ("IntersectionObserver" in window) {
    const io = new IntersectionObserver((entries) => entries.forEach((en) => {
      if (en.isIntersecting) { init(en.target); io.unobserve(en.target); }
    }), { rootMargin: "400px" });
    sections.forEach((s) => io.observe(s));
  } else {
    sections.forEach(init);
  }
  let resizing = false;
  window.addEventListener("resize", () => {
    if (resizing) return;
    resizing = true;
    requestAnimationFrame(() => { resizing = false; reports.forEach((r) => { r.draw(); r.placePlayhead(); r.renderRows(); }); });
  });
  window.staleReports = reports;  // for the browser test and for the curious, from the console
})();
