// Uploads through tus (/tus/): several at once, each resumable after a
// dropped connection or a page reload, with pause, resume, cancel, an
// estimate of the time left, automatic retries with backoff for every
// request, and the person's choice when a name exists.
"use strict";

import {
  $, OFFLINE, Problem, backoff, base64Utf8, duration, fromBase64Utf8, headers, human, pause, problem,
  retrying, send, user,
} from "./api.js";
import { askClash } from "./dialogs.js";

const PARALLEL = 3; // files uploading at once
const CHUNK_TARGET = 8 << 20; // bytes per PATCH, rounded to whole blocks
const RETRIES = 12; // attempts of one request before the upload stops (about 5 min)
// Unfinished uploads per user ("step-tus-uploads:" + user name, "" when not
// signed in): key|size -> {url, key, name, size}. Cleared at sign-out.
const UPLOADS_KEY = "step-tus-uploads:";

let hooks = { uploaded() {}, needLogin() {} };
const all = []; // every Upload shown
const queue = [];
let running = 0;

// ------------------------------------------------------------ remembered uploads

function storeKey(who) { return UPLOADS_KEY + (who === undefined ? user() : who); }

export function remembered(who) {
  try { return JSON.parse(localStorage.getItem(storeKey(who)) || "{}"); } catch (_) { return {}; }
}

function remember(who, id, entry) {
  const saved = remembered(who);
  if (entry) saved[id] = entry; else delete saved[id];
  if (Object.keys(saved).length) localStorage.setItem(storeKey(who), JSON.stringify(saved));
  else localStorage.removeItem(storeKey(who));
  showPending();
}

/** Unfinished uploads of an earlier visit that no upload here is continuing. */
function pendingEntries() {
  const live = new Set(all.filter((u) => !u.finished()).map((u) => u.id));
  return Object.entries(remembered()).filter(([id]) => !live.has(id));
}

export function showPending() {
  const left = pendingEntries();
  $("pending").hidden = left.length === 0;
  if (!left.length) return;
  const names = left.map(([, e]) => e.key).slice(0, 3).join(", ") + (left.length > 3 ? ` and ${left.length - 3} more` : "");
  $("pending-text").textContent = `${left.length === 1 ? "An upload was" : `${left.length} uploads were`} interrupted: ${names}. `
    + "Choose the same files again and they continue where they stopped.";
}

/** Ends the remembered uploads on the server and forgets them. */
export async function forgetPending(who) {
  const entries = Object.values(remembered(who));
  localStorage.removeItem(storeKey(who));
  showPending();
  await Promise.allSettled(entries.map((e) =>
    fetch(e.url, { method: "DELETE", headers: headers({ "Tus-Resumable": "1.0.0" }) })));
}

// ------------------------------------------------------------ one upload

function tusHeaders(extra) { return headers(Object.assign({ "Tus-Resumable": "1.0.0" }, extra)); }

/** Decisions that apply to every later clash ("do the same for the others"). */
let clashForAll = null;
let asking = Promise.resolve();

class Upload {
  constructor(file, key) {
    this.file = file;
    this.key = key;
    this.id = key + "|" + file.size;
    this.owner = user(); // fixed at the start: a sign-out must not file it under the next user
    this.state = "waiting";
    this.clash = null; // "replace" | "rename" once chosen
    this.samples = [];
    this.done = 0;
    this.li = document.createElement("li");
    this.li.dataset.name = key;
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = key;
    this.bar = document.createElement("progress");
    this.bar.max = Math.max(1, file.size);
    this.bar.value = 0;
    this.bar.setAttribute("aria-label", `Upload of ${key}`);
    this.pct = document.createElement("span");
    this.pct.className = "pct";
    this.pct.textContent = "0 %";
    this.info = document.createElement("span");
    this.info.className = "info";
    this.buttons = document.createElement("span");
    this.buttons.className = "upload-actions";
    this.li.append(name, this.bar, this.pct, this.buttons, this.info);
    $("upload-rows").prepend(this.li);
    this.setState("waiting", "Waiting for its turn");
  }

