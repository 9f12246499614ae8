"""The site's feature cache: per-frame stream features computed once per recording.

Turning a recording into the per-frame stream tensors the windows are cut from
(:func:`semiofed.shared.windows.recording_features`: resampling, normalisation, face
signals) costs seconds per site; every federated message, ``site train``, ``site calibrate``
and ``site analyze`` needs the same result. :class:`FeatureCache` keeps it in the site's
state folder (``STATE/feature-cache/``, which never leaves the site) and is the ``features``
hook of :func:`semiofed.shared.dataset.load_patient_windows`.

An entry is keyed by

* the SHA-256 of the recording file's bytes (an edited or re-extracted recording is a new
  key; the entries of its old contents are removed when the new one is written),
* the window settings (:class:`~semiofed.shared.windows.WindowConfig`, every field),
* the feature code version: the SHA-256 of the source of the modules that compute the
  features (:data:`FEATURE_MODULES`), so changed feature code never reads old entries.

Labels are not cached (the events file is read every time), so relabelled events take
effect at once. Entries are written atomically (temporary file, ``os.replace``), so
concurrent processes of one site at worst compute the same entry twice. An entry holds a
SHA-256 digest of its own arrays and its key; a file that cannot be read, or whose digest or
key does not match, is not trusted: the features are recomputed and the entry rewritten.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import zipfile
from collections.abc import Sequence
from dataclasses import asdict, replace
from functools import cache
from pathlib import Path

import numpy as np
import torch

from semiofed.shared.atomic import atomic_write
from semiofed.shared.dataset import (
    FEATURE_CACHE_DIR,
    FeaturesFn,
    FrameFeatures,
    PatientWindows,
    StreamEmbeddings,
    WindowDataset,
    collate,
    file_features,
)
from semiofed.shared.features import STREAM_NAMES
from semiofed.shared.model import SemioNet, embed_windows
from semiofed.shared.windows import WindowConfig

log = logging.getLogger(__name__)

CACHE_DIR = FEATURE_CACHE_DIR
EMBEDDING_DIR = "embeddings"  # under CACHE_DIR
#: Windows per no-grad encoder pass (the same embeddings, bit for bit, as 256; ~25 % less CPU).
EMBED_BATCH = 64
#: The modules whose code decides the cached values (their source is the feature version).
FEATURE_MODULES = (
    "semiofed.shared.features",
    "semiofed.shared.normalize",
    "semiofed.shared.recording",
    "semiofed.shared.skeleton",
    "semiofed.shared.windows",
)
_FORMAT = "semiofed-feature-cache-1"
_EMBED_FORMAT = "semiofed-embedding-cache-1"


@cache
def feature_code_version() -> str:
    """SHA-256 of the source of :data:`FEATURE_MODULES`."""
    h = hashlib.sha256()
    for name in FEATURE_MODULES:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise RuntimeError(f"cannot locate the source of {name}")
        h.update(name.encode() + b"\0" + Path(spec.origin).read_bytes() + b"\0")
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


_UNTRUSTED = (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile)


def _read_entry(entry: Path, fmt: str, key: str) -> dict[str, np.ndarray] | None:
    """The arrays of a cache entry; None when it is missing, unreadable, of another format
    or key, or altered (its digest does not match)."""
    if not entry.is_file():
        return None
    try:
        with np.load(entry, allow_pickle=False) as z:
            arrays = {name: z[name] for name in z.files}
        digest = str(arrays.pop("digest"))
        if str(arrays["format"]) != fmt or str(arrays["key"]) != key:
            raise ValueError("format or key does not match")
        if _digest(arrays) != digest:
            raise ValueError("digest does not match")
    except _UNTRUSTED as exc:
        log.warning("cache entry %s not used (%s); recomputing", entry, exc)
        return None
    return arrays


def _write_entry(entry: Path, fmt: str, key: str, arrays: dict[str, np.ndarray]) -> bool:
    """Write a cache entry atomically with its format, key and digest; False when the
    state folder refuses it (the values in memory are still right)."""
    doc = {"format": np.asarray(fmt), "key": np.asarray(key), **arrays}
    doc["digest"] = np.asarray(_digest(doc))
    try:
        atomic_write(entry, lambda fh: np.savez(fh, **doc), binary=True)
    except OSError as exc:
        log.warning("cache entry %s not written: %s", entry, exc)
        return False
    return True


class FeatureCache:
    """The ``features`` hook of ``load_patient_windows`` backed by ``STATE/feature-cache``.

    ``hits`` and ``misses`` count this object's look-ups (a corrupt entry is a miss)."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = Path(state_dir) / CACHE_DIR
        self.hits = 0
        self.misses = 0

    def key(self, content_sha: str, cfg: WindowConfig) -> str:
        ident = {"recording": content_sha, "window": asdict(cfg), "code": feature_code_version()}
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()

    def _entry(self, path: Path, content_sha: str, key: str) -> Path:
        where = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
        return self.dir / f"{where}-{content_sha[:16]}-{key[:16]}.npz"

    def __call__(self, path: Path, cfg: WindowConfig) -> FrameFeatures:
        content_sha = file_sha256(path)
        key = self.key(content_sha, cfg)
        entry = self._entry(path, content_sha, key)
        cached = self._read(entry, key)
        if cached is not None:
            self.hits += 1
            return cached
        self.misses += 1
        x, mask, first_time = file_features(path, cfg)
        self._write(entry, key, x, mask, first_time)
        return x, mask, first_time

    def _read(self, entry: Path, key: str) -> FrameFeatures | None:
        arrays = _read_entry(entry, _FORMAT, key)
        if arrays is None:
            return None
        x = {s: arrays[f"x_{s}"] for s in STREAM_NAMES}
        mask = {s: arrays[f"m_{s}"] for s in STREAM_NAMES}
        return x, mask, float(arrays["first_time"])

    def _write(
        self,
        entry: Path,
        key: str,
        x: dict[str, np.ndarray],
        mask: dict[str, np.ndarray],
        first_time: float,
    ) -> None:
        arrays: dict[str, np.ndarray] = {
            "first_time": np.asarray(first_time, dtype=np.float64),
            **{f"x_{s}": np.asarray(x[s]) for s in STREAM_NAMES},
            **{f"m_{s}": np.asarray(mask[s]) for s in STREAM_NAMES},
        }
        if not _write_entry(entry, _FORMAT, key, arrays):
            return
        # entries of this file's earlier contents are never read again
        where, content = entry.name.split("-")[:2]
        for old in self.dir.glob(f"{where}-*.npz"):
            if old.name.split("-")[1] != content:
                old.unlink(missing_ok=True)


