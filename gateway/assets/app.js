// The gateway's page: uploads through tus (/tus/, resumable across dropped
// connections and page reloads), the listing (/files), download and delete.
// No framework, nothing loaded from elsewhere.
"use strict";

const TOKEN_KEY = "step-token";
const USER_KEY = "step-user";
// Unfinished uploads per user ("step-tus-uploads:" + user name, "" when not
// signed in): fingerprint -> {url, name, size}. Cleared at sign-out.
const UPLOADS_KEY = "step-tus-uploads:";
const PARALLEL = 3; // files uploading at once
const CHUNK_TARGET = 8 << 20; // bytes per PATCH, rounded to whole blocks
const RETRIES = 8; // attempts after a failed PATCH before giving up
const PAGE = 100;

const $ = (id) => document.getElementById(id);

// ------------------------------------------------------------ auth

function token() { return sessionStorage.getItem(TOKEN_KEY); }

function authHeaders(extra) {
  // Marks the page's own requests: the gateway then answers a 401 without the
  // Basic challenge, so the browser leaves the sign-in to the page's form
  // instead of popping up its own dialog.
  const h = Object.assign({ "X-Requested-With": "XMLHttpRequest" }, extra || {});
  const t = token();
  if (t) h["Authorization"] = "Bearer " + t;
  return h;
}

function showWho() {
  const user = sessionStorage.getItem(USER_KEY);
  $("who").hidden = !user;
  $("who-name").textContent = user ? "Signed in as " + user : "";
}

function needLogin(why) {
  $("login").hidden = false;
  $("login-why").textContent = why || "This gateway needs you to sign in.";
  $("username").focus();
}

async function login(ev) {
  ev.preventDefault();
  const username = $("username").value.trim();
  const password = $("password").value;
  const body = { username };
  if (password) body.password = password;
  try {
    const r = await fetch("/login", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    if (!r.ok) throw new Error(await errorText(r, "signing in"));
    const { token } = await r.json();
    sessionStorage.setItem(TOKEN_KEY, token);
    sessionStorage.setItem(USER_KEY, username);
    $("login").hidden = true;
    $("password").value = "";
    clearError();
    showWho();
    showPending();
    listFiles(true);
  } catch (e) {
    showError(e.message);
  }
}

/** Where the signed-in user's (or the anonymous) unfinished uploads live. */
function uploadsKey() { return UPLOADS_KEY + (sessionStorage.getItem(USER_KEY) || ""); }

/**
 * Signing out ends what the session started: uploads in progress stop, the
 * unfinished ones are cancelled on the server and forgotten here, so the
 * next person at this browser sees none of their names or URLs.
 */
async function logout() {
  if (active.size && !confirm(`Sign out and cancel ${active.size} upload(s) in progress?`)) return;
  queue.length = 0;
  for (const u of active) u.cancel();
  const key = uploadsKey();
  const left = Object.values(remembered(key));
  localStorage.removeItem(key);
  await Promise.allSettled(left.map((e) =>
    fetch(e.url, { method: "DELETE", headers: tusHeaders() })));
  sessionStorage.removeItem(TOKEN_KEY);
  sessionStorage.removeItem(USER_KEY);
  $("uploads").replaceChildren();
  showWho();
  showPending();
  listFiles(true);
}

// ------------------------------------------------------------ errors

function showError(text) {
  $("error").textContent = text;
  $("error").hidden = false;
}

function clearError() { $("error").hidden = true; }

/** A sentence for a failed response: the gateway's JSON message if any. */
async function errorText(r, doing) {
  let msg = "";
  try {
    const body = await r.json();
    msg = body.message || body.error || "";
  } catch (_) { /* not JSON */ }
  if (r.status === 401 || r.status === 403) {
    needLogin(r.status === 403 ? "You are not allowed to do that; sign in as someone who is." : undefined);
    return `Not allowed while ${doing} (HTTP ${r.status})${msg ? ": " + msg : ""}. Sign in and try again.`;
  }
  return `Failed while ${doing} (HTTP ${r.status})${msg ? ": " + msg : ""}.`;
}

// ------------------------------------------------------------ keys and sizes

/** /files/{key}: each segment escaped ("." and ".." too). */
function fileUrl(key) {
  return "/files/" + key.split("/").map((s) =>
    s === "." ? "%2E" : s === ".." ? "%2E%2E" : encodeURIComponent(s)).join("/");
}

function human(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : String(n)) + " " + units[i];
}

