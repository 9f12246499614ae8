"""``semiofed eval events``: SzCORE event scoring of two events.tsv files."""

from __future__ import annotations

import argparse
import json
import math

from .errors import SemioFedError
from .events import read_events
from .metrics import score_events

DESCRIPTION = """\
Score a hypothesis events.tsv against a reference events.tsv with SzCORE's event scoring
(the `timescoring` package, default parameters: 30 s tolerance before and 60 s after an
event, any overlap counts, events < 90 s apart merged, events > 5 min split). Every
non-background event (any seizure type, and pnes) counts as an event; types are not compared.

Prints SzCORE event sensitivity, precision, F1 and false alarms per hour; false alarms per
hour on unmerged detections (every separate detection that touches no tolerance-extended
reference event); sample-based (10 Hz) sensitivity, precision, F1 and specificity on
background time; mean onset latency (s).
"""


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``eval`` (with ``eval events``) to the top-level ``semiofed`` subcommands."""
    ev = sub.add_parser(
        "eval",
        help="score events files (SzCORE event scoring)",
        description="Evaluation tools.",
    )
    cmds = ev.add_subparsers(dest="eval_command", metavar="COMMAND", required=True)
    p = cmds.add_parser(
        "events",
        help="score a hypothesis events.tsv against a reference",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--ref", required=True, help="reference (ground truth) events.tsv")
    p.add_argument("--hyp", required=True, help="hypothesis (detector output) events.tsv")
    p.add_argument(
        "--duration",
        type=float,
        default=None,
        metavar="S",
        help="recording duration in seconds (default: the latest event end in either file, "
        "including background rows; give it when the files do not cover the whole recording)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_events)


def _events(args: argparse.Namespace) -> int:
    ref, hyp = read_events(args.ref), read_events(args.hyp)
    duration = args.duration
    if duration is None:
        duration = max((e.offset for e in (*ref, *hyp)), default=0.0)
        if duration <= 0:
            raise SemioFedError(
                f"{args.ref}, {args.hyp}: no events to infer the duration from; give --duration"
            )
    elif not duration > 0:
        raise SemioFedError(f"--duration must be > 0, got {duration}")
    result = score_events([(ref, hyp, duration)])
    if args.json:
        print(
            json.dumps(
                {
                    k: (None if isinstance(v, float) and math.isnan(v) else v)
                    for k, v in result.items()
                }
            )
        )
        return 0
    for key, value in result.items():
        print(f"{key:24s} {value:.4g}" if isinstance(value, float) else f"{key:24s} {value}")
    return 0
