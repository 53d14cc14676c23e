// A scrolling list of many fixed-height rows that keeps only the visible ones in the DOM, so a
// 100 000-line output or a 16 MiB hex dump costs as much to show as one screenful.
import { element, onRelease } from "./bytes.js";

const ROW_PX = 18; // the rows' line height, set in site.css (.virtual .line) as well
const MAX_PX = 16_000_000; // below the browsers' element height limits; longer lists scroll scaled
const OVERSCAN = 20; // rows drawn above and below the visible ones

/**
 * A scroll box of `count` rows; `row(index)` returns the node for one row. The box can be focused
 * (keyboard scrolling) and is labelled `label`.
 */
export function virtualList(count, row, label) {
  const box = element("div", "virtual");
  box.tabIndex = 0;
  box.setAttribute("role", "region");
  box.setAttribute("aria-label", label);
  const total = Math.min(count * ROW_PX, MAX_PX);
  const spacer = element("div", "spacer");
  spacer.style.height = `${total}px`;
  const rows = element("div", "rows");
  box.append(spacer, rows);

  let drawn = "";
  const draw = () => {
    const view = box.clientHeight || 600; // not laid out yet: assume a screenful
    // Scaled when the list is taller than MAX_PX: the scroll fraction picks the first row.
    const scrollable = Math.max(total - view, 1);
    const rowsScrollable = Math.max(count * ROW_PX - view, 0);
    const position = (box.scrollTop / scrollable) * rowsScrollable;
    const first = Math.max(0, Math.floor(position / ROW_PX) - OVERSCAN);
    const last = Math.min(count, Math.ceil((position + view) / ROW_PX) + OVERSCAN);
    rows.style.transform = `translateY(${box.scrollTop - (position - first * ROW_PX)}px)`;
    if (drawn === `${first}:${last}`) return;
    drawn = `${first}:${last}`;
    const fragment = document.createDocumentFragment();
    for (let index = first; index < last; index += 1) fragment.append(row(index));
    rows.replaceChildren(fragment);
  };
  let pending = false;
  const schedule = () => {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => {
      pending = false;
      draw();
    });
  };
  box.addEventListener("scroll", schedule, { passive: true });
  const resized = new ResizeObserver(schedule);
  resized.observe(box);
  onRelease(box, () => resized.disconnect());
  draw();
  return box;
}