def site_features(state_dir: Path | None) -> FeaturesFn:
    """The ``features`` hook for a site: its cache when it has a state folder, else compute."""
    return FeatureCache(Path(state_dir)) if state_dir is not None else file_features


def windows_digest(pw: PatientWindows) -> str:
    """SHA-256 of a patient's window inputs (every stream's windows and masks): the feature
    key of its embeddings."""
    return _digest(
        {
            **{f"x_{s}": pw.x[s] for s in STREAM_NAMES},
            **{f"m_{s}": pw.mask[s] for s in STREAM_NAMES},
        }
    )


class EmbeddingCache:
    """The frozen encoders' embeddings of each patient's windows in
    ``STATE/feature-cache/embeddings`` (never sent). An entry is keyed by the model's
    :meth:`~semiofed.shared.model.SemioNet.embedding_key` (pretrained digest, architecture
    hash, encoder weights) and :func:`windows_digest` (the windows the features give); it
    carries a digest of its content like a feature entry and is recomputed when unreadable,
    altered or of another key. A patient's entries of other keys are removed when a new one
    is written."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = Path(state_dir) / CACHE_DIR / EMBEDDING_DIR
        self.hits = 0
        self.misses = 0

    def _entry(self, pw: PatientWindows, key: str) -> Path:
        who = hashlib.sha256(f"{pw.site}/{pw.patient}".encode()).hexdigest()[:16]
        return self.dir / f"{who}-{key[:32]}.npz"

    def read(self, pw: PatientWindows, key: str) -> tuple[np.ndarray, np.ndarray] | None:
        """The embeddings and presence of ``pw``'s entry under ``key``, None when missing or
        not trusted (a miss)."""
        arrays = _read_entry(self._entry(pw, key), _EMBED_FORMAT, key)
        if arrays is None or len(arrays["emb"]) != len(pw):
            self.misses += 1
            return None
        self.hits += 1
        return arrays["emb"], arrays["present"]

    def write(self, pw: PatientWindows, key: str, emb: StreamEmbeddings) -> None:
        entry = self._entry(pw, key)
        arrays = {"emb": np.asarray(emb.emb), "present": np.asarray(emb.present)}
        if not _write_entry(entry, _EMBED_FORMAT, key, arrays):
            return
        who = entry.name.split("-")[0]
        for old in self.dir.glob(f"{who}-*.npz"):
            if old != entry:
                old.unlink(missing_ok=True)


def embed_patients(
    model: SemioNet, patients: Sequence[PatientWindows], cache: EmbeddingCache | None = None
) -> list[PatientWindows]:
    """``patients`` with their windows' embeddings under ``model``'s frozen encoders
    attached (:attr:`~semiofed.shared.dataset.PatientWindows.embedded`), read from the
    site's ``cache`` when it has them, else computed in batched no-grad passes (and cached
    there). Unchanged when the model's encoders train."""
    model_key = model.embedding_key()
    if model_key is None:
        return list(patients)
    keys = [
        hashlib.sha256(f"{model_key}|{windows_digest(p)}".encode()).hexdigest() for p in patients
    ]
    found: list[StreamEmbeddings | None] = [None] * len(patients)
    for i, (p, k) in enumerate(zip(patients, keys, strict=True)):
        arrays = cache.read(p, k) if cache is not None else None
        if arrays is not None:
            found[i] = StreamEmbeddings(model_key, *arrays)
    todo = [i for i, e in enumerate(found) if e is None]
    if todo:
        loader = torch.utils.data.DataLoader(
            WindowDataset([patients[i] for i in todo]),
            batch_size=EMBED_BATCH,
            shuffle=False,
            collate_fn=collate,
        )
        emb, present = embed_windows(model, loader)
        start = 0
        for i in todo:
            n = len(patients[i])
            found[i] = computed = StreamEmbeddings(
                model_key, emb[start : start + n], present[start : start + n]
            )
            start += n
            if cache is not None:
                cache.write(patients[i], keys[i], computed)
    return [replace(p, embedded=e) for p, e in zip(patients, found, strict=True)]
