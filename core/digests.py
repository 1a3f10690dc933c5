"""Every digest cfysnap computes, one definition each.

- `key_digest`: a signed 64-bit blake2b digest of a document's (index, type, id), to find
  duplicated keys among millions of documents with 8 bytes each (convert shuffles them packed;
  validate spills them to disk). Equal keys give equal digests; a collision only costs a closer
  look at the lines involved, never a lost document.
- `repeated`: the digests that occur more than once in an array of them.
- `batch_digest`: the sha256 of a bulk batch's sorted target keys, its identity in a restore's
  journal.
- `document_digest`: a `_source` in canonical JSON, hashed (verify compares these).
- `file_sha256`: a file's sha256, read in 1 MiB blocks (an archive's identity, restored files).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.model import HitKey

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "key_digest",
    "key_digest_bytes",
    "repeated",
    "batch_digest",
    "document_digest",
    "file_sha256",
]


def key_digest_bytes(key: HitKey) -> bytes:
    """`key_digest` as the 8 little-endian bytes it is packed as."""
    return hashlib.blake2b("\x00".join(key).encode(), digest_size=8).digest()


def key_digest(key: HitKey) -> int:
    """A signed 64-bit digest of (index, type, id) (Beam's int coder is signed)."""
    return int.from_bytes(key_digest_bytes(key), "little", signed=True)


def repeated(digests: np.ndarray) -> np.ndarray:
    """The distinct values that occur more than once in `digests` (int64), sorted."""
    import numpy as np  # here: importing this module (every job does) needs none of it

    if len(digests) < 2:
        return np.empty(0, dtype=np.int64)
    ordered = np.sort(digests)
    return np.unique(ordered[1:][ordered[1:] == ordered[:-1]])


def batch_digest(keys: Iterable[HitKey]) -> str:
    """sha256 of the sorted (index, type, id) keys of a batch."""
    joined = sorted(f"{i}\x00{t}\x00{d}" for i, t, d in keys)
    return hashlib.sha256("\x01".join(joined).encode()).hexdigest()


def document_digest(source: Any) -> str:
    """sha256 (first 32 hex) of a `_source` in canonical JSON (sorted keys)."""
    text = json.dumps(source, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def file_sha256(path: Path | str) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
    return sha.hexdigest()
