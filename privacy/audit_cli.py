"""``semiofed audit verify|approve|init-ledger|anchor|ledger|report|attack``: the privacy
officer's commands. The officer's private key must live outside the site state folder."""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

from semiofed.shared.atomic import atomic_write_json, atomic_write_text
from semiofed.shared.cli_paths import folder, out_file, out_folder
from semiofed.shared.errors import SemioFedError

from .accounting import ACCOUNTANTS
from .anchors import ANCHORS_DIR, OFFICER_ANCHORS, make_anchor, verify_anchored
from .approval import DEFAULT_VALID_DAYS, approval_fields_of, approve
from .audit_trail import site_trail, verify
from .independent_check import ABS_TOL, REL_TOL
from .keys import generate_keypair, load_private_key, load_public_key, refuse_key_inside

RAW = argparse.RawDescriptionHelpFormatter


def register(cmds: argparse._SubParsersAction) -> None:
    p = cmds.add_parser(
        "verify",
        help="check a site's audit trail for tampering",
        formatter_class=RAW,
        description=(
            "Verify a site's hash-chained, signed audit trail (e.g. STATE/audit/trail.jsonl).\n"
            "Exit 0 when intact; 1 naming the first bad entry when an entry was changed,\n"
            "removed, inserted or reordered without re-signing, or the tail was cut off (signed\n"
            "head). A trail re-signed with the site key (it lives in STATE) is detected only\n"
            "against the officer's anchors: pass --officer-key (and --anchors, the officer's own\n"
            f"copies, OFFICER_DIR/{OFFICER_ANCHORS}; default: the copies in STATE/{ANCHORS_DIR})."
        ),
    )
    p.add_argument("log", type=Path, metavar="LOG", help="audit trail file (JSON lines)")
    p.add_argument(
        "--key",
        type=Path,
        metavar="PUB",
        help="the site's public key (PEM) to pin; without it the key recorded in the trail's "
        "first entry is used, which cannot detect a trail re-signed from scratch",
    )
    p.add_argument(
        "--allow-missing-head",
        action="store_true",
        help="accept a trail without its head checkpoint (tail truncation then undetectable)",
    )
    p.add_argument(
        "--officer-key",
        type=Path,
        metavar="PUB",
        help="the privacy officer's public key (PEM): check the trail against the officer's anchors",
    )
    p.add_argument(
        "--anchors",
        type=folder,
        metavar="DIR",
        help=f"the officer's anchors (default: the folder {ANCHORS_DIR.split('/')[-1]}/ beside LOG)",
    )
    p.set_defaults(func=_verify)

    p = cmds.add_parser(
        "approve",
        help="sign a run configuration as the site's privacy officer",
        formatter_class=RAW,
        description=(
            "Sign a run configuration as a whole (every field, with the model architecture\n"
            "hash), the FAB hash it must come in (--fab, default: the FAB this installation\n"
            "builds) and the FAB signer the site trusts (--signer), valid for --valid-days.\n"
            "The site's SuperNode runs only FABs that signer signed (STATE/trusted_entities.yaml);\n"
            "its client refuses any changed field, another FAB or an expired approval. The\n"
            "officer's public key is pinned in STATE/keys on first use; the approval is also\n"
            "recorded in the site's audit trail. The officer's private key must live outside\n"
            "STATE (refused inside it)."
        ),
    )
    p.add_argument(
        "run_config",
        type=Path,
        metavar="RUN_CONFIG",
        help="run configuration (TOML, configs/*.toml)",
    )
    p.add_argument(
        "--state", type=out_folder, required=True, metavar="DIR", help="site state folder"
    )
    _officer_key_arg(p, create=True)
    p.add_argument(
        "--signer",
        type=Path,
        metavar="PUB",
        help="the coordinator's FAB-signing public key (fab-signing.pub) to trust; without "
        "it the approval covers simulation only",
    )
    p.add_argument(
        "--fab", type=Path, metavar="FAB", help="the FAB to approve (default: built here)"
    )
    p.add_argument(
        "--valid-days",
        type=float,
        default=DEFAULT_VALID_DAYS,
        help=f"days until the approval expires (default {DEFAULT_VALID_DAYS:g})",
    )
    p.set_defaults(func=_approve)

    p = cmds.add_parser(
        "init-ledger",
        help="create the site's privacy ledger, bound to its patients (officer)",
        formatter_class=RAW,
        description=(
            "Create STATE/privacy_ledger.json with the site budget, under a binding the officer\n"
            "signs: ledger id, budget and a fingerprint of the patient set of DATA. The binding is\n"
            "also written to DATA/.semiofed-ledger.json and to OFFICER_DIR/ledgers/ (beside the\n"
            "key). Refused when STATE already has a ledger, or when DATA or the officer's register\n"
            "already names a ledger for any of these patients, unless --reset-reason is given (a\n"
            "signed reset, recorded in the binding and the trail). Every DP action refuses a\n"
            "missing, truncated, edited or rolled-back ledger."
        ),
    )
    p.add_argument(
        "--state", type=out_folder, required=True, metavar="DIR", help="site state folder"
    )
    p.add_argument(
        "--data",
        type=folder,
        required=True,
        metavar="DIR",
        help="the site's data (patient folders)",
    )
    _officer_key_arg(p, create=False)
    p.add_argument(
        "--epsilon-budget", type=float, required=True, metavar="E", help="site budget ε_max"
    )
    p.add_argument("--delta", type=float, required=True, metavar="D", help="δ of the budget")
    p.add_argument("--accountant", choices=ACCOUNTANTS, default="rdp")
    p.add_argument(
        "--reset-reason",
        metavar="TEXT",
        help="sign a reset: a new ledger for patients that already have one (restarts their ε)",
    )
    p.set_defaults(func=_init_ledger)

    p = cmds.add_parser(
        "anchor",
        help="countersign the head of the site's audit trail and its ledger state (officer)",
        formatter_class=RAW,
        description=(
            "Verify the site's trail, check it against the officer's earlier anchors, then sign\n"
            "its head (last entry's hash) and the ledger's history hash. The anchor is written to\n"
            f"OFFICER_DIR/{OFFICER_ANCHORS}/ (beside the key) and STATE/{ANCHORS_DIR}/, and recorded in\n"
            "the trail. Run it after each federated run (the demo does)."
        ),
    )
    p.add_argument("--state", type=folder, required=True, metavar="DIR", help="site state folder")
    _officer_key_arg(p, create=False)
    p.set_defaults(func=_anchor)

    p = cmds.add_parser(
        "ledger",
        help="recompute every ε in the site ledger with Google's dp-accounting",
        formatter_class=RAW,
        description=(
            "Recompute the cumulative ε after every run in STATE/privacy_ledger.json with\n"
            "dp-accounting (RDP vs the ledger's rdp value, PLD vs its prv value), independently\n"
            "of Opacus. Exit 1 when any value disagrees beyond the tolerance."
        ),
    )
    p.add_argument("--state", type=folder, required=True, metavar="DIR", help="site state folder")
    p.add_argument(
        "--tolerance",
        type=float,
        default=REL_TOL,
        metavar="REL",
        help=f"relative tolerance (default {REL_TOL})",
    )
    p.add_argument(
        "--abs-tolerance",
        type=float,
        default=ABS_TOL,
        metavar="ABS",
        help=f"absolute tolerance in ε (default {ABS_TOL}); a value must exceed both to be flagged",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_ledger)

    p = cmds.add_parser(
        "report",
        help="write the one-page HTML privacy report",
        formatter_class=RAW,
        description=(
            "Write a self-contained HTML page: privacy unit, δ, ε per run and cumulative\n"
            "(plot), budget left, approvals, messages sent, attack results, verification status."
        ),
    )
    p.add_argument("--state", type=folder, required=True, metavar="DIR", help="site state folder")
    p.add_argument("--out", type=out_file, required=True, metavar="HTML", help="output file")
    p.add_argument(
        "--trail", type=Path, metavar="LOG", help="audit trail (default STATE/audit/trail.jsonl)"
    )
    p.add_argument("--key", type=Path, metavar="PUB", help="site public key to pin for the trail")
    p.set_defaults(func=_report)

    p = cmds.add_parser(
        "attack",
        help="run empirical privacy attacks (MIA, canary ε bound, gradient inversion)",
        formatter_class=RAW,
        description=(
            "Audit the site's DP training empirically on synthetic data (never on patient\n"
            "data). Default: a one-run canary lower bound on the patient-level ε of SemioFed's\n"
            "own trainer (canaries are patients), beside a non-DP control. --only also offers\n"
            "example-level attacks on Opacus' DP-SGD with an MLP: membership inference (loss\n"
            "threshold, LiRA), one-run canaries, a gradient-inversion probe (plain, DP, SecAgg+).\n"
            "σ, C and δ default to the ledger's latest run. Results: STATE/audits/<attack>.json."
        ),
    )
    p.add_argument("--state", type=folder, required=True, metavar="DIR", help="site state folder")
    p.add_argument(
        "--only",
        nargs="+",
        choices=("patient-canary", "mia", "canary", "inversion"),
        help="run these attacks (default: patient-canary, the site's own patient-level "
        "trainer; mia, canary and inversion audit Opacus' example-level DP-SGD on an MLP)",
    )
    p.add_argument("--noise-multiplier", type=float, metavar="S", help="σ (default: ledger or 1.5)")
    p.add_argument(
        "--max-grad-norm", type=float, metavar="C", help="clipping norm (default: ledger or 1.0)"
    )
    p.add_argument("--delta", type=float, metavar="D", help="δ (default: ledger budget or 1e-5)")
    p.add_argument(
        "--epochs",
        type=int,
        metavar="N",
        help="training epochs of the MLP attacks (default 10; patient-canary: 40)",
    )
    p.add_argument("--quick", action="store_true", help="smaller pools and fewer shadow models")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.set_defaults(func=_attack)


