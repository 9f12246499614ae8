"""De-identified preview for clinicians: the skeleton drawn on a blank background.

Only keypoints are drawn, so no pixel of the source video can reach the preview. Detected
landmarks are drawn in colour, gap-filled ones in grey.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from semiofed.shared.atomic import atomic_path
from semiofed.shared.errors import SemioFedError
from semiofed.shared.recording import STREAMS, Recording
from semiofed.shared.skeleton import FACE_SUBSET, FACE_SUBSET_EDGES, HAND_EDGES, POSE_EDGES

COLOURS = {
    "pose": (80, 220, 80),
    "face": (230, 200, 60),
    "left_hand": (60, 140, 255),
    "right_hand": (255, 90, 90),
}
FILLED_COLOUR = (150, 150, 150)
FACE_EDGES = tuple((FACE_SUBSET[a], FACE_SUBSET[b]) for a, b in FACE_SUBSET_EDGES)
EDGES = {"pose": POSE_EDGES, "face": FACE_EDGES, "left_hand": HAND_EDGES, "right_hand": HAND_EDGES}


def draw_frame(rec: Recording, t: int, size: tuple[int, int]) -> np.ndarray:
    """Frame ``t`` of ``rec`` as a BGR skeleton image of ``size`` (width, height)."""
    width, height = size
    img = np.zeros((height, width, 3), dtype=np.uint8)
    for s, name in enumerate(STREAMS):
        if not (rec.present[t, s] or rec.filled[t, s]):
            continue
        xy = rec.stream(name)[t, :, :2] * np.array([width, height])
        colour = COLOURS[name] if rec.present[t, s] else FILLED_COLOUR
        for a, b in EDGES[name]:
            pa, pb = xy[a], xy[b]
            if np.all(np.isfinite([*pa, *pb])):
                cv2.line(
                    img, (int(pa[0]), int(pa[1])), (int(pb[0]), int(pb[1])), colour, 2, cv2.LINE_AA
                )
    return img


def write_preview(rec: Recording, path: Path, size: tuple[int, int]) -> Path:
    """Write the skeleton preview of ``rec`` as an ``mp4v`` video, atomically."""
    with atomic_path(path, suffix=path.suffix) as tmp:
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), rec.fps, size)
        if not writer.isOpened():
            raise SemioFedError(f"{path}: OpenCV cannot write the preview video")
        try:
            for t in range(rec.n_frames):
                writer.write(draw_frame(rec, t, size))
        finally:
            writer.release()
    return path
