"""The byte-bounded LRU under the stored runs, their encodings and the gist cache (api/lru.py)."""

from __future__ import annotations

from api.lru import ByteLru


def test_the_least_recently_used_go_first_when_the_bytes_run_out() -> None:
    lru: ByteLru[str, bytes] = ByteLru(10, len)
    lru.put("a", b"aaaa")
    lru.put("b", b"bbbb")
    assert lru.get("a") == b"aaaa"  # now "b" is the least recently used
    lru.put("c", b"cccc")
    assert (lru.get("a"), lru.get("b"), lru.get("c")) == (b"aaaa", None, b"cccc")
    assert lru.bytes == 8 and len(lru) == 2


def test_a_replaced_value_is_counted_once_and_one_too_heavy_is_not_kept() -> None:
    lru: ByteLru[str, bytes] = ByteLru(10, len)
    lru.put("a", b"aaaa")
    lru.put("a", b"aaaaaa")
    assert lru.bytes == 6
    lru.put("a", b"x" * 11)
    assert lru.get("a") is None and lru.bytes == 0 and len(lru) == 0
