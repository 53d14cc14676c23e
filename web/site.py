"""`pe site build`: the static site (playground, catalogue, a page per image, API docs) rendered from
web/templates/ with the catalogue TOMLs, and the browser code bundled by web/assets.py.

The site is plain files: any static host can serve it. The API base (empty: the same origin) is written
into every page's `<meta name="pe-api-base">`; the playground reads it from there."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import jinja2

from catalog.entry import CATALOG_DIR, CatalogEntry, load_catalog
from web.assets import WEB, WIRE, bundle, lock_hash, node_modules, pyodide_assets, python_sources
from web.compress import precompress

TEMPLATES = WEB / "templates"
STATIC = WEB / "static"
# Every file whose content decides the site (with the API base, the lockfile and the `wire` package's
# sources, which the browser runs in Pyodide): the site's cache key.
SOURCES = (
    "templates",
    "static",
    "editor",
    "embed",
    "viewers",
    "pyodide",
    "site.py",
    "assets.py",
    "compress.py",
)


def build_site(out: Path, cache_dir: Path, api_base: str = "") -> None:
    """Render the site into `out` (replaced as a whole)."""
    catalog = load_catalog()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".site-", dir=out.parent))
    work.chmod(0o755)  # served to anyone
    try:
        _render(work, catalog, api_base)
        shutil.copytree(STATIC, work / "assets", dirs_exist_ok=True)
        modules = node_modules(cache_dir)
        bundle(modules, work / "assets")
        pyodide_assets(modules, work / "assets" / "pyodide")
        precompress(work)  # <file>.gz beside the files gzip shrinks (web/compress.py)
        shutil.rmtree(out, ignore_errors=True)
        try:
            work.rename(out)
        except OSError:
            if not (out / "index.html").is_file():  # else another process built it just now
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def cached_site(cache_dir: Path, api_base: str = "") -> Path:
    """The site for these inputs under `<cache>/site/<key>`, built when missing (what `pe serve` serves)."""
    site = Path(cache_dir) / "site" / site_key(api_base)
    if not (site / "index.html").is_file():
        build_site(site, cache_dir, api_base)
    return site


def site_key(api_base: str) -> str:
    digest = hashlib.sha256(f"{api_base}\0{lock_hash()}\0".encode())
    paths = [path for name in SOURCES for path in sorted((WEB / name).rglob("*")) if path.is_file()]
    paths += sorted(CATALOG_DIR.glob("*.toml")) + python_sources(WIRE)
    for path in paths:
        if "node_modules" not in path.parts and "__pycache__" not in path.parts:
            digest.update(f"{path.relative_to(path.parents[1])}\0".encode() + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def mime_groups(catalog: dict[str, CatalogEntry]) -> dict[str, dict[str, list[str]]]:
    """{"input": {mime: [image ids]}, "output": {…}}: the catalogue page's filters (many-to-many)."""
    groups: dict[str, dict[str, list[str]]] = {"input": {}, "output": {}}
    for entry in catalog.values():
        for kind, types in (("input", entry.input_types), ("output", entry.output_types)):
            for mime in types:
                groups[kind].setdefault(mime, []).append(entry.id)
    return {kind: dict(sorted(by_mime.items())) for kind, by_mime in groups.items()}


def _render(out: Path, catalog: dict[str, CatalogEntry], api_base: str) -> None:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    entries = [entry.to_json() for entry in catalog.values()]
    common = {"api_base": api_base, "entries": entries}
    pages = {
        "index.html": ("playground.html", {"root": ""}),
        "catalog.html": ("catalog.html", {"root": "", "groups": mime_groups(catalog)}),
        "api.html": ("api.html", {"root": "", "example": _curl_example(entries)}),
        "embed/index.html": ("embed.html", {"root": "../"}),
        "embedding.html": ("embedding.html", {"root": ""}),
    }
    for entry in entries:
        pages[f"images/{entry['id']}.html"] = ("image.html", {"root": "../", "entry": entry})
    for name, (template, context) in pages.items():
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(env.get_template(template).render(**common, **context), encoding="utf-8")
    (out / "catalog.json").write_text(json.dumps({"images": entries}, sort_keys=True), encoding="utf-8")


def _curl_example(entries: list[dict]) -> str:
    """A request body the API docs page shows: python3's first example, else the first image's."""
    entry = next((e for e in entries if e["id"] == "python3"), entries[0] if entries else None)
    if entry is None:
        return "{}"
    files = {path: {"text": text} for path, text in entry["files"].items()}
    return json.dumps({"image": entry["id"], "files": files})
