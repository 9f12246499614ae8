"""events.tsv: round trip, label mapping, and every malformed case."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from semiofed.shared import labels
from semiofed.shared.errors import FormatError
from semiofed.shared.events import Event, read_events, write_events


def test_round_trip(tmp_path: Path) -> None:
    events = [
        Event(10.0, 60.0, "sz_foc_a_m_clonic", "right", 0.9),
        Event(0.0, 10.0, "bckg"),
        Event(100.0, 140.0, "pnes", "bilateral"),
        Event(300.0, 20.0, "sz"),
    ]
    write_events(tmp_path / "x_events.tsv", events)
    back = read_events(tmp_path / "x_events.tsv")
    assert back == sorted(events, key=lambda e: e.onset)


def test_label_mapping() -> None:
    assert labels.class_of("bckg") == labels.CLASS_INDEX["bckg"]
    assert labels.class_of("sz_foc_ia_m_automatisms") == labels.CLASS_INDEX["automatisms"]
    assert labels.class_of("sz_foc_a_m_clonic") == labels.CLASS_INDEX["clonic"]
    assert labels.class_of("sz_foc_f2b") == labels.CLASS_INDEX["f2b"]
    assert labels.class_of("sz_gen_m_tonicClonic") == labels.CLASS_INDEX["f2b"]
    assert labels.class_of("sz_foc_a_m_hyperkinetic") == labels.CLASS_INDEX["hyperkinetic"]
    assert labels.class_of("pnes") == labels.CLASS_INDEX["pnes"]
    assert labels.class_of("sz") == labels.IGNORE_INDEX  # unlabelled seizure
    for cls, etype in labels.CANONICAL_EVENT_TYPE.items():
        assert labels.class_of(etype) == labels.CLASS_INDEX[cls]
    with pytest.raises(ValueError):
        labels.class_of("seizure")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("", "empty events file"),
        ("onset\tduration\n1\t2\n", "missing column"),
        ("onset\tduration\teventType\n1\t2\tsz_made_up\n", "unknown eventType 'sz_made_up'"),
        ("onset\tduration\teventType\nx\t2\tbckg\n", "onset='x' is not a number"),
        ("onset\tduration\teventType\n1\tnan\tbckg\n", "not finite"),
        ("onset\tduration\teventType\n-1\t2\tbckg\n", ">= 0"),
        ("onset\tduration\teventType\n1\t2\n", "2 cells"),
        ("onset\tduration\teventType\tlateralization\n1\t2\tsz\tup\n", "lateralization 'up'"),
        ("onset\tduration\teventType\tconfidence\n1\t2\tsz\t1.5\n", "confidence"),
    ],
)
def test_malformed(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "bad_events.tsv"
    path.write_text(content)
    with pytest.raises(FormatError) as err:
        read_events(path)
    assert "bad_events.tsv" in str(err.value) and problem in str(err.value)


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "x_events.tsv"
    path.write_bytes(b"\xef\xbb\xbfonset\tduration\teventType\n1.0\t2.0\tsz\n")
    assert read_events(path) == [Event(1.0, 2.0, "sz")]


@pytest.mark.parametrize(
    ("row", "ok"),
    [("0\t60\tsz", True), ("59.95\t0.1\tsz", True), ("61\t0\tsz", False), ("30\t31\tsz", False)],
)
def test_events_beyond_the_recording_are_refused_with_line(
    tmp_path: Path, row: str, ok: bool
) -> None:
    path = tmp_path / "x_events.tsv"
    path.write_text(f"onset\tduration\teventType\n0\t1\tbckg\n{row}\n")
    assert len(read_events(path)) == 2  # without a recording length: no range to check
    if ok:
        assert len(read_events(path, recording_seconds=60.0)) == 2
    else:
        with pytest.raises(FormatError, match=r"x_events\.tsv: line 3: .*ends after the recording"):
            read_events(path, recording_seconds=60.0)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(st.binary(max_size=200))
def test_any_bytes_parse_or_raise_format_error(data: bytes) -> None:
    """Fuzzing the parser: arbitrary bytes never escape as anything but a FormatError."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x_events.tsv"
        path.write_bytes(b"onset\tduration\teventType\n" + data)
        try:
            events = read_events(path, recording_seconds=100.0)
        except FormatError as exc:
            assert "x_events.tsv" in str(exc)
        else:
            assert all(e.onset >= 0 and e.offset <= 100.1 for e in events)


EVENT_TYPES = st.sampled_from(["bckg", "sz", "pnes", "sz_foc_a_m_clonic", "sz_foc_f2b"])


@settings(max_examples=100, deadline=None, derandomize=True)
@given(
    st.lists(
        st.builds(
            Event,
            st.floats(0, 1e5, allow_nan=False).map(lambda x: round(x, 3)),
            st.floats(0, 1e4, allow_nan=False).map(lambda x: round(x, 3)),
            EVENT_TYPES,
            st.sampled_from([None, "left", "right", "bilateral", "unknown"]),
            st.none() | st.floats(0, 1).map(lambda x: round(x, 3)),
        ),
        max_size=8,
    )
)
def test_written_events_read_back(events: list[Event]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x_events.tsv"
        write_events(path, events)
        assert read_events(path) == sorted(events, key=lambda e: e.onset)
