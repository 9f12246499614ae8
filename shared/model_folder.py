"""The model folder: the one reader and writer of a trained model on disk.

``site train`` and the ServerApp's run directory write it, ``site analyze``/``calibrate``, the
demo's calibration and comparison and the registry's model card read it::

    FOLDER/model.safetensors   the model's state_dict (no pickle; metadata: architecture_hash)
    FOLDER/model_config.json   {"model": ModelConfig fields, "window": WindowConfig fields,
                                "architecture_hash": …, "pretraining": the public round-0
                                weights' statement or null}

A folder ``site pull`` installs holds the same two files (its configuration is the signed
card's ``model.architecture``). Each file is written atomically. Importing this module
does not load torch (the registry and ``site pull`` use only the file names).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .atomic import atomic_path, atomic_write_json
from .errors import FormatError, SemioFedError

if TYPE_CHECKING:
    import torch

    from .model import ModelConfig, SemioNet
    from .windows import WindowConfig

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "model_config.json"


def config_document(mcfg: ModelConfig, wcfg: WindowConfig) -> dict[str, Any]:
    """What ``model_config.json`` holds for a model of ``mcfg`` on windows of ``wcfg``."""
    from .model import architecture_hash, pretraining_statement

    return {
        "model": dataclasses.asdict(mcfg),
        "window": dataclasses.asdict(wcfg),
        "architecture_hash": architecture_hash(mcfg),
        "pretraining": pretraining_statement(mcfg),
    }


def write_model_folder(
    folder: Path, model: torch.nn.Module, mcfg: ModelConfig, wcfg: WindowConfig
) -> None:
    """Write ``model``'s weights and its configuration into ``folder`` (created if needed)."""
    from safetensors.torch import save_file

    from .model import architecture_hash

    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(folder / WEIGHTS_FILE) as tmp:
        save_file(tensors, str(tmp), metadata={"architecture_hash": architecture_hash(mcfg)})
    atomic_write_json(folder / CONFIG_FILE, config_document(mcfg, wcfg))


def _config_from(cls: type, d: dict[str, Any]) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names})


def read_model_config(folder: Path) -> tuple[ModelConfig, WindowConfig, dict[str, Any]]:
    """The model and window configuration of ``folder`` and the raw document."""
    from .model import ModelConfig
    from .windows import WindowConfig

    path = folder / CONFIG_FILE
    if not path.is_file():
        raise SemioFedError(f"{folder}: not a model folder ({CONFIG_FILE} missing)")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise FormatError(path, f"not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise FormatError(path, "must hold a JSON object")
    try:
        mcfg = _config_from(ModelConfig, doc.get("model", doc))
        wcfg = _config_from(WindowConfig, doc.get("window", {}))
    except (TypeError, ValueError) as exc:
        raise FormatError(path, f"not a model configuration ({exc})") from None
    return mcfg, wcfg, doc


def load_weights(folder: Path, model: torch.nn.Module) -> None:
    """Load ``folder``'s weights into ``model``; a one-line error if they do not fit it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = folder / WEIGHTS_FILE
    if not path.is_file():
        raise SemioFedError(f"{folder}: not a model folder ({WEIGHTS_FILE} missing)")
    try:
        model.load_state_dict(load_file(str(path)))
    except (RuntimeError, OSError, SafetensorError) as exc:
        raise FormatError(path, f"weights do not fit {CONFIG_FILE} ({exc})") from None


def load_model_folder(
    folder: str | Path, device: str = "auto"
) -> tuple[SemioNet, WindowConfig, dict[str, Any]]:
    """SemioNet (in eval mode, on ``device``), its window config and the raw config document."""
    from .model import SemioNet, resolve_device

    folder = Path(folder)
    mcfg, wcfg, doc = read_model_config(folder)
    dev = resolve_device(device)
    model = SemioNet(mcfg)
    load_weights(folder, model)
    return model.to(dev).eval(), wcfg, doc
