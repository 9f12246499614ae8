"""``semiofed site keygen``: this hospital's SuperNode key pair, made at the site.

The private key never leaves the site; only the ``.pub`` file goes to the coordinator, who
registers it (``semiofed server add-site`` then ``semiofed server register``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from semiofed.shared.atomic import atomic_write_bytes
from semiofed.shared.cli_paths import out_folder
from semiofed.shared.errors import SemioFedError


def write_supernode_keypair(private_path: Path, public_path: Path) -> None:
    """An ECDSA P-384 SuperNode auth key pair (OpenSSH private key 0600, public line);
    refuses to overwrite an existing private key."""
    if private_path.exists():
        raise SemioFedError(
            f"{private_path}: a SuperNode key already exists; refusing to replace it"
        )
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    private_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(private_path, private)
    private_path.chmod(0o600)
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    atomic_write_bytes(public_path, public + b"\n")


def site_key_paths(folder: Path, name: str) -> tuple[Path, Path]:
    """``FOLDER/NAME.key`` (stays at the site) and ``FOLDER/NAME.pub`` (to the coordinator)."""
    return folder / f"{name}.key", folder / f"{name}.pub"


def register(cmds: argparse._SubParsersAction) -> None:
    p = cmds.add_parser(
        "keygen",
        help="make this site's SuperNode key pair; send only the .pub to the coordinator",
        description=(
            "Create OUT/SITE.key (this SuperNode's private key, mode 0600; it never leaves "
            "the site) and OUT/SITE.pub (its public key: send only this file to the "
            "coordinator, who registers it)."
        ),
    )
    p.add_argument("--out", type=out_folder, required=True, metavar="DIR", help="key folder")
    p.add_argument("--name", required=True, metavar="SITE", help="site name, e.g. site-01")
    p.set_defaults(func=_keygen)


def _keygen(args: argparse.Namespace) -> int:
    name = args.name
    if not name or "/" in name or name.startswith("."):
        raise SemioFedError(f"invalid site name {name!r}")
    private, public = site_key_paths(args.out, name)
    write_supernode_keypair(private, public)
    print(
        f"private key: {private} (keep at the site)\npublic key:  {public} (send to the coordinator)"
    )
    return 0
