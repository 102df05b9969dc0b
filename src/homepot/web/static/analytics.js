/*
 * HOMEPOT dashboard tracker: page views (with time on the page), clicks, searches and form
 * submissions go to POST /api/v1/analytics/user-activities; uncaught errors go to
 * POST /api/v1/analytics/errors.
 *
 * Privacy: nothing is sent when the browser asks not to be tracked (Do Not Track), activity
 * is not sent when the user ticked "Don't track my activity" (#analytics-optout, stored on
 * the server), and no event ever carries what was typed into a field: a form submission is
 * the form's id, a click the element's id or data-track name. The one text recorded is a
 * search box's query, which is what a search event is.
 *
 * Delivery: events wait in a queue kept in sessionStorage (a reload loses nothing, and
 * events from before login wait for a token). The queue is sent on a short timer, when it
 * reaches a batch size, and when the page is hidden or left; every request is a keepalive
 * fetch, which the browser completes after the tab closes. Each event has a UUID, so an
 * event sent twice (a reload while its request was in flight) is stored once.
 */
(() => {
  "use strict";

  if (window.HomepotAnalytics) {
    return;
  }

  const API = "/api/v1";
  const TOKEN_KEY = "homepot.token";
  const SESSION_KEY = "homepot.analytics.session";
  const QUEUE_KEY = "homepot.analytics.queue";
  const TYPES = ["page_view", "click", "search", "form_submit"];
  // Keys the server refuses in extra_data because they would carry typed input.
  const VALUE_KEYS = new Set([
    "value", "values", "field_value", "field_values", "input_value", "form_data",
    "form_values", "password", "passwd", "secret", "token",
  ]);
  const INTERACTIVE = new Set([
    "A", "BUTTON", "INPUT", "SELECT", "TEXTAREA", "SUMMARY", "LABEL", "OPTION", "TR", "LI",
  ]);
  const ROLES = new Set(["button", "link", "tab", "menuitem", "checkbox", "switch", "option"]);

  // Tests (and a page that knows better) may tune these before the script runs.
  const config = Object.assign(
    {
      flushIntervalMs: 5000,
      batchSize: 20,
      maxBatch: 100, // the server's limit per request
      keepaliveBytes: 60 * 1024, // browsers allow 64 KiB of keepalive bodies in flight
      maxQueue: 1000,
      sessionIdleMs: 30 * 60 * 1000,
      searchDebounceMs: 600,
      maxErrorsPerPage: 20,
    },
    window.HomepotAnalyticsConfig || {},
  );

  const doNotTrack =
    navigator.doNotTrack === "1" || window.doNotTrack === "1" || navigator.msDoNotTrack === "1";

  // null: not known yet (no token, or the preference request has not answered).
  let optOut = null;
  let preferenceRequested = false;
  let queue = loadQueue();
  const inFlight = new Set();
  let timer = null;
  let errorsReported = 0;
  let visibleSince = document.visibilityState === "visible" ? performance.now() : null;
  let visitSession = null;
  let segments = 0;

  // -- storage ---------------------------------------------------------------------------

  function token() {
    let raw = null;
    try {
      raw = localStorage.getItem(TOKEN_KEY);
    } catch (_) {
      return null;
    }
    if (!raw) {
      return null;
    }
    if (raw.startsWith('"')) {
      try {
        raw = JSON.parse(raw);
      } catch (_) {
        return null;
      }
    }
    return typeof raw === "string" && raw ? raw : null;
  }

  /** The user id (``sub``) inside a JWT; only to keep users' events apart, not trusted. */
  function subject(bearer) {
    try {
      const payload = bearer.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      const sub = JSON.parse(atob(payload)).sub;
      return typeof sub === "string" ? sub : null;
    } catch (_) {
      return null;
    }
  }

  // Whose events these are: the logged-in user, or after a logout on this page the user
  // who was. Events from before any login (owner null) go to whoever logs in next.
  let knownOwner = null;

  function owner() {
    const bearer = token();
    if (bearer) {
      knownOwner = subject(bearer) || knownOwner;
    }
    return knownOwner;
  }

  function loadQueue() {
    try {
      const stored = JSON.parse(sessionStorage.getItem(QUEUE_KEY) || "[]");
      return Array.isArray(stored) ? stored : [];
    } catch (_) {
      return [];
    }
  }

  function saveQueue() {
    try {
      if (queue.length) {
        sessionStorage.setItem(QUEUE_KEY, JSON.stringify(queue));
      } else {
        sessionStorage.removeItem(QUEUE_KEY);
      }
    } catch (_) {
      // Storage full or denied: the queue still lives in memory for this page.
    }
  }

  function newId() {
    if (window.crypto && typeof crypto.randomUUID === "function") {
      return crypto.randomUUID();
    }
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
    return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
  }

  // -- session ---------------------------------------------------------------------------

  function readSession() {
    try {
      const stored = JSON.parse(localStorage.getItem(SESSION_KEY) || "null");
      if (stored && typeof stored.id === "string" && typeof stored.last_activity === "number") {
        return stored;
      }
    } catch (_) {
      // A damaged entry starts a new session.
    }
    return null;
  }

  /**
   * The current session id; a new one after config.sessionIdleMs without activity, or
   * when another user logs in on this browser.
   */
  function currentSession(touch) {
    const now = Date.now();
    const user = owner();
    let session = readSession();
    const otherUser = session && session.owner && user && session.owner !== user;
    if (!session || otherUser || now - session.last_activity > config.sessionIdleMs) {
      session = { id: newId(), last_activity: now, owner: user };
    } else if (touch && !session.owner && user) {
      session.owner = user;
      session.last_activity = now;
    } else if (touch) {
      session.last_activity = now;
    } else {
      return session.id;
    }
    try {
      localStorage.setItem(SESSION_KEY, JSON.stringify(session));
    } catch (_) {
      // Without storage every page starts its own session.
    }
    return session.id;
  }

  // -- events ----------------------------------------------------------------------------

  function tracking() {
    return !doNotTrack && optOut !== true;
  }

  function withoutValues(data) {
    if (!data || typeof data !== "object" || Array.isArray(data)) {
      return undefined;
    }
    const clean = {};
    for (const [key, inner] of Object.entries(data)) {
      if (VALUE_KEYS.has(key.toLowerCase())) {
        continue;
      }
      clean[key] =
        inner && typeof inner === "object" && !Array.isArray(inner) ? withoutValues(inner) : inner;
    }
    return Object.keys(clean).length ? clean : undefined;
  }

  function enqueue(item) {
    queue.push(item);
    if (queue.length > config.maxQueue) {
      queue.splice(0, queue.length - config.maxQueue);
    }
    saveQueue();
    const pending = queue.filter((entry) => entry.kind === "activity" && !inFlight.has(entry.id));
    if (pending.length >= config.batchSize) {
      flush(false);
    } else {
      schedule(config.flushIntervalMs);
    }
  }

  function schedule(delay) {
    if (timer === null) {
      timer = setTimeout(() => {
        timer = null;
        flush(false);
      }, delay);
    }
  }

  /**
   * Queue one activity. ``fields``: page_url, element_id, search_query, duration_ms,
   * extra_data, session_id (defaults: this page's path and the current session).
   */
  function track(type, fields) {
    if (!tracking() || !TYPES.includes(type)) {
      return false;
    }
    const given = fields || {};
    const event = {
      event_id: newId(),
      timestamp: new Date().toISOString(),
      activity_type: type,
      session_id: given.session_id || currentSession(true),
      page_url: (given.page_url || location.pathname).slice(0, 2048),
    };
    if (given.element_id) {
      event.element_id = String(given.element_id).slice(0, 256);
    }
    if (type === "search" && given.search_query) {
      event.search_query = String(given.search_query).slice(0, 512);
    }
    if (Number.isFinite(given.duration_ms)) {
      event.duration_ms = Math.max(0, Math.round(given.duration_ms));
    }
    const extra = withoutValues(given.extra_data);
    if (extra) {
      event.extra_data = extra;
    }
    enqueue({ kind: "activity", id: event.event_id, owner: owner(), body: event });
    return true;
  }

  function reportError(message, stack, context) {
    if (doNotTrack || errorsReported >= config.maxErrorsPerPage) {
      return;
    }
    errorsReported += 1;
    const body = {
      message: String(message || "Unknown error").slice(0, 10000),
      page_url: location.pathname.slice(0, 2048),
      user_agent: navigator.userAgent.slice(0, 512),
    };
    if (stack) {
      body.stack = String(stack).slice(0, 50000);
    }
    if (context) {
      body.context = context;
    }
    enqueue({ kind: "error", id: newId(), owner: owner(), body });
    flush(false);
  }

  // -- sending ---------------------------------------------------------------------------

  const encoder = new TextEncoder();

  function byteLength(value) {
    return encoder.encode(JSON.stringify(value)).length;
  }

  // After a failed send the timer waits longer each time (up to a minute), so that a
  // server that is down is not asked every few seconds by every open dashboard.
  let retryDelay = 0;

  function sendFailed() {
    retryDelay = Math.min(Math.max(retryDelay * 2, config.flushIntervalMs), 60000);
    schedule(retryDelay);
  }

  function post(path, body, bearer) {
    const text = JSON.stringify(body);
    return fetch(API + path, {
      method: "POST",
      keepalive: encoder.encode(text).length <= config.keepaliveBytes,
      credentials: "omit",
      headers: { Authorization: `Bearer ${bearer}`, "Content-Type": "application/json" },
      body: text,
    });
  }

  function forget(ids) {
    const gone = new Set(ids);
    queue = queue.filter((entry) => !gone.has(entry.id));
    saveQueue();
  }

  function release(ids) {
    for (const id of ids) {
      inFlight.delete(id);
    }
  }

  /** Event indexes a 422 names ({detail: [{loc: ["body", "events", 3, ...]}]}). */
  async function refusedIndexes(response) {
    try {
      const detail = (await response.json()).detail;
      if (Array.isArray(detail)) {
        return new Set(
          detail
            .map((error) => (Array.isArray(error.loc) && error.loc[1] === "events" ? error.loc[2] : null))
            .filter((index) => Number.isInteger(index)),
        );
      }
    } catch (_) {
      // Not JSON: the batch as a whole was refused.
    }
    return new Set();
  }

  async function sendBatch(batch, bearer) {
    const ids = batch.map((entry) => entry.id);
    let response;
    try {
      response = await post("/analytics/user-activities", { events: batch.map((e) => e.body) }, bearer);
    } catch (_) {
      release(ids); // offline, or the page is going away: the queue keeps them
      sendFailed();
      return;
    }
    release(ids);
    if (response.ok) {
      retryDelay = 0;
      forget(ids);
    } else if (response.status === 422) {
      const refused = await refusedIndexes(response);
      // Drop what the server will never take; the rest goes with the next flush.
      forget(refused.size ? ids.filter((_, index) => refused.has(index)) : ids);
    } else if (response.status === 413) {
      if (batch.length > 1) {
        const half = Math.ceil(batch.length / 2);
        await sendBatch(batch.slice(0, half), bearer);
        await sendBatch(batch.slice(half), bearer);
      } else {
        forget(ids);
      }
    } else {
      sendFailed(); // 401/403/5xx: keep the events; a new login or a later flush sends them
    }
    if (queue.some((entry) => !inFlight.has(entry.id))) {
      schedule(Math.max(config.flushIntervalMs, retryDelay));
    }
  }

  async function sendError(entry, bearer) {
    try {
      const response = await post("/analytics/errors", entry.body, bearer);
      inFlight.delete(entry.id);
      if (response.ok || response.status === 413 || response.status === 422) {
        forget([entry.id]);
      } else {
        sendFailed();
      }
    } catch (_) {
      inFlight.delete(entry.id);
      sendFailed();
    }
  }

  /**
   * Send what is queued. ``leaving``: the page is being hidden or closed, so send it all
   * now within the keepalive budget. Returns a promise that settles when the requests do.
   */
  function flush(leaving) {
    if (timer !== null) {
      clearTimeout(timer);
      timer = null;
    }
    const bearer = token();
    if (doNotTrack || !bearer) {
      return Promise.resolve();
    }
    const me = subject(bearer);
    if (queue.some((entry) => entry.owner && entry.owner !== me)) {
      // Left behind by another user's logout: never send them as this user's.
      queue = queue.filter((entry) => !entry.owner || entry.owner === me);
      saveQueue();
    }
    if (optOut === null && !preferenceRequested) {
      loadPreference();
    }
    if (optOut === true) {
      dropActivities();
    }
    const requests = [];
    let budget = config.keepaliveBytes;
    const ready = queue.filter((entry) => !inFlight.has(entry.id));
    for (const entry of ready.filter((e) => e.kind === "error")) {
      inFlight.add(entry.id);
      requests.push(sendError(entry, bearer));
    }
    if (optOut === false) {
      let activities = ready.filter((e) => e.kind === "activity");
      while (activities.length) {
        const batch = [];
        let size = 16;
        for (const entry of activities) {
          const entrySize = byteLength(entry.body) + 1;
          if (batch.length >= config.maxBatch || (batch.length && size + entrySize > config.keepaliveBytes)) {
            break;
          }
          batch.push(entry);
          size += entrySize;
        }
        if (leaving && size > budget && requests.length) {
          break; // over the browser's keepalive allowance: the queue keeps the rest
        }
        budget -= size;
        activities = activities.slice(batch.length);
        batch.forEach((entry) => inFlight.add(entry.id));
        requests.push(sendBatch(batch, bearer));
      }
    }
    if (!leaving && queue.some((entry) => !inFlight.has(entry.id))) {
      schedule(Math.max(config.flushIntervalMs, retryDelay));
    }
    return Promise.all(requests).then(() => undefined);
  }

  function dropActivities() {
    queue = queue.filter((entry) => entry.kind !== "activity");
    saveQueue();
  }

  // -- the opt-out preference ------------------------------------------------------------

  function optOutBox() {
    return document.getElementById("analytics-optout");
  }

  function showPreference() {
    const box = optOutBox();
    if (!box) {
      return;
    }
    if (doNotTrack) {
      box.checked = true;
      box.disabled = true;
      box.title = "Your browser asks sites not to track you (Do Not Track): nothing is recorded.";
      return;
    }
    box.disabled = optOut === null;
    box.checked = optOut === true;
    box.removeAttribute("title");
  }

  function applyPreference(value) {
    optOut = value;
    if (optOut) {
      dropActivities();
    }
    showPreference();
  }

  async function loadPreference() {
    const bearer = token();
    if (doNotTrack || !bearer) {
      return;
    }
    preferenceRequested = true;
    try {
      const response = await fetch(`${API}/users/me/preferences`, {
        headers: { Authorization: `Bearer ${bearer}` },
        credentials: "omit",
      });
      if (response.ok) {
        applyPreference((await response.json()).analytics_opt_out === true);
        flush(false);
        return;
      }
    } catch (_) {
      // Unknown for now: activity waits in the queue and the next flush asks again.
    }
    preferenceRequested = false;
  }

  /** Store the user's choice on the server; resolves to the stored value. */
  async function setOptOut(value) {
    const bearer = token();
    if (!bearer) {
      throw new Error("log in to change tracking preferences");
    }
    if (value) {
      applyPreference(true); // stop at once, even before the server answers
    }
    const response = await fetch(`${API}/users/me/preferences`, {
      method: "PUT",
      headers: { Authorization: `Bearer ${bearer}`, "Content-Type": "application/json" },
      credentials: "omit",
      body: JSON.stringify({ analytics_opt_out: Boolean(value) }),
    });
    if (!response.ok) {
      throw new Error(`the preference was not saved (HTTP ${response.status})`);
    }
    const stored = (await response.json()).analytics_opt_out === true;
    applyPreference(stored);
    if (!stored) {
      startVisit();
    }
    return stored;
  }

  function wireOptOutBox() {
    const box = optOutBox();
    if (!box) {
      return;
    }
    showPreference();
    box.addEventListener("change", () => {
      const wanted = box.checked;
      box.disabled = true;
      setOptOut(wanted)
        .catch((error) => {
          box.title = error.message;
          applyPreference(!wanted);
        })
        .finally(() => {
          box.disabled = doNotTrack || optOut === null;
        });
    });
  }

  // -- automatic tracking ----------------------------------------------------------------

  function startVisit() {
    if (document.visibilityState === "visible") {
      visibleSince = performance.now();
      visitSession = tracking() ? currentSession(true) : null;
    }
  }

  /** The page stops being seen: record the time it was visible, and send everything. */
  function endVisit() {
    // A query typed just before leaving is still a search, debounce or not.
    for (const [input, pending] of pendingSearches) {
      clearTimeout(pending);
      recordSearch(input);
    }
    if (visibleSince !== null) {
      const duration = performance.now() - visibleSince;
      visibleSince = null;
      const fields = { duration_ms: duration, session_id: visitSession || undefined };
      // A tab shown again after being hidden records its further time as a resumed view.
      fields.extra_data = segments ? { resumed: true } : { viewport: `${innerWidth}x${innerHeight}` };
      segments += 1;
      track("page_view", fields);
    }
    flush(true);
  }

  function trackedElement(target) {
    const named = target.closest("[data-track]");
    if (named) {
      return { name: named.getAttribute("data-track"), element: named };
    }
    for (let node = target; node && node !== document.body; node = node.parentElement) {
      const role = node.getAttribute("role");
      if (node.id && (INTERACTIVE.has(node.tagName) || (role && ROLES.has(role)))) {
        return { name: node.id, element: node };
      }
    }
    return null;
  }

  function onClick(event) {
    const target = event.target instanceof Element ? event.target : null;
    const found = target && trackedElement(target);
    if (!found || found.element === optOutBox()) {
      return;
    }
    track("click", { element_id: found.name, extra_data: { tag: found.element.tagName.toLowerCase() } });
    if (found.element.id === "logout") {
      endVisit(); // send it all while the token is still there
    }
  }

  const pendingSearches = new Map();
  const lastSearches = new Map();

  function recordSearch(input) {
    pendingSearches.delete(input);
    const query = input.value.trim();
    const key = input.id || input.name || "search";
    if (!query || lastSearches.get(key) === query) {
      return;
    }
    lastSearches.set(key, query);
    track("search", { element_id: key, search_query: query });
  }

  function isSearchBox(node) {
    return node instanceof HTMLInputElement && node.type === "search";
  }

  function onInput(event) {
    const input = event.target;
    if (!isSearchBox(input)) {
      return;
    }
    clearTimeout(pendingSearches.get(input));
    pendingSearches.set(input, setTimeout(() => recordSearch(input), config.searchDebounceMs));
  }

  function onKeydown(event) {
    if (event.key === "Enter" && isSearchBox(event.target)) {
      clearTimeout(pendingSearches.get(event.target));
      recordSearch(event.target);
    }
  }

  function onSubmit(event) {
    const form = event.target;
    if (!(form instanceof HTMLFormElement)) {
      return;
    }
    const name = form.getAttribute("data-track") || form.id;
    // The form's name only: never a field's value.
    track("form_submit", { element_id: name || "form" });
  }

  function onError(event) {
    const error = event.error;
    reportError(error && error.message ? error.message : event.message, error && error.stack, {
      source_file: event.filename ? String(event.filename).split("?")[0].slice(0, 512) : null,
      line: event.lineno || null,
      column: event.colno || null,
    });
  }

  function onRejection(event) {
    const reason = event.reason;
    const message =
      reason instanceof Error ? reason.message : typeof reason === "string" ? reason : "Unhandled promise rejection";
    reportError(`Unhandled promise rejection: ${message}`, reason instanceof Error ? reason.stack : null, {
      kind: "unhandledrejection",
    });
  }

  function onVisibility() {
    if (document.visibilityState === "hidden") {
      endVisit();
    } else {
      startVisit();
      flush(false);
    }
  }

  window.HomepotAnalytics = Object.freeze({
    track,
    flush: () => flush(false),
    setOptOut,
    sessionId: () => currentSession(false),
    get enabled() {
      return tracking() && optOut === false;
    },
  });

  window.addEventListener("error", onError);
  window.addEventListener("unhandledrejection", onRejection);
  if (doNotTrack) {
    queue = [];
    saveQueue();
    if (document.readyState === "loading") {
      document.addEventListener("DOMContentLoaded", showPreference, { once: true });
    } else {
      showPreference();
    }
    return;
  }
  document.addEventListener("click", onClick, { capture: true, passive: true });
  document.addEventListener("input", onInput, { capture: true, passive: true });
  document.addEventListener("keydown", onKeydown, { capture: true, passive: true });
  document.addEventListener("submit", onSubmit, { capture: true, passive: true });
  document.addEventListener("visibilitychange", onVisibility);
  window.addEventListener("pagehide", endVisit);
  window.addEventListener("storage", (event) => {
    if (event.key === TOKEN_KEY && event.newValue) {
      loadPreference();
    }
  });
  if (visibleSince !== null) {
    visitSession = currentSession(true);
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", wireOptOutBox, { once: true });
  } else {
    wireOptOutBox();
  }
  loadPreference();
  if (queue.length) {
    flush(false);
  }
})();
