// STEP Files: the page at /. Signs in, shows the folders (files.js), takes
// files and whole folders to upload (uploads.js), previews (dialogs.js).
// No framework, nothing loaded from elsewhere, nothing built.
"use strict";

import { $, headers, problem, send, signedIn, signedOut, user } from "./api.js";
import { confirmAction, initDialogs } from "./dialogs.js";
import { currentPrefix, initFiles, reload, uploadedInto } from "./files.js";
import { enqueue, forgetPending, initUploads, showPending, stopAll, unfinished } from "./uploads.js";

// ------------------------------------------------------------ messages

function notice(text, { ok = false } = {}) {
  $("notice-text").textContent = text;
  $("notice").hidden = !text;
  $("notice").classList.toggle("ok", ok);
}

// ------------------------------------------------------------ signing in

function showWho() {
  const name = user();
  $("who").hidden = !name;
  $("who-name").textContent = name ? `Signed in as ${name}` : "";
  $("show-login").hidden = !!name || !$("login").hidden;
}

/** Shows the sign-in form; `optional` when the files can be seen without it. */
function needLogin(why, optional = false) {
  if (!$("login").hidden) return;
  $("login").hidden = false;
  $("browser").hidden = true;
  $("login-cancel").hidden = !optional;
  $("login-why").textContent = user()
    ? "Your session has ended. Sign in again to go on."
    : "Sign in to see and upload your files.";
  if (why && user()) $("login-why").textContent = why;
  $("show-login").hidden = true;
  $("username").focus();
}

async function login(ev) {
  ev.preventDefault();
  const name = $("username").value.trim();
  const password = $("password").value;
  const error = $("login-error");
  error.hidden = true;
  if (!name) {
    error.textContent = "Type your user name.";
    error.hidden = false;
    $("username").focus();
    return;
  }
  const submit = $("login-submit");
  submit.disabled = true;
  submit.textContent = "Signing in…";
  try {
    const body = { username: name };
    if (password) body.password = password;
    const r = await send("/login", {
      method: "POST",
      headers: headers({ "Content-Type": "application/json" }),
      body: JSON.stringify(body),
    }, "sign in");
    if (r.status === 401) throw new Error("Wrong user name or password. Check them and try again.");
    if (r.status === 429) throw new Error("Too many attempts. Wait a minute, then try again.");
    if (!r.ok) throw await problem(r, "sign in");
    const { token } = await r.json();
    signedIn(name, token);
    $("password").value = "";
    $("login").hidden = true;
    $("browser").hidden = false;
    notice("");
    showWho();
    showPending();
    reload();
  } catch (e) {
    error.textContent = e.message;
    error.hidden = false;
    $("password").select();
    $("password").focus();
  } finally {
    submit.disabled = false;
    submit.textContent = "Sign in";
  }
}

/**
 * Signing out ends what the session started: uploads in progress stop, the
 * unfinished ones are cancelled on the server and forgotten here, so the
 * next person at this browser sees none of their names or URLs.
 */
async function logout() {
  const n = unfinished();
  if (n && !await confirmAction("Sign out?",
    `Signing out will cancel ${n === 1 ? "the upload" : `the ${n} uploads`} in progress.`, "Sign out and cancel uploads")) return;
  stopAll();
  await forgetPending();
  signedOut();
  showWho();
  showPending();
  location.hash = "";
  reload();
}

// ------------------------------------------------------------ choosing files

/** The key a file gets: the current folder, then its path in what was chosen. */
function itemsOf(files, base) {
  return Array.from(files, (file) => ({
    file,
    key: base + (file.webkitRelativePath || file.relativePath || file.name),
  }));
}

function readEntries(reader) {
  return new Promise((resolve) => reader.readEntries(resolve, () => resolve([])));
}

/** Files of a dropped folder, with their paths inside it. */
async function walk(entry, path, out) {
  if (entry.isFile) {
    const file = await new Promise((resolve) => entry.file(resolve, () => resolve(null)));
    if (file) out.push({ file, path: path + file.name });
  } else if (entry.isDirectory) {
    const reader = entry.createReader();
    for (;;) {
      const batch = await readEntries(reader);
      if (!batch.length) break;
      for (const e of batch) await walk(e, path + entry.name + "/", out);
    }
  }
}

async function dropped(dt) {
  const base = currentPrefix();
  const entries = Array.from(dt.items || [])
    .filter((i) => i.kind === "file")
    .map((i) => (i.webkitGetAsEntry ? i.webkitGetAsEntry() : null));
  if (!entries.length || entries.some((e) => !e)) {
    enqueue(itemsOf(dt.files, base));
    return;
  }
  const out = [];
  for (const e of entries) await walk(e, "", out);
  enqueue(out.map(({ file, path }) => ({ file, key: base + path })));
}

function initDrop() {
  const zone = $("drop");
  let depth = 0;
  const has = (ev) => ev.dataTransfer && Array.from(ev.dataTransfer.types || []).includes("Files");
  document.addEventListener("dragenter", (ev) => {
    if (!has(ev)) return;
    depth++;
    zone.classList.add("over");
  });
  document.addEventListener("dragleave", () => {
    depth = Math.max(0, depth - 1);
    if (!depth) zone.classList.remove("over");
  });
  // Files dropped anywhere on the page go into the folder shown.
  document.addEventListener("dragover", (ev) => { if (has(ev)) ev.preventDefault(); });
  document.addEventListener("drop", (ev) => {
    if (!has(ev)) return;
    ev.preventDefault();
    depth = 0;
    zone.classList.remove("over");
    if ($("browser").hidden) return;
    dropped(ev.dataTransfer);
  });
}

// ------------------------------------------------------------ wiring

let refreshTimer = null;

function uploaded(key) {
  uploadedInto(key);
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(reload, 400);
}

function init() {
  // Older pages kept every user's unfinished uploads under one key.
  localStorage.removeItem("step-tus-uploads");
  initDialogs();
  initFiles({ needLogin, changed: (text, ok) => notice(text, { ok }) });
  initUploads({ uploaded, needLogin });
  initDrop();
  showWho();
  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", logout);
  $("show-login").addEventListener("click", () => needLogin(undefined, true));
  $("login-cancel").addEventListener("click", () => {
    $("login").hidden = true;
    $("browser").hidden = false;
    showWho();
  });
  $("notice-close").addEventListener("click", () => notice(""));
  $("pick-files").addEventListener("click", () => $("file-input").click());
  $("pick-folder").addEventListener("click", () => $("folder-input").click());
  $("pending-pick").addEventListener("click", () => $("file-input").click());
  for (const id of ["file-input", "folder-input"]) {
    $(id).addEventListener("change", (ev) => {
      enqueue(itemsOf(ev.target.files, currentPrefix()));
      ev.target.value = "";
    });
  }
  reload();
}

document.addEventListener("DOMContentLoaded", init);