def _officer_key_arg(p: argparse.ArgumentParser, create: bool) -> None:
    p.add_argument(
        "--key",
        type=Path,
        required=True,
        metavar="KEY",
        help="the privacy officer's Ed25519 private key (PEM), outside STATE"
        + ("; created when missing" if create else ""),
    )


def _verify(args: argparse.Namespace) -> int:
    key = load_public_key(args.key) if args.key else None
    require_head = not args.allow_missing_head
    if args.officer_key is None:
        result = verify(args.log, key, require_head=require_head)
    else:
        anchors = args.anchors or args.log.parent / ANCHORS_DIR.split("/")[-1]
        officer = load_public_key(args.officer_key)
        result = verify_anchored(args.log, key, officer, anchors, require_head)
    print(f"{args.log}: {result.summary()}")
    return 0 if result.ok else 1


def _approve(args: argparse.Namespace) -> int:
    refuse_key_inside(args.key, args.state)
    if not args.key.exists():
        generate_keypair(args.key)
        print(f"created the privacy officer key {args.key} (keep it away from the training host)")
    key = load_private_key(args.key)
    from semiofed.shared.fab import build_fab, fab_hash

    fields = approval_fields_of(args.run_config)
    try:
        signer = args.signer.read_text(encoding="utf-8").strip() if args.signer else None
        fab = args.fab.read_bytes() if args.fab else build_fab()
    except OSError as exc:
        raise SemioFedError(f"{exc.filename}: cannot read ({exc.strerror})") from None
    record = approve(
        fields,
        args.state,
        key,
        fab_hash=fab_hash(fab) if signer else None,
        signer=signer,
        valid_days=args.valid_days,
        source=str(args.run_config),
    )
    entry = site_trail(args.state).append(
        "approval",
        {
            "fields_hash": record["fields_hash"],
            "officer_fingerprint": record["officer_fingerprint"],
            "approved_at": record["approved_at"],
            "expires_at": record["expires_at"],
            "fab_hash": record["fab_hash"],
            "run_config": str(args.run_config),
        },
    )
    print(f"approved {args.run_config}: fields hash {record['fields_hash']}")
    print(f"FAB {record['fab_hash']}, signer {signer or 'none (simulation only)'}")
    print(f"expires {record['expires_at']}")
    print(json.dumps(fields, indent=2, sort_keys=True))
    print(f"recorded in the audit trail as entry {entry['seq']}")
    return 0