  finished() { return ["done", "failed", "cancelled", "skipped"].includes(this.state); }

  setState(state, text) {
    this.state = state;
    this.li.className = state;
    if (text !== undefined) this.info.textContent = text;
    const b = (label, fn, cls) => {
      const el = document.createElement("button");
      el.type = "button";
      el.className = "small " + (cls || "");
      el.textContent = label;
      el.setAttribute("aria-label", `${label} the upload of ${this.key}`);
      el.addEventListener("click", fn);
      return el;
    };
    const actions = [];
    if (state === "uploading" || state === "waiting") actions.push(b("Pause", () => this.pause()));
    if (state === "paused") actions.push(b("Resume", () => this.resume(), "primary"));
    if (state === "failed") actions.push(b("Retry", () => this.resume(), "primary"));
    if (!this.finished()) actions.push(b("Cancel", () => this.cancel(), "danger"));
    this.buttons.replaceChildren(...actions);
    summary();
  }

  show(done) {
    this.done = done;
    const size = this.file.size;
    this.bar.value = size ? done : 1;
    this.pct.textContent = size ? Math.floor((done * 100) / size) + " %" : "100 %";
    const now = performance.now();
    this.samples.push([now, done]);
    while (this.samples.length > 2 && now - this.samples[0][0] > 5000) this.samples.shift();
    const [t0, d0] = this.samples[0];
    this.speed = now - t0 > 500 ? ((done - d0) * 1000) / (now - t0) : 0;
    if (this.state === "uploading") {
      const left = this.speed > 0 ? duration((size - done) / this.speed) : "";
      this.info.textContent = `${human(done)} of ${human(size)}`
        + (this.speed > 0 ? ` · ${human(this.speed)}/s · ${left} left` : "");
    }
    summary();
  }

  pause() {
    if (this.finished() || this.state === "paused") return;
    this.stop("paused");
    this.setState("paused", `Paused at ${human(this.done)} of ${human(this.file.size)}`);
  }

  resume() {
    if (this.state !== "paused" && this.state !== "failed") return;
    this.setState("waiting", "Waiting for its turn");
    const i = queue.indexOf(this);
    if (i >= 0) queue.splice(i, 1);
    queue.unshift(this);
    pump();
  }

  async cancel() {
    if (this.finished()) return;
    this.stop("cancelled");
    this.setState("cancelled", "Cancelled");
    remember(this.owner, this.id, null);
    const i = queue.indexOf(this);
    if (i >= 0) queue.splice(i, 1);
    if (this.url) {
      await retrying(async () => {
        const r = await send(this.url, { method: "DELETE", headers: tusHeaders() }, "cancel");
        if (!r.ok && r.status !== 404) throw await problem(r, "cancel the upload");
      }, { tries: 4 }).catch(() => null);
    }
  }

  /** Stops what is in flight; `why` tells run() not to report a failure. */
  stop(why) {
    this.stopped = why;
    if (this.abort) this.abort.abort();
    if (this.xhr) this.xhr.abort();
  }

  async run() {
    this.stopped = null;
    this.abort = new AbortController();
    this.setState("uploading", "Starting…");
    try {
      await this.upload();
      if (this.state === "skipped") return;
      this.show(this.file.size);
      this.setState("done", this.file.size ? `Uploaded ${human(this.file.size)}` : "Uploaded (an empty file)");
      remember(this.owner, this.id, null);
      hooks.uploaded(this.key);
    } catch (e) {
      if (this.stopped) return;
      if (e.signIn) hooks.needLogin(e.message);
      this.setState("failed", e.message);
    }
  }

  /** While a request is retried: say why and when. */
  waiting(p, ms, n) {
    this.info.textContent = `${p.message === OFFLINE ? "Connection lost." : p.message} Retrying in ${Math.ceil(ms / 1000)} s (attempt ${n + 1}).`;
  }

  retry(attempt) {
    return retrying(attempt, { tries: RETRIES, signal: this.abort.signal, onWait: (p, ms, n) => this.waiting(p, ms, n) });
  }

