"""``semiofed site …``: commands a hospital runs."""

from __future__ import annotations

import argparse

from . import analyze_cli, extract_cli, keygen_cli, model_pull, supernode_cli, train_cli


def register(sub: argparse._SubParsersAction) -> None:
    site = sub.add_parser(
        "site",
        help="hospital: extract keypoints, train, join the federation, analyse videos",
        description="Commands a hospital runs locally. Nothing but protected model updates leaves the site.",
    )
    cmds = site.add_subparsers(dest="site_command", metavar="COMMAND", required=True)
    extract_cli.register(cmds)
    model_pull.register(cmds)
    analyze_cli.register(cmds)
    train_cli.register(cmds)
    keygen_cli.register(cmds)
    supernode_cli.register(cmds)
