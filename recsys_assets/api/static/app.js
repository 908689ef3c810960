// The storefront page. It only talks to the recommender's own API (same origin):
//   GET /store/context, GET /recommendations, POST /events, GET /users/{id}/recent, DELETE /users/{id}/seen,
//   GET /readyz.
// Every failure ends in a visible message (never a blank page): 503s and network errors are retried after
// Retry-After (or a few seconds); a slow answer is announced while it is awaited.

const SLOW_MS = 1500;         // after this long without an answer, say that the recommender is slow
const TIMEOUT_MS = 20000;     // after this long, give up on the request and say so
const RETRY_S = 5;            // retry delay when the server gives no Retry-After
const DEVICE_NAMES = { "-1": "an unknown device", 0: "desktop", 1: "mobile", 2: "tablet" };
const HOUR_NAMES = { now: "now", 8: "08:00 UTC", 13: "13:00 UTC", 19: "19:00 UTC", 23: "23:00 UTC" };
// One colour per category (the API's category order): Kelly's colours of maximum contrast.
const PALETTE = ["#f3c300", "#875692", "#f38400", "#a1caf1", "#be0032", "#c2b280", "#008856", "#848482",
  "#e68fac", "#0067a5", "#f99379", "#604e97", "#f6a600", "#b3446c", "#dcd300", "#882d17", "#8db600", "#654522",
  "#e25822", "#2b3d26"];
const LIST_COLOUR = "#3b5bdb";
const CLICKS_COLOUR = "#e8590c";

const $ = (id) => document.getElementById(id);
const money = new Intl.NumberFormat("en-US", { style: "currency", currency: "USD" });
const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

const state = {
  ctx: null,
  clockOffset: 0,        // server clock minus this browser's clock, seconds
  loadedAt: 0,           // server seconds when the page loaded
  user: null,
  device: -1,
  hour: "now",
  k: 10,
  diversity: false,
  items: [],
  listUser: null,        // whose list state.items is (the "New" marks compare lists of one user only)
  listAt: null,
  seq: 0,                // the newest recommendation request; older answers are dropped
  retry: null,           // { timer, left, run }
  lastClickTs: 0,
  profile: null,
  categories: [],
};

class ApiError extends Error {
  constructor(kind, message, status = 0, retryAfter = null) {
    super(message);
    this.kind = kind;            // network | timeout | unavailable | refused | server
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

// -- small DOM helper: text is always set as text (product names are data) -------------------------------------
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "style") node.style.cssText = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svgEl(tag, attrs = {}, text = undefined) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function categoryColour(name) {
  const i = state.categories.indexOf(name);
  return i < 0 ? "#888" : PALETTE[i % PALETTE.length];
}

function categoryChip(name, extra = {}) {
  const attrs = { class: "chip", ...extra };
  if (!name) return el("span", attrs, "none yet");
  return el("span", attrs, el("span", { class: "dot", style: `--c:${categoryColour(name)}` }), name);
}

// -- the API -----------------------------------------------------------------------------------------------------
function errorDetail(body, fallback) {
  const detail = body && body.detail;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) return detail.map((e) => `${(e.loc || []).slice(1).join(".")}: ${e.msg}`).join("; ");
  return fallback;
}

async function api(path, { method = "GET", body, headers = {}, onSlow } = {}) {
  const abort = new AbortController();
  const slow = onSlow ? setTimeout(onSlow, SLOW_MS) : null;
  const kill = setTimeout(() => abort.abort(), TIMEOUT_MS);
  let response;
  try {
    response = await fetch(path, {
      method,
      headers: body === undefined ? headers : { "Content-Type": "application/json", ...headers },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: abort.signal,
      cache: "no-store",
    });
  } catch (err) {
    if (err.name === "AbortError") {
      throw new ApiError("timeout", `no answer from the API within ${TIMEOUT_MS / 1000} s`);
    }
    throw new ApiError("network", `the API at ${location.origin} cannot be reached`);
  } finally {
    clearTimeout(slow);
    clearTimeout(kill);
  }
  const data = await response.json().catch(() => null);
  if (response.ok) return data;
  const detail = errorDetail(data, `HTTP ${response.status}`);
  if (response.status === 503) {
    throw new ApiError("unavailable", detail, 503, Number(response.headers.get("Retry-After")) || null);
  }
  throw new ApiError(response.status >= 500 ? "server" : "refused", detail, response.status);
}

