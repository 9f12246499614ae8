"""Short single-event recordings for tests and analyses (:func:`simulate_event_clip`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..events import Event
from ..labels import CANONICAL_EVENT_TYPE, CLASSES, LATERALIZATIONS
from ..recording import Recording
from .behaviours import CONFOUNDERS, Scene, background
from .body import Controls, render
from .consortium import TRUTH_FORMAT, _event_truth, default_camera
from .detector import detect, face_noise
from .profiles import PatientProfile, SiteProfile, make_patient
from .seizures import GENERATORS, hemisphere_for, sample_duration

LEAD_S = 10.0  # background before the event (at most 20% of the clip)


def _clip_site(fps: float) -> SiteProfile:
    return SiteProfile(
        site="00",
        archetype="clip",
        fps=fps,
        camera=default_camera(),
        blanket_rate=0.0,
        prevalence={},
        confounder_scale=0.0,
        hand_drop=0.05,
        swap_rate=0.0,
        jitter_px=0.5,
    )


def simulate_event_clip(
    event_class: str,
    seconds: float,
    seed: int,
    fps: float = 30.0,
    lateralization: str = "right",
) -> tuple[Recording, list[Event], dict[str, Any]]:
    """A recording of ``seconds``: background, then one event of model class ``event_class``.

    ``lateralization`` is the hemisphere of onset (ignored for ``pnes``); the motor signs'
    side is ``truth["events"][0]["body_side"]``. For ``bckg`` the event is one confounder
    (its kind in ``truth["confounders"]``) returned as a ``bckg`` Event. Events fill the clip
    after the lead-in (an f2b's postictal phase gets what is left, if anything).
    """
    if event_class not in CLASSES:
        raise ValueError(f"unknown event class {event_class!r}; expected one of {CLASSES}")
    if lateralization not in LATERALIZATIONS - {"bilateral", "unknown"}:
        raise ValueError(f"lateralization must be 'left' or 'right', got {lateralization!r}")
    if seconds < 10:
        raise ValueError(f"a clip needs at least 10 s, got {seconds}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7]))
    site = _clip_site(fps)
    habitual = "clonic" if event_class == "bckg" else event_class
    base = make_patient(site, 0, habitual, rng)
    patient = PatientProfile(**{**base.to_json(), "hemisphere": lateralization, "body_scale": 1.0})
    n = round(seconds * fps)
    ctrl = Controls(n)
    scene = Scene(ctrl, fps, rng, amplitude=1.0)
    lead = int(min(LEAD_S, 0.2 * seconds) * fps)
    room = n - lead - int(fps)
    truth: dict[str, Any] = {
        "format": TRUTH_FORMAT,
        "version": 1,
        "fps": fps,
        "n_frames": n,
        "duration": round(n / fps, 3),
        "events": [],
        "confounders": [],
    }
    if event_class == "bckg":
        kinds = list(CONFOUNDERS)
        kind = kinds[int(rng.integers(len(kinds)))]
        lo, hi = CONFOUNDERS[kind][1]
        frames = min(int(rng.uniform(lo, hi) * fps), room)
        gt = CONFOUNDERS[kind][0](scene, lead, frames)
        truth["confounders"].append(gt)
        events = [Event(gt["onset"], round(frames / fps, 3), CANONICAL_EVENT_TYPE["bckg"])]
    else:
        dur, _ = sample_duration(rng, event_class, patient.duration_scale, room / fps)
        frames = min(int(dur * fps), room)
        tail_f = room - frames if event_class == "f2b" else 0
        gt = GENERATORS[event_class](scene, lead, frames, tail_f, lateralization, patient.seizure)
        hemi = hemisphere_for(event_class, lateralization)
        etype = CANONICAL_EVENT_TYPE[event_class]
        onset, duration = round(lead / fps, 3), round(frames / fps, 3)
        events = [Event(onset, duration, etype, hemi)]
        truth["events"].append(_event_truth(event_class, etype, onset, duration, hemi, gt))
    background(scene, [])
    rend = render(ctrl, site.camera, 1.0, face_noise(scene, n, site.jitter_px))
    rec, det = detect(rend, scene, site, blanket=False)
    rec.meta = {"synthetic": True, "clip": event_class, "seed": seed}
    truth["detector"] = det
    return rec, events, truth
