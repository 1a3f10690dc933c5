"""Credentials encrypted at rest (issue 14): `create --encrypt-credentials` seals every agent key
and every broker password and SSL key of agents.json (AES-256-GCM, key from the environment or
a key file); manifest.json says what is sealed; `inspect` shows it without the key; `convert`,
`restore` and `verify` take the key, and without it, or with another, fail before writing."""

from __future__ import annotations

import json
import os
import pickle
import stat
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from core.archive import CREDENTIALS_PREFIX, SnapshotReader
from core.crypto import (
    MEMBER_MAGIC,
    SCHEME,
    SECRET_FIELDS,
    ArchiveKey,
    Encryption,
    KeyRefused,
    decrypt_agents,
    encrypt_agents,
)
from core.search import SearchClient
from tests.conftest import es_data_lines, fresh_manager, load_small_manager

REPO = Path(__file__).resolve().parent.parent
KEY = "correct horse battery staple"


# ------------------------------------------------------------------------------ the cipher
def test_values_seal_and_open_only_where_they_belong_with_the_key() -> None:
    enc = Encryption.new(ArchiveKey(KEY.encode()))
    agents = {"d": {"vm": {"vm_1": {"broker_pass": "p@ss", "broker_config": {
        "broker_ssl_key": "-----BEGIN KEY-----", "broker_ip": "10.0.0.1"}, "ip": "10.0.0.5"}}}}
    sealed = encrypt_agents(agents, enc)
    entry = sealed["d"]["vm"]["vm_1"]  # type: ignore[index]
    assert set(entry["broker_pass"]) == {"$encrypted"} and entry["ip"] == "10.0.0.5"
    assert entry["broker_config"]["broker_ip"] == "10.0.0.1"
    assert "p@ss" not in json.dumps(sealed) and "BEGIN KEY" not in json.dumps(sealed)
    assert decrypt_agents(sealed, enc) == agents
    assert encrypt_agents(sealed, enc) == sealed  # sealed values are not sealed twice
    # the same manifest entry opens with the key, refuses another or none
    manifest_entry = enc.manifest_entry([])
    assert decrypt_agents(sealed, Encryption.open(manifest_entry, ArchiveKey(KEY.encode()), "a.zip")) == agents
    with pytest.raises(KeyRefused, match="^a.zip: the key given is not the key"):
        Encryption.open(manifest_entry, ArchiveKey(b"wrong"), "a.zip")
    with pytest.raises(KeyRefused, match="give the key"):
        Encryption.open(manifest_entry, None, "a.zip")
    # a value moved to another instance does not open: it is bound to where it belongs
    moved = {"d": {"vm": {"vm_2": sealed["d"]["vm"]["vm_1"]}}}  # type: ignore[index]
    with pytest.raises(KeyRefused, match="d/vm/vm_2/broker_pass: does not decrypt"):
        decrypt_agents(moved, enc)
    member = enc.seal_member("snapshot-credentials/d_vm/agent_key", b"KEY BYTES")
    assert member.startswith(MEMBER_MAGIC) and b"KEY BYTES" not in member
    assert enc.open_member("snapshot-credentials/d_vm/agent_key", member) == b"KEY BYTES"
    with pytest.raises(KeyRefused, match="altered or moved"):
        enc.open_member("snapshot-credentials/d_other/agent_key", member)


def test_the_key_never_shows() -> None:
    key = ArchiveKey(KEY.encode())
    assert KEY not in repr(key) and KEY not in str(key)
    enc = Encryption.new(key)
    assert enc.derived.hex() not in repr(enc)
    assert pickle.loads(pickle.dumps(key)) == key  # workers get it, printing it shows nothing


