// POST /api/v1/run and what its answer means to a person: the state line and the figures.

const API_BASE = document.querySelector('meta[name="pe-api-base"]')?.content ?? "";

/** {state, message, result?}: `state` is one of ok, cached, exit, timeout, error, rate_limited, busy. */
export async function run(spec) {
  let response;
  try {
    response = await fetch(`${API_BASE}/api/v1/run`, {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify(spec),
    });
  } catch (error) {
    return { state: "error", message: `Cannot reach the service: ${error.message}` };
  }
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
  return { state: resultState(body), message: resultMessage(body), result: body };
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