// -- messages ------------------------------------------------------------------------------------------------
function showNotice(kind, ...content) {
  const box = $("notice");
  box.dataset.kind = kind;
  const spinner = kind === "slow" ? [el("span", { class: "spinner", "aria-hidden": "true" })] : [];
  box.replaceChildren(...spinner, el("span", {}, ...content));
  box.hidden = false;
}

function hideNotice(kind = null) {
  const box = $("notice");
  if (kind === null || box.dataset.kind === kind) box.hidden = true;
}

function cancelRetry() {
  if (state.retry) clearInterval(state.retry.timer);
  state.retry = null;
}

function hideAlert() {
  cancelRetry();
  $("alert").hidden = true;
}

function explain(err, what) {
  switch (err.kind) {
    case "network":
      return [`${what}: ${err.message} (the server is down or restarting). Start it with `,
        el("code", {}, "make serve"), "."];
    case "timeout":
      return [`${what}: ${err.message}; the recommender may be overloaded.`];
    case "unavailable": {  // the API's 503 detail already says what is unavailable and why
      const detail = err.message.replace(/^recommendations are unavailable right now: /, "");
      return [`${what}: ${detail}${detail.endsWith(".") ? "" : "."}`];
    }
    case "server":
      return [`${what}: the API failed (HTTP ${err.status}): ${err.message}`];
    default:
      return [`${what}: the API refused the request (HTTP ${err.status}): ${err.message}`];
  }
}

// An error message in the alert region; a retryable one counts down and runs `retry` again.
function showFailure(err, what, retry) {
  cancelRetry();
  const children = [el("span", { class: "alert-text" }, ...explain(err, what))];
  if (retry && ["network", "timeout", "unavailable"].includes(err.kind)) {
    const left = Math.max(1, Math.round(err.retryAfter || RETRY_S));
    const counter = el("span", { class: "countdown" }, `Retrying in ${left} s.`);
    const now = () => { cancelRetry(); retry(); };
    children.push(counter, el("button", { type: "button", class: "btn", onclick: now }, "Retry now"));
    const tick = () => {
      state.retry.left -= 1;
      if (state.retry.left > 0) counter.textContent = `Retrying in ${state.retry.left} s.`;
      else now();
    };
    state.retry = { left, timer: setInterval(tick, 1000) };
  }
  $("alert").replaceChildren(...children);
  $("alert").hidden = false;
  checkHealth();
}

async function checkHealth() {
  const health = $("health");
  try {
    const response = await fetch("/readyz", { cache: "no-store" });
    const body = await response.json().catch(() => ({}));
    if (response.ok) {
      health.dataset.state = "ready";
      health.textContent = "Service ready";
      health.title = "the Triton ensemble is ready and Valkey answers";
    } else {
      const bad = Object.entries(body.checks || {}).filter(([, reason]) => reason !== "ready");
      health.dataset.state = "degraded";
      health.textContent = `Not ready: ${bad.map(([name]) => name).join(", ") || "see /readyz"}`;
      health.title = bad.map(([name, reason]) => `${name}: ${reason}`).join("\n");
    }
  } catch {
    health.dataset.state = "down";
    health.textContent = "API unreachable";
    health.title = `no answer from ${location.origin}`;
  }
}

// -- time ----------------------------------------------------------------------------------------------------
const serverNow = () => Math.floor(Date.now() / 1000 + state.clockOffset);

// The latest time of day `hour` that is not in the future (yesterday's when today's is still to come): the API
// refuses clicks dated after its clock, which would push the shopper's real clicks out of the 24 h window.
function listTimestamp() {
  const now = serverNow();
  if (state.hour === "now") return now;
  const today = now - (now % 86400) + Number(state.hour) * 3600;
  return today <= now ? today : today - 86400;
}

// Clicks follow the list's clock, strictly increasing, so "the most recent click" is well defined; never past now.
function clickTimestamp() {
  const now = serverNow();
  const elapsed = state.hour === "now" ? 0 : now - state.loadedAt;
  const ts = Math.max(Math.min(listTimestamp() + elapsed, now), state.lastClickTs + 1);
  state.lastClickTs = ts;
  return ts;
}

