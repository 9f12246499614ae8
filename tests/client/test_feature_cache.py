"""The site feature cache: reused, invalidated by a changed recording, changed window
settings or changed feature code, and never trusted when its file is damaged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from semiofed.client import feature_cache
from semiofed.client.feature_cache import CACHE_DIR, FeatureCache
from semiofed.shared.dataset import PatientWindows, load_patient_windows
from semiofed.shared.events import Event, write_events
from semiofed.shared.recording import save_recording
from semiofed.shared.windows import WindowConfig
from tests.shared.test_dataset import make_recording

PATIENTS = ("sub-01-001", "sub-01-002")
DEFAULT = WindowConfig()


def _write_site(root: Path) -> Path:
    site = root / "site-01"
    for k, p in enumerate(PATIENTS):
        stem = site / p / f"{p}_run-1"
        stem.parent.mkdir(parents=True, exist_ok=True)
        save_recording(make_recording(seconds=12.0, seed=k), f"{stem}_keypoints.npz")
        write_events(f"{stem}_events.tsv", [Event(3.0, 6.0, "sz_foc_a_m_clonic", "left")])
    return site


def _same(a: list[PatientWindows], b: list[PatientWindows]) -> None:
    assert [p.patient for p in a] == [p.patient for p in b]
    for pa, pb in zip(a, b, strict=True):
        for s in pa.x:
            np.testing.assert_array_equal(pa.x[s], pb.x[s])
            np.testing.assert_array_equal(pa.mask[s], pb.mask[s])
        np.testing.assert_array_equal(pa.t0, pb.t0)
        np.testing.assert_array_equal(pa.y_type, pb.y_type)


def _load(site: Path, state: Path, cfg: WindowConfig = DEFAULT) -> tuple:
    cache = FeatureCache(state)
    return load_patient_windows(site, cfg, features=cache), cache


def _entries(state: Path) -> list[Path]:
    return sorted((state / CACHE_DIR).glob("*.npz"))


def test_features_are_computed_once_and_reused(tmp_path: Path) -> None:
    site, state = _write_site(tmp_path), tmp_path / "state"
    first, cache = _load(site, state)
    assert (cache.hits, cache.misses) == (0, 2)
    again, cache = _load(site, state)
    assert (cache.hits, cache.misses) == (2, 0)
    _same(again, load_patient_windows(site))  # exactly what computing gives
    _same(first, again)
    assert len(_entries(state)) == 2


def test_changed_recording_is_recomputed_and_its_old_entry_removed(tmp_path: Path) -> None:
    site, state = _write_site(tmp_path), tmp_path / "state"
    _load(site, state)
    rec = site / PATIENTS[0] / f"{PATIENTS[0]}_run-1_keypoints.npz"
    save_recording(make_recording(seconds=12.0, seed=7), rec)  # re-extracted
    patients, cache = _load(site, state)
    assert (cache.hits, cache.misses) == (1, 1)
    _same(patients, load_patient_windows(site))
    assert len(_entries(state)) == 2


def test_changed_events_need_no_recomputation(tmp_path: Path) -> None:
    site, state = _write_site(tmp_path), tmp_path / "state"
    _load(site, state)
    ev = site / PATIENTS[0] / f"{PATIENTS[0]}_run-1_events.tsv"
    write_events(ev, [])  # relabelled: no seizure
    patients, cache = _load(site, state)
    assert cache.misses == 0 and patients[0].y_detect.sum() == 0


def test_changed_window_settings_or_feature_code_are_recomputed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site, state = _write_site(tmp_path), tmp_path / "state"
    _load(site, state)
    other = WindowConfig(fps=10.0)
    patients, cache = _load(site, state, other)
    assert (cache.hits, cache.misses) == (0, 2)
    _same(patients, load_patient_windows(site, other))
    assert len(_entries(state)) == 4  # both settings stay cached
    monkeypatch.setattr(feature_cache, "feature_code_version", lambda: "changed feature code")
    _, cache = _load(site, state)
    assert (cache.hits, cache.misses) == (0, 2)


def _truncate(entry: Path) -> None:
    entry.write_bytes(entry.read_bytes()[:300])


def _tamper(entry: Path) -> None:
    """A well-formed file whose values were changed (its digest no longer matches)."""
    with np.load(entry) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["x_body"] = arrays["x_body"] + 1.0
    with open(entry, "wb") as fh:
        np.savez(fh, **arrays)


@pytest.mark.parametrize("damage", [_truncate, _tamper])
def test_a_damaged_entry_is_recomputed_not_trusted(tmp_path: Path, damage) -> None:
    site, state = _write_site(tmp_path), tmp_path / "state"
    _load(site, state)
    for entry in _entries(state):
        damage(entry)
    patients, cache = _load(site, state)
    assert (cache.hits, cache.misses) == (0, 2)
    _same(patients, load_patient_windows(site))
    _, cache = _load(site, state)  # rewritten
    assert (cache.hits, cache.misses) == (2, 0)


def test_the_site_task_loader_uses_the_cache_in_the_state_folder(tmp_path: Path) -> None:
    from semiofed.client.site_task import load_site
    from semiofed.shared.run_config import RunConfig

    site, state = _write_site(tmp_path), tmp_path / "state"
    load_site(site, RunConfig.parse({}), state)
    assert len(_entries(state)) == 2
    assert list(tmp_path.rglob(CACHE_DIR)) == [state / CACHE_DIR]  # in the state folder only


def test_simulated_sites_of_one_data_folder_share_its_cache(tmp_path: Path) -> None:
    """``server simulate``: virtual sites of one data folder read the entries the first wrote."""
    from semiofed.server.simulate import share_feature_cache

    site, shared = _write_site(tmp_path), tmp_path / "feature-cache" / "site-01"
    states = [tmp_path / "state" / name for name in ("site-001", "site-004")]
    for state in states:
        state.mkdir(parents=True)
        share_feature_cache(state, shared)
    _, cache = _load(site, states[0])
    assert (cache.hits, cache.misses) == (0, 2)
    patients, cache = _load(site, states[1])
    assert (cache.hits, cache.misses) == (2, 0)
    _same(patients, load_patient_windows(site))
    assert [e.name for e in _entries(states[1])] == sorted(e.name for e in shared.glob("*.npz"))
    assert len(_entries(states[0])) == 2