  async upload() {
    let offset = null;
    const known = remembered(this.owner)[this.id];
    if (known) {
      this.url = known.url;
      // It may have been given a free name (keep both) when it started.
      if (known.key && known.key !== this.key) {
        this.key = known.key;
        this.li.dataset.name = known.key;
        this.li.querySelector(".name").textContent = known.key;
      }
      offset = await this.retry(() => this.head());
      if (offset !== null) {
        this.li.dataset.resumedFrom = String(offset);
        this.show(offset);
        this.info.textContent = `Continuing at ${human(offset)}`;
      }
    }
    if (offset === null) offset = await this.create();
    if (offset === null) return; // skipped
    this.show(offset);
    let failures = 0;
    while (offset < this.file.size) {
      try {
        offset = await this.patch(offset);
        failures = 0;
      } catch (e) {
        if (this.stopped) throw e;
        if (!(e instanceof Problem) || !e.retry || ++failures >= RETRIES) throw e;
        const ms = backoff(failures);
        this.waiting(e, ms, failures);
        await pause(ms, this.abort.signal);
        // The server says where to continue.
        const at = await this.retry(() => this.head());
        if (at === null) {
          // Gone (expired, or another upload took its name): start over.
          this.url = null;
          remember(this.owner, this.id, null);
          offset = await this.create();
          if (offset === null) return;
        } else {
          offset = at;
        }
      }
    }
  }

  async create() {
    for (;;) {
      const q = this.clash === "replace" ? "?overwrite=true" : this.clash === "rename" ? "?rename=true" : "";
      const r = await this.retry(async () => {
        const r = await send("/tus/" + q, {
          method: "POST",
          signal: this.abort.signal,
          headers: tusHeaders({
            "Upload-Length": String(this.file.size),
            "Upload-Metadata": "filename " + base64Utf8(this.key),
          }),
        }, "upload");
        if (r.status === 409) return r;
        if (r.status !== 201) throw await problem(r, `upload “${this.key}”`);
        return r;
      });
      if (r.status === 409) {
        const body = await r.json().catch(() => ({}));
        if (body.error !== "key_exists") throw new Problem(`Could not upload “${this.key}”: ${body.message || "it conflicts with another upload"}.`);
        const choice = await this.askClash();
        if (choice === "skip") {
          this.setState("skipped", "Skipped: a file with this name exists");
          this.bar.value = 0;
          return null;
        }
        this.clash = choice;
        continue;
      }
      this.url = new URL(r.headers.get("Location"), location.href).pathname;
      this.blockSize = Number(r.headers.get("Step-Block-Size")) || 0;
      const meta = (r.headers.get("Upload-Metadata") || "").match(/^filename (\S+)/);
      if (meta) {
        const got = fromBase64Utf8(meta[1]);
        if (got !== this.key) {
          this.key = got;
          this.li.dataset.name = got;
          this.li.querySelector(".name").textContent = got;
        }
      }
      if (this.stopped === "cancelled") throw new Problem("Cancelled");
      remember(this.owner, this.id, { url: this.url, key: this.key, name: this.file.name, size: this.file.size });
      return Number(r.headers.get("Upload-Offset")) || 0;
    }
  }

  askClash() {
    if (clashForAll) return Promise.resolve(clashForAll);
    const turn = asking.then(async () => {
      if (clashForAll) return clashForAll;
      const slash = this.key.lastIndexOf("/");
      const folder = slash >= 0 ? `the folder “${this.key.slice(0, slash)}”` : "your files";
      this.info.textContent = "A file with this name exists: waiting for your choice";
      const others = all.filter((u) => u !== this && !u.finished() && u.state !== "paused").length;
      const { choice, all: forAll } = await askClash(this.key.slice(slash + 1), folder, others);
      if (forAll) clashForAll = choice;
      return choice;
    });
    asking = turn.catch(() => null);
    return turn;
  }

