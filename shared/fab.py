"""The SemioFed Flower app bundle (FAB): its app directory, its bytes and its hash.

The app directory holds only a ``pyproject.toml``: runtime dependency installation is
disabled on the SuperLink and SuperNodes, so the components are imported from the installed
``semiofed`` package (``semiofed.server.app:app``, ``semiofed.client.app:app``) on each side.
Flower builds FABs deterministically (fixed file dates), so the coordinator, a site's
privacy officer and a running ClientApp all compute the same hash for the same bundle.
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
from pathlib import Path

from .atomic import atomic_write_text

SERVERAPP = "semiofed.server.app:app"
CLIENTAPP = "semiofed.client.app:app"
APP_ID = "@semiofed/semiofed-federation"
APP_VERSION = "0.1.0"
APP_SPEC = f"{APP_ID}=={APP_VERSION}"  # how a signed FAB is submitted (`flwr run APP_SPEC`)
_INSTALLED_PREFIX = f"{APP_ID[1:].replace('/', '.')}.{APP_VERSION}."

_TEMPLATE = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "semiofed-federation"
version = "{version}"
description = "SemioFed federated training (components come from the installed semiofed package)"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "semiofed"

[tool.flwr.app.components]
serverapp = "{serverapp}"
clientapp = "{clientapp}"

[tool.flwr.app.config]
semiofed = ""  # base64 JSON run payload, see semiofed.shared.run_config.encode_payload
"""


def write_app_dir(path: Path, serverapp: str = SERVERAPP, clientapp: str = CLIENTAPP) -> Path:
    """Write the app directory at ``path`` and return it."""
    path.mkdir(parents=True, exist_ok=True)
    text = _TEMPLATE.format(serverapp=serverapp, clientapp=clientapp, version=APP_VERSION)
    atomic_write_text(path / "pyproject.toml", text)
    return path


def build_fab(app_dir: Path | None = None) -> bytes:
    """The FAB bytes of ``app_dir`` (default: the SemioFed app), built as ``flwr run`` does."""
    from flwr.cli.build import build_fab_from_disk

    if app_dir is not None:
        return build_fab_from_disk(Path(app_dir))
    with tempfile.TemporaryDirectory(prefix="semiofed-fab-") as tmp:
        return build_fab_from_disk(write_app_dir(Path(tmp) / "app"))


def fab_hash(fab: bytes) -> str:
    """sha256 of the FAB bytes (Flower's FAB hash)."""
    return hashlib.sha256(fab).hexdigest()


def running_fab_hash() -> str | None:
    """The hash of the FAB this process runs, rebuilt from the folder Flower installed it in
    (first on ``sys.path``); ``None`` outside a deployment (simulation, tests)."""
    for entry in sys.path:
        folder = Path(entry)
        if (
            folder.parent.name == "apps"
            and folder.name.startswith(_INSTALLED_PREFIX)
            and (folder / "pyproject.toml").is_file()
        ):
            return fab_hash(build_fab(folder))
    return None


def signer_id(public_line: str) -> str:
    """The trusted-entity id of an OpenSSH Ed25519 public key line (``fpk_`` + 16 hex of the
    sha256 of its key blob)."""
    parts = public_line.split()
    blob = parts[1].encode() if len(parts) > 1 else b""
    return "fpk_" + hashlib.sha256(blob).hexdigest()[:16]
