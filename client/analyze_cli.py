"""``semiofed site analyze`` / ``site calibrate`` / ``site review``: the clinical analysis loop.

Review queue (``STATE/review/``), the model-update loop:

* ``analyze`` appends every event flagged as aberrant to ``STATE/review/queue.json`` and
  copies the recording (keypoints only) to ``STATE/review/recordings/``.
* ``review --label ID TYPE`` cuts the event ± ``CROP_MARGIN_S`` out of that recording and
  writes it, with an ``events.tsv`` holding the clinician's label, as
  ``STATE/review/data/<patient>/<ID>_keypoints.npz`` + ``<ID>_events.tsv`` — the layout of a
  site data folder. ``review --reject ID`` (not an event of interest) writes the crop with an
  empty events.tsv: a labelled false alarm, background for training. ``<patient>`` must be a
  patient of the site data folder (``review --data``), else the review is refused.
* ``STATE/review/data`` is therefore a site data folder, and ``site train --state STATE`` and
  the ClientApp load it with the site's own data (``load_patient_windows(..., extra_dirs=)``):
  a labelled event joins the next training rounds as part of its patient (the margins of each
  crop count as background, as the clinician saw them in the report).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np

from semiofed.shared.analysis import calibration as cal
from semiofed.shared.analysis.anomaly import (
    ANOMALY_KIND,
    ANOMALY_THRESHOLD_KIND,
    anomaly_summary_problem,
)
from semiofed.shared.analysis.openset import SEMIOLOGY_EVENTS, OpenSetScorer
from semiofed.shared.atomic import atomic_write_bytes, atomic_write_json
from semiofed.shared.cli_paths import folder, out_folder
from semiofed.shared.errors import FormatError, SemioFedError
from semiofed.shared.events import Event, write_events
from semiofed.shared.labels import (
    CANONICAL_EVENT_TYPE,
    CLASSES,
    LATERALIZATIONS,
    is_known_event_type,
)
from semiofed.shared.recording import SUFFIX, Recording, load_recording, save_recording

from .extract.settings import DEFAULT_FPS

log = logging.getLogger(__name__)

QUEUE = "queue.json"
#: Labelled events, in the layout of a site data folder; `site train` and the ClientApp
#: include them, so they join the next training rounds.
REVIEWED_DATA = Path("review") / "data"
CROP_MARGIN_S = 30.0

ANALYZE_EPILOG = """\
outputs (in --out):
  report.json   timeline, events (type, calibrated probabilities, conformal prediction set,
                aberrant flag), evolution per body region, semiology, explanations
  report.html   the same as a self-contained page (no scripts, no video frames: skeletons only)
  keypoints/    when INPUT is a video: its keypoint recording (extracted first)

Calibration (temperature, conformal threshold, open-set scorer) is read from
MODEL_DIR/calibration.json (see `semiofed site calibrate`) or --calibration; without it
probabilities are uncalibrated and no event can be flagged as aberrant.
Flagged events join the review queue in --state (default: --out); see `semiofed site review`.

examples:
  semiofed site analyze bed3.mp4 --model runs/site-a --out analysis/bed3
  semiofed site analyze kp/bed3_keypoints.npz --model runs/site-a --out analysis/bed3 --state site-state
"""

CALIBRATE_EPILOG = f"""\
Federated calibration (the consortium's temperature and conformal threshold; the open-set
scorer stays fitted on local data unless --merge-anomaly replaces it). Each --share releases one differentially private summary,
charged to the privacy ledger in --state and recorded in its signed audit trail (privacy unit:
the patient; ε at the site budget's δ and accountant):

  round 1  --share temperature: each patient's centred, unit-norm curve of mean clipped NLL
           at {len(cal.TEMPERATURE_GRID)} public temperatures, summed over patients,
           + Gaussian noise (σ = --noise-multiplier) per temperature
  round 2  --share conformal --temperature T: each patient's score histogram on
           {len(cal.SCORE_EDGES) - 1} public bins, normalised to sum 1, summed, + Gaussian noise per bin
           --share mondrian --temperature T (per-class thresholds): for each class a patient
           has windows of, its histogram of those windows' scores (normalised to sum 1, times
           1/sqrt(its number of classes)), summed, + Gaussian noise per bin; --merge-mondrian
           (with --merge-conformal) puts the per-class thresholds into calibration.json
  anomaly  --share anomaly --public-data DIR: every patient's per-class count indicator,
           clipped mean and clipped mean square of its seizure events' semiology features in
           the public whitened space (L2 norm <= 1 per patient), summed, + Gaussian noise per
           coordinate; --merge-anomaly makes the merged model the aberrant flag (threshold:
           public events), then --share anomaly-threshold --anomaly-model CAL (that
           calibration.json): each patient's count indicator and mean clipped log distance
           of its events under the merged model, summed, + noise; --merge-anomaly with
           --merge-anomaly-threshold sets the flag threshold from those

