// fusionrec demo storefront: plain JavaScript over the service's REST API (same origin).
// Nothing is loaded from elsewhere; every request is one of the documented endpoints.
"use strict";

const K = 12;
const state = {
  textColumns: null, // the catalog's text fields, learned from the first item read
  items: new Map(), // item_id -> Promise of its fields (GET /v1/items/{id})
  similarPath: null, // "/v1/items/{item_id}/similar" once the service has it
  renders: 0,
};

const $ = (id) => document.getElementById(id);

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "dataset") Object.assign(node.dataset, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node[k] = v;
  }
  for (const c of children) node.append(c);
  return node;
}

function say(text, kind = "info") {
  const m = $("message");
  m.textContent = text;
  m.className = kind;
}

// ---- the API ---------------------------------------------------------------------------------
async function api(method, path, body, { admin = false } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const key = $("api-key").value.trim();
  if (key) headers["X-API-Key"] = key;
  if (admin) headers.Authorization = `Bearer ${$("admin-token").value.trim()}`;
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const detail = data && data.error ? data.error.message : text || response.statusText;
    throw new Error(`${method} ${path}: ${response.status} ${detail}`);
  }
  return data;
}

const userId = () => $("user-id").value.trim() || null;

function item(itemId) {
  if (!state.items.has(itemId)) {
    const p = api("GET", `/v1/items/${encodeURIComponent(itemId)}`).then((it) => {
      if (state.textColumns === null) {
        state.textColumns = Object.keys(it.fields);
        renderItemForm();
      }
      return it.fields;
    });
    p.catch(() => state.items.delete(itemId));
    state.items.set(itemId, p);
  }
  return state.items.get(itemId);
}

function titleOf(fields, itemId) {
  if (fields.title) return String(fields.title);
  const first = Object.values(fields).find((v) => typeof v === "string" && v.trim());
  return first || itemId;
}

function showModel(data) {
  if (data.model_version) $("model-version").textContent = data.model_version;
  if (data.strategy) $("strategy").textContent = data.strategy.replace("_", " ");
}

// ---- rendering -------------------------------------------------------------------------------
function explanationText(ex) {
  if (!ex) return "";
  const lines = [
    `retrieval score <user, item> ${ex.retrieval_score.toFixed(3)}`,
    `text similarity to the history ${ex.text_similarity.toFixed(3)}`,
  ];
  for (const h of ex.history_items) {
    lines.push(`because of ${h.item_id} (text ${h.text_similarity.toFixed(3)}, ` +
      `vector ${h.vector_similarity.toFixed(3)})`);
  }
  return lines.join("\n");
}

function card(scored) {
  const title = el("button", { className: "pick", type: "button", textContent: scored.item_id,
    title: "click: record a click event and refresh the recommendations",
    onclick: () => clicked(scored.item_id) });
  const node = el("article", { className: "card", dataset: { itemId: scored.item_id } },
    title,
    el("div", { className: "meta" },
      el("span", { className: "id", textContent: scored.item_id }),
      el("span", { className: "score",
        textContent: scored.score === null ? "new" : `score ${scored.score.toFixed(4)}` })));
  const why = explanationText(scored.explanation);
  if (why) {
    node.title = why;
    const list = el("ul");
    for (const line of why.split("\n")) list.append(el("li", { textContent: line }));
    node.append(el("details", { className: "why" }, el("summary", { textContent: "why" }), list));
  }
  if (state.similarPath) {
    node.append(el("button", { className: "similar", type: "button",
      textContent: "More like this", onclick: () => moreLikeThis(scored.item_id) }));
  }
  item(scored.item_id)
    .then((fields) => {
      title.textContent = titleOf(fields, scored.item_id);
      node.dataset.title = title.textContent;
    })
    .catch(() => {}); // the id stays as the title
  return node;
}

function renderGrid(container, items) {
  container.replaceChildren(...items.map(card));
  state.renders += 1;
  container.dataset.renders = String(state.renders);
  if (!items.length) container.append(el("p", { className: "hint", textContent: "no items" }));
}

// ---- actions ---------------------------------------------------------------------------------
async function refresh() {
  const body = { k: K, explain: true };
  if (userId()) body.user_id = userId();
  const data = await api("POST", "/v1/recommend", body);
  showModel(data);
  renderGrid($("recommendations"), data.items);
  $("recs-info").textContent = `${data.items.length} items, ${data.strategy.replace("_", " ")}`;
}

