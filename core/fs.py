"""Beam's `FileSystems`, imported on its first use.

A restore checks its archive before anything else, in a forked process while the parent
imports Beam (`pipelines.restore`); so the modules that check use no Beam at import time.
The journal and the agent index name files by `FileSystems` paths (local, or storage every
worker reaches) but only touch them once the job runs.
"""

from __future__ import annotations

from typing import Any

__all__ = ["FileSystems", "uncompressed"]


class _LazyFileSystems:
    """`apache_beam.io.filesystems.FileSystems`, looked up when an attribute is first used."""

    def __getattr__(self, name: str) -> Any:
        from apache_beam.io.filesystems import FileSystems

        return getattr(FileSystems, name)


FileSystems: Any = _LazyFileSystems()


def uncompressed() -> Any:
    """`CompressionTypes.UNCOMPRESSED` (files read and written byte for byte)."""
    from apache_beam.io.filesystem import CompressionTypes

    return CompressionTypes.UNCOMPRESSED
