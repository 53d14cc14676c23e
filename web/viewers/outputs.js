// The result's outputs: stdout and stderr as text, each output file with a download link, and images
// shown through <img> from a blob URL (an SVG is never inlined into our page, so its scripts cannot run).
const IMAGE_TYPES = new Set(["image/png", "image/jpeg", "image/gif", "image/webp", "image/svg+xml"]);
let urls = [];

/** The bytes of a JSON output ({text} or {base64}). */
function bytesOf(content) {
  if (typeof content.text === "string") return new TextEncoder().encode(content.text);
  const binary = atob(content.base64 ?? "");
  return Uint8Array.from(binary, (c) => c.charCodeAt(0));
}

function section(title, extra) {
  const box = document.createElement("section");
  box.className = "output";
  const heading = document.createElement("h3");
  const name = document.createElement("span");
  name.textContent = title;
  heading.append(name, ...extra);
  box.append(heading);
  return box;
}

function textBlock(text) {
  const pre = document.createElement("pre");
  pre.textContent = text;
  return pre;
}

function blobUrl(bytes, mime) {
  const url = URL.createObjectURL(new Blob([bytes], { type: mime }));
  urls.push(url);
  return url;
}

/** Show `result` (the JSON answer of POST /api/v1/run) in `parent`, replacing what was there. */
export function renderOutputs(parent, result) {
  for (const url of urls) URL.revokeObjectURL(url);
  urls = [];
  parent.replaceChildren();
  for (const stream of ["stdout", "stderr"]) {
    const info = result[stream];
    if (!info || (!info.bytes && stream === "stderr")) continue;
    const box = section(stream + (info.truncated ? " (truncated)" : ""), []);
    box.dataset.stream = stream;
    const text = typeof info.text === "string" ? info.text : `(${info.bytes} bytes of binary output)`;
    box.append(info.bytes ? textBlock(text) : Object.assign(document.createElement("p"), { className: "note", textContent: "(empty)" }));
    parent.append(box);
  }
  for (const file of result.files ?? []) {
    const bytes = bytesOf(file);
    const url = blobUrl(bytes, file.mime || "application/octet-stream");
    const link = Object.assign(document.createElement("a"), { href: url, download: file.path.split("/").pop() });
    link.textContent = `Download (${file.size} bytes)`;
    const box = section(`${file.path} · ${file.mime}${file.truncated ? " (truncated)" : ""}`, [link]);
    box.dataset.file = file.path;
    if (IMAGE_TYPES.has(file.mime)) {
      const img = document.createElement("img");
      img.src = url;
      img.alt = `Output image ${file.path}`;
      box.append(img);
    } else if (typeof file.text === "string") {
      box.append(textBlock(file.text));
    }
    parent.append(box);
  }
}
