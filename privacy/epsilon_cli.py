"""``semiofed audit epsilon``: ε of a DP-SGD mechanism, through the ledger's code path."""

from __future__ import annotations

import argparse
import json

DESCRIPTION = """\
Print ε at δ for `steps` steps of DP-SGD's Poisson-subsampled Gaussian mechanism
(sample rate q, noise multiplier σ), computed by Opacus' accountant exactly as the
site privacy ledger computes it. Use it to check a site's reported ε independently.

The privacy unit is whatever the sampling was over: with SemioFed's default
patient-level training, q = expected sampled patients / patients at the site.
"""


def register(cmds: argparse._SubParsersAction) -> None:
    p = cmds.add_parser(
        "epsilon",
        help="ε for (sample rate, noise multiplier, steps, δ)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--sample-rate",
        type=float,
        required=True,
        metavar="Q",
        help="Poisson sampling rate q in (0, 1]",
    )
    p.add_argument(
        "--noise-multiplier",
        type=float,
        required=True,
        metavar="S",
        help="noise multiplier σ (noise std / clipping norm)",
    )
    p.add_argument("--steps", type=int, required=True, metavar="T", help="number of DP-SGD steps")
    p.add_argument("--delta", type=float, required=True, metavar="D", help="δ, e.g. 1e-5")
    p.add_argument(
        "--accountant",
        choices=("rdp", "prv"),
        default="rdp",
        help="rdp (Rényi DP, default) or prv (tighter)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=_epsilon)


def _epsilon(args: argparse.Namespace) -> int:
    from .accounting import epsilon, validate_mechanism  # loads opacus/torch: only when run

    validate_mechanism(args.noise_multiplier, args.sample_rate, args.steps)
    eps = epsilon(
        [(args.noise_multiplier, args.sample_rate, args.steps)], args.delta, args.accountant
    )
    if args.json:
        print(
            json.dumps(
                {
                    "epsilon": eps,
                    "accountant": args.accountant,
                    "delta": args.delta,
                    "sample_rate": args.sample_rate,
                    "noise_multiplier": args.noise_multiplier,
                    "steps": args.steps,
                }
            )
        )
    else:
        print(
            f"ε = {eps:.4f} at δ = {args.delta:g} ({args.accountant} accountant; "
            f"q = {args.sample_rate:g}, σ = {args.noise_multiplier:g}, {args.steps} steps)"
        )
    return 0
