"""events.tsv: round trip, label mapping, and every malformed case."""

from __future__ import annotations

from pathlib import Path

import pytest

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
    assert labels.is_seizure("sz") and not labels.is_seizure("pnes")
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
