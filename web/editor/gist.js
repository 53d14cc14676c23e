// Gists (docs/gists.md): `#gist=<id>` and `#gist=<id>/<rev>` load a gist's files through the edge's
// `GET /api/v1/gists/<id>[/<rev>]`, its pe.toml (checked by the edge) setting the image, argv, env, stdin,
// options and limits; "Export" downloads the current files with a pe.toml describing the rest, as a zip
// to unpack into a new gist. The pe.toml writer and the fragment parser touch no DOM (Node tests).

const ID = /^[0-9a-f]{1,64}$/;
const REV = /^[0-9a-f]{4,64}$/;
export const CONFIG_FILE = "pe.toml";

/** A gist that cannot be opened; `message` says why, for a person. */
export class GistError extends Error {
  name = "GistError";
}

/** Whether a URL fragment (with or without its `#`) is a gist link. */
export function isGistFragment(fragment) {
  return /^#?gist=/.test(fragment);
}

/** {id, rev} of `#gist=<id>` or `#gist=<id>/<rev>` (rev "" for the latest); GistError when malformed. */
export function parseGistFragment(fragment) {
  let value = fragment.replace(/^#?gist=/, "");
  try {
    value = decodeURIComponent(value).trim();
  } catch {
    // left as it is: the message below quotes it
  }
  const [id, rev = "", ...rest] = value.split("/");
  if (!ID.test(id) || rest.length || (value.includes("/") && !REV.test(rev))) {
    throw new GistError(
      `This gist link is malformed: "${value}" should be #gist=<id> or #gist=<id>/<revision>, both in lowercase hex digits.`,
    );
  }
  return { id, rev };
}

/** The gist a fragment names, as {id, rev, state, open}: `state` in share.js's shape without `v`
 * (image "" when its pe.toml names none), `open` the files to show first. GistError on failure. */
export async function loadGist(apiBase, fragment) {
  const { id, rev } = parseGistFragment(fragment);
  const url = `${apiBase}/api/v1/gists/${id}${rev ? `/${rev}` : ""}`;
  let response;
  try {
    response = await fetch(url, { headers: { Accept: "application/json" } });
  } catch (error) {
    throw new GistError(`Gist ${id} could not be loaded: cannot reach the service (${error.message}).`);
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) throw new GistError(describeFailure(id, response, body));
  if (!body?.files) throw new GistError(`Gist ${id} could not be loaded: the service's answer is not a gist.`);
  const config = body.config ?? {};
  const [image, digest = null] = (config.image ?? "").split("@");
  return {
    id: body.id, rev: body.rev, open: config.open ?? [],
    state: {
      image, digest, files: body.files, argv: config.argv ?? [], env: config.env ?? {}, stdin: config.stdin ?? "",
      options: config.options ?? {}, limits: config.limits ?? {},
    },
  };
}

function describeFailure(id, response, body) {
  const code = body?.error?.code ?? "";
  const message = body?.error?.message ?? `the service answered ${response.status}`;
  const retry = response.headers.get("Retry-After");
  switch (code) {
    case "gist_not_found":
      return `Gist ${id} was not found: it may be secret, deleted, or the link mistyped.`;
    case "gist_rate_limited":
      return `Gist ${id} could not be loaded now: the gist API (GitHub) is rate limiting this service; try again in ${retry ?? "a few"} s.`;
    case "gist_upstream_unavailable":
      return `Gist ${id} could not be loaded now: ${message}; try again later.`;
    case "bad_pe_toml":
      return `Gist ${id} has a pe.toml this service cannot use: ${message}`;
    default:
      return `Gist ${id} could not be loaded (${response.status}): ${message}`;
  }
}

/** The pe.toml text for a run spec (`image`, `argv`, `env`, `stdin: {text}`, `options`, `limits`, as
 * POST /api/v1/run takes it) with `open` the files to show first. */
export function toPeToml(spec, open = []) {
  const lines = ["# Program Explorer settings for the files beside this one (docs/gists.md)"];
  lines.push(`image = ${tomlValue(spec.image)}`);
  if (spec.argv?.length) lines.push(`argv = ${tomlValue(spec.argv)}`);
  if (spec.stdin?.text) lines.push(`stdin = ${tomlValue(spec.stdin.text)}`);
  if (open.length) lines.push(`open = ${tomlValue(open)}`);
  for (const table of ["env", "options", "limits"]) {
    const entries = Object.entries(spec[table] ?? {}).filter(([, value]) => value !== undefined);
    if (!entries.length) continue;
    lines.push("", `[${table}]`);
    for (const [key, value] of entries) lines.push(`${tomlKey(key)} = ${tomlValue(value)}`);
  }
  return `${lines.join("\n")}\n`;
}

function tomlKey(key) {
  return /^[A-Za-z0-9_-]+$/.test(key) ? key : tomlValue(key);
}

/** A TOML string, number, boolean or array of them. JSON's string escapes are TOML's, except that TOML
 * also wants DEL escaped. */
function tomlValue(value) {
  if (Array.isArray(value)) return `[${value.map(tomlValue).join(", ")}]`;
  if (typeof value === "string") return JSON.stringify(value).replace(/\x7f/g, "\\u007f");
  return String(value);
}

/** The zip "Export" saves: each file at its path and pe.toml (which replaces a file of that name). */
export async function exportZip(spec, open = []) {
  const { zipSync, strToU8 } = await import("fflate");
  const entries = {};
  for (const [path, content] of Object.entries(spec.files)) {
    entries[path] = "base64" in content ? Uint8Array.from(atob(content.base64), (c) => c.charCodeAt(0)) : strToU8(content.text);
  }
  entries[CONFIG_FILE] = strToU8(toPeToml(spec, open));
  return zipSync(entries, { level: 6 });
}

/** Save `exportZip(spec, open)` as `<image>-gist.zip`; returns what to tell the person. */
export async function downloadExport(spec, open = []) {
  const zip = await exportZip(spec, open);
  const url = URL.createObjectURL(new Blob([zip], { type: "application/zip" }));
  const name = `${spec.image.split("@")[0]}-gist.zip`;
  Object.assign(document.createElement("a"), { href: url, download: name }).click();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
  const nested = Object.keys(spec.files).filter((path) => path.includes("/"));
  const warning = nested.length ? ` Gists have no folders: ${nested.join(", ")} must move to the top level.` : "";
  return `Saved ${name}: its files and pe.toml make a new gist.${warning}`;
}

/** The image for a gist whose pe.toml names none: the first in `images` (a Map of catalogue entries)
 * whose starting files share an extension with the gist's `paths`; "" when none does. */
export function guessImage(images, paths) {
  const extension = (path) => (/\.([^./]+)$/.exec(path)?.[1] ?? "").toLowerCase();
  const wanted = new Set(paths.map(extension).filter(Boolean));
  const found = [...images.values()].find((image) => Object.keys(image.files).some((path) => wanted.has(extension(path))));
  return found?.id ?? "";
}
