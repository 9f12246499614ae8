"""Landmark backends: MediaPipe Holistic (legacy solution) and MediaPipe Tasks landmarkers.

Both return :class:`Landmarks` in the Holistic layout of the recording format: pose
(33, 4: x, y, z, visibility), face (468, 3), left and right hand (21, 3), each ``None``
when not detected, in normalised coordinates of the image they were given.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np

from semiofed.shared.errors import SemioFedError
from semiofed.shared.skeleton import N_FACE, N_HAND, N_POSE

from .settings import BACKENDS

#: The only Holistic pose model shipped in the mediapipe 0.10.21 wheel is the "full" one
#: (complexity 1); complexities 0 and 2 would be downloaded at run time, which a site
#: without internet access cannot do.
HOLISTIC_MODEL_COMPLEXITY = 1
#: ``.task`` files the tasks backend looks for in ``--model-dir`` (first match wins).
TASK_MODELS: dict[str, tuple[str, ...]] = {
    "pose": (
        "pose_landmarker_full.task",
        "pose_landmarker_heavy.task",
        "pose_landmarker_lite.task",
        "pose_landmarker*.task",
    ),
    "face": ("face_landmarker.task", "face_landmarker*.task"),
    "hand": ("hand_landmarker.task", "hand_landmarker*.task"),
}


class Landmarks(NamedTuple):
    pose: np.ndarray | None
    face: np.ndarray | None
    left_hand: np.ndarray | None
    right_hand: np.ndarray | None


class Backend(Protocol):
    name: str
    version: str
    device: str

    def process(self, rgb: np.ndarray, timestamp_ms: int) -> Landmarks: ...

    def reset(self) -> None:
        """Forget tracking state (next frame is searched from scratch)."""

    def close(self) -> None: ...


@dataclass(frozen=True)
class BackendSpec:
    """Picklable description of a backend, sent to worker processes."""

    name: str = "holistic"
    model_dir: Path | None = None
    device: str = "auto"


def import_mediapipe() -> Any:
    """Import mediapipe quietly and make its Tasks API work with protobuf ≥ 5.

    mediapipe 0.10.21's protobuf bridge calls ``MessageFactory.GetPrototype``, removed in
    protobuf 5; without it every Tasks landmarker fails with a TypeError. The shim maps it to
    its replacement ``GetMessageClass``. Import-time chatter on stderr is silenced.
    """
    from google.protobuf import message_factory

    if not hasattr(message_factory.MessageFactory, "GetPrototype"):
        message_factory.MessageFactory.GetPrototype = lambda self, desc: (
            message_factory.GetMessageClass(desc)
        )
    with quiet_stderr():
        import mediapipe

    return mediapipe


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    try:
        fd = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(fd, 2)
        os.close(fd)


def _array(landmarks: Any, n: int, with_visibility: bool = False) -> np.ndarray | None:
    if landmarks is None:
        return None
    points = landmarks.landmark if hasattr(landmarks, "landmark") else landmarks
    if len(points) < n:
        return None
    if with_visibility:
        return np.array([(p.x, p.y, p.z, p.visibility) for p in points[:n]], dtype=np.float32)
    return np.array([(p.x, p.y, p.z) for p in points[:n]], dtype=np.float32)


class HolisticBackend:
    """MediaPipe's legacy Holistic solution (CPU; models ship in the wheel)."""

    name = "mediapipe-holistic"

    def __init__(self, device: str = "auto") -> None:
        self._mp = import_mediapipe()
        self.version = str(self._mp.__version__)
        self.device = "cpu"
        self.note = (
            "the holistic backend runs on the CPU (the legacy solution has no GPU build on pip)"
            if device == "gpu"
            else ""
        )
        self._graph: Any = None
        self.reset()

    def reset(self) -> None:
        if self._graph is not None:
            self._graph.close()
        # smooth_landmarks=False: smoothing is done once, for every backend, in smoothing.py
        self._graph = self._mp.solutions.holistic.Holistic(
            static_image_mode=False,
            model_complexity=HOLISTIC_MODEL_COMPLEXITY,
            smooth_landmarks=False,
            refine_face_landmarks=False,
        )

    def process(self, rgb: np.ndarray, timestamp_ms: int) -> Landmarks:
        del timestamp_ms  # the solution keeps its own clock
        res = self._graph.process(rgb)
        return Landmarks(
            _array(res.pose_landmarks, N_POSE, with_visibility=True),
            _array(res.face_landmarks, N_FACE),
            _array(res.left_hand_landmarks, N_HAND),
            _array(res.right_hand_landmarks, N_HAND),
        )

    def close(self) -> None:
        if self._graph is not None:
            self._graph.close()
            self._graph = None


