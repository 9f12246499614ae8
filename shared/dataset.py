"""Windows of a site's patients, and the torch datasets built on them.

A site folder holds one folder per patient; every ``*_keypoints.npz`` below it (any depth)
is a recording of that patient, labelled by the ``*_events.tsv`` of the same name beside it
(``sub-01_task-x_keypoints.npz`` → ``sub-01_task-x_events.tsv``). See :mod:`.windows` for
the windowing and label rule, :mod:`.features` for the streams. The per-frame features of a
recording file come from a ``features`` hook (:data:`FeaturesFn`; by default
:func:`file_features` computes them, a site passes its feature cache,
:class:`semiofed.client.feature_cache.FeatureCache`).

Memory: windows overlap (5 s every 1 s); a patient's windows are read-only strided views
over one per-frame buffer of all its recordings (see :mod:`.windows`), so they cost about
what the frames cost (≈ 66 MB per patient-hour at 15 fps), not five times that.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .augment import augment as augment_window
from .errors import FormatError, SemioFedError
from .events import read_events
from .features import STREAM_NAMES
from .model import EMBEDDINGS, PRESENCE
from .recording import SUFFIX, load_recording
from .windows import (
    LAT_DTYPE,
    Segment,
    WindowConfig,
    assemble_windows,
    recording_features,
    windows_from_recording,
)

__all__ = [
    "LATERALITY",
    "STREAM_NAMES",
    "PatientDataset",
    "PatientWindows",
    "StreamEmbeddings",
    "WindowDataset",
    "collate",
    "embeddings_key",
    "events_path",
    "file_features",
    "load_patient_windows",
    "windows_from_recording",
]

log = logging.getLogger(__name__)

#: Index of ``y_lat`` in dataset items.
LATERALITY: tuple[str, ...] = ("left", "right", "bilateral", "unknown", "n/a")
_LAT_INDEX = {name: i for i, name in enumerate(LATERALITY)}
REC_DTYPE = "<U64"
DEFAULT_WINDOWS = WindowConfig()

#: Per-frame stream tensors, masks and first frame time of a recording
#: (:func:`.windows.recording_features`).
FrameFeatures = tuple[dict[str, np.ndarray], dict[str, np.ndarray], float]
#: Where a recording file's :data:`FrameFeatures` come from.
FeaturesFn = Callable[[Path, WindowConfig], FrameFeatures]
#: The site's feature cache folder in its state folder (never leaves the site).
FEATURE_CACHE_DIR = "feature-cache"


def file_features(path: Path, cfg: WindowConfig) -> FrameFeatures:
    """The :data:`FrameFeatures` of a recording file, computed from it."""
    return recording_features(load_recording(path), cfg)


@dataclass(frozen=True)
class StreamEmbeddings:
    """Per-stream embeddings of a patient's windows under the frozen encoders named by
    ``key`` (:meth:`~.model.SemioNet.embedding_key`)."""

    key: str
    emb: np.ndarray  # (N, S, D) float32
    present: np.ndarray  # (N, S) bool


@dataclass
class PatientWindows:
    """All windows of one patient, numpy, already normalised."""

    site: str
    patient: str
    x: dict[str, np.ndarray]  # stream -> (N, T, V, C) float32 ; keys == STREAM_NAMES
    mask: dict[str, np.ndarray]  # stream -> (N, T) float32 (1 = present)
    y_detect: np.ndarray  # (N,) int64: 1 = event of interest (any seizure or PNES)
    y_type: np.ndarray  # (N,) int64 index into labels.CLASSES or labels.IGNORE_INDEX
    lateralization: np.ndarray  # (N,) <U9
    t0: np.ndarray  # (N,) float64 window start (s) in its recording
    recording: np.ndarray  # (N,) <U64 recording id
    embedded: StreamEmbeddings | None = None  # the windows' embeddings, when a site cached them

    def __len__(self) -> int:
        return int(self.y_detect.shape[0])

    @property
    def key(self) -> tuple[str, str]:
        return (self.site, self.patient)


def events_path(recording_path: Path) -> Path:
    """The events.tsv beside a recording."""
    return recording_path.with_name(recording_path.name[: -len(SUFFIX)] + "_events.tsv")


def _recording_segment(path: Path, cfg: WindowConfig, features: FeaturesFn) -> Segment:
    ev_path = events_path(path)
    if not ev_path.is_file():
        raise FormatError(path, f"no events file beside it (expected {ev_path.name})")
    events = read_events(ev_path)
    x, mask, first_time = features(path, cfg)
    return x, mask, first_time, events


def _patient_windows(
    segments: list[Segment], rec_ids: list[str], cfg: WindowConfig, site: str, patient: str
) -> PatientWindows:
    w = assemble_windows(segments, cfg)
    return PatientWindows(
        site=site,
        patient=patient,
        x=w["x"],
        mask=w["mask"],
        y_detect=w["y_detect"],
        y_type=w["y_type"],
        lateralization=w["lateralization"].astype(LAT_DTYPE),
        t0=w["t0"],
        recording=np.asarray(rec_ids, dtype=REC_DTYPE)[w["segment"]],
    )


def patient_folders(site_dir: Path, extra_dirs: Sequence[Path] = ()) -> dict[str, list[Path]]:
    """Patient id → its folders in ``site_dir`` and in each existing ``extra_dirs`` folder.

    A folder of ``extra_dirs`` must carry the id of a patient of ``site_dir``: anything else
    would make a second privacy unit of a known patient (refused, naming the folder)."""
    site_dir = Path(site_dir)
    if not site_dir.is_dir():
        raise SemioFedError(f"{site_dir}: site data folder does not exist")
    folders: dict[str, list[Path]] = {}
    for root in [site_dir, *(Path(d) for d in extra_dirs if Path(d).is_dir())]:
        for pdir in sorted(d for d in root.iterdir() if d.is_dir()):
            if root != site_dir and pdir.name not in folders:
                raise SemioFedError(
                    f"{pdir}: '{pdir.name}' is not a patient of {site_dir}; reviewed events join "
                    "training only under an existing patient id (move the folder or remove it)"
                )
            folders.setdefault(pdir.name, []).append(pdir)
    return dict(sorted(folders.items()))


def load_patient_windows(
    site_dir: Path,
    cfg: WindowConfig = DEFAULT_WINDOWS,
    on_error: Callable[[Path, Exception], None] | None = None,
    extra_dirs: Sequence[Path] = (),
    features: FeaturesFn = file_features,
) -> list[PatientWindows]:
    """Windows of every patient of a site folder (patients without any usable recording are left out).

    ``extra_dirs`` (e.g. the review queue's ``STATE/review/data``: events a clinician
    labelled) add recordings in the same layout; a patient folder of the same name there is
    the same patient, so its windows join that patient's (one privacy unit); a folder of any
    other name is refused (:func:`patient_folders`). Each unreadable
    recording or events file is reported (``logging.warning`` and ``on_error(path, exc)``)
    and skipped. ``features`` gives each recording's per-frame features (default: computed).
    """
    site_dir = Path(site_dir)
    out: list[PatientWindows] = []
    folders = patient_folders(site_dir, extra_dirs)
    for patient, pdirs in tqdm(
        folders.items(), desc=f"windows {site_dir.name}", unit="patient", disable=None
    ):
        segments: list[Segment] = []
        rec_ids: list[str] = []
        for path in sorted(p for pdir in pdirs for p in pdir.rglob("*" + SUFFIX)):
            try:
                segments.append(_recording_segment(path, cfg, features))
            except (SemioFedError, ValueError, OSError) as exc:
                log.warning("skipping %s: %s", path, exc)
                if on_error is not None:
                    on_error(path, exc)
                continue
            rec_ids.append(path.name[: -len(SUFFIX)])
        if segments:
            out.append(_patient_windows(segments, rec_ids, cfg, site_dir.name, patient))
    return out


def _lat_index(lat: str) -> int:
    return _LAT_INDEX.get(str(lat), _LAT_INDEX["unknown"])


def embeddings_key(patients: Sequence[PatientWindows], key: str | None) -> str | None:
    """``key`` when every patient carries embeddings under it (a model with that
    :meth:`~.model.SemioNet.embedding_key` can read them), else None."""
    if key is None or not patients:
        return None
    ok = all(p.embedded is not None and p.embedded.key == key for p in patients)
    return key if ok else None


class _WindowsBase(torch.utils.data.Dataset):
    def __init__(
        self,
        patients: list[PatientWindows],
        augment: bool = False,
        seed: int = 0,
        embeddings: str | None = None,
    ):
        self.patients = list(patients)
        self.augment = augment
        self.rng = np.random.default_rng(seed)
        if embeddings is not None and embeddings_key(self.patients, embeddings) is None:
            raise ValueError("not every patient carries embeddings under the requested key")
        if embeddings is not None and augment:
            raise ValueError("input-space augmentation cannot pass through cached embeddings")
        self.embeddings = embeddings
        sizes = [len(p) for p in self.patients]
        self.index_patient = np.repeat(np.arange(len(sizes)), sizes)
        self.index_window = np.concatenate([np.arange(n) for n in sizes]) if sizes else np.zeros(0)

    def _item(self, p: int, i: int) -> dict[str, torch.Tensor]:
        pw = self.patients[p]
        lat = str(pw.lateralization[i])
        item: dict[str, torch.Tensor] = {}
        if self.embeddings is not None:
            assert pw.embedded is not None
            item[EMBEDDINGS] = torch.from_numpy(pw.embedded.emb[i])
            item[PRESENCE] = torch.from_numpy(pw.embedded.present[i])
        else:
            x = {s: pw.x[s][i] for s in STREAM_NAMES}
            mask = {s: pw.mask[s][i] for s in STREAM_NAMES}
            if self.augment:
                x, mask, lat = augment_window(x, mask, lat, self.rng)
            for s in STREAM_NAMES:
                item[f"x_{s}"] = torch.tensor(np.asarray(x[s], dtype=np.float32))
                item[f"m_{s}"] = torch.tensor(np.asarray(mask[s], dtype=np.float32))
        item["y_detect"] = torch.tensor(int(pw.y_detect[i]), dtype=torch.int64)
        item["y_type"] = torch.tensor(int(pw.y_type[i]), dtype=torch.int64)
        item["y_lat"] = torch.tensor(_lat_index(lat), dtype=torch.int64)
        item["patient_idx"] = torch.tensor(p, dtype=torch.int64)
        return item


class WindowDataset(_WindowsBase):
    """Every window of every patient (flat); items carry ``patient_idx`` into ``patients``.

    Item keys: ``x_<stream>`` (T, V, C), ``m_<stream>`` (T,) — or, with ``embeddings`` (a
    key every patient's :class:`StreamEmbeddings` carries), ``emb`` (S, D) and ``present``
    (S,) instead — then ``y_detect``, ``y_type``, ``y_lat`` (index into
    :data:`LATERALITY`), ``patient_idx``.
    """

    def __len__(self) -> int:
        return int(self.index_patient.shape[0])

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        return self._item(int(self.index_patient[idx]), int(self.index_window[idx]))


class PatientDataset(_WindowsBase):
    """One item per patient: a uniformly random window of that patient (patient-level DP)."""

    def __init__(self, patients: list[PatientWindows], augment: bool = False, seed: int = 0):
        super().__init__(patients, augment, seed)
        empty = [f"{p.site}/{p.patient}" for p in self.patients if len(p) == 0]
        if empty:
            raise ValueError(f"patients without windows: {', '.join(empty)}")

    def __len__(self) -> int:
        return len(self.patients)

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        n = len(self.patients[idx])
        return self._item(idx, int(self.rng.integers(n)))


def collate(items: list[dict]) -> dict[str, torch.Tensor]:
    """Stack dataset items into a batch (every key gets a leading batch dimension)."""
    if not items:
        raise ValueError("cannot collate an empty list of items")
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}
