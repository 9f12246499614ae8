"""Demo comparison, run as ``python -m semiofed.client.baselines`` by ``semiofed demo``.

On the synthetic consortium only (where pooling is allowed because no real patient exists),
computed locally by the demo with every site's data on this machine — not by the
federation: the federated model of RUN_DIR, a centralized non-private model trained on
every site's training patients pooled, each site's local-only (non-private) model, each
site's non-private fine-tune of the federated model (``fed + local tune``: a product
option, the tuned model never leaves the site), the motion-energy baseline and the
detectors that know nothing (flag everything, coin flip, random 10 %), all scored by
:mod:`.evaluation` on each site's held-out test patients — the same by-patient split the
ClientApp uses. The non-private references are trained with steps scaled to their data and
early-stopped on their validation patients (:func:`fit_plain`).

Every model of the table shares the round-0 model's frozen, publicly pretrained encoders, so
each site's windows are read with their embeddings from the site's embedding cache
(``--state-root``, built by the federated rounds; it never leaves the site) and the public
tuning patients are embedded once in memory: every model trains and scores its trainable top
only, the same function as the full forward pass.

Operating point (:class:`~.evaluation.OperatingPoint`, the same procedure for every learned
detector, all on PUBLIC data: :mod:`semiofed.shared.public_data`): the **event operating
point** — threshold and event rule (smoothing, minimum duration) behind event sensitivity,
false alarms/h and specificity — is chosen on the public tuning patients together with the
public background recordings (hours of background; :func:`~.evaluation.select_operating_point`),
and the **type threshold** — where the detections that are typed (one type per detection:
:func:`~.evaluation.event_types`) are cut — on the tuning patients. For the federated model
that is post-processing of the DP release with public data: it costs no ε and uses no
patient. The motion-energy threshold is fitted on the site's validation
patients; the detectors that know nothing use 0.5. The overall row pools every site's test
patients, each scored at its site's operating point.
Prints one JSON document on stdout and keeps it as RUN_DIR/comparison.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from semiofed.shared import baseline
from semiofed.shared.atomic import atomic_write_bytes, json_safe
from semiofed.shared.dataset import PatientWindows
from semiofed.shared.errors import SemioFedError
from semiofed.shared.labels import CLASS_INDEX, IGNORE_INDEX
from semiofed.shared.metrics import EventCounts, paired_bootstrap, window_metrics
from semiofed.shared.public_data import (
    BACKGROUND_DIR,
    TUNING_CACHE,
    background_patients,
    tuning_patients,
)
from semiofed.shared.recording import load_recording
from semiofed.shared.run_config import RunConfig, load_run_config

from . import site_task
from .demo_calibration import Progress
from .dp_training import TrainConfig, train_local
from .evaluation import (
    DEFAULT_WINDOW,
    EVENT_AIM_FALSE_ALARMS_PER_HOUR,
    TYPE_RULE,
    EventRule,
    OperatingPoint,
    RecordingRef,
    evaluate_scores,
    event_types,
    predict,
    recording_counts,
    recording_refs,
    select_operating_point,
)
from .feature_cache import EmbeddingCache, embed_patients, site_features

#: Windows per step of the non-private references (the run's batch-size counts patients per
#: DP step; plain training over windows uses ordinary mini-batches). A reference is trained as
#: a competent site would: its steps scale with its data (PLAIN_EPOCHS evaluations, one every
#: quarter pass over its training windows) and the state kept is the best on its validation
#: patients (type macro-F1, then AUROC), so the pooled model is not cut short by a step count
#: sized for one site.
PLAIN_BATCH = 32
PLAIN_EPOCHS = 8
PASSES_PER_EPOCH = 0.25
COMPARISON_FILE = "comparison.json"
REFERENCE_SEED = 12345  # the coin of the detectors that know nothing
#: The site's own non-private fine-tune of the federated model (never leaves the site).
FINE_TUNED = "fed + local tune"


def plain_steps_per_epoch(patients: list[PatientWindows]) -> int:
    windows = sum(len(p) for p in patients)
    return max(1, math.ceil(windows * PASSES_PER_EPOCH / PLAIN_BATCH))


def fit_plain(
    cfg: RunConfig,
    patients: list[PatientWindows],
    val: list[PatientWindows],
    device: str,
    init: list[np.ndarray] | None = None,
) -> Any:
    """A non-private reference trained on ``patients``, early-stopped on ``val`` (from the
    round-0 model, or from ``init``: the trainable arrays of another model)."""
    model = site_task.build_model(cfg, init)
    tcfg = TrainConfig(
        epochs=PLAIN_EPOCHS,
        dp=False,
        batch_size=PLAIN_BATCH,
        steps_per_epoch=plain_steps_per_epoch(patients),
        lr=cfg.training.learning_rate,
        augment=False,
        device=device,
        seed=cfg.federation.seed,
        purpose="demo baseline",
    )
    train_local(model, patients, tcfg, ledger=None, progress=False, val_patients=val)
    return model


def _energy(patients: list[PatientWindows], refs: dict[Any, RecordingRef]) -> np.ndarray:
    """Motion energy of every window of ``patients`` (WindowDataset order)."""
    out = []
    for pw in patients:
        e = np.zeros(len(pw))
        for rec in dict.fromkeys(pw.recording.tolist()):
            sel = pw.recording == rec
            recording = load_recording(refs[(pw.site, pw.patient, rec)].path)
            e[sel] = baseline.window_energy(recording, pw.t0[sel], DEFAULT_WINDOW.seconds)
        out.append(e)
    return np.concatenate(out)


def _labels(patients: list[PatientWindows], key: str) -> np.ndarray:
    return np.concatenate([getattr(p, key) for p in patients])


Scored = tuple[np.ndarray, np.ndarray, OperatingPoint]  # test scores, type decisions, point


@dataclass
class Tuning:
    """Public tuning patients (:func:`~semiofed.shared.public_data.tuning_patients`) and the
    public background recordings (:func:`~semiofed.shared.public_data.background_patients`),
    with their recordings: where every learned detector's operating point is chosen."""

    patients: list[PatientWindows]
    refs: dict[Any, RecordingRef]
    background: list[PatientWindows]
    background_refs: dict[Any, RecordingRef]

    def operating_point(self, model: Any, device: str) -> OperatingPoint:
        score = predict(model, self.patients, device)["detect_prob"]
        bg = predict(model, self.background, device)["detect_prob"]
        return select_operating_point(
            (self.patients, score, self.refs), [(self.background, bg, self.background_refs)]
        )

    def background_hours(self) -> float:
        """Hours of background of the tuning patients and the background recordings."""
        counts = recording_counts(
            self.patients, np.zeros(sum(map(len, self.patients))), refs=self.refs
        )
        counts.add(
            recording_counts(
                self.background,
                np.zeros(sum(map(len, self.background))),
                refs=self.background_refs,
            )
        )
        return float(counts.summary()["background_hours"])


