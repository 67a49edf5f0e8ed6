// The Duplicates view: groups paged by the server, actions per group, a threshold histogram.
// Paths are data from the disk: they only ever reach the page as textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const view = {
  threshold: Number(params.get("threshold") || $("threshold").value),
  exact: params.get("exact") === "true",
  offset: Number(params.get("offset") || 0),
  limit: Number(params.get("limit") || $("limit").value),
};
let groupsTimer = null;
let histogramTimer = null;

function say(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function element(tag, css, text) {
  const node = document.createElement(tag);
  if (css) node.className = css;
  if (text !== undefined) node.textContent = text;
  return node;
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
  return { status: response.status, body };
}

function post(url, body) {
  // JSON, which a form on another site cannot send: the server refuses anything else.
  return call(url, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
}

function query() {
  return `threshold=${view.threshold}&exact=${view.exact}`;
}

function remember() {
  history.replaceState(null, "", `/duplicates?${query()}&offset=${view.offset}&limit=${view.limit}`);
}

function bytes(n) {
  if (n >= 1 << 20) return `${(n / (1 << 20)).toFixed(1)} MiB`;
  if (n >= 1024) return `${(n / 1024).toFixed(0)} KiB`;
  return `${n} B`;
}

function member(group, m) {
  const fig = element("figure", "member");
  const img = element("img");
  img.alt = "";
  img.src = m.thumb;
  img.addEventListener("error", () => img.replaceWith(element("div", "missing", "no preview")));
  fig.appendChild(img);
  const caption = element("figcaption");
  caption.appendChild(element("span", "score", m.score.toFixed(4)));
  caption.appendChild(element("span", "path", m.path));
  const size = m.width ? `${m.width}×${m.height}` : "unreadable";
  caption.appendChild(element("span", "facts", `${bytes(m.size)} · ${size} · ${m.mtime.replace("T", " ")}`));
  const keep = element("button", "keep-one", "Keep this one");
  keep.type = "button";
  keep.addEventListener("click", () => confirmKeep(group, m));
  caption.appendChild(keep);
  fig.appendChild(caption);
  return fig;
}

function confirmKeep(group, kept) {
  const box = group.node.querySelector(".confirm");
  const others = group.data.members.filter((m) => m.ref !== kept.ref);
  box.replaceChildren(element("p", "", `Keep ${kept.path} and move ${others.length} other file(s) to the trash?`));
  const list = element("ul");
  for (const m of others) list.appendChild(element("li", "", m.path));
  box.appendChild(list);
  const yes = element("button", "confirm-trash", "Move to the trash");
  const no = element("button", "cancel", "Cancel");
  yes.type = no.type = "button";
  no.addEventListener("click", () => { box.hidden = true; });
  yes.addEventListener("click", () => act(group.node, () => post("/api/duplicates/keep", {
    keep: kept.ref, trash: others.map((m) => m.ref), threshold: view.threshold, exact: view.exact,
  }), (body) => {
    const failed = body.trashed.filter((t) => t.error);
    return failed.length ? `Could not trash: ${failed.map((t) => `${t.path} (${t.error})`).join("; ")}`
      : `Kept ${body.kept}; ${body.trashed.length} file(s) moved to the trash.`;
  }));
  box.append(yes, no);
  box.hidden = false;
}

// One request at a time per group: its buttons are off from the click on. After an error they come
// back; after a success they stay off (and the question closes) until the group is redrawn, which
// may wait for a recomputation: its files may be in the trash already.
async function act(node, send, describe) {
  const buttons = [node, ...node.querySelectorAll("button")].filter((b) => b.tagName === "BUTTON" && !b.disabled);
  for (const b of buttons) b.disabled = true;
  try {
    const { body } = await send();
    say(describe(body), false);
  } catch (e) {
    for (const b of buttons) b.disabled = false;
    say(e.message, true);
    return;
  }
  const box = node.querySelector(".confirm");
  if (box) box.hidden = true;
  if (node.id === "unhide") node.disabled = false;  // the page's own button, not a group's
  loadGroups("action");
  loadHistogram();
}

function groupNode(data) {
  const group = { data, node: element("section", "group") };
  const refs = data.members.map((m) => m.ref);
  const head = element("h3");
  head.appendChild(element("span", "kind", data.kind));
  head.appendChild(element("span", "", `${data.members.length} files, best score ${data.max_score.toFixed(4)}`));
  const distinct = element("button", "distinct", "Not duplicates");
  distinct.title = "Never group these files together again (recorded as a verdict)";
  distinct.addEventListener("click", () => act(group.node, () => post("/api/duplicates/distinct", { paths: refs }),
    () => `Marked ${refs.length} files as not duplicates.`));
  const keepAll = element("button", "keep-all", "Keep all");
  keepAll.title = "Hide this group for this review (nothing is recorded)";
  keepAll.addEventListener("click", () => act(group.node, () => post("/api/duplicates/keep-all", { paths: refs }),
    () => "Group hidden for this review."));
  distinct.type = keepAll.type = "button";
  if (data.kind === "exact") {
    distinct.disabled = true;  // the server refuses it too: the same bytes are the same image
    distinct.title = "Byte-identical copies cannot be marked as not duplicates";
  }
  head.append(distinct, keepAll);
  group.node.appendChild(head);
  const members = element("div", "members");
  for (const m of data.members) members.appendChild(member(group, m));
  group.node.appendChild(members);
  const box = element("div", "confirm");
  box.hidden = true;
  group.node.appendChild(box);
  return group.node;
}

// mode: "user" (a new view: says when it was computed), "action" (after an action: keeps its
// message), "poll" (a background refresh: keeps the message, and waits while a question is open).
async function loadGroups(mode = "user") {
  clearTimeout(groupsTimer);
  remember();
  let answer;
  try {
    answer = await call(`/api/duplicates?${query()}&offset=${view.offset}&limit=${view.limit}`);
  } catch (e) {
    say(e.message, true);
    return;
  }
  const page = answer.body;
  if (answer.status === 202) {
    const since = page.computing_since ? Math.round((Date.now() - Date.parse(page.computing_since)) / 1000) : 0;
    if (mode === "user") say(`Computing the duplicate groups… ${since} s so far (a large library takes minutes)`, false);
    groupsTimer = setTimeout(() => loadGroups(mode), 1000);
    return;
  }
  if (page.offset >= page.total && page.total > 0) {
    view.offset = Math.max(0, page.total - (page.total % view.limit || view.limit));
    return loadGroups();
  }
  if (mode === "poll" && document.querySelector(".group .confirm:not([hidden])")) {
    // A background refresh must not take away a question the user is answering.
    groupsTimer = setTimeout(() => loadGroups("poll"), 2000);
    return;
  }
  $("groups").replaceChildren(...page.groups.map(groupNode));
  const last = Math.min(page.total, page.offset + page.groups.length);
  $("range").textContent = page.total ? `groups ${page.offset + 1}–${last} of ${page.total}` : "no groups";
  $("prev").disabled = page.offset === 0;
  $("next").disabled = last >= page.total;
  $("unhide").hidden = page.hidden === 0;
  $("unhide").textContent = `show ${page.hidden} kept group(s) again`;
  if (page.stale) {
    groupsTimer = setTimeout(() => loadGroups("poll"), 2000);  // the fresh result replaces this one
  }
  if (mode === "user") {
    say(page.stale ? "The index changed: updating…" : `Computed ${page.computed_at}`, false);
  }
}

function mark(css, score, range, title) {
  const node = element("div", `mark ${css}`);
  node.style.left = `${((score - range.low) / (range.high - range.low)) * 100}%`;
  node.title = title;
  return node;
}

async function loadHistogram() {
  clearTimeout(histogramTimer);
  let answer;
  try {
    answer = await call(`/api/duplicates/histogram?threshold=${view.threshold}`);
  } catch (e) {
    $("legend").textContent = e.message;
    return;
  }
  const h = answer.body;
  if (answer.status === 202 || !h.bins.length) {
    $("legend").textContent = answer.status === 202 ? "Scoring each file's nearest neighbour…" : "Nothing indexed.";
    if (answer.status === 202) histogramTimer = setTimeout(loadHistogram, 1000);
    return;
  }
  const range = { low: h.bins[0].low, high: h.bins[h.bins.length - 1].high };
  const most = Math.max(...h.bins.map((b) => b.count), 1);
  const bars = h.bins.map((b) => {
    const bar = element("div", b.low >= view.threshold ? "bar above" : "bar");
    bar.style.height = `${(b.count / most) * 100}%`;
    bar.title = `${b.low.toFixed(3)}–${b.high.toFixed(3)}: ${b.count} file(s)`;
    return bar;
  });
  const marks = [mark("threshold", view.threshold, range, `threshold ${view.threshold}`)];
  for (const v of h.verdicts) marks.push(mark("verdict", v.score, range, `not duplicates: ${v.a} / ${v.b} (${v.score.toFixed(4)})`));
  for (const s of h.confirmed) marks.push(mark("confirmed", s, range, `confirmed duplicates (${s.toFixed(4)})`));
  if (h.suggested !== null) marks.push(mark("suggested", h.suggested, range, `suggested ${h.suggested}`));
  $("bars").replaceChildren(...bars, ...marks);
  $("axis").replaceChildren(element("span", "", range.low.toFixed(3)), element("span", "", "1.000"));
  const sample = h.files < h.indexed ? ` (a sample of ${h.files} of ${h.indexed})` : "";
  $("legend").textContent = `Each file's best score to another file${sample}. Black: the threshold; `
    + `red: ${h.verdicts.length} "not duplicates" verdict(s); green ticks: ${h.confirmed.length} confirmed duplicate pair(s).`;
  $("suggest").hidden = h.suggested === null || h.suggested === view.threshold;
  $("suggest").textContent = `Use the threshold that separates them best: ${h.suggested?.toFixed(4)}`;
  $("suggest").dataset.value = String(h.suggested);
}

function setThreshold(value) {
  if (!(value > 0 && value <= 1)) return;
  view.threshold = value;
  view.offset = 0;
  $("threshold").value = String(value);
  loadGroups();
  loadHistogram();
}

$("threshold").value = String(view.threshold);
$("exact").checked = view.exact;
$("limit").value = String(view.limit);
$("threshold").addEventListener("change", () => setThreshold(Number($("threshold").value)));
$("suggest").addEventListener("click", () => setThreshold(Number($("suggest").dataset.value)));
$("exact").addEventListener("change", () => { view.exact = $("exact").checked; view.offset = 0; loadGroups(); });
$("limit").addEventListener("change", () => { view.limit = Number($("limit").value); view.offset = 0; loadGroups(); });
$("prev").addEventListener("click", () => { view.offset = Math.max(0, view.offset - view.limit); loadGroups(); });
$("next").addEventListener("click", () => { view.offset += view.limit; loadGroups(); });
$("unhide").addEventListener("click", () => act($("unhide"), () => post("/api/duplicates/unhide", {}), () => "Kept groups shown again."));
loadGroups();
loadHistogram();
