"""BIDS-style ``events.tsv`` annotations beside each recording.

Columns: ``onset`` (s from recording start), ``duration`` (s), ``eventType`` (see
:mod:`semiofed.shared.labels`), and optional ``lateralization``
(left/right/bilateral/unknown) and ``confidence`` (0..1). ``n/a`` marks an empty value.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .atomic import atomic_write_text
from .errors import FormatError
from .labels import LATERALIZATIONS, is_known_event_type

REQUIRED_COLUMNS = ("onset", "duration", "eventType")
OPTIONAL_COLUMNS = ("lateralization", "confidence")
END_TOLERANCE_S = 0.1  # events written at millisecond precision from frame times


@dataclass(frozen=True)
class Event:
    onset: float
    duration: float
    event_type: str
    lateralization: str | None = None
    confidence: float | None = None

    @property
    def offset(self) -> float:
        return self.onset + self.duration


def _float(path: Path, line: int, column: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise FormatError(path, f"line {line}: {column}={text!r} is not a number") from None
    if not math.isfinite(value):
        raise FormatError(path, f"line {line}: {column}={text!r} is not finite")
    return value


def read_events(path: str | Path, recording_seconds: float | None = None) -> list[Event]:
    """Read and validate an events.tsv; raises :class:`FormatError` naming the file and line.

    A UTF-8 byte-order mark is accepted. With ``recording_seconds``, an event must lie
    within the recording (up to one frame's rounding, :data:`END_TOLERANCE_S`)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise FormatError(path, f"cannot read events file ({exc})") from None
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise FormatError(
            path, "empty events file (expected a header with onset, duration, eventType)"
        )
    header = lines[0].split("\t")
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise FormatError(path, f"missing column(s) {', '.join(missing)} in header {header}")
    col = {name: i for i, name in enumerate(header)}
    events: list[Event] = []
    for n, line in enumerate(lines[1:], start=2):
        cells = line.split("\t")
        if len(cells) != len(header):
            raise FormatError(path, f"line {n}: {len(cells)} cells, header has {len(header)}")
        onset = _float(path, n, "onset", cells[col["onset"]])
        duration = _float(path, n, "duration", cells[col["duration"]])
        if onset < 0 or duration < 0:
            raise FormatError(path, f"line {n}: onset and duration must be >= 0")
        if recording_seconds is not None and onset + duration > recording_seconds + END_TOLERANCE_S:
            raise FormatError(
                path,
                f"line {n}: event {onset:g}–{onset + duration:g} s ends after the recording "
                f"({recording_seconds:g} s)",
            )
        etype = cells[col["eventType"]]
        if not is_known_event_type(etype):
            raise FormatError(path, f"line {n}: unknown eventType {etype!r}")
        lat = cells[col["lateralization"]] if "lateralization" in col else "n/a"
        if lat != "n/a" and lat not in LATERALIZATIONS:
            raise FormatError(
                path, f"line {n}: lateralization {lat!r} not in {sorted(LATERALIZATIONS)}"
            )
        conf_text = cells[col["confidence"]] if "confidence" in col else "n/a"
        conf = None if conf_text == "n/a" else _float(path, n, "confidence", conf_text)
        if conf is not None and not 0.0 <= conf <= 1.0:
            raise FormatError(path, f"line {n}: confidence {conf} outside [0, 1]")
        events.append(Event(onset, duration, etype, None if lat == "n/a" else lat, conf))
    return events


def format_events(events: Iterable[Event]) -> str:
    rows = ["\t".join((*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS))]
    for e in sorted(events, key=lambda e: e.onset):
        conf = "n/a" if e.confidence is None else f"{e.confidence:.3f}"
        rows.append(
            f"{e.onset:.3f}\t{e.duration:.3f}\t{e.event_type}\t{e.lateralization or 'n/a'}\t{conf}"
        )
    return "\n".join(rows) + "\n"


def write_events(path: str | Path, events: Iterable[Event]) -> None:
    atomic_write_text(path, format_events(events))
