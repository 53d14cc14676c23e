// POST /api/v1/run and what its answer means to a person: the state line and the figures.
// The run is asked for asynchronously (`Prefer: respond-async`, docs/api.md "Asynchronous runs"): a run
// that is not done within WAIT is answered 202 with its state (queued with its place, or running), and
// its GET is long-polled until the result is there; every 202 is shown through `onProgress`.
// With the Pyodide worker ready, the answer is asked for as application/x-cpio and parsed by `wire` in
// the worker; otherwise (still loading, failed, or a parse that failed) as JSON. Either way every stream
// and file of the result carries its bytes as `data` (a Uint8Array). Error answers are JSON either way.
import { parseResult, pyodideState } from "../pyodide/client.js";

export const API_BASE = document.querySelector('meta[name="pe-api-base"]')?.content ?? "";
const CPIO = "application/x-cpio";
// Quick runs are answered by the POST itself (one round trip); longer ones by long polls of POLL.
const WAIT = "respond-async, wait=0.3";
const POLL = "wait=20";

/** The final answer to `spec` (asked for as `accept`): the POST's, or after its 202 the last of the
 * long polls of the run's GET, each 202 before it passed to `onProgress` as {state, message}.
 * `waited` says whether there was a 202: then the run ran for this page, though its GET is served
 * from the store (`"cached": true`). */
async function settle(spec, accept, onProgress) {
  let response = await fetch(`${API_BASE}/api/v1/run`, {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: accept, Prefer: WAIT },
    body: JSON.stringify(spec),
  });
  let waited = false;
  while (response.status === 202) {
    waited = true;
    const progress = await response.json();
    onProgress(progressOf(progress));
    const url = `${API_BASE}/api/v1/runs/${encodeURIComponent(progress.id)}`;
    response = await fetch(url, { headers: { Accept: accept, Prefer: POLL } });
  }
  return { response, waited };
}

/** A 202's body ({id, state, position}) as the state line shows it. */
function progressOf({ state, position }) {
  if (state === "queued") return { state, message: position ? `Queued (${position} ahead)` : "Queued (next in line)" };
  return { state: "running", message: "Running…" };
}

/** {state, message, parser?, result?}: `state` is one of ok, cached, exit, timeout, error, rate_limited,
 * busy; `parser` says who read the answer: "pyodide" (the cpio form) or "json". Until then,
 * `onProgress` gets {state: "queued" | "running", message} whenever the run's state is known to change. */
export async function run(spec, onProgress = () => {}) {
  let settled;
  try {
    if (pyodideState().state === "ready") {
      settled = await settle(spec, CPIO, onProgress);
      const { response, waited } = settled;
      if (response.ok && response.headers.get("Content-Type")?.startsWith(CPIO)) {
        try {
          return answer(ranFor(await parseResult(await response.arrayBuffer()), waited), "pyodide");
        } catch (error) {
          console.warn("the cpio answer could not be parsed in Pyodide; asking for JSON:", error);
          settled = null;
        }
      }
    }
    settled ??= await settle(spec, "application/json", onProgress);
  } catch (error) {
    return { state: "error", message: `Cannot reach the service: ${error.message}` };
  }
  return interpret(settled.response, settled.waited);
}

/** `result`, not "cached" when this page `waited` for it: it ran for this page. */
function ranFor(result, waited) {
  if (waited) result.cached = false;
  return result;
}

/** The stored result of run `id` (`GET /api/v1/runs/<id>`, as JSON), answered as `run` answers, or
 * null when the edge does not have it (evicted, or never run). */
export async function storedRun(id) {
  let response;
  try {
    response = await fetch(`${API_BASE}/api/v1/runs/${encodeURIComponent(id)}`, { headers: { Accept: "application/json" } });
  } catch (error) {
    return { state: "error", message: `Cannot reach the service: ${error.message}` };
  }
  return response.status === 404 ? null : interpret(response);
}

/** A JSON answer of the API (a result, or an error with its status) as {state, message, result?};
 * `waited` as `settle` says. */
async function interpret(response, waited = false) {
  const body = await response.json().catch(() => null);
  const retry = response.headers.get("Retry-After");
  const detail = body?.error?.message ?? `HTTP ${response.status}`;
  if (response.status === 429) {
    return { state: "rate_limited", message: `Rate limited (429): ${detail}` };
  }
  if (response.status === 503) {
    const when = retry && !/try again/i.test(detail) ? `; try again in ${retry} s` : "";
    return { state: "busy", message: `Busy (503): ${detail}${when}` };
  }
  if (!response.ok || !body) return { state: "error", message: `Error ${response.status}: ${detail}` };
  return answer(ranFor(withData(body), waited), "json");
}

function answer(result, parser) {
  return { state: resultState(result), message: resultMessage(result), parser, result };
}

/** The JSON answer with each stream's and file's `data` decoded from its `text` or `base64`. */
function withData(result) {
  for (const item of [result.stdout, result.stderr, ...(result.files ?? [])]) {
    if (item) item.data = bytesOf(item);
  }
  return result;
}

function bytesOf(content) {
  if (typeof content.text === "string") return new TextEncoder().encode(content.text);
  const binary = atob(content.base64 ?? "");
  return Uint8Array.from(binary, (c) => c.charCodeAt(0));
}

function resultState(result) {
  if (result.status === "ok") return result.cached ? "cached" : "ok";
  if (result.status === "timeout") return "timeout";
  if (result.status === "error") return "error";
  return "exit";
}

function resultMessage(result) {
  const cached = result.cached ? " (cached)" : "";
  switch (result.status) {
    case "ok": return `Done${cached}`;
    case "exit": return `Exited with code ${result.exit_code}${cached}`;
    case "signal": return `Killed by signal ${result.signal}${cached}`;
    case "timeout": return `Timed out after ${result.limits?.wall_ms ?? "?"} ms${cached}`;
    case "oom": return `Out of memory (limit ${result.limits?.memory_mib ?? "?"} MiB)${cached}`;
    case "output_limit": return `Output limit reached${cached}`;
    default: return `Failed: ${result.message || result.status}`;
  }
}

/** "wall 12 ms · CPU 8 ms · memory 9.1 MiB · limits 5000 ms, 256 MiB". */
export function figures(result) {
  const ms = (value) => `${Math.round(value ?? 0)} ms`;
  const parts = [`wall ${ms(result.wall_ms)}`, `CPU ${ms(result.cpu_ms)}`, `memory ${(result.max_rss_kib / 1024).toFixed(1)} MiB`];
  if (result.limits) parts.push(`limits ${result.limits.wall_ms} ms, ${result.limits.memory_mib} MiB`);
  return parts.join(" · ");
}
