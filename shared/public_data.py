"""Public data: the motion simulator (:mod:`semiofed.shared.synth`) run with seeds no
consortium's data uses, so no patient is involved and nothing of it needs a privacy budget.

* :data:`PUBLIC_SEED`: the coordinator's pretraining data (``semiofed server pretrain``).
* :data:`TUNING_SEED`: public tuning data, on which hyper-parameters and a released model's
  operating point (decision thresholds, event rule) are chosen. Choosing them there is
  post-processing of what was released: it costs no ε.
* :data:`BACKGROUND_SEED`: public background recordings (mostly seizure-free patients, about
  3.7 h of background) beside the tuning data, so that the event operating point's false-alarm
  rate is pinned on hours of background, not on the tuning data's one hour.
* :data:`ANOMALY_SEED`: the semiology anomaly model's public events (its space, covariance,
  prior class means): many short simulated patients from many simulated sites, so every
  seizure type has tens of public events (each patient with events has one in its first
  minute).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .dataset import FeaturesFn, PatientWindows, file_features, load_patient_windows
from .synth.profiles import SEIZURE_FREE_FRACTION
from .windows import WindowConfig

#: Simulator seed of the public pretraining data; no consortium of sites may use it.
PUBLIC_SEED = 104_729
#: Simulator seed of the public tuning data; no consortium of sites may use it.
TUNING_SEED = PUBLIC_SEED + 1
TUNING_SITES = 2
TUNING_PATIENTS_PER_SITE = 10
TUNING_MINUTES = 3.0
#: Simulator seed of the anomaly model's public events; no consortium of sites may use it.
ANOMALY_SEED = PUBLIC_SEED + 2
ANOMALY_SITES = 6
ANOMALY_PATIENTS_PER_SITE = 20
ANOMALY_MINUTES = 1.0
#: Folder under the public tuning data holding the anomaly model's public patients.
ANOMALY_DIR = "anomaly"
#: Folder under the public tuning data where its features and embeddings are cached.
TUNING_CACHE = "cache"
#: Simulator seed of the public background recordings; no consortium of sites may use it.
BACKGROUND_SEED = PUBLIC_SEED + 3
BACKGROUND_SITES = 2
BACKGROUND_PATIENTS_PER_SITE = 10
BACKGROUND_MINUTES = 4.0
#: Share of seizure-free patients (monitored 3× as long; the simulator keeps every class).
BACKGROUND_SEIZURE_FREE = 0.9
#: Folder under the public tuning data holding the background recordings (and their cache).
BACKGROUND_DIR = "background"


def public_sites(
    data: Path,
    sites: int,
    patients_per_site: int,
    minutes: float,
    seed: int,
    seizure_free: float = SEIZURE_FREE_FRACTION,
) -> list[Path]:
    """The site folders of a public simulated consortium under ``data``, generated unless they
    are there (``seizure_free``: the share of seizure-free patients per site)."""
    from .synth.consortium import generate_consortium

    names = [data / f"site-{i:02d}" for i in range(1, sites + 1)]
    if not all(s.is_dir() for s in names):
        generate_consortium(data, sites, patients_per_site, minutes, seed, None, seizure_free)
    return names


def public_patients(
    sites: list[Path], features: FeaturesFn = file_features
) -> list[PatientWindows]:
    """Windows of the patients of public ``sites`` (per-frame ``features`` as in
    :func:`~.dataset.load_patient_windows`)."""
    return [p for s in sites for p in load_patient_windows(s, features=features)]


def tuning_sites(data: Path) -> list[Path]:
    """The public tuning consortium's site folders (``TUNING_SEED``), generated under ``data``."""
    return public_sites(data, TUNING_SITES, TUNING_PATIENTS_PER_SITE, TUNING_MINUTES, TUNING_SEED)


def background_sites(data: Path) -> list[Path]:
    """The public background recordings' site folders (``BACKGROUND_SEED``), generated under
    ``data/BACKGROUND_DIR`` (``data``: the public tuning data's folder)."""
    return public_sites(
        data / BACKGROUND_DIR,
        BACKGROUND_SITES,
        BACKGROUND_PATIENTS_PER_SITE,
        BACKGROUND_MINUTES,
        BACKGROUND_SEED,
        BACKGROUND_SEIZURE_FREE,
    )


def tuning_patients(data: Path, features: FeaturesFn = file_features) -> list[PatientWindows]:
    """The public tuning patients (``TUNING_SEED``), generated under ``data``."""
    return public_patients(tuning_sites(data), features)


def background_patients(data: Path, features: FeaturesFn = file_features) -> list[PatientWindows]:
    """The public background recordings (:func:`background_sites`)."""
    return public_patients(background_sites(data), features)


def anomaly_patients(data: Path, features: FeaturesFn = file_features) -> list[PatientWindows]:
    """The anomaly model's public patients (``ANOMALY_SEED``), generated under ``data``."""
    sites = public_sites(
        data, ANOMALY_SITES, ANOMALY_PATIENTS_PER_SITE, ANOMALY_MINUTES, ANOMALY_SEED
    )
    return public_patients(sites, features)


def confounder_windows(
    data: Path, patients: list[PatientWindows], window: WindowConfig | None = None
) -> dict[tuple[str, str], np.ndarray]:
    """Per patient (key), which windows overlap a confounder episode (talking, eating,
    scratching, …) listed in its recordings' simulator truth (``*_truth.json`` under
    ``data/<site>``): the background that looks most like an event."""
    seconds = (window or WindowConfig()).seconds
    truth = {
        p.name[: -len("_truth.json")]: p
        for site in dict.fromkeys(pw.site for pw in patients)
        for p in (data / site).rglob("*_truth.json")
    }
    out = {}
    for pw in patients:
        mask = np.zeros(len(pw), dtype=bool)
        for rec in dict.fromkeys(pw.recording.tolist()):
            sel = pw.recording == rec
            t0 = pw.t0[sel]
            hit = np.zeros(len(t0), dtype=bool)
            for cf in json.loads(truth[rec].read_text())["confounders"]:
                hit |= (t0 < cf["offset"]) & (t0 + seconds > cf["onset"])
            mask[sel] = hit
        out[pw.key] = mask
    return out
