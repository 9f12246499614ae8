"""What may leave a site: every outgoing Flower reply is checked, then recorded.

Allowed content of a reply is the release inventory of :mod:`semiofed.shared.release`
(one definition, read by the ServerApp too):

* model parameters: exactly the model's trainable parameters, in order, with their shapes
  and dtypes (``fitres.parameters``); under SecAgg+ the masked integer vectors of those
  same shapes (plus the one weight factor SecAgg+ prepends);
* the metrics of :data:`~semiofed.shared.release.METRICS`, each value of its kind (a number,
  the flag 1, a decline code, a privacy unit, the site name, an evaluation table of the
  fixed length), and Flower's status / example-count / loss records with their fixed values;
* the SecAgg+ protocol fields of the current stage (public keys, encrypted key shares,
  node ids, key shares).

Anything else raises :class:`ForbiddenContent` and the reply is not sent (the ClientApp
sends a Flower error whose reason is the code ``forbidden-content``). Every reply that
passes is appended to ``STATE/outbox.jsonl`` (time, message type, SHA-256, byte size, the
record keys, metric names) and, as a ``message_sent`` entry, to the site's signed audit
trail, for the privacy officer.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import RecordDict
from flwr.common import bytes_to_ndarray

from semiofed.shared.errors import SemioFedError
from semiofed.shared.release import (
    EVALUATE_LOSS,
    NUM_EXAMPLES_DECLINED,
    NUM_EXAMPLES_JOINED,
    STATUS_MESSAGES,
    check_value,
)

from . import site_audit

OUTBOX_FILE = "outbox.jsonl"

SECAGG_FIELDS = {"pk1", "pk2", "dsts", "ctxts", "masked_params", "nids", "shares"}
SECAGG_RECORD = "secaggplus_configs"
_FLOWER_RECORDS = {
    "fitres.num_examples": {"num_examples"},
    "evaluateres.num_examples": {"num_examples"},
    "evaluateres.loss": {"loss"},
    "fitres.status": {"code", "message"},
    "evaluateres.status": {"code", "message"},
}
_METRIC_RECORDS = ("fitres.metrics", "evaluateres.metrics")
#: the fixed values of Flower's records (shared/release.py says why)
_FIXED_VALUES = {
    "num_examples": (NUM_EXAMPLES_JOINED, NUM_EXAMPLES_DECLINED),
    "loss": (EVALUATE_LOSS,),
    "message": STATUS_MESSAGES,
}


class ForbiddenContent(SemioFedError):
    """A reply carried something not on the allowlist; it was not sent."""


@dataclass(frozen=True)
class ParamSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str


def param_specs(model: Any) -> list[ParamSpec]:
    """The allowlisted parameters of a torch model (trainable parameters, in order)."""
    return [
        ParamSpec(name, tuple(p.shape), str(p.detach().cpu().numpy().dtype))
        for name, p in model.named_parameters()
        if p.requires_grad
    ]


def _check_metrics(record: Any, where: str) -> None:
    for key, value in record.items():
        problem = check_value(key, value)
        if problem is not None:
            raise ForbiddenContent(f"{where}: metric {key!r} {problem}")


def _check_fixed(record: Any, where: str) -> None:
    for key, value in record.items():
        if key in _FIXED_VALUES and value not in _FIXED_VALUES[key]:
            raise ForbiddenContent(f"{where}: {key!r} is not one of its fixed values")


def _check_arrays(arrays: Sequence[np.ndarray], specs: Sequence[ParamSpec], where: str) -> None:
    if len(arrays) != len(specs):
        raise ForbiddenContent(
            f"{where}: {len(arrays)} arrays, the model has {len(specs)} parameters"
        )
    for arr, spec in zip(arrays, specs, strict=True):
        if tuple(arr.shape) != spec.shape or str(arr.dtype) != spec.dtype:
            raise ForbiddenContent(
                f"{where}: array {tuple(arr.shape)} {arr.dtype} does not match parameter "
                f"{spec.name} {spec.shape} {spec.dtype}"
            )


def check_reply(content: RecordDict, specs: Sequence[ParamSpec]) -> None:
    """Raise :class:`ForbiddenContent` unless every record of ``content`` is allowlisted."""
    for name, record in content.array_records.items():
        if name != "fitres.parameters":
            raise ForbiddenContent(f"array record {name!r} is not on the allowlist")
        if len(record) == 0:  # SecAgg+ clears the plain parameters
            continue
        _check_arrays([a.numpy() for a in record.values()], specs, name)
    for name, record in content.metric_records.items():
        if name not in _FLOWER_RECORDS or set(record) - _FLOWER_RECORDS[name]:
            raise ForbiddenContent(
                f"metric record {name!r} ({sorted(record)}) is not on the allowlist"
            )
        _check_fixed(record, name)
    for name, record in content.config_records.items():
        if name in _METRIC_RECORDS:
            _check_metrics(record, name)
        elif name in _FLOWER_RECORDS:
            if set(record) - _FLOWER_RECORDS[name]:
                raise ForbiddenContent(f"{name}: fields {sorted(record)} are not on the allowlist")
            _check_fixed(record, name)
        elif name == SECAGG_RECORD:
            extra = set(record) - SECAGG_FIELDS
            if extra:
                raise ForbiddenContent(f"{name}: fields {sorted(extra)} are not on the allowlist")
            if "masked_params" in record:
                masked = [bytes_to_ndarray(b) for b in record["masked_params"]]
                # SecAgg+ prepends one weight factor; the rest are the masked parameters
                shapes = [tuple(m.shape) for m in masked[1:]]
                if shapes != [s.shape for s in specs]:
                    raise ForbiddenContent(
                        f"{name}: masked vectors do not match the model's shapes"
                    )
        else:
            raise ForbiddenContent(f"config record {name!r} is not on the allowlist")


def content_digest(content: RecordDict) -> tuple[str, int]:
    """SHA-256 and byte size of the serialized reply content."""
    from flwr.common.serde import recorddict_to_proto

    data = recorddict_to_proto(content).SerializeToString(deterministic=True)
    return hashlib.sha256(data).hexdigest(), len(data)


def record_outgoing(
    state_dir: Path, message_type: str, run_id: int, round_: str, content: RecordDict
) -> dict[str, Any]:
    """Append one line describing an outgoing reply to ``STATE/outbox.jsonl``."""
    digest, size = content_digest(content)
    entry = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "run_id": run_id,
        "round": round_,
        "message_type": message_type,
        "sha256": digest,
        "bytes": size,
        "records": {
            "arrays": {k: len(v) for k, v in content.array_records.items()},
            "metrics": {k: sorted(v) for k, v in content.metric_records.items()},
            "configs": {k: sorted(v) for k, v in content.config_records.items()},
        },
    }
    site_audit.record(
        state_dir,
        "message_sent",
        {
            "hash": digest,
            "size": size,
            "keys": entry["records"],
            "message_type": message_type,
            "round": round_,
        },
    )
    state_dir.mkdir(parents=True, exist_ok=True)
    line = json.dumps(entry, sort_keys=True) + "\n"
    with open(state_dir / OUTBOX_FILE, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())
    return entry
