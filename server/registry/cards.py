"""Model cards built from a ServerApp run directory.

A run directory holds the model folder (``shared/model_folder.py``: weights and
``model_config.json`` with ``architecture_hash``) and ``run.json``, the run record
(``shared/run_record.py``: the ServerApp writes a ``RunRecord``, this module reads one).
Weights and model configuration are required and checked; every field of the run record is
optional and a card says "not reported" rather than guessing. Fields read::

    flower_run_id, run_name, started_unix, finished_unix (seconds since the epoch), data,
    config                              the run configuration (object); the strategy is its
                                        federation.strategy
    architecture_hash                   if not in model_config.json (they must agree)
    sites                               list of site names (else participating_sites, else
                                        taken from the rounds)
    intended_use, limitations           override the defaults below
    patient_level_dp                    accountant, privacy_unit, delta for every site
    rounds: an integer, or a list of
      {"round": 1, "federated_eval": {"loss": 0.7, …},
       "sites": {"site-a": {"epsilon": 1.2, "delta": 1e-5, "privacy-unit": "patient",
                            "accountant": "rdp", "declined": 1}, …}}
      (the sites' reply metrics under their release names, shared/release.py; "sites" may
      also be "privacy", or a list of objects with a "site" key)

``epsilon`` per round is the site's *cumulative* ε after that round (what the site ledger
reports); a per-round increment, if present, is carried as ``epsilon_round``.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from safetensors import safe_open

from semiofed.shared.atomic import json_safe
from semiofed.shared.errors import FormatError
from semiofed.shared.labels import CLASSES
from semiofed.shared.manifest import CARD_FORMAT, CardAnomaly, CardCalibration
from semiofed.shared.model_folder import CONFIG_FILE, WEIGHTS_FILE
from semiofed.shared.release import DECLINED, DELTA, EPSILON, EPSILON_ROUND, PRIVACY_UNIT
from semiofed.shared.run_record import RUN_FILE, RunRecord, read_json_object, read_run_record

from .storage import NotSafetensors, check_safetensors

#: Global explanations on public data (``semiofed registry explain``), carried by the card.
EXPLANATIONS_FILE = "explanations.json"
EXPLANATIONS_FORMAT = "semiofed-explanations-1"
#: The consortium's DP calibration and anomaly model (``make demo`` writes it), carried by
#: the card's ``calibration`` and ``anomaly`` sections.
FEDERATED_CALIBRATION_FILE = "federated_calibration.json"
FEDERATED_CALIBRATION_FORMAT = "semiofed-federated-calibration-1"

DEFAULT_INTENDED_USE = (
    "Research decision support at consortium sites: classifying seizure semiology "
    f"({', '.join(CLASSES)}) from MediaPipe keypoint recordings of video-EEG monitoring, "
    "for local analysis by clinicians. Not a medical device; every output needs review by "
    "an epileptologist."
)
DEFAULT_LIMITATIONS = (
    "Trained only on the participating sites' recordings; performance elsewhere (other "
    "cameras, populations, seizure types) is unknown until validated locally.",
    "Differentially private training adds noise: rare classes suffer most.",
    "Sees keypoints only (no EEG, audio or raw video); occlusion or poor lighting degrade it.",
    "Privacy guarantees hold per site for the stated privacy unit, δ and accountant; they do "
    "not compose into one consortium-wide ε.",
)


def _number(value: Any, path: Path, field: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FormatError(path, f"{field} must be a number, got {value!r}")
    return json_safe(float(value))


def _iso_time(value: Any, path: Path, field: str) -> str | None:
    seconds = _number(value, path, field)
    if seconds is None:
        return None
    try:
        moment = datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        raise FormatError(path, f"{field} is not a time in seconds: {value!r}") from None
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def weights_summary(path: Path) -> dict[str, Any]:
    """Tensor count, parameter count and dtypes of a safetensors file."""
    if not path.is_file():
        raise FormatError(path, "missing (required in a run directory)")
    try:
        check_safetensors(path)
    except NotSafetensors as exc:
        raise FormatError(path, str(exc)) from None
    params, dtypes = 0, set()
    with safe_open(str(path), framework="numpy") as fh:
        keys = list(fh.keys())
        for key in keys:
            sl = fh.get_slice(key)
            params += math.prod(sl.get_shape())
            dtypes.add(str(sl.get_dtype()))
    return {
        "format": "safetensors",
        "tensors": len(keys),
        "parameters": params,
        "dtypes": sorted(dtypes),
    }


def _site_entries(raw: Any, path: Path, where: str) -> dict[str, dict[str, Any]]:
    if raw is None:
        return {}
    if isinstance(raw, dict):
        items = list(raw.items())
    elif isinstance(raw, list):
        items = []
        for i, entry in enumerate(raw):
            if not isinstance(entry, dict) or not isinstance(entry.get("site"), str):
                raise FormatError(path, f"{where}[{i}] must be an object with a 'site' name")
            items.append((entry["site"], entry))
    else:
        raise FormatError(path, f"{where} must be an object keyed by site or a list")
    out = {}
    for site, entry in items:
        if not isinstance(entry, dict):
            raise FormatError(path, f"{where}.{site} must be an object")
        out[str(site)] = entry
    return out


def _rounds(run: RunRecord, path: Path) -> tuple[int, list[dict[str, Any]]]:
    raw = run.rounds
    if raw is None:
        return 0, []
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw, []
    if not isinstance(raw, list):
        raise FormatError(path, "rounds must be an integer or a list of round objects")
    rounds = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict):
            raise FormatError(path, f"rounds[{i}] must be an object")
        number = entry.get("round", i + 1)
        if isinstance(number, bool) or not isinstance(number, int):
            raise FormatError(path, f"rounds[{i}].round must be an integer")
        metrics = entry.get("federated_eval") or {}
        if not isinstance(metrics, dict):
            raise FormatError(path, f"rounds[{i}].federated_eval must be an object")
        sites_key = "sites" if "sites" in entry else "privacy"
        sites = _site_entries(entry.get(sites_key), path, f"rounds[{i}].{sites_key}")
        rounds.append({"round": number, "metrics": metrics, "sites": sites})
    return len(rounds), rounds


def _privacy(run: RunRecord, rounds: list[dict[str, Any]], path: Path) -> dict[str, Any]:
    # the ServerApp states them under "patient_level_dp"; its rounds carry the sites' reply
    # metrics under their release names
    stated = run.patient_level_dp if isinstance(run.patient_level_dp, dict) else {}
    defaults = {k: stated.get(k) for k in ("accountant", "privacy_unit", "delta")}
    per_site: dict[str, dict[str, Any]] = {}
    for i, rnd in enumerate(rounds):
        for site, entry in rnd["sites"].items():
            where = f"rounds[{i}].sites.{site}"
            rec = per_site.setdefault(
                site,
                {
                    "privacy_unit": None,
                    "delta": None,
                    "accountant": None,
                    "epsilon_by_round": [],
                    "declined_rounds": [],
                },
            )
            for key, name in (("privacy_unit", PRIVACY_UNIT), ("accountant", "accountant")):
                value = entry.get(name, defaults[key])
                if value is not None:
                    rec[key] = str(value)
            delta = _number(entry.get(DELTA, defaults["delta"]), path, f"{where}.{DELTA}")
            if delta is not None:
                rec["delta"] = delta
            if entry.get(DECLINED):
                rec["declined_rounds"].append(rnd["round"])
            eps = _number(entry.get(EPSILON), path, f"{where}.{EPSILON}")
            if eps is not None:
                point: dict[str, Any] = {"round": rnd["round"], "epsilon": eps}
                inc = _number(entry.get(EPSILON_ROUND), path, f"{where}.{EPSILON_ROUND}")
                if inc is not None:
                    point["epsilon_round"] = inc
                rec["epsilon_by_round"].append(point)
    for rec in per_site.values():
        values = [p["epsilon"] for p in rec["epsilon_by_round"] if p["epsilon"] is not None]
        rec["epsilon_final"] = max(values) if values else None
    units = {rec["privacy_unit"] for rec in per_site.values()}
    return {
        "privacy_unit": units.pop() if len(units) == 1 else None,
        "per_site": dict(sorted(per_site.items())),
        "statement": (
            "epsilon is each site's cumulative ε after that round at the stated δ and privacy "
            "unit, as reported by the site's own accountant (its ledger spans every round the "
            "site ever trained, earlier runs included); epsilon_final is the latest such value. "
            "Guarantees are per site: they are not added or averaged across sites."
        ),
    }


def _sites(run: RunRecord, rounds: list[dict[str, Any]], path: Path) -> list[str]:
    raw = run.sites if run.sites is not None else run.participating_sites
    if raw is None:
        return sorted({site for rnd in rounds for site in rnd["sites"]})
    if not isinstance(raw, list):
        raise FormatError(path, "sites must be a list of site names")
    names = []
    for i, entry in enumerate(raw):
        name = entry.get("name", entry.get("id")) if isinstance(entry, dict) else entry
        if not isinstance(name, str):
            raise FormatError(path, f"sites[{i}] must be a site name")
        names.append(name)
    return names


def architecture_hash(config: dict[str, Any], run: RunRecord, run_dir: Path) -> str:
    from_config, from_run = config.get("architecture_hash"), run.architecture_hash
    if from_config and from_run and from_config != from_run:
        raise FormatError(
            run_dir / RUN_FILE,
            f"architecture_hash {from_run!r} differs from {CONFIG_FILE}'s {from_config!r}",
        )
    value = from_config or from_run
    if not isinstance(value, str) or not value:
        raise FormatError(
            run_dir / CONFIG_FILE, f"field 'architecture_hash' missing (and {RUN_FILE} has none)"
        )
    return value


def _explanations(run_dir: Path) -> dict[str, Any] | None:
    """The run's global explanations on public data, or None when it has none."""
    path = run_dir / EXPLANATIONS_FILE
    if not path.exists():
        return None
    doc = read_json_object(path)
    if doc.get("format") != EXPLANATIONS_FORMAT or not isinstance(doc.get("classes"), dict):
        raise FormatError(path, f"not a {EXPLANATIONS_FORMAT} document")
    return doc


