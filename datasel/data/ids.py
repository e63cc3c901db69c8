"""Stable example ids: a hash of the source name and the row's content, never of its position."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from collections import defaultdict


def content_ids(source: str, payloads: Iterable[bytes]) -> list[str]:
    """``<source>-<16 hex>`` per row; exact duplicate rows get ``-1``, ``-2``… suffixes in order of appearance."""
    seen: dict[str, int] = defaultdict(int)
    out = []
    for payload in payloads:
        h = hashlib.blake2b(payload, digest_size=8, person=b"datasel-id").hexdigest()
        k = seen[h]
        seen[h] += 1
        out.append(f"{source}-{h}" if k == 0 else f"{source}-{h}-{k}")
    return out
