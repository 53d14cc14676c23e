// Share links (docs/sharing-links.md): the whole playground state in the URL fragment, as
// `#s1=<base64url of the deflate-raw of the state's UTF-8 JSON>`.
//
// The state: {v: 1, image, digest, files: {path: text | {base64}}, argv: [..], env: {NAME: value},
// stdin, options: {name: value}, limits: {name: number, in the API's units}, run?: <run id>}.
//
// Versions: the fragment's prefix (`s1`) names the format. `encodeState` always writes the newest;
// `decodeState` keeps one decoder per version ever published, each returning the newest state shape,
// so a link made today opens after the format changes. This module touches no DOM at import time:
// the codec runs under Node too (tests/web/test_share.py).

export const STATE_VERSION = 1;
const PREFIX = "s1";
// A link that expands to more than this is refused (a deflate bomb, or not ours).
const MAX_JSON_BYTES = 16 << 20;
const DIGEST = /^sha256:[0-9a-f]{64}$/;
const RUN_ID = /^[0-9a-f]{64}$/;
const IMAGE_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

/** A share link that cannot be read; `message` says why, for a person. */
export class ShareLinkError extends Error {
  name = "ShareLinkError";
}

/** Whether a URL fragment (with or without its `#`) is a share link of any version. */
export function isShareFragment(fragment) {
  return /^#?s\d+=/.test(fragment);
}

/** The fragment (without `#`) for `state`: `s1=…`. Throws ShareLinkError when `state` is malformed. */
export async function encodeState(state) {
  const json = JSON.stringify(checkState({ ...state, v: STATE_VERSION }));
  const compressed = await pipe(new TextEncoder().encode(json), new CompressionStream("deflate-raw"));
  return `${PREFIX}=${toBase64Url(compressed)}`;
}

/** The state in a fragment (`#s1=…` or `s1=…`), in the newest shape. Throws ShareLinkError with a
 * message for a person when the link is damaged, of an unknown version or not a share link. */
export async function decodeState(fragment) {
  const match = /^#?(s\d+)=(.*)$/s.exec(fragment);
  if (!match) throw new ShareLinkError("This is not a share link: it should start with #s1=.");
  const decode = DECODERS[match[1]];
  if (!decode) {
    throw new ShareLinkError(
      `This share link has format ${match[1]}, which this page does not read (it reads ${Object.keys(DECODERS).join(", ")}); it may come from a newer Program Explorer.`,
    );
  }
  return decode(match[2]);
}

// One decoder per published format, each returning the newest state shape. A new format `s2` adds
// `s2: decodeV2` and keeps `s1`, upgrading what it reads (see docs/sharing-links.md, "Versions").
const DECODERS = { s1: decodeV1 };

async function decodeV1(payload) {
  const bytes = fromBase64Url(payload);
  let json;
  try {
    json = await pipe(bytes, new DecompressionStream("deflate-raw"), MAX_JSON_BYTES);
  } catch (error) {
    if (error instanceof ShareLinkError) throw error;
    throw damaged("its data does not decompress; it may have been cut short when it was copied");
  }
  let state;
  try {
    state = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(json));
  } catch {
    throw damaged("its data is not UTF-8 JSON");
  }
  return checkState(state);
}

function damaged(why) {
  return new ShareLinkError(`This share link is damaged: ${why}.`);
}

const isObject = (value) => typeof value === "object" && value !== null && !Array.isArray(value);
const isBase64 = (value) => typeof value === "string" && /^[A-Za-z0-9+/]*={0,2}$/.test(value) && value.length % 4 === 0;

/** `state` with every field present (defaults for the missing ones), or a ShareLinkError naming the
 * field at fault. */
