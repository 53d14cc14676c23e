// POST /api/v1/run and what its answer means to a person: the state line and the figures.
// With the Pyodide worker ready, the answer is asked for as application/x-cpio and parsed by `wire` in
// the worker; otherwise (still loading, failed, or a parse that failed) as JSON. Either way every stream
// and file of the result carries its bytes as `data` (a Uint8Array). Error answers are JSON either way.
import { parseResult, pyodideState } from "../pyodide/client.js";

export const API_BASE = document.querySelector('meta[name="pe-api-base"]')?.content ?? "";
const CPIO = "application/x-cpio";

function post(spec, accept) {
  return fetch(`${API_BASE}/api/v1/run`, {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: accept },
    body: JSON.stringify(spec),
  });
}

/** {state, message, parser?, result?}: `state` is one of ok, cached, exit, timeout, error, rate_limited,
 * busy; `parser` says who read the answer: "pyodide" (the cpio form) or "json". */
export async function run(spec) {
  let response;
  try {
    if (pyodideState().state === "ready") {
      response = await post(spec, CPIO);
      if (response.ok && response.headers.get("Content-Type")?.startsWith(CPIO)) {
        try {
          return answer(await parseResult(await response.arrayBuffer()), "pyodide");
        } catch (error) {
          console.warn("the cpio answer could not be parsed in Pyodide; asking for JSON:", error);
          response = null;
        }
      }
    }
    response ??= await post(spec, "application/json");
  } catch (error) {
    return { state: "error", message: `Cannot reach the service: ${error.message}` };
  }
  return interpret(response);
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

/** A JSON answer of the API (a result, or an error with its status) as {state, message, result?}. */
async function interpret(response) {
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
  return answer(withData(body), "json");
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
