// The search page: pick or drop an image, POST its bytes, show the results; click one for more like it.
// Paths are data from the disk: they only ever reach the page as textContent, never as HTML.
"use strict";

const grid = document.getElementById("grid");
const title = document.getElementById("title");
const statusLine = document.getElementById("status");
const drop = document.getElementById("drop");
const fileInput = document.getElementById("file");
const kSelect = document.getElementById("k");
const flipBox = document.getElementById("flip");
const cropsBox = document.getElementById("crops");
let queryPreview = null;  // the blob: URL of the uploaded image, revoked when replaced
let lastFile = null;  // searched again when the "mirrored too" or "crops too" toggle changes

function say(text, isError) {
  statusLine.textContent = text;
  statusLine.className = isError ? "error" : "";
}

function picture(src) {
  const img = document.createElement("img");
  img.alt = "";
  img.src = src;
  img.addEventListener("error", () => {
    const missing = document.createElement("div");
    missing.className = "missing";
    missing.textContent = "no preview";
    img.replaceWith(missing);
  });
  return img;
}

function figure(src, path, score, css) {
  const fig = document.createElement("figure");
  if (css) fig.className = css;
  fig.appendChild(picture(src));
  const caption = document.createElement("figcaption");
  if (score !== null) {
    const s = document.createElement("span");
    s.className = "score";
    s.textContent = score.toFixed(4);
    caption.appendChild(s);
  }
  const p = document.createElement("span");
  p.className = "path";
  p.textContent = path;
  caption.appendChild(p);
  fig.appendChild(caption);
  return fig;
}

function show(heading, query, answer) {
  title.textContent = heading;
  title.hidden = false;
  grid.replaceChildren();
  grid.appendChild(figure(query.src, query.path, null, "query"));
  for (const r of answer.results) {
    const fig = figure(r.thumb, r.path, r.score, "result");
    fig.title = "More like this";
    fig.addEventListener("click", () => moreLike(r));
    grid.appendChild(fig);
  }
  say(answer.results.length ? `${answer.results.length} results` : "No matches.", false);
}

async function call(url, options) {
  const response = await fetch(url, options);
  let body = {};
  try {
    body = await response.json();
  } catch (e) {
    body = { error: `HTTP ${response.status}` };
  }
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

async function search(file) {
  if (!file) return;
  lastFile = file;
  say("Searching…", false);
  try {
    const flip = flipBox.checked ? "&flip=true" : "";
    const crops = cropsBox.checked ? "&crops=true" : "";
    const answer = await call(`/api/search?k=${kSelect.value}${flip}${crops}`, {
      method: "POST",
      headers: { "Content-Type": file.type || "application/octet-stream" },
      body: file,
    });
    if (queryPreview) URL.revokeObjectURL(queryPreview);
    queryPreview = URL.createObjectURL(file);
    show("Most similar to the chosen image", { src: queryPreview, path: file.name }, answer);
  } catch (e) {
    say(e.message, true);
  }
}

async function moreLike(result) {
  say("Searching…", false);
  try {
    const answer = await call(`/api/like?path=${result.ref}&k=${kSelect.value}`);
    show("More like this", { src: result.thumb, path: result.path }, answer);
    window.scrollTo(0, 0);
  } catch (e) {
    say(e.message, true);
  }
}

flipBox.addEventListener("change", () => search(lastFile));
cropsBox.addEventListener("change", () => search(lastFile));
fileInput.addEventListener("change", () => {
  search(fileInput.files[0]);
  fileInput.value = "";  // choosing the same file again must search again
});
for (const name of ["dragenter", "dragover"]) {
  drop.addEventListener(name, (e) => {
    e.preventDefault();
    drop.classList.add("over");
  });
}
for (const name of ["dragleave", "drop"]) {
  drop.addEventListener(name, () => drop.classList.remove("over"));
}
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  search(e.dataTransfer.files[0]);
});
