"""The signed retirement of a model version, as the registry stores it and ``site pull``
checks it.

The coordinator retires a version by signing ``canonical_json(statement)`` with the same
Ed25519 key that signs its manifests; the statement names the version, its sequence number
and its weights' SHA-256, so it cannot be replayed onto another version. Signing and
verification live with the keys (``semiofed.privacy.keys``); this module holds the format.
"""

from __future__ import annotations

from typing import Any

RETIREMENT_FORMAT = "semiofed-model-retirement/1"
MAX_REASON = 2000


def retirement_statement(
    version: str,
    sequence: int,
    weights_sha256: str,
    reason: str,
    retired_at: str,
    key_fingerprint: str,
) -> dict[str, Any]:
    """The statement the coordinator signs to retire ``version``."""
    return {
        "format": RETIREMENT_FORMAT,
        "version": version,
        "sequence": sequence,
        "weights_sha256": weights_sha256,
        "reason": reason,
        "retired_at": retired_at,
        "signer": {"algorithm": "Ed25519", "key_fingerprint": key_fingerprint},
    }


def retirement_problem(
    statement: Any, version: str, sequence: int, weights_sha256: str
) -> str | None:
    """Why ``statement`` is not a retirement of exactly this version; ``None`` if it is."""
    if not isinstance(statement, dict) or statement.get("format") != RETIREMENT_FORMAT:
        return f"not a {RETIREMENT_FORMAT} statement"
    named = (statement.get("version"), statement.get("sequence"))
    if named != (version, sequence):
        return (
            f"the retirement is for version {named[0]!r} (sequence {named[1]!r}), "
            f"not {version!r} (sequence {sequence})"
        )
    if statement.get("weights_sha256") != weights_sha256:
        return f"the retirement names other weights than {version!r} has"
    reason = statement.get("reason")
    if not isinstance(reason, str) or not isinstance(statement.get("retired_at"), str):
        return "the retirement lacks its reason or retired_at"
    if len(reason) > MAX_REASON:
        return f"the retirement's reason is longer than {MAX_REASON} characters"
    return None
