// The search page: plain JS against the service's own REST API (no library, no build step).
// Two panels, images and texts, each showing the answers of one query; "load more" asks the same query
// again with a larger k (up to the server's max_k) and appends what was not shown yet. The query is in
// the URL (?q=<text>, ?similar=<id>), so a search can be linked and reloaded, and back/forward step
// through the searches made.
"use strict";

const PAGE = 12;
const MAX_K = Number(document.body.dataset.maxK) || PAGE;
const $ = (selector, root = document) => root.querySelector(selector);

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// What a result was ranked by: the Hamming distance, and the re-ranker's score when the model has one.
function rankedBy(hit) {
  const score = hit.score === null || hit.score === undefined ? "" : ` · score ${hit.score.toFixed(2)}`;
  return `distance ${hit.distance}${score}`;
}

function panel(id, render) {
  const root = document.getElementById(id);
  return { root, render, list: $("ol", root), more: $(".more", root), timing: $(".timing", root), note: $(".note", root) };
}
const panels = { image: panel("images", imageCard), text: panel("texts", textRow) };

// Every API error is problem details (RFC 9457): the page shows its status and detail as the API words them.
const describe = (status, body) => `${status}: ${(body && body.detail) || "the service gave no reason"}`;

async function api(path, options) {
  let response;
  try {
    response = await fetch(path, options);
  } catch (error) {
    throw new Error(`the service did not answer (${error.message})`);
  }
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new Error(describe(response.status, body));
  return body;
}

const postJSON = (path, body) =>
  api(path, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });

function showError(message) {
  const box = $("#error");
  box.textContent = message;
  box.hidden = !message;
}

const titleOf = (hit) => String(hit.metadata.title || hit.metadata.text || hit.id);
const ms = (value) => `${value < 10 ? value.toFixed(2) : value.toFixed(0)} ms`;
const itemURL = (prefix, id) => prefix + id.split("/").map(encodeURIComponent).join("/");
const thumbnailURL = (id) => itemURL("/v1/thumbnails/", id);

function moreButton(hit, modality) {
  const button = element("button", "like", "More like this");
  button.type = "button";
  button.setAttribute("aria-label", `More like “${titleOf(hit)}”`);
  button.addEventListener("click", () => {
    remember({ similar: hit.id });
    moreLikeThis(hit, modality);
    $("#query").focus();
  });
  return button;
}

function imageCard(hit) {
  const card = element("li", "card");
  const image = element("img");
  Object.assign(image, { src: thumbnailURL(hit.id), alt: titleOf(hit), loading: "lazy", width: 160, height: 160 });
  image.addEventListener("error", () => image.replaceWith(element("div", "missing", "no picture")));
  const meta = element("p", "meta", `${rankedBy(hit)} · bucket ${hit.bucket}`);
  card.append(image, element("p", "title", titleOf(hit)), meta, moreButton(hit, "image"));
  return card;
}

function textRow(hit) {
  const row = element("li", "text");
  const labels = (hit.metadata.labels || []).join(", ");
  const meta = element("p", "meta", `${rankedBy(hit)} · bucket ${hit.bucket}${labels ? " · " + labels : ""}`);
  row.append(element("p", "title", titleOf(hit)), meta, moreButton(hit, "text"));
  return row;
}

// A query replaces what both panels show; answers to an older query still in flight are dropped.
let generation = 0;

function show(title, picture, searches) {
  generation += 1;
  showError("");
  document.title = title ? `${title} · xmhash` : "xmhash search";
  const heading = $("#query");
  heading.replaceChildren(element("span", "", title));
  if (picture) {
    const preview = Object.assign(element("img", "preview"), { src: picture, alt: "" });
    preview.addEventListener("error", () => preview.remove()); // e.g. a corrupt upload
    heading.prepend(preview);
  }
  for (const [modality, p] of Object.entries(panels)) {
    const search = searches[modality];
    Object.assign(p, { search: typeof search === "function" ? search : null, k: 0, shown: new Set() });
    p.list.replaceChildren();
    p.timing.textContent = "";
    p.more.hidden = true;
    p.root.hidden = search == null;
    p.note.hidden = typeof search !== "string";
    p.note.textContent = typeof search === "string" ? search : "";
    if (p.search) load(p);
  }
}

