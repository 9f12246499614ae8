"""Generate the synthetic consortium: sites → patients → recordings with events and truth.

Layout (``OUT``)::

    summary.json                                   counts per class per site, profiles
    site-01/sub-01-003/sub-01-003_rec-01_keypoints.npz
    site-01/sub-01-003/sub-01-003_rec-01_events.tsv
    site-01/sub-01-003/sub-01-003_rec-01_truth.json

A patient's monitoring time is split into recordings of at most ``RECORDING_MINUTES``
(10 min; a remainder shorter than a minute joins the last one), like the clips of a
video-EEG monitoring session. Every recording is independent: events never straddle files.
A patient with events has at least one in its first recording; a fraction of patients
(``seizure_free_fraction``, default 15 %, rounded down per site) is seizure-free: no event
of interest in any recording, only background and confounders, monitored
``SEIZURE_FREE_MINUTES_FACTOR`` (3) times as long — the long event-free stretches against
which false alarms per hour and specificity mean something.
events.tsv lists the seizures and PNES (SzCORE terms); a recording without any lists one
``bckg`` row covering it (SzCORE convention). Confounders are background and appear only in
the truth file. Every patient is generated from its own seed derived from ``(seed, site,
patient)``, so the output is byte-identical for a seed whatever the number of workers; and
the simulator's arithmetic is order-fixed (:mod:`.exact`), so it is also byte-identical
whatever the BLAS/OpenMP thread count, the BLAS kernel and the CPU's SIMD features.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import signal
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_write_json
from ..errors import SemioFedError
from ..events import Event, write_events
from ..labels import CANONICAL_EVENT_TYPE, CLASSES
from ..recording import SUFFIX, Recording, save_recording
from ..skeleton import N_FACE
from .behaviours import CONFOUNDERS, Scene, background, go_to
from .body import SIDES, Camera, Controls, render
from .detector import detect, face_noise
from .profiles import (
    CONFOUNDER_RATE,
    SEIZURE_FREE_FRACTION,
    SEIZURE_FREE_MINUTES_FACTOR,
    PatientProfile,
    SiteProfile,
    assign_classes,
    choose_seizure_free,
    make_patient,
    make_site,
)
from .seizures import GENERATORS, hemisphere_for, sample_duration

RECORDING_MINUTES = 10.0
COMPRESS_LEVEL = 1  # fast deflate for generated data
EVENT_GAP_S = 20.0  # minimum gap between an event and any other episode
SLEEP_PROBABILITY = 0.4
AWAKE_ONLY = ("talking", "eating_drinking", "sitting_up", "staff_examining")
TRUTH_FORMAT = "semiofed-synth-truth"


@dataclass
class ConsortiumSummary:
    """Counts of events per class per site (``bckg`` counts confounder episodes)."""

    out: Path
    seed: int
    counts: dict[str, dict[str, int]]  # site -> class -> events
    seconds: dict[str, dict[str, float]]  # site -> class -> annotated seconds
    minutes: dict[str, float]  # site -> recorded minutes
    recordings: int
    sites: list[dict[str, Any]] = field(default_factory=list)
    patients: list[dict[str, Any]] = field(default_factory=list)

    def table(self) -> str:
        head = f"{'site':<8}" + "".join(f"{c:>14}" for c in CLASSES) + f"{'minutes':>10}"
        rows = [head, "-" * len(head)]
        for site, per in self.counts.items():
            cells = "".join(f"{per.get(c, 0):>14}" for c in CLASSES)
            rows.append(f"{site:<8}{cells}{self.minutes[site]:>10.1f}")
        rows.append(
            f"{self.recordings} recordings in {self.out} "
            "(bckg = confounder episodes; seizure classes = events)"
        )
        return "\n".join(rows)

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "counts": self.counts,
            "seconds": self.seconds,
            "minutes": self.minutes,
            "recordings": self.recordings,
            "sites": self.sites,
            "patients": self.patients,
        }


# ---------------------------------------------------------------- one recording


def _place(occupied: np.ndarray, length: int, rng: np.random.Generator, gap: int) -> int | None:
    n = len(occupied)
    if length + 2 * gap >= n:
        return None
    for _ in range(60):
        a = int(rng.integers(gap, n - length - gap))
        if not occupied[max(0, a - gap) : a + length + gap].any():
            return a
    return None


def _initial_posture(c: Controls, rng: np.random.Generator) -> None:
    c["head_yaw"][:] += rng.normal(0, 0.25)
    if rng.random() < 0.2:
        c["trunk_roll"][:] += rng.choice([-1, 1]) * rng.uniform(0.5, 0.9)
    for side in SIDES:
        c[f"{side}_sh_abd"][:] += rng.normal(0, 0.1)
        c[f"{side}_elbow"][:] += rng.uniform(-0.2, 1.0)
        c[f"{side}_knee"][:] += rng.uniform(0, 0.3)
        c[f"{side}_hand_roll"][:] += rng.normal(0, 0.3)


def simulate_recording(
    site: SiteProfile,
    patient: PatientProfile,
    seconds: float,
    rng: np.random.Generator,
    first: bool = True,
    face_buffer: np.ndarray | None = None,
) -> tuple[Recording, list[Event], dict[str, Any]]:
    """One recording of a patient: background, confounders and the patient's events.

    ``face_buffer`` (float32, >= frames * 1404) is reused for the face landmarks, which then
    alias it: write the recording before simulating the next one into the same buffer.
    """
    fps = site.fps
    n = round(seconds * fps)
    ctrl = Controls(n)
    scene = Scene(ctrl, fps, rng, amplitude=patient.amplitude)
    _initial_posture(ctrl, rng)
    occupied = np.zeros(n, dtype=bool)
    gap = int(EVENT_GAP_S * fps)
    plans: list[tuple[str, str, int, int, int]] = []  # (kind, name, start, frames, tail)

    k = rng.poisson(patient.events_per_10min * seconds / 600)
    k = 0 if patient.seizure_free else max(k, 1) if first else k
    weights = [0.75, 0.25] if len(patient.classes) == 2 else [1.0]
    for _ in range(k):
        cls = str(rng.choice(patient.classes, p=weights))
        dur, tail = sample_duration(
            rng, cls, patient.duration_scale, 0.85 * seconds - 2 * EVENT_GAP_S
        )
        frames, tail_f = int(dur * fps), int(tail * fps)
        a = _place(occupied, frames + tail_f, rng, gap)
        if a is not None:
            occupied[a : a + frames + tail_f] = True
            plans.append(("event", cls, a, frames, tail_f))

    asleep = np.zeros(n, dtype=bool)
    sleeping: list[tuple[int, int]] = []
    if rng.random() < SLEEP_PROBABILITY:
        length = int(rng.uniform(0.3, 0.9) * n)
        s0 = int(rng.integers(0, n - length + 1))
        sleeping.append((s0, s0 + length))
        asleep[s0 : s0 + length] = True
    small_gap = int(3 * fps)
    for kind, rate in CONFOUNDER_RATE.items():
        lo, hi = CONFOUNDERS[kind][1]
        for _ in range(rng.poisson(rate * site.confounder_scale * seconds / 600)):
            frames = int(min(rng.uniform(lo, hi), 0.5 * seconds) * fps)
            blocked = occupied | asleep if kind in AWAKE_ONLY else occupied
            a = _place(blocked, frames, rng, small_gap)
            if a is not None:
                occupied[a : a + frames] = True
                plans.append(("confounder", kind, a, frames, 0))

    plans.sort(key=lambda p: p[2])
    events: list[Event] = []
    truth_events, confounders = [], []
    for kind, name, a, frames, tail in plans:
        if kind == "confounder":
            confounders.append(CONFOUNDERS[name][0](scene, a, frames))
            continue
        hemi = hemisphere_for(name, patient.hemisphere)
        gt = GENERATORS[name](scene, a, frames, tail, patient.hemisphere, patient.seizure)
        onset, duration = round(a / fps, 3), round(frames / fps, 3)
        etype = CANONICAL_EVENT_TYPE[name]
        events.append(Event(onset, duration, etype, hemi))
        truth_events.append(_event_truth(name, etype, onset, duration, hemi, gt))
    background(scene, sleeping)
    if rng.random() < 0.5:  # slow drift of the whole body in the bed
        go_to(ctrl, "shift_y", int(rng.integers(0, n)), int(20 * fps), rng.normal(0, 0.04))

    blanket = bool(rng.random() < site.blanket_rate)
    noise = face_noise(scene, n, site.jitter_px)
    rend = render(ctrl, site.camera, patient.body_scale, noise, face_buffer)
    rec, det = detect(rend, scene, site, blanket)
    truth = {
        "format": TRUTH_FORMAT,
        "version": 1,
        "lateralization_convention": "hemisphere of onset; body_side = side of the dominant "
        "motor signs; times in seconds from the recording start",
        "fps": fps,
        "n_frames": n,
        "duration": round(n / fps, 3),
        "blanket_over_legs": blanket,
        "sleep": [[round(a / fps, 3), round(b / fps, 3)] for a, b in sleeping],
        "events": truth_events,
        "confounders": confounders,
        "detector": det,
    }
    return rec, events, truth


def _event_truth(
    cls: str, etype: str, onset: float, duration: float, hemi: str | None, gt: dict[str, Any]
) -> dict[str, Any]:
    return {
        "class": cls,
        "event_type": etype,
        "onset": onset,
        "offset": round(onset + duration, 3),
        "lateralization": hemi,
        **gt,
    }


def write_recording(base: Path, rec: Recording, events: list[Event], truth: dict[str, Any]) -> None:
    """Write ``base + _keypoints.npz``, ``_events.tsv`` and ``_truth.json``."""
    if not events:
        events = [Event(0.0, round(rec.duration, 3), CANONICAL_EVENT_TYPE["bckg"])]
    save_recording(rec, Path(f"{base}{SUFFIX}"), compress_level=COMPRESS_LEVEL)
    write_events(Path(f"{base}_events.tsv"), events)
    atomic_write_json(Path(f"{base}_truth.json"), truth)


def recording_lengths(minutes: float) -> list[float]:
    """Split a patient's minutes into recordings of at most RECORDING_MINUTES."""
    full = int(minutes // RECORDING_MINUTES)
    rest = minutes - full * RECORDING_MINUTES
    lengths = [RECORDING_MINUTES] * full
    if rest >= 1.0 or not lengths:
        lengths.append(rest)
    else:
        lengths[-1] += rest
    return lengths


def _patient_job(job: tuple[SiteProfile, PatientProfile, float, int, str]) -> dict[str, Any]:
    site, patient, minutes, seed, out = job
    si, pi = int(site.site), int(patient.patient.split("-")[1])
    rng = np.random.default_rng(np.random.SeedSequence([seed, si, pi]))
    folder = Path(out) / f"site-{site.site}" / f"sub-{patient.patient}"
    counts = dict.fromkeys(CLASSES, 0)
    secs = dict.fromkeys(CLASSES, 0.0)
    start = 0.0
    lengths = recording_lengths(minutes)
    # One face buffer per patient: fresh 100 MB arrays per recording cost page faults.
    buffer = np.empty(round(max(lengths) * 60 * site.fps) * N_FACE * 3, dtype=np.float32)
    for r, length in enumerate(lengths, start=1):
        rec, events, truth = simulate_recording(site, patient, length * 60, rng, r == 1, buffer)
        rec.meta = {
            "site": site.site,
            "patient": patient.patient,
            "recording": r,
            "start_s": round(start, 3),
            "camera": site.to_json()["camera"],
            "synthetic": True,
            "seed": seed,
        }
        truth.update(site=site.site, patient=patient.patient, recording=r)
        write_recording(folder / f"sub-{patient.patient}_rec-{r:02d}", rec, events, truth)
        start += length * 60
        for e in truth["events"]:
            counts[e["class"]] += 1
            secs[e["class"]] += e["offset"] - e["onset"]
        for cf in truth["confounders"]:
            counts["bckg"] += 1
            secs["bckg"] += cf["offset"] - cf["onset"]
    return {"site": site.site, "counts": counts, "seconds": secs, "minutes": minutes,
            "recordings": len(recording_lengths(minutes))}  # fmt: skip


def generate_consortium(
    out: str | os.PathLike[str],
    sites: int = 3,
    patients_per_site: int = 12,
    minutes_per_patient: float = 30.0,
    seed: int = 0,
    workers: int | None = None,
    seizure_free_fraction: float = SEIZURE_FREE_FRACTION,
) -> ConsortiumSummary:
    """Write the synthetic consortium to ``out`` (see module docstring) and return its summary."""
    if sites < 1 or patients_per_site < 1:
        raise SemioFedError("--sites and --patients-per-site must be at least 1")
    if not (math.isfinite(minutes_per_patient) and minutes_per_patient >= 1.0):
        raise SemioFedError("--minutes-per-patient must be at least 1 minute")
    if not 0.0 <= seizure_free_fraction < 1.0:
        raise SemioFedError("--seizure-free-fraction must be in [0, 1)")
    out_path = Path(out)
    out_path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0, 0]))
    site_profiles = [make_site(i, rng) for i in range(sites)]
    habitual = assign_classes(site_profiles, patients_per_site, rng)
    patients = [
        make_patient(s, i, habitual[si][i], rng)
        for si, s in enumerate(site_profiles)
        for i in range(patients_per_site)
    ]
    # its own stream, so the other patients' parameters do not depend on the fraction
    free = choose_seizure_free(
        habitual, seizure_free_fraction, np.random.default_rng(np.random.SeedSequence([seed, 0, 1]))
    )
    patients = [
        replace(p, seizure_free=(k // patients_per_site, k % patients_per_site) in free)
        for k, p in enumerate(patients)
    ]
    by_site = {s.site: s for s in site_profiles}
    jobs = [
        (
            by_site[p.site],
            p,
            minutes_per_patient * (SEIZURE_FREE_MINUTES_FACTOR if p.seizure_free else 1.0),
            seed,
            str(out_path),
        )
        for p in patients
    ]
    results = _run(jobs, workers)

    counts = {s.site: dict.fromkeys(CLASSES, 0) for s in site_profiles}
    seconds = {s.site: dict.fromkeys(CLASSES, 0.0) for s in site_profiles}
    minutes = dict.fromkeys(by_site, 0.0)
    n_rec = 0
    for res in results:
        for c in CLASSES:
            counts[res["site"]][c] += res["counts"][c]
            seconds[res["site"]][c] = round(seconds[res["site"]][c] + res["seconds"][c], 3)
        minutes[res["site"]] += res["minutes"]
        n_rec += res["recordings"]
    summary = ConsortiumSummary(
        out=out_path,
        seed=seed,
        counts=counts,
        seconds=seconds,
        minutes=minutes,
        recordings=n_rec,
        sites=[s.to_json() for s in site_profiles],
        patients=[p.to_json() for p in patients],
    )
    atomic_write_json(out_path / "summary.json", summary.to_json())
    return summary


def _worker_init() -> None:
    """A pool worker: default signal handling (the pool ends its workers with SIGTERM; the CLI's
    SIGTERM → KeyboardInterrupt handler, inherited through fork, would print tracebacks; Ctrl-C
    is the parent's to handle) and one BLAS thread, for speed only (the bytes do not depend on
    it): the workers already use every core, and oversubscribed BLAS threads made 2 workers
    barely faster than 1."""
    from threadpoolctl import threadpool_limits

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threadpool_limits(1)


def _run(jobs: list, workers: int | None) -> list[dict[str, Any]]:
    from tqdm import tqdm

    workers = min(workers or os.cpu_count() or 1, len(jobs))
    bar = tqdm(total=len(jobs), desc="synth patients", unit="patient", disable=None)
    try:
        if workers <= 1:
            results = []
            for job in jobs:
                results.append(_patient_job(job))
                bar.update()
            return results
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        with ctx.Pool(workers, initializer=_worker_init) as pool:
            results = []
            for res in pool.imap(_patient_job, jobs):
                results.append(res)
                bar.update()
            return results
    finally:
        bar.close()


def default_camera() -> Camera:
    """Camera used by :func:`simulate_event_clip`: straight above the bed, whole body in view."""
    return Camera(zoom=0.4, centre=(0.5, 0.55), rotation_deg=0.0, tilt_deg=20.0)
