"""``semiofed site extract``: videos → keypoint recordings (parser and handler)."""

from __future__ import annotations

import argparse
from pathlib import Path

from semiofed.shared.cli_paths import out_folder
from semiofed.shared.errors import SemioFedError

EPILOG = """\
outputs (in --out):
  <name>_keypoints.npz   keypoints of body, face and hands (SemioFed recording format; v2
                         marks the frames the motion gate did not analyse, v1 with --gate off)
  <name>_quality.json    frames read/decoded/dropped/analysed, detection rate per stream,
                         visibility, the gate's frame counts
  <name>_preview.mp4     with --preview: skeleton on a blank background (no video pixels)
  manifest.json          every input of the run: ok / skipped / truncated / failed, error,
                         sha256, output, warning (e.g. nothing detected); and every folder
                         entry not processed (status ignored) with why: a dangling link, a
                         link loop, a FIFO, a device, a file without a video file name

Re-running the same command skips videos already done (same content hash and settings) and
redoes interrupted ones. Exit code 1 when any input failed or was truncated (the keypoints of
a truncated video's readable part are kept); the others are still processed.
Only keypoints are written: no frame of the video ever leaves this command.

examples:
  semiofed site extract /data/videos --out /data/keypoints
  semiofed site extract bed3.mp4 --out kp --roi 120,40,400,420 --preview --motion
"""


def register(cmds: argparse._SubParsersAction) -> None:
    from .extract.settings import BACKENDS, DEFAULT_FPS, DEVICES, KEEPALIVE_FPS, default_workers

    p = cmds.add_parser(
        "extract",
        help="extract keypoint recordings (body, face, hands) from videos",
        description=(
            "Extract MediaPipe keypoints of body, face and hands from seizure videos, locally. "
            "Each video becomes one keypoint recording plus a quality summary."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="video files, or folders (every video under them)",
    )
    p.add_argument("--out", required=True, type=out_folder, metavar="DIR", help="output folder")
    p.add_argument(
        "--workers",
        type=int,
        default=default_workers(),
        metavar="N",
        help="worker processes over videos and chunks of long videos (default: %(default)s, the CPU count)",
    )
    p.add_argument(
        "--fps",
        type=float,
        default=DEFAULT_FPS,
        metavar="F",
        help="frames analysed per second of video (default: %(default)s; more is slower)",
    )
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="holistic",
        help="holistic: MediaPipe Holistic, models ship with MediaPipe (default); "
        "tasks: MediaPipe Tasks landmarkers from .task files in --model-dir",
    )
    p.add_argument(
        "--model-dir",
        type=Path,
        metavar="DIR",
        help="folder with pose_landmarker_*.task, face_landmarker.task, hand_landmarker.task (tasks backend)",
    )
    p.add_argument(
        "--roi",
        metavar="X,Y,W,H",
        help="analyse only this rectangle (pixels), e.g. the bed; default: found from the first confident pose",
    )
    p.add_argument(
        "--device",
        choices=DEVICES,
        default="auto",
        help="auto/gpu: GPU delegate where the backend supports it, else CPU with a message (default: auto)",
    )
    p.add_argument(
        "--preview", action="store_true", help="also write a de-identified skeleton preview video"
    )
    p.add_argument(
        "--motion",
        action="store_true",
        help="also compute optical-flow motion energy per body region",
    )
    p.add_argument(
        "--gate",
        choices=("on", "off"),
        default="on",
        help="on: motion gate, still stretches analysed at --keepalive-fps only and bridged "
        "(default); off: analyse every sampled frame",
    )
    p.add_argument(
        "--keepalive-fps",
        type=float,
        default=KEEPALIVE_FPS,
        metavar="F",
        help="frames analysed per second while the gate is closed (default: %(default)s)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .extract.backends import BackendSpec
    from .extract.gate import GateSettings
    from .extract.pipeline import ExtractOptions, extract
    from .extract.roi import parse_roi
    from .extract.video import NOT_A_VIDEO

    if args.workers < 1:
        raise SemioFedError(f"--workers must be at least 1, got {args.workers}")
    if not args.fps > 0:
        raise SemioFedError(f"--fps must be positive, got {args.fps}")
    if not 0 < args.keepalive_fps <= args.fps:
        raise SemioFedError(
            f"--keepalive-fps must be positive and at most --fps, got {args.keepalive_fps}"
        )
    if args.model_dir is not None and args.backend != "tasks":
        raise SemioFedError("--model-dir is only used by --backend tasks")
    opts = ExtractOptions(
        out=args.out,
        workers=args.workers,
        fps=args.fps,
        backend=BackendSpec(args.backend, args.model_dir, args.device),
        roi=parse_roi(args.roi) if args.roi else None,
        preview=args.preview,
        motion=args.motion,
        progress=not args.no_progress,
        gate=GateSettings(keepalive_fps=args.keepalive_fps) if args.gate == "on" else None,
    )
    report = extract(args.inputs, opts)
    print(
        f"{report.count('ok')} extracted, {report.count('skipped')} already done, "
        f"{report.count('truncated')} truncated, {report.count('failed')} failed; "
        f"manifest: {report.manifest}"
    )
    for entry in report.failed:
        print(f"  {entry['status']}: {entry['input']}: {entry['error']}")
    for entry in report.entries:
        if entry.get("warning"):
            print(f"  warning: {entry['input']}: {entry['warning']}")
    ignored = [e for e in report.entries if e["status"] == "ignored"]
    others = [e for e in ignored if e["error"] == NOT_A_VIDEO]
    for entry in ignored:
        if entry["error"] != NOT_A_VIDEO:
            print(f"  ignored: {entry['input']}: {entry['error']}")
    if others:
        print(
            f"  ignored: {len(others)} other file(s) without a video file name (see the manifest)"
        )
    return 1 if report.failed else 0
