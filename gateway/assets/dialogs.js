// The page's dialogs: the preview, the name-clash choice, confirmations
// and the new-folder name. Native <dialog>: modal, Escape closes, focus
// stays inside.
"use strict";

import { $, Problem, baseName, download, fileUrl, headers, human, problem, send, token, when } from "./api.js";

// ------------------------------------------------------------ preview

const KINDS = {
  image: ["png", "jpg", "jpeg", "gif", "webp", "avif", "bmp", "ico", "svg"],
  video: ["mp4", "m4v", "webm", "ogv", "mov"],
  audio: ["mp3", "ogg", "oga", "opus", "wav", "flac", "m4a", "aac", "weba"],
  text: ["txt", "md", "markdown", "csv", "tsv", "log", "json", "yaml", "yml", "toml", "ini", "conf",
    "cfg", "xml", "html", "htm", "css", "js", "mjs", "ts", "rs", "py", "rb", "go", "c", "h", "cpp",
    "hpp", "java", "kt", "sh", "bash", "zsh", "sql", "tex", "srt", "vtt", "diff", "patch", "env"],
  pdf: ["pdf"],
};

/** What a key previews as: image, video, audio, text, pdf or "" (none). */
export function kindOf(key) {
  const name = baseName(key).toLowerCase();
  const dot = name.lastIndexOf(".");
  const ext = dot > 0 ? name.slice(dot + 1) : (name === "readme" || name === "license" ? "txt" : "");
  for (const [kind, exts] of Object.entries(KINDS)) if (exts.includes(ext)) return kind;
  return "";
}

/** How much a signed-in preview fetches into the page (there is no URL to stream it from). */
const BLOB_LIMIT = { image: 50e6, video: 500e6, audio: 200e6 };
const TEXT_BYTES = 256 * 1024;

/**
 * A URL for the file's bytes in an <img>/<video>/<audio>: the file's own
 * URL for anonymous use (streamed, seekable), else a blob: URL of bytes
 * fetched with the token.
 */
async function mediaUrl(file, kind, signal, onProgress) {
  if (!token()) return { url: fileUrl(file.key), revoke() {} };
  if (file.size > BLOB_LIMIT[kind]) {
    throw new Problem(`This file is too large to preview in the page (${human(file.size)}). Download it instead.`);
  }
  const r = await send(fileUrl(file.key), { headers: headers(), signal }, "preview");
  if (!r.ok) throw await problem(r, "show this file");
  const reader = r.body.getReader();
  const parts = [];
  let got = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    parts.push(value);
    got += value.length;
    onProgress(got);
  }
  const url = URL.createObjectURL(new Blob(parts, { type: r.headers.get("Content-Type") || "" }));
  return { url, revoke() { URL.revokeObjectURL(url); } };
}

async function textOf(file, signal) {
  const r = await send(fileUrl(file.key), {
    headers: headers({ Range: `bytes=0-${TEXT_BYTES - 1}` }), signal, cache: "no-store",
  }, "preview");
  if (!r.ok) throw await problem(r, "show this file");
  const bytes = new Uint8Array(await r.arrayBuffer());
  if (bytes.subarray(0, 8000).includes(0)) throw new Problem("This file does not look like text. Download it to open it.");
  return new TextDecoder("utf-8").decode(bytes);
}

let shown = null; // { list, index, revoke, abort }

function closePreview() {
  if (shown) {
    shown.abort.abort();
    shown.revoke();
    shown = null;
  }
  $("preview-body").replaceChildren();
  if ($("preview").open) $("preview").close();
}

/** Shows `list[index]` (files of the current view) in the preview dialog. */
export async function preview(list, index) {
  if (shown) { shown.abort.abort(); shown.revoke(); }
  const file = list[index];
  const abort = new AbortController();
  shown = { list, index, revoke() {}, abort };
  const dlg = $("preview");
  $("preview-title").textContent = baseName(file.key);
  $("preview-meta").textContent = `${human(file.size)} · ${when(file.last_modified)}`;
  $("preview-prev").disabled = index === 0;
  $("preview-next").disabled = index === list.length - 1;
  const body = $("preview-body");
  const note = (text) => {
    const p = document.createElement("p");
    p.className = "preview-note";
    p.textContent = text;
    body.replaceChildren(p);
    return p;
  };
  note("Loading…");
  if (!dlg.open) dlg.showModal();
  const kind = kindOf(file.key);
  try {
    if (kind === "text") {
      const text = await textOf(file, abort.signal);
      const pre = document.createElement("pre");
      pre.className = "text-preview";
      pre.tabIndex = 0;
      pre.textContent = text;
      const parts = [pre];
      if (file.size > TEXT_BYTES) {
        const more = document.createElement("p");
        more.className = "muted";
        more.textContent = `Showing the first ${human(TEXT_BYTES)} of ${human(file.size)}. Download it to see all.`;
        parts.push(more);
      }
      body.replaceChildren(...parts);
    } else if (kind === "image" || kind === "video" || kind === "audio") {
      const loading = note("Loading…");
      const media = await mediaUrl(file, kind, abort.signal, (n) => {
        loading.textContent = `Loading… ${Math.floor((n * 100) / Math.max(1, file.size))} %`;
      });
      if (shown === null || shown.abort !== abort) { media.revoke(); return; }
      shown.revoke = media.revoke;
      const el = document.createElement(kind === "image" ? "img" : kind);
      el.src = media.url;
      if (kind === "image") el.alt = baseName(file.key);
      else { el.controls = true; el.preload = "metadata"; }
      el.className = "media-preview";
      el.addEventListener("error", () => note("Your browser cannot show this file. Download it to open it."));
      body.replaceChildren(el);
    } else if (kind === "pdf") {
      note("PDF documents open in your PDF reader: download it. (A PDF can carry scripts and forms, so this page never opens one itself.)");
    } else {
      note("There is no preview for this kind of file. Download it to open it.");
    }
  } catch (e) {
    if (e.name === "AbortError") return;
    note(e.message);
  }
}

