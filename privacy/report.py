"""``semiofed audit report``: one self-contained HTML page a privacy officer can sign.

Gathers, from one site's state folder: the privacy ledger (privacy unit, δ, accountant,
ε per run and cumulative, budget left), the independent dp-accounting check, approvals,
messages sent (``STATE/outbox.jsonl`` and the trail's ``message_sent`` entries), the
empirical attack results (``STATE/audits/*.json``) and the audit trail's verification.
No external resources: styles and the ε plot (inline SVG) are in the page.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any

from semiofed.shared.errors import SemioFedError

from .accounting import epsilon
from .approval import NotApproved, flatten_fields, load_approvals, pinned_officer_key
from .audit_trail import TRAIL_FILE, read_entries, site_public_key_path, verify
from .independent_check import LEDGER_FILE, check_ledger
from .keys import KeyFileError, load_public_key

AUDITS_DIR = "audits"
OUTBOX_FILE = "outbox.jsonl"

CSS = """
body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;color:#1a1a1a;line-height:1.4}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0;font-size:.92em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f2f2f2}.ok{color:#116611;font-weight:bold}.bad{color:#b00020;font-weight:bold}
.note{color:#555;font-size:.9em}.kv td:first-child{font-weight:bold;background:#fafafa}
.sign{margin-top:3em;border-top:1px solid #888;padding-top:1em}
"""


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    return escape(str(v))


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _kv(rows: list[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><td>{escape(k)}</td><td>{_fmt(v)}</td></tr>" for k, v in rows)
    return f'<table class="kv">{body}</table>'


def epsilon_svg(per_run: list[float], cumulative: list[float], budget: float | None) -> str:
    """Inline SVG: per-run ε as bars, cumulative ε as a line, the budget dashed."""
    w, h, pad = 640, 260, 44
    n = len(cumulative)
    top = max([*cumulative, *per_run, budget or 0.0, 1e-9]) * 1.1
    sx = (w - 2 * pad) / max(n, 1)

    def y(v: float) -> float:
        return h - pad - (v / top) * (h - 2 * pad)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" '
        f'aria-label="epsilon per run and cumulative">',
        f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="#333"/>',
        f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="#333"/>',
    ]
    for frac in (0.0, 0.5, 1.0):
        v = top / 1.1 * frac
        parts.append(
            f'<text x="{pad - 6}" y="{y(v) + 4:.1f}" font-size="11" text-anchor="end">{v:.2f}</text>'
        )
    for i, v in enumerate(per_run):
        parts.append(
            f'<rect class="per-run" x="{pad + i * sx + sx * 0.2:.1f}" y="{y(v):.1f}" '
            f'width="{sx * 0.6:.1f}" height="{h - pad - y(v):.1f}" fill="#9ecae1"/>'
        )
    if cumulative:
        pts = " ".join(f"{pad + (i + 0.5) * sx:.1f},{y(v):.1f}" for i, v in enumerate(cumulative))
        parts.append(
            f'<polyline class="cumulative" points="{pts}" fill="none" stroke="#08519c" stroke-width="2"/>'
        )
        for i, v in enumerate(cumulative):
            parts.append(
                f'<circle cx="{pad + (i + 0.5) * sx:.1f}" cy="{y(v):.1f}" r="3" fill="#08519c"/>'
            )
    if budget:
        parts.append(
            f'<line class="budget" x1="{pad}" y1="{y(budget):.1f}" x2="{w - pad}" y2="{y(budget):.1f}" '
            'stroke="#b00020" stroke-dasharray="6,4"/>'
            f'<text x="{w - pad}" y="{y(budget) - 4:.1f}" font-size="11" text-anchor="end" fill="#b00020">budget ε={budget:g}</text>'
        )
    parts.append(
        f'<text x="{w / 2}" y="{h - 8}" font-size="12" text-anchor="middle">training run (round)</text>'
        f'<text x="{pad}" y="{pad - 10}" font-size="11">bars: ε of the run alone · line: cumulative ε (the guarantee)</text>'
        "</svg>"
    )
    return "".join(parts)


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


def _ledger_section(state: Path) -> tuple[str, dict[str, Any]]:
    path = state / LEDGER_FILE
    if not path.exists():
        return "<p class='bad'>No privacy ledger at " + escape(str(path)) + ".</p>", {}
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
    html = _kv(
        [
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
        ]
    )
    html += epsilon_svg(per_run, cumulative, eps_max)
    html += _table(
        [
            "run",
            "status",
            "unit",
            "q",
            "σ",
            "clip C",
            "steps",
            "ε run alone",
            "ε cumulative",
            "ε recorded (ledger)",
        ],
        rows,
    )
    html += (
        "<p class='note'>ε of a run alone is shown for orientation only; the privacy "
        "guarantee is the cumulative ε over every run at this site.</p>"
    )
    return html, summary


def _independent_section(state: Path) -> tuple[str, bool | None]:
    if not (state / LEDGER_FILE).exists():
        return "<p>No ledger to check.</p>", None
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
    verdict = (
        "<p class='ok'>Every recorded ε agrees with Google dp-accounting.</p>"
        if result.ok
        else "<p class='bad'>DISAGREEMENT between the ledger and dp-accounting.</p>"
    )
    tol = f"<p class='note'>Tolerance {result.rel_tol:.1%} relative and {result.abs_tol:g} absolute.</p>"
    table = _table(["run", "ledger RDP", "dp-acc RDP", "ledger PRV", "dp-acc PLD", "verdict"], rows)
    return verdict + table + tol, result.ok


def _fields_text(fields: dict[str, Any]) -> str:
    """``dp.noise_multiplier=1.1; rounds=3; …`` with long hashes shortened."""
    flat = flatten_fields(fields)
    return "; ".join(
        f"{k}={str(v)[:12] + '…' if isinstance(v, str) and len(v) > 16 else v}"
        for k, v in sorted(flat.items())
    )


def _approvals_section(state: Path) -> str:
    try:
        key = pinned_officer_key(state)
        records = load_approvals(state, key)
    except (NotApproved, KeyFileError) as exc:
        return f"<p class='bad'>{escape(str(exc))}</p>"
    if not records:
        return "<p class='bad'>No approved run configuration.</p>"
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
    return _table(["approved at", "fields hash", "officer key", "fields", "signature"], rows)


def _message_keys(m: dict[str, Any]) -> list[str]:
    """Content keys of one outbox line (``records`` of the ClientApp) or trail entry (``keys``)."""
    records = m.get("records")
    if isinstance(records, dict):
        return [f"{kind}:{name}" for kind, named in records.items() for name in named or {}]
    return [str(k) for k in m.get("keys") or []]


def _messages_section(state: Path, trail_entries: list[dict[str, Any]]) -> str:
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
        return f"<p>No messages recorded (source: {escape(source)}).</p>"
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
    key_text = ", ".join(f"{escape(k)} ({n})" for k, n in sorted(keys.items())) or "–"
    return (
        _table(["kind", "messages", "bytes"], rows)
        + f"<p class='note'>Content keys sent: {key_text}. Source: {escape(source)}.</p>"
    )


def _attacks_section(state: Path) -> str:
    folder = state / AUDITS_DIR
    files = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if not files:
        return "<p>No empirical audit has been run (<code>semiofed audit attack</code>).</p>"
    out = [
        "<p class='note'>These audits test the site's DP-SGD recipe (σ, C, Opacus) on synthetic "
        "windows; the ε shown is that of the audited model, not the site's guarantee above.</p>"
    ]
    for path in files:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            out.append(f"<p class='bad'>{escape(path.name)}: unreadable</p>")
            continue
        if path.stem == "mia":
            rows = [
                [
                    ("DP" if r["private"] else "no DP"),
                    r["epsilon"],
                    attack,
                    r[attack]["auc"],
                    r[attack]["tpr_at_0.001_fpr"],
                    r[attack]["tpr_at_0.01_fpr"],
                    r[attack]["fpr_resolution"],
                ]
                for r in data["results"]
                for attack in ("loss_threshold", "lira")
            ]
            out.append(
                "<h3>Membership inference</h3>"
                + _table(
                    [
                        "model",
                        "ε of the audited model",
                        "attack",
                        "AUC",
                        "TPR@0.1%FPR",
                        "TPR@1%FPR",
                        "FPR resolution",
                    ],
                    rows,
                )
            )
        elif path.stem in ("canary", "patient-canary"):
            rows = [
                [
                    ("DP" if r["private"] else "no DP"),
                    r["claimed_epsilon"],
                    r["epsilon_lower_bound"],
                    f"{r['correct']}/{r['guesses']}",
                    r["canaries"],
                    r["bound_below_claim"],
                ]
                for r in data["results"]
            ]
            out.append(
                f"<h3>One-run canary audit (Steinke, Nasr, Jagielski 2023)"
                f"{': patient-level trainer' if path.stem == 'patient-canary' else ''}</h3>"
                + _table(
                    [
                        "model",
                        "ε of the audited model",
                        "ε lower bound (95 %)",
                        "correct guesses",
                        "canaries",
                        "bound ≤ claim",
                    ],
                    rows,
                )
            )
        elif path.stem == "inversion":
            rows = [
                [
                    name,
                    data[name]["relative_error_median"],
                    data[name]["oracle_relative_error_median"],
                    f"{data[name]['exact_reconstructions']}/{data['trials']}",
                ]
                for name in ("plain", "dp", "secagg")
            ]
            out.append(
                "<h3>Gradient inversion of a keypoint window</h3>"
                + _table(
                    [
                        "update seen by the server",
                        "relative error (attacker's pick)",
                        "relative error (best neuron, oracle)",
                        "exact reconstructions",
                    ],
                    rows,
                )
                + f"<p class='note'>{escape(data['method'])}; σ={data['noise_multiplier']}, "
                f"C={data['max_grad_norm']}, SecAgg+ over {data['secagg_sites']} sites.</p>"
            )
        else:
            continue
        if "setup" in data:
            out.append(f"<p class='note'>{escape(str(data['setup']))}</p>")
    return "".join(out)


def _trail_section(
    state: Path, trail: Path | None, key_path: Path | None
) -> tuple[str, bool | None, list[dict[str, Any]]]:
    trail = trail or state / TRAIL_FILE
    if not trail.exists():
        return f"<p class='bad'>No audit trail at {escape(str(trail))}.</p>", None, []
    key_path = key_path or site_public_key_path(state)
    key = load_public_key(key_path) if key_path.exists() else None
    result = verify(trail, key)
    kinds = ", ".join(f"{k}: {n}" for k, n in sorted(result.kinds.items()))
    cls = "ok" if result.ok else "bad"
    html = f"<p class='{cls}'>{escape(result.summary())}</p><p class='note'>{escape(str(trail))}; entries by kind: {escape(kinds)}</p>"
    return html, result.ok, read_entries(trail)


def build_report(state_dir: str | Path, trail: Path | None = None, key: Path | None = None) -> str:
    """The HTML report for one site's state folder."""
    state = Path(state_dir)
    if not state.is_dir():
        raise SemioFedError(f"{state}: no such state folder")
    trail_html, trail_ok, entries = _trail_section(state, trail, key)
    ledger_html, summary = _ledger_section(state)
    indep_html, indep_ok = _independent_section(state)
    status = [
        ("audit trail", trail_ok),
        ("independent ε check", indep_ok),
    ]
    status_html = "".join(
        f"<li>{escape(name)}: <span class='{'ok' if ok else 'bad'}'>"
        f"{'verified' if ok else ('missing' if ok is None else 'FAILED')}</span></li>"
        for name, ok in status
    )
    now = datetime.now(UTC).isoformat(timespec="seconds")
    summary_json = json.dumps(summary, default=str).replace("</", "<\\/")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>SemioFed privacy report — {escape(state.name)}</title>
<style>{CSS}</style></head><body>
<h1>SemioFed privacy report</h1>
<p class="note">Site state folder: {escape(str(state.resolve()))} · generated {now}</p>
<h2 id="status">Verification status</h2><ul>{status_html}</ul>
<h2 id="guarantee">Privacy guarantee and budget</h2>{ledger_html}
<h2 id="independent">Independent ε check</h2>{indep_html}
<h2 id="approvals">Approved run configurations</h2>{_approvals_section(state)}
<h2 id="messages">Messages sent</h2>{_messages_section(state, entries)}
<h2 id="attacks">Empirical attacks</h2>{_attacks_section(state)}
<h2 id="trail">Audit trail</h2>{trail_html}
<div class="sign"><p>Reviewed by (privacy officer): ______________________ &nbsp; Date: ____________ &nbsp; Signature: ______________________</p></div>
<script type="application/json" id="summary">{summary_json}</script>
</body></html>
"""