function checkState(state) {
  const wrong = (field, what) => damaged(`${field} ${what}`);
  if (!isObject(state)) throw wrong("the state", "is not an object");
  if (state.v !== STATE_VERSION) {
    throw wrong("v", state.v === undefined ? "is missing" : `is ${JSON.stringify(state.v)}, not ${STATE_VERSION}`);
  }
  if (typeof state.image !== "string" || !IMAGE_ID.test(state.image)) throw wrong("image", "is not an image id");
  const digest = state.digest ?? null;
  if (digest !== null && !(typeof digest === "string" && DIGEST.test(digest))) throw wrong("digest", "is not sha256:<64 hex>");
  const files = state.files ?? {};
  if (!isObject(files)) throw wrong("files", "is not an object");
  for (const [path, content] of Object.entries(files)) {
    const ok = path !== "" && (typeof content === "string" || (isObject(content) && isBase64(content.base64)));
    if (!ok) throw wrong(`file ${JSON.stringify(path)}`, "is neither text nor {base64}");
  }
  const argv = state.argv ?? [];
  if (!Array.isArray(argv) || !argv.every((arg) => typeof arg === "string")) throw wrong("argv", "is not a list of strings");
  const env = state.env ?? {};
  if (!isObject(env) || !Object.values(env).every((value) => typeof value === "string")) throw wrong("env", "is not {NAME: string}");
  const stdin = state.stdin ?? "";
  if (typeof stdin !== "string") throw wrong("stdin", "is not a string");
  const options = state.options ?? {};
  const scalar = (value) => ["string", "number", "boolean"].includes(typeof value);
  if (!isObject(options) || !Object.values(options).every(scalar)) throw wrong("options", "is not {name: value}");
  const limits = state.limits ?? {};
  if (!isObject(limits) || !Object.values(limits).every(Number.isFinite)) throw wrong("limits", "is not {name: number}");
  const checked = { v: STATE_VERSION, image: state.image, digest, files, argv, env, stdin, options, limits };
  if (state.run !== undefined && state.run !== null) {
    if (typeof state.run !== "string" || !RUN_ID.test(state.run)) throw wrong("run", "is not a run id");
    checked.run = state.run;
  }
  return checked;
}

/** `bytes` through a (de)compression stream; over `limit` output bytes is a ShareLinkError. */
async function pipe(bytes, stream, limit = Infinity) {
  const writer = stream.writable.getWriter();
  writer.write(bytes).catch(() => {}); // a failure shows on the reading side
  writer.close().catch(() => {});
  const chunks = [];
  let size = 0;
  const reader = stream.readable.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.length;
    if (size > limit) {
      reader.cancel().catch(() => {});
      throw damaged(`it expands to more than ${limit >> 20} MiB`);
    }
    chunks.push(value);
  }
  const out = new Uint8Array(size);
  let offset = 0;
  for (const chunk of chunks) {
    out.set(chunk, offset);
    offset += chunk.length;
  }
  return out;
}

/** Standard base64 of `bytes` (chunked: spreading a large array overflows the call stack). */
export function toBase64(bytes) {
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(binary);
}

function toBase64Url(bytes) {
  return toBase64(bytes).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function fromBase64Url(text) {
  if (!/^[A-Za-z0-9_-]*$/.test(text) || text.length % 4 === 1) {
    throw damaged("its data is not base64url; it may have been changed when it was copied");
  }
  const binary = atob(text.replace(/-/g, "+").replace(/_/g, "/"));
  return Uint8Array.from(binary, (c) => c.charCodeAt(0));
}

/** Catalogue id -> the digest the edge at `apiBase` serves now (null: not built), from GET /api/v1/catalog. */
export async function servedDigests(apiBase) {
  const response = await fetch(`${apiBase}/api/v1/catalog`);
  if (!response.ok) throw new Error(`the catalogue: HTTP ${response.status}`);
  const { images } = await response.json();
  return new Map(images.map((image) => [image.id, image.digest]));
}

/** Put `link` on the clipboard and in `field` (a read-only text input, shown). Where the clipboard API
 * is missing or refused (no permission, not a secure context), the link is selected in `field` so
 * Ctrl+C copies it. `note` (a live region) says which happened, naming the text `what` is. */
export async function copyLink(link, field, note, what = "link") {
  field.value = link;
  field.closest("[hidden]")?.removeAttribute("hidden");
  try {
    await navigator.clipboard.writeText(link);
    note.textContent = `${what[0].toUpperCase()}${what.slice(1)} copied.`;
  } catch {
    field.focus();
    field.select();
    note.textContent = `Press Ctrl+C (⌘C) to copy the selected ${what}.`;
  }
}
