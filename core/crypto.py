"""Credentials encrypted at rest in an archive (`create --encrypt-credentials`).

What is encrypted: every `snapshot-credentials/<dep>_<node>/agent_key` member, and in
agents.json every broker password and SSL key or certificate (`SECRET_FIELDS`, flat or inside
`broker_config`). Everything else stays readable, so `inspect`, `validate` and `convert` need no
key to see what an archive holds, and a conversion moves encrypted values as they are.

How: AES-256-GCM (`cryptography`'s AEAD), a random 12-byte nonce per value, the key derived from
the operator's passphrase with scrypt (n=2**15, r=8, p=1) and a random salt kept in
manifest.json. Each value is bound to where it belongs (its member name, or its agents.json
path) as associated data: a value moved elsewhere fails to decrypt. A key check value (the
encryption of a fixed text) in the manifest lets a job refuse a wrong key before it writes
anything.

- an encrypted member is `CFYSNAP-AES256GCM-1\\n` + nonce + ciphertext;
- an encrypted agents.json value is `{"$encrypted": "<base64 of nonce + ciphertext>"}`.

The passphrase comes from the environment (`CFYSNAP_ARCHIVE_KEY`) or a file
(`CFYSNAP_ARCHIVE_KEY_FILE`, or `--key-file`), never from a command-line value. It is never
printed, logged or written anywhere.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

from core.errors import CfysnapError, CorruptArchive

__all__ = [
    "SCHEME",
    "SECRET_FIELDS",
    "MEMBER_MAGIC",
    "ArchiveKey",
    "KeyRefused",
    "Encryption",
    "is_encrypted_value",
    "encrypt_agents",
    "decrypt_agents",
]

SCHEME = "aes-256-gcm+scrypt-1"
MEMBER_MAGIC = b"CFYSNAP-AES256GCM-1\n"
SECRET_FIELDS = ("broker_pass", "broker_ssl_cert", "broker_ssl_key", "password")
"""agents.json keys whose values are encrypted (broker passwords, SSL certificates and keys,
the agent user's password)."""
_CHECK_TEXT = b"cfysnap archive key check"
_NONCE = 12


class KeyRefused(CfysnapError):
    """No key, or not the key the archive was encrypted with. Names neither the key nor a value."""

    def __init__(self, archive: str, reason: str) -> None:
        super().__init__(archive, reason)
        self.archive, self.reason = archive, reason

    def __str__(self) -> str:
        return f"{self.archive}: {self.reason}"


@dataclass(frozen=True)
class ArchiveKey:
    """A passphrase, held without showing it (repr, str and pickles never carry its text
    in a readable form: it is picklable for workers, but printing it shows nothing)."""

    passphrase: bytes = field(repr=False)

    def __str__(self) -> str:
        return "ArchiveKey(****)"

    @classmethod
    def from_environment(cls, key_file: str | None = None) -> ArchiveKey | None:
        """`--key-file`, else `CFYSNAP_ARCHIVE_KEY_FILE`, else `CFYSNAP_ARCHIVE_KEY`; None
        when none is set."""
        path = key_file or os.environ.get("CFYSNAP_ARCHIVE_KEY_FILE")
        if path:
            with open(path, "rb") as f:
                text = f.read().strip()
            if not text:
                raise KeyRefused(path, "the key file is empty")
            return cls(text)
        value = os.environ.get("CFYSNAP_ARCHIVE_KEY")
        return cls(value.encode()) if value else None


def _derive(key: ArchiveKey, salt: bytes) -> bytes:
    return hashlib.scrypt(key.passphrase, salt=salt, n=2**15, r=8, p=1, maxmem=64 << 20, dklen=32)


@dataclass(frozen=True)
class Encryption:
    """The encryption of one archive: its salt and key check, and the derived key."""

    salt: bytes
    check: bytes
    derived: bytes = field(repr=False)

    @classmethod
    def new(cls, key: ArchiveKey) -> Encryption:
        salt = os.urandom(16)
        derived = _derive(key, salt)
        return cls(salt, _seal(derived, _CHECK_TEXT, b"check"), derived)

    @classmethod
    def open(cls, manifest_entry: dict[str, Any], key: ArchiveKey | None, archive: str) -> Encryption:
        """The encryption an archive's manifest describes, with `key` checked against it
        (KeyRefused: no key, an unknown scheme, or a wrong key)."""
        if manifest_entry.get("scheme") != SCHEME:
            raise KeyRefused(archive, f"credentials encrypted with an unknown scheme {manifest_entry.get('scheme')!r}")
        if key is None:
            raise KeyRefused(
                archive,
                "its credentials are encrypted; give the key (CFYSNAP_ARCHIVE_KEY, "
                "CFYSNAP_ARCHIVE_KEY_FILE or --key-file)",
            )
        try:
            salt = base64.b64decode(manifest_entry["salt"], validate=True)
            check = base64.b64decode(manifest_entry["check"], validate=True)
        except (KeyError, TypeError, ValueError):
            raise CorruptArchive("manifest.json", None, "its encryption entry is malformed") from None
        derived = _derive(key, salt)
        if _open(derived, check, b"check") != _CHECK_TEXT:
            raise KeyRefused(archive, "the key given is not the key its credentials were encrypted with")
        return cls(salt, check, derived)

    def manifest_entry(self, members: list[str]) -> dict[str, Any]:
        return {
            "scheme": SCHEME,
            "salt": base64.b64encode(self.salt).decode(),
            "check": base64.b64encode(self.check).decode(),
            "members": sorted(members),
            "agents_fields": list(SECRET_FIELDS),
        }

    def seal_member(self, name: str, data: bytes) -> bytes:
        return MEMBER_MAGIC + _seal(self.derived, data, name.encode())

    def open_member(self, name: str, data: bytes) -> bytes:
        if not data.startswith(MEMBER_MAGIC):
            raise KeyRefused(name, "not an encrypted member")
        opened = _open(self.derived, data[len(MEMBER_MAGIC):], name.encode())
        if opened is None:
            raise KeyRefused(name, "does not decrypt with the key given (altered or moved)")
        return opened

    def seal_value(self, where: str, value: Any) -> dict[str, str]:
        import json

        sealed = _seal(self.derived, json.dumps(value).encode(), where.encode())
        return {"$encrypted": base64.b64encode(sealed).decode()}

    def open_value(self, where: str, value: dict[str, str]) -> Any:
        import json

        try:
            sealed = base64.b64decode(value["$encrypted"], validate=True)
        except (KeyError, TypeError, ValueError):
            raise KeyRefused(where, "is not a valid encrypted value") from None
        opened = _open(self.derived, sealed, where.encode())
        if opened is None:
            raise KeyRefused(where, "does not decrypt with the key given (altered or moved)")
        return json.loads(opened)


def _seal(derived: bytes, data: bytes, where: bytes) -> bytes:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = os.urandom(_NONCE)
    return nonce + AESGCM(derived).encrypt(nonce, data, where)


def _open(derived: bytes, sealed: bytes, where: bytes) -> bytes | None:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    try:
        return AESGCM(derived).decrypt(sealed[:_NONCE], sealed[_NONCE:], where)
    except (InvalidTag, ValueError):
        return None


def is_encrypted_value(value: object) -> bool:
    return isinstance(value, dict) and set(value) == {"$encrypted"}


def _walk_agents(agents: object, fn: Any) -> object:
    """agents.json with `fn(path, key, value)` applied to every value of `SECRET_FIELDS`, at the
    entry level and inside `broker_config`; a new object, the input unchanged."""
    if not isinstance(agents, dict):
        return agents
    out: dict[str, Any] = {}
    for dep, nodes in agents.items():
        if not isinstance(nodes, dict):
            out[dep] = nodes
            continue
        new_nodes: dict[str, Any] = {}
        for node, instances in nodes.items():
            if not isinstance(instances, dict):
                new_nodes[node] = instances
                continue
            new_instances: dict[str, Any] = {}
            for iid, entry in instances.items():
                new_instances[iid] = _walk_entry(f"{dep}/{node}/{iid}", entry, fn)
            new_nodes[node] = new_instances
        out[dep] = new_nodes
    return out


def _walk_entry(path: str, entry: object, fn: Any) -> object:
    if not isinstance(entry, dict):
        return entry
    new = {k: (fn(f"{path}/{k}", v) if k in SECRET_FIELDS else v) for k, v in entry.items()}
    broker = new.get("broker_config")
    if isinstance(broker, dict):
        # the same associated data flat or inside broker_config: the 3.2 -> 3.3 step moves
        # the flat broker keys into broker_config, encrypted values as they are
        new["broker_config"] = {
            k: (fn(f"{path}/{k}", v) if k in SECRET_FIELDS else v) for k, v in broker.items()
        }
    return new


def encrypt_agents(agents: object, encryption: Encryption) -> object:
    return _walk_agents(agents, lambda where, v: v if is_encrypted_value(v) else encryption.seal_value(where, v))


def decrypt_agents(agents: object, encryption: Encryption) -> object:
    return _walk_agents(agents, lambda where, v: encryption.open_value(where, v) if is_encrypted_value(v) else v)
