"""Words in messages a person reads."""

from __future__ import annotations

__all__ = ["plural"]

_IRREGULAR = {"entry": "entries", "index": "indices", "key": "keys", "id": "ids"}


def plural(n: int, word: str) -> str:
    """`"1 document"`, `"3 documents"`, `"2 entries"` (n with thousands separators)."""
    if n == 1:
        return f"1 {word}"
    many = _IRREGULAR.get(word, word + ("es" if word.endswith(("s", "x")) else "s"))
    return f"{n:,} {many}"
