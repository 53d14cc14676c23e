// The embed page (/embed/, docs/embedding.md): a compact playground made to sit in another site's
// iframe — the file tabs and editor, Run, and the result, with the playground's own modules.
//
// What it shows comes from the URL: the fragment is a share link's state (`#s1=…`, share.js) or a gist
// (`#gist=<id>[/<rev>]`, gist.js), or the query names a catalogue example (`?image=python3&example=0`). Options in the query: readonly,
// autorun, theme (light, dark, auto), panes (files, output; both by default), origin (the host's).
//
// The host talks to it with postMessage. It posts {type: "pe:ready"} once it works, {type: "pe:resize",
// height} whenever its content changes height, {type: "pe:result", …} after each run (and
// {type: "pe:error", message} for a message it refuses). It accepts {type: "pe:setFiles", files:
// {path: text | {base64}}, selected?} and {type: "pe:run"} from its parent window only, and only from
// the parent's origin when that is known (see `hostOrigin`).
import { Files } from "../editor/files.js";
import { guessImage, isGistFragment, loadGist } from "../editor/gist.js";
import { API_BASE, figures, run, storedRun } from "../editor/run.js";
import { decodeState, encodeState, isShareFragment } from "../editor/share.js";
import { renderOutputs } from "../viewers/outputs.js";

const $ = (id) => document.getElementById(id);
const query = new URLSearchParams(location.search);
const flag = (name) => query.has(name) && !["0", "false", "no"].includes(query.get(name));
const ui = { main: $("embed"), run: $("run"), status: $("status"), stats: $("stats"), outputs: $("outputs"), open: $("open") };
// Text of a stream or file in a pe:result message, at most this many bytes each.
const SUMMARY_BYTES = 64 << 10;

let state; // the share-link state being shown (share.js shape); its files live in `files`
let files;
let entry; // the image's catalogue entry (viewer hints)

/** The host's origin: the `origin` parameter, else what the browser says framed us (Chromium's
 * ancestorOrigins, else the referrer's origin); null when unknown or not framed. */
function hostOrigin() {
  if (window.parent === window) return null;
  const given = query.get("origin") ?? location.ancestorOrigins?.[0] ?? document.referrer;
  try {
    return new URL(given).origin; // "https://host.example/" and "https://host.example" alike
  } catch {
    return query.has("origin") ? BAD_ORIGIN : null;
  }
}
// A malformed `origin` parameter: no message is accepted or posted (rather than from or to anyone).
const BAD_ORIGIN = "bad origin";
const host = hostOrigin();

function post(message) {
  if (window.parent !== window && host !== BAD_ORIGIN) window.parent.postMessage(message, host ?? "*");
}

/** {state, selected} to show: the fragment's share link or gist, else the query's example (python3's
 * first by default). Throws, with a message for a person, when there is none to show. */
async function initialState(images) {
  const known = (state, selected) => {
    if (!images.has(state.image)) throw new Error(`This link's image ${state.image} is not in this service's catalogue.`);
    return { state, selected };
  };
  if (isShareFragment(location.hash)) return known(await decodeState(location.hash));
  if (isGistFragment(location.hash)) {
    const gist = await loadGist(API_BASE, location.hash);
    const image = gist.state.image || guessImage(images, Object.keys(gist.state.files));
    if (!image) throw new Error(`Gist ${gist.id} names no image (its pe.toml can) and no image here takes its files.`);
    return known({ v: 1, ...gist.state, image }, gist.open[0]);
  }
  const image = images.get(query.get("image") ?? "python3") ?? images.values().next().value;
  if (!image) throw new Error("The catalogue is empty.");
  if (query.has("image") && !images.has(query.get("image"))) throw new Error(`There is no image ${query.get("image")} here.`);
  const example = image.examples[Number(query.get("example") ?? 0)];
  if (query.has("example") && !example) throw new Error(`${image.title} has no example ${query.get("example")}.`);
  const state = {
    v: 1, image: image.id, digest: null, files: example?.files ?? image.files, argv: example?.argv ?? [], env: {},
    stdin: typeof example?.stdin === "string" ? example.stdin : example?.stdin?.text ?? "", options: example?.options ?? {},
    limits: {},
  };
  return { state };
}

/** The run request for `state` with the editor's files (pinned to the state's digest, when it has one). */
function spec() {
  const body = {
    image: state.digest ? `${state.image}@${state.digest}` : state.image,
    files: Object.fromEntries(
      Object.entries(files.contents()).map(([path, content]) => [path, typeof content === "string" ? { text: content } : content]),
    ),
    options: state.options,
  };
  if (state.argv.length) body.argv = state.argv;
  if (Object.keys(state.env).length) body.env = state.env;
  if (state.stdin) body.stdin = { text: state.stdin };
  if (Object.keys(state.limits).length) body.limits = state.limits;
  return body;
}

function setStatus(status, message) {
  ui.status.dataset.state = status;
  ui.status.textContent = message;
}

