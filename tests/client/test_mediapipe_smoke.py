"""Real MediaPipe Holistic (pinned 0.10.21, models from the wheel) on a photo of a person."""

from __future__ import annotations

from semiofed.client.extract.backends import HolisticBackend
from tests.clips import astronaut_rgb


def test_holistic_finds_pose_and_face_on_astronaut_photo() -> None:
    backend = HolisticBackend()
    try:
        lm = backend.process(astronaut_rgb(), 0)
    finally:
        backend.close()
    assert lm.pose is not None and lm.pose.shape == (33, 4)
    assert lm.face is not None and lm.face.shape == (468, 3)
    nose_x, nose_y = lm.pose[0, :2]
    # Eileen Collins' nose is left of centre in the upper third of the photo.
    assert 0.35 < nose_x < 0.5 and 0.15 < nose_y < 0.35
    assert lm.pose[0, 3] > 0.9  # the nose is clearly visible
