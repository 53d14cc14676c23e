// The Pyodide worker (a module Web Worker, served as assets/pyodide/worker.js beside the runtime).
// Python's `wire` package parses run answers (application/x-cpio) and reads image files through HTTP
// Range requests. Protocol (web/pyodide/client.js is the other side):
//   out, once:  {op: "ready", ms, pyodideMs} (since the worker started; until loadPyodide resolved)
//               or {op: "failed", error}
//   in:         {id, op: "parse", buffer} | {id, op: "list", url, path} | {id, op: "read", url, path, limit}
//   out:        {id, ok: true, value, ms} or {id, ok: false, error}; "list" and "read" add {fetched, size}
import { loadPyodide } from "./pyodide.mjs";

const BLOCK = 4096; // erofs's block size here: what a Range read is aligned to and cached by
const READ_TIMEOUT_MS = 30_000; // one Range request; a hung server fails the read, not the worker
const CACHE_BYTES = 64 << 20; // blocks kept per image; the oldest are dropped beyond it

let glue = null; // the pe_browser module (web/pyodide/pe_browser.py)
const images = new Map(); // image URL -> {file: RangeFile, files: pe_browser.ImageFiles}

/** An HTTP resource read by synchronous Range requests (Python's reads are synchronous; this is a
 * worker, where a blocking request blocks no page). Blocks are cached (up to CACHE_BYTES, oldest
 * dropped first); the missing neighbours of one read are fetched in one request. */
class RangeFile {
  constructor(url) {
    this.url = url;
    this.blocks = new Map(); // block number -> bytes, oldest first
    this.cached = 0; // bytes in `blocks`
    this.size = null; // from Content-Range
    this.fetched = 0; // body bytes received
  }

  read(offset, length) {
    let end = offset + length;
    if (this.size !== null) end = Math.min(end, this.size);
    if (end <= offset) return new Uint8Array(0);
    const first = Math.floor(offset / BLOCK);
    const last = Math.floor((end - 1) / BLOCK);
    for (let n = first; n <= last; n++) {
      if (this.blocks.has(n)) continue;
      let upto = n;
      while (upto < last && !this.blocks.has(upto + 1)) upto++;
      this.download(n, upto);
      n = upto;
    }
    const out = new Uint8Array(end - offset);
    let filled = 0;
    for (let n = first; n <= last && filled < out.length; n++) {
      const block = this.blocks.get(n) ?? new Uint8Array(0);
      const from = n === first ? offset - n * BLOCK : 0;
      const piece = block.subarray(from, from + out.length - filled);
      out.set(piece, filled);
      filled += piece.length;
      if (block.length < BLOCK) break; // the end of the file
    }
    for (const [n, block] of this.blocks) { // the oldest first, once this read has its bytes
      if (this.cached <= CACHE_BYTES) break;
      this.blocks.delete(n);
      this.cached -= block.length;
    }
    return out.subarray(0, filled);
  }

  download(first, last) {
    const xhr = new XMLHttpRequest();
    xhr.open("GET", this.url, false);
    xhr.responseType = "arraybuffer";
    xhr.timeout = READ_TIMEOUT_MS; // allowed on a synchronous request in a worker
    xhr.setRequestHeader("Range", `bytes=${first * BLOCK}-${(last + 1) * BLOCK - 1}`);
    xhr.send();
    if (xhr.status === 416) { // wholly past the end
      this.blocks.set(first, new Uint8Array(0));
      return;
    }
    if (xhr.status !== 206 && xhr.status !== 200) throw new Error(`${this.url}: HTTP ${xhr.status}`);
    const body = new Uint8Array(xhr.response);
    this.fetched += body.length;
    const total = /\/(\d+)$/.exec(xhr.getResponseHeader("Content-Range") ?? "");
    this.size = total ? Number(total[1]) : xhr.status === 200 ? body.length : this.size;
    const start = xhr.status === 200 ? 0 : first; // a server that ignored Range sent everything
    for (let at = 0; at === 0 || at < body.length; at += BLOCK) {
      this.blocks.set(start + at / BLOCK, body.subarray(at, at + BLOCK));
    }
    this.cached += body.length;
  }
}

function image(url) {
  let open = images.get(url);
  if (!open) {
    const file = new RangeFile(url);
    open = { file, files: glue.ImageFiles((offset, length) => file.read(offset, length)) };
    images.set(url, open);
  }
  return open;
}

/** Call a Python function and convert its answer to JavaScript (bytes become Uint8Array). */
function call(fn, ...args) {
  const answer = fn(...args);
  if (typeof answer !== "object" || answer === null || !answer.toJs) return answer;
  try {
    return answer.toJs();
  } finally {
    answer.destroy();
  }
}

const operations = {
  parse({ buffer }) {
    const [json, stdout, stderr, files] = call(glue.parse_result, new Uint8Array(buffer));
    const result = JSON.parse(json);
    result.stdout.data = stdout;
    result.stderr.data = stderr;
    result.files.forEach((file, index) => { file.data = files[index]; });
    return result;
  },
  list({ url, path }) {
    const { files } = image(url);
    return JSON.parse(call(files.list, path));
  },
  read({ url, path, limit }) {
    const { files } = image(url);
    const [json, data] = call(files.read, path, limit);
    return { ...JSON.parse(json), data };
  },
};

/** The ArrayBuffers under a value's Uint8Arrays, each once: handed over to the page, not copied. */
function buffers(value, found = new Set()) {
  if (value instanceof Uint8Array) found.add(value.buffer);
  else if (Array.isArray(value)) value.forEach((item) => buffers(item, found));
  else if (value && typeof value === "object") Object.values(value).forEach((item) => buffers(item, found));
  return [...found];
}

/** Load Pyodide and `wire`; resolves to when loadPyodide had resolved (ms since the worker started). */
async function start() {
  const pyodide = await loadPyodide({ indexURL: new URL(".", import.meta.url).href });
  const pyodideMs = performance.now();
  const zip = await fetch(new URL("wire.zip", import.meta.url));
  if (!zip.ok) throw new Error(`wire.zip: HTTP ${zip.status}`);
  const sitePackages = pyodide.runPython("import sysconfig; sysconfig.get_path('purelib')");
  pyodide.unpackArchive(await zip.arrayBuffer(), "zip", { extractDir: sitePackages });
  glue = pyodide.pyimport("pe_browser");
  return pyodideMs;
}

self.onmessage = ({ data: message }) => {
  const started = performance.now();
  try {
    const value = operations[message.op](message);
    const reply = { id: message.id, ok: true, value, ms: performance.now() - started };
    const open = message.url && images.get(message.url);
    if (open) Object.assign(reply, { fetched: open.file.fetched, size: open.file.size });
    self.postMessage(reply, buffers(value));
  } catch (error) {
    self.postMessage({ id: message.id, ok: false, error: String(error.message ?? error).trim().split("\n").pop() });
  }
};

start().then(
  (pyodideMs) => self.postMessage({ op: "ready", ms: performance.now(), pyodideMs }),
  (error) => self.postMessage({ op: "failed", error: String(error.message ?? error) }),
);
