"""The signed model manifest: its one schema and its one check, for the registry and the sites.

A manifest (``semiofed-model-manifest/1``) names a version and its sequence number, the
weights' file name, size and SHA-256, the model card and the signer; the coordinator signs
``canonical_json(manifest)`` (``semiofed.privacy.keys``). The registry checks it with
:func:`validate_manifest` before storing anything (``server/registry/publish.py``) and a site
checks the same schema before installing (``client/model_pull.py``).

Every field a read route, a web page or a site uses has a type here; unknown extra fields are
kept (they are signed). Integers fit a signed 64-bit database column; numbers are finite.
:func:`validate_manifest` names the first offending field (``card.privacy.per_site``).
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

MANIFEST_FORMAT = "semiofed-model-manifest/1"
CARD_FORMAT = "semiofed-model-card/1"
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
MANIFEST_FILE, SIGNATURE_FILE, CARD_FILE = "manifest.json", "manifest.sig", "model_card.json"
INT64_MAX = 2**63 - 1

Count = Annotated[int, Field(ge=0, le=INT64_MAX)]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)


class EpsilonPoint(_Open):
    round: Count
    epsilon: float | None = None
    epsilon_round: float | None = None


class SitePrivacy(_Open):
    privacy_unit: str | None = None
    delta: float | None = None
    accountant: str | None = None
    epsilon_by_round: list[EpsilonPoint] = []
    epsilon_final: float | None = None
    declined_rounds: list[Count] = []


class CardPrivacy(_Open):
    privacy_unit: str | None = None
    per_site: dict[str, SitePrivacy] = {}
    statement: str = ""


class WeightsSummary(_Open):
    parameters: Count | None = None
    tensors: Count | None = None
    dtypes: list[str] = []


class CardModel(_Open):
    architecture: dict[str, Any] = {}
    architecture_hash: str = Field(min_length=1, max_length=200)
    weights: WeightsSummary = WeightsSummary()


class CardTraining(_Open):
    run_id: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    strategy: str | None = None
    data: str | None = None
    configuration: dict[str, Any] = {}


class MetricRow(_Open):
    round: Count


class SiteRelease(_Open):
    epsilon: float  # what these summaries cost the site alone
    epsilon_total_after: float  # the site's cumulative ε after them (its ledger)


class SummaryPrivacy(_Open):
    """Who paid what for a section released through DP summaries (sites' ledgers)."""

    privacy_unit: Literal["patient"]
    delta: float
    accountant: str
    noise_multiplier: float = Field(gt=0)
    per_site: dict[str, SiteRelease]
    protects_against: str


class CardCalibration(_Open):
    """The consortium's calibration, merged from the sites' DP summaries."""

    temperature: float = Field(gt=0)
    coverage: float = Field(gt=0, lt=1)
    conformal_threshold: float
    class_thresholds: dict[str, float] | None = None  # per class name (Mondrian), from DP summaries
    how: str
    privacy: SummaryPrivacy


class CardAnomaly(_Open):
    """The federated anomaly model (the aberrant flag), merged from the sites' DP summaries."""

    what: str
    threshold: float
    flag_rate: float = Field(gt=0, lt=1)
    threshold_rule: str
    classes: list[str]
    privacy: SummaryPrivacy
    scorer: dict[str, Any]  # :class:`~semiofed.shared.analysis.openset.OpenSetScorer` fields


class Card(_Open):
    format: Literal[CARD_FORMAT]
    name: str
    model: CardModel
    training: CardTraining = CardTraining()
    rounds: Count
    sites: list[str]
    privacy: CardPrivacy
    metrics: list[MetricRow] = []
    intended_use: str = ""
    limitations: list[str] = []
    explanations: dict[str, Any] | None = None  # on public data: ``registry explain``
    calibration: CardCalibration | None = None  # federated DP calibration (``make demo``)
    anomaly: CardAnomaly | None = None  # federated DP anomaly model (``make demo``)


class ManifestWeights(_Open):
    file: str
    sha256: str = Field(pattern=SHA256_RE.pattern)
    size: Count


class Signer(_Open):
    algorithm: Literal["Ed25519"]
    key_fingerprint: str = Field(min_length=1, max_length=64)


class Manifest(_Open):
    format: Literal[MANIFEST_FORMAT]
    version: str = Field(pattern=VERSION_RE.pattern)
    sequence: int = Field(ge=1, le=INT64_MAX)
    created_at: str = Field(max_length=32)
    weights: ManifestWeights
    card: Card
    signer: Signer


class ManifestError(ValueError):
    """A manifest that does not match the schema; the message names the field."""


def _problem(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "(top level)"
    return f"{where}: {first['msg']}"


def validate_manifest(manifest: Any) -> Manifest:
    """The parsed manifest; :class:`ManifestError` naming the first bad field otherwise."""
    try:
        json.dumps(manifest, allow_nan=False)
    except (TypeError, ValueError):
        raise ManifestError("manifest: holds NaN or Infinity (not JSON)") from None
    try:
        return Manifest.model_validate(manifest)
    except ValidationError as exc:
        raise ManifestError(f"manifest: {_problem(exc)}") from None


def new_manifest(
    card: dict[str, Any],
    weights_file: str,
    weights_sha256: str,
    weights_size: int,
    version: str,
    sequence: int,
    created_at: str,
    key_fingerprint: str,
) -> dict[str, Any]:
    """The (unsigned) manifest of ``card`` and its weights (checked by whoever receives it)."""
    return {
        "format": MANIFEST_FORMAT,
        "version": version,
        "sequence": sequence,
        "created_at": created_at,
        "weights": {"file": weights_file, "sha256": weights_sha256, "size": weights_size},
        "card": card,
        "signer": {"algorithm": "Ed25519", "key_fingerprint": key_fingerprint},
    }
