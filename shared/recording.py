"""The SemioFed keypoint recording format (version 2; version 1 is read too).

One recording is one ``*_keypoints.npz`` file (a ZIP of NumPy arrays, deflate-compressed)
in the MediaPipe Holistic layout, written atomically. Members (S = ``pose``, ``face``,
``left_hand``, ``right_hand`` with N = 33, 468, 21, 21 points):

==================  ==========  ====================  =========================================
member              dtype       shape                 meaning
==================  ==========  ====================  =========================================
``header``          uint8       (bytes,)              UTF-8 JSON, see below
``timestamps``      float64     (T,)                  seconds from recording start, increasing
``S``               uint8       (ceil(T/2), N*3)      x, y, z: 4-bit codes of quantised
                                                      frame-to-frame differences, 2 frames/byte
``S_escapes``       uint16      (E,)                  zigzag differences that need > 4 bits
``pose_vis``        uint8       (T, 33)               visibility × 255
``mask``            uint8       (T, 4)                bit 0: stream detected; bit 1: gap-filled
``motion``          float16     (T, R)                optional optical-flow energy per region
``analysed``        uint8       (T,)                  optional (version 2): how the frame was
                                                      analysed, see below
==================  ==========  ====================  =========================================

Header keys: ``format`` (``"semiofed-keypoints"``), ``version`` (1 or 2), ``fps``,
``n_frames``, ``quant_step``, ``coding`` (``"delta-zigzag-4bit"``), ``source_sha256``,
``extractor`` (``{"name", "version"}``), ``streams`` (order of the mask columns),
``motion_regions`` and free-form ``meta``.

Coordinates are MediaPipe's normalised image coordinates (x, y in [0, 1] of the frame
width/height, z on the scale of x), quantised to ``quant_step`` (default 1/4096 of the frame,
≈0.16 px at 640 px: below MediaPipe's own jitter). Coding of a stream: the quantised int16
value of each coordinate is predicted by the previous frame's (absent frames repeat the last
detected value); the wrapping int16 difference is zigzag-mapped (0, -1, 1, -2, … → 0, 1, 2,
3, …); codes 0–14 are stored as nibbles (low nibble = even frame), code 15 marks an escape
whose full value is the next entry of ``S_escapes``. Decoding is two bit operations and one
wrapping int16 running sum, exact. Most of a monitoring video is a patient lying still, so
most differences fit in a nibble and deflate compresses the rest; the file size therefore
depends on how much the keypoints jitter (see bench_synth). ZIP members carry a fixed
timestamp, so equal recordings give byte-identical files.

Frames where a stream was not detected decode to NaN; the ``mask`` says which frames were
detected and which were filled by interpolation (flagged, never passed off as detections).

``analysed`` (version 2) records the motion gate of ``site extract``: 2 (``FULL_RATE``) = the
landmark model ran on the frame at the full analysis rate, 1 (``KEEPALIVE``) = it ran at the
low keep-alive rate of a still stretch, 0 (``NOT_ANALYSED``) = it did not run (the patient was
still): the frame's values are interpolated between the analysed frames around it and flagged
gap-filled, never detected. A recording whose every frame is analysed at full rate has no
``analysed`` member and is written as version 1, byte-identical to what version 1 wrote, so
older readers still read it; a version-1 file reads as every frame at full rate.
"""

from __future__ import annotations

import io
import json
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_path
from .errors import FormatError
from .skeleton import N_FACE, N_HAND, N_POSE

FORMAT_NAME = "semiofed-keypoints"
FORMAT_VERSION = 2
READ_VERSIONS = (1, 2)
SUFFIX = "_keypoints.npz"
STREAMS: tuple[str, ...] = ("pose", "face", "left_hand", "right_hand")
STREAM_POINTS: dict[str, int] = {
    "pose": N_POSE,
    "face": N_FACE,
    "left_hand": N_HAND,
    "right_hand": N_HAND,
}
DEFAULT_QUANT_STEP = 1.0 / 4096
DEFAULT_COMPRESS_LEVEL = 6
CODING = "delta-zigzag-4bit"
PER_BYTE = 2  # codes per byte
ESCAPE_CODE = 15
CODE_BLOCK = 160_000  # values per coding block (keeps the working set in cache)
DETECTED, FILLED = 1, 2
NOT_ANALYSED, KEEPALIVE, FULL_RATE = 0, 1, 2  # codes of the ``analysed`` member


