// ANSI escape sequences in program output: SGR colours (16, 256 and 24-bit), bold, dim, italic,
// underline, inverse and reset become styles of runs of text; every other escape is dropped.
//
// A text is indexed once into rows (its lines, the longer ones cut into pieces of `wrap`
// characters) without parsing them; a row is parsed when it is drawn. The style in force at the
// start of each row is found by a walk over the escapes from the last row whose style is known, so
// drawing the rows on screen costs the same for 100 rows of output or 100 000.

// CSI (ESC [ params final), OSC (ESC ] ... BEL or ST) and two-character escapes.
const ESCAPE = /\x1b(?:\[([0-9;:?<=>]*)[ -/]*([@-~])|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])/g;
const PLAIN = Object.freeze({});

/** `style` changed by the SGR parameters `params` ("1;31", "38;5;208", "38;2;255;0;0", ""). */
export function applySgr(style, params) {
  const codes = params === "" ? [0] : params.split(/[;:]/).map((code) => Number(code) || 0);
  const next = { ...style };
  for (let i = 0; i < codes.length; i += 1) {
    const code = codes[i];
    if (code === 0) for (const key of Object.keys(next)) delete next[key];
    else if (code === 1) next.bold = true;
    else if (code === 2) next.dim = true;
    else if (code === 3) next.italic = true;
    else if (code === 4) next.underline = true;
    else if (code === 7) next.inverse = true;
    else if (code === 22) {
      delete next.bold;
      delete next.dim;
    } else if (code === 23) delete next.italic;
    else if (code === 24) delete next.underline;
    else if (code === 27) delete next.inverse;
    else if (code >= 30 && code <= 37) next.fg = code - 30;
    else if (code >= 90 && code <= 97) next.fg = code - 90 + 8;
    else if (code === 39) delete next.fg;
    else if (code >= 40 && code <= 47) next.bg = code - 40;
    else if (code >= 100 && code <= 107) next.bg = code - 100 + 8;
    else if (code === 49) delete next.bg;
    else if (code === 38 || code === 48) {
      const key = code === 38 ? "fg" : "bg";
      if (codes[i + 1] === 5) {
        next[key] = codes[i + 2] & 255;
        i += 2;
      } else if (codes[i + 1] === 2) {
        next[key] = "#" + codes.slice(i + 2, i + 5).map((c) => (c & 255).toString(16).padStart(2, "0")).join("");
        i += 4;
      }
    }
  }
  return Object.keys(next).length ? Object.freeze(next) : PLAIN;
}

export class AnsiText {
  /** Index `text` into rows of at most `wrap` characters (escapes included). */
  constructor(text, wrap = Infinity) {
    this.text = text;
    this.escapes = text.includes("\x1b");
    const starts = [];
    const ends = [];
    const last = text.endsWith("\n") ? text.length - 1 : text.length; // no empty row after a final newline
    for (let start = 0; start <= last; ) {
      let end = text.indexOf("\n", start);
      if (end === -1) end = text.length;
      const next = end + 1;
      if (text[end - 1] === "\r") end -= 1;
      for (let piece = start; ; ) {
        const cut = end - piece > wrap ? this.#cutAfter(piece + wrap) : end;
        starts.push(piece);
        ends.push(cut);
        if (cut >= end) break;
        piece = cut;
      }
      start = next;
    }
    this.starts = Int32Array.from(starts);
    this.ends = Int32Array.from(ends);
    this.count = starts.length;
    this.styles = [PLAIN]; // the style at the start of rows 0 … styles.length - 1
    this.transitions = new Map(); // style → Map(SGR parameters → style), so each change is parsed once
  }

  /** `at`, or the end of an escape sequence that `at` falls inside. */
  #cutAfter(at) {
    const escape = this.text.lastIndexOf("\x1b", at - 1);
    if (escape === -1 || at - escape > 64) return at;
    ESCAPE.lastIndex = escape;
    const match = ESCAPE.exec(this.text);
    return match && match.index === escape && ESCAPE.lastIndex > at ? ESCAPE.lastIndex : at;
  }

  #next(style, params) {
    let byParams = this.transitions.get(style);
    if (!byParams) this.transitions.set(style, (byParams = new Map()));
    let next = byParams.get(params);
    if (next === undefined) {
      next = applySgr(style, params);
      byParams.set(params, next);
    }
    return next;
  }

  /** Row `index` as runs [text, style]; `onRun` is called for each run, and the style at its end returned. */
  #walk(index, style, onRun) {
    const { text } = this;
    const end = this.ends[index];
    let at = this.starts[index];
    ESCAPE.lastIndex = at;
    for (let match = ESCAPE.exec(text); match && match.index < end; match = ESCAPE.exec(text)) {
      if (onRun && match.index > at) onRun(text.slice(at, match.index), style);
      if (match[2] === "m") style = this.#next(style, match[1]);
      at = ESCAPE.lastIndex;
    }
    if (onRun && at < end) onRun(text.slice(at, end), style);
    return style;
  }

  /** The style at the start of row `index`, walking the rows from the last one known. */
  styleAt(index) {
    if (!this.escapes) return PLAIN;
    while (this.styles.length <= index) {
      const row = this.styles.length - 1;
      this.styles.push(this.#walk(row, this.styles[row], null));
    }
    return this.styles[index];
  }

  /** Learn the styles of up to `rows` more rows (for work in idle moments); false when all are known. */
  learn(rows) {
    if (!this.escapes || this.styles.length >= this.count) return false;
    this.styleAt(Math.min(this.count - 1, this.styles.length - 1 + rows));
    return this.styles.length < this.count;
  }

  /** A node for row `index`: text nodes, and spans for styled runs (styles, never markup). */
  row(index, tag = "div") {
    const node = document.createElement(tag);
    node.className = "line";
    const style = this.styleAt(index);
    if (!this.escapes) {
      node.textContent = this.text.slice(this.starts[index], this.ends[index]);
      return node;
    }
    this.#walk(index, style, (text, runStyle) => {
      if (runStyle === PLAIN) return node.append(text);
      const span = document.createElement("span");
      span.textContent = text;
      styleSpan(span, runStyle);
      node.append(span);
    });
    return node;
  }
}

/** The CSS colour of a palette index 16-255 (6×6×6 cube, then 24 greys) or a CSS colour string. */
function cssColour(colour) {
  if (typeof colour === "string") return colour;
  if (colour >= 232) {
    const grey = 8 + (colour - 232) * 10;
    return `rgb(${grey}, ${grey}, ${grey})`;
  }
  const cube = colour - 16;
  const level = (n) => (n === 0 ? 0 : 55 + n * 40);
  return `rgb(${level(Math.floor(cube / 36))}, ${level(Math.floor(cube / 6) % 6)}, ${level(cube % 6)})`;
}

function styleSpan(span, style) {
  const classes = [];
  for (const flag of ["bold", "dim", "italic", "underline"]) if (style[flag]) classes.push(`ansi-${flag}`);
  let { fg, bg } = style;
  if (style.inverse) [fg, bg] = [bg ?? "var(--bg)", fg ?? "var(--fg)"];
  for (const [key, colour] of [["fg", fg], ["bg", bg]]) {
    if (colour === undefined) continue;
    if (typeof colour === "number" && colour < 16) classes.push(`ansi-${key}-${colour}`);
    else span.style[key === "fg" ? "color" : "backgroundColor"] = cssColour(colour);
  }
  span.className = classes.join(" ");
}
