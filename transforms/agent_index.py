"""agents.json as an on-disk index for a restore: node instance id → (deployment, agent entry).

A restore merges each node instance with its agents.json entry (§6.3). Held as a dict, the
entries of a 1M-document manager take ~300 MB; here they live in an SQLite file instead, built
by streaming agents.json a deployment at a time (`SnapshotReader.iter_agents`), and looked up by
instance id: memory stays flat whatever the number of instances.

    index, warnings = AgentIndex.build(deployments, Path(workdir) / "agents.sqlite")
    index.get("vm_a1b2c")            # ("dep1", {...}) or None; `in`, `[]`, `len` too
    staged = index.stage(staging)    # a copy where every worker reads it (a FileSystems path)

A deployment with any malformed part is left out whole and reported (`AgentWarning`), as the
3.4.0.2+ restore does. An instance id found twice keeps its last entry, as `json.loads` of the
whole file would. Pickled (into a Beam DoFn) an index is its path only; a worker opens it
read-only, copying it to a local temporary file first when the path is not a local one.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import msgspec

from core.fs import FileSystems, uncompressed
from transforms.restore_docs import Agent, AgentWarning, deployment_entries

__all__ = ["AgentIndex"]

_ENCODE, _DECODE = msgspec.json.encode, msgspec.json.decode
_COPY = 1 << 20


class AgentIndex(Mapping[str, tuple[str, Agent]]):
    """instance id → (deployment id, agent entry), read from an SQLite file at `path`."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._local: str | None = None

    @classmethod
    def build(
        cls, deployments: Iterable[tuple[str, Any]], path: Path
    ) -> tuple[AgentIndex, list[AgentWarning]]:
        """Index `deployments` ((id, nodes object) of agents.json, as already upgraded) into a
        new file at `path`; return it with the deployments left out."""
        warnings: list[AgentWarning] = []
        path.unlink(missing_ok=True)
        db = sqlite3.connect(path)
        try:
            db.execute("PRAGMA journal_mode=OFF")
            db.execute("PRAGMA synchronous=OFF")
            db.execute(
                "CREATE TABLE agents (instance TEXT PRIMARY KEY, deployment TEXT NOT NULL,"
                " entry BLOB NOT NULL)"
            )
            for deployment, nodes in deployments:
                entries, problem = deployment_entries(nodes)
                if problem:
                    warnings.append(AgentWarning(str(deployment), problem))
                    continue
                db.executemany(
                    "INSERT OR REPLACE INTO agents VALUES (?, ?, ?)",
                    ((iid, str(deployment), _ENCODE(entry)) for iid, entry in entries),
                )
            db.commit()
        finally:
            db.close()
        os.chmod(path, 0o600)  # broker passwords
        return cls(str(path)), warnings

    def stage(self, folder: str) -> AgentIndex:
        """A copy of the index in `folder` (any FileSystems path every worker reaches)."""
        target = FileSystems.join(folder, "agents.sqlite")
        with open(self.path, "rb") as src, FileSystems.create(
            target, compression_type=uncompressed()
        ) as dst:
            while chunk := src.read(_COPY):
                dst.write(chunk)
        return AgentIndex(target)

    # -- lookups ---------------------------------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            local = self.path
            if not os.path.exists(local):  # a path of another filesystem: read a local copy
                fd, local = tempfile.mkstemp(prefix="cfysnap-agents-", suffix=".sqlite")
                with os.fdopen(fd, "wb") as dst, FileSystems.open(
                    self.path, compression_type=uncompressed()
                ) as src:
                    while chunk := src.read(_COPY):
                        dst.write(chunk)
                self._local = local
            uri = f"{Path(local).absolute().as_uri()}?mode=ro&immutable=1"
            self._db = sqlite3.connect(uri, uri=True, check_same_thread=False)
        return self._db

    def _row(self, instance_id: object) -> Any:
        return self._connection().execute(
            "SELECT deployment, entry FROM agents WHERE instance = ?", (instance_id,)
        ).fetchone()

    def get(self, instance_id: object, default: Any = None) -> Any:
        row = self._row(instance_id)
        return default if row is None else (row[0], _DECODE(row[1]))

    def agent_deployment(self, instance_id: object) -> str | None:
        """The deployment of `instance_id` when it has a non-empty agent entry, else None
        (`get`'s answer without decoding the entry: a restore's check asks it of every node
        instance)."""
        row = self._row(instance_id)
        if row is None or (len(row[1]) <= 2 and not _DECODE(row[1])):  # b"{}": empty
            return None
        return str(row[0])

    def __getitem__(self, instance_id: str) -> tuple[str, Agent]:
        found = self.get(instance_id)
        if found is None:
            raise KeyError(instance_id)
        return found  # type: ignore[no-any-return]

    def __contains__(self, instance_id: object) -> bool:
        return self.get(instance_id) is not None

    def __iter__(self) -> Iterator[str]:
        for (instance,) in self._connection().execute("SELECT instance FROM agents"):
            yield instance

    def __len__(self) -> int:
        return int(self._connection().execute("SELECT COUNT(*) FROM agents").fetchone()[0])

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._local is not None:
            Path(self._local).unlink(missing_ok=True)
            self._local = None

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path}  # never a connection or a local copy

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"AgentIndex({self.path!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AgentIndex) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)
