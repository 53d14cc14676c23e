// What every viewer needs: an output's bytes, its text when it is text, its media type without
// parameters, and blob URLs and other resources released when the output is replaced.

/**
 * The bytes of a stream or file of the run's result. run.js fills `data` (a Uint8Array); until it
 * does everywhere, a JSON answer's `text` or `base64` is decoded here, and only here.
 */
export function bytesOf(content) {
  if (content.data instanceof Uint8Array) return content.data;
  if (typeof content.text === "string") return new TextEncoder().encode(content.text);
  const binary = atob(content.base64 ?? "");
  return Uint8Array.from(binary, (c) => c.charCodeAt(0));
}

/**
 * `bytes` as a string when they are UTF-8 without NUL, else null. An incomplete character at the
 * very end is dropped (outputs may be cut at a byte limit), as wire/mime.py allows.
 */
export function decodeText(bytes) {
  if (bytes.includes(0)) return null;
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes, { stream: true });
  } catch {
    return null;
  }
}

/** "text/html; charset=utf-8" → "text/html". */
export function baseMime(mime) {
  return (mime ?? "").split(";")[0].trim().toLowerCase();
}

/** "dir/Model.GLB" → ".glb"; "" when the name has no dot. */
export function extension(path) {
  const name = path.split("/").pop();
  const dot = name.lastIndexOf(".");
  return dot > 0 ? name.slice(dot).toLowerCase() : "";
}

/** "1.5 KiB". */
export function formatSize(bytes) {
  if (bytes < 1024) return `${bytes} bytes`;
  const units = ["KiB", "MiB", "GiB"];
  let value = bytes / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}

// Resources to release when an element's output is replaced: blob URLs, WebGL contexts, observers.
// Elements holding some are marked, so `release(root)` finds them without a registry to clean up.
const cleanups = new WeakMap();

export function onRelease(element, cleanup) {
  if (!cleanups.has(element)) cleanups.set(element, []);
  cleanups.get(element).push(cleanup);
  element.dataset.releases = "";
}

/** Run the cleanups of `root` and of every element under it. */
export function release(root) {
  const marked = [...root.querySelectorAll("[data-releases]")];
  if (root.dataset?.releases !== undefined) marked.push(root);
  for (const element of marked) {
    for (const cleanup of cleanups.get(element) ?? []) cleanup();
    cleanups.delete(element);
    delete element.dataset.releases;
  }
}

/** A blob URL for `bytes`, revoked when `owner`'s output is released. */
export function blobUrl(owner, bytes, mime) {
  const url = URL.createObjectURL(new Blob([bytes], { type: mime || "application/octet-stream" }));
  onRelease(owner, () => URL.revokeObjectURL(url));
  return url;
}

/** A `<tag class=className>` with `text` as its text (never as HTML). */
export function element(tag, className = "", text = "") {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text) node.textContent = text;
  return node;
}