def find_task_models(model_dir: Path | None) -> dict[str, Path]:
    """The pose, face and hand ``.task`` files in ``model_dir``; a clear error names what is missing."""
    if model_dir is None:
        raise SemioFedError(
            "the tasks backend needs --model-dir, a folder with "
            "pose_landmarker_*.task, face_landmarker.task and hand_landmarker.task"
        )
    if not model_dir.is_dir():
        raise SemioFedError(f"{model_dir}: --model-dir is not a folder")
    found: dict[str, Path] = {}
    for kind, patterns in TASK_MODELS.items():
        for pattern in patterns:
            matches = sorted(model_dir.glob(pattern))
            if matches:
                found[kind] = matches[0]
                break
    missing = [TASK_MODELS[k][0] for k in TASK_MODELS if k not in found]
    if missing:
        raise SemioFedError(
            f"{model_dir}: missing MediaPipe model file(s) {', '.join(missing)} "
            "(download them from the MediaPipe model cards on a machine with internet access)"
        )
    for kind, path in found.items():
        if path.stat().st_size == 0:
            raise SemioFedError(f"{path}: the {kind} model file is empty (0 bytes)")
    return found


class TasksBackend:
    """MediaPipe Tasks Pose, Face and Hand Landmarkers (VIDEO mode) from site-provided ``.task`` files."""

    name = "mediapipe-tasks"

    def __init__(self, model_dir: Path | None, device: str = "auto") -> None:
        self._mp = import_mediapipe()
        self.version = str(self._mp.__version__)
        self._models = find_task_models(model_dir)
        self._want_gpu = device in ("auto", "gpu")
        self.device = "gpu" if self._want_gpu else "cpu"
        self.note = ""
        self._tasks: dict[str, Any] = {}
        self._last_ms = -1
        self.reset()

    def _create(self, kind: str, delegate: Any) -> Any:
        from mediapipe.tasks.python import BaseOptions, vision

        base = BaseOptions(model_asset_path=str(self._models[kind]), delegate=delegate)
        video = vision.RunningMode.VIDEO
        if kind == "pose":
            opts = vision.PoseLandmarkerOptions(base_options=base, running_mode=video)
            return vision.PoseLandmarker.create_from_options(opts)
        if kind == "face":
            opts = vision.FaceLandmarkerOptions(base_options=base, running_mode=video)
            return vision.FaceLandmarker.create_from_options(opts)
        opts = vision.HandLandmarkerOptions(base_options=base, running_mode=video, num_hands=2)
        return vision.HandLandmarker.create_from_options(opts)

    def _load(self, kind: str) -> Any:
        from mediapipe.tasks.python import BaseOptions

        if self.device == "gpu":
            try:
                return self._create(kind, BaseOptions.Delegate.GPU)
            except (RuntimeError, ValueError) as exc:
                self.device = "cpu"
                self.note = f"GPU delegate unavailable ({str(exc).splitlines()[0]}); using the CPU"
        try:
            return self._create(kind, BaseOptions.Delegate.CPU)
        except (RuntimeError, ValueError) as exc:
            raise SemioFedError(
                f"{self._models[kind]}: not a valid MediaPipe {kind} landmarker model "
                f"({str(exc).splitlines()[0]})"
            ) from None

    def reset(self) -> None:
        self.close()
        self._tasks = {kind: self._load(kind) for kind in TASK_MODELS}

    def process(self, rgb: np.ndarray, timestamp_ms: int) -> Landmarks:
        ts = max(timestamp_ms, self._last_ms + 1)  # VIDEO mode needs increasing timestamps
        self._last_ms = ts
        image = self._mp.Image(
            image_format=self._mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb)
        )
        pose_res = self._tasks["pose"].detect_for_video(image, ts)
        face_res = self._tasks["face"].detect_for_video(image, ts)
        hand_res = self._tasks["hand"].detect_for_video(image, ts)
        pose = None
        if pose_res.pose_landmarks:
            pose = _array(pose_res.pose_landmarks[0], N_POSE, with_visibility=True)
        face = _array(face_res.face_landmarks[0], N_FACE) if face_res.face_landmarks else None
        hands = [_array(h, N_HAND) for h in hand_res.hand_landmarks]
        labels = [c[0].category_name for c in hand_res.handedness]
        left, right = assign_hands(hands, labels, pose)
        return Landmarks(pose, face, left, right)

    def close(self) -> None:
        for task in self._tasks.values():
            task.close()
        self._tasks = {}


def assign_hands(
    hands: list[np.ndarray | None], labels: list[str], pose: np.ndarray | None
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Map detected hands to the person's left/right hand.

    With a pose, each hand goes to the nearer pose wrist (15 left, 16 right). Without one,
    the Tasks handedness label is used swapped, because it assumes a mirrored (selfie)
    image while monitoring cameras are not mirrored.
    """
    left = right = None
    for hand, label in zip(hands, labels, strict=False):
        if hand is None:
            continue
        if pose is not None:
            d_left = np.linalg.norm(hand[0, :2] - pose[15, :2])
            d_right = np.linalg.norm(hand[0, :2] - pose[16, :2])
            is_left = d_left <= d_right
        else:
            is_left = label == "Right"
        if is_left and left is None:
            left = hand
        elif not is_left and right is None:
            right = hand
    return left, right


def make_backend(spec: BackendSpec) -> HolisticBackend | TasksBackend:
    if spec.name == "holistic":
        return HolisticBackend(spec.device)
    if spec.name == "tasks":
        return TasksBackend(spec.model_dir, spec.device)
    raise SemioFedError(f"unknown backend {spec.name!r} (choose from {', '.join(BACKENDS)})")
