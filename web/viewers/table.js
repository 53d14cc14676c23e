// CSV and TSV outputs as a table: the first row is the header; quoted fields may hold the
// delimiter, newlines and doubled quotes (RFC 4180). Only the first MAX_ROWS rows are shown.
import { element } from "./bytes.js";

const MAX_ROWS = 1000;

/** Rows of fields; `keep` rows are kept, the rest only counted. Returns {rows, count}. */
export function parseDelimited(text, delimiter, keep = Infinity) {
  const rows = [];
  let count = 0;
  let row = [];
  let field = "";
  let quoted = false;
  let at = 0;
  const endRow = () => {
    row.push(field);
    if (count < keep) rows.push(row);
    count += 1;
    row = [];
    field = "";
  };
  while (at < text.length) {
    const char = text[at];
    if (quoted) {
      if (char === '"' && text[at + 1] === '"') {
        field += '"';
        at += 1;
      } else if (char === '"') quoted = false;
      else field += char;
    } else if (char === '"' && field === "") quoted = true;
    else if (char === delimiter) {
      row.push(field);
      field = "";
    } else if (char === "\n") endRow();
    else if (char !== "\r" || text[at + 1] !== "\n") field += char;
    at += 1;
  }
  if (field !== "" || row.length) endRow();
  return { rows, count };
}

export function tableView(text, delimiter) {
  const { rows, count } = parseDelimited(text, delimiter, MAX_ROWS + 1);
  if (rows.length === 0) return element("p", "note", "(empty)");
  const box = element("div", "table");
  if (count > MAX_ROWS + 1) {
    box.append(element("p", "note", `Showing the first ${MAX_ROWS} of ${count - 1} rows: download the file for the rest.`));
  }
  const table = element("table");
  const head = element("thead");
  const headRow = element("tr");
  for (const name of rows[0]) headRow.append(Object.assign(element("th", "", name), { scope: "col" }));
  head.append(headRow);
  const body = element("tbody");
  for (const fields of rows.slice(1, MAX_ROWS + 1)) {
    const tr = element("tr");
    for (const value of fields) tr.append(element("td", "", value));
    body.append(tr);
  }
  table.append(head, body);
  box.append(table);
  return box;
}
