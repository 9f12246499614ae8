"""Subcommands that live in shared/: ``synth`` and ``eval``."""

from __future__ import annotations

import argparse

from .cli_paths import out_folder


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synth",
        help="generate the synthetic seizure consortium",
        description="Write a synthetic consortium: per site and patient, keypoint recordings with "
        "events.tsv and ground truth, plus a summary of counts per class per site. Deterministic for a seed.",
    )
    p.add_argument("--out", required=True, type=out_folder, help="output folder (created)")
    p.add_argument("--sites", type=int, default=3, help="number of hospitals (default 3)")
    p.add_argument(
        "--patients-per-site", type=int, default=12, help="patients per site (default 12)"
    )
    p.add_argument(
        "--minutes-per-patient",
        type=float,
        default=30.0,
        help="minutes of video per patient (default 30)",
    )
    p.add_argument(
        "--seizure-free-fraction",
        type=float,
        default=None,
        help="fraction of each site's patients with no event, monitored 3x as long (default 0.15)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--workers", type=int, default=0, help="worker processes (default: all cores)")
    p.set_defaults(func=_synth)
    from . import eval_cli

    eval_cli.register(sub)


def _synth(args: argparse.Namespace) -> int:
    from .synth.consortium import generate_consortium

    summary = generate_consortium(
        args.out,
        sites=args.sites,
        patients_per_site=args.patients_per_site,
        minutes_per_patient=args.minutes_per_patient,
        seed=args.seed,
        workers=args.workers or None,
        **(
            {}
            if args.seizure_free_fraction is None
            else {"seizure_free_fraction": args.seizure_free_fraction}
        ),
    )
    print(summary.table())
    return 0
