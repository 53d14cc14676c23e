"""`pe site build`: the pages, the API base as configuration, the catalogue's mime groups, the cache."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from catalog.entry import load_catalog
from pe.settings import Settings
from web.assets import AssetError, node_modules
from web.site import cached_site, mime_groups, site_key

pytestmark = pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed")
CACHE = Settings().cache_dir  # the npm packages are shared with `pe serve` (keyed by the lockfile)


def test_pe_site_build_writes_every_page_with_the_api_base(tmp_path: Path) -> None:
    out = tmp_path / "public"
    command = [sys.executable, "-m", "pe.cli", "site", "build", "--out", str(out)]
    done = subprocess.run([*command, "--api-base", "https://api.example.org"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out)
    catalog = load_catalog()
    pages = ["index.html", "catalog.html", "api.html", *(f"images/{image}.html" for image in catalog)]
    for page in pages:
        assert '<meta name="pe-api-base" content="https://api.example.org">' in (out / page).read_text()
    assert (out / "assets" / "playground.js").stat().st_size > 10_000
    graphviz = (out / "images" / "graphviz.html").read_text()
    assert "index.html#image=graphviz&amp;example=1" in graphviz and "Layout engine" in graphviz


def test_mime_groups_list_each_image_under_each_of_its_types() -> None:
    groups = mime_groups(load_catalog())
    assert {"graphviz", "gnuplot"} <= set(groups["output"]["image/svg+xml"])
    assert groups["input"]["text/x-python"] == ["python3"]
    assert "busybox" not in groups["output"]["image/svg+xml"]


def test_the_cached_site_is_keyed_by_its_inputs() -> None:
    assert site_key("") != site_key("https://api.example.org")
    site = cached_site(CACHE)
    assert site.name == site_key("") and (site / "index.html").is_file()
    assert cached_site(CACHE) == site


def test_without_npm_the_install_fails_with_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no npm here
    with pytest.raises(AssetError, match="npm"):
        node_modules(tmp_path / "cache")
    assert list((tmp_path / "cache" / "npm").iterdir()) == []  # nothing half-installed left behind
