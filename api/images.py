"""Which image a run spec names: a catalogue id, optionally pinned to a digest, resolved to a built image."""

from __future__ import annotations

from dataclasses import dataclass

from api.errors import ApiError
from catalog.entry import CatalogEntry
from catalog.store import ImageMeta, ImageStore
from wire.spec import RunSpec


@dataclass(frozen=True)
class ResolvedImage:
    entry: CatalogEntry
    meta: ImageMeta


class ImageResolver:
    def __init__(self, catalog: dict[str, CatalogEntry], store: ImageStore) -> None:
        self.catalog = catalog
        self.store = store

    def resolve(self, spec: RunSpec) -> ResolvedImage:
        entry = self.catalog.get(spec.image_id)
        if entry is None:
            raise ApiError(404, "unknown_image", f"no image {spec.image_id!r} in the catalogue")
        meta = self.store.current(entry.id)
        if meta is None:
            raise ApiError(
                503,
                "image_not_built",
                f"image {entry.id!r} is not built yet; run `pe images build {entry.id}`",
                {"Retry-After": "60"},
            )
        if spec.image_digest is not None and spec.image_digest != meta.digest:
            raise ApiError(
                404,
                "unknown_digest",
                f"image {entry.id!r} is not available at {spec.image_digest}; this service has {meta.digest}",
            )
        return ResolvedImage(entry, meta)
