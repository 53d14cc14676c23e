"""A map bounded in bytes that drops the least recently used entries first: the edge's stored runs
(api/runs.py), their kept encodings (api/encoded.py) and the gist cache (api/gists.py)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class ByteLru(Generic[K, V]):
    """At most `max_bytes` of values, each weighing `size(value)`. A value heavier than the whole
    bound is not kept (and replaces nothing it would have replaced: the key is dropped)."""

    def __init__(self, max_bytes: int, size: Callable[[V], int]) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._size = size
        self._items: OrderedDict[K, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: K) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self.bytes -= self._size(old)
        size = self._size(value)
        if size > self.max_bytes:
            return
        self._items[key] = value
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, evicted = self._items.popitem(last=False)
            self.bytes -= self._size(evicted)