def _init_ledger(args: argparse.Namespace) -> int:
    from .ledger_binding import init_ledger

    body = init_ledger(
        args.state,
        args.data,
        args.key,
        args.epsilon_budget,
        args.delta,
        args.accountant,
        args.reset_reason,
    )
    b = body["budget"]
    reset = f"; RESET of {', '.join(body['reset']['supersedes'])}" if body["reset"] else ""
    print(
        f"created privacy ledger {body['ledger_id']} in {args.state}: ε ≤ {b['epsilon_max']:g} at "
        f"δ={b['delta']:g} ({b['accountant']}), {len(body['patients'])} patients of {args.data} "
        f"(fingerprint {body['data_fingerprint'][:16]}…){reset}"
    )
    return 0


def _anchor(args: argparse.Namespace) -> int:
    a = make_anchor(args.state, args.key)
    print(
        f"anchored {args.state}: trail entry {a['trail_seq']} ({a['trail_hash'][:16]}…), "
        f"ledger {a['ledger_id'][:12]}… with {a['closed']} closed runs ({a['history_hash'][:16]}…)"
    )
    return 0


def _ledger(args: argparse.Namespace) -> int:
    from .independent_check import check_ledger, format_check

    if args.tolerance < 0 or args.abs_tolerance < 0:
        raise SemioFedError("tolerances must be >= 0")
    result = check_ledger(args.state, args.tolerance, args.abs_tolerance)
    atomic_write_json(args.state / "audits" / "ledger_check.json", result.to_dict())
    print(json.dumps(result.to_dict(), indent=2) if args.json else format_check(result))
    return 0 if result.ok else 1


def _report(args: argparse.Namespace) -> int:
    from .report import build_report

    atomic_write_text(args.out, build_report(args.state, args.trail, args.key))
    print(f"wrote {args.out}")
    return 0


def _attack(args: argparse.Namespace) -> int:
    from semiofed.shared.model import resolve_device

    from .empirical.suite import ATTACKS, AuditSettings, ledger_defaults, run_suite

    overrides = ledger_defaults(args.state)
    for name in ("noise_multiplier", "max_grad_norm", "delta", "epochs"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    overrides["seed"] = args.seed
    settings = AuditSettings.quick(**overrides) if args.quick else AuditSettings(**overrides)
    device = resolve_device(args.device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        written = run_suite(args.state, settings, tuple(args.only or ATTACKS), device)
    for attack, path in written.items():
        print(f"{attack}: {path}")
    return 0