function base64Utf8(text) {
  let bin = "";
  for (const b of new TextEncoder().encode(text)) bin += String.fromCharCode(b);
  return btoa(bin);
}

// ------------------------------------------------------------ listing

let cursor = null;

async function listFiles(fresh) {
  if (fresh) cursor = null;
  const q = new URLSearchParams({ limit: String(PAGE) });
  const prefix = $("prefix").value;
  if (prefix) q.set("prefix", prefix);
  if (cursor) q.set("cursor", cursor);
  const note = $("list-note");
  let r;
  try {
    r = await fetch("/files?" + q, { headers: authHeaders(), cache: "no-store" });
  } catch (e) {
    note.textContent = "The gateway cannot be reached: " + e.message;
    note.hidden = false;
    return;
  }
  if (r.status === 501 || r.status === 404) {
    note.textContent = "This gateway's storage cannot list files. Uploads, and downloads by key, still work.";
    note.hidden = false;
    $("file-rows").replaceChildren();
    $("files").hidden = true;
    $("more").hidden = true;
    return;
  }
  if (!r.ok) {
    note.textContent = await errorText(r, "listing the files");
    note.hidden = false;
    return;
  }
  const page = await r.json();
  const rows = $("file-rows");
  if (fresh) rows.replaceChildren();
  for (const f of page.files) rows.append(fileRow(f));
  $("files").hidden = rows.children.length === 0;
  note.hidden = rows.children.length > 0;
  note.textContent = "No files yet.";
  cursor = page.next_cursor;
  $("more").hidden = !cursor;
}

function fileRow(f) {
  const tr = document.createElement("tr");
  tr.dataset.key = f.key;
  const key = document.createElement("td");
  key.className = "key";
  key.textContent = f.key;
  key.title = "md5 " + f.md5;
  const size = document.createElement("td");
  size.className = "num";
  size.textContent = human(f.size);
  const when = document.createElement("td");
  when.textContent = f.last_modified ? new Date(f.last_modified).toLocaleString() : "";
  const actions = document.createElement("td");
  actions.className = "actions";
  const get = document.createElement("a");
  get.href = fileUrl(f.key);
  get.textContent = "Download";
  get.className = "download";
  get.setAttribute("download", f.key.split("/").pop());
  get.addEventListener("click", (ev) => {
    // A plain link carries no bearer token: fetch it with one instead.
    if (!token()) return;
    ev.preventDefault();
    download(f.key);
  });
  const del = document.createElement("button");
  del.type = "button";
  del.className = "danger delete";
  del.textContent = "Delete";
  del.addEventListener("click", () => remove(f.key, tr));
  actions.append(get, del);
  tr.append(key, size, when, actions);
  return tr;
}

async function download(key) {
  try {
    const r = await fetch(fileUrl(key), { headers: authHeaders() });
    if (!r.ok) throw new Error(await errorText(r, "downloading " + key));
    const url = URL.createObjectURL(await r.blob());
    const a = document.createElement("a");
    a.href = url;
    a.download = key.split("/").pop();
    a.click();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  } catch (e) {
    showError(e.message);
  }
}

async function remove(key, row) {
  if (!confirm(`Delete ${key}?`)) return;
  try {
    const r = await fetch(fileUrl(key), { method: "DELETE", headers: authHeaders() });
    if (!r.ok && r.status !== 404) throw new Error(await errorText(r, "deleting " + key));
    row.remove();
    clearError();
  } catch (e) {
    showError(e.message);
  }
}

// ------------------------------------------------------------ tus uploads

/** The unfinished uploads kept under `key` (the current user's by default). */
function remembered(key) {
  try { return JSON.parse(localStorage.getItem(key || uploadsKey()) || "{}"); } catch (_) { return {}; }
}

function remember(key, fp, entry) {
  const all = remembered(key);
  if (entry) all[fp] = entry; else delete all[fp];
  if (Object.keys(all).length) localStorage.setItem(key, JSON.stringify(all));
  else localStorage.removeItem(key);
  showPending();
}

function fingerprint(file) { return [file.name, file.size, file.lastModified].join("|"); }

