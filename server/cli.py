"""``semiofed server …``, ``semiofed registry …`` and ``semiofed demo``: coordinator commands."""

from __future__ import annotations

import argparse

from . import federation_cli, registry_cli


def register(sub: argparse._SubParsersAction) -> None:
    server = sub.add_parser(
        "server",
        help="coordinator: certificates, the Flower ServerApp, simulation",
        description="Commands the consortium coordinator runs.",
    )
    federation_cli.register_server(
        server.add_subparsers(dest="server_command", metavar="COMMAND", required=True)
    )
    federation_cli.register_demo(sub)
    registry = sub.add_parser(
        "registry",
        help="coordinator: signed, versioned models with model cards",
        description="The model registry: publish, serve and manage access tokens.",
    )
    registry_cli.register(
        registry.add_subparsers(dest="registry_command", metavar="COMMAND", required=True)
    )
