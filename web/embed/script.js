// embed.js (docs/embedding.md): `<script src="https://<service>/assets/embed.js"></script>` turns each
// `<pre data-pe-image="python3">…</pre>` of a page into a runnable snippet: the code stays editable in
// place, Run sends it to the service's API (JSON, cross-origin) and the output is shown below it by the
// playground's own viewers (web/viewers/outputs.js: text, images, tables, 3D models, downloads), imported
// from the service's assets with the first run and shown in a shadow root with the site's styles, so
// the page's styles and the viewers' do not mix.
//
// Per block: data-pe-image (the catalogue id), data-pe-file (the file name; default: the image's own
// first default file), data-pe-stdin. The API is the script's own origin, or the script tag's
// data-pe-api. When the service cannot be reached or is busy, the block shows its fallback output —
// a following `<pre data-pe-output>` sibling (hidden until then) or its data-pe-fallback attribute —
// with a note saying so. A classic script (not a module): it needs document.currentScript.
(() => {
  const script = document.currentScript;
  const api = (script.dataset.peApi ?? new URL(script.src).origin).replace(/\/+$/, "");
  const assets = new URL(".", script.src).href; // viewers.js and site.css, built with this script
  const STYLE = `
.pe-snippet { margin: 1em 0; }
.pe-snippet > pre[data-pe-image] { margin: 0; padding: .5em .7em; border: 1px solid #8888; border-radius: 6px; outline: none; }
.pe-snippet > pre[data-pe-image]:focus { box-shadow: inset 0 0 0 2px #0b57d0; }
.pe-snippet .pe-bar { display: flex; gap: .8em; align-items: center; margin: .3em 0; font: 13px system-ui, sans-serif; }
.pe-snippet .pe-bar button { font: inherit; padding: .2em 1em; cursor: pointer; }
.pe-snippet .pe-output pre { margin: .2em 0; padding: .4em .7em; background: #8881; white-space: pre-wrap; word-break: break-word; }
.pe-snippet .pe-note { font: italic 13px system-ui, sans-serif; opacity: .8; margin: .2em 0; }`;
  // The site's colours under the viewers' panels, tables and models, whatever the page's own.
  const SHADOW_STYLE = ":host { color: var(--fg); background: var(--bg); }";
  let catalog = null; // a promise of {id: entry}, asked for once
  let viewers = null; // a promise of web/viewers/outputs.js, imported once

  function images() {
    catalog ??= fetch(`${api}/api/v1/catalog`)
      .then((response) => (response.ok ? response.json() : Promise.reject(new Error(`HTTP ${response.status}`))))
      .then((body) => Object.fromEntries(body.images.map((image) => [image.id, image])))
      .catch((error) => {
        catalog = null; // ask again next time
        throw error;
      });
    return catalog;
  }

  function loadViewers() {
    viewers ??= import(`${assets}viewers.js`).catch((error) => {
      viewers = null; // try again next time
      throw error;
    });
    return viewers;
  }

  function element(tag, className, text = "") {
    const node = document.createElement(tag);
    node.className = className;
    node.textContent = text;
    return node;
  }

  /** One line about a run's result: "exit 0 · 12 ms", or what went wrong. */
  function outcome(result) {
    const ms = `${Math.round(result.wall_ms ?? 0)} ms${result.cached ? ", cached" : ""}`;
    if (result.status === "ok") return `exit 0 · ${ms}`;
    if (result.status === "exit") return `exit ${result.exit_code} · ${ms}`;
    if (result.status === "timeout") return `timed out after ${result.limits?.wall_ms} ms`;
    return `${result.status}${result.message ? `: ${result.message}` : ""} · ${ms}`;
  }

  /** Run a block's code: {answer, entry, renderOutputs}; throws when the service cannot answer (down,
   * busy, not an answer) or its viewers cannot be loaded. */
  async function runCode(pre) {
    const image = pre.dataset.peImage;
    const [entries, { renderOutputs }] = await Promise.all([images(), loadViewers()]);
    const entry = entries[image];
    const file = pre.dataset.peFile ?? Object.keys(entry?.files ?? {})[0] ?? "main";
    const body = { image, files: { [file]: { text: pre.textContent } } };
    if (pre.dataset.peStdin) body.stdin = { text: pre.dataset.peStdin };
    const response = await fetch(`${api}/api/v1/run`, {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify(body),
    });
    const answer = await response.json().catch(() => null);
    if (response.status >= 500 || !answer) throw new Error(answer?.error?.message ?? `HTTP ${response.status}`);
    return { answer, entry, renderOutputs };
  }

  /** A box whose shadow root holds the viewers' output with the site's styles; its `.outputs`. */
  function viewerBox() {
    const box = element("div", "pe-viewers");
    const root = box.attachShadow({ mode: "open" });
    const styles = Object.assign(document.createElement("link"), { rel: "stylesheet", href: `${assets}site.css` });
    root.append(styles, element("style", "", SHADOW_STYLE), element("div", "outputs"));
    return box;
  }

  function showResult(output, shown, { answer, entry, renderOutputs }) {
    if (answer.error) {
      output.replaceChildren(element("p", "pe-note", `Not run: ${answer.error.message}`));
      return;
    }
    output.replaceChildren(element("p", "pe-note", outcome(answer)));
    shown.hidden = false;
    renderOutputs(shown.shadowRoot.querySelector(".outputs"), answer, entry?.view);
  }

  function showFallback(output, fallback, error) {
    const why = `The service could not run this (${error.message})`;
    if (fallback === null) {
      output.replaceChildren(element("p", "pe-note", `${why}, and the page gives no recorded output.`));
      return;
    }
    output.replaceChildren(element("p", "pe-note", `${why}; this is the output recorded with the page:`));
    output.append(element("pre", "pe-fallback", fallback));
  }

  function enhance(pre) {
    const sibling = pre.nextElementSibling?.matches("pre[data-pe-output]") ? pre.nextElementSibling : null;
    sibling?.setAttribute("hidden", "");
    const fallback = sibling?.textContent ?? pre.dataset.peFallback ?? null;
    const box = element("div", "pe-snippet");
    pre.replaceWith(box);
    pre.contentEditable = "plaintext-only";
    pre.spellcheck = false;
    pre.setAttribute("aria-label", `${pre.dataset.peImage} code (editable)`);
    const button = element("button", "pe-run", "Run");
    button.type = "button";
    const status = element("span", "pe-status");
    status.setAttribute("role", "status");
    const output = element("div", "pe-output");
    output.setAttribute("aria-live", "polite");
    const shown = viewerBox();
    shown.hidden = true;
    const bar = element("div", "pe-bar");
    bar.append(button, status);
    box.append(pre, bar, output, shown);
    button.addEventListener("click", async () => {
      button.disabled = true;
      status.textContent = "Running…";
      shown.hidden = true;
      try {
        showResult(output, shown, await runCode(pre));
        box.dataset.state = "done";
      } catch (error) {
        showFallback(output, fallback, error);
        box.dataset.state = "fallback";
      } finally {
        status.textContent = "";
        button.disabled = false;
      }
    });
  }

  function start() {
    const style = document.createElement("style");
    style.textContent = STYLE;
    document.head.append(style);
    document.querySelectorAll("pre[data-pe-image]").forEach(enhance);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