def _federated_calibration(run_dir: Path) -> dict[str, Any]:
    """The card's ``calibration`` and ``anomaly`` sections (both None when the run has none),
    each checked against its schema."""
    path = run_dir / FEDERATED_CALIBRATION_FILE
    if not path.exists():
        return {"calibration": None, "anomaly": None}
    doc = read_json_object(path)
    if doc.get("format") != FEDERATED_CALIBRATION_FORMAT:
        raise FormatError(path, f"not a {FEDERATED_CALIBRATION_FORMAT} document")
    out = {}
    for key, schema in (("calibration", CardCalibration), ("anomaly", CardAnomaly)):
        try:
            out[key] = schema.model_validate(doc.get(key)).model_dump(mode="json")
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in (key, *first["loc"]))
            raise FormatError(path, f"{where}: {first['msg']}") from None
    return out


def build_card(run_dir: str | Path) -> dict[str, Any]:
    """The model card of the run in ``run_dir`` (a JSON-serialisable dict)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FormatError(run_dir, "not a run directory")
    weights = weights_summary(run_dir / WEIGHTS_FILE)
    config = read_json_object(run_dir / CONFIG_FILE)
    run_path = run_dir / RUN_FILE
    run = read_run_record(run_dir)
    n_rounds, rounds = _rounds(run, run_path)
    training = run.config
    federation = training.get("federation", {})
    strategy = federation.get("strategy") if isinstance(federation, dict) else None
    limitations = run.limitations if run.limitations is not None else list(DEFAULT_LIMITATIONS)
    if isinstance(limitations, str):
        limitations = [limitations]
    if run.data == "synthetic":
        limitations = [
            "Trained on SYNTHETIC recordings only: not for any clinical use.",
            *limitations,
        ]
    card = {
        "format": CARD_FORMAT,
        "name": str(run.run_name or "semiofed-seizure-model"),
        "model": {
            "architecture": config,
            "architecture_hash": architecture_hash(config, run, run_dir),
            "weights": weights,
        },
        "training": {
            "run_id": None if run.flower_run_id is None else str(run.flower_run_id),
            "started_at": _iso_time(run.started_unix, run_path, "started_unix"),
            "finished_at": _iso_time(run.finished_unix, run_path, "finished_unix"),
            "strategy": None if strategy is None else str(strategy),
            "data": None if run.data is None else str(run.data),
            "configuration": training,
        },
        "rounds": n_rounds,
        "sites": _sites(run, rounds, run_path),
        "privacy": _privacy(run, rounds, run_path),
        "metrics": [{"round": rnd["round"], **rnd["metrics"]} for rnd in rounds],
        "intended_use": str(run.intended_use or DEFAULT_INTENDED_USE),
        "limitations": [str(x) for x in limitations],
        "explanations": _explanations(run_dir),
        **_federated_calibration(run_dir),
    }
    return json_safe(card)