async function load(p) {
  const mine = generation;
  p.k = Math.min(p.k + PAGE, MAX_K);
  p.more.disabled = true;
  try {
    const answer = await p.search(p.k);
    if (mine !== generation) return;
    for (const hit of answer.results.filter((h) => !p.shown.has(h.id))) {
      p.shown.add(hit.id);
      p.list.append(p.render(hit));
    }
    p.timing.textContent = `encode ${ms(answer.timing.encode_ms)} · search ${ms(answer.timing.search_ms)}`;
    p.more.hidden = answer.results.length < p.k || p.k >= MAX_K;
    p.note.hidden = p.shown.size > 0;
    p.note.textContent = "Nothing found: the index holds no items of this kind yet.";
  } catch (error) {
    if (mine === generation) showError(error.message);
  } finally {
    p.more.disabled = false;
  }
}

function searchText(text) {
  show(`Images for “${text}”`, null, { image: (k) => postJSON("/v1/search/text-to-image", { text, k }) });
}

// An uploaded image as a multipart form, searched against texts or images (k => Promise of a response).
const uploadSearch = (file, target) => (k) => {
  const form = new FormData();
  form.append("image", file);
  form.append("k", String(k));
  return api(`/v1/search/image-to-${target}/upload`, { method: "POST", body: form });
};

// The texts of an uploaded image, and the similar images beside them.
function searchImage(file) {
  const searches = { text: uploadSearch(file, "text"), image: uploadSearch(file, "image") };
  show(`Texts and similar images for “${file.name}”`, URL.createObjectURL(file), searches);
}

// More like this: the item's stored code is the query, against its own modality and the other one.
function moreLikeThis(item, modality) {
  const similar = (target) => (k) => postJSON("/v1/search/similar", { id: item.id, target, k });
  const picture = modality === "image" ? thumbnailURL(item.id) : null;
  show(`More like “${titleOf(item)}”`, picture, { image: similar("image"), text: similar("text") });
}

// More like a stored item known by its id alone (a link): its modality and title are read first.
async function similarTo(id) {
  const asked = generation;
  try {
    const item = await api(itemURL("/v1/items/", id));
    if (asked === generation) moreLikeThis(item, item.modality);
  } catch (error) {
    if (asked !== generation) return;
    show(`More like “${id}”`, null, {});
    showError(error.message);
  }
}

// A new search becomes a history entry (none when the URL already says it: the same search again).
function remember(params) {
  const query = new URLSearchParams(params).toString();
  if (query !== new URLSearchParams(location.search).toString()) {
    history.pushState(null, "", location.pathname + (query ? `?${query}` : ""));
  }
}

// The search the URL names (on load, and on back/forward); none: an empty page.
function searchFromURL() {
  const params = new URLSearchParams(location.search);
  const text = (params.get("q") || "").trim();
  $("#text").value = text;
  if (text) searchText(text);
  else if (params.get("similar")) similarTo(params.get("similar"));
  else show("", null, {});
}

async function describeModel() {
  try {
    const model = await api("/v1/models");
    const items = model.index.items;
    $("#model").textContent =
      `model ${model.method}, ${model.code_bits} bits (bundle ${model.bundle_id.slice(0, 12)}) · ` +
      `${items.image.toLocaleString()} images, ${items.text.toLocaleString()} texts indexed`;
  } catch (error) {
    $("#model").textContent = `model: unknown (${error.message})`;
  }
}

// The demo corpus is ingested in the background on the first start: show its progress until it ends.
async function followCorpus() {
  let corpus;
  try {
    corpus = (await api("/readyz")).demo_corpus;
  } catch (error) {
    corpus = { state: `unknown (${error.message})` };
  }
  const line = $("#corpus");
  const busy = corpus && ["pending", "preparing", "ingesting"].includes(corpus.state);
  line.hidden = !busy && !(corpus && corpus.state === "unavailable");
  if (busy) {
    const counts = corpus.total ? `: ${corpus.done.toLocaleString()} of ${corpus.total.toLocaleString()} items` : "";
    line.textContent = `Demo corpus loading${counts}. Until it is complete, searches find only what is in already.`;
    setTimeout(followCorpus, 2000);
  } else if (corpus && corpus.state === "unavailable") {
    line.textContent = "The demo corpus is not installed: the index holds only what was ingested.";
  }
  describeModel();
}

$("#text-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("#text").value.trim();
  if (!text) return;
  remember({ q: text });
  searchText(text);
});

// An uploaded image cannot be put in a URL: the page's URL names no search while it shows one.
function searchUpload(file) {
  remember({});
  searchImage(file);
}

const input = $("#image");
input.addEventListener("change", () => {
  if (input.files.length) searchUpload(input.files[0]);
  input.value = "";
});
const drop = $("#drop");
drop.addEventListener("dragover", (event) => {
  event.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  if (event.dataTransfer.files.length) searchUpload(event.dataTransfer.files[0]);
});
for (const p of Object.values(panels)) p.more.addEventListener("click", () => load(p));
window.addEventListener("popstate", searchFromURL);
searchFromURL();
followCorpus();
