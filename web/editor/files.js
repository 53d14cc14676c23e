// The file tabs and the CodeMirror editor: one EditorState per file, the view shows the selected one.
import { Compartment, EditorState, Prec } from "@codemirror/state";
import { EditorView, keymap } from "@codemirror/view";
import { basicSetup } from "codemirror";
import { indentWithTab } from "@codemirror/commands";

// Language modes are separate chunks, loaded when a file needs one (they are most of the bundle).
const python = () => import("@codemirror/lang-python").then((m) => m.python());
const cpp = () => import("@codemirror/lang-cpp").then((m) => m.cpp());
const javascript = (options) => () => import("@codemirror/lang-javascript").then((m) => m.javascript(options));
const markdown = () => import("@codemirror/lang-markdown").then((m) => m.markdown());
const LANGUAGES = {
  py: python, c: cpp, h: cpp, cc: cpp, cpp: cpp, hpp: cpp, cxx: cpp,
  js: javascript(), mjs: javascript(), json: javascript(), ts: javascript({ typescript: true }),
  md: markdown, markdown: markdown,
};

function loadLanguage(path) {
  return LANGUAGES[path.split(".").pop().toLowerCase()]?.() ?? null;
}

// A binary file (uploaded) is kept as base64 and shown read-only as a one-line description.
function describe(base64) {
  const bytes = Math.floor((base64.length * 3) / 4) - (base64.match(/=*$/)[0].length);
  return `(binary file, ${bytes} bytes: sent as it is, not editable here)`;
}

export class Files {
  /** `onChange()` is called after any edit, so the caller can save the session. With `readOnly`
   * (the embed page's `readonly`), files can be viewed and switched, not edited. */
  constructor(tabs, parent, onChange, extraKeys, { readOnly = false } = {}) {
    this.tabs = tabs;
    this.onChange = onChange;
    this.readOnly = readOnly;
    this.states = new Map();
    this.binary = new Map(); // path -> base64
    this.current = null;
    this.language = new Compartment();
    this.extensions = [
      basicSetup,
      Prec.highest(keymap.of(extraKeys)), // before basicSetup's own Mod-Enter (insert a blank line)
      keymap.of([indentWithTab]),
      EditorView.updateListener.of((update) => update.docChanged && this.onChange()),
      EditorView.contentAttributes.of({ "aria-label": "File contents" }),
      EditorState.readOnly.of(readOnly),
    ];
    this.view = new EditorView({ parent, state: EditorState.create({ extensions: this.extensions }) });
  }

  /** Replace every file with `files` ({path: text or {base64}}) and select `selected` (else the first). */
  load(files, selected) {
    this.current = null;  // else select() would keep the editor's text as the new file of the same name
    this.binary = new Map();
    this.states = new Map();
    for (const [path, content] of Object.entries(files)) this.#put(path, content);
    this.select(this.states.has(selected) ? selected : this.states.keys().next().value ?? null);
  }

  /** {path: text, or {base64} for a binary file} of every file. */
  contents() {
    this.#keep();
    return Object.fromEntries(
      [...this.states].map(([path, state]) => [path, this.binary.has(path) ? { base64: this.binary.get(path) } : state.doc.toString()]),
    );
  }

  select(path) {
    this.#keep();
    this.current = path;
    const state = path === null ? EditorState.create({ extensions: this.extensions }) : this.states.get(path);
    this.view.setState(state);
    this.view.contentDOM.setAttribute("contenteditable", String(!this.readOnly && path !== null && !this.binary.has(path)));
    this.#renderTabs();
  }

  /** Add (or replace, for an upload) `path` with `content`: text, or {base64}. */
  add(path, content = "", replace = false) {
    this.#keep();
    if (replace || !this.states.has(path)) {
      this.binary.delete(path);
      this.#put(path, content);
    }
    this.current = null;
    this.select(path);
    this.onChange();
  }

  rename(from, to) {
    this.#keep();
    if (!this.states.has(from) || this.states.has(to)) return false;
    const content = this.contents()[from];
    this.binary.delete(from);
    this.states.delete(from);
    this.#put(to, content);
    this.current = null;
    this.select(to);
    this.onChange();
    return true;
  }

  remove(path) {
    this.#keep();
    this.states.delete(path);
    this.binary.delete(path);
    this.current = null;
    this.select(this.states.keys().next().value ?? null);
    this.onChange();
  }

  focus() {
    this.view.focus();
  }

  #put(path, content) {
    if (typeof content === "string") {
      this.states.set(path, this.#state(path, content));
      return;
    }
    this.binary.set(path, content.base64);
    const extensions = [...this.extensions, EditorState.readOnly.of(true), EditorView.editable.of(false)];
    this.states.set(path, EditorState.create({ doc: describe(content.base64), extensions }));
  }

  #state(path, text) {
    const state = EditorState.create({ doc: text, extensions: [...this.extensions, this.language.of([])] });
    loadLanguage(path)?.then((language) => this.#setLanguage(path, language)).catch(() => {});
    return state;
  }

  // Give `path` its language once loaded (if the file still exists: it may be renamed or deleted).
  #setLanguage(path, language) {
    this.#keep();
    const state = this.states.get(path);
    if (!state) return;
    const effects = this.language.reconfigure(language);
    if (path === this.current) this.view.dispatch({ effects });
    else this.states.set(path, state.update({ effects }).state);
  }

  #keep() {
    if (this.current !== null && this.states.has(this.current)) this.states.set(this.current, this.view.state);
  }

  #renderTabs() {
    this.tabs.replaceChildren();
    for (const path of this.states.keys()) {
      const tab = document.createElement("button");
      tab.type = "button";
      tab.role = "tab";
      tab.textContent = path;
      tab.setAttribute("aria-selected", String(path === this.current));
      tab.tabIndex = path === this.current ? 0 : -1;
      tab.addEventListener("click", () => this.select(path));
      tab.addEventListener("keydown", (event) => this.#arrows(event, path));
      this.tabs.append(tab);
    }
  }

  // Left/Right move between tabs (the WAI-ARIA tabs pattern); Enter/Space select, as for any button.
  #arrows(event, path) {
    const paths = [...this.states.keys()];
    const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
    if (!step) return;
    event.preventDefault();
    const next = paths[(paths.indexOf(path) + step + paths.length) % paths.length];
    this.select(next);
    this.tabs.querySelector("[aria-selected=true]")?.focus();
  }
}
