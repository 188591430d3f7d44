// The kclip search page. The URL is the state for text and "more like this" searches
// (?q=...&k=24&page=2 or ?like=ID&k=24), so any such search can be bookmarked or shared.
// A picture from disk cannot live in a URL; it is kept here while its pages are browsed.
"use strict";

const $ = (id) => document.getElementById(id);
let uploaded = null; // the File of the current picture search, if any

function showMessage(text) {
  $("message").textContent = text;
  $("message").hidden = !text;
}

function currentState() {
  const params = new URLSearchParams(location.search);
  const k = parseInt(params.get("k") || "24", 10);
  const page = Math.max(1, parseInt(params.get("page") || "1", 10) || 1);
  return { q: params.get("q"), like: params.get("like"), k: Number.isFinite(k) ? k : 24, page };
}

function pushState(state, replace) {
  const params = new URLSearchParams();
  if (state.like) params.set("like", state.like);
  else if (state.q !== null && state.q !== undefined) params.set("q", state.q);
  params.set("k", state.k);
  if (state.page > 1) params.set("page", state.page);
  const url = "?" + params.toString();
  if (replace) history.replaceState(null, "", url);
  else history.pushState(null, "", url);
}

async function readAnswer(response) {
  let body = null;
  try {
    body = await response.json();
  } catch (error) {
    body = null;
  }
  if (!response.ok) {
    const reason = body && body.error ? body.error : `the server answered HTTP ${response.status}.`;
    throw new Error(reason);
  }
  return body;
}

function card(result) {
  const item = document.createElement("li");
  item.className = "card";
  item.dataset.id = result.id;
  item.title = `${result.name}: score ${result.score.toFixed(4)} (rank ${result.rank})`;
  const link = document.createElement("a");
  link.href = result.image;
  link.target = "_blank";
  link.rel = "noopener";
  const image = document.createElement("img");
  image.src = result.thumbnail;
  image.alt = result.name;
  image.loading = "lazy";
  link.appendChild(image);
  const score = document.createElement("span");
  score.className = "score";
  score.textContent = result.score.toFixed(3);
  const caption = document.createElement("div");
  caption.className = "caption";
  const name = document.createElement("span");
  name.className = "name";
  name.textContent = result.name;
  const more = document.createElement("button");
  more.type = "button";
  more.className = "like";
  more.textContent = "More like this";
  more.addEventListener("click", () => {
    uploaded = null;
    const state = { like: result.id, k: currentState().k, page: 1 };
    pushState(state);
    run(state);
  });
  caption.append(name, more);
  item.append(link, score, caption);
  return item;
}

function describe(query) {
  if (query.like) return `pictures like ${query.name}`;
  if (query.image) return `pictures like ${query.image}`;
  return `“${query.q}”`;
}

function render(answer, page) {
  const grid = $("results");
  grid.replaceChildren(...answer.results.map(card));
  const first = answer.offset + 1;
  const last = answer.offset + answer.results.length;
  $("status").textContent = answer.results.length
    ? `Results ${first}–${last} for ${describe(answer.query)}` + (answer.query.image ? " (a picture search is not kept in the URL)" : "")
    : `No results for ${describe(answer.query)}.`;
  $("pager").hidden = page === 1 && !answer.has_more;
  $("prev").disabled = page === 1;
  $("next").disabled = !answer.has_more;
  $("page-label").textContent = `Page ${page}`;
  showIndex(answer.index, answer.warning);
}

function showIndex(info, warning) {
  $("index-info").textContent = `${info.count.toLocaleString()} images indexed` + (info.updated_at ? `, updated ${info.updated_at}` : "");
  if (warning) showMessage(warning);
}

function clearResults() {
  $("results").replaceChildren();
  $("status").textContent = "";
  $("pager").hidden = true;
}

async function run(state) {
  $("q").value = state.q || "";
  if (![...$("k").options].some((option) => option.value === String(state.k))) {
    $("k").add(new Option(String(state.k))); // a k typed into the URL; the server checks its range
  }
  $("k").value = String(state.k);
  $("query-picture").hidden = !uploaded;
  showMessage("");
  const offset = (state.page - 1) * state.k;
  let request;
  if (uploaded) {
    const form = new FormData();
    form.append("image", uploaded, uploaded.name);
    request = fetch(`/api/search/image?k=${state.k}&offset=${offset}`, { method: "POST", body: form });
  } else if (state.like || state.q !== null) {
    const params = new URLSearchParams({ k: state.k, offset });
    if (state.like) params.set("like", state.like);
    else params.set("q", state.q);
    request = fetch(`/api/search?${params}`);
  } else {
    clearResults();
    return;
  }
  $("status").textContent = "Searching…";
  document.body.classList.add("busy");
  try {
    let response;
    try {
      response = await request;
    } catch (networkError) {
      throw new Error("The search server cannot be reached; is it still running?");
    }
    render(await readAnswer(response), state.page);
  } catch (error) {
    clearResults();
    showMessage(error.message);
  } finally {
    document.body.classList.remove("busy");
  }
}

function searchPicture(file) {
  if (!file) {
    showMessage("Drop a picture file (JPEG, PNG, WebP, ...), not text or a link.");
    return;
  }
  uploaded = file;
  $("query-thumb").src = URL.createObjectURL(file);
  const state = { k: currentState().k, page: 1 };
  history.pushState(null, "", `?k=${state.k}`);
  run(state);
}

$("search-form").addEventListener("submit", (event) => {
  event.preventDefault();
  uploaded = null;
  const state = { q: $("q").value, k: parseInt($("k").value, 10), page: 1 };
  pushState(state);
  run(state);
});

$("k").addEventListener("change", () => {
  const state = { ...currentState(), k: parseInt($("k").value, 10), page: 1 };
  pushState(state);
  run(state);
});

function turnPage(step) {
  const state = currentState();
  state.page = Math.max(1, state.page + step);
  pushState(state);
  run(state);
  window.scrollTo(0, 0);
}
$("prev").addEventListener("click", () => turnPage(-1));
$("next").addEventListener("click", () => turnPage(1));

$("file").addEventListener("change", () => {
  searchPicture($("file").files[0]);
  $("file").value = "";
});

let dragDepth = 0;
document.addEventListener("dragenter", (event) => {
  event.preventDefault();
  dragDepth += 1;
  $("drop-overlay").hidden = false;
});
document.addEventListener("dragleave", () => {
  dragDepth = Math.max(0, dragDepth - 1);
  if (!dragDepth) $("drop-overlay").hidden = true;
});
document.addEventListener("dragover", (event) => event.preventDefault());
document.addEventListener("drop", (event) => {
  event.preventDefault();
  dragDepth = 0;
  $("drop-overlay").hidden = true;
  searchPicture(event.dataTransfer.files[0]);
});

window.addEventListener("popstate", () => {
  uploaded = null;
  run(currentState());
});

fetch("/api/index").then(readAnswer).then((info) => showIndex(info, info.warning)).catch(() => {});
run(currentState());
