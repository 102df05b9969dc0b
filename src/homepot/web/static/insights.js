// Shared by the Insights page and the device page: how metrics and risk factors read.
import { el } from "/static/app.js";

// The metrics GET /insights/devices/{id} has bands for, in the bands' units.
export const METRICS = {
  cpu: { label: "CPU", unit: "%" },
  memory: { label: "memory", unit: "%" },
  disk: { label: "disk", unit: "%" },
  network_latency: { label: "network latency", unit: " ms" },
  error_rate: { label: "error rate", unit: "%" },
  transactions: { label: "transactions", unit: "/min" },
};

export function metricName(metric) {
  if (METRICS[metric]) return METRICS[metric].label;
  if (metric === "reporting") return "reporting (silence)";
  if (metric.startsWith("api:")) return `API ${metric.slice(4)}`;
  return metric;
}

// Without a model a factor is an episode: its metric, and its explanation, which begins with
// the metric's name; that name is then shown once.
export function factorItem(factor) {
  const name = metricName(factor.factor);
  if (factor.value.toLowerCase().startsWith(name.toLowerCase())) {
    return el("li", {}, el("strong", {}, factor.value.slice(0, name.length)), factor.value.slice(name.length));
  }
  return el("li", {}, el("strong", {}, name), " ", el("span", { class: "muted" }, factor.value));
}