function step(delta) {
  if (!shown) return;
  const i = shown.index + delta;
  if (i >= 0 && i < shown.list.length) preview(shown.list, i);
}

// ------------------------------------------------------------ choices

/** Resolves with the id of the button pressed in `dialog` ("" when dismissed). */
function choose(dialog, ids) {
  return new Promise((resolve) => {
    const handlers = [];
    const finish = (value) => {
      for (const [el, h] of handlers) el.removeEventListener("click", h);
      dialog.removeEventListener("close", onClose);
      if (dialog.open) dialog.close();
      resolve(value);
    };
    const onClose = () => finish("");
    for (const id of ids) {
      const el = $(id);
      const h = () => finish(id);
      el.addEventListener("click", h);
      handlers.push([el, h]);
    }
    dialog.addEventListener("close", onClose);
    dialog.showModal();
  });
}

/**
 * The person's choice for a file whose name exists: "replace", "rename"
 * (keep both) or "skip"; `all` when it applies to the other clashes too.
 */
export async function askClash(name, folder, others) {
  $("clash-title").textContent = `“${name}” already exists`;
  $("clash-text").textContent = `There is already a file named “${name}” in ${folder || "this folder"}. `
    + "Replace it with the one you are uploading, keep both (the new one gets a number added to its name), or skip it?";
  $("clash-all").checked = false;
  $("clash-all-label").hidden = others === 0;
  $("clash-all-text").textContent = "Do the same for the other uploads whose name exists";
  const id = await choose($("clash"), ["clash-replace", "clash-rename", "clash-skip"]);
  const choice = { "clash-replace": "replace", "clash-rename": "rename" }[id] || "skip";
  return { choice, all: $("clash-all").checked };
}

/** Asks to confirm something that cannot be undone. */
export async function confirmAction(title, text, yes) {
  $("confirm-title").textContent = title;
  $("confirm-text").textContent = text;
  $("confirm-yes").textContent = yes;
  return (await choose($("confirm"), ["confirm-yes", "confirm-no"])) === "confirm-yes";
}

/** Asks for a new folder's name; resolves with it, or null. */
export function askFolderName(validate) {
  const dlg = $("folder-dialog");
  const input = $("folder-name");
  const error = $("folder-error");
  input.value = "";
  error.hidden = true;
  return new Promise((resolve) => {
    const done = (value) => {
      $("folder-form").removeEventListener("submit", onSubmit);
      $("folder-cancel").removeEventListener("click", onCancel);
      dlg.removeEventListener("close", onCancel);
      if (dlg.open) dlg.close();
      resolve(value);
    };
    const onCancel = () => done(null);
    const onSubmit = (ev) => {
      ev.preventDefault();
      const why = validate(input.value.trim());
      if (why) {
        error.textContent = why;
        error.hidden = false;
        input.focus();
        return;
      }
      done(input.value.trim());
    };
    $("folder-form").addEventListener("submit", onSubmit);
    $("folder-cancel").addEventListener("click", onCancel);
    dlg.addEventListener("close", onCancel);
    dlg.showModal();
    input.focus();
  });
}

export function initDialogs() {
  $("preview-close").addEventListener("click", closePreview);
  $("preview").addEventListener("close", closePreview);
  $("preview-prev").addEventListener("click", () => step(-1));
  $("preview-next").addEventListener("click", () => step(1));
  $("preview-download").addEventListener("click", () => {
    if (shown) download({ prefix: "", keys: [shown.list[shown.index].key] });
  });
  $("preview").addEventListener("keydown", (ev) => {
    if (ev.target.tagName === "VIDEO" || ev.target.tagName === "AUDIO") return;
    if (ev.key === "ArrowLeft") step(-1);
    if (ev.key === "ArrowRight") step(1);
  });
}