function newKey() {
  if (window.crypto && crypto.randomUUID) return crypto.randomUUID();  // secure contexts only
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 12)}`;
}

// -- rendering -----------------------------------------------------------------------------------------------
function userLabel(id) {
  if (id < 0) return "an anonymous shopper";
  if (state.ctx && id === state.ctx.new_user_id) return `new shopper ${id}`;
  return `user ${id}`;
}

function card(item, rank, isNew, maxScore) {
  const nameId = `item-${item.item_id}-name`;
  const width = Math.max(3, (100 * item.score) / maxScore).toFixed(1);
  return el("li", { class: isNew ? "card is-new" : "card", "data-item-id": item.item_id,
                    "data-category": item.category, "aria-labelledby": nameId },
    el("div", { class: "card-media" },
      el("img", { src: item.image_url, alt: item.name, width: 200, height: 200, decoding: "async" }),
      el("span", { class: "rank", "aria-label": `rank ${rank}` }, `#${rank}`),
      isNew ? el("span", { class: "badge-new" }, "New") : null),
    el("div", { class: "card-body" },
      el("h3", { class: "card-name", id: nameId, title: item.name }, item.name),
      el("p", { class: "card-cat" },
        el("span", { class: "dot", style: `--c:${categoryColour(item.category)}` }),
        el("span", { class: "card-category" }, item.category), " · ",
        el("span", { class: "card-style" }, item.style)),
      el("p", { class: "card-price" }, money.format(item.price)),
      el("p", { class: "score", title: "the ranker's click probability for this shopper and context" },
        el("span", { class: "sr-only" }, "score "),
        el("span", { class: "score-bar", "aria-hidden": "true" }, el("span", { style: `width:${width}%` })),
        el("span", { class: "score-num" }, item.score.toFixed(3))),
      el("button", { type: "button", class: "interested", "aria-label": `Interested in ${item.name}`,
                     onclick: (e) => interested(item, e.currentTarget) }, "♥ Interested")));
}

function renderCards(items, previousIds) {
  const list = $("carousel");
  list.classList.remove("stale");
  if (!items.length) {
    list.replaceChildren(el("li", { class: "placeholder" }, "No recommendations for this shopper in this context."));
    return;
  }
  const maxScore = Math.max(...items.map((i) => i.score), 1e-9);
  list.replaceChildren(...items.map((item, n) =>
    card(item, n + 1, previousIds !== null && !previousIds.has(item.item_id), maxScore)));
}

function renderContextLine(data) {
  const when = state.hour === "now" ? "now" : `at ${HOUR_NAMES[state.hour]}`;
  const mode = state.diversity ? "diversity mode: sampled by score" : `top ${data.k} by score`;
  const took = typeof data.triton_ms === "number" ? ` · ${data.triton_ms.toFixed(1)} ms in Triton` : "";
  $("context-line").textContent =
    `For ${userLabel(state.user)} on ${DEVICE_NAMES[state.device]}, ${when} · ${mode}${took}`;
}

function showChanges(...content) {
  $("changes-body").replaceChildren(...content);
  $("changes").hidden = false;
}

function renderContextChange(what, before, after) {
  if (!before.length) return;
  const beforeIds = new Set(before.map((i) => i.item_id));
  const fresh = after.filter((i) => !beforeIds.has(i.item_id)).length;
  const sameOrder = before.map((i) => i.item_id).join() === after.map((i) => i.item_id).join();
  let text = `${what} left the list unchanged.`;
  if (fresh) text = `${what} changed ${fresh} of ${after.length} items (marked New).`;
  else if (!sameOrder) text = `${what} kept the same items in a different order.`;
  showChanges(el("p", { id: "change-context" }, text));
}

