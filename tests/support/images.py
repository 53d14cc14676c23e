"""An image locator over images a test chose (runners normally find images in the ImageStore)."""

from __future__ import annotations

from pathlib import Path

from catalog.store import ImageLocation


class FixedImages:
    def __init__(self, images: dict[str, Path | ImageLocation] | None = None) -> None:
        """`images` maps a digest to its erofs file, or to its location in a pack."""
        self.images = {
            digest: where if isinstance(where, ImageLocation) else ImageLocation(where)
            for digest, where in (images or {}).items()
        }

    def locate(self, digest: str) -> ImageLocation:
        if digest not in self.images:
            raise LookupError(f"image {digest} is not among the test's images")
        return self.images[digest]
