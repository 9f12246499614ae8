"""``semiofed server init|superlink|run|simulate|pretrain`` and ``semiofed demo``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from semiofed.shared.cli_paths import out_folder
from semiofed.shared.errors import SemioFedError

from . import superlink_cli
from .certs import DEFAULT_HOSTS, ConsortiumPaths
from .code_signing import DEFAULT_INDEX_PORT


def register_server(cmds: argparse._SubParsersAction) -> None:
    p = cmds.add_parser(
        "init",
        help="create the consortium CA, the SuperLink TLS certificate and the FAB-signing key",
        description=(
            "Create CERTS/ca.crt (give it to every site), CERTS/superlink.crt/.key (the "
            "SuperLink's TLS identity) and CERTS/fab-signing.key/.pub (signs the app bundle; "
            "give the .pub to every site's privacy officer). No site key is made here: each "
            "site runs `semiofed site keygen` and sends only its .pub (`server add-site`)."
        ),
    )
    p.add_argument(
        "--out", type=out_folder, required=True, help="consortium certificate folder (CERTS)"
    )
    p.add_argument(
        "--host",
        action="append",
        dest="hosts",
        metavar="NAME_OR_IP",
        help=f"SuperLink host name/IP for the certificate (repeatable; default {' '.join(DEFAULT_HOSTS)})",
    )
    p.add_argument("--force", action="store_true", help="replace an existing CA")
    p.set_defaults(func=_init)

    superlink_cli.register(cmds)

    p = cmds.add_parser(
        "add-site",
        help="take a hospital's SuperNode public key (made at the site by `site keygen`)",
        description=(
            "Check PUB (an OpenSSH ECDSA public key, never a private key) and store it as "
            "CERTS/supernodes/SITE.pub, ready for `semiofed server register SITE`."
        ),
    )
    p.add_argument("site", metavar="SITE", help="site name, e.g. site-01")
    p.add_argument("pub", type=Path, metavar="PUB", help="the .pub file the site sent")
    p.add_argument("--certs", type=Path, required=True, help="consortium certificate folder")
    p.set_defaults(func=_add_site)

    p = cmds.add_parser(
        "register",
        help="register hospitals' SuperNode public keys with a running SuperLink",
        description=(
            "Register CERTS/supernodes/SITE.pub of each SITE with the SuperLink (`flwr "
            "supernode register`), so that SITE's SuperNode may join; a SuperNode whose key "
            "was never registered is refused. Prints each site's node id."
        ),
    )
    p.add_argument("sites", nargs="+", metavar="SITE", help="site names (their .pub in CERTS)")
    p.add_argument("--certs", type=Path, required=True, help="consortium certificate folder")
    p.add_argument(
        "--superlink", default="127.0.0.1:8000", help="SuperLink address (default 127.0.0.1:8000)"
    )
    p.set_defaults(func=_register)

    p = cmds.add_parser(
        "run",
        help="submit a federated run to a running SuperLink",
        description=(
            "Validate CONFIG, build the SemioFed Flower app, sign it with "
            "CERTS/fab-signing.key and submit it to the SuperLink (`flwr run`). The ServerApp writes checkpoints and the final run directory to "
            "--out on the SuperLink host; re-submitting with the same --out and config resumes "
            "after the last completed round."
        ),
    )
    p.add_argument("--config", type=Path, required=True, help="run configuration (configs/*.toml)")
    p.add_argument(
        "--out", type=out_folder, required=True, help="run directory (on the SuperLink host)"
    )
    p.add_argument(
        "--superlink",
        default="127.0.0.1:8000",
        help="SuperLink address HOST:PORT (default 127.0.0.1:8000)",
    )
    p.add_argument(
        "--certs", type=Path, help="consortium certificate folder (only its ca.crt is read)"
    )
    p.add_argument("--insecure", action="store_true", help="no TLS (debugging only)")
    p.add_argument(
        "--app-index-port",
        type=int,
        default=DEFAULT_INDEX_PORT,
        help="127.0.0.1 port the SuperLink fetches the signed FAB from, as given to "
        f"`server superlink` (default {DEFAULT_INDEX_PORT}; run this on the SuperLink host)",
    )
    p.add_argument(
        "--data",
        metavar="TEXT",
        help="what the sites train on, stated in the run record and model card "
        "('synthetic' marks the card not for clinical use)",
    )
    p.add_argument("--wait", action="store_true", help="wait until the run finishes")
    p.set_defaults(func=_run)

    p = cmds.add_parser(
        "simulate",
        help="many virtual sites on Flower's simulation runtime (Ray)",
        description="Run the same ServerApp/ClientApp with N virtual sites: a SuperLink on "
        "127.0.0.1 in simulation mode and `flwr run` with num-supernodes=N (Flower's simulation "
        "runtime; needs ray==2.55.1). Sites are synthetic.",
    )
    p.add_argument("--sites", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "--config", type=Path, default=None, help="run configuration (default configs/demo.toml)"
    )
    p.add_argument("--out", type=out_folder, default=Path("simulate-out"))
    p.add_argument("--patients-per-site", type=int, default=4)
    p.set_defaults(func=_simulate)

    p = cmds.add_parser(
        "pretrain",
        help="train the round-0 model on public simulator data (no patient data)",
        description=(
            "Generate a public synthetic consortium (simulator seed no site uses), train the "
            "[model] of CONFIG on it non-privately and write OUT/<sha256>.safetensors with the "
            'recipe as metadata. Use it with [model] pretrained = "<sha256>" and frozen = '
            '["encoders"]; the file must be in shared/pretrained/ (ships with the package) or '
            "in $SEMIOFED_PRETRAINED_DIR at the coordinator and at every site."
        ),
    )
    p.add_argument("--config", type=Path, required=True, help="run configuration ([model])")
    p.add_argument("--out", type=out_folder, required=True, help="folder for <sha256>.safetensors")
    p.add_argument("--sites", type=int, default=None, help="public simulated sites")
    p.add_argument("--patients-per-site", type=int, default=None)
    p.add_argument("--minutes-per-patient", type=float, default=None)
    p.add_argument("--steps", type=int, default=None, help="training steps")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate (of the first step)")
    p.add_argument(
        "--lr-end", type=float, default=None, help="cosine decay to this rate (default: constant)"
    )
    p.add_argument("--draw-seed", type=int, default=None, help="seed of batch draws, augmentation")
    p.add_argument(
        "--init",
        default=None,
        metavar="SHA256",
        help="continue from this public round-0 model (its recipe is kept in the new file's)",
    )
    p.add_argument(
        "--frozen",
        action="append",
        default=None,
        metavar="PREFIX",
        help="with --init: keep these parameters (e.g. encoders: train the top only)",
    )
    p.add_argument(
        "--confounder-share",
        type=float,
        default=None,
        help="share of background draws from the simulator's confounder episodes (0 … 1)",
    )
    p.set_defaults(func=_pretrain)


def register_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the whole consortium on this machine (what `make demo` runs)",
        description=(
            "Synthetic consortium → CA and FAB-signing key → each site makes its own SuperNode "
            "key pair → officers approve config, FAB and signer → SuperLink + one SuperNode per "
            "site on 127.0.0.1 (TLS, SuperNode auth, trusted FAB signers) → signed FAB → "
            "federated training with "
            "patient-level DP and SecAgg+ → per-round metrics and each site's cumulative ε → "
            "federated vs centralized non-private vs local-only on held-out patients."
        ),
    )
    p.add_argument("--sites", type=int, default=3, help="number of hospitals (default 3)")
    p.add_argument(
        "--rounds", type=int, default=None, help="federated rounds (default: the config's)"
    )
    p.add_argument(
        "--out", type=out_folder, default=Path("demo-out"), help="output folder (default demo-out)"
    )
    p.add_argument(
        "--config", type=Path, default=None, help="run configuration (default configs/demo.toml)"
    )
    p.add_argument(
        "--patients-per-site", type=int, default=40, help="patients per site (default 40)"
    )
    p.add_argument("--seed", type=int, default=1, help="synthetic data seed")
    p.add_argument("--insecure", action="store_true", help="no TLS/auth (debugging only)")
    p.set_defaults(func=_demo)


def _init(args: argparse.Namespace) -> int:
    from semiofed.shared.fab import build_fab, fab_hash

    from .certs import init_consortium

    paths = init_consortium(args.out, args.hosts, force=args.force)
    print(f"CA: {paths.ca_cert}\nSuperLink: {paths.superlink_cert}")
    print(f"FAB signer: {paths.fab_signing_pub} (give it to every site's privacy officer)")
    print(f"FAB: sha256 {fab_hash(build_fab())} (what the officers approve)")
    return 0


def _add_site(args: argparse.Namespace) -> int:
    from .certs import add_site_key

    path = add_site_key(ConsortiumPaths(args.certs), args.site, args.pub)
    print(f"{args.site}: {path} (register with `semiofed server register {args.site}`)")
    return 0


def _register(args: argparse.Namespace) -> int:
    import tempfile

    from .consortium import Consortium

    with tempfile.TemporaryDirectory(prefix="semiofed-register-") as tmp:
        c = Consortium(Path(tmp), ConsortiumPaths(args.certs), superlink=args.superlink)
        for site in args.sites:
            print(f"{site}: registered as node {c.register(site)}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from semiofed.shared.run_config import encode_payload, load_run_config

    from .consortium import Consortium

    cfg = load_run_config(args.config)
    if not args.insecure and args.certs is None:
        raise SemioFedError("--certs CERTS is required (or --insecure for debugging)")
    certs = None if args.insecure else ConsortiumPaths(args.certs)
    c = Consortium(
        args.out.resolve() / "cli",
        certs,
        superlink=args.superlink,
        index_port=args.app_index_port,
    )
    payload = encode_payload(cfg, out_dir=str(args.out.resolve()), data=args.data)
    run_id = c.submit({"semiofed": payload})
    print(f"submitted Flower run {run_id}; run directory {args.out}")
    if args.wait:
        print(json.dumps(c.wait_run(run_id, timeout=7 * 24 * 3600, poll=10), indent=1))
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from .demo import DEFAULT_CONFIG
    from .simulate import simulate

    res = simulate(
        args.sites, args.rounds, args.config or DEFAULT_CONFIG, args.out, args.patients_per_site
    )
    print(json.dumps(res, indent=1))
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    import dataclasses

    from semiofed.shared.run_config import load_run_config

    from .pretrain import PretrainConfig, pretrain

    given = {
        "sites": args.sites,
        "patients_per_site": args.patients_per_site,
        "minutes_per_patient": args.minutes_per_patient,
        "steps": args.steps,
    }
    for name, value in given.items():
        if value is not None and value < 1:
            raise SemioFedError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    for name, value in {"lr": args.lr, "lr_end": args.lr_end}.items():
        if value is not None and not value > 0:
            raise SemioFedError(f"--{name.replace('_', '-')} must be > 0, got {value}")
    share = args.confounder_share
    if share is not None and not 0 <= share < 1:
        raise SemioFedError(f"--confounder-share must be in [0, 1), got {share}")
    given |= {"lr": args.lr, "lr_end": args.lr_end, "draw_seed": args.draw_seed, "init": args.init}
    given |= {"frozen": tuple(args.frozen) if args.frozen else None, "confounder_share": share}
    pcfg = dataclasses.replace(
        PretrainConfig(), **{k: v for k, v in given.items() if v is not None}
    )
    res = pretrain(load_run_config(args.config).model_config, pcfg, args.out)
    print(json.dumps(res, indent=1))
    print(f'[model] pretrained = "{res["sha256"]}"')
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import DEFAULT_CONFIG, run_demo

    run_demo(
        args.out,
        sites=args.sites,
        rounds=args.rounds,
        config=args.config or DEFAULT_CONFIG,
        patients_per_site=args.patients_per_site,
        seed=args.seed,
        insecure=args.insecure,
    )
    return 0