def _public_set(
    folder: Path, patients: list[PatientWindows], model: Any
) -> tuple[list[PatientWindows], dict[Any, RecordingRef]]:
    """``patients`` of the public consortium in ``folder`` with their embeddings under
    ``model``'s frozen encoders when it has them (cached in ``folder/cache``), and their
    recordings."""
    if model is not None:
        patients = embed_patients(model, patients, EmbeddingCache(folder / TUNING_CACHE))
    refs: dict[Any, RecordingRef] = {}
    for site in dict.fromkeys(p.site for p in patients):
        refs.update(recording_refs(folder / site, [p for p in patients if p.site == site]))
    return patients, refs


def load_tuning(data: Path, model: Any = None, background: bool = True) -> Tuning:
    """The public tuning patients and (unless not ``background``) the public background
    recordings, with their embeddings under ``model``'s frozen encoders when it has them;
    features and embeddings are cached in ``data/cache`` and ``data/background/cache``
    (:data:`~semiofed.shared.public_data.TUNING_CACHE`; public data, so plain folders)."""
    bg_dir = data / BACKGROUND_DIR
    tuning = tuning_patients(data, site_features(data / TUNING_CACHE))
    bg = background_patients(data, site_features(bg_dir / TUNING_CACHE)) if background else []
    return Tuning(*_public_set(data, tuning, model), *_public_set(bg_dir, bg, model))