A summary file holds only these noisy numbers and public parameters (grid, σ, ε, δ): no
count, score or label. Fewer than {cal.MIN_PATIENTS} held-out patients with labelled windows,
no sound privacy ledger, or a summary that would exceed the budget: refused, nothing written.

examples:
  semiofed site calibrate --model M --data D --held-out P1 P2 ... --state S \\
      --share temperature --summary-out t-site1.json
  semiofed site calibrate --merge-temperature t-site1.json t-site2.json
  semiofed site calibrate --model M --data D --held-out P1 P2 ... --state S \\
      --share conformal --temperature T --summary-out c-site1.json
  semiofed site calibrate --model M --data D --held-out P1 P2 ... --temperature T \\
      --merge-conformal c-site1.json c-site2.json
  semiofed site calibrate --model M --data D --held-out P1 P2 ... --state S \\
      --share mondrian --temperature T --summary-out m-site1.json
  semiofed site calibrate --model M --data D --held-out P1 P2 ... --temperature T \\
      --merge-conformal c-site1.json c-site2.json --merge-mondrian m-site1.json m-site2.json
  semiofed site calibrate --model M --data D --state S --share anomaly \\
      --public-data PUBLIC --summary-out a-site1.json
  semiofed site calibrate --model M --data D --held-out P1 P2 ... --public-data PUBLIC \\
      --merge-anomaly a-site1.json a-site2.json --out CAL
  semiofed site calibrate --model M --data D --state S --share anomaly-threshold \\
      --anomaly-model CAL --public-data PUBLIC --summary-out h-site1.json
  semiofed site calibrate --model M --data D --held-out P1 P2 ... --public-data PUBLIC \\
      --merge-anomaly a-site1.json a-site2.json --merge-anomaly-threshold h-site1.json h-site2.json
"""

REVIEW_EPILOG = """\
Flagged (aberrant) events wait in STATE/review/queue.json. Label one and it is written to
STATE/review/data/<patient>/ as a keypoint recording + events.tsv (a site data folder), which
`semiofed site train --state STATE` and the site's ClientApp (state-dir) include from then on:
the labelled event joins the next training rounds, as part of that patient (one privacy unit).
The patient (analyze --patient, or review --patient) must be an existing patient of the site
data folder (--data): anything else is refused, so no known patient becomes a second unit.

TYPE is a model class (automatisms, clonic, f2b, hyperkinetic, pnes) or any SzCORE event type
(e.g. sz_foc_ia_m_automatisms, sz for an unclassified seizure).

examples:
  semiofed site review --state site-state                      # list the queue
  semiofed site review --state site-state --data data/site-01 --patient sub-01-004 \\
      --label bed3-E1 clonic --lateralization left
  semiofed site review --state site-state --data data/site-01 --reject bed3-E2   # not a seizure
  semiofed site review --state site-state --data data/site-01 --interactive
