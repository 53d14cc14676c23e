// The playground: picks an image, edits its files and options, runs it and shows the result.
// The session (image, files, options, argv, env, stdin) is kept in localStorage; a URL fragment
// `#image=ID&example=N` (from the catalogue pages) replaces it with that image's example, and a share
// link `#s1=…` (share.js, docs/sharing-links.md) with the shared state and its stored result.
import { ImageBrowser } from "./browser.js";
import { Files } from "./files.js";
import { downloadExport, guessImage, isGistFragment, loadGist } from "./gist.js";
import { invalidOption, readOptions, renderOptions } from "./options.js";
import { API_BASE, figures, run, storedRun } from "./run.js";
import { copyLink, decodeState, encodeState, isShareFragment, servedDigests } from "./share.js";
import { renderOutputs } from "../viewers/outputs.js";
import { startPyodide } from "../pyodide/client.js";

const STORAGE_KEY = "pe.session.v1";
const $ = (id) => document.getElementById(id);
// A limit input in KiB or MiB says so by data-scale (1024, 1048576): the API counts bytes.
const scale = (input) => Number(input.dataset.scale ?? 1);
const ui = {
  search: $("image-search"), list: $("image-list"), image: $("image"), example: $("example"),
  description: $("image-description"), options: $("options"), argv: $("argv"), env: $("env"), stdin: $("stdin"),
  run: $("run"), status: $("status"), stats: $("stats"), outputs: $("outputs"),
  limits: [...document.querySelectorAll("input[data-limit]")],
  copy: $("copy-link"), shareLink: $("share-link"), shareNote: $("share-note"), pin: $("pin-note"), unpin: $("unpin"),
};
let images = new Map();
let files;
let browser;
let pinned = null; // the digest a share link pinned: runs ask for exactly that one
let shown = null; // the result on show: {id, digest, spec: the JSON of the spec it answers}

function entry() {
  return images.get(ui.image.value);
}

// Options fill the image's command template, which a given argv replaces: say so.
function noteArgv() {
  $("options-note").hidden = lines(ui.argv.value).length === 0;
}

function save() {
  noteArgv();
  const session = {
    image: ui.image.value, digest: pinned, files: files.contents(), selected: files.current, options: readOptions(ui.options),
    argv: ui.argv.value, env: ui.env.value, stdin: ui.stdin.value,
    limits: Object.fromEntries(ui.limits.map((input) => [input.dataset.limit, input.value])),
  };
  localStorage.setItem(STORAGE_KEY, JSON.stringify(session));
}

/** Show `image` with `session`'s files and values (missing ones: the image's defaults). */
function open(imageId, session = {}) {
  const image = images.get(imageId) ?? images.values().next().value;
  ui.image.value = image.id;
  pinned = session.digest ?? null;
  ui.pin.hidden = true;
  ui.search.value = "";
  ui.description.textContent = image.description;
  ui.example.replaceChildren(new Option("Examples…", ""));
  image.examples.forEach((example, index) => ui.example.append(new Option(example.name, String(index))));
  renderOptions(ui.options, image.options, session.options ?? {});
  $("options-panel").hidden = image.options.length === 0;
  files.load(session.files ?? image.files, session.selected);
  browser.select(image.id);
  ui.argv.value = session.argv ?? "";
  ui.env.value = session.env ?? "";
  ui.stdin.value = session.stdin ?? "";
  for (const input of ui.limits) {
    input.value = session.limits?.[input.dataset.limit] ?? "";
    input.placeholder = `default ${image.limits[input.dataset.limit] / scale(input)}`;  // the image's own default
  }
  save();
}

function openExample(imageId, index) {
  const example = images.get(imageId)?.examples[index];
  if (!example) return open(imageId);
  open(imageId, {
    files: example.files, options: example.options ?? {}, argv: (example.argv ?? []).join("\n"),
    stdin: typeof example.stdin === "string" ? example.stdin : example.stdin?.text ?? "",
  });
}

