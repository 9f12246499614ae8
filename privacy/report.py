"""``semiofed audit report``: one self-contained HTML page a privacy officer can sign.

Gathers, from one site's state folder: the privacy ledger (privacy unit, δ, accountant,
ε per run and cumulative, budget left), the independent dp-accounting check, approvals,
messages sent (``STATE/outbox.jsonl`` and the trail's ``message_sent`` entries), the
empirical attack results (``STATE/audits/*.json``) and the audit trail's verification.
No external resources: styles and the ε plot (inline SVG) are in the page, the template
``privacy/templates/privacy_report.html`` (:mod:`semiofed.shared.html`).
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from semiofed.shared.errors import SemioFedError
from semiofed.shared.html import render
from semiofed.shared.svgplot import line_plot

from .accounting import epsilon
from .approval import NotApproved, flatten_fields, load_approvals, pinned_officer_key
from .audit_trail import TRAIL_FILE, read_entries, site_public_key_path, verify
from .independent_check import LEDGER_FILE, check_ledger
from .keys import KeyFileError, load_public_key

AUDITS_DIR = "audits"
OUTBOX_FILE = "outbox.jsonl"
Section = dict[str, Any]


def epsilon_plot(per_run: list[float], cumulative: list[float], budget: float | None) -> Any:
    """Per-run ε as bars, cumulative ε as a line, the budget dashed."""
    runs = range(1, len(cumulative) + 1)
    return line_plot(
        {"cumulative ε (the guarantee)": list(zip(runs, cumulative, strict=True))},
        "ε per training run and cumulative",
        "training run (round)",
        "ε",
        bars={"ε of the run alone": list(zip(runs, per_run, strict=True))},
        hlines={f"budget ε = {budget:g}": budget} if budget else None,
    )


def _integrity(state: Path) -> str:
    """What a DP action would say about the ledger: sound, or why it is refused."""
    from .ledger import PrivacyLedger
    from .ledger_integrity import LedgerIntegrityError

    ledger = PrivacyLedger(state)
    try:
        ledger.check_history()
        head = ledger.head()
    except LedgerIntegrityError as exc:
        return f"REFUSED: {exc.problem}"
    return (
        f"sound: ledger {head['ledger_id'][:12]}…, {head['closed']} closed runs, "
        f"history hash {head['history_hash'][:16]}… (matches the signed trail and the anchors in STATE)"
    )


def _ledger_section(state: Path) -> tuple[Section, dict[str, Any]]:
    path = state / LEDGER_FILE
    if not path.exists():
        return {"missing": str(path)}, {}
    data = json.loads(path.read_text(encoding="utf-8"))
    budget = data.get("budget") or {}
    accountant = budget.get("accountant", "rdp")
    runs = [r for r in data.get("runs", []) if int(r.get("steps_counted", 0)) > 0]
    deltas = sorted({float(r["delta"]) for r in runs})
    delta = budget.get("delta", deltas[0] if deltas else None)
    units = sorted({str(r.get("privacy_unit", "?")) for r in runs})
    per_run, cumulative, rows = [], [], []
    history: list[tuple[float, float, int]] = []
    for r in runs:
        mech = (float(r["noise_multiplier"]), float(r["sample_rate"]), int(r["steps_counted"]))
        history.append(mech)
        alone = epsilon([mech], float(delta), accountant) if delta else float("nan")
        cum = epsilon(history, float(delta), accountant) if delta else float("nan")
        per_run.append(alone)
        cumulative.append(cum)
        recorded = (r.get("epsilon_after") or {}).get(accountant)
        rows.append(
            [
                r.get("run_id"),
                r.get("status"),
                r.get("privacy_unit"),
                mech[1],
                mech[0],
                r.get("max_grad_norm"),
                mech[2],
                alone,
                cum,
                recorded,
            ]
        )
    spent = cumulative[-1] if cumulative else 0.0
    eps_max = budget.get("epsilon_max")
    summary = {
        "privacy_units": units,
        "delta": delta,
        "accountant": accountant,
        "epsilon_spent": spent,
        "epsilon_budget": eps_max,
        "budget_left": None if eps_max is None else max(0.0, eps_max - spent),
        "runs": len(runs),
    }
    patient_level = units in ([], ["patient"])
    section = {
        "facts": [
            ("privacy unit", ", ".join(units) or "–"),
            (
                "guarantee",
                "patient-level"
                if patient_level
                else "NOT patient-level (window-level runs present)",
            ),
            ("δ", delta),
            ("accountant", f"{accountant} (Opacus)"),
            ("cumulative ε spent (the guarantee)", spent),
            ("budget ε_max", eps_max),
            ("budget left", summary["budget_left"]),
            ("training runs with steps", len(runs)),
            ("ledger integrity (checked before every DP action)", _integrity(state)),
        ],
        "plot": epsilon_plot(per_run, cumulative, eps_max),
        "rows": rows,
    }
    return section, summary


def _independent_section(state: Path) -> Section:
    if not (state / LEDGER_FILE).exists():
        return {"ok": None}
    result = check_ledger(state)
    rows = [
        [
            r.run_id,
            r.recorded.get("rdp"),
            r.independent["rdp"],
            r.recorded.get("prv"),
            r.independent["pld"],
            "; ".join(r.disagreements) or (f"not compared: {r.skipped}" if r.skipped else "agrees"),
        ]
        for r in result.runs
    ]
    tolerance = f"{result.rel_tol:.1%} relative and {result.abs_tol:g} absolute"
    return {"ok": result.ok, "rows": rows, "tolerance": tolerance}


def _fields_text(fields: dict[str, Any]) -> str:
    """``dp.noise_multiplier=1.1; rounds=3; …`` with long hashes shortened."""
    flat = flatten_fields(fields)
    return "; ".join(
        f"{k}={str(v)[:12] + '…' if isinstance(v, str) and len(v) > 16 else v}"
        for k, v in sorted(flat.items())
    )


def _approvals_section(state: Path) -> Section:
    try:
        key = pinned_officer_key(state)
        records = load_approvals(state, key)
    except (NotApproved, KeyFileError) as exc:
        return {"error": str(exc)}
    if not records:
        return {"error": "No approved run configuration."}
    rows = []
    for r in sorted(records, key=lambda r: r.get("approved_at", "")):
        f = r["fields"]
        rows.append(
            [
                r["approved_at"],
                r["fields_hash"][:16] + "…",
                r["officer_fingerprint"][:16] + "…",
                _fields_text(f),
                "valid",
            ]
        )
    return {"rows": rows}


def _message_keys(m: dict[str, Any]) -> list[str]:
    """Content keys of one outbox line (``records`` of the ClientApp) or trail entry (``keys``)."""
    records = m.get("records")
    if isinstance(records, dict):
        return [f"{kind}:{name}" for kind, named in records.items() for name in named or {}]
    return [str(k) for k in m.get("keys") or []]


def _messages_section(state: Path, trail_entries: list[dict[str, Any]]) -> Section:
    outbox = state / OUTBOX_FILE
    msgs: list[dict[str, Any]] = []
    source = "none"
    if outbox.exists():
        source = str(outbox)
        for line in outbox.read_text(encoding="utf-8").splitlines():
            try:
                msgs.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    else:
        msgs = [e["payload"] for e in trail_entries if e.get("kind") == "message_sent"]
        source = "audit trail (message_sent entries)"
    if not msgs:
        return {"source": source, "rows": []}
    kinds: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    keys: Counter[str] = Counter()
    for m in msgs:
        kind = str(m.get("kind") or m.get("message_type") or m.get("type") or "update")
        kinds[kind] += 1
        sizes[kind] += int(m.get("size") or m.get("bytes") or 0)
        for k in _message_keys(m):
            keys[k] += 1
    rows = [[k, kinds[k], sizes[k]] for k in sorted(kinds)]
    rows.append(["total", sum(kinds.values()), sum(sizes.values())])
    key_text = ", ".join(f"{k} ({n})" for k, n in sorted(keys.items())) or "–"
    return {"source": source, "rows": rows, "keys": key_text}


_MIA_HEADERS = ["model", "ε of the audited model", "attack", "AUC", "TPR@0.1%FPR", "TPR@1%FPR",
                "FPR resolution"]  # fmt: skip
_CANARY_HEADERS = ["model", "ε of the audited model", "ε lower bound (95 %)", "correct guesses",
                   "canaries", "bound ≤ claim"]  # fmt: skip
_INVERSION_HEADERS = ["update seen by the server", "relative error (attacker's pick)",
                      "relative error (best neuron, oracle)", "exact reconstructions"]  # fmt: skip


def _attack(stem: str, data: dict[str, Any]) -> Section | None:
    """One audit file's table (``None``: not an audit this report knows)."""
    model = {True: "DP", False: "no DP"}
    if stem == "mia":
        rows = [
            [model[r["private"]], r["epsilon"], attack, r[attack]["auc"],
             r[attack]["tpr_at_0.001_fpr"], r[attack]["tpr_at_0.01_fpr"],
             r[attack]["fpr_resolution"]]
            for r in data["results"]
            for attack in ("loss_threshold", "lira")
        ]  # fmt: skip
        return {"title": "Membership inference", "headers": _MIA_HEADERS, "rows": rows}
    if stem in ("canary", "patient-canary"):
        rows = [
            [model[r["private"]], r["claimed_epsilon"], r["epsilon_lower_bound"],
             f"{r['correct']}/{r['guesses']}", r["canaries"], r["bound_below_claim"]]
            for r in data["results"]
        ]  # fmt: skip
        title = "One-run canary audit (Steinke, Nasr, Jagielski 2023)" + (
            ": patient-level trainer" if stem == "patient-canary" else ""
        )
        return {"title": title, "headers": _CANARY_HEADERS, "rows": rows}
    if stem == "inversion":
        rows = [
            [name, data[name]["relative_error_median"],
             data[name]["oracle_relative_error_median"],
             f"{data[name]['exact_reconstructions']}/{data['trials']}"]
            for name in ("plain", "dp", "secagg")
        ]  # fmt: skip
        note = (
            f"{data['method']}; σ={data['noise_multiplier']}, C={data['max_grad_norm']}, "
            f"SecAgg+ over {data['secagg_sites']} sites."
        )
        return {"title": "Gradient inversion of a keypoint window",
                "headers": _INVERSION_HEADERS, "rows": rows, "note": note}  # fmt: skip
    return None


