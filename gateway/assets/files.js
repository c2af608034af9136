// The file browser: the current folder (from the address's #fragment),
// its breadcrumbs, files and sub-folders from the server a level at a
// time, search as you type, sorting, selection, thumbnails, downloads and
// deletes.
"use strict";

import {
  $, Problem, baseName, download, fileUrl, headers, human, problem, retrying, send, token, when,
} from "./api.js";
import { askFolderName, confirmAction, kindOf, preview } from "./dialogs.js";

const PAGE = 1000;
/** A folder view loads this many entries by itself; beyond, "Show more". */
const AUTO_ENTRIES = 5000;
/** A search keeps asking while it has found fewer than this. */
const SEARCH_WANT = 200;
/** Thumbnails only for images this small (the list fetches them whole). */
const THUMB_MAX = 3e6;

const view = {
  prefix: "",
  q: "",
  sort: "name:asc",
  folders: [], // prefixes
  files: [], // {key, size, md5, etag, last_modified}
  cursor: null,
  scanned: 0,
  selected: new Set(), // keys and folder prefixes
  loaded: false,
};
/** Folders made here that hold no file yet: they exist in this tab only. */
const newFolders = new Set();
let hooks = { needLogin() {}, changed() {} };
let loading = null; // AbortController of the listing in progress
let thumbs = new Map(); // key -> object URL (signed in)
let thumbObserver = null;

export function currentPrefix() { return view.prefix; }

// ------------------------------------------------------------ icons

const ICONS = {
  folder: "M3 7a2 2 0 0 1 2-2h4l2 2h8a2 2 0 0 1 2 2v8a2 2 0 0 1-2 2H5a2 2 0 0 1-2-2z",
  file: "M7 3h7l5 5v11a2 2 0 0 1-2 2H7a2 2 0 0 1-2-2V5a2 2 0 0 1 2-2zM14 3v5h5",
  download: "M12 4v11m0 0l-5-5m5 5l5-5M5 20h14",
  trash: "M4 7h16M10 11v6M14 11v6M9 7V4h6v3M6 7l1 13h10l1-13",
};

export function icon(name) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("class", "icon");
  svg.setAttribute("aria-hidden", "true");
  const path = document.createElementNS(ns, "path");
  path.setAttribute("d", ICONS[name]);
  svg.append(path);
  return svg;
}

function button(text, iconName, cls, onClick, label) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = cls || "";
  if (iconName) b.append(icon(iconName));
  const span = document.createElement("span");
  span.className = "label";
  span.textContent = text;
  b.append(span);
  if (label) b.setAttribute("aria-label", label);
  b.addEventListener("click", onClick);
  return b;
}

// ------------------------------------------------------------ navigation