function lines(text) {
  return text.split("\n").map((line) => line.trimEnd()).filter(Boolean);
}

function spec() {
  const image = entry();
  const options = Object.fromEntries(Object.entries(readOptions(ui.options)).filter(([, v]) => v !== undefined));
  const body = {
    image: pinned ? `${image.id}@${pinned}` : image.id,
    files: Object.fromEntries(
      Object.entries(files.contents()).map(([path, content]) => [path, typeof content === "string" ? { text: content } : content]),
    ),
    options,
  };
  const argv = lines(ui.argv.value);
  if (argv.length) body.argv = argv;
  const env = lines(ui.env.value).map((line) => line.split(/=(.*)/s));
  if (env.length) body.env = Object.fromEntries(env.map(([name, value]) => [name, value ?? ""]));
  if (ui.stdin.value) body.stdin = { text: ui.stdin.value };
  const limits = ui.limits.filter((input) => input.value !== "");
  if (limits.length) body.limits = Object.fromEntries(limits.map((input) => [input.dataset.limit, Number(input.value) * scale(input)]));
  return body;
}

function setStatus(state, message) {
  ui.status.dataset.state = state;
  ui.status.textContent = message;
}

async function runNow() {
  if (ui.run.disabled) return;
  const invalid = invalidOption(ui.options) ?? ui.limits.find((input) => !input.checkValidity());
  if (invalid) {
    invalid.focus();
    invalid.reportValidity();
    const label = document.querySelector(`label[for="${invalid.id}"]`)?.textContent ?? invalid.id;
    return setStatus("error", `Not run: ${label}: ${invalid.validationMessage}`);
  }
  save();
  ui.run.disabled = true;
  setStatus("running", "Running…");
  ui.stats.textContent = "";
  try {
    const body = spec();
    show(await run(body, (progress) => setStatus(progress.state, progress.message)), body);
  } finally {
    ui.run.disabled = false;
  }
}

/** Show an answer of `run` or `storedRun` for the spec `body` (kept: a share link carries the run id
 * only while the spec is unchanged). */
function show(answer, body) {
  setStatus(answer.state, answer.message);
  ui.status.dataset.parser = answer.parser ?? "";
  // A run that did not happen leaves the previous result on show, dimmed.
  ui.outputs.parentElement.classList.toggle("stale", !answer.result);
  if (!answer.result) return;
  shown = { id: answer.result.id, digest: answer.result.image?.digest, spec: JSON.stringify(body) };
  ui.stats.textContent = figures(answer.result);
  renderOutputs(ui.outputs, answer.result, entry().view); // the entry's viewer hints
}

/** The state a share link carries: pinned to the digest that ran (or runs now), with the run id when
 * the result on show answers the current spec. */
async function shareState() {
  const body = spec();
  const current = shown?.spec === JSON.stringify(body) ? shown : null;
  let digest = pinned ?? current?.digest;
  digest ??= (await servedDigests(API_BASE).catch(() => new Map())).get(entry().id) ?? null;
  const state = {
    image: entry().id, digest, files: files.contents(), argv: body.argv ?? [], env: body.env ?? {}, stdin: ui.stdin.value,
    options: body.options, limits: body.limits ?? {},
  };
  if (current) state.run = current.id;
  return state;
}

/** Open a share link: its state replaces the session; its run's stored result is shown when the edge
 * still has it, else Run is offered (a link never runs by itself). False when it cannot be opened. */
async function openShareLink(fragment) {
  history.replaceState(null, "", location.pathname + location.search);
  let state;
  try {
    state = await decodeState(fragment);
    if (!images.has(state.image)) throw new Error(`This link's image ${state.image} is not in this service's catalogue.`);
  } catch (error) {
    setStatus("error", error.message);
    return false;
  }
  open(state.image, sessionOf(state));
  ui.outputs.replaceChildren();
  ui.stats.textContent = "";
  await checkPin(state);
  const stored = state.run ? await storedRun(state.run) : null;
  if (stored?.result) {
    show(stored, spec());
    ui.shareNote.textContent = "Opened a shared link: its stored result is shown, not run again.";
    return true;
  }
  const why = !state.run ? "" : stored ? `its result could not be fetched (${stored.message}); ` : "its result is no longer stored; ";
  setStatus("idle", `Opened a shared link: ${why}press Run to run it.`);
  return true;
}