/** Unfinished uploads of earlier visits: choosing the file again resumes. */
function showPending() {
  const names = Object.values(remembered()).map((e) => e.name);
  const p = $("pending");
  p.hidden = names.length === 0;
  p.textContent = names.length
    ? "Unfinished: " + names.join(", ") + ". Choose the same file again to continue where it stopped."
    : "";
}

function tusHeaders(extra) {
  return authHeaders(Object.assign({ "Tus-Resumable": "1.0.0" }, extra));
}

class TusError extends Error {
  constructor(message, retry) { super(message); this.retry = retry; }
}

/** One file's row and its upload. */
class Upload {
  constructor(file) {
    this.file = file;
    this.fp = fingerprint(file);
    // Whose upload this is, fixed at the start: a sign-out meanwhile must
    // not file it under the next user.
    this.owner = uploadsKey();
    this.cancelled = false;
    this.xhr = null;
    this.li = document.createElement("li");
    this.li.dataset.name = file.name;
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = file.name;
    this.bar = document.createElement("progress");
    this.bar.max = file.size || 1;
    this.bar.value = 0;
    this.pct = document.createElement("span");
    this.pct.className = "pct";
    this.pct.textContent = "0 %";
    this.info = document.createElement("span");
    this.info.className = "info";
    this.info.textContent = "waiting";
    this.li.append(name, this.bar, this.pct, this.info);
    $("uploads").prepend(this.li);
    this.samples = [];
  }

  show(done, note) {
    this.bar.value = done;
    const size = this.file.size;
    this.pct.textContent = size ? Math.floor((done * 100) / size) + " %" : "100 %";
    const now = performance.now();
    this.samples.push([now, done]);
    while (this.samples.length > 2 && now - this.samples[0][0] > 3000) this.samples.shift();
    const [t0, d0] = this.samples[0];
    const speed = now > t0 ? ((done - d0) * 1000) / (now - t0) : 0;
    this.info.textContent = note || `${human(done)} of ${human(size)} · ${human(Math.max(0, speed))}/s`;
  }

  /** Stop at once (sign-out); what the server holds is ended by the caller. */
  cancel() {
    this.cancelled = true;
    if (this.xhr) this.xhr.abort();
  }

  check() {
    if (this.cancelled) throw new TusError("Cancelled: you signed out.");
  }

  async run() {
    active.add(this);
    try {
      await this.upload();
      this.li.className = "done";
      this.show(this.file.size, `Uploaded ${human(this.file.size)}`);
      remember(this.owner, this.fp, null);
      listFiles(true);
    } catch (e) {
      this.li.className = "failed";
      this.info.textContent = e.message;
    } finally {
      active.delete(this);
    }
  }

  async upload() {
    let offset = null;
    const known = remembered(this.owner)[this.fp];
    if (known) {
      this.url = known.url;
      offset = await this.head();
      if (offset !== null) {
        this.li.dataset.resumedFrom = String(offset);
        this.show(offset, `Resuming at ${human(offset)}`);
      }
    }
    if (offset === null) offset = await this.create();
    let failures = 0;
    while (offset < this.file.size) {
      this.check();
      try {
        offset = await this.patch(offset);
        failures = 0;
      } catch (e) {
        this.check();
        if (!e.retry || failures >= RETRIES) throw e;
        failures++;
        const wait = Math.min(30, 2 ** failures) * 500;
        this.info.textContent = `${e.message} Retrying in ${Math.round(wait / 1000)} s…`;
        await new Promise((ok) => setTimeout(ok, wait));
        this.check();
        // The server says where to continue.
        const at = await this.head().catch(() => null);
        if (at === null) throw new TusError("The upload is gone from the server; choose the file again.");
        offset = at;
      }
    }
  }

  async create() {
    const r = await fetch("/tus/", {
      method: "POST",
      headers: tusHeaders({
        "Upload-Length": String(this.file.size),
        "Upload-Metadata": "filename " + base64Utf8(this.file.name),
      }),
    });
    if (r.status !== 201) throw new TusError(await errorText(r, "starting the upload of " + this.file.name));
    this.url = new URL(r.headers.get("Location"), location.href).pathname;
    this.blockSize = Number(r.headers.get("Step-Block-Size")) || 0;
    if (this.cancelled) {
      // Signed out while it was being created: it ends here too.
      await fetch(this.url, { method: "DELETE", headers: tusHeaders() }).catch(() => null);
      this.check();
    }
    remember(this.owner, this.fp, { url: this.url, name: this.file.name, size: this.file.size });
    return Number(r.headers.get("Upload-Offset")) || 0;
  }