function prefixFromHash() {
  const h = location.hash.replace(/^#\/?/, "");
  let p;
  try { p = decodeURIComponent(h); } catch (_) { p = ""; }
  return p && !p.endsWith("/") ? p + "/" : p;
}

export function navigate(prefix) {
  const hash = "#/" + prefix.split("/").map(encodeURIComponent).join("/");
  if (location.hash === hash) { reload(); return; }
  location.hash = hash;
}

function crumbs() {
  const nav = $("crumbs");
  const parts = view.prefix ? view.prefix.slice(0, -1).split("/") : [];
  const items = [];
  const link = (text, prefix, current) => {
    const a = document.createElement("a");
    a.href = "#/" + prefix.split("/").map(encodeURIComponent).join("/");
    a.textContent = text;
    if (current) a.setAttribute("aria-current", "page");
    return a;
  };
  items.push(link("All files", "", parts.length === 0));
  let acc = "";
  parts.forEach((p, i) => {
    acc += p + "/";
    const sep = document.createElement("span");
    sep.className = "sep";
    sep.setAttribute("aria-hidden", "true");
    sep.textContent = "/";
    items.push(sep, link(p || "(unnamed)", acc, i === parts.length - 1));
  });
  nav.replaceChildren(...items);
  nav.hidden = parts.length === 0;
  const title = parts.length ? parts[parts.length - 1] || "(unnamed)" : "All files";
  $("folder-title").textContent = title;
  document.title = parts.length ? `${title} — STEP Files` : "STEP Files";
}

// ------------------------------------------------------------ loading

function status(text, action) {
  const p = $("list-status");
  p.replaceChildren();
  if (text) p.append(document.createTextNode(text));
  if (action) p.append(" ", action);
  p.hidden = !text;
}

async function fetchPage(signal) {
  const q = new URLSearchParams({ prefix: view.prefix, limit: String(PAGE) });
  if (view.q) q.set("q", view.q); else q.set("delimiter", "/");
  if (view.cursor) q.set("cursor", view.cursor);
  return retrying(async () => {
    const r = await send("/files?" + q, { headers: headers(), cache: "no-store", signal }, "list");
    if (r.status === 501) {
      throw new Problem("This server cannot list files. Uploads, and downloads by name, still work.");
    }
    if (!r.ok) throw await problem(r, "see the files");
    return r.json();
  }, { signal, onWait: (p) => status(p.message) });
}

/** Loads the current folder (or search) from the start. */
export async function reload() {
  if (loading) loading.abort();
  loading = new AbortController();
  const signal = loading.signal;
  view.prefix = prefixFromHash();
  view.folders = [];
  view.files = [];
  view.cursor = null;
  view.scanned = 0;
  view.loaded = false;
  crumbs();
  const slow = setTimeout(() => status(view.q ? "Searching…" : "Loading…"), 300);
  try {
    await loadMore(signal);
  } finally {
    clearTimeout(slow);
  }
}

async function loadMore(signal) {
  for (;;) {
    let page;
    try {
      page = await fetchPage(signal);
    } catch (e) {
      if (e.name === "AbortError") return;
      if (e.signIn) hooks.needLogin(e.message);
      view.loaded = true;
      render();
      status(e.message);
      return;
    }
    if (signal.aborted) return;
    view.folders.push(...page.folders.map((f) => f.prefix));
    view.files.push(...page.files);
    view.scanned += page.files.length + page.folders.length;
    view.cursor = page.next_cursor;
    view.loaded = true;
    render();
    const count = view.files.length + view.folders.length;
    const keepGoing = view.cursor && (view.q ? count < SEARCH_WANT : count < AUTO_ENTRIES);
    if (!keepGoing) return;
  }
}

// ------------------------------------------------------------ rendering

function sorted() {
  const [by, dir] = view.sort.split(":");
  const sign = dir === "desc" ? -1 : 1;
  const name = (a, b) => a.localeCompare(b, undefined, { numeric: true, sensitivity: "base" });
  const files = view.files.slice().sort((a, b) => {
    let c = 0;
    if (by === "size") c = a.size - b.size;
    else if (by === "date") c = Date.parse(a.last_modified) - Date.parse(b.last_modified);
    return c ? sign * c : name(a.key, b.key) * (by === "name" ? sign : 1);
  });
  const local = [...newFolders].filter((f) => f.startsWith(view.prefix)
    && f.slice(view.prefix.length).split("/").length === 2 && !view.folders.includes(f) && !view.q);
  const folders = [...view.folders, ...local].sort((a, b) => (by === "name" ? sign : 1) * name(a, b));
  return { folders, files };
}

function label(key) {
  // In a search, where a file is matters: the path below this folder.
  return view.q ? key.slice(view.prefix.length) : baseName(key);
}

function check(id, text) {
  const box = document.createElement("input");
  box.type = "checkbox";
  box.checked = view.selected.has(id);
  box.setAttribute("aria-label", `Select ${text}`);
  box.addEventListener("change", () => {
    if (box.checked) view.selected.add(id); else view.selected.delete(id);
    selectionBar();
  });
  const td = document.createElement("td");
  td.className = "pick";
  td.append(box);
  return td;
}

function cell(cls, text) {
  const td = document.createElement("td");
  td.className = cls;
  if (text !== undefined) td.textContent = text;
  return td;
}

function folderRow(prefix) {
  const tr = document.createElement("tr");
  tr.dataset.folder = prefix;
  tr.className = "folder";
  const name = baseName(prefix) || "(unnamed)";
  const open = document.createElement("a");
  open.href = "#/" + prefix.split("/").map(encodeURIComponent).join("/");
  open.className = "open";
  open.append(icon("folder"));
  const span = document.createElement("span");
  span.textContent = name;
  open.append(span);
  const td = cell("name");
  td.append(open);
  if (newFolders.has(prefix) && !view.folders.includes(prefix)) {
    const note = document.createElement("span");
    note.className = "meta";
    note.textContent = "new, empty";
    td.append(note);
  }
  const actions = cell("actions");
  actions.append(
    button("Download", "download", "small", () => download({ prefix: view.prefix, folders: [prefix] }), `Download the folder ${name} as a zip`),
    button("Delete", "trash", "small danger", () => removeAll([], [prefix]), `Delete the folder ${name}`),
  );
  tr.append(check(prefix, `the folder ${name}`), td, cell("size", "—"), cell("date", ""), actions);
  return tr;
}

function fileRow(f, list, index) {
  const tr = document.createElement("tr");
  tr.dataset.key = f.key;
  const text = label(f.key);
  const open = document.createElement("button");
  open.type = "button";
  open.className = "open";
  open.title = f.key;
  const kind = kindOf(f.key);
  if (kind === "image" && f.size <= THUMB_MAX) open.append(thumb(f));
  else open.append(icon("file"));
  const span = document.createElement("span");
  span.textContent = text;
  open.append(span);
  open.addEventListener("click", () => preview(list, index));
  const td = cell("name");
  td.append(open);
  const meta = document.createElement("span");
  meta.className = "meta";
  meta.textContent = `${human(f.size)} · ${when(f.last_modified)}`;
  td.append(meta);
  const actions = cell("actions");
  // Rename and move join these once the store can rename a file (an atomic
  // store operation); they fit here as a third button.
  actions.append(
    button("Download", "download", "small", () => download({ prefix: view.prefix, keys: [f.key] }), `Download ${text}`),
    button("Delete", "trash", "small danger", () => removeAll([f.key], []), `Delete ${text}`),
  );
  const date = cell("date", when(f.last_modified));
  date.title = new Date(f.last_modified).toLocaleString();
  tr.append(check(f.key, text), td, cell("size", human(f.size)), date, actions);
  return tr;
}

function thumb(f) {
  const img = document.createElement("img");
  img.className = "thumb";
  img.alt = "";
  img.loading = "lazy";
  img.decoding = "async";
  img.width = 28;
  img.height = 28;
  if (!token()) {
    img.src = fileUrl(f.key);
  } else if (thumbs.has(f.key)) {
    img.src = thumbs.get(f.key);
  } else {
    img.dataset.key = f.key;
    if (thumbObserver) thumbObserver.observe(img);
  }
  img.addEventListener("error", () => img.replaceWith(icon("file")));
  return img;
}

async function loadThumb(img) {
  const key = img.dataset.key;
  try {
    const r = await fetch(fileUrl(key), { headers: headers() });
    if (!r.ok) return;
    const url = URL.createObjectURL(await r.blob());
    thumbs.set(key, url);
    img.src = url;
  } catch (_) { /* the icon stays */ }
}

function emptyText() {
  if (view.q) return `Nothing in ${view.prefix ? "this folder" : "your files"} matches “${view.q}”.`;
  if (newFolders.has(view.prefix)) return "This folder is new and empty. It is kept once you upload a file into it.";
  if (view.prefix) return "This folder is empty. Drop files here, or use Upload files.";
  return "No files yet. Drop files here, or use Upload files.";
}

function render() {
  const { folders, files } = sorted();
  const rows = [];
  for (const f of folders) rows.push(folderRow(f));
  files.forEach((f, i) => rows.push(fileRow(f, files, i)));
  $("file-rows").replaceChildren(...rows);
  const empty = rows.length === 0;
  $("files").hidden = empty;
  if (empty && view.loaded) {
    const clear = view.q ? button("Clear the search", null, "ghost", () => { $("search").value = ""; search(""); }) : null;
    status(emptyText(), clear);
  } else if (view.q && view.loaded) {
    status(`${files.length} found${view.cursor ? " so far" : ""} for “${view.q}”.`);
  } else {
    status("");
  }
  $("more").hidden = !view.cursor || !view.loaded;
  for (const th of document.querySelectorAll("#files th[aria-sort]")) th.removeAttribute("aria-sort");
  const [by, dir] = view.sort.split(":");
  const th = document.querySelector(`#files th.${by}`);
  if (th) th.setAttribute("aria-sort", dir === "asc" ? "ascending" : "descending");
  selectionBar();
}

// ------------------------------------------------------------ selection

function selectionBar() {
  const n = view.selected.size;
  $("selection").hidden = n === 0;
  $("selection-count").textContent = n === 1 ? "1 selected" : `${n} selected`;
  const all = view.files.length + view.folders.length;
  $("select-all").checked = all > 0 && n >= all;
}

function selected() {
  const keys = [];
  const folders = [];
  for (const id of view.selected) (id.endsWith("/") && !view.files.some((f) => f.key === id) ? folders : keys).push(id);
  return { keys, folders };
}

async function keysBelow(prefix) {
  const out = [];
  let cursor = null;
  do {
    const q = new URLSearchParams({ prefix, limit: String(PAGE) });
    if (cursor) q.set("cursor", cursor);
    const page = await retrying(async () => {
      const r = await send("/files?" + q, { headers: headers(), cache: "no-store" }, "list");
      if (!r.ok) throw await problem(r, "find the files in the folder");
      return r.json();
    });
    out.push(...page.files.map((f) => f.key));
    cursor = page.next_cursor;
  } while (cursor);
  return out;
}

async function removeAll(keys, folders) {
  const what = [];
  if (keys.length) what.push(keys.length === 1 ? `“${label(keys[0])}”` : `${keys.length} files`);
  if (folders.length) {
    what.push(folders.length === 1 ? `the folder “${baseName(folders[0])}” and everything in it`
      : `${folders.length} folders and everything in them`);
  }
  const ok = await confirmAction(`Delete ${what.join(" and ")}?`,
    "Deleted files cannot be brought back.", "Delete");
  if (!ok) return;
  try {
    const all = keys.slice();
    for (const f of folders) {
      status(`Finding the files in “${baseName(f)}”…`);
      all.push(...await keysBelow(f));
      newFolders.delete(f);
    }
    let done = 0;
    const next = async () => {
      while (all.length) {
        const key = all.shift();
        await retrying(async () => {
          const r = await send(fileUrl(key), { method: "DELETE", headers: headers() }, "delete");
          if (!r.ok && r.status !== 404) throw await problem(r, `delete “${baseName(key)}”`);
        });
        done++;
        if (done % 10 === 0) status(`Deleted ${done}…`);
      }
    };
    await Promise.all([next(), next(), next(), next()]);
    for (const k of keys) view.selected.delete(k);
    for (const f of folders) view.selected.delete(f);
    hooks.changed(`Deleted ${what.join(" and ")}.`, true);
  } catch (e) {
    if (e.signIn) hooks.needLogin(e.message);
    hooks.changed(e.message);
  }
  reload();
}

// ------------------------------------------------------------ search, sort, folders

let searchTimer = null;

function search(text) {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => {
    view.q = text.trim();
    view.selected.clear();
    reload();
  }, 180);
}

