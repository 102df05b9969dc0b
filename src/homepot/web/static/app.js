// Shared by every dashboard page: the session, API calls, the header, small DOM helpers.
const TOKEN_KEY = "homepot.token";
const USER_KEY = "homepot.user";

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function token() {
  return localStorage.getItem(TOKEN_KEY);
}

export function currentUser() {
  try {
    return JSON.parse(localStorage.getItem(USER_KEY) || "null");
  } catch {
    return null;
  }
}

export function isAdmin() {
  return currentUser()?.role === "admin";
}

export function canOperate() {
  const role = currentUser()?.role;
  return role === "admin" || role === "operator";
}

export function saveSession(accessToken, user) {
  localStorage.setItem(TOKEN_KEY, accessToken);
  localStorage.setItem(USER_KEY, JSON.stringify(user));
}

export function clearSession() {
  localStorage.removeItem(TOKEN_KEY);
  localStorage.removeItem(USER_KEY);
}

export function toLogin() {
  const next = location.pathname + location.search;
  location.assign(`/login?next=${encodeURIComponent(next)}`);
}

// The API's error detail as one readable sentence.
function describe(body, status) {
  const detail = body && body.detail;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    return detail
      .map((item) => {
        const where = (item.loc || []).filter((part) => part !== "body" && part !== "query");
        const message = String(item.msg).replace(/^Value error, /, "");
        return where.length ? `${where.join(".")}: ${message}` : message;
      })
      .join("; ");
  }
  return `request failed with status ${status}`;
}

export async function api(path, { method = "GET", body, query } = {}) {
  const url = new URL(path, location.origin);
  for (const [name, value] of Object.entries(query || {})) {
    if (value === undefined || value === null || value === "") continue;
    for (const item of Array.isArray(value) ? value : [value]) url.searchParams.append(name, item);
  }
  const headers = { Accept: "application/json" };
  const auth = token();
  if (auth) headers.Authorization = `Bearer ${auth}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(url, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 401) {
    clearSession();
    toLogin();
    throw new ApiError(401, "your session has ended; sign in again");
  }
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (!response.ok) throw new ApiError(response.status, describe(data, response.status));
  return data;
}

// Builds an element: el("a", {href: "/x", class: "y"}, "text", child...).
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

export function $(selector) {
  return document.querySelector(selector);
}

export function formatTime(value) {
  if (!value) return "—";
  const moment = new Date(value);
  const clock = { hour: "2-digit", minute: "2-digit", second: "2-digit" };
  if (moment.toDateString() === new Date().toDateString()) return moment.toLocaleTimeString(undefined, clock);
  return moment.toLocaleString(undefined, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
}

export function timeCell(value) {
  const title = value ? new Date(value).toLocaleString() : null;
  return el("td", { class: "nowrap" }, value ? el("time", { datetime: value, title }, formatTime(value)) : "—");
}

export function badge(value) {
  return el("span", { class: `badge badge-${String(value).replace(/[^a-z_]/gi, "")}` }, value);
}

// Marks a terminal or store of the simulation, so that its data is never taken for real.
export function simulatedBadge(what = "terminal") {
  return el(
    "span",
    { class: "badge badge-simulated", title: `A simulated ${what}: its analytics rows are recorded with source "simulated" and left out of exports and the quality gate` },
    "simulated",
  );
}

// A user id is a long hex string: show its start, the whole id on hover.
export function who(id) {
  if (!id) return "—";
  if (id === currentUser()?.id) return "you";
  return /^[0-9a-f]{32}$/.test(id) ? el("span", { title: id }, `user ${id.slice(0, 8)}…`) : id;
}

export function deviceLink(deviceId) {
  return deviceId ? el("a", { href: `/devices/${encodeURIComponent(deviceId)}` }, deviceId) : "—";
}

export function siteLink(siteId) {
  return el("a", { href: `/sites/${encodeURIComponent(siteId)}` }, siteId);
}

export function jobLink(jobId) {
  return el("a", { href: `/jobs/${encodeURIComponent(jobId)}` }, jobId);
}

// Replaces a table's body with rows, or one row saying there is nothing to show.
export function fillTable(table, rows, emptyText = "Nothing to show.") {
  const tbody = table.tBodies[0] || table.createTBody();
  const columns = table.tHead ? table.tHead.rows[0]?.cells.length || 1 : 1;
  tbody.replaceChildren(
    ...(rows.length ? rows : [el("tr", {}, el("td", { colspan: columns, class: "empty" }, emptyText))]),
  );
}

export function showStatus(node, message, kind = "info") {
  if (!node) return;
  node.textContent = message;
  node.dataset.kind = kind;
}

// A detail page whose subject does not exist shows only its message.
export function notFound(message) {
  pageStatus(message);
  for (const node of document.querySelectorAll("main > section, main > .columns, main > dl, main > p:not(#page-status)")) {
    node.hidden = true;
  }
}

export function pageStatus(message, kind = "error") {
  showStatus($("#page-status"), message, kind);
}

// Limit/offset pager under a table; onPage(offset) loads that page.
export function renderPager(nav, { total, limit, offset }, onPage) {
  if (!nav) return;
  const first = total ? offset + 1 : 0;
  const last = Math.min(offset + limit, total);
  nav.replaceChildren(
    el(
      "button",
      {
        type: "button",
        class: "secondary",
        "data-track": `${nav.id}-previous`,
        disabled: offset <= 0,
        onclick: () => onPage(Math.max(0, offset - limit)),
      },
      "Previous",
    ),
    el("span", { class: "muted" }, `${first}–${last} of ${total}`),
    el(
      "button",
      {
        type: "button",
        class: "secondary",
        "data-track": `${nav.id}-next`,
        disabled: offset + limit >= total,
        onclick: () => onPage(offset + limit),
      },
      "Next",
    ),
  );
}

export function debounce(fn, ms = 300) {
  let timer;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

// Keeps filter values in the address bar so a reload or a shared link shows the same list.
export function syncQuery(values) {
  const url = new URL(location.href);
  for (const [name, value] of Object.entries(values)) {
    if (value === undefined || value === null || value === "") url.searchParams.delete(name);
    else url.searchParams.set(name, value);
  }
  history.replaceState(null, "", url);
}

export function queryParam(name) {
  return new URL(location.href).searchParams.get(name);
}

// Every page but /login: needs a session, fills in the header. Resolves to the user.
export async function startPage() {
  if (!token()) {
    toLogin();
    return new Promise(() => {});
  }
  let user = currentUser();
  try {
    user = await api("/api/v1/users/me");
    localStorage.setItem(USER_KEY, JSON.stringify(user));
  } catch (error) {
    if (error.status === 401) return new Promise(() => {});
    pageStatus(`Could not load your account: ${error.message}`);
  }
  $("#user-email").textContent = user?.email || "";
  $("#user-role").textContent = user?.role || "";
  const analyticsLink = $("#nav-analytics");
  if (analyticsLink) {
    if (user?.role === "admin") analyticsLink.hidden = false;
    else analyticsLink.closest("li").remove();
  }
  $("#logout").addEventListener("click", () => {
    clearSession();
    location.assign("/login");
  });
  return user;
}
