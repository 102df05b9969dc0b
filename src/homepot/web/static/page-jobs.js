import { $, api, badge, canOperate, debounce, deviceLink, el, fillTable, jobLink, pageStatus, queryParam, renderPager, showStatus, startPage, syncQuery, timeCell, who } from "/static/app.js";

const LIMIT = 25;
const form = $("#job-form");
const status = $("#job-status");
const PAYLOAD_HINTS = {
  restart: "Usually empty: {}",
  health_check: "Usually empty: {}",
  config_change: 'The keys to change, e.g. {"config": {"volume": 3}}',
  firmware_update: 'The version to install, e.g. {"version": "2.4.1"}',
};

function scheduleText(job) {
  if (job.schedule === "now") return "now";
  const when = job.scheduled_for ? new Date(job.scheduled_for).toLocaleString() : "";
  return job.schedule === "recommended_window" ? `recommended window ${when}` : `window ${when}`;
}

function targetLink(job) {
  const id = encodeURIComponent(job.target_id);
  if (job.target_type === "device") return el("a", { href: `/devices/${id}` }, job.target_id);
  if (job.target_type === "site") return el("a", { href: `/sites/${id}` }, job.target_id);
  return `type ${job.target_id}`;
}

async function load(offset = 0) {
  const jobStatus = $("#job-status-filter").value;
  syncQuery({ status: jobStatus, offset: offset || "" });
  try {
    const page = await api("/api/v1/jobs", { query: { status: jobStatus, limit: LIMIT, offset } });
    fillTable(
      $("#jobs-table"),
      page.items.map((job) =>
        el(
          "tr",
          {},
          el("td", { class: "nowrap" }, jobLink(job.job_id)),
          el("td", {}, job.job_type),
          el("td", {}, targetLink(job)),
          el("td", {}, scheduleText(job)),
          el("td", {}, badge(job.status)),
          timeCell(job.created_at),
          el("td", {}, who(job.created_by)),
        ),
      ),
      "No jobs match.",
    );
    renderPager($("#jobs-pager"), page, load);
  } catch (error) {
    pageStatus(`Could not load jobs: ${error.message}`);
  }
}

function payloadFromForm() {
  const text = $("#job-payload").value.trim() || "{}";
  let payload;
  try {
    payload = JSON.parse(text);
  } catch (error) {
    throw new Error(`the payload is not valid JSON (${error.message})`);
  }
  if (payload === null || typeof payload !== "object" || Array.isArray(payload)) {
    throw new Error("the payload must be a JSON object, e.g. {}");
  }
  return payload;
}

const TARGET_EXAMPLES = { device: "pos-terminal-001", site: "site-001", device_type: "pos_terminal" };

function showTargetExample() {
  $("#job-target").placeholder = TARGET_EXAMPLES[$("#job-target-type").value];
}

function showHint() {
  $("#job-payload-hint").textContent = PAYLOAD_HINTS[$("#job-type").value] || "";
}

// The expected success of the job being composed, and its riskiest targets, from
// GET /api/v1/insights/job-success; asked again whenever the job type or the target changes.
const RISKY_SHOWN = 5;
let oddsRequest = 0;

function percent(value) {
  return `${Math.round(value * 100)} %`;
}

function showOdds(message, risky = [], level = "") {
  $("#job-odds-summary").textContent = message;
  const list = $("#job-odds-risky");
  list.replaceChildren(
    ...risky.map((item) =>
      el(
        "li",
        { "data-device": item.device_id },
        deviceLink(item.device_id),
        ` ${percent(item.probability)}: `,
        item.reasons.join("; "),
      ),
    ),
  );
  list.hidden = risky.length === 0;
  $("#job-odds").dataset.level = level;
}

async function updateOdds() {
  const request = ++oddsRequest;
  const targetType = $("#job-target-type").value;
  const targetId = $("#job-target").value.trim();
  const jobType = $("#job-type").value;
  if (targetType === "device_type") {
    showOdds("The expected success rate is estimated for one device or a site's devices.");
    return;
  }
  if (!targetId) {
    showOdds("Enter a device or a site to see how likely the job is to succeed.");
    return;
  }
  showOdds("Estimating the chance of success…");
  const target = targetType === "device" ? { device_id: targetId } : { site_id: targetId };
  try {
    const odds = await api("/api/v1/insights/job-success", { query: { job_type: jobType, ...target } });
    if (request !== oddsRequest) return;
    if (odds.items.length === 0) {
      showOdds(`Site ${targetId} has no devices: the job would do nothing.`);
      return;
    }
    const expected = odds.expected_success_rate;
    const count = odds.items.length;
    const fleet = odds.job_type_rate === null ? "" : ` (fleet: ${percent(odds.job_type_rate)})`;
    const summary =
      count === 1
        ? `Expected success: ${percent(expected)}${fleet}.`
        : `Expected success: ${percent(expected)} across ${count} devices${fleet}, about ` +
          `${Math.round((1 - expected) * count)} likely to fail. Riskiest targets:`;
    const level = expected < 0.8 ? "bad" : expected >= 0.95 ? "ok" : "";
    showOdds(summary, odds.items.slice(0, RISKY_SHOWN), level);
  } catch (error) {
    if (request !== oddsRequest) return;
    showOdds(`No estimate: ${error.message}`);
  }
}

const updateOddsSoon = debounce(updateOdds, 300);

await startPage();
if (!canOperate()) {
  const note = $("#job-form-note");
  note.textContent = "Read-only: creating jobs needs the operator or admin role.";
  note.hidden = false;
  for (const field of form.elements) field.disabled = true;
}
$("#job-status-filter").value = queryParam("status") || "";
$("#job-status-filter").addEventListener("change", () => load(0));
$("#job-type").addEventListener("change", showHint);
showHint();
$("#job-target-type").addEventListener("change", showTargetExample);
$("#job-target-type").addEventListener("change", updateOdds);
$("#job-type").addEventListener("change", updateOdds);
$("#job-target").addEventListener("input", updateOddsSoon);
form.addEventListener("submit", async (event) => {
  event.preventDefault();
  let body;
  try {
    body = {
      target_type: $("#job-target-type").value,
      target_id: $("#job-target").value.trim(),
      job_type: $("#job-type").value,
      schedule: $("#job-schedule").value,
      priority: Number($("#job-priority").value) || 5,
      payload: payloadFromForm(),
    };
    const description = $("#job-description").value.trim();
    if (description) body.description = description;
    if (!body.target_id) throw new Error("enter the target's id");
  } catch (error) {
    showStatus(status, `Not created: ${error.message}`, "error");
    return;
  }
  $("#job-submit").disabled = true;
  showStatus(status, "Creating…");
  try {
    const job = await api("/api/v1/jobs", { method: "POST", body });
    status.replaceChildren("Created ", jobLink(job.job_id), ` (${job.status}).`);
    status.dataset.kind = "ok";
    await load(0);
  } catch (error) {
    showStatus(status, `Not created: ${error.message}`, "error");
  } finally {
    $("#job-submit").disabled = false;
  }
});
await load(Number(queryParam("offset")) || 0);