def _site_scores(
    data: site_task.SiteData,
    models: dict[str, Any],
    refs: dict[Any, RecordingRef],
    points: dict[int, OperatingPoint],
    rng: np.random.Generator,
    device: str,
) -> dict[str, Scored]:
    """Per detector: test scores, test type decisions and its operating point (learned
    models: ``points[id(model)]``, types decided at its type threshold; motion energy:
    threshold fitted on validation patients)."""
    out: dict[str, Scored] = {}
    for name, model in models.items():
        test = predict(model, data.test, device)
        op = points[id(model)]
        types = event_types(data.test, test["detect_prob"], test["type_logits"], op.type_threshold)
        out[name] = (test["detect_prob"], types, op)
    y_val = _labels(data.val, "y_detect")
    y_train, t_train = _labels(data.train, "y_detect"), _labels(data.train, "y_type")
    seizure = t_train[(y_train == 1) & (t_train != IGNORE_INDEX)]
    majority = int(np.bincount(seizure).argmax()) if len(seizure) else CLASS_INDEX["bckg"]
    thr = baseline.fit_threshold(_energy(data.val, refs), y_val.astype(bool))
    energy = _energy(data.test, refs)
    types = np.where(baseline.predict(energy, thr), majority, CLASS_INDEX["bckg"])
    out["motion energy"] = (energy, types, OperatingPoint(thr, EventRule(), thr))
    n = sum(len(p) for p in data.test)
    for name in baseline.REFERENCE_DETECTORS:
        point = OperatingPoint(0.5, EventRule(), 0.5)
        out[name] = (*baseline.reference_detector(name, n, rng), point)
    return out


def _row(m: dict[str, Any], ev: dict[str, Any]) -> dict[str, Any]:
    return {
        "auroc": m["auroc_seizure"],
        "macro_f1": m["macro_f1"],
        "per_class_f1": m["per_class_f1"],
        "event_sensitivity": ev["sensitivity"],
        "false_alarms_per_hour": ev["false_alarms_per_hour_unmerged"],
        "false_alarms_per_hour_szcore": ev["false_alarms_per_hour"],
        "specificity": ev["specificity"],
        "ref_events": ev["ref_events"],
        "background_hours": ev["background_hours"],
        "threshold": m["threshold"],
    }


def _paired_difference(test: list[PatientWindows], a: Scored, b: Scored) -> dict[str, list[float]]:
    """95 % intervals of detector a's AUROC and type macro-F1 minus b's over bootstrap
    resamples of the test patients (both scored on the same resample)."""
    y_det, y_type = _labels(test, "y_detect"), _labels(test, "y_type")
    offsets = np.cumsum([0] + [len(p) for p in test])
    groups = [np.arange(offsets[i], offsets[i + 1]) for i in range(len(test))]

    def metric(det: Scored, i: np.ndarray) -> tuple[float, float]:
        m = window_metrics(y_type[i], det[1][i], y_det[i], det[0][i])
        return m["auroc_seizure"], m["macro_f1"]

    def diff(k: int) -> Any:
        return lambda i: metric(a, i)[k] - metric(b, i)[k]

    return {
        "auroc": list(paired_bootstrap(groups, diff(0))),
        "macro_f1": list(paired_bootstrap(groups, diff(1))),
    }


