// Talking to the gateway: who is signed in, requests with their
// credentials, retries with backoff, and errors in words for people.
"use strict";

const TOKEN_KEY = "step-token";
const USER_KEY = "step-user";

export const $ = (id) => document.getElementById(id);

// ------------------------------------------------------------ who

export function token() { return sessionStorage.getItem(TOKEN_KEY); }
export function user() { return sessionStorage.getItem(USER_KEY) || ""; }

export function signedIn(name, t) {
  sessionStorage.setItem(TOKEN_KEY, t);
  sessionStorage.setItem(USER_KEY, name);
}

export function signedOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  sessionStorage.removeItem(USER_KEY);
}

/**
 * Headers of the page's own requests. X-Requested-With marks them as a
 * script's: a 401 then never carries the Basic challenge that would make
 * the browser open its own password dialog over the page.
 */
export function headers(extra) {
  const h = Object.assign({ "X-Requested-With": "XMLHttpRequest" }, extra || {});
  const t = token();
  if (t) h["Authorization"] = "Bearer " + t;
  return h;
}

// ------------------------------------------------------------ errors

/** An error with a sentence for people, and whether trying again may help. */
export class Problem extends Error {
  constructor(message, { retry = false, status = 0, code = "", signIn = false } = {}) {
    super(message);
    this.retry = retry;
    this.status = status;
    this.code = code;
    this.signIn = signIn;
  }
}

export const OFFLINE = "The server cannot be reached. Check your connection; the page keeps trying.";

/** What went wrong with response `r` while `doing` something, in words. */
export async function problem(r, doing) {
  let code = "";
  let detail = "";
  try {
    const body = await r.json();
    code = body.error || "";
    detail = body.message || "";
  } catch (_) { /* not JSON */ }
  const s = r.status;
  const opts = { status: s, code };
  if (s === 401) {
    return new Problem(`Please sign in to ${doing}.`, Object.assign(opts, { signIn: true }));
  }
  if (s === 403) {
    return new Problem(code === "cross_site"
      ? `The server refused to ${doing}: the request did not come from this page. Reload the page and try again.`
      : `You are not allowed to ${doing} here. Sign in as someone who is.`, Object.assign(opts, { signIn: true }));
  }
  if (s === 404) return new Problem(`Could not ${doing}: it is not there any more (deleted or renamed meanwhile?). Refresh the list.`, opts);
  if (s === 409 && code === "key_exists") return new Problem(`Could not ${doing}: a file with this name exists.`, opts);
  if (s === 409 || s === 412 || s === 423) {
    return new Problem(`Could not ${doing}: someone else changed it at the same moment. Try again.`, Object.assign(opts, { retry: true }));
  }
  if (s === 413) return new Problem(`Could not ${doing}: the file is larger than this server accepts.`, opts);
  if (s === 507) {
    return new Problem(code === "quota"
      ? `Could not ${doing}: you have too many unfinished uploads. Finish or cancel some, then try again.`
      : `Could not ${doing}: the server is out of space. Ask its operator to make room.`, opts);
  }
  if (s === 408 || s === 429 || s === 502 || s === 503 || s === 504) {
    return new Problem(`The server is busy or restarting; trying again to ${doing}.`, Object.assign(opts, { retry: true }));
  }
  if (s >= 500) return new Problem(`The server had a problem and could not ${doing} (error ${s}). Try again in a moment.`, Object.assign(opts, { retry: true }));
  return new Problem(`Could not ${doing} (error ${s}${detail ? ": " + detail : ""}).`, opts);
}

/** fetch that turns a network failure into a Problem worth retrying. */
export async function send(url, init, doing) {
  let r;
  try {
    r = await fetch(url, init);
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new Problem(OFFLINE, { retry: true });
  }
  return r;
}

/** Waits `ms`, or less when the browser comes back online; rejects on abort. */
export function pause(ms, signal) {
  return new Promise((resolve, reject) => {
    const done = () => { clearTimeout(t); window.removeEventListener("online", done); resolve(); };
    const t = setTimeout(done, ms);
    window.addEventListener("online", done);
    if (signal) signal.addEventListener("abort", () => { clearTimeout(t); reject(new DOMException("stopped", "AbortError")); });
  });
}