async function search(event) {
  event.preventDefault();
  const query = $("query").value.trim();
  if (!query) return;
  try {
    const body = { query, k: K };
    if (userId()) body.user_id = userId();
    const data = await api("POST", "/v1/search", body);
    showModel(data);
    $("search-section").hidden = false;
    $("search-info").textContent = `“${query}”: ${data.items.length} items`;
    renderGrid($("search-results"), data.items);
  } catch (err) {
    say(err.message, "error");
  }
}

async function clicked(itemId) {
  const user = userId();
  if (!user) {
    say("enter a shopper id first: events are recorded per shopper", "error");
    return;
  }
  try {
    const out = await api("POST", "/v1/events", { user_id: user, item_id: itemId });
    $("history-length").textContent = `${out.history_length} events`;
    say(`recorded a click on ${itemId} for ${user}`);
    await refresh();
  } catch (err) {
    say(err.message, "error");
  }
}

async function moreLikeThis(itemId) {
  // the hook for GET /v1/items/{id}/similar: shown only when the service's OpenAPI has it
  try {
    const path = state.similarPath.replace(/\{[^}]+\}/, encodeURIComponent(itemId));
    const data = await api("GET", `${path}?k=${K}`);
    $("similar-section").hidden = false;
    $("similar-title").textContent = itemId;
    renderGrid($("similar-results"), data.items);
  } catch (err) {
    say(err.message, "error");
  }
}

function renderItemForm() {
  const columns = state.textColumns && state.textColumns.length ? state.textColumns : ["title"];
  $("item-fields").replaceChildren(...columns.map((c) =>
    el("label", {}, c, el("input", { name: c, className: "text-field", autocomplete: "off",
      maxLength: 4096 }))));
}

async function addItem(event) {
  event.preventDefault();
  const itemId = $("new-item-id").value.trim();
  const record = { item_id: itemId };
  for (const input of $("item-fields").querySelectorAll("input")) {
    if (input.value.trim()) record[input.name] = input.value.trim();
  }
  try {
    const out = await api("POST", "/v1/items", { items: [record] }, { admin: true });
    showModel(out);
    state.items.delete(itemId);
    const verb = out.added.includes(itemId) ? "added" : "updated";
    say(`${verb} ${itemId}: live at once as model version ${out.model_version}`);
    $("added-items").prepend(card({ item_id: itemId, score: null }));
    await loadReady();
  } catch (err) {
    say(err.message, "error");
  }
}

async function loadReady() {
  const ready = await api("GET", "/readyz");
  showModel(ready);
  $("catalog-size").textContent = `${ready.catalog_items} items`;
}

async function findSimilar() {
  try {
    const spec = await api("GET", "/openapi.json");
    state.similarPath =
      Object.keys(spec.paths || {}).find((p) => /^\/v1\/items\/\{[^}]+\}\/similar$/.test(p)) ||
      null;
  } catch {
    state.similarPath = null;
  }
}

// the shopper id (localStorage) and the API key (sessionStorage: this tab only) survive a
// reload; the admin token is never stored
const REMEMBERED = [
  ["user-id", localStorage, "fusionrec.demo.userId"],
  ["api-key", sessionStorage, "fusionrec.demo.apiKey"],
];

function remember() {
  for (const [id, storage, name] of REMEMBERED) {
    const saved = storage.getItem(name);
    if (saved !== null) $(id).value = saved;
    $(id).addEventListener("change", () => storage.setItem(name, $(id).value.trim()));
  }
}

async function start() {
  remember();
  renderItemForm();
  $("search-form").addEventListener("submit", search);
  $("item-form").addEventListener("submit", addItem);
  $("refresh").addEventListener("click", () => refresh().catch((err) => say(err.message, "error")));
  $("user-id").addEventListener("change", () => {
    $("history-length").textContent = "–";
    refresh().catch((err) => say(err.message, "error"));
  });
  try {
    await Promise.all([loadReady(), findSimilar()]);
    await refresh();
    document.body.dataset.ready = "true";
  } catch (err) {
    say(err.message, "error");
  }
}

document.addEventListener("DOMContentLoaded", start);