  /** The server's offset, or null when the upload is gone. */
  async head() {
    const r = await fetch(this.url, { method: "HEAD", headers: tusHeaders(), cache: "no-store" });
    if (r.status === 404 || r.status === 410) {
      remember(this.owner, this.fp, null);
      return null;
    }
    if (!r.ok) throw new TusError(await errorText(r, "asking where " + this.file.name + " stopped"), r.status >= 500);
    this.blockSize = Number(r.headers.get("Step-Block-Size")) || this.blockSize || 0;
    return Number(r.headers.get("Upload-Offset"));
  }

  /** Chunks are whole blocks, so each PATCH is stored entirely. */
  chunkSize() {
    const bs = this.blockSize || 0;
    return bs > 0 ? Math.max(1, Math.floor(CHUNK_TARGET / bs)) * bs : CHUNK_TARGET;
  }

  patch(offset) {
    const end = Math.min(this.file.size, offset + this.chunkSize());
    const body = this.file.slice(offset, end);
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      this.xhr = xhr;
      xhr.open("PATCH", this.url);
      for (const [k, v] of Object.entries(tusHeaders({
        "Upload-Offset": String(offset),
        "Content-Type": "application/offset+octet-stream",
      }))) xhr.setRequestHeader(k, v);
      xhr.upload.onprogress = (ev) => this.show(offset + ev.loaded);
      xhr.onload = async () => {
        if (xhr.status === 204) {
          const at = Number(xhr.getResponseHeader("Upload-Offset"));
          this.show(at);
          resolve(at);
          return;
        }
        let msg = "";
        try { msg = JSON.parse(xhr.responseText).message || ""; } catch (_) { /* not JSON */ }
        if (xhr.status === 401 || xhr.status === 403) needLogin();
        // 409: the offset moved (another tab?); HEAD tells where to go on.
        const retry = xhr.status === 409 || xhr.status === 423 || xhr.status >= 500 || xhr.status === 408;
        reject(new TusError(`Upload of ${this.file.name} failed (HTTP ${xhr.status})${msg ? ": " + msg : ""}.`, retry));
      };
      xhr.onerror = () => reject(new TusError("The connection dropped.", true));
      xhr.onabort = () => reject(new TusError("Cancelled: you signed out."));
      xhr.ontimeout = () => reject(new TusError("The server stopped answering.", true));
      xhr.send(body);
    });
  }
}

const queue = [];
let running = 0;
/** Uploads running now (sign-out cancels them). */
const active = new Set();

function enqueue(files) {
  for (const f of files) queue.push(new Upload(f));
  pump();
}

function pump() {
  while (running < PARALLEL && queue.length) {
    const u = queue.shift();
    running++;
    u.run().finally(() => { running--; pump(); });
  }
}

// ------------------------------------------------------------ wiring

function init() {
  // Older pages kept every user's unfinished uploads under one key.
  localStorage.removeItem("step-tus-uploads");
  showWho();
  showPending();
  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", logout);
  $("file-input").addEventListener("change", (ev) => {
    enqueue(Array.from(ev.target.files));
    ev.target.value = "";
  });
  const drop = $("drop");
  for (const t of ["dragenter", "dragover"]) {
    drop.addEventListener(t, (ev) => { ev.preventDefault(); drop.classList.add("over"); });
  }
  for (const t of ["dragleave", "drop"]) {
    drop.addEventListener(t, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (ev) => {
    ev.preventDefault();
    enqueue(Array.from(ev.dataTransfer.files));
  });
  // Files dropped outside the zone must not replace the page.
  window.addEventListener("dragover", (ev) => ev.preventDefault());
  window.addEventListener("drop", (ev) => ev.preventDefault());
  $("filter").addEventListener("submit", (ev) => { ev.preventDefault(); listFiles(true); });
  $("refresh").addEventListener("click", () => listFiles(true));
  $("more").addEventListener("click", () => listFiles(false));
  listFiles(true);
}

document.addEventListener("DOMContentLoaded", init);
