// Binary outputs as a hex dump: offset, 16 bytes in hex (two groups of 8), and the printable ASCII
// characters ("." for the others), as `hexdump -C` shows them. Rows are drawn as they scroll into view.
import { element } from "./bytes.js";
import { virtualList } from "./virtual.js";

const WIDTH = 16;

const hex2 = (byte) => byte.toString(16).padStart(2, "0");

/** One row's three columns as text: ["00000010", "10 11 … 17  18 … 1f", "................"]. */
export function hexRow(bytes, offset) {
  const slice = bytes.subarray(offset, offset + WIDTH);
  const left = [...slice.subarray(0, 8)].map(hex2).join(" ");
  const right = [...slice.subarray(8)].map(hex2).join(" ");
  const ascii = String.fromCharCode(...slice.map((b) => (b >= 0x20 && b < 0x7f ? b : 0x2e)));
  return [offset.toString(16).padStart(8, "0"), `${left}  ${right}`.padEnd(WIDTH * 3, " "), ascii];
}

export function hexView(bytes, label) {
  if (bytes.length === 0) return element("p", "note", "(empty)");
  const rows = Math.ceil(bytes.length / WIDTH);
  const box = virtualList(rows, (index) => {
    const row = element("div", "line");
    const [offset, hex, ascii] = hexRow(bytes, index * WIDTH);
    row.append(element("span", "hex-offset", offset), element("span", "hex-bytes", hex), element("span", "hex-ascii", ascii));
    return row;
  }, label);
  box.classList.add("hex");
  return box;
}
