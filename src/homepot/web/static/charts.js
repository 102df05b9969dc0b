// Line charts drawn as inline SVG: no library, scales to its container's width.
const SVG = "http://www.w3.org/2000/svg";
const DEFAULT_WIDTH = 600;
const HEIGHT = 190;
const PAD = { top: 12, right: 14, bottom: 26, left: 56 };
// Isolated samples are drawn as dots when there are few enough to tell apart.
const MAX_DOTTED_POINTS = 60;
// The insights' expected bands come in 5-minute bins; more than three missing break them.
const BAND_GAP_MS = 15 * 60000;

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
 * options: {since, until, unit, max (fixed top of the scale, e.g. 100 for percentages), label,
 *           band: {times, lower, upper, expected} (the expected band, drawn behind the lines)}
 */
export function lineChart(container, series, options = {}) {
  charts.set(container, [series, options]);
  observer.observe(container);
  const start = new Date(options.since).getTime();
  const end = new Date(options.until).getTime();
  const span = Math.max(end - start, 1);
  const values = series.flatMap((s) => s.points.map((p) => p[1]).filter(isNumber));
  const label = options.label || series.map((s) => s.name).join(", ");
  const band = options.band ? bandInside(options.band, start, end) : null;
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
  const bandTop = band ? band.upper.filter(isNumber) : [];
  const top = options.max ?? niceMax(Math.max(...values, ...bandTop) * 1.1);
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

  // Band bins are 5 minutes wide whatever the chart's buckets: three missing ones break it.
  if (band) drawBand(root, band, x, y, BAND_GAP_MS);

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
  if (series.length > 1 || band) {
    const legend = document.createElement("ul");
    legend.className = "legend";
    const entry = (swatchClass, text) => {
      const item = document.createElement("li");
      const swatch = document.createElement("span");
      swatch.className = `swatch ${swatchClass}`;
      item.append(swatch, text);
      legend.append(item);
    };
    series.forEach((s, index) => entry(`series-${index}`, s.name));
    if (band) entry("swatch-band", options.bandLabel || "expected range");
    container.append(legend);
  }
}

function isNumber(value) {
  return value !== null && value !== undefined && Number.isFinite(value);
}

// The band's bins inside [start, end], as {ms, lower, upper, expected} lists.
function bandInside(band, start, end) {
  const picked = { ms: [], lower: [], upper: [], expected: [] };
  band.times.forEach((when, index) => {
    const ms = new Date(when).getTime();
    if (ms < start || ms > end) return;
    picked.ms.push(ms);
    picked.lower.push(band.lower[index]);
    picked.upper.push(band.upper[index]);
    picked.expected.push(band.expected[index]);
  });
  return picked.upper.some(isNumber) ? picked : null;
}

// The expected range as shaded areas (one per run of bins that have one) and the expected
// value as a dashed line; a run breaks where the band is unknown or a gap exceeds maxGapMs.
function drawBand(root, band, x, y, maxGapMs) {
  const runs = [];
  let run = null;
  band.ms.forEach((ms, index) => {
    const lower = band.lower[index];
    const upper = band.upper[index];
    if (!isNumber(lower) || !isNumber(upper)) {
      run = null;
      return;
    }
    if (run === null || ms - run.at(-1).ms > maxGapMs) {
      run = [];
      runs.push(run);
    }
    run.push({ ms, lower, upper, expected: band.expected[index] });
  });
  for (const points of runs) {
    const top = points.map((p) => `${x(p.ms).toFixed(1)},${y(p.upper).toFixed(1)}`);
    const bottom = points.map((p) => `${x(p.ms).toFixed(1)},${y(p.lower).toFixed(1)}`).reverse();
    root.append(svg("path", { d: `M${top.join(" L")} L${bottom.join(" L")} Z`, class: "band" }));
    const expected = points.filter((p) => isNumber(p.expected));
    if (expected.length > 1) {
      const d = expected.map((p, i) => `${i ? "L" : "M"}${x(p.ms).toFixed(1)},${y(p.expected).toFixed(1)}`).join(" ");
      root.append(svg("path", { d, class: "expected" }));
    }
  }
}

const SPARK_HEIGHT = 56;

/**
 * A small chart of one metric around an anomaly episode: the observed 5-minute means over
 * the expected band, the episode's span shaded. No axes: the tooltip and the label carry
 * the numbers.
 * band: {times, observed, lower, upper, expected}; options: {since, until, highlight: [startMs,
 * endMs], unit, label}. The scale runs from just under the lowest value shown to just over
 * the highest.
 */
export function sparkline(container, band, options) {
  const start = new Date(options.since).getTime();
  const end = new Date(options.until).getTime();
  const span = Math.max(end - start, 1);
  const picked = [];
  band.times.forEach((when, index) => {
    const ms = new Date(when).getTime();
    if (ms >= start && ms <= end) picked.push({ ms, index });
  });
  const observed = picked.filter((p) => isNumber(band.observed[p.index]));
  container.replaceChildren();
  if (!observed.length) {
    const empty = document.createElement("span");
    empty.className = "muted small-text";
    empty.textContent = "no samples in this span";
    container.append(empty);
    return;
  }
  const width = Math.max(container.clientWidth || 220, 160);
  const pad = 3;
  // Scaled to what it shows (not from zero), so that a few points off normal stand out.
  const shown = picked.flatMap((p) => [band.observed[p.index], band.upper[p.index], band.lower[p.index]]).filter(isNumber);
  const margin = Math.max((Math.max(...shown) - Math.min(...shown)) * 0.08, 0.5);
  const bottom = Math.max(Math.min(...shown) - margin, 0);
  const top = Math.max(...shown) + margin;
  const x = (ms) => pad + ((ms - start) / span) * (width - 2 * pad);
  const y = (v) => pad + (SPARK_HEIGHT - 2 * pad) * (1 - (Math.min(Math.max(v, bottom), top) - bottom) / (top - bottom));
  const last = band.observed[observed.at(-1).index];
  const lastExpected = band.expected[observed.at(-1).index];
  const summary = `${options.label}: latest ${formatValue(last, options.unit)}` +
    (isNumber(lastExpected) ? `, expected ${formatValue(lastExpected, options.unit)}` : "");
  const root = svg("svg", { viewBox: `0 0 ${width} ${SPARK_HEIGHT}`, role: "img", "aria-label": summary, class: "sparkline-svg" });
  root.append(svg("title", {}, summary));
  if (options.highlight) {
    const [from, to] = options.highlight.map((ms) => Math.min(Math.max(ms, start), end));
    root.append(svg("rect", { x: x(from), y: 0, width: Math.max(x(to) - x(from), 2), height: SPARK_HEIGHT, class: "episode" }));
  }
  drawBand(
    root,
    {
      ms: picked.map((p) => p.ms),
      lower: picked.map((p) => band.lower[p.index]),
      upper: picked.map((p) => band.upper[p.index]),
      expected: picked.map((p) => band.expected[p.index]),
    },
    x,
    y,
    BAND_GAP_MS,
  );
  let path = "";
  let previous = null;
  for (const p of observed) {
    const command = previous === null || p.ms - previous > BAND_GAP_MS ? "M" : "L";
    path += `${command}${x(p.ms).toFixed(1)},${y(band.observed[p.index]).toFixed(1)} `;
    previous = p.ms;
  }
  root.append(svg("path", { d: path.trim(), class: "line series-0" }));
  container.append(root);
}
