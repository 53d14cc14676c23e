// Text outputs with their ANSI colours. Small ones are one <pre> that wraps long lines; large ones
// (over SMALL_ROWS lines or SMALL_CHARS characters) a virtual list of unwrapped rows, drawn as they
// scroll into view, whose colours are worked out in slices between frames.
import { AnsiText } from "./ansi.js";
import { element, onRelease } from "./bytes.js";
import { virtualList } from "./virtual.js";

const SMALL_ROWS = 2000;
const SMALL_CHARS = 200_000;
const WRAP = 2000; // a large output's longer lines are cut into rows of this many characters
const SLICE_ROWS = 5000; // rows whose starting style is learnt per idle slice

/** A view of `text` (already decoded). */
export function textView(text, label) {
  if (text === "") return element("p", "note", "(empty)");
  const small = text.length <= SMALL_CHARS;
  const ansi = new AnsiText(text, small ? Infinity : WRAP);
  if (small && ansi.count <= SMALL_ROWS) {
    const pre = element("pre", "text");
    for (let index = 0; index < ansi.count; index += 1) {
      if (index) pre.append("\n");
      pre.append(ansi.row(index, "span"));
    }
    return pre;
  }
  const box = virtualList(ansi.count, (index) => ansi.row(index), label);
  box.classList.add("text");
  // Learn the rows' styles in the background, so a jump to the end does not walk them all at once.
  let timer = 0;
  const learn = () => {
    timer = ansi.learn(SLICE_ROWS) ? setTimeout(learn, 0) : 0;
  };
  timer = setTimeout(learn, 0);
  onRelease(box, () => clearTimeout(timer));
  return box;
}
