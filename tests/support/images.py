"""An image locator over files made by a test (runners normally find images in the ImageStore)."""

from __future__ import annotations

from pathlib import Path

from catalog.store import ImageLocation


class FixedImages:
    def __init__(self, files: dict[str, Path] | None = None) -> None:
        self.files = dict(files or {})  # digest -> erofs file

    def locate(self, digest: str) -> ImageLocation:
        if digest not in self.files:
            raise LookupError(f"image {digest} is not among the test's images")
        return ImageLocation(self.files[digest])