/** A link pinned to a digest this service no longer serves: say so, naming both, and offer the
 * current version (never a silent switch; until then a Run asks for the pinned one and is refused). */
async function checkPin(state) {
  const served = await servedDigests(API_BASE).catch(() => null); // unreachable: a Run's answer will say
  if (!state.digest || !served || served.get(state.image) === state.digest) return;
  const now = served.get(state.image);
  $("pin-text").textContent = `This link pins ${state.image} at ${state.digest}, which this service no longer serves` +
    (now ? ` (it has ${now}). Runs ask for the pinned version and are refused.` : "; the image is not built here yet.");
  ui.unpin.hidden = !now;
  ui.unpin.onclick = () => {
    pinned = null;
    ui.pin.hidden = true;
    save();
    setStatus("idle", `Using ${state.image} at ${now}: press Run to run it.`);
  };
  ui.pin.hidden = false;
}

/** The session `open` takes for a state in share.js's shape (limits in the API's units). */
function sessionOf(state, selected) {
  const limit = (input) => [input.dataset.limit, String(state.limits[input.dataset.limit] / scale(input))];
  return {
    digest: state.digest, files: state.files, selected, options: state.options, argv: state.argv.join("\n"), stdin: state.stdin,
    env: Object.entries(state.env).map(([name, value]) => `${name}=${value}`).join("\n"),
    limits: Object.fromEntries(ui.limits.filter((input) => input.dataset.limit in state.limits).map(limit)),
  };
}

/** Open a gist link (gist.js): its files and pe.toml replace the session. A gist that cannot be loaded
 * leaves the page as it was, the reason in the status line. False when it cannot be opened. */
async function openGist(fragment) {
  history.replaceState(null, "", location.pathname + location.search);
  setStatus("running", "Loading the gist…");
  let gist;
  try {
    gist = await loadGist(API_BASE, fragment);
  } catch (error) {
    setStatus("error", error.message);
    return false;
  }
  const image = gist.state.image || guessImage(images, Object.keys(gist.state.files)) || ui.image.value;
  open(image, sessionOf(gist.state, gist.open[0]));
  setStatus("idle", `Opened gist ${gist.id} at revision ${gist.rev.slice(0, 7)}: press Run to run it.`);
  return true;
}

function askPath(message, initial) {
  const path = window.prompt(message, initial)?.trim();
  return path ? path.replace(/^\/+/, "") : null;
}

/** Add uploaded or dropped files: text when they are UTF-8 without NUL, else binary (base64). */
async function addUploads(list) {
  for (const file of list) {
    const bytes = new Uint8Array(await file.arrayBuffer());
    let content;
    try {
      const text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
      content = text.includes("\0") ? null : text;
    } catch {
      content = null;
    }
    if (content === null) {
      let binary = "";
      for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
      content = { base64: btoa(binary) };
    }
    files.add(file.name, content, true);
  }
}

async function fromFragment() {
  if (isShareFragment(location.hash)) return openShareLink(location.hash);
  if (isGistFragment(location.hash)) return openGist(location.hash);
  const params = new URLSearchParams(location.hash.slice(1));
  if (!params.has("image")) return false;
  const example = params.get("example");
  if (example === null) open(params.get("image"));
  else openExample(params.get("image"), Number(example));
  history.replaceState(null, "", location.pathname + location.search);
  return true;
}

