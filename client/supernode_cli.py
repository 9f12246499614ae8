"""``semiofed site supernode``: this hospital's Flower SuperNode, in the foreground.

A thin wrapper: it checks the site's files and replaces itself by the ``flower-supernode``
command line of :func:`semiofed.shared.flower_commands.supernode_command` (the one the local
consortium and ``docker-compose.yml`` use).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from semiofed.privacy.approval import TRUSTED_ENTITIES_FILE, trusted_signers_file
from semiofed.shared.errors import SemioFedError
from semiofed.shared.flower_commands import (
    flower_env,
    split_address,
    start_flower,
    supernode_command,
)

DEFAULT_PORT = 9094

DESCRIPTION = """\
Join the federation: start this hospital's Flower SuperNode in the foreground. It connects
out to the coordinator's SuperLink (--superlink; no inbound port is opened at the site),
verifies it with the consortium CA (--ca) and authenticates with this site's own private key
(--key, from `semiofed site keygen`; only its .pub went to the coordinator). It runs only a
FAB (the app bundle) signed by a signer the site's privacy officer trusts: --trusted-entities,
by default STATE/trusted_entities.yaml, which `semiofed audit approve --signer` writes; an
unsigned FAB or one signed by another key is refused by Flower before any code runs. For
every round it runs the SemioFed ClientApp, which reads the recordings in --data and keeps
the privacy ledger, approvals, audit trail and outbox in --state. Nothing but protected
model updates leaves the site, and only for the exact run configuration and FAB the site's
privacy officer approved, before the approval expires (`semiofed audit approve`).

Runtime dependency installation stays disabled (Flower's default for SuperNodes) and
Flower telemetry is off. --port is the SuperNode's local ClientApp API on 127.0.0.1.

The command it runs (then exits with flower-supernode's exit code):
  flower-supernode --superlink HOST:PORT --root-certificates CA.crt
    --auth-supernode-private-key SITE.key --trusted-entities STATE/trusted_entities.yaml
    --port PORT
    --node-config 'site-name="SITE" data-dir="DATA" state-dir="STATE"'

examples:
  semiofed site supernode --superlink coordinator.example.org:8000 --ca ca.crt \\
      --key site-01.key --data data/site-01 --state state --name site-01
"""


def register(cmds: argparse._SubParsersAction) -> None:
    p = cmds.add_parser(
        "supernode",
        help="join the federation: start this site's Flower SuperNode (TLS + authentication)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--superlink", required=True, metavar="HOST:PORT", help="the coordinator's SuperLink"
    )
    p.add_argument(
        "--ca",
        type=Path,
        metavar="CA.crt",
        help="consortium CA certificate (ca.crt from the coordinator); required unless --insecure",
    )
    p.add_argument(
        "--key",
        type=Path,
        metavar="SITE.key",
        help="this site's SuperNode private key (never leaves the site); required unless --insecure",
    )
    p.add_argument(
        "--trusted-entities",
        type=Path,
        metavar="YAML",
        help="FAB signers this SuperNode trusts (default STATE/trusted_entities.yaml, written "
        "by the officer's `semiofed audit approve --signer`)",
    )
    p.add_argument(
        "--data",
        type=Path,
        required=True,
        metavar="DIR",
        help="site folder: one sub-folder per patient",
    )
    p.add_argument(
        "--state",
        type=Path,
        required=True,
        metavar="DIR",
        help="site state folder: privacy ledger, approvals, audit trail, outbox (created)",
    )
    p.add_argument("--name", required=True, metavar="SITE", help="site name, e.g. site-01")
    p.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"local ClientApp API port on 127.0.0.1 (default {DEFAULT_PORT})",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="DEBUGGING ONLY: no TLS, no authentication (the SuperLink must be --insecure too)",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="print the command line instead of running it"
    )
    p.set_defaults(func=cmd_supernode)


def _require_file(path: Path | None, flag: str, what: str) -> Path:
    if path is None:
        raise SemioFedError(f"{flag} is required: {what} (or --insecure for debugging)")
    if not path.is_file():
        raise SemioFedError(f"{path}: missing {what} ({flag})")
    return path.resolve()


def build(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """The SuperNode's command line and environment for ``args`` (checks the site's files)."""
    split_address(args.superlink)
    name = args.name
    if not name or "/" in name or name.startswith("."):
        raise SemioFedError(f"invalid site name {name!r}")
    state = Path(args.state).resolve()
    trusted = args.trusted_entities or state / TRUSTED_ENTITIES_FILE
    if args.insecure:
        ca = key = None
        trusted = trusted.resolve() if trusted.is_file() else None
    else:
        ca = _require_file(args.ca, "--ca", "consortium CA certificate")
        key = _require_file(args.key, "--key", f"SuperNode private key of {name}")
        trusted = trusted_signers_file(trusted.resolve())
    data = Path(args.data)
    if not data.is_dir():
        raise SemioFedError(f"{data}: no such site data folder (--data)")
    cmd = supernode_command(
        superlink=args.superlink,
        port=args.port,
        site_name=name,
        data_dir=data.resolve(),
        state_dir=state,
        ca_cert=ca,
        auth_key=key,
        trusted_entities=trusted,
        insecure=args.insecure,
    )
    return cmd, flower_env(state / "flwr-home")


def cmd_supernode(args: argparse.Namespace) -> int:
    cmd, env = build(args)
    return start_flower(cmd, env, insecure=args.insecure, dry_run=args.dry_run)
