"""TLS and auth to the search server (issue 14), against the real Elasticsearch 1.7 behind a real
TLS-terminating proxy: nginx from Debian's packages (`scripts/tls-proxy fetch`), started by these
tests with a CA, a server certificate and a client certificate they make, checking basic auth, an
API key, or a client certificate. A refused credential or certificate is one line naming the
server, never a secret."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from core.model import Version
from core.search import SearchClient
from pipelines.sample.generate import ManagerSpec
from pipelines.sample.load import load_manager
from tests.conftest import configured_url, es_data_lines, fresh_manager, load_small_manager, wipe

REPO = Path(__file__).resolve().parent.parent
PASSWORD = "Pr0xy-s3cret-pass"
API_KEY = base64.b64encode(b"key-id:Ap1-k3y-s3cret").decode()
SECRETS = (PASSWORD, API_KEY, "Ap1-k3y-s3cret")


# ---------------------------------------------------------------------------- certificates
def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None,
          issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool = False,
          server: bool = False) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                         x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None = None) -> None:
    path.with_suffix(".pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        key_path = path.with_suffix(".key")
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        key_path.chmod(0o600)


# ----------------------------------------------------------------------------------- nginx
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Proxy:
    """nginx in front of the real server: `basic` checks basic auth, `api_key` an API key,
    `mutual` a client certificate; `dir` holds ca.pem, client.pem/key, other-ca.pem."""

    basic: str
    api_key: str
    mutual: str
    dir: Path


NGINX_CONF = """
{user}
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {dir}/tmp/body; proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi; uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    client_max_body_size 0;
    ssl_certificate {dir}/server.pem; ssl_certificate_key {dir}/server.key;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Authorization "";
    server {{
        listen 127.0.0.1:{basic} ssl;
        location / {{ auth_basic "search"; auth_basic_user_file {dir}/htpasswd;
                      proxy_pass {upstream}; }}
    }}
    server {{
        listen 127.0.0.1:{api_key} ssl;
        location / {{
            if ($http_authorization != "ApiKey {key}") {{ return 401; }}
            proxy_pass {upstream};
        }}
    }}
    server {{
        listen 127.0.0.1:{mutual} ssl;
        ssl_client_certificate {dir}/ca.pem; ssl_verify_client on;
        location / {{ proxy_pass {upstream}; }}
    }}
}}
"""


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    """nginx started for these tests (fetched by `scripts/tls-proxy fetch`), stopped after."""
    fetched = subprocess.run([str(REPO / "scripts" / "tls-proxy"), "fetch"], capture_output=True,
                             text=True)
    if fetched.returncode != 0:
        pytest.fail(f"scripts/tls-proxy fetch failed: {fetched.stderr.strip()}", pytrace=False)
    nginx = fetched.stdout.strip().splitlines()[-1]
    folder = tmp_path_factory.mktemp("tls")
    ca_key, other_key = _key(), _key()
    ca = _cert("cfysnap test CA", ca_key, None, ca_key, ca=True)
    _write(folder / "ca", ca)
    _write(folder / "other-ca", _cert("another CA", other_key, None, other_key, ca=True))
    server_key, client_key = _key(), _key()
    _write(folder / "server", _cert("localhost", server_key, ca, ca_key, server=True), server_key)
    _write(folder / "client", _cert("cfysnap client", client_key, ca, ca_key), client_key)
    (folder / "htpasswd").write_text(f"cfysnap:{{PLAIN}}{PASSWORD}\n")
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (folder / "tmp" / sub).mkdir(parents=True)
    ports = {"basic": _free_port(), "api_key": _free_port(), "mutual": _free_port()}
    upstream = configured_url().rstrip("/")
    (folder / "nginx.conf").write_text(
        NGINX_CONF.format(
            dir=folder, upstream=upstream, key=API_KEY, **ports,
            # as root nginx would run its workers as nobody, who cannot enter pytest's folders
            user="user root;" if os.geteuid() == 0 else "",
        )
    )
    process = subprocess.Popen(
        [nginx, "-p", str(folder), "-c", str(folder / "nginx.conf"), "-e", str(folder / "error.log"),
         "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", ports["mutual"]), timeout=1):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    err = process.stderr.read().decode() if process.stderr else ""
                    log = (folder / "error.log").read_text() if (folder / "error.log").exists() else ""
                    pytest.fail(f"nginx did not start: {err} {log}", pytrace=False)
                time.sleep(0.1)
        yield Proxy(*(f"https://127.0.0.1:{ports[k]}" for k in ("basic", "api_key", "mutual")),
                    folder)
    finally:
        process.terminate()
        process.wait(timeout=20)


# ------------------------------------------------------------------------------------ tests
def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CFYSNAP_ES_")}
    return subprocess.run([sys.executable, str(REPO / "cli.py"), *args], capture_output=True,
                          text=True, cwd=REPO, env={**clean, **env}, timeout=600)


def no_secret(result: subprocess.CompletedProcess[str]) -> None:
    for secret in SECRETS:
        assert secret not in result.stdout and secret not in result.stderr


@pytest.fixture(scope="module")
def manager(tmp_path_factory: pytest.TempPathFactory, proxy: Proxy) -> Path:
    """A small 3.3 manager on the real server (reached directly), its file-server root."""
    with SearchClient(configured_url()) as client:
        return load_small_manager(client, tmp_path_factory.mktemp("manager"), events=10)


@pytest.mark.server
def test_basic_auth_over_tls_with_a_ca_gives_the_same_snapshot_and_restores(
    proxy: Proxy, manager: Path, tmp_path: Path
) -> None:
    direct = tmp_path / "direct.zip"
    assert cli("create", "--es", configured_url(), "--fs-root", str(manager),
               "--output", str(direct)).returncode == 0
    over_tls = tmp_path / "tls.zip"
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD + "\n")
    made = cli("create", "--es", proxy.basic, "--ca-cert", str(proxy.dir / "ca.pem"),
               "--fs-root", str(manager), "--output", str(over_tls),
               CFYSNAP_ES_USER="cfysnap", CFYSNAP_ES_PASSWORD_FILE=str(password_file))
    assert made.returncode == 0, made.stderr
    no_secret(made)
    assert es_data_lines(over_tls) == es_data_lines(direct)

    # restore over TLS into a fresh manager, verify over TLS
    with SearchClient(configured_url()) as client:
        fresh_manager(client, Version.V3_4)
    common = ["--es", proxy.basic, "--ca-cert", str(proxy.dir / "ca.pem"),
              "--fs-root", str(tmp_path / "fs"), "--credentials-dir", str(tmp_path / "creds")]
    restored = cli("restore", str(over_tls), *common, CFYSNAP_ES_USER="cfysnap",
                   CFYSNAP_ES_PASSWORD=PASSWORD)
    assert restored.returncode == 0, restored.stderr
    verified = cli("verify", str(over_tls), *common, CFYSNAP_ES_USER="cfysnap",
                   CFYSNAP_ES_PASSWORD=PASSWORD)
    assert verified.returncode == 0, verified.stdout
    no_secret(restored)
    no_secret(verified)


@pytest.mark.server
def test_a_wrong_password_is_one_line_naming_the_server_not_the_secret(
    proxy: Proxy, manager: Path, tmp_path: Path
) -> None:
    refused = cli("create", "--es", proxy.basic, "--ca-cert", str(proxy.dir / "ca.pem"),
                  "--fs-root", str(manager), "--output", str(tmp_path / "x.zip"),
                  CFYSNAP_ES_USER="cfysnap", CFYSNAP_ES_PASSWORD="not-" + PASSWORD)
    assert refused.returncode == 1
    assert refused.stderr.splitlines() == [
        f"error: search server {proxy.basic}: GET /: HTTP 401: authentication refused (check the "
        "credentials given for it) (credentials come from CFYSNAP_ES_USER with CFYSNAP_ES_PASSWORD"
        " or CFYSNAP_ES_PASSWORD_FILE, or CFYSNAP_ES_API_KEY or CFYSNAP_ES_API_KEY_FILE)"
    ]
    assert "not-" + PASSWORD not in refused.stderr
    assert not (tmp_path / "x.zip").exists()


@pytest.mark.server
def test_certificates_are_checked_unless_insecure(proxy: Proxy, manager: Path, tmp_path: Path) -> None:
    auth = {"CFYSNAP_ES_USER": "cfysnap", "CFYSNAP_ES_PASSWORD": PASSWORD}
    out = ["--fs-root", str(manager), "--output", str(tmp_path / "x.zip")]
    unknown = cli("create", "--es", proxy.basic, *out, **auth)
    assert unknown.returncode == 1
    assert unknown.stderr.splitlines() == [
        f"error: search server {proxy.basic}: TLS failed: [SSL: CERTIFICATE_VERIFY_FAILED] "
        "certificate verify failed: unable to get local issuer certificate (give its CA with "
        "--ca-cert, or --insecure not to check it)"
    ]
    wrong_ca = cli("create", "--es", proxy.basic, "--ca-cert", str(proxy.dir / "other-ca.pem"),
                   *out, **auth)
    assert wrong_ca.returncode == 1 and wrong_ca.stderr == unknown.stderr  # the same refusal
    insecure = cli("create", "--es", proxy.basic, "--insecure", "--fs-root", str(manager),
                   "--output", str(tmp_path / "insecure.zip"), **auth)
    assert insecure.returncode == 0, insecure.stderr


@pytest.mark.server
def test_an_api_key_from_a_file_and_a_refused_one(proxy: Proxy, manager: Path, tmp_path: Path) -> None:
    key_file = tmp_path / "api-key"
    key_file.write_text(API_KEY + "\n")
    made = cli("create", "--es", proxy.api_key, "--ca-cert", str(proxy.dir / "ca.pem"),
               "--fs-root", str(manager), "--output", str(tmp_path / "k.zip"),
               CFYSNAP_ES_API_KEY_FILE=str(key_file))
    assert made.returncode == 0, made.stderr
    wrong = cli("create", "--es", proxy.api_key, "--ca-cert", str(proxy.dir / "ca.pem"),
                "--fs-root", str(manager), "--output", str(tmp_path / "w.zip"),
                CFYSNAP_ES_API_KEY="d3Jvbmc6a2V5")
    assert wrong.returncode == 1 and len(wrong.stderr.splitlines()) == 1
    assert wrong.stderr.startswith(f"error: search server {proxy.api_key}: GET /: HTTP 401: "
                                   "authentication refused")
    assert "d3Jvbmc6a2V5" not in wrong.stderr
    no_secret(made)


@pytest.mark.server
def test_a_client_certificate_when_the_server_asks_for_one(
    proxy: Proxy, manager: Path, tmp_path: Path
) -> None:
    ca = ["--ca-cert", str(proxy.dir / "ca.pem")]
    without = cli("create", "--es", proxy.mutual, *ca, "--fs-root", str(manager),
                  "--output", str(tmp_path / "no.zip"))
    assert without.returncode == 1 and len(without.stderr.splitlines()) == 1
    assert without.stderr.splitlines() == [
        f"error: search server {proxy.mutual}: GET /: HTTP 400 400 No required SSL certificate "
        "was sent"
    ]
    made = cli("create", "--es", proxy.mutual, *ca, "--client-cert", str(proxy.dir / "client.pem"),
               "--client-key", str(proxy.dir / "client.key"), "--fs-root", str(manager),
               "--output", str(tmp_path / "mutual.zip"))
    assert made.returncode == 0, made.stderr


# ------------------------------------------------------------------------- no secret shown
ARCHIVE_KEY = "Arch1ve-k3y-s3cret"


@pytest.mark.server
@pytest.mark.parametrize("debug", [False, True], ids=["plain", "debug"])
def test_no_secret_in_any_output_of_a_whole_migration(
    proxy: Proxy, manager: Path, tmp_path: Path, debug: bool
) -> None:
    """create -> convert -> restore -> verify over TLS with basic auth and encrypted credentials;
    stdout, stderr and every journal file hold no password, key or secret of the snapshot."""
    flags = ["--debug"] if debug else []
    auth = {"CFYSNAP_ES_USER": "cfysnap", "CFYSNAP_ES_PASSWORD": PASSWORD,
            "CFYSNAP_ARCHIVE_KEY": ARCHIVE_KEY}
    tls = ["--es", proxy.basic, "--ca-cert", str(proxy.dir / "ca.pem")]
    sealed, converted = tmp_path / "sealed.zip", tmp_path / "sealed-3.4.zip"
    with SearchClient(configured_url()) as client:
        wipe(client)
        spec = replace(ManagerSpec(version=Version.V3_3, events=10, logs=10),
                       keys_dir=str(tmp_path / "keys"))
        load_manager(spec, client, tmp_path / "manager")
    runs = [cli(*flags, "create", *tls, "--fs-root", str(tmp_path / "manager"), "--output",
                str(sealed), "--encrypt-credentials", **auth)]
    runs.append(cli(*flags, "convert", str(sealed), str(converted), "--to", "3.4", **auth))
    with SearchClient(configured_url()) as client:
        fresh_manager(client, Version.V3_4)
    target = [*tls, "--fs-root", str(tmp_path / "fs"), "--credentials-dir", str(tmp_path / "creds")]
    runs.append(cli(*flags, "restore", str(converted), *target, **auth))
    runs.append(cli(*flags, "verify", str(converted), *target, **auth))
    assert [r.returncode for r in runs] == [0, 0, 0, 0], [r.stderr[-2000:] for r in runs]

    # every secret the migration handled: the proxy's password, the archive key, every broker
    # password, certificate and key of agents.json, every agent key
    from core.archive import SnapshotReader
    from core.crypto import SECRET_FIELDS, ArchiveKey
    secrets = {PASSWORD, ARCHIVE_KEY}
    with SnapshotReader(sealed, key=ArchiveKey(ARCHIVE_KEY.encode())) as snap:
        for _, nodes in snap.iter_agents():
            for instances in nodes.values():
                for entry in instances.values():
                    for where in (entry, entry.get("broker_config") or {}):
                        secrets |= {str(where[k]) for k in SECRET_FIELDS if where.get(k)}
    key_lines = {line for key in (tmp_path / "keys").rglob("*") if key.is_file()
                 for line in key.read_text().splitlines() if len(line) > 20}
    assert len(secrets) > 2 and key_lines
    outputs = [r.stdout + r.stderr for r in runs]
    journals = [p.read_text() for p in (tmp_path / "fs" / ".cfysnap").rglob("*.json")]
    assert journals and (not debug or any("DEBUG" in o for o in outputs))
    for text in outputs + journals:
        for secret in secrets | key_lines:
            assert secret not in text, f"a secret in the output: {secret[:4]}…"