function renderClickChange(item, click, before, after) {
  const lines = [];
  if (click.personalized) {
    const changed = click.top_category_before_name !== click.top_category_after_name;
    lines.push(el("li", {}, "Top category: ",
      categoryChip(click.top_category_before_name, { id: "change-top-before" }),
      el("span", { class: "arrow", "aria-label": "to" }, "→"),
      categoryChip(click.top_category_after_name,
        { id: "change-top-after", class: changed ? "chip chip-changed" : "chip" }),
      changed ? " (changed: the next lists lean on it)" : " (unchanged)"));
    const interests = (click.interests_after_names || []).filter((name) => name);
    lines.push(el("li", { id: "change-interests" }, "Interests: ",
      interests.length ? interests.map((name) => categoryChip(name)) : categoryChip(null),
      click.interests_pushed ? " (re-ranked with this click)" : " (unchanged)"));
  } else {
    lines.push(el("li", {},
      "Anonymous click: recorded in the click stream only; there is no seen filter or top category to update."));
  }
  if (after === null) {
    lines.push(el("li", { id: "change-gone" }, "The new list could not be loaded (see the message above)."));
  } else {
    const afterIds = new Set(after.map((i) => i.item_id));
    const beforeIds = new Set(before.map((i) => i.item_id));
    const fresh = after.filter((i) => !beforeIds.has(i.item_id)).length;
    const dropped = before.filter((i) => !afterIds.has(i.item_id) && i.item_id !== item.item_id).length;
    const seen = click.personalized ? " (now filtered as seen)" : "";
    lines.push(el("li", { id: "change-gone" }, afterIds.has(item.item_id)
      ? `"${item.name}" is still listed.` : `"${item.name}" left the list${seen}.`));
    lines.push(el("li", { id: "change-new" }, fresh
      ? `${fresh} new item${fresh === 1 ? "" : "s"} in the list (marked New)` +
        (dropped ? `; ${plural(dropped, "other")} dropped out.` : ".")
      : "No new items in the list."));
  }
  const t = click.timings_ms || {};
  if (typeof t.total === "number") {
    lines.push(el("li", { class: "muted" }, `Click recorded in ${t.total.toFixed(1)} ms (event ${click.event_id}).`));
  }
  showChanges(el("p", {}, "You showed interest in ", el("strong", {}, item.name), " ", categoryChip(item.category),
    "."), el("ul", {}, ...lines));
}

function renderProfile() {
  const box = $("profile");
  if (state.user < 0) {
    box.replaceChildren(el("p", { class: "muted" },
      "Anonymous shoppers have no history: their list comes from the context alone (device, time of day) and " +
      "popularity. Clicks are still recorded."));
    return;
  }
  const p = state.profile;
  if (!p) return;
  const top = el("div", { class: "profile-top" }, el("span", {}, "Top category (online store): "),
    categoryChip(p.top_category_name, { id: "profile-top-category" }),
    p.top_category_name ? null : el("span", { class: "muted small" }, "cold start: the model uses its defaults"));
  const clock = (ts) => `${new Date(ts * 1000).toISOString().slice(11, 16)} UTC`;
  const clicks = p.clicks.length
    ? el("ul", { class: "recent", "aria-label": "recent clicks, newest first" }, ...p.clicks.map((c) =>
      el("li", {}, el("img", { src: c.image_url, alt: "", width: 40, height: 40 }),
        el("span", {}, el("span", {}, c.name), el("br"),
          el("span", { class: "meta" }, `${c.category} · ${clock(c.timestamp)}`)))))
    : el("p", { class: "muted" }, "No clicks in the last 24 h.");
  const size = el("p", { class: "small", id: "profile-window" },
    `${plural(p.window_size, "click")} in the 24 h window`);
  box.replaceChildren(top, size, clicks);
}

function count(values) {
  const counts = new Map();
  for (const v of values) counts.set(v, (counts.get(v) || 0) + 1);
  return counts;
}