function setSort(value) {
  view.sort = value;
  $("sort").value = value;
  localStorage.setItem("step-sort", value);
  render();
}

async function newFolder() {
  const name = await askFolderName((n) => {
    if (!n) return "Type a name for the folder.";
    if (n.includes("/")) return "A folder name cannot contain “/”.";
    if (n === "." || n === "..") return "Choose another name.";
    if (view.folders.includes(view.prefix + n + "/")) return "A folder with this name exists here.";
    return "";
  });
  if (!name) return;
  const prefix = view.prefix + name + "/";
  newFolders.add(prefix);
  navigate(prefix);
}

/** A folder made here now has a file: it exists on the server. */
export function uploadedInto(key) {
  for (const f of [...newFolders]) if (key.startsWith(f)) newFolders.delete(f);
}

export function clearSelection() {
  view.selected.clear();
  render();
}

export function initFiles(h) {
  hooks = h;
  const saved = localStorage.getItem("step-sort");
  if (saved) { view.sort = saved; $("sort").value = saved; }
  if ("IntersectionObserver" in window) {
    thumbObserver = new IntersectionObserver((entries) => {
      for (const e of entries) {
        if (!e.isIntersecting) continue;
        thumbObserver.unobserve(e.target);
        loadThumb(e.target);
      }
    }, { rootMargin: "200px" });
  }
  $("search").addEventListener("input", (ev) => search(ev.target.value));
  $("search").addEventListener("keydown", (ev) => {
    if (ev.key === "Escape" && ev.target.value) { ev.target.value = ""; search(""); }
  });
  $("sort").addEventListener("change", (ev) => setSort(ev.target.value));
  for (const b of document.querySelectorAll("#files .sorter")) {
    b.addEventListener("click", () => {
      const by = b.dataset.sort;
      const [cur, dir] = view.sort.split(":");
      const flip = cur === by ? (dir === "asc" ? "desc" : "asc") : (by === "name" ? "asc" : "desc");
      setSort(`${by}:${flip}`);
    });
  }
  $("select-all").addEventListener("change", (ev) => {
    view.selected.clear();
    if (ev.target.checked) {
      for (const f of view.folders) view.selected.add(f);
      for (const f of view.files) view.selected.add(f.key);
    }
    render();
  });
  $("sel-clear").addEventListener("click", clearSelection);
  $("sel-download").addEventListener("click", () => download(Object.assign({ prefix: view.prefix }, selected())));
  $("sel-delete").addEventListener("click", () => { const s = selected(); removeAll(s.keys, s.folders); });
  $("new-folder").addEventListener("click", newFolder);
  $("more").addEventListener("click", () => { if (loading) loadMore(loading.signal); });
  window.addEventListener("hashchange", () => {
    view.q = "";
    $("search").value = "";
    view.selected.clear();
    for (const url of thumbs.values()) URL.revokeObjectURL(url);
    thumbs = new Map();
    reload().then(() => $("folder-title").focus({ preventScroll: true }));
  });
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "/" && !["INPUT", "TEXTAREA", "SELECT"].includes(document.activeElement.tagName)
      && !document.querySelector("dialog[open]")) {
      ev.preventDefault();
      $("search").focus();
    }
  });
}