def score_table(
    data: dict[str, site_task.SiteData],
    data_root: Path,
    models: dict[str, dict[str, Any]],
    tuning: Tuning,
    device: str,
) -> dict[str, Any]:
    """Every detector's figures per site (``models[site]``: name -> model, then the
    motion-energy baseline and the detectors that know nothing) and overall (window metrics
    of the pooled test windows, each site's scores shifted so that its threshold is 0.5;
    event counts summed over the sites)."""
    for s, d in data.items():
        if not d.val:
            raise SemioFedError(f"{s}: no validation patient (training.val-fraction is 0)")
    rng = np.random.default_rng(REFERENCE_SEED)
    points: dict[int, OperatingPoint] = {}
    distinct = {id(m): m for ms in models.values() for m in ms.values()}.values()
    for model in tqdm(distinct, desc="operating points", unit="model", disable=None):
        points[id(model)] = tuning.operating_point(model, device)
    out: dict[str, Any] = {
        "plain_batch": PLAIN_BATCH,
        "plain_epochs": PLAIN_EPOCHS,
        "tuning_patients": len(tuning.patients),
        "background_patients": len(tuning.background),
        "tuning_background_hours": tuning.background_hours(),
        "event_aim_false_alarms_per_hour": EVENT_AIM_FALSE_ALARMS_PER_HOUR,
        "type_rule": asdict(TYPE_RULE),
        "patients": {
            s: {k: len(getattr(d, k)) for k in ("train", "val", "test")} for s, d in data.items()
        },
        "sites": {},
    }
    pooled: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    counts: dict[str, EventCounts] = {}
    for s, d in data.items():
        refs = recording_refs(data_root / s, d.test + d.val)
        rows = {}
        scored = _site_scores(d, models[s], refs, points, rng, device)
        for name, (score, types, op) in scored.items():
            m = evaluate_scores(d.test, score, types, op.threshold, events=False)
            c = recording_counts(d.test, score, DEFAULT_WINDOW, op.threshold, refs, op.rule)
            rows[name] = _row(m, c.summary()) | {
                "event_rule": asdict(op.rule),
                "type_threshold": op.type_threshold,
            }
            counts.setdefault(name, EventCounts()).add(c)
            pooled.setdefault(name, []).append((score - op.threshold + 0.5, types))
        out["sites"][s] = rows
        if "federated" in rows and "local-only" in rows:
            out.setdefault("federated_minus_local", {})[s] = _paired_difference(
                d.test, *(scored[k] for k in ("federated", "local-only"))
            )
    test = [p for d in data.values() for p in d.test]
    out["overall"] = {
        name: _row(
            evaluate_scores(
                test,
                np.concatenate([a for a, _ in parts]),
                np.concatenate([b for _, b in parts]),
                0.5,
                events=False,
            ),
            counts[name].summary(),
        )
        for name, parts in pooled.items()
    }
    return out


def compare(
    config: Path,
    data_root: Path,
    sites: list[str],
    run_dir: Path,
    tuning_dir: Path,
    device: str,
    state_root: Path | None = None,
) -> dict[str, Any]:
    """The demo's table: the federated model of ``run_dir`` beside the references. With
    ``state_root``, each site's windows come through its feature and embedding caches
    (``STATE_ROOT/<site>``, as in the federated rounds)."""
    from semiofed.shared.model_folder import load_weights

    progress = Progress("comparison")
    cfg = load_run_config(config)
    data = {
        s: site_task.load_site(data_root / s, cfg, state_root / s if state_root else None)
        for s in sites
    }
    progress(f"{len(sites)} sites loaded")
    federated = site_task.build_model(cfg)
    load_weights(run_dir, federated)
    tuning = load_tuning(tuning_dir, federated)
    progress(f"{len(tuning.patients)} public tuning patients loaded")
    pooled = [p for s in sites for p in data[s].train]
    central = fit_plain(cfg, pooled, [p for s in sites for p in data[s].val], device)
    progress("centralized reference trained")
    arrays = site_task.get_arrays(federated)
    models = {}
    for s in tqdm(sites, desc="site references", unit="site", disable=None):
        models[s] = {
            "federated": federated,
            "centralized": central,
            "local-only": fit_plain(cfg, data[s].train, data[s].val, device),
            FINE_TUNED: fit_plain(cfg, data[s].train, data[s].val, device, init=arrays),
        }
    progress("local-only and fed + local tune references trained")
    table = score_table(data, data_root, models, tuning, device)
    progress("every detector scored")
    return table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--data-root", type=Path, required=True)
    p.add_argument("--sites", nargs="+", required=True)
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument(
        "--tuning-dir", type=Path, required=True, help="public tuning data (made if absent)"
    )
    p.add_argument(
        "--state-root", type=Path, help="the sites' state folders (feature and embedding caches)"
    )
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    site_task.small_work_threads()
    res = compare(
        args.config,
        args.data_root,
        args.sites,
        args.run_dir,
        args.tuning_dir,
        args.device,
        args.state_root,
    )
    doc = json.dumps(json_safe(res))
    atomic_write_bytes(args.run_dir / COMPARISON_FILE, doc.encode())
    sys.stdout.write(doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