/** Delay before attempt `n` (1, 2, …): 1 s, 2 s, 4 s … at most 30 s, with jitter. */
export function backoff(n) {
  const base = Math.min(30000, 1000 * 2 ** Math.max(0, n - 1));
  return Math.round(base * (0.8 + Math.random() * 0.4));
}

/**
 * Runs `attempt` until it succeeds, retrying what may pass on a second try
 * (the network, a busy server) with backoff; `onWait(problem, ms, n)` says
 * so meanwhile. Gives up after `tries` attempts, or at once on anything else.
 */
export async function retrying(attempt, { tries = 8, signal, onWait } = {}) {
  for (let n = 1; ; n++) {
    try {
      return await attempt();
    } catch (e) {
      if (!(e instanceof Problem) || !e.retry || n >= tries || (signal && signal.aborted)) throw e;
      const ms = backoff(n);
      if (onWait) onWait(e, ms, n);
      await pause(ms, signal);
    }
  }
}

// ------------------------------------------------------------ names and sizes

/** /files/{key}: each segment escaped ("." and ".." too). */
export function fileUrl(key) {
  return "/files/" + key.split("/").map((s) =>
    s === "." ? "%2E" : s === ".." ? "%2E%2E" : encodeURIComponent(s)).join("/");
}

export function human(n) {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return (i ? (n < 10 ? n.toFixed(1) : Math.round(n)) : String(n)) + " " + units[i];
}

export function duration(seconds) {
  if (!isFinite(seconds) || seconds < 0) return "";
  if (seconds < 60) return `${Math.max(1, Math.round(seconds))} s`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min`;
  const h = Math.floor(seconds / 3600);
  return `${h} h ${Math.round((seconds - h * 3600) / 60)} min`;
}

export function when(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  const now = new Date();
  const sameDay = d.toDateString() === now.toDateString();
  return sameDay
    ? d.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" })
    : d.toLocaleDateString(undefined, { year: "numeric", month: "short", day: "numeric" });
}

export function base64Utf8(text) {
  let bin = "";
  for (const b of new TextEncoder().encode(text)) bin += String.fromCharCode(b);
  return btoa(bin);
}

export function fromBase64Utf8(b64) {
  const bin = atob(b64);
  return new TextDecoder().decode(Uint8Array.from(bin, (c) => c.charCodeAt(0)));
}

/** The last part of a key (a folder's: without its slash). */
export function baseName(key) {
  const k = key.endsWith("/") ? key.slice(0, -1) : key;
  return k.slice(k.lastIndexOf("/") + 1);
}

// ------------------------------------------------------------ downloads

/**
 * Saves files with the browser's own download (streamed to disk, never held
 * in the page): one key as itself, anything else as one zip. Signed in, the
 * token travels in a form posted to /download, since a download the browser
 * runs by itself cannot carry a header.
 */
export function download({ prefix = "", keys = [], folders = [] }) {
  const t = token();
  if (!t && keys.length === 1 && folders.length === 0) {
    const a = document.createElement("a");
    a.href = fileUrl(keys[0]);
    a.download = baseName(keys[0]);
    document.body.append(a);
    a.click();
    a.remove();
    return;
  }
  const q = new URLSearchParams();
  q.set("prefix", prefix);
  for (const k of keys) q.append("key", k);
  for (const f of folders) q.append("folder", f);
  if (!t && q.toString().length < 8000) {
    const a = document.createElement("a");
    a.href = "/archive?" + q;
    document.body.append(a);
    a.click();
    a.remove();
    return;
  }
  const form = document.createElement("form");
  form.method = "post";
  form.action = "/download";
  form.hidden = true;
  if (t) q.set("token", t);
  for (const [k, v] of q) {
    const input = document.createElement("input");
    input.type = "hidden";
    input.name = k;
    input.value = v;
    form.append(input);
  }
  document.body.append(form);
  form.submit();
  form.remove();
}
