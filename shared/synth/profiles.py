"""Site and patient variability: cameras, frame rates, blankets, class prevalence (non-IID).

Sites follow three archetypes (cycled when there are more than three), each with its own class
prevalence perturbed by a Dirichlet draw, so class mixes differ between sites:

* ``temporal``: adult epilepsy monitoring unit, mostly temporal lobe seizures (automatisms);
* ``frontal``: sleep/frontal lobe centre (hyperkinetic, f2b);
* ``neuropsychiatry``: a centre with many PNES referrals (pnes, clonic).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .body import Camera

SEIZURE_CLASSES = ("automatisms", "clonic", "f2b", "hyperkinetic", "pnes")

ARCHETYPES: dict[str, dict[str, float]] = {
    "temporal": {"automatisms": 0.45, "clonic": 0.12, "f2b": 0.18, "hyperkinetic": 0.05, "pnes": 0.2},
    "frontal": {"automatisms": 0.1, "clonic": 0.15, "f2b": 0.25, "hyperkinetic": 0.4, "pnes": 0.1},
    "neuropsychiatry": {"automatisms": 0.1, "clonic": 0.25, "f2b": 0.1, "hyperkinetic": 0.05, "pnes": 0.5},
}  # fmt: skip
PREVALENCE_CONCENTRATION = 30.0  # Dirichlet concentration around the archetype
#: Patients whose monitoring records no habitual event (a common outcome of an EMU stay).
SEIZURE_FREE_FRACTION = 0.15
#: Seizure-free patients stay longer (monitoring is prolonged while no event is captured).
SEIZURE_FREE_MINUTES_FACTOR = 3.0

#: Confounder episodes per 10 minutes of recording (mean of a Poisson), before site scaling.
CONFOUNDER_RATE = {
    "turning_over": 1.2,
    "scratching": 1.5,
    "eating_drinking": 0.25,
    "talking": 0.8,
    "sitting_up": 0.3,
    "staff_examining": 0.4,
}


@dataclass(frozen=True)
class SiteProfile:
    site: str
    archetype: str
    fps: float
    camera: Camera
    blanket_rate: float  # probability that a recording has the legs under a blanket
    prevalence: dict[str, float]  # seizure class -> probability for a patient's habitual type
    confounder_scale: float  # multiplies CONFOUNDER_RATE
    hand_drop: float  # fraction of frames a hand is missed (outside fast motion)
    swap_rate: float  # hand swap bursts per minute
    jitter_px: float  # detector wobble (px at 640 px frame width)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["camera"] = asdict(self.camera)
        return d


@dataclass(frozen=True)
class PatientProfile:
    patient: str
    site: str
    body_scale: float
    hemisphere: str  # hemisphere of onset of the patient's focal epilepsy
    classes: tuple[str, ...]  # habitual event classes (1 or 2)
    events_per_10min: float
    duration_scale: float
    amplitude: float
    seizure: dict[str, Any] = field(default_factory=dict)  # per-class generator parameters
    seizure_free: bool = False  # no event of interest is recorded for this patient

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def make_site(index: int, rng: np.random.Generator) -> SiteProfile:
    arche = list(ARCHETYPES)[index % len(ARCHETYPES)]
    base = np.array([ARCHETYPES[arche][c] for c in SEIZURE_CLASSES])
    prev = rng.dirichlet(base * PREVALENCE_CONCENTRATION)
    camera = Camera(
        zoom=float(rng.uniform(0.32, 0.5)),
        centre=(float(rng.uniform(0.42, 0.58)), float(rng.uniform(0.5, 0.62))),
        rotation_deg=float(rng.choice([0.0, 90.0, -90.0]) + rng.uniform(-15, 15)),
        tilt_deg=float(rng.uniform(0, 40)),
        aspect=float(rng.choice([4 / 3, 16 / 9])),
    )
    return SiteProfile(
        site=f"{index + 1:02d}",
        archetype=arche,
        fps=float(rng.choice([25.0, 30.0])),
        camera=camera,
        blanket_rate=float(rng.uniform(0.1, 0.7)),
        prevalence={c: round(float(p), 4) for c, p in zip(SEIZURE_CLASSES, prev, strict=True)},
        confounder_scale=float(rng.uniform(0.7, 1.4)),
        hand_drop=float(rng.uniform(0.05, 0.25)),
        swap_rate=float(rng.uniform(0.1, 0.6)),
        jitter_px=float(rng.uniform(0.3, 0.8)),
    )


def assign_classes(
    sites: list[SiteProfile], n_patients: int, rng: np.random.Generator
) -> list[list[str]]:
    """Habitual class of each patient per site, drawn from the site prevalence; then every
    class is made to appear somewhere in the consortium (when there are enough patients)."""
    out = []
    for s in sites:
        p = np.array([s.prevalence[c] for c in SEIZURE_CLASSES])
        out.append([str(rng.choice(SEIZURE_CLASSES, p=p / p.sum())) for _ in range(n_patients)])
    total = len(sites) * n_patients
    for cls in SEIZURE_CLASSES:
        present = [c for per in out for c in per]
        if cls in present or total < len(SEIZURE_CLASSES):
            continue
        counts = {c: present.count(c) for c in SEIZURE_CLASSES}
        best = max(range(len(sites)), key=lambda i: sites[i].prevalence[cls])
        donor = max(out[best], key=lambda c: (counts[c], c))
        out[best][out[best].index(donor)] = cls
    return out


def choose_seizure_free(
    habitual: list[list[str]], fraction: float, rng: np.random.Generator
) -> set[tuple[int, int]]:
    """``(site index, patient index)`` of the seizure-free patients: ``floor(fraction × n)``
    per site, drawn among patients whose habitual class another patient of the consortium
    still shows, so no class disappears."""
    left = {c: sum(per.count(c) for per in habitual) for c in SEIZURE_CLASSES}
    chosen: set[tuple[int, int]] = set()
    for si, per in enumerate(habitual):
        for pi in rng.permutation(len(per)).tolist():
            if sum(1 for s, _ in chosen if s == si) >= int(fraction * len(per)):
                break
            if left[per[pi]] > 1:
                left[per[pi]] -= 1
                chosen.add((si, pi))
    return chosen


def make_patient(
    site: SiteProfile, index: int, habitual: str, rng: np.random.Generator
) -> PatientProfile:
    classes = [habitual]
    if rng.random() < 0.25:  # some patients have a second type (e.g. focal and f2b, or ES + PNES)
        other = [c for c in SEIZURE_CLASSES if c != habitual]
        classes.append(str(rng.choice(other)))
    seizure = {
        "amplitude": float(rng.uniform(0.7, 1.3)),
        "clonic_f0": float(rng.uniform(3.0, 5.0)),
        "clonic_f_end": float(rng.uniform(0.8, 1.5)),
        "f2b_f0": float(rng.uniform(3.5, 5.0)),
        "f2b_f_end": float(rng.uniform(0.6, 1.2)),
        "pnes_f": float(rng.uniform(2.0, 4.0)),
        "pnes_cv": float(rng.uniform(0.12, 0.2)),
        "dystonia": bool(rng.random() < 0.6),
        "pelvic_thrust": bool(rng.random() < 0.3),
    }
    return PatientProfile(
        patient=f"{site.site}-{index + 1:03d}",
        site=site.site,
        body_scale=float(rng.uniform(0.88, 1.1)),
        hemisphere=str(rng.choice(["left", "right"])),
        classes=tuple(classes),
        events_per_10min=float(rng.uniform(0.8, 1.5)),
        duration_scale=float(rng.uniform(0.8, 1.25)),
        amplitude=float(rng.uniform(0.8, 1.2)),
        seizure=seizure,
    )
