"""The ``semiofed`` console command.

Role subcommands are contributed by each code folder through the ``semiofed.commands``
entry-point group (see pyproject.toml): ``site`` (client/), ``server``, ``registry`` and
``demo`` (server/), ``audit`` (privacy/). Discovery by entry point keeps shared/ free of
imports from the other folders.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points
from typing import NoReturn

from .errors import SemioFedError

DESCRIPTION = """\
SemioFed: federated, privacy-preserving analysis of seizure videos.
No video, keypoint or patient record leaves a hospital; sites train a
multi-stream seizure model with patient-level differential privacy and a
coordinator aggregates the protected updates with Flower.

Roles:
  site      hospital: extract keypoints, train, join the federation, analyse videos
  server    coordinator: certificates, the Flower ServerApp, simulation
  registry  coordinator: signed, versioned models with model cards
  audit     privacy officer: ε checks, approvals, audit trail, reports
Tools:
  synth     generate the synthetic seizure consortium (no real patient data)
  eval      score events files (SzCORE event scoring)
  demo      run the whole consortium on this machine (what `make demo` runs)
"""


class OneLineParser(argparse.ArgumentParser):
    """Command-line mistakes are one line naming the argument (exit 2); ``--help`` shows usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="semiofed",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    from . import cli_tools

    cli_tools.register(sub)
    for ep in sorted(entry_points(group="semiofed.commands"), key=lambda e: e.name):
        ep.load()(sub)
    return parser


def configure_logging(verbose: bool) -> None:
    """INFO (DEBUG with ``-v``) on stderr. The level is set on the handler too: libraries that
    set their own loggers to DEBUG (flwr, alembic) propagate every record to it."""
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.setLevel(level)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    # `kill PID` (a service manager, a container stop) ends a command like Ctrl-C does, so
    # its cleanup (temporary files, processes it started) runs
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return int(args.func(args) or 0)
    except SemioFedError as exc:
        print(f"semiofed: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file system refusal (disk full, permissions): name the path
        if args.verbose:
            raise
        where = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
        print(f"semiofed: error: {where or 'I/O'}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("semiofed: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