/** Show an answer of `run` or `storedRun`, and tell the host. */
function show(answer) {
  setStatus(answer.state, answer.message);
  ui.outputs.parentElement.classList.toggle("stale", !answer.result);
  if (answer.result) {
    ui.stats.textContent = figures(answer.result);
    renderOutputs(ui.outputs, answer.result, entry?.view);
  }
  post({ type: "pe:result", ...summary(answer) });
}

/** What a pe:result message carries: the state and message shown, and the result's figures, streams
 * (text, up to SUMMARY_BYTES) and files (path and size). */
function summary(answer) {
  const result = answer.result;
  const base = { state: answer.state, message: answer.message };
  if (!result) return base;
  const text = (item) => new TextDecoder().decode((item?.data ?? new Uint8Array()).subarray(0, SUMMARY_BYTES));
  return {
    ...base, id: result.id, status: result.status, exit_code: result.exit_code ?? null, wall_ms: result.wall_ms,
    stdout: text(result.stdout), stderr: text(result.stderr),
    files: (result.files ?? []).map((file) => ({ path: file.path, size: file.data?.length ?? file.size ?? 0 })),
  };
}

async function runNow() {
  if (ui.run.disabled) return;
  ui.run.disabled = true;
  setStatus("running", "Running…");
  ui.stats.textContent = "";
  try {
    show(await run(spec()));
  } finally {
    ui.run.disabled = false;
  }
}

/** A pe:setFiles message's files, or an error message for the host. */
function checkedFiles(value) {
  const isObject = (v) => typeof v === "object" && v !== null && !Array.isArray(v);
  if (!isObject(value)) return "files must be an object {path: text | {base64}}";
  for (const [path, content] of Object.entries(value)) {
    if (path === "" || !(typeof content === "string" || (isObject(content) && typeof content.base64 === "string"))) {
      return `file ${JSON.stringify(path)} is neither text nor {base64}`;
    }
  }
  return null;
}

function onMessage(event) {
  // Only the page that framed us, and only from its origin when we know it: any other window or
  // origin is ignored without an answer.
  if (event.source !== window.parent || window.parent === window) return;
  if (host !== null && event.origin !== host) return;
  const message = event.data;
  if (message?.type === "pe:setFiles") {
    const wrong = checkedFiles(message.files);
    if (wrong) return post({ type: "pe:error", message: `pe:setFiles: ${wrong}` });
    files.load(message.files, message.selected);
    linkToPlayground();
  } else if (message?.type === "pe:run") {
    runNow();
  }
}

/** Tell the host our height whenever it changes (it sizes the iframe to fit). */
function reportHeight() {
  let last = -1;
  new ResizeObserver(() => {
    const height = Math.ceil(document.body.getBoundingClientRect().height);
    if (height !== last) post({ type: "pe:resize", height: (last = height) });
  }).observe(document.body);
}

/** "Open in Program Explorer": the full playground with the current files (a share link). */
let linkTimer;
function linkToPlayground() {
  clearTimeout(linkTimer);
  linkTimer = setTimeout(async () => {
    const fragment = await encodeState({ ...state, files: files.contents() }).catch(() => null);
    if (fragment) ui.open.href = `${ui.main.dataset.playground}#${fragment}`;
  }, 300);
}

function applyOptions() {
  const theme = query.get("theme");
  if (theme === "light" || theme === "dark") document.documentElement.dataset.theme = theme;
  const panes = new Set((query.get("panes") ?? "files,output").split(",").map((pane) => pane.trim()));
  $("files-pane").hidden = !panes.has("files");
  $("output-pane").hidden = !panes.has("output");
}

async function start() {
  if (host === BAD_ORIGIN) throw new Error(`origin=${query.get("origin")} is not an origin such as https://docs.example.org.`);
  applyOptions();
  reportHeight();
  const catalog = await (await fetch(ui.main.dataset.catalog)).json();
  const images = new Map(catalog.images.map((image) => [image.id, image]));
  const initial = await initialState(images);
  state = initial.state;
  entry = images.get(state.image);
  $("image-name").textContent = entry?.title ?? state.image;
  const runKey = { key: "Mod-Enter", run: () => (runNow(), true) };
  files = new Files($("tabs"), $("editor"), linkToPlayground, [runKey], { readOnly: flag("readonly") });
  files.load(state.files, initial.selected);
  linkToPlayground();
  ui.run.addEventListener("click", runNow);
  window.addEventListener("message", onMessage);
  document.body.dataset.ready = "true";
  post({ type: "pe:ready" });
  if (flag("autorun")) return runNow();
  const stored = state.run ? await storedRun(state.run) : null;
  if (stored?.result) show(stored);
}

start().catch((error) => {
  if (!files) {
    // Nothing to show or run: the page is the message, whichever panes were asked for.
    $("files-pane").hidden = true;
    $("output-pane").hidden = false;
    ui.run.disabled = true;
  }
  setStatus("error", error.message);
  post({ type: "pe:error", message: error.message });
});
