// Text outputs with their ANSI colours. Small ones are one <pre> that wraps long lines; large ones
// (over SMALL_LINES lines or SMALL_CHARS characters) a virtual list of unwrapped rows, so 100 000
// lines show at once and scroll smoothly.
import { element } from "./bytes.js";
import { lineNode, parseAnsi } from "./ansi.js";
import { virtualList } from "./virtual.js";

const SMALL_LINES = 2000;
const SMALL_CHARS = 200_000;
const WRAP = 2000; // a large output's longer lines are cut into rows of this many characters

/** A view of `text` (already decoded). */
export function textView(text, label) {
  if (text === "") return element("p", "note", "(empty)");
  const small = text.length <= SMALL_CHARS;
  const lines = parseAnsi(text, small ? Infinity : WRAP);
  if (small && lines.length <= SMALL_LINES) {
    const pre = element("pre", "text");
    for (const runs of lines) pre.append(lineNode(runs, "span"), "\n");
    pre.lastChild.remove(); // no newline after the last line
    return pre;
  }
  const box = virtualList(lines.length, (index) => lineNode(lines[index]), label);
  box.classList.add("text");
  return box;
}
