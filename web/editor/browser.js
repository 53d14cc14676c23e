// The image file browser: the selected image's files as a tree (ARIA tree: arrow keys, Home/End,
// Enter/Space), read by `wire`'s erofs reader in the Pyodide worker over HTTP Range requests on
// GET /api/v1/images/<digest>.erofs, so only the blocks a listing or a file touches are downloaded.
// An opened file is shown with the viewers' renderFile.
import { ask, pyodideState } from "../pyodide/client.js";
import { API_BASE } from "./run.js";
import { renderFile } from "../viewers/outputs.js";

const VIEW_LIMIT = 1 << 20; // the most bytes of one file read for viewing

function size(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  const units = ["KiB", "MiB", "GiB"];
  let value = bytes / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}

function element(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}

export class ImageBrowser {
  /** `panel`: the <details> holding `tree` (a role=tree list), `view` (the opened file), `status`. */
  constructor({ panel, tree, view, status, form, path }) {
    Object.assign(this, { panel, tree, view, status, form, path });
    this.digests = null; // catalogue id -> digest, from GET /api/v1/catalog
    this.imageId = null;
    this.shown = null; // the image the tree shows
    this.loading = null; // its load, while and after it runs
    this.image = null; // its URL
    panel.addEventListener("toggle", () => panel.open && this.load());
    tree.addEventListener("click", (event) => {
      const item = event.target.closest("[role=treeitem]");
      if (item) this.activate(item);
    });
    tree.addEventListener("keydown", (event) => this.key(event));
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.reveal(path.value);
    });
  }

  /** The picker chose `imageId`: the tree follows when the panel is open (else when it opens). */
  select(imageId) {
    this.imageId = imageId;
    if (this.panel.open) this.load();
  }

  say(message, fetched) {
    this.status.textContent = message;
    if (fetched) Object.assign(this.status.dataset, { fetched: fetched.fetched, size: fetched.size });
  }

  async url(imageId) {
    if (!this.digests) {
      const response = await fetch(`${API_BASE}/api/v1/catalog`);
      if (!response.ok) throw new Error(`the catalogue: HTTP ${response.status}`);
      const { images } = await response.json();
      this.digests = new Map(images.map((image) => [image.id, image.digest]));
    }
    const digest = this.digests.get(imageId);
    if (!digest) throw new Error(`${imageId} is not built on this service yet`);
    return new URL(`${API_BASE}/api/v1/images/${digest}.erofs`, document.baseURI).href;
  }

  /** Show the selected image's root (once per image; callers during the load share it). */
  load() {
    if (this.shown !== this.imageId) {
      this.shown = this.imageId;
      this.loading = this.loadRoot();
    }
    return this.loading;
  }

  async loadRoot() {
    const imageId = this.imageId;
    this.tree.replaceChildren();
    this.view.replaceChildren();
    delete this.status.dataset.fetched;
    const pyodide = pyodideState();
    if (pyodide.state === "failed") {
      this.shown = null;
      return this.say(`Browsing the image needs Python (Pyodide), which could not load: ${pyodide.failure}`);
    }
    if (pyodide.state === "loading") this.say("Loading Python (Pyodide) to read the image…");
    try {
      const url = await this.url(imageId);
      if (this.shown !== imageId) return; // another image was picked meanwhile
      this.image = url;
      const root = this.item({ name: "/", kind: "dir", size: 0 }, "");
      this.tree.append(root);
      root.tabIndex = 0;
      await this.expand(root);
    } catch (error) {
      if (this.shown !== imageId) return;
      this.shown = null;
      this.say(`Cannot read the image's files: ${error.message}`);
    }
  }

  item(entry, parent) {
    const path = parent === "" ? "/" : `${parent === "/" ? "" : parent}/${entry.name}`;
    const label = entry.target === undefined ? entry.name : `${entry.name} → ${entry.target}`;
    const sizeText = entry.kind === "dir" ? "" : size(entry.size);
    const row = element(
      "span", { className: "row-line" },
      element("span", { className: "name", textContent: label }),
      element("span", { className: "size", textContent: sizeText }),
    );
    const item = element("li", { tabIndex: -1 }, row);
    item.setAttribute("role", "treeitem");
    item.setAttribute("aria-label", entry.kind === "dir" ? `${label}, folder` : `${label}, ${sizeText}`);
    Object.assign(item.dataset, { path, kind: entry.kind });
    if (entry.kind === "dir") item.setAttribute("aria-expanded", "false");
    return item;
  }

  /** Show a folder's entries, listed once (callers during the listing share it). */
  expand(item) {
    item.setAttribute("aria-expanded", "true");
    const group = item.querySelector(":scope > [role=group]");
    if (group) group.hidden = false;
    item.listing ??= this.list(item);
    return item.listing;
  }

  async list(item) {
    const group = element("ul");
    group.setAttribute("role", "group");
    item.append(group);
    item.setAttribute("aria-busy", "true");
    try {
      const reply = await ask("list", { url: this.image, path: item.dataset.path });
      group.append(...reply.value.map((entry) => this.item(entry, item.dataset.path)));
      if (!reply.value.length) group.append(element("li", { className: "hint", textContent: "(empty)" }));
      this.say(this.readSoFar(reply), reply);
    } catch (error) {
      const message = `Cannot list ${item.dataset.path}: ${error.message}`;
      group.append(element("li", { className: "hint", textContent: message }));
      this.say(message);
    } finally {
      item.removeAttribute("aria-busy");
    }
  }

  collapse(item) {
    item.setAttribute("aria-expanded", "false");
    const group = item.querySelector(":scope > [role=group]");
    if (group) group.hidden = true;
  }

  readSoFar(reply) {
    return `Read ${size(reply.fetched)} of the ${size(reply.size ?? 0)} image by HTTP Range requests.`;
  }

  async activate(item) {
    this.focus(item);
    if (item.dataset.kind === "dir") {
      if (item.getAttribute("aria-expanded") === "true") this.collapse(item);
      else await this.expand(item);
      return;
    }
    await this.open(item.dataset.path);
  }

  async open(path) {
    this.view.replaceChildren(element("p", { className: "hint", textContent: `Reading ${path}…` }));
    delete this.view.dataset.path;
    try {
      const reply = await ask("read", { url: this.image, path, limit: VIEW_LIMIT });
      const file = reply.value;
      const note = file.truncated ? ` (the first ${size(file.data.length)})` : "";
      const title = element("span", { className: "title", textContent: `${file.path} · ${file.mime} · ${size(file.size)}${note}` });
      const controls = element("span", { className: "controls" });
      const body = element("div");
      this.view.replaceChildren(element("h3", {}, title, controls), body);
      this.view.dataset.path = file.path;
      // Not `truncated`: to the viewers that means the program's output was cut; the title says it here.
      renderFile(body, { ...file, truncated: false }, { controls });
      this.say(this.readSoFar(reply), reply);
    } catch (error) {
      this.view.replaceChildren(element("p", { className: "hint", textContent: `Cannot open ${path}: ${error.message}` }));
    }
  }

  /** Expand the folders down to `path` and focus it (a file is opened; where the path goes missing,
   * the last folder found is focused). */
  async reveal(path) {
    await this.load();
    let item = this.tree.querySelector("[role=treeitem]");
    if (!item) return;
    for (const name of path.split("/").filter(Boolean)) {
      const next = item.dataset.kind === "dir" ? await this.child(item, name) : null;
      if (!next) {
        this.say(`No ${path} in this image.`);
        break;
      }
      item = next;
    }
    this.focus(item);
    if (item.dataset.kind === "dir") await this.expand(item);
    else await this.open(item.dataset.path);
  }

  async child(folder, name) {
    await this.expand(folder);
    const path = `${folder.dataset.path === "/" ? "" : folder.dataset.path}/${name}`;
    const group = folder.querySelector(":scope > [role=group]");
    return [...group.children].find((child) => child.dataset.path === path);
  }

  visible() {
    return [...this.tree.querySelectorAll("[role=treeitem]")].filter((item) => !item.parentElement.closest("[hidden]"));
  }

  focus(item) {
    for (const other of this.tree.querySelectorAll("[role=treeitem][tabindex='0']")) other.tabIndex = -1;
    item.tabIndex = 0;
    item.focus();
  }

  key(event) {
    const item = event.target.closest("[role=treeitem]");
    if (!item) return;
    const items = this.visible();
    const at = items.indexOf(item);
    const expanded = item.getAttribute("aria-expanded");
    const moves = {
      ArrowDown: () => items[at + 1],
      ArrowUp: () => items[at - 1],
      Home: () => items[0],
      End: () => items[items.length - 1],
      ArrowRight: () => {
        if (expanded === "false") this.expand(item);
        else if (expanded === "true") return item.querySelector("[role=treeitem]");
      },
      ArrowLeft: () => {
        if (expanded === "true") this.collapse(item);
        else return item.parentElement.closest("[role=treeitem]");
      },
      Enter: () => void this.activate(item),
      " ": () => void this.activate(item),
    };
    if (!(event.key in moves)) return;
    event.preventDefault();
    const next = moves[event.key]();
    if (next) this.focus(next);
  }
}
