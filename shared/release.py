"""The release inventory: every value a site's ClientApp can send to the coordinator.

This is the contract both sides read: the site's allowlist (``client/allowlist.py``)
refuses any reply with a key, type or value outside it, and the ServerApp
(``server/strategies.py``) reads only these keys. For each value it says either which DP
mechanism protects it and where its ε is charged, or why it is data-independent. The
README's privacy section lists the same table.

Privacy unit: the patient. Every ε below is charged to the site's ledger
(``STATE/privacy_ledger.json``, δ and accountant of the site budget) before the value is
computed, and composes with everything else the site ever released.
"""

from __future__ import annotations

from dataclasses import dataclass

from .noisy_eval import decode_table

TRAIN, EVALUATE = "train", "evaluate"

#: Why a site declines, as a fixed code: the only thing a declining site sends besides
#: ``declined``/``site-name``. Details go to the site's local log and audit trail only.
NOT_APPROVED, OVER_BUDGET, SITE_ERROR = "not-approved", "over-budget", "site-error"
DECLINE_CODES: tuple[str, ...] = (NOT_APPROVED, OVER_BUDGET, SITE_ERROR)
FORBIDDEN_CONTENT = "forbidden-content"
#: ``Error.reason`` of a refused or failed reply (Flower error message): a code, never text.
ERROR_CODES: tuple[str, ...] = (FORBIDDEN_CONTENT, *DECLINE_CODES)
PRIVACY_UNITS: tuple[str, ...] = ("patient", "window")

DP_SGD = (
    "patient-level DP-SGD (Opacus; Poisson-sampled patients, one clipped gradient per "
    "patient, secret Gaussian noise): the round's ledger run 'federated round N'"
)
DP_TABLE = (
    "Gaussian mechanism, L2 sensitivity 1 (each held-out patient's normalized table, "
    "shared/noisy_eval.py), std = eval-noise-multiplier; charged before computing as one "
    "ledger run (sample_rate 1, steps 1): 'federated evaluation …'"
)
LEDGER_ECHO = (
    "ε of the ledger's history of (σ, q, steps): a function of approved parameters and of "
    "q = batch-size / training patients, i.e. it discloses the site's number of training "
    "patients (treated as public by the accounting, as in Opacus); no other data"
)


@dataclass(frozen=True)
class Released:
    """One metric a reply may carry: its kind (what the allowlist checks) and protection."""

    key: str
    kind: str  # number | flag | code | unit | name | table (shared/noisy_eval.encode_table)
    messages: tuple[str, ...]
    protection: str  # "dp" (inside ε) or "public" (data-independent)
    why: str


#: The metric names: the ClientApp writes, the allowlist checks, the ServerApp records and the
#: model card reads these constants (nowhere else spelled out).
EVAL_TABLE, EPSILON, EPSILON_ROUND = "eval-table", "epsilon", "epsilon-round"
DELTA, PRIVACY_UNIT, SITE_NAME = "delta", "privacy-unit", "site-name"
DECLINED, DECLINE_REASON = "declined", "decline-reason"

METRICS: tuple[Released, ...] = (
    Released(EVAL_TABLE, "table", (TRAIN, EVALUATE), "dp", DP_TABLE),
    Released(EPSILON, "number", (TRAIN, EVALUATE), "public", LEDGER_ECHO),
    Released(EPSILON_ROUND, "number", (TRAIN,), "public", LEDGER_ECHO),
    Released(DELTA, "number", (TRAIN, EVALUATE), "public", "approved config echo"),
    Released(PRIVACY_UNIT, "unit", (TRAIN, EVALUATE), "public", "approved config echo"),
    Released(SITE_NAME, "name", (TRAIN, EVALUATE), "public", "SuperNode node config"),
    Released(
        DECLINED,
        "flag",
        (TRAIN, EVALUATE),
        "public",
        "1 on a decline: a function of the approvals, the ledger and whether the site's "
        "data could be used (site-error), not of patient values",
    ),
    Released(DECLINE_REASON, "code", (TRAIN, EVALUATE), "public", "one of DECLINE_CODES"),
)
BY_KEY: dict[str, Released] = {m.key: m for m in METRICS}
ALLOWED_METRICS: tuple[str, ...] = tuple(BY_KEY)
#: What the ServerApp records per site and round (the rest is evaluation or decline).
SITE_METRICS: tuple[str, ...] = (EPSILON, EPSILON_ROUND, DELTA, PRIVACY_UNIT)

#: Flower's own records of a reply and their fixed contents.
FLOWER_FIELDS: dict[str, str] = {
    "fitres.parameters": "the model's trainable parameters, shapes fixed: "
    + DP_SGD
    + "; a decline echoes the server's own parameters",
    "fitres.num_examples": "constant 1 (0 on a decline): the server's mean is unweighted",
    "evaluateres.num_examples": "constant 1 (0 on a decline)",
    "evaluateres.loss": "constant 0.0 (the loss proxy is derived from eval-table)",
    "fitres.status / evaluateres.status": "Code.OK with the fixed message 'ok' or 'declined'",
    "secaggplus_configs": "SecAgg+ protocol fields (public keys, encrypted shares, node ids, "
    "key shares: random, data-independent) and the masked parameters (as fitres.parameters)",
}
NUM_EXAMPLES_JOINED, NUM_EXAMPLES_DECLINED = 1, 0
EVALUATE_LOSS = 0.0
STATUS_MESSAGES: tuple[str, ...] = ("ok", "declined")
MAX_NAME = 64


def check_value(key: str, value: object) -> str | None:
    """None when ``value`` is allowed for metric ``key``, else what is wrong (no value shown)."""
    spec = BY_KEY.get(key)
    if spec is None:
        return "is not in the release inventory"
    number = isinstance(value, int | float) and not isinstance(value, bool)
    ok = {
        "number": number,
        "flag": value == 1 and isinstance(value, int) and not isinstance(value, bool),
        "code": value in DECLINE_CODES,
        "unit": value in PRIVACY_UNITS,
        "name": isinstance(value, str) and 0 < len(value) <= MAX_NAME,
        "table": decode_table(value) is not None,
    }[spec.kind]
    return None if ok else f"has a value outside its kind {spec.kind!r}"
