// HTML outputs in a sandboxed iframe: scripts run, but in an opaque origin (no allow-same-origin),
// so they cannot read our page, its storage or cookies; and a Content-Security-Policy put in front
// of the document blocks every network request (our API included), forms, and framing of anything.
import { element } from "./bytes.js";

export const CSP = [
  "default-src 'none'",
  "script-src 'unsafe-inline'",
  "style-src 'unsafe-inline'",
  "img-src data: blob:",
  "media-src data: blob:",
  "font-src data:",
  "form-action 'none'",
].join("; ");

const DOCTYPE = /^\ufeff?\s*<!doctype[^>]*>/i;

/** `html` with the CSP <meta> first (after a doctype, which must stay first for standards mode). */
export function withPolicy(html) {
  const meta = `<meta http-equiv="Content-Security-Policy" content="${CSP}">`;
  const doctype = html.match(DOCTYPE)?.[0] ?? "";
  return doctype + meta + html.slice(doctype.length);
}

export function htmlView(text, path) {
  const frame = element("iframe", "html");
  frame.setAttribute("sandbox", "allow-scripts");
  frame.setAttribute("referrerpolicy", "no-referrer");
  frame.title = `Output page ${path} (sandboxed)`;
  frame.srcdoc = withPolicy(text);
  return frame;
}
