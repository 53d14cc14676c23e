// The playground: picks an image, edits its files and options, runs it and shows the result.
// The session (image, files, options, argv, env, stdin) is kept in localStorage; a URL fragment
// `#image=ID&example=N` (from the catalogue pages) replaces it with that image's example.
import { ImageBrowser } from "./browser.js";
import { Files } from "./files.js";
import { invalidOption, readOptions, renderOptions } from "./options.js";
import { figures, run } from "./run.js";
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
};
let images = new Map();
let files;
let browser;

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
    image: ui.image.value, files: files.contents(), selected: files.current, options: readOptions(ui.options),
    argv: ui.argv.value, env: ui.env.value, stdin: ui.stdin.value,
    limits: Object.fromEntries(ui.limits.map((input) => [input.dataset.limit, input.value])),
  };
  localStorage.setItem(STORAGE_KEY, JSON.stringify(session));
}

/** Show `image` with `session`'s files and values (missing ones: the image's defaults). */
function open(imageId, session = {}) {
  const image = images.get(imageId) ?? images.values().next().value;
  ui.image.value = image.id;
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
    image: image.id,
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
    const answer = await run(spec());
    setStatus(answer.state, answer.message);
    ui.status.dataset.parser = answer.parser ?? "";
    // A run that did not happen leaves the previous result on show, dimmed.
    ui.outputs.parentElement.classList.toggle("stale", !answer.result);
    if (answer.result) {
      ui.stats.textContent = figures(answer.result);
      renderOutputs(ui.outputs, answer.result, entry().view); // the entry's viewer hints
    }
  } finally {
    ui.run.disabled = false;
  }
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

function fromFragment() {
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

  if (!fromFragment()) {
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