// Two bars per category: its share of the list, and of the shopper's recent clicks (hand-drawn SVG).
function renderChart() {
  const box = $("chart");
  const clicks = state.user >= 0 && state.profile ? state.profile.clicks : [];
  const listed = count(state.items.map((i) => i.category));
  const clicked = count(clicks.map((c) => c.category));
  const n = (counts, cat) => counts.get(cat) || 0;
  const cats = [...new Set([...listed.keys(), ...clicked.keys()])].sort((a, b) =>
    n(listed, b) - n(listed, a) || n(clicked, b) - n(clicked, a) || a.localeCompare(b));
  if (!cats.length) {
    box.replaceChildren(el("p", { class: "muted" }, "Nothing to chart yet."));
    return;
  }
  // drawn at the panel's own width, so the text stays 12 px on a phone as on a desktop
  const width = Math.round(Math.max(300, Math.min(720, box.clientWidth || 560)));
  const labelW = 118, valueW = 44, rowH = 30, top = 6;
  const barW = width - labelW - valueW;
  const svg = svgEl("svg", { viewBox: `0 0 ${width} ${top + cats.length * rowH + 4}`, role: "img",
                             "aria-labelledby": "chart-title chart-desc" });
  const summary = cats.map((c) => `${c}: ${n(listed, c)} of ${state.items.length} listed` +
    (clicks.length ? `, ${n(clicked, c)} of ${clicks.length} clicks` : "")).join("; ");
  svg.append(svgEl("title", { id: "chart-title" }, "Category mix of the list and of recent clicks"),
    svgEl("desc", { id: "chart-desc" }, summary));
  const series = [{ counts: listed, total: state.items.length, y: 3, colour: LIST_COLOUR, track: "#eef0f5",
                    cls: "bar-list" }];
  if (clicks.length) {
    series.push({ counts: clicked, total: clicks.length, y: 15, colour: CLICKS_COLOUR, track: "#f6efe9",
                  cls: "bar-clicks" });
  }
  cats.forEach((cat, i) => {
    const y = top + i * rowH;
    svg.append(svgEl("rect", { x: 0, y: y + 6, width: 8, height: 16, rx: 2, fill: categoryColour(cat) }),
      svgEl("text", { x: 14, y: y + 18 }, cat));
    for (const s of series) {
      const k = n(s.counts, cat);
      svg.append(svgEl("rect", { x: labelW, y: y + s.y, width: barW, height: 10, rx: 3, fill: s.track }));
      if (k) {
        svg.append(svgEl("rect", { x: labelW, y: y + s.y, width: Math.max(2, (barW * k) / s.total), height: 10,
                                   rx: 3, fill: s.colour, class: s.cls, "data-category": cat }));
      }
      svg.append(svgEl("text", { x: labelW + barW + 6, y: y + s.y + 9, class: "value" },
        `${Math.round((100 * k) / (s.total || 1))}%`));
    }
  });
  const legend = el("div", { class: "legend" },
    el("span", { style: `--sw:${LIST_COLOUR}` }, `this list (${state.items.length})`),
    clicks.length ? el("span", { style: `--sw:${CLICKS_COLOUR}` }, `recent clicks (${clicks.length})`)
      : el("span", { class: "muted" }, state.user < 0 ? "no clicks for anonymous shoppers" : "no recent clicks yet"));
  box.replaceChildren(legend, svg);
}

// -- actions -------------------------------------------------------------------------------------------------
function syncUrl() {
  const q = new URLSearchParams({ user: state.user, device: state.device, hour: state.hour, k: state.k });
  if (state.diversity) q.set("diversity", "1");
  history.replaceState(null, "", `${location.pathname}?${q}`);
}

