"""The run record (``RUN_DIR/run.json``): what a federated run did, written by the ServerApp
(``server/app.py``) and read by the model card (``server/registry/cards.py``).

:class:`RunRecord` is its one schema: the writer builds one, the reader parses ``run.json``
into one (:func:`parse_run_record`), so a field renamed on one side is renamed on both.
Every field is optional for the reader (a hand-written run directory may state less; a card
then says "not reported"); the card-only fields at the end let such a directory override the
card's defaults. The rounds' per-site entries carry the sites' reply metrics under their
release names (``shared/release.py``: ``epsilon``, ``epsilon-round``, ``delta``,
``privacy-unit``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from .atomic import atomic_write_json, json_safe
from .errors import FormatError

RUN_FILE = "run.json"
RUN_FORMAT = "semiofed-run-1"


@dataclass(frozen=True)
class RunRecord:
    format: str = RUN_FORMAT
    run_name: str | None = None  # the card's name
    flower_run_id: int | str | None = None
    started_unix: float | None = None  # seconds since the epoch
    finished_unix: float | None = None
    data: str | None = None  # what the sites trained on, e.g. "synthetic"
    config: dict[str, Any] = field(default_factory=dict)  # the validated run configuration
    approval_fields: dict[str, Any] | None = None
    rounds_planned: int | None = None
    # per round: {"round", "federated_eval": {…}, "sites": {site: reply metrics}, "declined", …}
    rounds: list[dict[str, Any]] | int | None = None
    participating_sites: list[str] | None = None
    site_privacy: dict[str, list[dict[str, Any]]] | None = None  # ε/δ/unit per site and round
    patient_level_dp: dict[str, Any] | None = None  # privacy_unit, delta, accountant
    central_dp: dict[str, Any] | None = None
    secure_aggregation: bool | None = None
    resumed_after_round: int | None = None
    # card-only (hand-written run directories): override what the card derives or defaults
    sites: list[Any] | None = None
    architecture_hash: str | None = None
    intended_use: str | None = None
    limitations: list[str] | str | None = None

    def to_json(self) -> dict[str, Any]:
        return cast(dict[str, Any], json_safe(dataclasses.asdict(self)))


_FIELDS = {f.name for f in dataclasses.fields(RunRecord)}


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path`` (a file of a run directory); one-line errors naming it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FormatError(path, "missing (required in a run directory)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(path, f"not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise FormatError(path, "must hold a JSON object")
    return data


def parse_run_record(doc: dict[str, Any], path: Path) -> RunRecord:
    """``doc`` (the JSON of ``path``) as a :class:`RunRecord`; unknown keys are ignored, the
    types of the fields are checked by their readers (the card names the field)."""
    known = {k: v for k, v in doc.items() if k in _FIELDS and v is not None}
    if not isinstance(known.get("config", {}), dict):
        raise FormatError(path, "config must be an object")
    return RunRecord(**known)


def read_run_record(run_dir: Path) -> RunRecord:
    path = run_dir / RUN_FILE
    return parse_run_record(read_json_object(path), path)


def write_run_record(run_dir: Path, record: RunRecord) -> None:
    atomic_write_json(run_dir / RUN_FILE, record.to_json())
