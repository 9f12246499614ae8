"""``semiofed server …``, ``semiofed registry …`` and ``semiofed demo``: coordinator commands."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    server = sub.add_parser(
        "server",
        help="coordinator: certificates, the Flower ServerApp, simulation",
        description="Commands the consortium coordinator runs.",
    )
    server.add_subparsers(dest="server_command", metavar="COMMAND", required=True)
    registry = sub.add_parser(
        "registry",
        help="coordinator: signed, versioned models with model cards",
        description="The model registry: publish, serve and manage access tokens.",
    )
    registry.add_subparsers(dest="registry_command", metavar="COMMAND", required=True)