async function start() {
  const catalog = await (await fetch($("playground").dataset.catalog)).json();
  images = new Map(catalog.images.map((image) => [image.id, image]));
  for (const image of images.values()) {
    ui.image.append(new Option(`${image.title} (${image.id})`, image.id));
    ui.list.append(new Option(image.title, image.id));
  }
  const runKey = { key: "Mod-Enter", run: () => (runNow(), true) };
  files = new Files($("tabs"), $("editor"), save, [runKey]);
  browser = new ImageBrowser({
    panel: $("image-files-panel"), tree: $("image-tree"), view: $("image-file"), status: $("image-files-status"),
    form: $("image-files-go"), path: $("image-files-path"),
  });

  ui.image.addEventListener("change", () => open(ui.image.value));
  ui.search.addEventListener("change", () => {
    const words = ui.search.value.toLowerCase();
    const found = images.get(ui.search.value) ??
      [...images.values()].find((image) => `${image.id} ${image.title} ${image.tags.join(" ")}`.toLowerCase().includes(words));
    if (found) open(found.id);
  });
  ui.example.addEventListener("change", () => ui.example.value && openExample(ui.image.value, Number(ui.example.value)));
  ui.options.addEventListener("input", save);
  for (const field of [ui.argv, ui.env, ui.stdin, ...ui.limits]) field.addEventListener("input", save);
  ui.run.addEventListener("click", runNow);
  ui.copy.addEventListener("click", async () => {
    ui.shareNote.textContent = "";
    try {
      const link = new URL(`#${await encodeState(await shareState())}`, location.href).href;
      await copyLink(link, ui.shareLink, ui.shareNote);
    } catch (error) {
      ui.shareNote.textContent = `No link: ${error.message}`;
    }
  });
  $("embed-button").addEventListener("click", async () => {
    $("embed-note").textContent = "";
    try {
      // Unpinned: an embed in another project's docs follows the image's current version instead of
      // breaking when the image is rebuilt (a share link pins; docs/embedding.md, "Snippet").
      const state = { ...(await shareState()), digest: null };
      const src = new URL(`embed/#${await encodeState(state)}`, location.href).href;
      const snippet = `<iframe src="${src}" title="Program Explorer: ${entry().id}" style="width: 100%; height: 24rem; border: 0" loading="lazy"></iframe>`;
      await copyLink(snippet, $("embed-snippet"), $("embed-note"), "snippet");
    } catch (error) {
      $("embed-note").textContent = `No snippet: ${error.message}`;
    }
  });
  $("export").addEventListener("click", async () => {
    $("export-note").textContent = await downloadExport(spec(), files.current === null ? [] : [files.current]);
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && !event.defaultPrevented) {
      event.preventDefault();
      runNow();
    }
  });
  $("add-file").addEventListener("click", () => {
    const path = askPath("New file name", "file.txt");
    if (path) files.add(path);
  });
  $("upload-file").addEventListener("click", () => $("upload").click());
  $("upload").addEventListener("change", async (event) => {
    await addUploads(event.target.files);
    event.target.value = "";
  });
  $("editor").addEventListener("dragover", (event) => event.preventDefault());
  $("editor").addEventListener("drop", (event) => {
    if (!event.dataTransfer?.files.length) return;
    event.preventDefault();
    addUploads(event.dataTransfer.files);
  });
  $("rename-file").addEventListener("click", () => {
    if (files.current === null) return;
    const path = askPath("Rename to", files.current);
    if (path && !files.rename(files.current, path)) setStatus("error", `A file named ${path} exists`);
  });
  $("delete-file").addEventListener("click", () => {
    if (files.current !== null && window.confirm(`Delete ${files.current}?`)) files.remove(files.current);
  });
  window.addEventListener("hashchange", fromFragment);

  if (!(await fromFragment())) {
    let session = null;
    try {
      session = JSON.parse(localStorage.getItem(STORAGE_KEY));
    } catch {
      session = null;
    }
    if (session && images.has(session.image)) open(session.image, session);
    else open(images.has("python3") ? "python3" : images.keys().next().value);
  }
  document.body.dataset.ready = "true";
  startPyodide($("playground").dataset.pyodide); // once the page works, in the background
}

start().catch((error) => setStatus("error", `The playground could not start: ${error.message}`));
