"""Federated DP calibration of the demo's final model, run as
``python -m semiofed.client.demo_calibration`` by ``semiofed demo`` after the federated run.

Each site does what ``semiofed site calibrate --share`` does, with its own state folder
(``STATE_ROOT/<site>``: the ledger the ClientApp charged, the signed audit trail): round 1,
a DP temperature summary; the coordinator merges them (post-processing); round 2, a DP
conformal summary and a DP Mondrian (per-class) summary at the merged temperature, merged
into the consortium's threshold and per-class thresholds; then the anomaly model
(:mod:`.anomaly`, every patient with seizure events): a DP class-sum release, merged with the
public prior into the semiology-event class Gaussians, then a DP threshold release under that
model, which sets its flag threshold. Every summary is charged
to the site's ledger and recorded in its trail before it exists
(:func:`.dp_release.release_gaussian`).

Calibration patients: a site's patients the model was not trained on (validation and test
sides of the run's split) when at least :data:`~semiofed.shared.analysis.calibration.MIN_PATIENTS`
of them have labelled windows; otherwise all of its patients with labelled windows,
training patients included (the DP guarantee is the same — each patient is one clipped
contribution — but the split-conformal coverage guarantee then does not hold). Prints one
JSON document on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from semiofed.shared.analysis import calibration as cal
from semiofed.shared.labels import CLASSES
from semiofed.shared.run_config import load_run_config

from . import site_task
from .anomaly import PublicEvents, share_anomaly, share_anomaly_threshold, site_events
from .dp_release import labelled_outputs, share_calibration


class Progress:
    """One line per stage on stderr with the seconds since the start (the demo shows them;
    stdout carries the JSON result)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.start = time.perf_counter()

    def __call__(self, stage: str) -> None:
        elapsed = time.perf_counter() - self.start
        print(f"    {self.what}: {stage} ({elapsed:.1f} s)", file=sys.stderr, flush=True)


def calibrate(
    config: Path,
    data_root: Path,
    sites: list[str],
    run_dir: Path,
    state_root: Path,
    tuning_dir: Path,
    noise_multiplier: float = cal.DEFAULT_NOISE_MULTIPLIER,
    coverage: float = cal.DEFAULT_COVERAGE,
) -> dict[str, Any]:
    """Both rounds and the anomaly summary for every site; the merged temperature,
    thresholds and anomaly model and, per site, the patients used and the ε of each of its
    summaries (``tuning_dir``: the public tuning patients and their cache)."""
    from semiofed.shared.model_folder import load_weights

    progress = Progress("calibration")
    cfg = load_run_config(config)
    model = site_task.build_model(cfg)
    load_weights(run_dir, model)
    model.eval()
    outputs, seizures, report = {}, {}, {}
    for s in sites:
        data = site_task.load_site(data_root / s, cfg, state_root / s)  # its feature cache
        progress(f"{s}: {len(data.train + data.val + data.test)} patients loaded")
        held = labelled_outputs(model, data.val + data.test)
        use_all = len(held) < cal.MIN_PATIENTS
        outputs[s] = labelled_outputs(model, data.train) + held if use_all else held
        seizures[s] = site_events(data.train + data.val + data.test)
        progress(f"{s}: outputs of {len(outputs[s])} patients")
        report[s] = {
            "held_out_patients": len(held),
            "patients": len(outputs[s]),
            "patients_used": "all (training included)" if use_all else "held-out",
            "anomaly_patients": len(seizures[s]),
            "summaries": [],
        }
    temperature: float | None = None
    merged: dict[str, Any] = {}
    for kind in cal.FEDERATED_KINDS:
        summaries = []
        for s in sites:
            summary, total, _ = share_calibration(
                state_root / s, kind, outputs[s], noise_multiplier, temperature
            )
            summaries.append(summary)
            report[s]["summaries"].append(
                {"kind": kind, "epsilon": summary["epsilon"], "epsilon_total_after": total}
            )
        if kind == "temperature":
            temperature = cal.merge_temperature(summaries)
            merged["temperature"] = temperature
        elif kind == cal.MONDRIAN:
            thresholds, _ = cal.merge_mondrian(summaries, coverage)
            merged["class_thresholds"] = dict(zip(CLASSES, map(float, thresholds), strict=True))
        else:
            threshold, mass = cal.merge_conformal(summaries, coverage)
            merged.update(conformal_threshold=threshold, noisy_patients=mass, coverage=coverage)
        progress(f"{kind} summaries released and merged")
    merged["anomaly"] = _anomaly(tuning_dir, sites, state_root, seizures, report)
    progress("anomaly summaries released and merged")
    return {
        **merged,
        "noise_multiplier": noise_multiplier,
        "delta": summaries[0]["delta"],
        "accountant": summaries[0]["accountant"],
        "sites": report,
    }


def _anomaly(
    tuning_dir: Path,
    sites: list[str],
    state_root: Path,
    seizures: dict[str, list],
    report: dict[str, Any],
    noise_multiplier: float = cal.DEFAULT_NOISE_MULTIPLIER,
) -> dict[str, Any]:
    """Each site's DP class sums of its patients' seizure events, merged with the public prior
    (:class:`.anomaly.PublicEvents`, generated under ``tuning_dir``); then each site's DP
    threshold release under the merged model, which sets its threshold."""
    public = PublicEvents.load(tuning_dir)

    def charged(s: str, kind: str, released: tuple[dict, float]) -> dict:
        summary, total = released
        report[s]["summaries"].append(
            {"kind": kind, "epsilon": summary["epsilon"], "epsilon_total_after": total}
        )
        return summary

    sums = [
        charged(
            s, "anomaly", share_anomaly(state_root / s, seizures[s], public.space, noise_multiplier)
        )
        for s in sites
    ]
    scorer = public.model(sums)
    centre = public.centre(scorer)
    public_threshold = scorer.threshold
    thresholds = [
        charged(
            s,
            "anomaly threshold",
            share_anomaly_threshold(state_root / s, seizures[s], scorer, centre, noise_multiplier),
        )
        for s in sites
    ]
    public.set_threshold(scorer, thresholds)
    return {
        "scorer": scorer.to_dict(),
        "classes": [CLASSES[k] for k in scorer.classes],
        "threshold": scorer.threshold,
        "public_threshold": public_threshold,
        "flag_rate": scorer.flag_rate,
        "public_events": len(public.rows),
        "noise_multiplier": noise_multiplier,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    for name in ("--config", "--data-root", "--run-dir", "--state-root", "--tuning-dir"):
        p.add_argument(name, type=Path, required=True)
    p.add_argument("--sites", nargs="+", required=True)
    args = p.parse_args(argv)
    site_task.small_work_threads()
    res = calibrate(
        args.config, args.data_root, args.sites, args.run_dir, args.state_root, args.tuning_dir
    )
    json.dump(res, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
