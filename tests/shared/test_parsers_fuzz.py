"""Property-based fuzzing (hypothesis, bounded and derandomized) of the parsers that read
files from outside: recordings, run configurations and decoded payloads. Whatever the
input, each either parses or raises the project's one error type naming the file or field
(never a bare KeyError, TypeError or ZipFile error, which would reach a user as a
traceback)."""

from __future__ import annotations

import io
import tempfile
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from semiofed.shared.errors import SemioFedError
from semiofed.shared.recording import SUFFIX, empty_recording, load_recording, save_recording
from semiofed.shared.run_config import DEFAULTS, RunConfig, decode_payload, load_run_config

FUZZ = settings(max_examples=60, deadline=None, derandomize=True)

SCALARS = (
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8)
)


def _real_recording_bytes() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"r{SUFFIX}"
        save_recording(empty_recording(20, 10.0), path)
        return path.read_bytes()


REAL = _real_recording_bytes()


@FUZZ
@given(st.data())
def test_damaged_recordings_raise_only_semiofed_errors(data: st.DataObject) -> None:
    """A real recording with bytes flipped, cut, or one member replaced."""
    blob = bytearray(REAL)
    kind = data.draw(st.sampled_from(["flip", "cut", "member"]))
    if kind == "flip":
        for i in data.draw(st.lists(st.integers(0, len(blob) - 1), min_size=1, max_size=8)):
            blob[i] ^= 0xFF
    elif kind == "cut":
        blob = blob[: data.draw(st.integers(0, len(blob) - 1))]
    else:
        with zipfile.ZipFile(io.BytesIO(REAL)) as zf:
            members = {n: zf.read(n) for n in zf.namelist()}
        victim = data.draw(st.sampled_from(sorted(members)))
        members[victim] = data.draw(st.binary(max_size=64))
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as zf:
            for name, content in members.items():
                zf.writestr(name, content)
        blob = bytearray(out.getvalue())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"r{SUFFIX}"
        path.write_bytes(bytes(blob))
        try:
            rec = load_recording(path)
        except SemioFedError as exc:
            assert path.name in str(exc)
        else:
            assert rec.n_frames >= 0 and np.isfinite(rec.fps)


def _mutated(data: st.DataObject) -> dict[str, Any]:
    """The default run configuration with a few values replaced by anything."""
    raw = {table: dict(values) for table, values in DEFAULTS.items()}
    for _ in range(data.draw(st.integers(1, 4))):
        table = data.draw(st.sampled_from(sorted(raw)))
        keys = st.text(max_size=6)
        if raw[table]:
            keys = st.sampled_from(sorted(raw[table])) | keys
        key = data.draw(keys)
        raw[table][key] = data.draw(SCALARS | st.lists(SCALARS, max_size=3))
    if data.draw(st.booleans()):
        raw[data.draw(st.text(max_size=6))] = data.draw(SCALARS)
    return raw


@FUZZ
@given(st.data())
def test_run_configurations_validate_or_name_the_field(data: st.DataObject) -> None:
    raw = _mutated(data)
    try:
        cfg = RunConfig.parse(raw, "fuzz.toml")
    except SemioFedError as exc:
        assert "fuzz.toml" in str(exc)
    else:
        assert set(DEFAULTS) <= set(cfg.as_dict())


@FUZZ
@given(st.text(max_size=300))
def test_any_toml_text_loads_or_raises_one_error(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "run.toml"
        path.write_text(text, encoding="utf-8")
        try:
            load_run_config(path)
        except SemioFedError as exc:
            assert "run.toml" in str(exc)


@FUZZ
@given(st.text(max_size=200))
def test_any_payload_decodes_or_raises_one_error(text: str) -> None:
    try:
        decode_payload(text, "fuzz payload")
    except SemioFedError as exc:
        assert "fuzz payload" in str(exc)


def test_fuzzed_toml_reaches_the_validator() -> None:
    """The fuzzers above are not vacuous: the default configuration passes."""
    assert RunConfig.parse({t: dict(v) for t, v in DEFAULTS.items()}, "x")
    assert tomllib.loads("") == {}
