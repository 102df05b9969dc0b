// Line charts drawn as inline SVG: no library, scales to its container's width.
const SVG = "http://www.w3.org/2000/svg";
const DEFAULT_WIDTH = 600;
const HEIGHT = 190;
const PAD = { top: 12, right: 14, bottom: 26, left: 56 };
// Isolated samples are drawn as dots when there are few enough to tell apart.
const MAX_DOTTED_POINTS = 60;

function svg(tag, attributes = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

// The top of the scale: four grid steps of 1, 2, 2.5 or 5 times a power of ten.
function niceMax(value) {
  if (value <= 0) return 1;
  const rawStep = value / 4;
  const magnitude = 10 ** Math.floor(Math.log10(rawStep));
  for (const step of [1, 2, 2.5, 5, 10]) {
    if (rawStep <= step * magnitude) return step * magnitude * 4;
  }
  return 40 * magnitude;
}

function formatValue(value, unit) {
  const rounded = Math.abs(value) >= 100 ? Math.round(value) : Math.round(value * 100) / 100;
  return unit ? `${rounded}${unit}` : String(rounded);
}

function timeLabel(ms, spanMs) {
  const moment = new Date(ms);
  if (spanMs > 2 * 86400000) return moment.toLocaleDateString(undefined, { month: "short", day: "numeric" });
  return moment.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });
}

const charts = new WeakMap();
const widths = new WeakMap();
const observer = new ResizeObserver((entries) => {
  for (const entry of entries) {
    const width = Math.round(entry.contentRect.width);
    const before = widths.get(entry.target);
    widths.set(entry.target, width);
    if (before !== undefined && before !== width && charts.has(entry.target)) {
      const [series, options] = charts.get(entry.target);
      // Redrawn on the next frame: redrawing inside the callback would resize the
      // container again within the same observation (a "ResizeObserver loop").
      requestAnimationFrame(() => lineChart(entry.target, series, options));
    }
  }
});

/**
 * Draws series into container.
 * series: [{name, points: [[Date|string, number|null], ...]}]; the colour comes from its index.
 * options: {since, until, unit, max (fixed top of the scale, e.g. 100 for percentages), label}
 */
export function lineChart(container, series, options = {}) {
  charts.set(container, [series, options]);
  observer.observe(container);
  const start = new Date(options.since).getTime();
  const end = new Date(options.until).getTime();
  const span = Math.max(end - start, 1);
  const values = series.flatMap((s) => s.points.map((p) => p[1]).filter((v) => v !== null && v !== undefined));
  const label = options.label || series.map((s) => s.name).join(", ");
  container.replaceChildren();
  if (!values.length) {
    const empty = document.createElement("p");
    empty.className = "chart-empty";
    empty.textContent = "No samples in this period.";
    container.append(empty);
    return;
  }
  // Drawn at the container's own width so that text keeps its size; redrawn on resize.
  const WIDTH = Math.max(container.clientWidth || DEFAULT_WIDTH, 240);
  const top = options.max ?? niceMax(Math.max(...values) * 1.1);
  const plotW = WIDTH - PAD.left - PAD.right;
  const plotH = HEIGHT - PAD.top - PAD.bottom;
  const x = (ms) => PAD.left + ((ms - start) / span) * plotW;
  const y = (v) => PAD.top + plotH - (Math.min(v, top) / top) * plotH;

  const root = svg("svg", {
    viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
    role: "img",
    "aria-label": `${label}: ${values.length} points, latest ${formatValue(values[values.length - 1], options.unit)}`,
    class: "chart-svg",
  });
  root.append(svg("title", {}, label));

  for (let i = 0; i <= 4; i += 1) {
    const value = (top / 4) * i;
    const gy = y(value);
    root.append(svg("line", { x1: PAD.left, x2: WIDTH - PAD.right, y1: gy, y2: gy, class: "grid" }));
    root.append(svg("text", { x: PAD.left - 6, y: gy + 4, class: "tick", "text-anchor": "end" }, formatValue(value, options.unit)));
  }
  // As many time labels as fit, about 90 px apart.
  const steps = Math.max(1, Math.min(6, Math.floor(plotW / 90)));
  for (let i = 0; i <= steps; i += 1) {
    const ms = start + (span / steps) * i;
    const anchor = i === 0 ? "start" : i === steps ? "end" : "middle";
    root.append(svg("text", { x: x(ms), y: HEIGHT - 8, class: "tick", "text-anchor": anchor }, timeLabel(ms, span)));
  }

  series.forEach((s, index) => {
    // A gap longer than three buckets breaks the line instead of bridging missing data.
    const gap = (options.bucketSeconds || 60) * 3000;
    let path = "";
    let previous = null;
    for (const [when, value] of s.points) {
      if (value === null || value === undefined) continue;
      const ms = new Date(when).getTime();
      const command = previous === null || ms - previous > gap ? "M" : "L";
      path += `${command}${x(ms).toFixed(1)},${y(value).toFixed(1)} `;
      previous = ms;
    }
    root.append(svg("path", { d: path.trim(), class: `line series-${index}` }));
    const drawn = s.points.filter((p) => p[1] !== null && p[1] !== undefined);
    if (drawn.length <= MAX_DOTTED_POINTS) {
      for (const [when, value] of drawn) {
        const dot = svg("circle", { cx: x(new Date(when).getTime()), cy: y(value), r: 2.5, class: `dot series-${index}` });
        dot.append(svg("title", {}, `${s.name} ${formatValue(value, options.unit)} at ${new Date(when).toLocaleString()}`));
        root.append(dot);
      }
    }
  });

  container.append(root);
  if (series.length > 1) {
    const legend = document.createElement("ul");
    legend.className = "legend";
    series.forEach((s, index) => {
      const item = document.createElement("li");
      item.innerHTML = `<span class="swatch series-${index}"></span>`;
      item.append(s.name);
      legend.append(item);
    });
    container.append(legend);
  }
}