"""


def register(cmds: argparse._SubParsersAction) -> None:
    p = cmds.add_parser(
        "analyze",
        help="analyse a video or keypoint recording: timeline, evolution, semiology, report",
        description="Analyse one seizure video (or its keypoint recording) with a trained model and "
        "write report.json and report.html: detection timeline, events with calibrated type "
        "probabilities and prediction sets, aberrant-seizure flag, evolution across body regions, "
        "quantified semiology and explanations.",
        epilog=ANALYZE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "input", metavar="INPUT", type=Path, help="a video file or a *_keypoints.npz recording"
    )
    p.add_argument(
        "--model",
        required=True,
        type=folder,
        metavar="MODEL_DIR",
        help="folder with model.safetensors + model_config.json",
    )
    p.add_argument("--out", required=True, type=out_folder, metavar="DIR", help="output folder")
    p.add_argument(
        "--calibration",
        type=Path,
        metavar="FILE",
        help="calibration.json (default: MODEL_DIR/calibration.json)",
    )
    p.add_argument(
        "--state",
        type=Path,
        metavar="STATE",
        help="site state folder holding the review queue (default: --out) and the feature "
        "cache (none without --state)",
    )
    p.add_argument(
        "--patient",
        metavar="ID",
        help="the site's id of this patient, under which flagged events are labelled "
        "(default: given at review time with --patient)",
    )
    p.add_argument(
        "--threshold", type=float, default=0.5, help="seizure probability threshold (default: 0.5)"
    )
    p.add_argument("--no-explain", action="store_true", help="skip the explanations (faster)")
    p.add_argument(
        "--fps",
        type=float,
        default=DEFAULT_FPS,
        help=f"video only: frames analysed per second (default: {DEFAULT_FPS:g})",
    )
    p.add_argument("--device", default="auto", help="auto|cpu|cuda for the model (default: auto)")
    p.set_defaults(func=run_analyze)

    c = cmds.add_parser(
        "calibrate",
        help="fit temperature, conformal threshold and open-set scorer on held-out patients",
        description="Calibrate a trained model on patients it was not trained on; writes "
        "MODEL_DIR/calibration.json (local: nothing leaves the site).",
        epilog=CALIBRATE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument("--model", type=Path, metavar="MODEL_DIR", help="required except to merge")
    c.add_argument(
        "--data",
        type=Path,
        metavar="SITE_DIR",
        help="site data folder (one folder per patient); required except to merge",
    )
    c.add_argument(
        "--held-out",
        nargs="+",
        metavar="PATIENT",
        help="patients the model was NOT trained on; required except to merge",
    )
    c.add_argument("--coverage", type=float, default=0.9, help="conformal coverage (default: 0.9)")
    c.add_argument(
        "--per-class",
        action="store_true",
        help="per-class (Mondrian) conformal thresholds: coverage for every true class, not only "
        "on average (local calibration; prediction sets then use them)",
    )
    c.add_argument(
        "--flag-rate",
        type=float,
        default=0.05,
        help="share of known-type events flagged aberrant (default: 0.05)",
    )
    c.add_argument("--out", type=Path, metavar="FILE", help="default: MODEL_DIR/calibration.json")
    c.add_argument(
        "--share",
        choices=(*cal.SUMMARY_KINDS, cal.MONDRIAN, ANOMALY_KIND, ANOMALY_THRESHOLD_KIND),
        help="federated: release this site's DP summary (to --summary-out), charged to --state; "
        f"'{ANOMALY_KIND}': the class sums of the anomaly model, over every patient of --data "
        f"(needs --public-data); '{ANOMALY_THRESHOLD_KIND}': its threshold release under the "
        "merged model (needs --anomaly-model and --public-data)",
    )
    c.add_argument(
        "--summary-out", type=Path, metavar="FILE", help="where --share writes the summary"
    )
    c.add_argument(
        "--state",
        type=Path,
        metavar="STATE",
        help="site state folder: the privacy ledger charged and the audit trail (with --share), "
        "and the feature cache",
    )
    c.add_argument(
        "--noise-multiplier",
        type=float,
        default=cal.DEFAULT_NOISE_MULTIPLIER,
        help=f"σ of the Gaussian noise of a --share summary (default: {cal.DEFAULT_NOISE_MULTIPLIER:g})",
    )
    c.add_argument("--temperature", type=float, help="federated round 2: the merged temperature")
    c.add_argument(
        "--merge-temperature",
        nargs="+",
        type=Path,
        metavar="FILE",
        help="print the temperature merged from round-1 summaries",
    )
    c.add_argument(
        "--merge-conformal",
        nargs="+",
        type=Path,
        metavar="FILE",
        help="write calibration.json from round-2 summaries (with --temperature)",
    )
    c.add_argument(
        "--merge-mondrian",
        nargs="+",
        type=Path,
        metavar="FILE",
        help="with --merge-conformal: per-class thresholds of calibration.json from the sites' "
        "Mondrian summaries (prediction sets then use them)",
    )
    c.add_argument(
        "--merge-anomaly",
        nargs="+",
        type=Path,
        metavar="FILE",
        help="the aberrant flag of calibration.json from the sites' anomaly summaries: the "
        "federated DP anomaly model on semiology events, standardised and thresholded on "
        "--public-data",
    )
    c.add_argument(
        "--merge-anomaly-threshold",
        nargs="+",
        type=Path,
        metavar="FILE",
        help="with --merge-anomaly: the flag threshold from the sites' anomaly-threshold summaries",
    )
    c.add_argument(
        "--anomaly-model",
        type=Path,
        metavar="CAL",
        help=f"--share {ANOMALY_THRESHOLD_KIND}: the calibration.json holding the merged model",
    )
    c.add_argument(
        "--public-data",
        type=Path,
        metavar="DIR",
        help="the anomaly model's public simulator patients (its public seed; generated there "
        "if missing): its space, prior and standardisation",
    )
    c.add_argument("--device", default="auto", help="auto|cpu|cuda (default: auto)")
    c.set_defaults(func=run_calibrate)

    r = cmds.add_parser(
        "review",
        help="list aberrant events awaiting review and label them for the next training round",
        description="The local review queue of events flagged as aberrant by `site analyze`.",
        epilog=REVIEW_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument(
        "--state",
        required=True,
        type=Path,
        metavar="STATE",
        help="site state folder (the --state/--out of analyze)",
    )
    r.add_argument(
        "--label",
        nargs=2,
        metavar=("EVENT_ID", "TYPE"),
        action="append",
        default=[],
        help="label an event (repeatable)",
    )
    r.add_argument(
        "--lateralization", choices=sorted(LATERALIZATIONS), help="lateralization for --label"
    )
    r.add_argument(
        "--reject",
        metavar="EVENT_ID",
        action="append",
        default=[],
        help="mark an event as not an event of interest",
    )
    r.add_argument(
        "--data",
        type=Path,
        metavar="SITE_DIR",
        help="the site data folder: its patients are the ids an event may join (to label)",
    )
    r.add_argument(
        "--patient",
        metavar="ID",
        help="the existing patient the --label/--reject events belong to (default: the queue's)",
    )
    r.add_argument("--interactive", action="store_true", help="prompt for each pending event")
    r.add_argument("--all", action="store_true", help="list reviewed events too")
    r.set_defaults(func=run_review)


# ------------------------------------------------------------------------------------ analyze


def _recording_for(args: argparse.Namespace) -> tuple[Recording, Path]:
    path: Path = args.input
    if not path.exists():
        raise SemioFedError(f"{path}: input does not exist")
    if path.name.endswith(SUFFIX):
        return load_recording(path), path
    from .extract.pipeline import ExtractOptions, extract

    report = extract([path], ExtractOptions(out=args.out / "keypoints", workers=1, fps=args.fps))
    entry = report.entries[0]
    if entry["status"] == "failed" or not entry["output"]:
        raise SemioFedError(f"{path}: keypoint extraction failed: {entry['error']}")
    return load_recording(entry["output"]), Path(entry["output"])


def run_analyze(args: argparse.Namespace) -> int:
    from semiofed.client.analysis.onset import AlarmRule
    from semiofed.client.analysis.pipeline import (
        CALIBRATION_FILE,
        AnalysisConfig,
        SiteCalibration,
        analyze_recording,
    )
    from semiofed.client.analysis.report import write_report
    from semiofed.shared.model_folder import load_model_folder

    if not 0.0 < args.threshold < 1.0:
        raise SemioFedError(f"--threshold must be in (0, 1), got {args.threshold}")
    model, wcfg, _ = load_model_folder(args.model, args.device)
    cal_path = args.calibration or args.model / CALIBRATION_FILE
    calib = SiteCalibration.load(cal_path) if cal_path.is_file() else None
    if args.calibration and calib is None:
        raise SemioFedError(f"{args.calibration}: calibration file does not exist")
    if calib is None:
        print(
            f"warning: no {cal_path}: probabilities are uncalibrated, no aberrant flag",
            file=sys.stderr,
        )
    rec, rec_path = _recording_for(args)
    cfg = AnalysisConfig(
        detect_threshold=args.threshold,
        explain=not args.no_explain,
        alarm=AlarmRule(threshold=args.threshold),
    )
    from .feature_cache import FeatureCache

    feats = FeatureCache(args.state)(rec_path, wcfg) if args.state is not None else None
    report = analyze_recording(
        rec, model, wcfg, calib, cfg, rec_path.name, args.model.name, frame_features=feats
    )
    j, h = write_report(report, args.out)
    stem = rec_path.name[: -len(SUFFIX)] if rec_path.name.endswith(SUFFIX) else rec_path.stem
    flagged = [e for e in report["events"] if e["aberrant"]["flagged"]]
    if flagged:
        n = enqueue(args.state or args.out, rec_path, stem, args.patient, flagged, j)
        print(
            f"{n} aberrant event(s) added to the review queue in {(args.state or args.out) / 'review'}"
        )
    print(f"{len(report['events'])} event(s) detected; wrote {j} and {h}")
    return 0


# ------------------------------------------------------------------------------------ review queue


def _queue_path(state: Path) -> Path:
    return state / "review" / QUEUE


def load_queue(state: Path) -> dict:
    path = _queue_path(state)
    if not path.exists():
        return {"format": "semiofed-review-queue", "version": 1, "items": []}
    import json

    try:
        doc = json.loads(path.read_text())
        if doc.get("format") != "semiofed-review-queue" or not isinstance(doc.get("items"), list):
            raise ValueError("not a review queue")
        return doc
    except (OSError, ValueError) as exc:
        raise FormatError(path, f"unreadable review queue ({exc})") from None


def enqueue(
    state: Path,
    rec_path: Path,
    stem: str,
    patient: str | None,
    events: list[dict],
    report: Path,
) -> int:
    """Add flagged events to the queue (idempotent per event id); returns how many were new."""
    doc = load_queue(state)
    rec_dir = state / "review" / "recordings"
    rec_dir.mkdir(parents=True, exist_ok=True)
    copy = rec_dir / f"{stem}{SUFFIX}"
    if not copy.exists():
        atomic_write_bytes(copy, rec_path.read_bytes())
    known = {it["id"] for it in doc["items"]}
    added = 0
    for ev in events:
        eid = f"{stem}-{ev['id']}"
        if eid in known:
            continue
        doc["items"].append(
            {
                "id": eid,
                "status": "pending",
                "recording": str(copy.relative_to(state)),
                "patient": patient,
                "onset_s": ev["onset_s"],
                "offset_s": ev["offset_s"],
                "predicted_type": ev["predicted_type"],
                "prediction_set": ev["prediction_set"],
                "aberrant_score": ev["aberrant"]["score"],
                "aberrant_threshold": ev["aberrant"]["threshold"],
                "report": str(report.resolve()),
                "queued_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "label": None,
                "lateralization": None,
            }
        )
        added += 1
    atomic_write_json(_queue_path(state), doc)
    return added


def crop_recording(rec: Recording, start_s: float, stop_s: float) -> Recording:
    """Frames with timestamps in [start_s, stop_s], re-timed to start at 0."""
    keep = (rec.timestamps >= start_s) & (rec.timestamps <= stop_s)
    idx = np.flatnonzero(keep)
    if len(idx) == 0:
        raise SemioFedError(f"nothing to crop between {start_s:.1f} and {stop_s:.1f} s")
    sl = slice(idx[0], idx[-1] + 1)
    return Recording(
        timestamps=rec.timestamps[sl] - rec.timestamps[idx[0]],
        pose=rec.pose[sl],
        face=rec.face[sl],
        left_hand=rec.left_hand[sl],
        right_hand=rec.right_hand[sl],
        present=rec.present[sl],
        fps=rec.fps,
        source_sha256=rec.source_sha256,
        extractor_name=rec.extractor_name,
        extractor_version=rec.extractor_version,
        filled=rec.filled[sl],
        motion=None if rec.motion is None else rec.motion[sl],
        motion_regions=list(rec.motion_regions),
        analysed=rec.analysed[sl],
        meta={**rec.meta, "cropped_from_s": round(float(rec.timestamps[idx[0]]), 3)},
    )


def event_type_for(label: str) -> str:
    if label in CANONICAL_EVENT_TYPE and label != "bckg":
        return CANONICAL_EVENT_TYPE[label]
    if is_known_event_type(label) and label != "bckg":
        return label
    classes = ", ".join(c for c in CLASSES if c != "bckg")
    raise SemioFedError(
        f"unknown type {label!r}: use a model class ({classes}) or a SzCORE event type"
    )


def known_patients(site_dir: Path) -> set[str]:
    """The patient ids of a site data folder (its patient folders)."""
    from semiofed.shared.dataset import patient_folders

    return set(patient_folders(site_dir))


def apply_review(
    state: Path,
    eid: str,
    label: str | None,
    lateralization: str | None,
    patients: set[str],
    patient: str | None = None,
) -> Path:
    """Label (``label``) or reject (``None``) one queued event; writes its training data
    under ``patient`` (default: the queue's), which must be one of the site's ``patients``."""
    doc = load_queue(state)
    items = {it["id"]: it for it in doc["items"]}
    if eid not in items:
        raise SemioFedError(f"no event {eid!r} in the review queue ({', '.join(items) or 'empty'})")
    it = items[eid]
    patient = patient or it["patient"]
    if patient not in patients:
        given = "has no patient id" if patient is None else f"is of {patient!r}, not a site patient"
        raise SemioFedError(
            f"event {eid} {given}: reviewed events join training only under an existing patient "
            "id of the site (give --patient ID)"
        )
    etype = event_type_for(label) if label is not None else None
    rec = load_recording(state / it["recording"])
    start = max(0.0, it["onset_s"] - CROP_MARGIN_S)
    crop = crop_recording(rec, start, it["offset_s"] + CROP_MARGIN_S)
    out_dir = state / REVIEWED_DATA / patient
    out_dir.mkdir(parents=True, exist_ok=True)
    save_recording(crop, out_dir / f"{eid}{SUFFIX}")
    events = []
    if etype is not None:
        events.append(
            Event(it["onset_s"] - start, it["offset_s"] - it["onset_s"], etype, lateralization, 1.0)
        )
    write_events(out_dir / f"{eid}_events.tsv", events)
    it.update(
        patient=patient,
        status="labelled" if etype else "rejected",
        label=etype,
        lateralization=lateralization,
        reviewed_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        training_data=str((out_dir / f"{eid}{SUFFIX}").relative_to(state)),
    )
    atomic_write_json(_queue_path(state), doc)
    return out_dir


def _print_queue(doc: dict, show_all: bool) -> None:
    items = [it for it in doc["items"] if show_all or it["status"] == "pending"]
    if not items:
        print("review queue: nothing pending")
        return
    print(
        f"{'id':<28} {'status':<9} {'onset-offset (s)':<17} {'predicted':<13} {'set':<28} score/thr   label"
    )
    for it in items:
        span = f"{it['onset_s']:.1f}-{it['offset_s']:.1f}"
        score = f"{it['aberrant_score']:.2f}/{it['aberrant_threshold']:.2f}"
        print(
            f"{it['id']:<28} {it['status']:<9} {span:<17} {it['predicted_type']:<13} "
            f"{','.join(it['prediction_set']):<28} {score:<11} {it['label'] or ''}"
        )


def run_review(args: argparse.Namespace) -> int:
    state: Path = args.state
    if not state.is_dir():
        raise SemioFedError(f"{state}: state folder does not exist")
    if args.lateralization and not args.label and not args.interactive:
        raise SemioFedError("--lateralization goes with --label")
    if (args.label or args.reject or args.interactive) and args.data is None:
        raise SemioFedError("labelling needs --data SITE_DIR (the site's patients)")
    patients = known_patients(args.data) if args.data is not None else set()
    for eid, label in args.label:
        out = apply_review(state, eid, label, args.lateralization, patients, args.patient)
        print(f"labelled {eid} as {event_type_for(label)}; training data in {out}")
    for eid in args.reject:
        out = apply_review(state, eid, None, None, patients, args.patient)
        print(f"rejected {eid} (background); training data in {out}")
    if args.interactive:
        for it in [i for i in load_queue(state)["items"] if i["status"] == "pending"]:
            print(
                f"\n{it['id']}: {it['onset_s']:.1f}-{it['offset_s']:.1f} s, predicted {it['predicted_type']} "
                f"(set {', '.join(it['prediction_set'])}); report: {it['report']}"
            )
            answer = input(
                "type (class or SzCORE type), 'r' = not a seizure, Enter = skip: "
            ).strip()
            if not answer:
                continue
            patient = args.patient or it["patient"]
            if patient not in patients:
                patient = input("patient id (an existing patient of the site): ").strip()
            if answer == "r":
                apply_review(state, it["id"], None, None, patients, patient)
                continue
            lat = (
                input("lateralization (left/right/bilateral/unknown, Enter = none): ").strip()
                or None
            )
            if lat is not None and lat not in LATERALIZATIONS:
                print(f"unknown lateralization {lat!r}; skipped")
                continue
            apply_review(state, it["id"], answer, lat, patients, patient)
    _print_queue(load_queue(state), args.all)
    return 0


# ------------------------------------------------------------------------------------ calibrate


def _load_summaries(paths: list[Path], kind: str) -> list[dict]:
    import json

    out = []
    for p in paths:
        try:
            doc = json.loads(p.read_text())
        except (OSError, ValueError) as exc:
            raise FormatError(p, f"unreadable summary ({exc})") from None
        problem = cal.summary_problem(doc, kind)
        if problem:
            raise FormatError(p, problem)
        out.append(doc)
    return out


def _check_share(args: argparse.Namespace) -> None:
    """Before any data is read: what a --share needs."""
    from semiofed.privacy.ledger import PrivacyLedger

    from .dp_release import site_budget

    if args.summary_out is None or args.state is None:
        raise SemioFedError("--share needs --summary-out FILE and --state STATE")
    if args.share in (ANOMALY_KIND, ANOMALY_THRESHOLD_KIND) and args.public_data is None:
        raise SemioFedError(f"--share {args.share} needs --public-data DIR")
    if args.share == ANOMALY_THRESHOLD_KIND:
        if args.anomaly_model is None:
            raise SemioFedError(f"--share {ANOMALY_THRESHOLD_KIND} needs --anomaly-model CAL")
        _published_anomaly_model(args.anomaly_model)
    if args.share in ("conformal", cal.MONDRIAN) and args.temperature is None:
        raise SemioFedError(f"--share {args.share} needs --temperature (the merged one)")
    if not (args.noise_multiplier > 0 and math.isfinite(args.noise_multiplier)):
        raise SemioFedError(f"--noise-multiplier must be > 0, got {args.noise_multiplier}")
    site_budget(PrivacyLedger(args.state))


def _share(args: argparse.Namespace, model, held: list) -> int:
    from .dp_release import labelled_outputs, share_calibration

    per_patient = labelled_outputs(model, held)
    sigma = args.noise_multiplier
    summary, total, what = share_calibration(
        args.state, args.share, per_patient, sigma, args.temperature
    )
    atomic_write_json(args.summary_out, summary)
    print(
        f"wrote {args.summary_out}: {what} of {len(per_patient)} patients, Gaussian noise "
        f"σ={sigma:g}; ε = {summary['epsilon']:.3f} at δ={summary['delta']:g} "
        f"({summary['accountant']}, privacy unit: patient) charged to {args.state}, site total "
        f"ε = {total:.3f}. The file holds only these noisy values and public parameters."
    )
    return 0


def _share_anomaly(args: argparse.Namespace, patients: list) -> int:
    from .anomaly import PublicEvents, share_anomaly, share_anomaly_threshold, site_events

    model = None if args.share == ANOMALY_KIND else _published_anomaly_model(args.anomaly_model)
    public = PublicEvents.load(args.public_data)
    if model is not None and model.space.digest() != public.space.digest():
        raise FormatError(
            args.anomaly_model, "its anomaly model is not in the space of --public-data"
        )
    per_patient = site_events(patients)
    sigma = args.noise_multiplier
    if model is None:
        summary, total = share_anomaly(args.state, per_patient, public.space, sigma)
        what = f"{len(summary['noisy_sums'])} noisy class sums"
    else:
        centre = public.centre(model)
        summary, total = share_anomaly_threshold(args.state, per_patient, model, centre, sigma)
        what = "2 noisy threshold sums"
    atomic_write_json(args.summary_out, summary)
    print(
        f"wrote {args.summary_out}: {what} of {len(per_patient)} patients with seizure "
        f"events, Gaussian noise σ={sigma:g}; ε = {summary['epsilon']:.3f} at "
        f"δ={summary['delta']:g} ({summary['accountant']}, privacy unit: patient) charged to "
        f"{args.state}, site total ε = {total:.3f}. The file holds only these noisy values and "
        "public parameters."
    )
    return 0


def _published_anomaly_model(path: Path) -> OpenSetScorer:
    """The merged semiology-event model of a calibration.json (checked before any data is read)."""
    from semiofed.client.analysis.pipeline import SiteCalibration

    try:
        model = SiteCalibration.load(path).openset
    except (OSError, ValueError, KeyError, TypeError, SemioFedError) as exc:
        raise FormatError(path, f"not a calibration.json with an anomaly model ({exc})") from None
    if model is None or model.representation != SEMIOLOGY_EVENTS or model.space is None:
        raise FormatError(path, "its aberrant flag is not a federated semiology-event model")
    return model


def _anomaly_scorer(args: argparse.Namespace):
    import json

    from .anomaly import PublicEvents

    if args.public_data is None:
        raise SemioFedError("--merge-anomaly needs --public-data DIR")
    public = PublicEvents.load(args.public_data)

    def read(p: Path) -> dict:
        try:
            return json.loads(p.read_text())
        except (OSError, ValueError) as exc:
            raise FormatError(p, f"unreadable summary ({exc})") from None

    docs = []
    for p in args.merge_anomaly:
        doc = read(p)
        problem = anomaly_summary_problem(doc, public.space)
        if problem:
            raise FormatError(p, problem)
        docs.append(doc)
    model = public.model(docs)
    if args.merge_anomaly_threshold:
        thresholds = [read(p) for p in args.merge_anomaly_threshold]
        public.set_threshold(model, thresholds)
    return model


def run_calibrate(args: argparse.Namespace) -> int:
    from semiofed.client.analysis.pipeline import CALIBRATION_FILE, fit_calibration
    from semiofed.shared.dataset import load_patient_windows
    from semiofed.shared.model_folder import load_model_folder

    from .feature_cache import site_features

    if args.merge_temperature:
        t = cal.merge_temperature(_load_summaries(args.merge_temperature, "temperature"))
        print(f"merged temperature: {t:.6g} (pass it to --temperature in round 2)")
        return 0
    anomaly_share = args.share in (ANOMALY_KIND, ANOMALY_THRESHOLD_KIND)
    required = ("model", "data") + (() if anomaly_share else ("held_out",))
    needed = [f"--{k.replace('_', '-')}" for k in required if not getattr(args, k)]
    if needed:
        raise SemioFedError(
            f"calibrate needs {', '.join(needed)} (only --merge-temperature does not)"
        )
    if not 0.0 < args.coverage < 1.0:
        raise SemioFedError(f"--coverage must be in (0, 1), got {args.coverage}")
    if args.temperature is not None and not args.temperature > 0:
        raise SemioFedError(f"--temperature must be > 0, got {args.temperature}")
    if args.share:
        _check_share(args)
    model, wcfg, _ = load_model_folder(args.model, args.device)
    patients = load_patient_windows(args.data, wcfg, features=site_features(args.state))
    by_name = {p.patient: p for p in patients}
    if anomaly_share:
        return _share_anomaly(args, patients)
    missing = [h for h in args.held_out if h not in by_name]
    if missing:
        raise SemioFedError(
            f"{args.data}: no usable recordings for held-out patient(s) {', '.join(missing)}"
        )
    held = [by_name[h] for h in dict.fromkeys(args.held_out)]
    if args.share:
        return _share(args, model, held)
    fit = [p for p in patients if p.patient not in args.held_out]
    if args.per_class and args.merge_conformal:
        raise SemioFedError("--per-class is local: it cannot be combined with --merge-conformal")
    if args.merge_mondrian and not args.merge_conformal:
        raise SemioFedError("--merge-mondrian goes with --merge-conformal (the same temperature)")
    calib = fit_calibration(
        model, held, fit, args.coverage, args.flag_rate, per_class=args.per_class
    )
    if args.merge_conformal:
        if args.temperature is None:
            raise SemioFedError("--merge-conformal needs --temperature (the merged one)")
        summaries = _load_summaries(args.merge_conformal, "conformal")
        if any(s["temperature"] != args.temperature for s in summaries):
            raise SemioFedError(
                f"the conformal summaries were not computed at --temperature {args.temperature:g}"
            )
        calib.temperature = args.temperature
        calib.conformal_threshold, mass = cal.merge_conformal(summaries, args.coverage)
        calib.source = (
            f"federated (DP): {len(summaries)} sites, about {mass:.0f} patients (noisy count)"
        )
    if args.merge_mondrian:
        mondrian = _load_summaries(args.merge_mondrian, cal.MONDRIAN)
        if any(s["temperature"] != args.temperature for s in mondrian):
            raise SemioFedError(
                f"the Mondrian summaries were not computed at --temperature {args.temperature:g}"
            )
        thresholds, _ = cal.merge_mondrian(mondrian, args.coverage)
        calib.class_thresholds = [float(t) for t in thresholds]
        calib.source += f"; per-class thresholds: federated (DP), {len(mondrian)} sites"
    if args.merge_anomaly_threshold and not args.merge_anomaly:
        raise SemioFedError("--merge-anomaly-threshold goes with --merge-anomaly")
    if args.merge_anomaly:
        calib.openset = _anomaly_scorer(args)
        calib.source += (
            f"; aberrant flag: federated DP anomaly model of {len(args.merge_anomaly)} sites"
        )
    out_path = args.out or args.model / CALIBRATION_FILE
    calib.save(out_path)
    print(
        f"wrote {out_path}: temperature {calib.temperature:.3g}, conformal threshold "
        f"{calib.conformal_threshold:.3f} at {args.coverage:.0%} ({calib.source}); open-set scorer: "
        f"{'yes' if calib.openset else 'no (too few seizure windows)'}"
    )
    return 0
