// The result's outputs, each shown by the viewer its media type selects (or the catalogue entry's
// `view.viewers` hint), with a "View as" choice, a download link, and "Download all" as a zip.
//
// Public API (web/viewers contract, used by the playground and the image file browser):
//   renderOutputs(parent, result, view?)  the run's stdout, stderr and files; `view` is the
//                                         catalogue entry's hints ({first, viewers})
//   renderFile(parent, {path, mime, data, truncated}, {viewer?, controls?})  one file
import { baseMime, bytesOf, decodeText, element, extension, formatSize, release } from "./bytes.js";
import { downloadAllButton, downloadLink } from "./download.js";
import { hexView } from "./hex.js";
import { htmlView } from "./html.js";
import { imageView } from "./image.js";
import { modelFormat, modelView } from "./model.js";
import { tableView } from "./table.js";
import { textView } from "./text.js";

const IMAGES = new Set(["image/png", "image/jpeg", "image/gif", "image/webp", "image/avif", "image/bmp", "image/x-icon"]);
const TABLES = { "text/csv": ",", "text/tab-separated-values": "\t", ".csv": ",", ".tsv": "\t" };
const LABELS = { text: "Text", hex: "Hex", image: "Image", svg: "Image", "3d": "3D", html: "Page", table: "Table" };
const NEEDS_TEXT = new Set(["text", "html", "table"]);

/** A regex for a catalogue glob over relative paths (as wire/paths.py's glob_regex). */
export function globRegex(glob) {
  let source = "";
  for (let at = 0; at < glob.length; at += 1) {
    if (glob.startsWith("**/", at)) {
      source += "(?:.*/)?";
      at += 2;
    } else if (glob.startsWith("**", at)) {
      source += ".*";
      at += 1;
    } else if (glob[at] === "*") source += "[^/]*";
    else if (glob[at] === "?") source += "[^/]";
    else source += glob[at].replace(/[.*+?^${}()|[\]\\/]/g, "\\$&");
  }
  return new RegExp(`^${source}$`, "s");
}

function hinted(hints, path) {
  const found = Object.entries(hints ?? {}).find(([glob]) => globRegex(glob).test(path));
  return found?.[1];
}

/** The viewer for a file: "text", "hex", "image", "svg", "3d", "html" or "table". */
export function chooseViewer(path, mime, text, hint) {
  const ext = extension(path);
  let viewer = hint === "3d" && !modelFormat(mime, ext) ? undefined : hint; // e.g. OFF: no loader
  if (!viewer) {
    if (mime === "image/svg+xml") viewer = "svg";
    else if (IMAGES.has(mime)) viewer = "image";
    else if (modelFormat(mime, ext)) viewer = "3d";
    else if (mime === "text/html") viewer = "html";
    else if (TABLES[mime] || TABLES[ext]) viewer = "table";
    else viewer = "text";
  }
  return NEEDS_TEXT.has(viewer) && text === null ? "hex" : viewer;
}

function view(viewer, file, bytes, text) {
  const { path, mime } = file;
  switch (viewer) {
    case "image":
    case "svg":
      return imageView(bytes, viewer === "svg" ? "image/svg+xml" : mime, path);
    case "3d": {
      const fallback = () => (text === null ? hexView(bytes, path) : textView(text, path));
      const format = modelFormat(mime, extension(path));
      return format ? modelView(bytes, format, path, fallback) : fallback();
    }
    case "html":
      return htmlView(text, path);
    case "table":
      return tableView(text, TABLES[mime] ?? TABLES[extension(path)] ?? ",");
    case "text":
      return textView(text, path);
    default:
      return hexView(bytes, path);
  }
}

/**
 * Show one file in `parent` (replacing what was there) with the viewer its type selects, or
 * `options.viewer`. The "View as" choice and the download link go into `options.controls` if given,
 * else into a bar above the view.
 */
export function renderFile(parent, file, options = {}) {
  release(parent);
  parent.replaceChildren();
  const bytes = bytesOf(file);
  const mime = baseMime(file.mime);
  const text = decodeText(bytes);
  const chosen = chooseViewer(file.path, mime, text, options.viewer);
  const body = element("div", "viewer");
  const show = (viewer) => {
    release(body);
    body.dataset.viewer = viewer;
    body.replaceChildren(view(viewer, { path: file.path, mime }, bytes, text));
    if (file.truncated) body.prepend(element("p", "note", "Truncated: the program wrote more than the limit allowed."));
  };

  const choices = [...new Set([chosen, ...(text === null ? [] : ["text"]), "hex"])];
  const controls = options.controls ?? element("div", "viewer-bar");
  controls.replaceChildren();
  const picker = element("select");
  picker.setAttribute("aria-label", `View ${file.path} as`);
  for (const viewer of choices) picker.append(new Option(LABELS[viewer], viewer));
  picker.addEventListener("change", () => show(picker.value));
  if (choices.length > 1) controls.append(picker);
  controls.append(downloadLink(parent, bytes, mime, file.path));
  if (!options.controls) parent.append(controls);
  parent.append(body);
  show(chosen);
}

function section(parent, title, key, value) {
  const box = element("section", "output");
  box.dataset[key] = value;
  const heading = element("h3");
  const controls = element("span", "controls");
  heading.append(element("span", "title", title), controls);
  const body = element("div");
  box.append(heading, body);
  parent.append(box);
  return { box, body, controls };
}

/** Show `result` (a run's answer) in `parent`, replacing what was there; `view`: the entry's hints. */
export function renderOutputs(parent, result, view = {}) {
  const started = performance.now();
  release(parent);
  parent.replaceChildren();
  const streams = {};
  const files = (result.files ?? []).map((file) => ({ ...file, data: bytesOf(file) }));
  const shown = [];
  for (const stream of ["stdout", "stderr"]) {
    const info = result[stream];
    if (!info) continue;
    streams[stream] = bytesOf(info);
    if (stream === "stderr" && streams.stderr.length === 0) continue;
    shown.push({ name: stream, key: "stream", title: stream, file: { path: `${stream}.txt`, mime: "text/plain", data: streams[stream], truncated: info.truncated } });
  }
  for (const file of files) {
    const title = `${file.path} · ${baseMime(file.mime)} · ${formatSize(file.data.length)}`;
    shown.push({ name: file.path, key: "file", title, file });
  }
  // The entry's `view.first` (stdout, stderr or an output glob) comes first.
  const first = view.first && shown.findIndex((item) => item.name === view.first || (item.key === "file" && globRegex(view.first).test(item.name)));
  if (first > 0) shown.unshift(...shown.splice(first, 1));

  if (files.length) {
    const bar = element("div", "outputs-bar");
    bar.append(downloadAllButton(streams, files));
    parent.append(bar);
  }
  for (const item of shown) {
    const { body, controls } = section(parent, item.title, item.key, item.name);
    renderFile(body, item.file, { viewer: item.key === "file" ? hinted(view.viewers, item.name) : undefined, controls });
  }
  performance.measure("pe:render-outputs", { start: started }); // how long the page was busy showing them
}
