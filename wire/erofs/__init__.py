"""A pure-Python reader of EROFS images (the catalogue's image format), for the edge and the browser.

See `ErofsImage` for the API and docs/erofs.md for what of the format it covers.
"""

from wire.erofs.format import DirEntry, ErofsError, ErofsPathError, ErofsUnsupported, Inode, Superblock
from wire.erofs.image import ErofsImage

__all__ = [
    "DirEntry",
    "ErofsError",
    "ErofsImage",
    "ErofsPathError",
    "ErofsUnsupported",
    "Inode",
    "Superblock",
]
