// Downloads: a link per output (a blob URL), and "Download all", which zips the files with
// stdout and stderr (fflate, loaded when first clicked).
import { blobUrl, element, formatSize } from "./bytes.js";

/** A link that saves `bytes` as the last part of `path`. */
export function downloadLink(owner, bytes, mime, path) {
  const link = element("a", "download", `Download (${formatSize(bytes.length)})`);
  link.href = blobUrl(owner, bytes, mime);
  link.download = path.split("/").pop();
  link.title = `Download ${path}`;
  return link;
}

/**
 * The zip's entries: each file at its path, the streams as stdout.txt and stderr.txt (renamed
 * with a "run-" prefix if a file has that path).
 */
export function zipEntries(streams, files) {
  const entries = {};
  for (const file of files) entries[file.path] = file.data;
  for (const [name, data] of Object.entries(streams)) {
    let path = `${name}.txt`;
    while (path in entries) path = `run-${path}`;
    entries[path] = data;
  }
  return entries;
}

/** A "Download all" button for {stdout, stderr} and [{path, data}]. */
export function downloadAllButton(streams, files) {
  const button = element("button", "download-all", "Download all (.zip)");
  button.type = "button";
  button.addEventListener("click", async () => {
    const { zipSync } = await import("fflate");
    const zip = zipSync(zipEntries(streams, files), { level: 6 });
    const url = URL.createObjectURL(new Blob([zip], { type: "application/zip" }));
    const link = Object.assign(document.createElement("a"), { href: url, download: "outputs.zip" });
    link.click();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
  });
  return button;
}
