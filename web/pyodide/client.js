// The page's side of the Pyodide worker (web/pyodide/worker.js): started once, in the background, when
// the playground loads. Until it is ready (or when it failed, or took longer than LOAD_BOUND_MS) the
// playground asks for JSON answers instead. `document.body.dataset.pyodide` says where it is: loading,
// ready or failed. Timings are performance measures (docs/web.md, "Pyodide timings"):
// "pe:pyodide-ready" (page load → ready) and one "pe:pyodide-parse" per parsed answer.

const LOAD_BOUND_MS = 30_000;
const PARSE_BOUND_MS = 10_000; // a parse not back by then fails, and the run is asked for as JSON

let worker = null;
let state = "off"; // off | loading | ready | failed
let failure = "";
let ready = null; // a Promise settled when the worker is ready or failed
const waiting = new Map(); // request id -> {resolve, reject}
let nextId = 1;

function setState(next, why = "") {
  state = next;
  failure = why;
  document.body.dataset.pyodide = next;
}

/** Start the worker from `base` (the folder of assets/pyodide/, relative to the page). */
export function startPyodide(base) {
  if (ready) return ready;
  setState("loading");
  ready = new Promise((resolve, reject) => {
    const fail = (error) => {
      clearTimeout(timer);
      worker?.terminate();
      setState("failed", error.message);
      for (const { reject: rejectCall } of waiting.values()) rejectCall(error);
      waiting.clear();
      reject(error);
    };
    const timer = setTimeout(() => fail(new Error(`Pyodide was not ready after ${LOAD_BOUND_MS / 1000} s`)), LOAD_BOUND_MS);
    try {
      worker = new Worker(new URL("worker.js", new URL(base, document.baseURI)), { type: "module" });
    } catch (error) {
      fail(error);
      return;
    }
    worker.onerror = (event) => fail(new Error(event.message || "the Pyodide worker could not start"));
    worker.onmessage = ({ data }) => {
      if (data.op === "ready") {
        clearTimeout(timer);
        const detail = { workerMs: data.ms, pyodideMs: data.pyodideMs };
        performance.measure("pe:pyodide-ready", { start: 0, end: performance.now(), detail });
        setState("ready");
        resolve();
      } else if (data.op === "failed") {
        fail(new Error(data.error));
      } else {
        const call = waiting.get(data.id);
        waiting.delete(data.id);
        if (data.ok) call?.resolve(data);
        else call?.reject(new Error(data.error));
      }
    };
  });
  ready.catch(() => {}); // a failure is a state, read through pyodideState()
  return ready;
}

/** {state, failure}: state is off, loading, ready or failed. */
export function pyodideState() {
  return { state, failure };
}

/** Ask the worker (once it is ready) for `op`; resolves to its reply ({value, ms, …}). */
export async function ask(op, message = {}, transfer = []) {
  if (!ready) throw new Error("Pyodide was not started");
  await ready.catch(() => {
    throw new Error(`Python (Pyodide) could not load: ${failure}`);
  });
  const id = nextId++;
  return new Promise((resolve, reject) => {
    waiting.set(id, { resolve, reject });
    worker.postMessage({ ...message, id, op }, transfer);
  });
}

/** The run answer `buffer` (application/x-cpio) parsed by `wire` into the JSON answer's shape, each
 * stream and file with its `data` (Uint8Array). */
export async function parseResult(buffer) {
  const start = performance.now();
  const bytes = buffer.byteLength;
  let timer;
  const late = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no parse after ${PARSE_BOUND_MS / 1000} s`)), PARSE_BOUND_MS);
  });
  const reply = await Promise.race([ask("parse", { buffer }, [buffer]), late]).finally(() => clearTimeout(timer));
  performance.measure("pe:pyodide-parse", { start, end: performance.now(), detail: { workerMs: reply.ms, bytes } });
  return reply.value;
}