// Loads the list for the current controls. Resolves to {before, after}, or null when it failed or was superseded.
async function loadRecommendations() {
  const seq = ++state.seq;
  cancelRetry();
  syncUrl();
  const list = $("carousel");
  list.setAttribute("aria-busy", "true");
  const params = new URLSearchParams({ user_id: state.user, device_type: state.device, timestamp: listTimestamp(),
                                       k: state.k, diversity: state.diversity });
  const asked = Date.now();
  let ticking = null;
  const slowNotice = () => {
    if (seq !== state.seq) return;
    const waited = Math.round((Date.now() - asked) / 1000);
    showNotice("slow", `The recommender is taking longer than usual… still waiting for its answer (${waited} s).`);
  };
  try {
    const data = await api(`/recommendations?${params}`,
      { onSlow: () => { slowNotice(); ticking = setInterval(slowNotice, 1000); } });
    clearInterval(ticking);
    if (seq !== state.seq) return null;
    const before = state.listUser === state.user ? state.items : [];
    state.items = data.items;
    state.listAt = new Date();
    renderCards(data.items, before.length ? new Set(before.map((i) => i.item_id)) : null);
    list.dataset.rendered = String(seq);  // lets a test (or a person in devtools) see that a new answer arrived
    state.listUser = state.user;
    renderContextLine(data);
    hideNotice("slow");
    hideAlert();
    if ($("health").dataset.state !== "ready") checkHealth();
    renderChart();
    return { before, after: data.items };
  } catch (err) {
    clearInterval(ticking);
    if (seq !== state.seq) return null;
    hideNotice("slow");
    if (state.items.length) {  // keep the last list, marked as such
      list.classList.add("stale");
      $("context-line").textContent =
        `Showing the last list received (${state.listAt.toLocaleTimeString()}); it may be out of date.`;
    } else {
      const why = err.kind === "refused" ? "the request was refused (see the message above)."
        : "the service is not answering (see the message above); the page keeps trying.";
      list.replaceChildren(el("li", { class: "placeholder error" }, `No recommendations yet: ${why}`));
      $("context-line").textContent = "No list yet.";
    }
    showFailure(err, "Recommendations could not be loaded", () => loadRecommendations());
    return null;
  } finally {
    if (seq === state.seq) list.setAttribute("aria-busy", "false");
  }
}

async function loadProfile() {
  if (state.user < 0) {
    state.profile = null;
    renderProfile();
    return;
  }
  const user = state.user;
  try {
    const data = await api(`/users/${user}/recent`);
    if (user !== state.user) return;
    state.profile = data;
    renderProfile();
  } catch (err) {
    if (user !== state.user) return;
    state.profile = null;
    $("profile").replaceChildren(
      el("p", { class: "message message-error" }, ...explain(err, "Recent clicks could not be read")));
  }
  renderChart();
}

async function refreshAll(what = null) {
  if (what) hideNotice("ok");  // a confirmation belongs to the view it was given for
  const [result] = await Promise.all([loadRecommendations(), loadProfile()]);
  if (result && what) renderContextChange(what, result.before, result.after);
  renderChart();
}

async function interested(item, button, retryOf = null) {
  const attempt = retryOf || { key: newKey(), timestamp: clickTimestamp(), user: state.user, device: state.device };
  hideNotice("ok");
  if (button) {
    button.disabled = true;
    button.textContent = "Sending…";
  }
  let click;
  try {
    click = await api("/events", {
      method: "POST",
      headers: { "Idempotency-Key": attempt.key },
      body: { user_id: attempt.user, item_id: item.item_id, device_type: attempt.device,
              timestamp: attempt.timestamp },
      onSlow: () => showNotice("slow", `Recording your interest in "${item.name}" is taking longer than usual…`),
    });
    hideNotice("slow");
  } catch (err) {
    hideNotice("slow");
    if (button && button.isConnected) {
      button.disabled = false;
      button.textContent = "♥ Interested";
    }
    // a retry carries the same Idempotency-Key: the click is recorded once however often it is sent
    showFailure(err, `Your interest in "${item.name}" was not recorded`, () => interested(item, button, attempt));
    return;
  }
  hideAlert();
  const before = state.items;
  const [result] = await Promise.all([loadRecommendations(), loadProfile()]);
  renderClickChange(item, click, before, result ? result.after : null);
  const changes = $("changes");
  changes.dataset.clicks = String(Number(changes.dataset.clicks || 0) + 1);  // a test waits for this
  renderChart();
  $("changes-heading").focus({ preventScroll: true });
}

async function resetSeen() {
  if (state.user < 0) return;
  const user = state.user;
  try {
    const body = await api(`/users/${user}/seen`, { method: "DELETE" });
    showNotice("ok", `Seen items reset for ${userLabel(user)} (${plural(body.keys_deleted, "key")} forgotten): ` +
      "clicked items may be recommended again and the recent-clicks window is empty. The top category stays as " +
      "the online store holds it until new clicks change it.");
    $("changes").hidden = true;
    state.listUser = null;
    await refreshAll();
  } catch (err) {
    showFailure(err, "Seen items could not be reset", null);
  }
}

