"""`pe bench web`: the playground's own figures in Debian's Chromium against a `pe serve` child
(docs/performance.md, "The web page and its Pyodide parser").

- **parse**: a 2 MiB run answer of 100 files (application/x-cpio) parsed by `wire` in the page's Pyodide
  worker (assets/pyodide/worker.js, the file the playground starts) against the same call
  (`pe_browser.parse_result`) in this CPython, rounds alternating;
- **cached run**: the Run click to the output painted (a frame after the run button is enabled again)
  for a run the edge answers from its cache, with Pyodide ready (the cpio path);
- **ready**: page load to Pyodide ready (the page's `pe:pyodide-ready` measure), cold (a fresh browser
  context, nothing cached) and warm (a reload in the same context), against loadPyodide of the same
  package in Node (the machine's own speed at that moment);
- **bytes**: the response bytes a fresh context receives for the playground, Pyodide's runtime apart
  from the rest, with gzip and with `Accept-Encoding: identity`.
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import os
import random
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from pe.child import NO_RATE_LIMITS, ServeProcess, start_serve
from pe.settings import Settings
from web.assets import node_modules
from wire.result import FileInfo, Result, RunOutput, Status, StreamInfo, pack_output
from wire.spec import DEFAULT_LIMITS

CHROMIUM = "/usr/bin/chromium"
# As in tests/web/test_playground.py: headless, no sandbox (root), nothing fetched in the background.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
PE_BROWSER = Path(__file__).resolve().parents[1] / "web" / "pyodide" / "pe_browser.py"
READY_TIMEOUT_MS = 120_000
# The baseline for "ready": loadPyodide of the same npm package in Node, in the same run.
NODE_READY = """
const dir = process.env.PYODIDE_DIR;
const { loadPyodide } = await import(`${dir}/pyodide.mjs`);
const start = performance.now();
await loadPyodide({ indexURL: `${dir}/` });
console.log(performance.now() - start);
"""

# In the page: start the site's Pyodide worker, and parse `window.archive` once per call.
START_WORKER = """async (encoded) => {
  window.archive = Uint8Array.from(atob(encoded), (c) => c.charCodeAt(0));
  window.parser = new Worker(new URL("assets/pyodide/worker.js", document.baseURI), { type: "module" });
  window.replies = new Map();
  await new Promise((resolve, reject) => {
    parser.onmessage = ({ data }) => {
      if (data.op === "ready") resolve();
      else if (data.op === "failed") reject(new Error(data.error));
      else replies.get(data.id)(data);
    };
  });
}"""
PARSE_ONCE = """async (id) => {
  const buffer = archive.slice().buffer;
  const start = performance.now();
  const reply = await new Promise((resolve) => {
    replies.set(id, resolve);
    parser.postMessage({ id, op: "parse", buffer }, [buffer]);
  });
  if (!reply.ok) throw new Error(reply.error);
  return { total: performance.now() - start, worker: reply.ms, files: reply.value.files.length };
}"""
# In the playground: click Run, wait for the run button to come back, then for the next frame's paint.
CLICK_TO_PAINT = """async () => {
  const run = document.getElementById("run");
  const done = new Promise((resolve) => {
    new MutationObserver((changes, observer) => {
      if (!run.disabled) { observer.disconnect(); resolve(); }
    }).observe(run, { attributes: true, attributeFilter: ["disabled"] });
  });
  const start = performance.now();
  run.click();
  await done;
  await new Promise((resolve) => requestAnimationFrame(() => setTimeout(resolve, 0)));
  return { ms: performance.now() - start, state: document.getElementById("status").dataset.state };
}"""
# Page load to ready, and within it the worker's own time and loadPyodide's (client.js's measure).
READY = """() => {
  const ready = performance.getEntriesByName("pe:pyodide-ready")[0];
  return { ms: ready.duration, worker: ready.detail.workerMs, pyodide: ready.detail.pyodideMs };
}"""


def result_archive(files: int = 100, total: int = 2 << 20) -> bytes:
    """A run answer in its cpio form: `files` output files of `total` bytes together, half text."""
    rng = random.Random(8)
    size = total // files
    contents = {}
    for i in range(files):
        text = i % 2 == 0
        data = (b"line of program output %d\n" % i * size)[:size] if text else rng.randbytes(size)
        contents[f"out/file-{i:03d}.{'txt' if text else 'bin'}"] = data
    mimes = {"txt": "text/plain", "bin": "application/octet-stream"}
    infos = [FileInfo(path, len(data), mimes[path[-3:]], False) for path, data in contents.items()]
    result = Result(
        id="ab" * 32,
        image_id="python3",
        image_digest="sha256:" + "cd" * 32,
        status=Status.OK,
        exit_code=0,
        signal=None,
        wall_ms=10.0,
        cpu_ms=8.0,
        max_rss_kib=10_000,
        stdout=StreamInfo(3, False),
        stderr=StreamInfo(0, False),
        files=infos,
        limits=DEFAULT_LIMITS,
        runner="sandbox",
        cached=False,
        message="",
    )
    return pack_output(RunOutput(result, b"ok\n", b"", contents))


def cpython_parser():
    """`parse_result` from the module the worker imports (web/pyodide/pe_browser.py)."""
    spec = importlib.util.spec_from_file_location("pe_browser", PE_BROWSER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.parse_result


def summary(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"{statistics.median(ordered):.1f} / {p95:.1f} ms"


def bench_parse(browser, served: ServeProcess, rounds: int) -> None:
    archive = result_archive()
    parse = cpython_parser()
    page = browser.new_page()
    page.goto(f"{served.url}/api.html")  # a page of the site that starts no worker of its own
    page.evaluate(START_WORKER, base64.b64encode(archive).decode())
    page.evaluate(PARSE_ONCE, 0)  # warm-up on both sides
    parse(archive)
    pyodide_total, pyodide_worker, cpython = [], [], []
    for round_ in range(1, rounds + 1):
        reply = page.evaluate(PARSE_ONCE, round_)
        assert reply["files"] == 100
        pyodide_total.append(reply["total"])
        pyodide_worker.append(reply["worker"])
        start = time.perf_counter()
        parse(archive)
        cpython.append((time.perf_counter() - start) * 1000)
    page.close()
    ratio = statistics.median(pyodide_worker) / statistics.median(cpython)
    print(f"parse of {len(archive) / 2**20:.2f} MiB, 100 files, {rounds} rounds (median / p95):")
    print(f"  CPython {summary(cpython)}; Pyodide in the worker {summary(pyodide_worker)}", end="")
    print(f" ({summary(pyodide_total)} with the hand-over to and from the page); ratio {ratio:.1f}")


def bench_cached_run(browser, served: ServeProcess, runs: int) -> None:
    page = browser.new_page()
    page.goto(f"{served.url}/#image=python3&example=0")
    page.wait_for_selector("body[data-ready=true]")
    page.wait_for_function("document.body.dataset.pyodide === 'ready'", timeout=READY_TIMEOUT_MS)
    first = page.evaluate(CLICK_TO_PAINT)  # the run itself, which fills the cache
    times = []
    for _ in range(runs):
        reply = page.evaluate(CLICK_TO_PAINT)
        assert reply["state"] == "cached", reply
        times.append(reply["ms"])
    parser = page.locator("#status").get_attribute("data-parser")
    page.close()
    print(f"Run click to output painted, cached, {runs} runs (median / p95): {summary(times)}", end="")
    print(f" (parser: {parser}); the first, uncached run {first['ms']:.0f} ms")


def load_once(browser, url: str, headers: dict[str, str]) -> dict:
    """One fresh context: ready (cold), the load event, bytes received by part, the assets' encodings;
    then a reload: ready (warm, from the HTTP cache)."""
    context = browser.new_context(extra_http_headers=headers)
    page = context.new_page()
    finished = []
    page.on("requestfinished", lambda request: finished.append(request))
    page.goto(url)
    page.wait_for_function("document.body.dataset.pyodide === 'ready'", timeout=READY_TIMEOUT_MS)
    figures = {"cold": page.evaluate(READY), "page": 0, "pyodide": 0, "encodings": set()}
    figures["load"] = page.evaluate("performance.getEntriesByType('navigation')[0].loadEventEnd")
    for request in finished:
        sizes = request.sizes()
        part = "pyodide" if "/assets/pyodide/" in request.url else "page"
        figures[part] += sizes["responseBodySize"] + sizes["responseHeadersSize"]
        if "/assets/" in request.url:
            figures["encodings"].add(request.response().headers.get("content-encoding", "identity"))
    page.reload()
    page.wait_for_function("document.body.dataset.pyodide === 'ready'", timeout=READY_TIMEOUT_MS)
    figures["warm"] = page.evaluate(READY)
    context.close()
    return figures


def node_ready_ms(pyodide: Path) -> float:
    command = ["node", "--input-type=module", "-e", NODE_READY]
    environment = {**os.environ, "PYODIDE_DIR": str(pyodide)}
    done = subprocess.run(command, env=environment, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"node could not load Pyodide: {done.stderr}")
    return float(done.stdout)


def bench_ready_and_bytes(browser, served: ServeProcess, rounds: int) -> None:
    pyodide = node_modules(Settings().cache_dir) / "pyodide"
    for encoding in ("gzip", "identity"):
        headers = {"Accept-Encoding": encoding} if encoding == "identity" else {}
        loads, node = [], []
        for _ in range(rounds):  # alternating with the baseline
            loads.append(load_once(browser, f"{served.url}/", headers))
            node.append(node_ready_ms(pyodide))
        median = {key: statistics.median(load[key] for load in loads) for key in ("load", "page", "pyodide")}
        answered = ", ".join(sorted(set().union(*(load["encodings"] for load in loads))))
        print(f"Accept-Encoding {encoding} (assets answered {answered}), {rounds} rounds:")
        print(f"  page load event {median['load']:.0f} ms")
        for kind in ("cold", "warm"):
            ready = {key: [load[kind][key] for load in loads] for key in ("ms", "worker", "pyodide")}
            worker, loading = statistics.median(ready["worker"]), statistics.median(ready["pyodide"])
            print(f"  Pyodide ready, {kind}: {summary(ready['ms'])} after navigation", end="")
            print(f" (medians: the worker alive {worker:.0f} ms, of which loadPyodide {loading:.0f} ms)")
        ratio = statistics.median(load["cold"]["pyodide"] for load in loads) / statistics.median(node)
        print(f"  baseline: loadPyodide in Node {summary(node)}", end="")
        print(f"; Chromium's cold loadPyodide / Node's {ratio:.2f}")
        page_kb, pyodide_kb = median["page"] / 1000, median["pyodide"] / 1000
        print(f"  bytes received: page {page_kb:.0f} kB, Pyodide {pyodide_kb:.0f} kB", end="")
        print(f", together {page_kb + pyodide_kb:.0f} kB")


def bench_web(args: argparse.Namespace) -> int:
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="pe-bench-web-") as scratch:
        served = start_serve(Path(scratch) / "serve.log", *NO_RATE_LIMITS)
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                try:
                    bench_parse(browser, served, args.rounds)
                    bench_cached_run(browser, served, args.runs)
                    bench_ready_and_bytes(browser, served, args.loads)
                finally:
                    browser.close()
        finally:
            served.stop()
    return 0
