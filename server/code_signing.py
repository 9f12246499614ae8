"""The coordinator signs the FAB; each site's SuperNode runs only FABs its officer's trusted
signers signed (Flower's ``flower-supernode --trusted-entities``).

Flower 1.42 verifies FABs with the verification records a Flower Hub returns for an app
(``POST /hub/fetch-fab`` → ``fab_url`` and ``verifications``: ``public_key_id``,
``signature``, ``signed_at``), signed as ``flwr app review`` signs: Ed25519 over the 8-byte
big-endian ``signed_at`` followed by sha256 of the FAB. A FAB submitted from a local folder
carries no verification, and a SuperNode with trusted entities refuses it. So
:class:`AppIndex` answers that Hub request on 127.0.0.1, for the one signed FAB, while a run
is submitted as ``flwr run @semiofed/semiofed-federation==0.1.0``; the SuperLink is started
with ``FLWR_SUPERGRID_API_URL`` pointing at it. No network beyond 127.0.0.1 is used.

Key files (OpenSSH Ed25519): ``CERTS/fab-signing.key`` (stays with the coordinator) and
``CERTS/fab-signing.pub`` (its public key, given to every site's privacy officer).
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from semiofed.shared.atomic import atomic_write_bytes
from semiofed.shared.errors import SemioFedError
from semiofed.shared.fab import APP_ID, APP_VERSION, fab_hash, signer_id

INDEX_URL_ENV = "FLWR_SUPERGRID_API_URL"  # where Flower's SuperLink asks for a Hub app
DEFAULT_INDEX_PORT = 9095


def index_url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def write_signing_key(private_path: Path, public_path: Path) -> None:
    """A new Ed25519 FAB-signing key pair (OpenSSH private key 0600, public line)."""
    if private_path.exists():
        raise SemioFedError(f"{private_path}: a signing key already exists; refusing to replace it")
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    atomic_write_bytes(private_path, private)
    private_path.chmod(0o600)
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    atomic_write_bytes(public_path, public + b" semiofed-fab-signing\n")


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise SemioFedError(f"{path}: cannot load the FAB signing key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SemioFedError(f"{path}: not an Ed25519 key")
    return key


def sign_fab(fab: bytes, key: Ed25519PrivateKey) -> dict[str, Any]:
    """One Flower verification record for ``fab`` (as ``flwr app review`` signs)."""
    from flwr.supercore.primitives.asymmetric_ed25519 import create_message_to_sign

    signed_at = int(time.time())
    signature = key.sign(create_message_to_sign(hashlib.sha256(fab).digest(), signed_at))
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return {
        "public_key_id": signer_id(public.decode()),
        "signature": base64.urlsafe_b64encode(signature).rstrip(b"=").decode("ascii"),
        "signed_at": signed_at,
    }


class AppIndex:
    """Answers Flower's Hub request for the SemioFed app with ``fab`` and ``verifications``
    on 127.0.0.1:``port``, while used as a context manager."""

    def __init__(self, port: int, fab: bytes, verifications: list[dict[str, Any]]) -> None:
        self.fab, self.verifications = fab, verifications
        index = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                if (
                    self.path != "/hub/fetch-fab"
                    or body.get("app_id") != APP_ID
                    or body.get("app_version") not in (None, APP_VERSION)
                ):
                    self._send(404, b'{"detail": "unknown app"}', "application/json")
                    return
                doc = {
                    "fab_url": f"{index_url(port)}/fab/{fab_hash(index.fab)}",
                    "verifications": index.verifications,
                }
                self._send(200, json.dumps(doc).encode(), "application/json")

            def do_GET(self) -> None:
                if self.path != f"/fab/{fab_hash(index.fab)}":
                    self._send(404, b"", "text/plain")
                    return
                self._send(200, index.fab, "application/octet-stream")

            def _send(self, code: int, data: bytes, kind: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:  # quiet
                return

        try:
            self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        except OSError as exc:
            raise SemioFedError(
                f"cannot serve the signed FAB on 127.0.0.1:{port} ({exc})"
            ) from None
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> AppIndex:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
