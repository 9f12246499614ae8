"""Training benchmark: DP-SGD cost and accuracy on the synthetic consortium.

1. DP vs non-DP CPU time per processed window, same model (default SemioNet), measured side
   by side (interleaved, best of two, one torch thread).
2. On a small synthetic consortium (size printed): centralized non-private; centralized
   patient-level DP at ε ≤ 8 and ε ≤ 3 (δ = 1e-5, RDP); leave-patient-out and
   leave-site-out macro-F1; event sensitivity and false alarms per hour; the
   motion-energy threshold baseline on the same held-out patients.
   The accuracy runs use a compact SemioNet and a capped number of steps to fit the
   benchmark's time budget on 2 CPU cores; the config is printed.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from bench.run import BenchContext
from semiofed.client.dp_training import TrainConfig, train_local
from semiofed.client.evaluation import evaluate, recording_refs
from semiofed.shared import baseline
from semiofed.shared.dataset import PatientWindows, events_path, load_patient_windows
from semiofed.shared.events import read_events
from semiofed.shared.metrics import auroc, score_events, windows_to_events
from semiofed.shared.model import ModelConfig, SemioNet, count_parameters
from semiofed.shared.recording import SUFFIX, load_recording
from semiofed.shared.splits import leave_patient_out_folds, leave_site_out_folds, patient_split
from semiofed.shared.synth.consortium import generate_consortium

SITES, PATIENTS_PER_SITE, MINUTES = 3, 5, 2.0
DELTA = 1e-5
COMPACT = ModelConfig(
    channels=(16, 32), strides=(2, 2), motion_channels=(16,), motion_strides=(2,), embed_dim=32
)
PLAIN = {"epochs": 4, "steps_per_epoch": 25, "batch_size": 16, "lr": 3e-3, "type_loss_weight": 0.3}
DP = {
    "epochs": 30,
    "batch_size": 6,
    "windows_per_patient": 8,
    "lr": 3e-3,
    "type_loss_weight": 0.3,
    "max_grad_norm": 1.0,
}
TIMING_WINDOWS, TIMING_BATCH = 256, 32


def _fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _timing(patients: list[PatientWindows]) -> tuple[str, dict[str, float]]:
    """CPU time per processed window: plain vs DP-SGD, window level and the default patient
    level (windows counted as they are processed; one torch thread, so the ratios do not
    depend on how busy the shared machine is)."""
    subset, n = [], 0
    for p in patients:
        if n >= TIMING_WINDOWS:
            break
        subset.append(p)
        n += len(p)
    windows = sum(len(p) for p in subset)
    k = 8  # windows per patient (patient level); expected patients per step TIMING_BATCH / k
    modes = {  # name: (privacy unit, data, epochs)
        "no DP": ("window", subset, 1),
        "DP window level (torch.func per-window gradients)": ("window", subset, 1),
        f"DP patient level ({k} windows, one backward per patient; default)": (
            "patient",
            patients,
            3,
        ),
    }
    cpu: dict[str, list[float]] = {name: [] for name in modes}
    seen: dict[str, int] = {}
    counted: list[int] = []  # windows of each DP step

    def count(batch: dict[str, torch.Tensor], _model: object, _optimizer: object) -> None:
        counted.append(len(batch["patient_idx"]))

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(2):
            for name, (unit, data, epochs) in modes.items():
                torch.manual_seed(0)
                model = SemioNet(ModelConfig())
                cfg = TrainConfig(
                    epochs=epochs,
                    dp=name != "no DP",
                    privacy_unit=unit,
                    batch_size=TIMING_BATCH // k if unit == "patient" else TIMING_BATCH,
                    windows_per_patient=k,
                    noise_multiplier=1.0,
                    augment=False,
                    device="cpu",
                )
                counted.clear()
                t0 = time.process_time()
                train_local(model, data, cfg, progress=False, step_callback=count)
                cpu[name].append(time.process_time() - t0)
                seen[name] = sum(counted) if cfg.dp else epochs * windows
    finally:
        torch.set_num_threads(threads)
    per_window = {name: 1000 * min(cpu[name]) / seen[name] for name in modes}
    rows = [
        "| mode | CPU s (best of 2) | windows processed | CPU ms / window | ratio to no DP |",
        "|---|---|---|---|---|",
        *(
            f"| {name} | {min(cpu[name]):.2f} | {seen[name]} | {per_window[name]:.1f} | "
            f"{per_window[name] / per_window['no DP']:.2f}× |"
            for name in modes
        ),
    ]
    text = (
        f"Same model (default SemioNet, {count_parameters(SemioNet(ModelConfig())):,} parameters), "
        f"Adam, CPU, one torch thread; window level: the same {windows} windows, expected batch "
        f"{TIMING_BATCH}; patient level: {len(patients)} patients, {k} windows per sampled patient "
        f"averaged into its one clipped gradient, expected {TIMING_BATCH // k} patients per step, "
        "3 epochs. DP = per-sample (per-patient) gradients, Opacus' DPOptimizer clipping and "
        "secure-mode noise, the ledger's step counting excluded (no ledger). CPU time of this "
        "process, best of two interleaved runs, divided by the windows the run actually "
        "processed (a Poisson batch varies); compare the per-window ratios (goal ≤ 1.3×).\n\n"
        + "\n".join(rows)
    )
    return text, per_window


def _baseline_windows(site_dirs: dict[str, Path], patients: list[PatientWindows]) -> list[tuple]:
    out = []
    for p in patients:
        for path in sorted((site_dirs[p.site] / p.patient).rglob("*" + SUFFIX)):
            rec = load_recording(path)
            events = read_events(events_path(path))
            energy, label = baseline.windows(rec, events)
            out.append((energy, label, events, rec.n_frames / rec.fps))
    return out


def _baseline(
    site_dirs: dict[str, Path], train: list[PatientWindows], test: list[PatientWindows]
) -> dict[str, float]:
    tr = _baseline_windows(site_dirs, train)
    threshold = baseline.fit_threshold(
        np.concatenate([t[0] for t in tr]), np.concatenate([t[1] for t in tr])
    )
    te = _baseline_windows(site_dirs, test)
    energy, label = np.concatenate([t[0] for t in te]), np.concatenate([t[1] for t in te])
    pred = baseline.predict(energy, threshold)
    recordings = []
    for e, _, events, duration in te:
        t0 = np.arange(len(e)) * baseline.HOP_S
        hyp = windows_to_events(
            t0, baseline.predict(e, threshold).astype(float), baseline.WINDOW_S, baseline.HOP_S
        )
        recordings.append((events, hyp, duration))
    ev = score_events(recordings)
    return {
        "detect_balanced_accuracy": baseline.balanced_accuracy(pred, label),
        "detect_macro_f1": baseline.macro_f1(pred, label),
        "auroc": auroc(label, energy),
        "event_sensitivity": ev["sensitivity"],
        "false_alarms_per_hour": ev["false_alarms_per_hour"],
    }


def _fit_eval(
    train: list[PatientWindows],
    test: list[PatientWindows],
    cfg: TrainConfig,
    refs: dict,
    seed: int = 0,
) -> tuple[dict, object]:
    torch.manual_seed(seed)
    model = SemioNet(COMPACT)
    res = train_local(model, train, cfg, progress=False)
    return evaluate(model, test, device="cpu", refs=refs), res


def run(ctx: BenchContext) -> str:
    t_start = time.perf_counter()
    out = ctx.path("training-consortium")
    generate_consortium(
        out,
        sites=SITES,
        patients_per_site=PATIENTS_PER_SITE,
        minutes_per_patient=MINUTES,
        seed=0,
        workers=2,
    )
    site_dirs = {
        d.name: d for d in sorted(out.iterdir()) if d.is_dir() and d.name.startswith("site-")
    }
    patients = [p for d in site_dirs.values() for p in load_patient_windows(d)]
    refs = {
        key: ref
        for site, d in site_dirs.items()
        for key, ref in recording_refs(d, [p for p in patients if p.site == site]).items()
    }
    n_windows = sum(len(p) for p in patients)
    timing_text, _ = _timing(patients)

    train, _, test = patient_split(patients, val_fraction=0.0, test_fraction=0.25, seed=0)
    plain_cfg = TrainConfig(dp=False, device="cpu", **PLAIN)
    rows = []

    def add(name: str, m: dict, privacy: str) -> None:
        ev = m["events"]
        bacc = (m["detect_sensitivity"] + m["detect_specificity"]) / 2
        rows.append(
            f"| {name} | {privacy} | {_fmt(m['macro_f1'])} | {_fmt(m['balanced_accuracy'])} | {_fmt(bacc)} | "
            f"{_fmt(m['auroc_seizure'])} | {_fmt(ev['sensitivity'])} | {_fmt(ev['false_alarms_per_hour'], 2)} |"
        )

    m, _ = _fit_eval(train, test, plain_cfg, refs)
    add("centralized", m, "none")
    for target in (8.0, 3.0):
        cfg = TrainConfig(dp=True, epsilon_target=target, delta=DELTA, device="cpu", **DP)
        m, res = _fit_eval(train, test, cfg, refs)
        add(
            f"centralized DP ε ≤ {target:g}",
            m,
            f"patient level, ε = {res.epsilon_run:.2f} at δ = {DELTA:g} (RDP; σ = {res.noise_multiplier:.2f}, "
            f"q = {res.sample_rate:.2f}, {res.steps} steps)",
        )
    b = _baseline(site_dirs, train, test)
    rows.append(
        f"| motion-energy baseline | none | n/a (no types) | n/a | {_fmt(b['detect_balanced_accuracy'])} | "
        f"{_fmt(b['auroc'])} | {_fmt(b['event_sensitivity'])} | {_fmt(b['false_alarms_per_hour'], 2)} |"
    )

    lpo_f1 = []
    for fold_train, fold_test in leave_patient_out_folds(patients, n_folds=3, seed=0):
        lpo_f1.append(_fit_eval(fold_train, fold_test, plain_cfg, refs)[0]["macro_f1"])
    lso = []
    for site, fold_train, fold_test in leave_site_out_folds(patients):
        lso.append((site, _fit_eval(fold_train, fold_test, plain_cfg, refs)[0]["macro_f1"]))

    header = (
        "| model | privacy | type macro-F1 | type bal. acc. | detect bal. acc. | AUROC seizure | "
        "event sensitivity | false alarms / h |\n|---|---|---|---|---|---|---|---|"
    )
    lso_text = ", ".join(f"{s} {_fmt(f)}" for s, f in lso)
    return "\n".join(
        [
            "## Training: DP-SGD cost and accuracy (bench_training)",
            "",
            "### DP vs non-DP time per epoch",
            "",
            timing_text,
            "",
            "### Synthetic consortium",
            "",
            f"Consortium: {SITES} sites × {PATIENTS_PER_SITE} patients × {MINUTES:g} min (seed 0) = {len(patients)} "
            f"patients, {n_windows} windows (5 s, hop 1 s). Centralized split by patient: {len(train)} train / "
            f"{len(test)} test patients. Compact SemioNet ({count_parameters(SemioNet(COMPACT)):,} parameters); "
            f"non-private: {PLAIN['epochs']} epochs × {PLAIN['steps_per_epoch']} steps of {PLAIN['batch_size']} "
            f"windows; DP: patient-level Poisson sampling (expected {DP['batch_size']} patients per step, "
            f"{DP['windows_per_patient']} windows averaged into each patient's one clipped gradient, C = "
            f"{DP['max_grad_norm']}), {DP['epochs']} epochs, σ chosen for the ε target. Event metrics: SzCORE "
            "(timescoring defaults) against the events.tsv files.",
            "",
            header,
            *rows,
            "",
            f"Leave-patient-out (3 folds, non-private) type macro-F1: mean {_fmt(float(np.mean(lpo_f1)))} "
            f"(folds {', '.join(_fmt(f) for f in lpo_f1)}).",
            f"Leave-site-out (non-private) type macro-F1 per held-out site: {lso_text}.",
            "",
            f"_Accuracy part and timing took {time.perf_counter() - t_start:.0f} s in total._",
        ]
    )