@dataclass
class Recording:
    """One keypoint recording in memory. Absent frames of a stream are NaN."""

    timestamps: np.ndarray  # (T,) float64
    pose: np.ndarray  # (T, 33, 4) float32: x, y, z, visibility
    face: np.ndarray  # (T, 468, 3) float32
    left_hand: np.ndarray  # (T, 21, 3) float32
    right_hand: np.ndarray  # (T, 21, 3) float32
    present: np.ndarray  # (T, 4) bool, columns in STREAMS order
    fps: float
    source_sha256: str = ""
    extractor_name: str = "unknown"
    extractor_version: str = "0"
    filled: np.ndarray | None = None  # (T, 4) bool
    motion: np.ndarray | None = None  # (T, R) float32
    motion_regions: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    analysed: np.ndarray | None = None  # (T,) uint8 codes; default: every frame FULL_RATE

    def __post_init__(self) -> None:
        if self.filled is None:
            self.filled = np.zeros_like(self.present, dtype=bool)
        if self.analysed is None:
            self.analysed = np.full(self.present.shape[0], FULL_RATE, dtype=np.uint8)

    @property
    def n_frames(self) -> int:
        return int(self.timestamps.shape[0])

    @property
    def duration(self) -> float:
        return float(self.n_frames / self.fps)

    def stream(self, name: str) -> np.ndarray:
        """xyz (T, N, 3) of a stream (pose without visibility)."""
        arr = getattr(self, name)
        return arr[..., :3]

    def validate(self, path: str | Path = "<memory>") -> None:
        """Raise :class:`FormatError` if shapes, timestamps or values are inconsistent."""
        t = self.n_frames
        ts = self.timestamps
        if ts.ndim != 1:
            raise FormatError(path, f"timestamps must be 1-D, got shape {ts.shape}")
        if not np.all(np.isfinite(ts)):
            raise FormatError(path, "timestamps contain NaN or infinite values")
        if t > 1 and not np.all(np.diff(ts) > 0):
            bad = int(np.argmax(np.diff(ts) <= 0)) + 1
            raise FormatError(path, f"timestamps are not increasing (frame {bad})")
        if not (np.isfinite(self.fps) and self.fps > 0):
            raise FormatError(path, f"fps must be a positive number, got {self.fps}")
        expected = {
            "pose": (t, N_POSE, 4),
            "face": (t, N_FACE, 3),
            "left_hand": (t, N_HAND, 3),
            "right_hand": (t, N_HAND, 3),
        }
        for name, shape in expected.items():
            arr = getattr(self, name)
            if arr.shape != shape:
                raise FormatError(path, f"{name} has shape {arr.shape}, expected {shape}")
        for name, arr in (("present", self.present), ("filled", self.filled)):
            if arr is None or arr.shape != (t, len(STREAMS)):
                raise FormatError(
                    path,
                    f"{name} mask has shape {None if arr is None else arr.shape}, expected {(t, len(STREAMS))}",
                )
        for i, name in enumerate(STREAMS):
            arr = getattr(self, name)
            valid = self.present[:, i] | self.filled[:, i]
            for a in range(0, t, 2048):  # chunked: no full-size temporaries
                finite = np.isfinite(arr[a : a + 2048]).all(axis=(1, 2))
                if not finite[valid[a : a + 2048]].all():
                    raise FormatError(
                        path, f"{name} has NaN or infinite values in frames marked present"
                    )
        if self.analysed is None or self.analysed.shape != (t,):
            shape = None if self.analysed is None else self.analysed.shape
            raise FormatError(path, f"analysed has shape {shape}, expected {(t,)}")
        if not np.isin(self.analysed, (NOT_ANALYSED, KEEPALIVE, FULL_RATE)).all():
            raise FormatError(path, "analysed has codes other than 0, 1, 2")
        if self.present[self.analysed == NOT_ANALYSED].any():
            raise FormatError(path, "frames marked not analysed are marked detected")
        if self.motion is not None and (self.motion.ndim != 2 or self.motion.shape[0] != t):
            raise FormatError(path, f"motion has shape {self.motion.shape}, expected ({t}, R)")
        if self.motion is not None and self.motion.shape[1] != len(self.motion_regions):
            raise FormatError(path, "motion columns do not match motion_regions")


