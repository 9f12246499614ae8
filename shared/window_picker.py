"""Which windows of a patient a training step draws: event windows get ``event_fraction`` of
the draws (when the patient has any), the rest are uniform over the patient's windows."""

from __future__ import annotations

import numpy as np

from .dataset import PatientWindows


class WindowPicker:
    """Draws windows of a patient as flat indices into a :class:`.dataset.WindowDataset`."""

    def __init__(
        self, patients: list[PatientWindows], event_fraction: float, rng: np.random.Generator
    ):
        self.offsets = np.cumsum([0] + [len(p) for p in patients])
        self.events = [np.flatnonzero(p.y_detect == 1) for p in patients]
        self.sizes = [len(p) for p in patients]
        self.event_fraction = event_fraction
        self.rng = rng

    def draw(self, patient: int, k: int) -> list[int]:
        ev, n = self.events[patient], self.sizes[patient]
        out = []
        for _ in range(k):
            if len(ev) and self.rng.random() < self.event_fraction:
                i = int(ev[self.rng.integers(len(ev))])
            else:
                i = int(self.rng.integers(n))
            out.append(int(self.offsets[patient]) + i)
        return out

    def window_weights(self) -> np.ndarray:
        """Per-window sampling weights giving event windows ``event_fraction`` of the draws."""
        w = []
        for ev, n in zip(self.events, self.sizes, strict=True):
            wp = np.full(n, (1.0 - self.event_fraction) / n if len(ev) else 1.0 / n)
            if len(ev):
                wp[ev] += self.event_fraction / len(ev)
            w.append(wp)
        return np.concatenate(w) if w else np.zeros(0)