function setUser(value) {
  hideNotice("ok");
  state.user = Number(value);
  state.items = [];
  state.listUser = null;
  state.profile = null;
  $("changes").hidden = true;
  const reset = $("reset");
  reset.disabled = state.user < 0;
  reset.title = state.user < 0 ? "anonymous shoppers have no seen items" : "";
}

function populateUsers(ctx) {
  const describe = (u) => [u.gender, u.age].filter((x) => x !== null && x !== undefined).join(", ");
  const known = el("optgroup", { label: "Known users" }, ...ctx.users.map((u) =>
    el("option", { value: u.user_id }, `User ${u.user_id}${describe(u) ? ` · ${describe(u)}` : ""}`)));
  $("user").replaceChildren(
    el("option", { value: -1 }, "Anonymous (not signed in)"),
    el("option", { value: ctx.new_user_id }, `New shopper (id ${ctx.new_user_id})`),
    ...(ctx.users.length ? [known] : []));
}

function readUrl() {
  const q = new URLSearchParams(location.search);
  return Object.fromEntries(["user", "device", "hour", "k", "diversity"].map((name) => [name, q.get(name)]));
}

function choose(select, value) {
  if (value !== null && [...select.options].some((o) => o.value === value)) select.value = value;
  return select.value;
}

function applyControls(wanted) {
  const select = $("user");
  if (wanted.user !== null && /^-?\d+$/.test(wanted.user)) {
    if (![...select.options].some((o) => o.value === wanted.user)) {
      select.append(el("option", { value: wanted.user }, `User ${wanted.user}`));
    }
    select.value = wanted.user;
  } else {
    select.value = state.ctx && state.ctx.users.length ? String(state.ctx.users[0].user_id) : "-1";
  }
  setUser(select.value);
  if (wanted.device !== null && $(`device-${wanted.device}`)) $(`device-${wanted.device}`).checked = true;
  state.device = Number(document.querySelector("input[name=device]:checked").value);
  state.hour = choose($("hour"), wanted.hour);
  state.k = Number(choose($("k"), wanted.k));
  $("diversity").checked = wanted.diversity === "1" || wanted.diversity === "true";
  state.diversity = $("diversity").checked;
}

async function loadContext() {
  try {
    const ctx = await api("/store/context");
    state.ctx = ctx;
    state.categories = ctx.categories;
    state.clockOffset = ctx.server_time - Date.now() / 1000;
    state.loadedAt = ctx.server_time;
    populateUsers(ctx);
    return true;
  } catch (err) {
    state.loadedAt = serverNow();
    showFailure(err, "The shopper list could not be loaded", () => start());
    return false;
  }
}

async function start() {
  const ok = await loadContext();
  applyControls(readUrl());
  if (ok) hideAlert();
  await refreshAll();
}

function wire() {
  $("controls").addEventListener("submit", (e) => e.preventDefault());
  $("user").addEventListener("change", (e) => { setUser(e.target.value); refreshAll(); });
  for (const radio of document.querySelectorAll("input[name=device]")) {
    radio.addEventListener("change", () => {
      state.device = Number(radio.value);
      refreshAll(`Switching to ${DEVICE_NAMES[state.device]}`);
    });
  }
  $("hour").addEventListener("change", (e) => {
    state.hour = e.target.value;
    refreshAll(state.hour === "now" ? "Switching to the current time" : `Switching to ${HOUR_NAMES[state.hour]}`);
  });
  $("k").addEventListener("change", (e) => {
    state.k = Number(e.target.value);
    refreshAll(`Showing ${state.k} items`);
  });
  $("diversity").addEventListener("change", (e) => {
    state.diversity = e.target.checked;
    refreshAll(state.diversity ? "Diversity mode" : "Back to the strict top k");
  });
  $("refresh").addEventListener("click", () => refreshAll("Refreshing"));
  $("reset").addEventListener("click", resetSeen);
  let resizing = null;
  window.addEventListener("resize", () => { clearTimeout(resizing); resizing = setTimeout(renderChart, 150); });
  const viewport = document.querySelector(".carousel-viewport");
  $("prev").addEventListener("click", () => viewport.scrollBy({ left: -viewport.clientWidth * 0.9 }));
  $("next").addEventListener("click", () => viewport.scrollBy({ left: viewport.clientWidth * 0.9 }));
}

wire();
checkHealth();
start();
