"""``semiofed server superlink``: the coordinator's Flower SuperLink, in the foreground.

A thin wrapper: it checks the consortium certificates and replaces itself by the
``flower-superlink`` command line of :func:`semiofed.shared.flower_commands.superlink_command`
(the one the local consortium and ``docker-compose.yml`` use).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from semiofed.shared.errors import SemioFedError
from semiofed.shared.flower_commands import flower_env, start_flower, superlink_command

from .certs import ConsortiumPaths
from .code_signing import DEFAULT_INDEX_PORT, INDEX_URL_ENV, index_url

DEFAULT_PORT = 8000

DESCRIPTION = """\
Start the consortium's Flower SuperLink in the foreground (one per consortium, at the
coordinator). Each hospital's SuperNode connects to it; every run submitted with
`semiofed server run` executes its ServerApp here (so the run directory, --out, is on
this host).

Secure by default: TLS with CERTS/superlink.crt and CERTS/superlink.key (signed by
CERTS/ca.crt, all from `semiofed server init`) and SuperNode authentication: only a
SuperNode whose public key was registered (`flwr supernode register CERTS/supernodes/SITE.pub`)
may join. Runtime dependency installation is disabled: ServerApps run with the packages of
this installation. The database (registered SuperNodes, runs) is STATE/superlink.db; Flower's
own files go to STATE/flwr-home. The SuperLink serves SuperNodes and the `flwr` CLI on --port.

Signed code: the SuperLink fetches each run's FAB and its signature from
http://127.0.0.1:APP_INDEX_PORT (FLWR_SUPERGRID_API_URL), which `semiofed server run`
(on this host) serves while it submits the run; sites run only FABs signed by a key their
privacy officer trusts.

The command it runs (then exits with flower-superlink's exit code):
  flower-superlink --ssl-ca-certfile CERTS/ca.crt --ssl-certfile CERTS/superlink.crt
    --ssl-keyfile CERTS/superlink.key --enable-supernode-auth
    --disable-runtime-dependency-installation --host HOST --port PORT
    --database STATE/superlink.db

examples:
  semiofed server superlink --certs certs --state superlink-state
  semiofed server superlink --certs certs --state superlink-state --port 8000 --dry-run
"""


def register(cmds: argparse._SubParsersAction) -> None:
    p = cmds.add_parser(
        "superlink",
        help="start the Flower SuperLink (TLS + SuperNode authentication) in the foreground",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--certs",
        type=Path,
        metavar="CERTS",
        help="consortium certificate folder from `semiofed server init` (ca.crt, superlink.crt, "
        "superlink.key); required unless --insecure",
    )
    p.add_argument(
        "--state",
        type=Path,
        required=True,
        metavar="DIR",
        help="SuperLink state folder: superlink.db and flwr-home/ (created; keep it across restarts)",
    )
    p.add_argument(
        "--host",
        default="0.0.0.0",
        help="address to listen on (default 0.0.0.0: every interface, so SuperNodes can reach it)",
    )
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument(
        "--app-index-port",
        type=int,
        default=DEFAULT_INDEX_PORT,
        help="127.0.0.1 port where `semiofed server run` serves the signed FAB "
        f"(default {DEFAULT_INDEX_PORT})",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="DEBUGGING ONLY: no TLS and no SuperNode authentication (anyone may join)",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="print the command line instead of running it"
    )
    p.set_defaults(func=cmd_superlink)


def build(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """The SuperLink's command line and environment for ``args`` (checks the certificates)."""
    state = Path(args.state).resolve()
    if args.insecure:
        certs = None
    else:
        if args.certs is None:
            raise SemioFedError("--certs CERTS is required (or --insecure for debugging)")
        certs = ConsortiumPaths(Path(args.certs).resolve())
        certs.require()  # names the missing file
    cmd = superlink_command(
        host=args.host,
        port=args.port,
        database=state / "superlink.db",
        ca_cert=certs.ca_cert if certs else None,
        certfile=certs.superlink_cert if certs else None,
        keyfile=certs.superlink_key if certs else None,
        insecure=certs is None,
    )
    env = flower_env(state / "flwr-home")
    env[INDEX_URL_ENV] = index_url(args.app_index_port)
    return cmd, env


def cmd_superlink(args: argparse.Namespace) -> int:
    cmd, env = build(args)
    return start_flower(cmd, env, insecure=args.insecure, dry_run=args.dry_run)
