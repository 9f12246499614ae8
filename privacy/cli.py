"""``semiofed audit …``: the privacy officer's commands."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    audit = sub.add_parser(
        "audit",
        help="privacy officer: ε checks, approvals, audit trail, reports",
        description="Privacy officer's toolkit: independent ε checks, configuration approval, audit trail.",
    )
    cmds = audit.add_subparsers(dest="audit_command", metavar="COMMAND", required=True)
    from . import epsilon_cli

    epsilon_cli.register(cmds)
    from . import audit_cli

    audit_cli.register(cmds)
