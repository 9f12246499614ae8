"""What the site side adds to its signed, hash-chained audit trail (``STATE/audit/trail.jsonl``).

The ClientApp records every round it joins or declines, the budget after each training round
and every reply it sends; ``site pull`` records every model it received with the outcome of
the signature check. Appending fails closed: when an entry cannot be written, the reply is not
sent (the error propagates) and a pulled model is not reported as installed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def record(state_dir: Path, kind: str, payload: dict[str, Any]) -> None:
    """Sign and append one entry with the site key (created on first use); a non-finite
    number is recorded as null (JSON has no infinity)."""
    from semiofed.privacy.audit_trail import site_trail
    from semiofed.shared.atomic import json_safe

    site_trail(state_dir).append(kind, json_safe(payload))


def record_budget(state_dir: Path) -> None:
    """The ledger's budget and cumulative ε (RDP and PRV at the budget's δ)."""
    from semiofed.privacy.ledger import PrivacyLedger

    s = PrivacyLedger(state_dir).summary()
    payload = {k: s.get(k) for k in ("budget", "delta", "epsilon_spent", "steps", "privacy_units")}
    record(state_dir, "budget_state", payload)
