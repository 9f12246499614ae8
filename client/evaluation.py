"""Evaluate a model on held-out patients: window metrics and SzCORE event metrics.

Event metrics: per recording, hypothesis events come from the detection probabilities by
:func:`~semiofed.shared.metrics.windows_to_events`; reference events are the recording's
events.tsv when given (``ref_events``), otherwise reconstructed the same way from the
windows' labels (exact to within one hop for events longer than half a window). The
recording's duration is taken as the end of its last window.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from semiofed.shared.dataset import PatientWindows, WindowDataset, collate
from semiofed.shared.events import Event
from semiofed.shared.metrics import score_events, window_metrics, windows_to_events
from semiofed.shared.model import resolve_device
from semiofed.shared.windows import WindowConfig

RecordingKey = tuple[str, str, str]  # (site, patient, recording id)
DEFAULT_WINDOW = WindowConfig()


@torch.no_grad()
def predict(
    model: nn.Module, patients: list[PatientWindows], device: str = "auto", batch_size: int = 256
) -> dict[str, np.ndarray]:
    """Detection probabilities and type predictions of every window, in WindowDataset order."""
    dev = resolve_device(device)
    model.to(dev)
    was_training = model.training
    model.eval()
    loader = torch.utils.data.DataLoader(
        WindowDataset(patients), batch_size=batch_size, shuffle=False, collate_fn=collate
    )
    probs, types = [], []
    for batch in loader:
        out = model({k: v.to(dev) for k, v in batch.items()})
        probs.append(torch.sigmoid(out["detect_logit"]).cpu().numpy())
        types.append(out["type_logits"].argmax(dim=1).cpu().numpy())
    model.train(was_training)
    return {"detect_prob": np.concatenate(probs), "type_pred": np.concatenate(types)}


def event_metrics(
    patients: list[PatientWindows],
    detect_prob: np.ndarray,
    window: WindowConfig = DEFAULT_WINDOW,
    threshold: float = 0.5,
    ref_events: Mapping[RecordingKey, list[Event]] | None = None,
) -> dict[str, Any]:
    """SzCORE event metrics summed over every recording of ``patients``."""
    recordings = []
    start = 0
    for pw in patients:
        probs = detect_prob[start : start + len(pw)]
        start += len(pw)
        for rec in dict.fromkeys(pw.recording.tolist()):
            sel = pw.recording == rec
            t0 = pw.t0[sel]
            hyp = windows_to_events(t0, probs[sel], window.seconds, window.hop, threshold)
            key = (pw.site, pw.patient, rec)
            if ref_events is not None and key in ref_events:
                ref = ref_events[key]
            else:
                ref = windows_to_events(
                    t0, pw.y_detect[sel].astype(float), window.seconds, window.hop, 0.5
                )
            recordings.append((ref, hyp, float(t0.max()) + window.seconds))
    return score_events(recordings)


def evaluate(
    model: nn.Module,
    patients: list[PatientWindows],
    device: str = "auto",
    events: bool = True,
    threshold: float = 0.5,
    window: WindowConfig = DEFAULT_WINDOW,
    ref_events: Mapping[RecordingKey, list[Event]] | None = None,
) -> dict[str, Any]:
    """Window metrics (and, with ``events``, event metrics under ``"events"``) on ``patients``."""
    pred = predict(model, patients, device)
    y_type = np.concatenate([p.y_type for p in patients])
    y_detect = np.concatenate([p.y_detect for p in patients])
    out: dict[str, Any] = window_metrics(
        y_type, pred["type_pred"], y_detect, pred["detect_prob"], threshold
    )
    out["patients"] = len(patients)
    if events:
        out["events"] = event_metrics(patients, pred["detect_prob"], window, threshold, ref_events)
    return out
