"""Words in messages a person reads."""

from __future__ import annotations

__all__ = ["plural", "parse_size", "format_size"]

_IRREGULAR = {"entry": "entries", "index": "indices", "key": "keys", "id": "ids"}


def plural(n: int, word: str) -> str:
    """`"1 document"`, `"3 documents"`, `"2 entries"` (n with thousands separators)."""
    if n == 1:
        return f"1 {word}"
    head, _, last = word.rpartition(" ")
    stem, _, last = last.rpartition("-")  # "file-server entry": only the last word changes
    prefix = f"{head} " if head else ""
    prefix += f"{stem}-" if stem else ""
    many = _IRREGULAR.get(last, last + ("es" if last.endswith(("s", "x")) else "s"))
    return f"{n:,} {prefix}{many}"


_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}


def parse_size(text: str) -> int:
    """`"3GiB"`, `"500MB"`, `"100M"` (binary), `"1024"` → bytes; ValueError naming the text."""
    value = text.strip().replace("_", "").replace(",", "")
    number = value.rstrip("bBkKmMgGtTiI")
    unit = value[len(number):].strip().lower()
    try:
        amount = float(number)
    except ValueError:
        amount = -1
    if amount < 0 or unit not in _UNITS:
        raise ValueError(f"{text!r} is not a size (e.g. 512MiB, 3GiB, 100MB, 1048576)")
    return int(amount * _UNITS[unit])


def format_size(n: float) -> str:
    """`1536` → `"1.5 KiB"`; bytes in binary units, for messages."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:,.0f} bytes" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
