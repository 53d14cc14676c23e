// ANSI escape sequences in program output: SGR colours (16, 256 and 24-bit), bold, dim, italic,
// underline, inverse and reset become styles of runs of text; every other escape is dropped.

// CSI (ESC [ params final), OSC (ESC ] ... BEL or ST) and two-character escapes.
const ESCAPE = /\x1b(?:\[([0-9;:?<=>]*)[ -/]*([@-~])|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])/g;
const PLAIN = Object.freeze({});

/**
 * The lines of `text`, each a list of runs `[text, style]`. Styles are shared frozen objects:
 * {fg, bg, bold, dim, italic, underline, inverse}, colours as a 0-255 palette index or "#rrggbb".
 * Lines longer than `wrap` characters are cut into several.
 */
export function parseAnsi(text, wrap = Infinity) {
  const lines = [];
  let line = [];
  let length = 0;
  let style = PLAIN;
  const add = (piece) => {
    while (piece.length) {
      const room = wrap - length;
      const part = piece.length > room ? piece.slice(0, room) : piece;
      if (part.length) line.push([part, style]);
      length += part.length;
      piece = piece.slice(part.length);
      if (length >= wrap && piece.length) {
        lines.push(line);
        line = [];
        length = 0;
      }
    }
  };
  const addText = (chunk) => {
    const parts = chunk.split("\n");
    parts.forEach((part, index) => {
      if (index > 0) {
        lines.push(line);
        line = [];
        length = 0;
      }
      add(part.endsWith("\r") ? part.slice(0, -1) : part);
    });
  };
  let at = 0;
  ESCAPE.lastIndex = 0;
  for (let match = ESCAPE.exec(text); match; match = ESCAPE.exec(text)) {
    if (match.index > at) addText(text.slice(at, match.index));
    at = ESCAPE.lastIndex;
    if (match[2] === "m") style = applySgr(style, match[1]);
  }
  if (at < text.length) addText(text.slice(at));
  if (line.length || !text.endsWith("\n")) lines.push(line);
  return lines;
}

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
    }
    else if (code === 23) delete next.italic;
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

/** A node for one line of runs: text nodes, and spans for styled runs (styles, never markup). */
export function lineNode(runs, tag = "div") {
  const node = document.createElement(tag);
  node.className = "row";
  for (const [text, style] of runs) {
    if (style === PLAIN) {
      node.append(text);
      continue;
    }
    const span = document.createElement("span");
    span.textContent = text;
    styleSpan(span, style);
    node.append(span);
  }
  return node;
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
