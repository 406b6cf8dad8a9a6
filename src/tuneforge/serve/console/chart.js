// A loss chart drawn as plain SVG (hand-written, no library): one polyline and one circle per point for each
// series (train_loss, valid_loss), axes with a few ticks, a legend. Every label is set with textContent.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const MAX_DOTS = 1000;  // a dot per point up to this many points per series

function svgEl(tag, attrs) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  return node;
}

function niceTicks(lo, hi, count) {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / count;
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

// points: [{step, train_loss?, valid_loss?}, ...]; draws into the <svg> `svg` (cleared first).
function drawLossChart(svg, points) {
  const width = 720, height = 280, left = 56, right = 16, top = 16, bottom = 40;
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("role", "img");
  const series = [
    { key: "train_loss", label: "train loss", cls: "train" },
    { key: "valid_loss", label: "validation loss", cls: "eval" },
  ].map((s) => ({ ...s, pts: points.filter((p) => Number.isFinite(p[s.key])).map((p) => [p.step, p[s.key]]) }));
  const all = series.flatMap((s) => s.pts);
  svg.setAttribute("aria-label", `loss curve, ${all.length} points`);
  if (!all.length) {
    const note = svgEl("text", { x: width / 2, y: height / 2, "text-anchor": "middle", class: "chart-empty" });
    note.textContent = "no loss recorded yet";
    svg.appendChild(note);
    return 0;
  }
  const lowest = (i) => all.reduce((m, p) => Math.min(m, p[i]), Infinity);  // no spread: runs can be long
  const highest = (i) => all.reduce((m, p) => Math.max(m, p[i]), -Infinity);
  let x0 = lowest(0), x1 = highest(0), y0 = lowest(1), y1 = highest(1);
  if (x1 === x0) { x0 -= 1; x1 += 1; }
  const pad = (y1 - y0) * 0.08 || Math.abs(y1) * 0.1 || 1;
  y0 -= pad; y1 += pad;
  const sx = (x) => left + ((x - x0) / (x1 - x0)) * (width - left - right);
  const sy = (y) => top + (1 - (y - y0) / (y1 - y0)) * (height - top - bottom);

  const axes = svgEl("g", { class: "axes" });
  axes.appendChild(svgEl("line", { x1: left, y1: height - bottom, x2: width - right, y2: height - bottom }));
  axes.appendChild(svgEl("line", { x1: left, y1: top, x2: left, y2: height - bottom }));
  for (const t of niceTicks(y0, y1, 5)) {
    axes.appendChild(svgEl("line", { x1: left, y1: sy(t), x2: width - right, y2: sy(t), class: "grid" }));
    const label = svgEl("text", { x: left - 6, y: sy(t) + 4, "text-anchor": "end" });
    label.textContent = String(Number(t.toPrecision(4)));
    axes.appendChild(label);
  }
  for (const t of niceTicks(x0, x1, 6).filter((t) => Number.isInteger(t))) {
    const label = svgEl("text", { x: sx(t), y: height - bottom + 16, "text-anchor": "middle" });
    label.textContent = String(t);
    axes.appendChild(label);
  }
  const xname = svgEl("text", { x: (left + width - right) / 2, y: height - 6, "text-anchor": "middle" });
  xname.textContent = "step";
  axes.appendChild(xname);
  svg.appendChild(axes);

  let legendX = left + 10;
  for (const s of series) {
    if (!s.pts.length) continue;
    const group = svgEl("g", { class: `series ${s.cls}`, "data-series": s.key });
    group.appendChild(svgEl("polyline", { points: s.pts.map(([x, y]) => `${sx(x)},${sy(y)}`).join(" ") }));
    for (const [x, y] of s.pts.length <= MAX_DOTS ? s.pts : []) {  // a long run: the line alone
      const dot = svgEl("circle", { cx: sx(x), cy: sy(y), r: 3, class: `pt pt-${s.cls}`, "data-step": x });
      const tip = svgEl("title");
      tip.textContent = `${s.label} at step ${x}: ${y}`;
      dot.appendChild(tip);
      group.appendChild(dot);
    }
    svg.appendChild(group);
    const key = svgEl("g", { class: `legend ${s.cls}` });
    key.appendChild(svgEl("rect", { x: legendX, y: top + 2, width: 12, height: 12 }));
    const text = svgEl("text", { x: legendX + 16, y: top + 12 });
    text.textContent = `${s.label} (${s.pts.length})`;
    key.appendChild(text);
    svg.appendChild(key);
    legendX += 170;
  }
  return all.length;
}

window.drawLossChart = drawLossChart;
