// stale detect --html: timeline, table and player of each video section. Plain DOM and canvas, no library.
// Every string from the data is shown through textContent (never innerHTML).
"use strict";
(function () {
  const ROW_H = 28;  // px, table row (matches .row in the CSS)
  const PAGE = JSON.parse(document.getElementById("page-data").textContent);

  const hue = (k) => (k * 137.508 + 210) % 360;  // golden-angle steps: neighbouring classes differ

  function colour(k, alpha) {
    return "hsla(" + hue(k).toFixed(1) + ",62%,46%," + alpha.toFixed(3) + ")";
  }

  // Seconds -> h:mm:ss.s, tenths rounded half up: the same text as stale_cli.detection.outputs.clock (tested to agree).
  function clock(t) {
    if (!Number.isFinite(t)) return "-:--:--.-";
    let tenths = Math.floor(Math.max(0, t) * 10 + 0.5);
    const h = Math.floor(tenths / 36000); tenths -= h * 36000;
    const m = Math.floor(tenths / 600); tenths -= m * 600;
    const s = Math.floor(tenths / 10);
    return h + ":" + String(m).padStart(2, "0") + ":" + String(s).padStart(2, "0") + "." + (tenths - s * 10);
  }
  window.staleClock = clock;

  function bytes(b64) {
    const bin = atob(b64), out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }

  function hslRgb(k) {  // colour(k) as [r, g, b] 0-255
    const h = hue(k) / 360, sat = 0.62, l = 0.46;
    const q = l + sat - l * sat, p = 2 * l - q;
    const f = (t) => {
      t = (t + 1) % 1;
      const x = t < 1 / 6 ? p + (q - p) * 6 * t : t < 1 / 2 ? q : t < 2 / 3 ? p + (q - p) * (2 / 3 - t) * 6 : p;
      return Math.round(x * 255);
    };
    return [f(h + 1 / 3), f(h), f(h - 1 / 3)];
  }

  const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;
  function rgba(r, g, b) {  // an opaque pixel as ImageData's Uint32 view holds it
    return LITTLE_ENDIAN ? ((255 << 24) | (b << 16) | (g << 8) | r) >>> 0 : ((r << 24) | (g << 16) | (b << 8) | 255) >>> 0;
  }

  // Curves at halving resolutions (level L: the max of 2^L rows), so a redraw reads about one row per pixel
  // column whatever the zoom: 2 hours at 4 fps cost what 5 minutes do.
  function pyramid(times, values) {
    const levels = [{ t: times, v: values }];
    while (levels[levels.length - 1].t.length > 256) {
      const prev = levels[levels.length - 1], n = Math.ceil(prev.t.length / 2), last = prev.t.length - 1;
      const t = new Float64Array(n);
      for (let i = 0; i < n; i++) t[i] = (prev.t[2 * i] + prev.t[Math.min(2 * i + 1, last)]) / 2;
      const v = prev.v.map((src) => {
        const out = new Uint8Array(n);
        for (let i = 0; i < n; i++) out[i] = Math.max(src[2 * i], src[Math.min(2 * i + 1, last)]);
        return out;
      });
      levels.push({ t, v });
    }
    return levels;
  }

  function lowerBound(t, x) {
    let lo = 0, hi = t.length;
    while (lo < hi) { const mid = (lo + hi) >> 1; if (t[mid] < x) lo = mid + 1; else hi = mid; }
    return lo;
  }

  const SHADES = 10;  // bars are drawn in this many score shades, one path per (shade, class)
  const SUBROW_H = 9;  // px, each sub-row of alternatives under a lane's kept segments
  const MAX_SUBROWS = 8;  // alternatives past this many rows share the row that frees first
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
      this.score = new Float64Array(n); this.parent = new Int32Array(n);
      d.segments.forEach((g, i) => {
        this.k[i] = g[0]; this.s[i] = g[1]; this.e[i] = g[2]; this.score[i] = g[3];
        this.parent[i] = g.length > 4 ? g[4] : i;
      });
      // Kept segments lead; an overlapping alternative (parent: the kept one it overlaps) shows only with "all".
      this.kept = 0;
      for (let i = 0; i < n; i++) if (this.parent[i] === i) this.kept++;
      this.byClass = Array.from({ length: this.K }, () => []);
      for (let i = 0; i < n; i++) this.byClass[this.k[i]].push(i);
      this.curves = null;
      if (d.curves) {
        const c = d.curves;
        const values = c.values.map(bytes), T = values.length ? values[0].length : 0;
        const times = c.times ? Float64Array.from(c.times) : Float64Array.from({ length: T }, (_, i) => c.t0 + i * c.step);
        this.curves = pyramid(times, values);
      }
      // The table opens best first, at the score floor the detections were reduced with.
      this.minScore = PAGE.floor || 0; this.showAll = false;
      this.view = [0, this.duration]; this.time = 0; this.selected = -1;
      this.sortKey = "score"; this.sortDir = -1;
      this.video = q("video.player");
      this.canvas = q("canvas.lanes"); this.axis = q("canvas.axis"); this.plot = q(".plot");
      this.playhead = q(".playhead"); this.tip = q(".tip"); this.clockEl = q(".clock");
      this.rows = q(".rows"); this.spacer = q(".spacer"); this.emptyEl = q(".empty"); this.shownEl = q(".shown");
      this.slider = q("input.min-score"); this.sliderOut = q("output.min-score-value");
      this.slider.value = this.minScore; this.sliderOut.textContent = this.minScore.toFixed(2);
      this.allBox = q("input.show-all"); this.laneEls = [...section.querySelectorAll(".lane")];
      this.layout();
      this.pool = [];
      section.querySelectorAll(".lane").forEach((el, k) => { el.querySelector(".swatch").style.background = colour(k, 0.9); });
      this.sortRows();
      this.bind(q);
      this.draw();
      this.setTime(0);
    }

    // ---- time <-> pixels ------------------------------------------------------------------------------------
    width() { return this.canvas.clientWidth || 1; }
    baseH() { return parseFloat(getComputedStyle(this.section).getPropertyValue("--lane-h")) || 26; }
    laneH() { return this.baseH(); }  // a lane without sub-rows
    laneTop(k) { return this.tops[k]; }
    visible(i) { return this.score[i] >= this.minScore && (this.showAll || this.parent[i] === i); }

    // Sub-rows: each shown segment's row within its class lane, so that overlapping segments of one class read as
    // stacked choices rather than as one chopped bar. Kept segments come first (row 0 unless they overlap each
    // other), with "all" their alternatives below them; each goes to the first row free at its start, in order
    // of start. A lane is as tall as its rows need.
    layout() {
      this.row = new Int32Array(this.n);
      const depth = new Int32Array(this.K).fill(1), first = new Int32Array(this.K);
      const pack = (list) => {
        const ends = Array.from({ length: this.K }, () => []);  // per class: end time of each row of this pack
        list.sort((i, j) => this.s[i] - this.s[j]);
        for (const i of list) {
          const k = this.k[i], rows = ends[k];
          let r = rows.findIndex((end) => end <= this.s[i]);
          if (r < 0) r = rows.length < MAX_SUBROWS ? rows.length : rows.indexOf(Math.min(...rows));
          rows[r] = Math.max(rows[r] || 0, this.e[i]);
          this.row[i] = first[k] + r;
          depth[k] = Math.max(depth[k], first[k] + r + 1);
        }
      };
      const kept = [], rest = [];
      for (let i = 0; i < this.n; i++) if (this.visible(i)) (this.parent[i] === i ? kept : rest).push(i);
      pack(kept);
      for (let k = 0; k < this.K; k++) first[k] = depth[k];
      if (this.showAll) pack(rest);
      const base = this.baseH();
      this.depth = depth; this.tops = new Float64Array(this.K + 1); this.heights = new Float64Array(this.K);
      for (let k = 0; k < this.K; k++) {
        this.heights[k] = base + (depth[k] - 1) * SUBROW_H;
        this.tops[k + 1] = this.tops[k] + this.heights[k];
        if (this.laneEls[k]) this.laneEls[k].style.height = this.heights[k] + "px";
      }
      this.layerKey = null;
    }

    // The bar of segment i: [y, height] in CSS pixels.
    barY(i) {
      const base = this.baseH(), pad = Math.round(base * 0.28), h = base - 2 * pad, top = this.tops[this.k[i]];
      const r = this.row[i];
      return r === 0 ? [top + pad, h] : [top + pad + h + 2 + (r - 1) * SUBROW_H, SUBROW_H - 3];
    }
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
      const laneH = this.baseH(), H = this.tops[this.K];
      this.canvas.style.height = H + "px";
      for (const [cv, h] of [[this.canvas, H], [this.axis, this.axis.clientHeight]]) {
        const w = Math.round(W * dpr), hh = Math.round(h * dpr);
        if (cv.width !== w || cv.height !== hh) { cv.width = w; cv.height = hh; }
      }
      const ctx = this.canvas.getContext("2d");
      // Lanes and curves are one pixel layer, kept while the view and size stay (the slider and selection
      // redraw only the bars); the bars go over it.
      const key = [this.view[0], this.view[1], this.canvas.width, this.canvas.height, laneH, ...this.depth].join();
      if (!this.layer || this.layerKey !== key) { this.layer = this.curveLayer(ctx, dpr); this.layerKey = key; }
      ctx.setTransform(1, 0, 0, 1, 0, 0);
      ctx.putImageData(this.layer, 0, 0);
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      // Bars take the middle of the lane so the curve shows above and below them; an outline separates overlaps.
      // One path per (score shade, class), shades drawn lowest first: the best of overlapping bars is on top.
      const [a, b] = this.view, sx = W / (b - a);
      const fills = new Map(), edges = new Map();
      for (let i = 0; i < this.n; i++) {
        if (!this.visible(i) || this.e[i] < a || this.s[i] > b) continue;
        // Whole device pixels: axis-aligned rectangles then fill without anti-aliasing, the fast path.
        const x0 = Math.round((this.s[i] - a) * sx * dpr) / dpr, [y, h] = this.barY(i);
        const x1 = Math.max(Math.round((this.e[i] - a) * sx * dpr) / dpr, x0 + 2);
        const key = Math.min(Math.floor(this.score[i] * SHADES), SHADES - 1) * this.K + this.k[i];
        if (!fills.has(key)) { fills.set(key, new Path2D()); edges.set(key, new Path2D()); }
        fills.get(key).rect(x0, y, x1 - x0, h);
        if (x1 - x0 > 4) edges.get(key).rect(x0 + 0.5, y + 0.5, x1 - x0 - 1, h - 1);
      }
      ctx.lineWidth = 1;
      for (const key of [...fills.keys()].sort((p, q) => p - q)) {
        const k = key % this.K, shade = (Math.floor(key / this.K) + 0.5) / SHADES;
        ctx.fillStyle = colour(k, 0.15 + 0.85 * shade); ctx.fill(fills.get(key));
        ctx.strokeStyle = colour(k, 0.9); ctx.stroke(edges.get(key));
      }
      if (this.selected >= 0 && this.visible(this.selected)) {
        const i = this.selected, x0 = (this.s[i] - a) * sx, x1 = Math.max((this.e[i] - a) * sx, x0 + 2);
        const [y, h] = this.barY(i);
        ctx.strokeStyle = "#111"; ctx.lineWidth = 2;
        ctx.strokeRect(x0, y - 1, x1 - x0, h + 2);
      }
      this.drawAxis(dpr, W);
    }

    // Lane stripes and each class's probability curve (an area and its top edge), written pixel by pixel at
    // device resolution: one value per pixel column (the max of the rows in it, read from the pyramid level with
    // about one row per column; interpolated between rows when zoomed in further). Canvas paths of thousands of
    // anti-aliased vertices cost 25 ms a frame to rasterise on a 2-hour video; this costs about a millisecond.
    // Heights are on a square-root scale (SQRT[byte]): a score of 0.1 reaches a third of the lane, so the low
    // scores where most detections of the training-free mode live are read, not guessed.
    curveLayer(ctx, dpr) {
      const Wd = this.canvas.width, Hd = this.canvas.height, img = ctx.createImageData(Wd, Hd);
      const px = new Uint32Array(img.data.buffer), white = rgba(255, 255, 255), stripe = rgba(248, 249, 251);
      const laneOf = (y) => lowerBound(this.tops, y / dpr + 1e-9) - 1;
      for (let y = 0; y < Hd; y++) px.fill(laneOf(y + 0.5) % 2 ? stripe : white, y * Wd, (y + 1) * Wd);
      if (!this.curves) return img;
      const [a, b] = this.view, dt = (b - a) / Wd;
      const level = this.curves[Math.min(Math.floor(Math.log2(Math.max(
        (lowerBound(this.curves[0].t, b) - lowerBound(this.curves[0].t, a)) / Wd, 1))), this.curves.length - 1)];
      const t = level.t, T = t.length, col = new Float32Array(Wd);
      for (let k = 0; k < this.K && k < level.v.length; k++) {
        const v = level.v[k];
        let i = Math.max(lowerBound(t, a) - 1, 0);
        for (let c = 0; c < Wd; c++) {  // the column's value: max of its rows, else interpolated; -1 outside the rows
          const c0 = a + c * dt, c1 = c0 + dt;
          while (i < T && t[i] < c0) i++;
          let best = -1, j = i;
          for (; j < T && t[j] < c1; j++) if (v[j] > best) best = v[j];
          if (best < 0 && i > 0 && i < T) {
            const m = c0 + dt / 2, f = (m - t[i - 1]) / (t[i] - t[i - 1]);
            best = v[i - 1] + (v[i] - v[i - 1]) * Math.min(Math.max(f, 0), 1);
          }
          col[c] = best;
        }
        const bg = k % 2 ? [248, 249, 251] : [255, 255, 255], rgb = hslRgb(k);
        const area = rgba(...rgb.map((x, n) => Math.round(bg[n] + (x - bg[n]) * 0.34)));
        const edge = rgba(...rgb.map((x) => Math.round(x * 0.62)));
        const base = Math.round(this.tops[k + 1] * dpr) - 1, amp = this.heights[k] * dpr - 3 * dpr;
        let prevTop = -1;
        for (let c = 0; c < Wd; c++) {
          if (col[c] < 0) { prevTop = -1; continue; }
          const top = Math.round(base - Math.sqrt(col[c] / 255) * amp);
          for (let y = top + 1; y <= base; y++) px[y * Wd + c] = area;
          const y0 = prevTop < 0 ? top : Math.min(top, prevTop + 1), y1 = prevTop < 0 ? top : Math.max(top, prevTop - 1);
          for (let y = y0; y <= y1 + (dpr > 1 ? 1 : 0); y++) px[y * Wd + c] = edge;
          prevTop = top;
        }
      }
      return img;
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
        ctx.fillText(clock(t), x + 3, H / 2 - 2);
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
      this.clockEl.textContent = clock(t) + " / " + clock(this.duration);
      this.markNow();
    }

    // Rows in view whose segment contains the playhead are marked.
    markNow() {
      for (const row of this.pool) {
        const i = row.style.display === "none" ? -1 : parseInt(row.dataset.seg, 10);
        row.classList.toggle("now", i >= 0 && this.s[i] <= this.time && this.time < this.e[i]);
      }
    }

    // n / p: the next / previous segment in the table's order, played; space: play or pause.
    key(ev) {
      if (ev.key === " " && this.video) {
        ev.preventDefault();
        if (this.video.paused) { const p = this.video.play(); if (p) p.catch(() => {}); } else this.video.pause();
        return;
      }
      if (ev.key !== "n" && ev.key !== "p") return;
      if (!this.order.length) return;
      let r = this.order.indexOf(this.selected) + (ev.key === "n" ? 1 : -1);
      r = Math.min(Math.max(r, 0), this.order.length - 1);
      this.scrollToRow(r);
      this.select(this.order[r], true);
    }

    scrollToRow(r) {
      if (r * ROW_H < this.rows.scrollTop || (r + 1) * ROW_H > this.rows.scrollTop + this.rows.clientHeight) {
        this.rows.scrollTop = r * ROW_H - this.rows.clientHeight / 2;
      }
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
          " (missing, moved, or in a format it does not decode, such as MPEG-4 Part 2: re-encode it as H.264 MP4 or " +
          "WebM). The timeline and the table still work.";
        el.hidden = false;
      });
    }

    // ---- hit testing ----------------------------------------------------------------------------------------
    hit(x, y) {
      const k = lowerBound(this.tops, y + 1e-9) - 1;
      if (k < 0 || k >= this.K) return -1;
      const t = this.toT(x), tol = 3 * (this.view[1] - this.view[0]) / this.width();
      let found = -1, near = Infinity;
      for (const i of this.byClass[k]) {
        if (!this.visible(i) || t < this.s[i] - tol || t > this.e[i] + tol) continue;
        const [by, bh] = this.barY(i), off = y < by ? by - y : y > by + bh ? y - by - bh : 0;  // its sub-row first
        if (off < near || (off === near && this.score[i] > this.score[found])) { found = i; near = off; }
      }
      return found;
    }

    showTip(i, x, y) {
      if (i < 0) { this.tip.hidden = true; return; }
      this.tip.textContent = PAGE.classes[this.k[i]] + "  " + clock(this.s[i]) + " – " + clock(this.e[i]) +
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
      const leads = [], under = new Map();  // with "all": each kept segment's alternatives right under it
      for (let i = 0; i < this.n; i++) {
        if (!this.visible(i)) continue;
        const p = this.parent[i];
        if (p === i || p < 0 || !this.visible(p)) leads.push(i);
        else { if (!under.has(p)) under.set(p, []); under.get(p).push(i); }
      }
      leads.sort((i, j) => { const a = key(i), b = key(j); return (a < b ? -1 : a > b ? 1 : this.s[i] - this.s[j]) * dir; });
      const idx = [];
      for (const i of leads) {
        idx.push(i);
        if (under.has(i)) idx.push(...under.get(i).sort((p, q) => this.score[q] - this.score[p]));
      }
      this.order = idx;
      this.section.querySelectorAll(".thead button").forEach((btn) => {
        btn.setAttribute("aria-sort", btn.dataset.key === this.sortKey ? (dir > 0 ? "ascending" : "descending") : "none");
      });
      this.spacer.style.height = idx.length * ROW_H + "px";
      this.emptyEl.hidden = idx.length > 0;
      this.shownEl.textContent = idx.length + " of " + (this.showAll ? this.n : this.kept) + " segments shown";
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
        row.classList.toggle("now", this.s[i] <= this.time && this.time < this.e[i]);
        row.classList.toggle("alt", this.parent[i] !== i);
        cells[0].querySelector(".dot").style.background = colour(this.k[i], 0.9);
        cells[0].querySelector("b").textContent = PAGE.classes[this.k[i]];
        cells[0].title = PAGE.classes[this.k[i]];
        cells[1].textContent = clock(this.s[i]);
        cells[2].textContent = clock(this.e[i]);
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
        this.layout();
        this.sortRows();
        this.draw();
      });
      this.allBox.addEventListener("change", () => {
        this.showAll = this.allBox.checked;
        this.layout();
        this.sortRows();
        this.draw();
        this.placePlayhead();
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
        this.scrollToRow(r);
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
  const init = (section) => {
    if (reports.has(section)) return;
    const t0 = performance.now();
    reports.set(section, new VideoReport(section));
    performance.measure("stale:init " + section.id, { start: t0, end: performance.now() });
  };
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
  // Keys go to the video section under the last click (or the first one), never while typing in a control.
  let current = null;
  document.addEventListener("mousedown", (ev) => {
    const section = ev.target.closest && ev.target.closest("section.video");
    if (section && reports.has(section)) current = reports.get(section);
  });
  document.addEventListener("keydown", (ev) => {
    if (ev.ctrlKey || ev.metaKey || ev.altKey || (ev.target.closest && ev.target.closest("input, button, video"))) return;
    const r = current || reports.values().next().value;
    if (r) r.key(ev);
  });
  window.staleReports = reports;  // for the browser test and for the curious, from the console
})();