# ----------------------------------------------------------------------- on a real manager
def cli(*args: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CFYSNAP_ARCHIVE_KEY")}
    if key is not None:
        env["CFYSNAP_ARCHIVE_KEY"] = key
    return subprocess.run([sys.executable, str(REPO / "cli.py"), *args], capture_output=True,
                          text=True, cwd=REPO, env=env, timeout=600)


def secrets_of(archive: Path) -> tuple[set[str], dict[str, bytes]]:
    """The plain secrets of a plain archive: SECRET_FIELDS values of agents.json, agent keys."""
    values: set[str] = set()
    with SnapshotReader(archive) as snap:
        for _, nodes in snap.iter_agents():
            for instances in nodes.values():
                for entry in instances.values():
                    for where in (entry, entry.get("broker_config") or {}):
                        values |= {str(where[k]) for k in SECRET_FIELDS if where.get(k)}
        keys = {n: snap.open(n).read() for n in snap.file_names() if n.startswith(CREDENTIALS_PREFIX)}
    return values, keys


@pytest.fixture
def manager(search: SearchClient, tmp_path: Path) -> Path:
    """A 3.3 manager (3.3 agents.json has broker passwords and certificates) on the server."""
    return load_small_manager(search, tmp_path, events=10)


@pytest.mark.server
def test_encrypted_create_convert_restore_verify_with_the_key_and_refusals_without(
    search: SearchClient, manager: Path, tmp_path: Path
) -> None:
    plain, sealed = tmp_path / "plain.zip", tmp_path / "sealed.zip"
    base = ["--es", search.url, "--fs-root", str(manager)]
    assert cli("create", *base, "--output", str(plain)).returncode == 0
    refused = cli("create", *base, "--output", str(sealed), "--encrypt-credentials")
    assert refused.returncode == 2 and "--encrypt-credentials needs a key" in refused.stderr
    made = cli("create", *base, "--output", str(sealed), "--encrypt-credentials", key=KEY)
    assert made.returncode == 0, made.stderr

    # what is sealed, and nothing plain of it anywhere in agents.json or the key members
    secret_values, plain_keys = secrets_of(plain)
    assert secret_values and plain_keys
    with zipfile.ZipFile(sealed) as z:
        agents_bytes = z.read("agents.json")
        manifest = json.loads(z.read("manifest.json"))
        stored_keys = {n: z.read(n) for n in plain_keys}
    assert not [v for v in secret_values if v.encode() in agents_bytes]
    assert all(data.startswith(MEMBER_MAGIC) and plain_keys[n] not in data
               for n, data in stored_keys.items())
    entry = manifest["encryption"]
    assert entry["scheme"] == SCHEME and entry["members"] == sorted(plain_keys)
    assert entry["agents_fields"] == list(SECRET_FIELDS)
    assert es_data_lines(sealed) == es_data_lines(plain)
    # read with the key, the sealed archive holds what the plain one does
    with SnapshotReader(sealed, key=ArchiveKey(KEY.encode())) as snap, SnapshotReader(plain) as ref:
        assert snap.agents() == ref.agents()
        assert {n: snap.open(n).read() for n in plain_keys} == plain_keys

    # inspect and validate need no key; inspect says what is sealed
    shown = cli("inspect", str(sealed))
    assert shown.returncode == 0
    assert (f"credentials          {len(plain_keys)} agent keys, encrypted ({SCHEME}: agent keys, "
            "agents.json secrets)") in shown.stdout
    assert cli("validate", str(sealed)).returncode == 0

    # convert: refused without the key or with another, before anything is written
    out = tmp_path / "out" / "sealed-3.4.zip"
    for key, reason in ((None, "give the key"), ("wrong", "is not the key")):
        failed = cli("convert", str(sealed), str(out), "--to", "3.4", key=key)
        assert failed.returncode == 1 and reason in failed.stderr, failed.stderr
        assert len(failed.stderr.splitlines()) == 1 and not (tmp_path / "out").exists()
    converted = cli("convert", str(sealed), str(out), "--to", "3.4", key=KEY)
    assert converted.returncode == 0, converted.stderr
    plain34 = tmp_path / "plain-3.4.zip"
    assert cli("convert", str(plain), str(plain34), "--to", "3.4").returncode == 0
    with zipfile.ZipFile(out) as z:
        assert json.loads(z.read("manifest.json"))["encryption"]["salt"] == entry["salt"]
        assert {n: z.read(n) for n in plain_keys} == stored_keys  # carried as they are
        assert not [v for v in secret_values if v.encode() in z.read("agents.json")]
    with SnapshotReader(out, key=ArchiveKey(KEY.encode())) as snap, SnapshotReader(plain34) as ref:
        assert snap.agents() == ref.agents()

    # restore: refused without the key (the target as it was), then with it; verify with it
    fresh_manager(search)
    args = ["restore", str(out), "--es", search.url, "--fs-root", str(tmp_path / "target-fs"),
            "--credentials-dir", str(tmp_path / "creds")]
    failed = cli(*args)
    assert failed.returncode == 1 and "give the key" in failed.stderr
    assert not (tmp_path / "target-fs").exists() and not (tmp_path / "creds").exists()
    assert cli(*args, key="wrong").returncode == 1 and not (tmp_path / "creds").exists()
    restored = cli(*args, key=KEY)
    assert restored.returncode == 0, restored.stderr
    for name, data in plain_keys.items():
        written = tmp_path / "creds" / name[len(CREDENTIALS_PREFIX):]
        assert written.read_bytes() == data and stat.S_IMODE(written.stat().st_mode) == 0o600
    check = ["verify", str(out), "--es", search.url, "--fs-root", str(tmp_path / "target-fs"),
             "--credentials-dir", str(tmp_path / "creds")]
    assert cli(*check).returncode == 1
    verified = cli(*check, key=KEY)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    # the restored node instances carry the decrypted agents, as from the plain archive
    search.refresh()
    instances: dict[str, Any] = {h["_id"]: h["_source"] for h in search.scan("cloudify_storage", ["node_instance"])}
    agents34 = SnapshotReader(plain34).agents()
    merged = [i for d in agents34.values() for n in d.values() for i, e in n.items() if e]
    assert merged and all(
        instances[i]["runtime_properties"]["cloudify_agent"].get("broker_config")
        for i in merged
    )
