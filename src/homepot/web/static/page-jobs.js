import { $, api, badge, canOperate, el, fillTable, jobLink, pageStatus, queryParam, renderPager, showStatus, startPage, syncQuery, timeCell, who } from "/static/app.js";

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
