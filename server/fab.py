"""The Flower app directory ``flwr run`` builds into a FAB.

It holds only a ``pyproject.toml``: runtime dependency installation is disabled on the
SuperLink and SuperNodes, so the components are imported from the installed ``semiofed``
package (``semiofed.server.app:app``, ``semiofed.client.app:app``) on each side.
"""

from __future__ import annotations

from pathlib import Path

from semiofed.shared.atomic import atomic_write_text

SERVERAPP = "semiofed.server.app:app"
CLIENTAPP = "semiofed.client.app:app"

_TEMPLATE = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "semiofed-federation"
version = "0.1.0"
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
    text = _TEMPLATE.format(serverapp=serverapp, clientapp=clientapp)
    atomic_write_text(path / "pyproject.toml", text)
    return path
