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
from dataclasses import asdict
from functools import cache
from pathlib import Path

import numpy as np

from semiofed.shared.atomic import atomic_write
from semiofed.shared.dataset import FeaturesFn, FrameFeatures, file_features
from semiofed.shared.features import STREAM_NAMES
from semiofed.shared.windows import WindowConfig

log = logging.getLogger(__name__)

CACHE_DIR = "feature-cache"
#: The modules whose code decides the cached values (their source is the feature version).
FEATURE_MODULES = (
    "semiofed.shared.features",
    "semiofed.shared.normalize",
    "semiofed.shared.recording",
    "semiofed.shared.skeleton",
    "semiofed.shared.windows",
)
_FORMAT = "semiofed-feature-cache-1"


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
        if not entry.is_file():
            return None
        try:
            with np.load(entry, allow_pickle=False) as z:
                arrays = {name: z[name] for name in z.files}
            digest = str(arrays.pop("digest"))
            if str(arrays["format"]) != _FORMAT or str(arrays["key"]) != key:
                raise ValueError("format or key does not match")
            if _digest(arrays) != digest:
                raise ValueError("digest does not match")
            x = {s: arrays[f"x_{s}"] for s in STREAM_NAMES}
            mask = {s: arrays[f"m_{s}"] for s in STREAM_NAMES}
            first_time = float(arrays["first_time"])
        except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile) as exc:
            log.warning("feature cache entry %s not used (%s); recomputing", entry, exc)
            return None
        return x, mask, first_time

    def _write(
        self,
        entry: Path,
        key: str,
        x: dict[str, np.ndarray],
        mask: dict[str, np.ndarray],
        first_time: float,
    ) -> None:
        arrays: dict[str, np.ndarray] = {
            "format": np.asarray(_FORMAT),
            "key": np.asarray(key),
            "first_time": np.asarray(first_time, dtype=np.float64),
            **{f"x_{s}": np.asarray(x[s]) for s in STREAM_NAMES},
            **{f"m_{s}": np.asarray(mask[s]) for s in STREAM_NAMES},
        }
        arrays["digest"] = np.asarray(_digest(arrays))
        try:
            atomic_write(entry, lambda fh: np.savez(fh, **arrays), binary=True)
        except OSError as exc:  # a full or read-only state folder: the features are still right
            log.warning("feature cache entry %s not written: %s", entry, exc)
            return
        # entries of this file's earlier contents are never read again
        where, content = entry.name.split("-")[:2]
        for old in self.dir.glob(f"{where}-*.npz"):
            if old.name.split("-")[1] != content:
                old.unlink(missing_ok=True)


def site_features(state_dir: Path | None) -> FeaturesFn:
    """The ``features`` hook for a site: its cache when it has a state folder, else compute."""
    return FeatureCache(Path(state_dir)) if state_dir is not None else file_features