def _attacks_section(state: Path) -> list[Section]:
    """One entry per audit file in ``STATE/audits`` (unreadable ones say so)."""
    folder = state / AUDITS_DIR
    out: list[Section] = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            out.append({"error": f"{path.name}: unreadable"})
            continue
        attack = _attack(path.stem, data)
        if attack is not None:
            out.append({**attack, "setup": str(data["setup"]) if "setup" in data else None})
    return out


def _trail_section(
    state: Path, trail: Path | None, key_path: Path | None
) -> tuple[Section, list[dict[str, Any]]]:
    trail = trail or state / TRAIL_FILE
    if not trail.exists():
        return {"ok": None, "path": str(trail)}, []
    key_path = key_path or site_public_key_path(state)
    key = load_public_key(key_path) if key_path.exists() else None
    result = verify(trail, key)
    kinds = ", ".join(f"{k}: {n}" for k, n in sorted(result.kinds.items()))
    section = {"ok": result.ok, "path": str(trail), "summary": result.summary(), "kinds": kinds}
    return section, read_entries(trail)


def build_report(state_dir: str | Path, trail: Path | None = None, key: Path | None = None) -> str:
    """The HTML report for one site's state folder."""
    state = Path(state_dir)
    if not state.is_dir():
        raise SemioFedError(f"{state}: no such state folder")
    trail_section, entries = _trail_section(state, trail, key)
    ledger, summary = _ledger_section(state)
    independent = _independent_section(state)
    return render(
        "semiofed.privacy",
        "privacy_report.html",
        state_name=state.name,
        state_path=str(state.resolve()),
        generated=datetime.now(UTC).isoformat(timespec="seconds"),
        status=[("audit trail", trail_section["ok"]), ("independent ε check", independent["ok"])],
        ledger=ledger,
        independent=independent,
        approvals=_approvals_section(state),
        messages=_messages_section(state, entries),
        attacks=_attacks_section(state),
        trail=trail_section,
        summary_json=json.dumps(summary, default=str).replace("</", "<\\/"),
    )