def _chunk_frames(width: int) -> int:
    return max(PER_BYTE, CODE_BLOCK // width // PER_BYTE * PER_BYTE)


def _encode(values: np.ndarray, valid: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Quantise, delta-code over time and pack 4-bit zigzag codes, in cache-sized chunks.

    Returns ``(packed, escapes)``: ``packed`` (ceil(T/2), N*3) uint8 holds the zigzag code
    of each frame-to-frame difference (0, -1, 1, -2, … 7 → 0 … 14) for two consecutive frames
    per byte (low nibble first); code 15 means "escape" and the full uint16 zigzag value is
    the next entry of ``escapes`` (C order). Absent frames repeat the last detected value.
    """
    n = values.shape[0]
    width = int(np.prod(values.shape[1:]))
    flat = values.reshape(n, width)
    packed = np.empty((-(-n // PER_BYTE), width), dtype=np.uint8)
    escapes: list[np.ndarray] = []
    idx = np.where(valid, np.arange(n), -1)
    np.maximum.accumulate(idx, out=idx)
    inv = np.float32(1.0 / step)
    prev = np.zeros(width, dtype=np.int16)
    chunk = _chunk_frames(width)
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        if valid[a:b].all():
            v = flat[a:b] * inv
        else:
            rows = idx[a:b]
            v = flat[np.maximum(rows, 0)] * inv
            v[rows < 0] = 0.0
        np.rint(v, out=v)
        np.clip(v, -32767, 32767, out=v)
        q = v.astype(np.int16)
        d = np.empty((-(-(b - a) // PER_BYTE) * PER_BYTE, width), dtype=np.int16)
        d[b - a :] = 0
        np.subtract(q[0], prev, out=d[0])
        np.subtract(q[1:], q[:-1], out=d[1 : b - a])
        prev = q[-1].copy()
        z = ((d << 1) ^ (d >> 15)).view(np.uint16)  # zigzag: 0, -1, 1, -2, ... -> 0, 1, 2, 3, ...
        big = z >= ESCAPE_CODE
        if big.any():
            escapes.append(z[big])
        c = np.minimum(z, ESCAPE_CODE).astype(np.uint8)
        packed[a // PER_BYTE : a // PER_BYTE + len(c) // PER_BYTE] = c[0::2] | (c[1::2] << 4)
    esc = np.concatenate(escapes) if escapes else np.zeros(0, dtype=np.uint16)
    return packed, esc


def _decode(
    packed: np.ndarray, escapes: np.ndarray, valid: np.ndarray, step: float, path: Path, name: str
) -> np.ndarray:
    """Inverse of :func:`_encode`: (T, N*3) float32 coordinates, NaN where not valid."""
    n = valid.shape[0]
    width = packed.shape[1]
    out = np.empty((n, width), dtype=np.float32)
    acc = np.zeros(width, dtype=np.int16)
    step32 = np.float32(step)
    esc = ((escapes >> 1) ^ (np.uint16(0) - (escapes & 1))).view(np.int16)  # un-zigzag
    pos = 0
    chunk = _chunk_frames(width) // PER_BYTE
    for i in range(0, packed.shape[0], chunk):
        p = packed[i : i + chunk]
        c = np.empty((PER_BYTE * len(p), width), dtype=np.uint8)
        np.bitwise_and(p, 15, out=c[0::2])
        np.right_shift(p, 4, out=c[1::2])
        d = c.astype(np.int16)
        d = (d >> 1) ^ -(d & 1)
        big = c == ESCAPE_CODE
        k = int(np.count_nonzero(big))
        if k:
            if pos + k > esc.shape[0]:
                raise FormatError(path, f"{name}: fewer escape values than escape codes")
            d[big] = esc[pos : pos + k]
            pos += k
        np.add(d[0], acc, out=d[0])
        if width >= 512:  # row-wise running sum (wrapping int16): faster than cumsum on wide rows
            for t in range(1, len(d)):
                np.add(d[t], d[t - 1], out=d[t])
        else:
            np.cumsum(d, axis=0, dtype=np.int16, out=d)
        acc = d[-1]
        a = PER_BYTE * i
        b = min(n, a + len(d))
        np.multiply(d[: b - a], step32, out=out[a:b])
    if pos != esc.shape[0]:
        raise FormatError(path, f"{name}: {esc.shape[0] - pos} unused escape values")
    out[~valid] = np.nan
    return out


def save_recording(
    rec: Recording,
    path: str | Path,
    quant_step: float = DEFAULT_QUANT_STEP,
    compress_level: int = DEFAULT_COMPRESS_LEVEL,
) -> Path:
    """Validate and write ``rec`` atomically to ``path`` (should end in ``_keypoints.npz``).

    ``compress_level`` is the deflate level (1 fastest … 9 smallest); the output is
    byte-identical for identical input (fixed ZIP member timestamps).
    """
    path = Path(path)
    rec.validate(path)
    valid = rec.present | rec.filled
    gated = bool((rec.analysed != FULL_RATE).any())
    header = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION if gated else 1,
        "fps": float(rec.fps),
        "n_frames": rec.n_frames,
        "quant_step": quant_step,
        "coding": CODING,
        "source_sha256": rec.source_sha256,
        "extractor": {"name": rec.extractor_name, "version": rec.extractor_version},
        "streams": list(STREAMS),
        "motion_regions": list(rec.motion_regions),
        "meta": rec.meta,
    }
    arrays: dict[str, np.ndarray] = {
        "header": np.frombuffer(json.dumps(header).encode(), dtype=np.uint8),
        "timestamps": rec.timestamps.astype(np.float64),
        "pose_vis": np.clip(np.rint(np.nan_to_num(rec.pose[..., 3]) * 255), 0, 255).astype(
            np.uint8
        ),
        "mask": (rec.present.astype(np.uint8) * DETECTED) | (rec.filled.astype(np.uint8) * FILLED),
    }
    for i, name in enumerate(STREAMS):
        arrays[name], arrays[f"{name}_escapes"] = _encode(rec.stream(name), valid[:, i], quant_step)
    if rec.motion is not None:
        arrays["motion"] = rec.motion.astype(np.float16)
    if gated:
        arrays["analysed"] = rec.analysed.astype(np.uint8)
    with (
        atomic_path(path) as tmp,
        zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=compress_level) as zf,
    ):
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info._compresslevel = compress_level  # read by zipfile.open (3.11+)
            with zf.open(info, "w", force_zip64=arr.nbytes > 2**30) as fh:
                np.lib.format.write_array(fh, np.ascontiguousarray(arr), allow_pickle=False)
    return path


def _member(
    zf: zipfile.ZipFile, path: Path, name: str, dtype: str, shape: tuple[int, ...] | None = None
) -> np.ndarray:
    try:
        arr = np.lib.format.read_array(io.BytesIO(zf.read(f"{name}.npy")), allow_pickle=False)
    except KeyError:
        raise FormatError(path, f"missing member {name!r}") from None
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as exc:
        raise FormatError(path, f"corrupt member {name!r} ({type(exc).__name__}: {exc})") from None
    if shape is not None and arr.shape != shape:
        raise FormatError(path, f"{name} has shape {arr.shape}, expected {shape}")
    if arr.dtype != np.dtype(dtype):
        raise FormatError(path, f"member {name!r} has dtype {arr.dtype}, expected {dtype}")
    return arr


def read_header(path: str | Path) -> dict[str, Any]:
    """Read only the JSON header of a recording (fast; used by indexers)."""
    path = Path(path)
    with _open_zip(path) as zf:
        return _header(zf, path)


def _open_zip(path: Path) -> zipfile.ZipFile:
    if not path.exists():
        raise FormatError(path, "file does not exist")
    if path.stat().st_size == 0:
        raise FormatError(path, "file is empty (0 bytes)")
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise FormatError(
            path, f"not a readable recording (truncated or not a {FORMAT_NAME} file: {exc})"
        ) from None


def _header(zf: zipfile.ZipFile, path: Path) -> dict[str, Any]:
    try:
        header = json.loads(_member(zf, path, "header", "uint8").tobytes())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise FormatError(path, "header is not valid JSON") from None
    if header.get("format") != FORMAT_NAME:
        raise FormatError(path, f"not a {FORMAT_NAME} file (format={header.get('format')!r})")
    if header.get("version") not in READ_VERSIONS:
        raise FormatError(
            path,
            f"unknown format version {header.get('version')!r} (this SemioFed reads versions "
            f"{', '.join(map(str, READ_VERSIONS))})",
        )
    return header


def load_recording(path: str | Path) -> Recording:
    """Load and validate a recording; raises :class:`FormatError` naming the file."""
    path = Path(path)
    with _open_zip(path) as zf:
        try:
            header = _header(zf, path)
            step = float(header["quant_step"])
            if header.get("coding") != CODING:
                raise FormatError(
                    path, f"unknown coding {header.get('coding')!r} (expected {CODING!r})"
                )
            n = int(header["n_frames"])
            ts = _member(zf, path, "timestamps", "float64")
            if ts.shape != (n,):
                raise FormatError(path, f"timestamps has shape {ts.shape}, header says {n} frames")
            mask = _member(zf, path, "mask", "uint8")
            if mask.shape != (n, len(STREAMS)):
                raise FormatError(
                    path, f"mask has shape {mask.shape}, expected {(n, len(STREAMS))}"
                )
            present = (mask & DETECTED) > 0
            filled = (mask & FILLED) > 0
            valid = present | filled
            streams = {}
            for i, name in enumerate(STREAMS):
                shape = (-(-n // PER_BYTE), STREAM_POINTS[name] * 3)
                packed = _member(zf, path, name, "uint8", shape)
                escapes = _member(zf, path, f"{name}_escapes", "uint16")
                if escapes.ndim != 1:
                    raise FormatError(path, f"{name}_escapes must be 1-D, got {escapes.shape}")
                flat = _decode(packed, escapes, valid[:, i], step, path, name)
                streams[name] = flat.reshape(n, STREAM_POINTS[name], 3)
            vis = _member(zf, path, "pose_vis", "uint8")
            if vis.shape != (n, N_POSE):
                raise FormatError(path, f"pose_vis has shape {vis.shape}, expected {(n, N_POSE)}")
            pose = np.concatenate(
                [streams["pose"], (vis.astype(np.float32) / 255.0)[..., None]], axis=2
            )
            pose[~valid[:, 0], :, 3] = np.nan
            motion = None
            if "motion.npy" in zf.namelist():
                motion = _member(zf, path, "motion", "float16").astype(np.float32)
            analysed = None
            if "analysed.npy" in zf.namelist():
                analysed = _member(zf, path, "analysed", "uint8", (n,))
        except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError, TypeError) as exc:
            if isinstance(exc, FormatError):
                raise
            raise FormatError(
                path, f"corrupt or truncated recording ({type(exc).__name__}: {exc})"
            ) from None
    rec = Recording(
        timestamps=ts,
        pose=pose,
        face=streams["face"],
        left_hand=streams["left_hand"],
        right_hand=streams["right_hand"],
        present=present,
        fps=float(header["fps"]),
        source_sha256=str(header.get("source_sha256", "")),
        extractor_name=str(header.get("extractor", {}).get("name", "unknown")),
        extractor_version=str(header.get("extractor", {}).get("version", "0")),
        filled=filled,
        motion=motion,
        motion_regions=list(header.get("motion_regions", [])),
        meta=dict(header.get("meta", {})),
        analysed=analysed,
    )
    rec.validate(path)
    return rec


def empty_recording(n_frames: int, fps: float) -> Recording:
    """A recording of ``n_frames`` with nothing detected (all NaN), for builders to fill."""

    def nan(*shape: int) -> np.ndarray:
        return np.full(shape, np.nan, dtype=np.float32)

    return Recording(
        timestamps=np.arange(n_frames, dtype=np.float64) / fps,
        pose=nan(n_frames, N_POSE, 4),
        face=nan(n_frames, N_FACE, 3),
        left_hand=nan(n_frames, N_HAND, 3),
        right_hand=nan(n_frames, N_HAND, 3),
        present=np.zeros((n_frames, len(STREAMS)), dtype=bool),
        fps=fps,
    )