  /** The server's offset, or null when the upload is gone. */
  async head() {
    const r = await send(this.url, { method: "HEAD", headers: tusHeaders(), cache: "no-store", signal: this.abort.signal }, "resume");
    if (r.status === 404 || r.status === 410) {
      remember(this.owner, this.id, null);
      return null;
    }
    if (!r.ok) throw await problem(r, `continue “${this.key}”`);
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
          resolve(Number(xhr.getResponseHeader("Upload-Offset")));
          return;
        }
        const fake = new Response(xhr.responseText || null, { status: xhr.status });
        const p = await problem(fake, `upload “${this.key}”`);
        // The offset moved (another tab?) or the upload is busy: HEAD says where to go on.
        if (xhr.status === 409 || xhr.status === 423 || xhr.status === 404) p.retry = true;
        reject(p);
      };
      xhr.onerror = () => reject(new Problem(OFFLINE, { retry: true }));
      xhr.onabort = () => reject(new Problem("Stopped"));
      xhr.send(body);
    });
  }
}

// ------------------------------------------------------------ the queue

function pump() {
  while (running < PARALLEL && queue.length) {
    const u = queue.shift();
    if (u.state !== "waiting") continue;
    running++;
    u.run().finally(() => { running--; pump(); });
  }
}

function summary() {
  const shown = all.filter((u) => u.li.isConnected);
  $("uploads").hidden = shown.length === 0;
  const active = shown.filter((u) => u.state === "uploading" || u.state === "waiting");
  const paused = shown.filter((u) => u.state === "paused").length;
  const failed = shown.filter((u) => u.state === "failed").length;
  const parts = [];
  if (active.length) {
    const total = active.reduce((n, u) => n + u.file.size, 0);
    const done = active.reduce((n, u) => n + u.done, 0);
    const speed = active.reduce((n, u) => n + (u.state === "uploading" ? u.speed || 0 : 0), 0);
    parts.push(`${active.length} uploading · ${human(done)} of ${human(total)}`
      + (speed > 0 ? ` · about ${duration((total - done) / speed)} left` : ""));
  }
  if (paused) parts.push(`${paused} paused`);
  if (failed) parts.push(`${failed} failed`);
  const finished = shown.filter((u) => u.state === "done").length;
  if (finished) parts.push(`${finished} done`);
  $("uploads-summary").textContent = parts.join(" · ");
  $("uploads-pause").textContent = active.length ? "Pause all" : "Resume all";
  $("uploads-pause").hidden = !active.length && !paused;
  $("uploads-clear").hidden = !shown.some((u) => u.finished());
}

/**
 * Uploads `items` ({file, key}). A file that matches an interrupted upload
 * by name and size continues it, wherever it was headed.
 */
export function enqueue(items) {
  const pending = remembered();
  for (const { file, key } of items) {
    let target = key;
    if (!pending[key + "|" + file.size]) {
      const match = Object.values(pending).find((e) => e.size === file.size && e.name === file.name);
      if (match) target = match.key;
    }
    if (all.some((u) => u.id === target + "|" + file.size && !u.finished())) continue;
    const u = new Upload(file, target);
    all.push(u);
    queue.push(u);
  }
  showPending();
  summary();
  pump();
}

/** Uploads running or waiting (sign-out asks before cancelling them). */
export function unfinished() { return all.filter((u) => !u.finished() && u.state !== "paused").length; }

/** Stops every upload (sign-out): the caller ends them on the server. */
export function stopAll() {
  queue.length = 0;
  for (const u of all) if (!u.finished()) { u.stop("cancelled"); u.setState("cancelled", "Cancelled"); }
  all.length = 0;
  $("upload-rows").replaceChildren();
  clashForAll = null;
  summary();
}

export function initUploads(h) {
  hooks = h;
  $("uploads-clear").addEventListener("click", () => {
    for (const u of all) if (u.finished()) u.li.remove();
    summary();
  });
  $("uploads-pause").addEventListener("click", () => {
    const active = all.filter((u) => u.state === "uploading" || u.state === "waiting");
    if (active.length) for (const u of active) u.pause();
    else for (const u of all.filter((u) => u.state === "paused")) u.resume();
  });
  $("pending-forget").addEventListener("click", () => forgetPending());
  showPending();
}
