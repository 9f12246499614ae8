"""Demo comparison, run as ``python -m semiofed.client.baselines`` by ``semiofed demo``.

On the synthetic consortium only (where pooling is allowed because no real patient exists),
computed locally by the demo with every site's data on this machine — not by the
federation: the federated model of RUN_DIR, a centralized non-private model trained on
every site's training patients pooled, each site's local-only (non-private) model, the
motion-energy baseline and the detectors that know nothing (flag everything, coin flip,
random 10 %), all scored by :mod:`.evaluation` on each site's held-out test patients — the
same by-patient split the ClientApp uses. Each site picks each detector's decision
threshold on its own validation patients (patients no round trains on; for the federated
model that choice is outside the sites' ε: it is this analysis, not a release). The
overall row pools every site's test patients, each scored at its site's threshold.
Prints one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from semiofed.shared import baseline
from semiofed.shared.atomic import json_safe
from semiofed.shared.dataset import PatientWindows
from semiofed.shared.errors import SemioFedError
from semiofed.shared.labels import CLASS_INDEX, IGNORE_INDEX
from semiofed.shared.metrics import select_threshold
from semiofed.shared.recording import load_recording
from semiofed.shared.run_config import load_run_config

from . import site_task
from .dp_training import TrainConfig, train_local
from .evaluation import (
    DEFAULT_WINDOW,
    RecordingRef,
    evaluate_scores,
    predict,
    recording_refs,
)

#: Windows per step and steps of the non-private references (the run's batch-size counts
#: patients per DP step; plain SGD over windows uses ordinary mini-batches).
PLAIN_BATCH = 32
PLAIN_STEPS = 150
REFERENCE_SEED = 12345  # the coin of the detectors that know nothing


def fit_plain(cfg: dict[str, Any], patients: list[PatientWindows], device: str) -> Any:
    model = site_task.build_model(cfg)
    tcfg = TrainConfig(
        epochs=1,
        dp=False,
        batch_size=PLAIN_BATCH,
        steps_per_epoch=PLAIN_STEPS,
        lr=cfg["training"]["learning-rate"],
        augment=False,
        device=device,
        seed=cfg["federation"]["seed"],
        purpose="demo baseline",
    )
    train_local(model, patients, tcfg, ledger=None, progress=False)
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


def _site_scores(
    data: site_task.SiteData,
    models: dict[str, Any],
    refs: dict[Any, RecordingRef],
    rng: np.random.Generator,
    device: str,
) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
    """Per detector: (test scores, test type predictions, threshold chosen on validation)."""
    out: dict[str, tuple[np.ndarray, np.ndarray, float]] = {}
    y_val = _labels(data.val, "y_detect")
    for name, model in models.items():
        test = predict(model, data.test, device)
        val_prob = predict(model, data.val, device)["detect_prob"]
        out[name] = (test["detect_prob"], test["type_pred"], select_threshold(y_val, val_prob))
    y_train, t_train = _labels(data.train, "y_detect"), _labels(data.train, "y_type")
    seizure = t_train[(y_train == 1) & (t_train != IGNORE_INDEX)]
    majority = int(np.bincount(seizure).argmax()) if len(seizure) else CLASS_INDEX["bckg"]
    thr = baseline.fit_threshold(_energy(data.val, refs), y_val.astype(bool))
    energy = _energy(data.test, refs)
    types = np.where(baseline.predict(energy, thr), majority, CLASS_INDEX["bckg"])
    out["motion energy"] = (energy, types, thr)
    n = sum(len(p) for p in data.test)
    for name in baseline.REFERENCE_DETECTORS:
        out[name] = (*baseline.reference_detector(name, n, rng), 0.5)
    return out


def _row(m: dict[str, Any]) -> dict[str, Any]:
    ev = m["events"]
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


def score_table(
    data: dict[str, site_task.SiteData],
    data_root: Path,
    models: dict[str, dict[str, Any]],
    device: str,
) -> dict[str, Any]:
    """Every detector's figures per site (``models[site]``: name -> model, then the
    motion-energy baseline and the detectors that know nothing) and overall."""
    for s, d in data.items():
        if not d.val:
            raise SemioFedError(f"{s}: no validation patient (training.val-fraction is 0)")
    rng = np.random.default_rng(REFERENCE_SEED)
    out: dict[str, Any] = {
        "plain_steps": PLAIN_STEPS,
        "plain_batch": PLAIN_BATCH,
        "patients": {
            s: {k: len(getattr(d, k)) for k in ("train", "val", "test")} for s, d in data.items()
        },
        "sites": {},
    }
    pooled: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    all_refs: dict[Any, RecordingRef] = {}
    for s, d in data.items():
        refs = recording_refs(data_root / s, d.test + d.val)
        all_refs.update(refs)
        rows = {}
        for name, (score, types, thr) in _site_scores(d, models[s], refs, rng, device).items():
            rows[name] = _row(evaluate_scores(d.test, score, types, thr, refs=refs))
            # pooled at the site's own threshold: shift so that 0.5 is every site's threshold
            pooled.setdefault(name, []).append((score - thr + 0.5, types))
        out["sites"][s] = rows
    test = [p for d in data.values() for p in d.test]
    out["overall"] = {
        name: _row(
            evaluate_scores(
                test,
                np.concatenate([a for a, _ in parts]),
                np.concatenate([b for _, b in parts]),
                0.5,
                refs=all_refs,
            )
        )
        for name, parts in pooled.items()
    }
    return out


def compare(
    config: Path, data_root: Path, sites: list[str], run_dir: Path, device: str
) -> dict[str, Any]:
    """The demo's table: the federated model of ``run_dir`` beside the references."""
    from safetensors.torch import load_file

    cfg = load_run_config(config)
    data = {s: site_task.load_site(data_root / s, cfg) for s in sites}
    federated = site_task.build_model(cfg)
    federated.load_state_dict(load_file(str(run_dir / "model.safetensors")))
    central = fit_plain(cfg, [p for s in sites for p in data[s].train], device)
    models = {
        s: {
            "federated": federated,
            "centralized": central,
            "local-only": fit_plain(cfg, data[s].train, device),
        }
        for s in sites
    }
    return score_table(data, data_root, models, device)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--data-root", type=Path, required=True)
    p.add_argument("--sites", nargs="+", required=True)
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    res = compare(args.config, args.data_root, args.sites, args.run_dir, args.device)
    json.dump(json_safe(res), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
