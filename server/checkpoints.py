"""Round checkpoints and the final run directory.

``OUT/checkpoint/params.safetensors`` + ``OUT/checkpoint/state.json`` are replaced atomically
after every round (parameters first, then the state that names them), so a restarted
ServerApp resumes after the last completed round. A checkpoint is only resumed by a run
with the same configuration digest.

Run directory (what ``semiofed registry publish RUN_DIR`` reads)::

    RUN_DIR/model.safetensors   the model folder (``shared/model_folder.py``): weights,
    RUN_DIR/model_config.json   model and window configuration, architecture hash, pretraining
    RUN_DIR/run.json            the run record (``shared/run_record.py``): run config, rounds,
                                participating sites, per-site ε/δ/privacy unit over rounds,
                                federated metrics per round, central DP
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from semiofed.shared.atomic import atomic_path, atomic_write_json
from semiofed.shared.errors import FormatError, SemioFedError
from semiofed.shared.run_record import RunRecord, write_run_record

CHECKPOINT_DIR = "checkpoint"


def save_checkpoint(
    out_dir: Path, server_round: int, arrays: list[np.ndarray], state: dict[str, Any]
) -> None:
    folder = out_dir / CHECKPOINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    name = f"params-{server_round:04d}.safetensors"
    with atomic_path(folder / name) as tmp:
        save_file({f"p{i:04d}": np.ascontiguousarray(a) for i, a in enumerate(arrays)}, str(tmp))
    atomic_write_json(folder / "state.json", {**state, "round": server_round, "params": name})
    for old in folder.glob("params-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)


def load_checkpoint(
    out_dir: Path, digest: str
) -> tuple[int, list[np.ndarray], dict[str, Any]] | None:
    """(last completed round, parameters, saved state), or None without a checkpoint."""
    folder = out_dir / CHECKPOINT_DIR
    state_path = folder / "state.json"
    if not state_path.exists():
        return None
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
        tensors = load_file(str(folder / state["params"]))
    except (OSError, ValueError, KeyError) as exc:
        raise FormatError(state_path, f"unreadable checkpoint ({exc})") from None
    if state.get("config_digest") != digest:
        raise SemioFedError(
            f"{state_path}: checkpoint of another run configuration; use a new --out "
            "directory or remove the checkpoint to start over"
        )
    arrays = [tensors[k] for k in sorted(tensors)]
    return int(state["round"]), arrays, state


def write_run_dir(
    run_dir: Path, model: Any, model_cfg: Any, window_cfg: Any, run: RunRecord
) -> None:
    """The model folder (``shared/model_folder.py``, so a published model serves ``site
    analyze``) and the run record (``shared/run_record.py``)."""
    from semiofed.shared.model_folder import write_model_folder

    write_model_folder(run_dir, model, model_cfg, window_cfg)
    write_run_record(run_dir, run)
