"""Federated run configuration: loaded from TOML in ``configs/``, validated with errors that
name the file and the field.

Tables (every key optional; every field, its default and its approval status are in
:data:`FIELDS`)::

    [federation]  rounds, strategy, min-nodes, fraction-train, fraction-evaluate,
                  round-timeout, seed
    [strategy]    proximal-mu (fedprox), trim-beta (fedtrimmedavg),
                  num-malicious (krum/multikrum), num-keep (multikrum),
                  server-learning-rate, server-momentum (any strategy: server-side SGD with
                  momentum on the aggregate, server/strategies.py)
    [training]    local-epochs, learning-rate (2e-3, as ``site train --lr``), batch-size,
                  val-fraction, test-fraction
    [model]       fields of semiofed.shared.model.ModelConfig (lists for tuples)
    [window]      fields of semiofed.shared.windows.WindowConfig, hyphenated (seconds, fps,
                  hop, min-event-coverage, rotate, reference-seconds, max-gap-frames)
    [privacy]     unit ("patient"), noise-multiplier, clip-norm, delta (1e-5, as
                  ``site train --delta``), site-budget, accountant ("rdp" | "prv"),
                  eval-noise-multiplier (σ of the DP evaluation table, client/dp_evaluation.py)
    [secagg]      enabled, num-shares, reconstruction-threshold, clipping-range,
                  quantization-range
    [central-dp]  enabled, noise-multiplier, clip-norm, delta

:func:`approval_fields` is what a site's privacy officer approves (the whole configuration);
a site trains only for a configuration whose approval fields match an approved record.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import SemioFedError

STRATEGIES = ("fedavg", "fedprox", "fedtrimmedavg", "fedmedian", "krum", "multikrum")
ROBUST = ("fedtrimmedavg", "fedmedian", "krum", "multikrum")

DEFAULT_LEARNING_RATE = 2e-3  # Adam, as `site train --lr`
DEFAULT_DELTA = 1e-5  # as `site train --delta` and `audit init-ledger --delta`


@dataclass(frozen=True)
class RunField:
    """One field of the run configuration: its table, key, default, whether the privacy
    officer's approval covers it (part of :func:`approval_fields`) and what it sets."""

    table: str
    key: str
    default: Any
    approved: bool
    meaning: str


def _window_fields() -> tuple[RunField, ...]:
    from .windows import WindowConfig

    return tuple(
        RunField("window", f.name.replace("_", "-"), f.default, True, "WindowConfig." + f.name)
        for f in dataclasses.fields(WindowConfig)
    )


# The one table of the run configuration. Every field is approved: a site trains only for the
# whole configuration its officer approved (changing a timeout needs a new approval too).
FIELDS: tuple[RunField, ...] = (
    RunField("federation", "rounds", 5, True, "federated rounds"),
    RunField("federation", "strategy", "fedavg", True, f"one of {STRATEGIES}"),
    RunField("federation", "min-nodes", 2, True, "sites needed to start a round"),
    RunField("federation", "fraction-train", 1.0, True, "share of sites asked to train"),
    RunField("federation", "fraction-evaluate", 1.0, True, "share of sites asked to evaluate"),
    RunField("federation", "round-timeout", 120.0, True, "seconds a round waits for replies"),
    RunField("federation", "seed", 0, True, "public seed: initialisation and patient split"),
    RunField("strategy", "proximal-mu", 0.01, True, "FedProx proximal term"),
    RunField("strategy", "trim-beta", 0.2, True, "FedTrimmedAvg trimmed fraction"),
    RunField("strategy", "num-malicious", 0, True, "Krum/MultiKrum assumed attackers"),
    RunField("strategy", "num-keep", 0, True, "MultiKrum updates kept"),
    RunField("strategy", "server-learning-rate", 1.0, True, "server SGD step on the aggregate"),
    RunField("strategy", "server-momentum", 0.0, True, "server heavy-ball momentum"),
    RunField("training", "local-epochs", 1, True, "passes over the site's patients a round"),
    RunField("training", "learning-rate", DEFAULT_LEARNING_RATE, True, "Adam learning rate"),
    RunField("training", "batch-size", 8, True, "expected patients per DP-SGD step"),
    RunField("training", "val-fraction", 0.0, True, "validation patients (no round uses them)"),
    RunField("training", "test-fraction", 0.25, True, "held-out test patients"),
    RunField("privacy", "unit", "patient", True, "privacy unit"),
    RunField("privacy", "noise-multiplier", 1.0, True, "DP-SGD σ"),
    RunField("privacy", "clip-norm", 1.0, True, "per-patient clipping bound C"),
    RunField("privacy", "delta", DEFAULT_DELTA, True, "δ of every ε reported"),
    RunField("privacy", "site-budget", 10.0, True, "ε a site may spend in the run"),
    RunField("privacy", "accountant", "rdp", True, "'rdp' or 'prv'"),
    RunField("privacy", "eval-noise-multiplier", 2.0, True, "σ of the DP evaluation table"),
    RunField("secagg", "enabled", True, True, "SecAgg+ on the updates"),
    RunField("secagg", "num-shares", 3, True, "SecAgg+ shares"),
    RunField("secagg", "reconstruction-threshold", 2, True, "SecAgg+ threshold"),
    RunField("secagg", "clipping-range", 8.0, True, "SecAgg+ clipping range"),
    RunField("secagg", "quantization-range", 4194304, True, "SecAgg+ quantization range"),
    RunField("central-dp", "enabled", False, True, "server-side DP on the aggregate"),
    RunField("central-dp", "noise-multiplier", 0.5, True, "central DP σ"),
    RunField("central-dp", "clip-norm", 5.0, True, "central DP clipping of a site's update"),
    RunField("central-dp", "delta", DEFAULT_DELTA, True, "central DP δ"),
    *_window_fields(),
)
# Tables added after approvals existed: in the validated configuration (and so in its
# digests) only when the file sets them, so earlier approvals stay valid unchanged.
OPTIONAL_TABLES = ("window",)

DEFAULTS: dict[str, dict[str, Any]] = {"model": {}}
for _f in FIELDS:
    DEFAULTS.setdefault(_f.table, {})[_f.key] = _f.default

_NUMBER = (int, float)


class RunConfigError(SemioFedError):
    """A run configuration field is missing, unknown or out of range."""


def _fail(source: str, field: str, problem: str) -> RunConfigError:
    return RunConfigError(f"{source}: [{field.split('.')[0]}] {field.split('.', 1)[-1]}: {problem}")


def _check_type(source: str, field: str, value: Any, default: Any) -> None:
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, _NUMBER):
        ok = isinstance(value, _NUMBER) and not isinstance(value, bool)
        if ok and isinstance(default, int) and not isinstance(value, int):
            raise _fail(source, field, f"must be an integer, got {value!r}")
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise _fail(source, field, f"must be {type(default).__name__}, got {value!r}")


def validate(raw: dict[str, Any], source: str = "<run config>") -> dict[str, Any]:
    """Defaults merged in and every field checked; returns a new dict."""
    if not isinstance(raw, dict):
        raise RunConfigError(f"{source}: a run configuration must be a table")
    unknown = sorted(set(raw) - set(DEFAULTS))
    if unknown:
        raise RunConfigError(f"{source}: unknown table(s) {unknown}; known: {sorted(DEFAULTS)}")
    cfg = {t: v for t, v in copy.deepcopy(DEFAULTS).items() if t not in OPTIONAL_TABLES}
    for table, values in raw.items():
        if not isinstance(values, dict):
            raise RunConfigError(f"{source}: [{table}] must be a table")
        if table == "model":
            cfg["model"] = dict(values)
            continue
        for key, value in values.items():
            if key not in DEFAULTS[table]:
                raise _fail(
                    source, f"{table}.{key}", f"unknown field; known: {sorted(DEFAULTS[table])}"
                )
            _check_type(source, f"{table}.{key}", value, DEFAULTS[table][key])
            cfg.setdefault(table, dict(DEFAULTS[table]))[key] = value
    fed, strat, tr, priv = cfg["federation"], cfg["strategy"], cfg["training"], cfg["privacy"]
    sa, cdp = cfg["secagg"], cfg["central-dp"]

    def need(cond: bool, field: str, problem: str) -> None:
        if not cond:
            raise _fail(source, field, problem)

    need(fed["rounds"] >= 1, "federation.rounds", "must be >= 1")
    need(fed["strategy"] in STRATEGIES, "federation.strategy", f"must be one of {STRATEGIES}")
    need(fed["min-nodes"] >= 1, "federation.min-nodes", "must be >= 1")
    for f in ("fraction-train", "fraction-evaluate"):
        need(0 < fed[f] <= 1, f"federation.{f}", "must be in (0, 1]")
    need(fed["round-timeout"] > 0, "federation.round-timeout", "must be > 0 seconds")
    need(strat["proximal-mu"] >= 0, "strategy.proximal-mu", "must be >= 0")
    need(0 <= strat["trim-beta"] < 0.5, "strategy.trim-beta", "must be in [0, 0.5)")
    need(strat["num-malicious"] >= 0, "strategy.num-malicious", "must be >= 0")
    need(strat["num-keep"] >= 0, "strategy.num-keep", "must be >= 0")
    need(strat["server-learning-rate"] > 0, "strategy.server-learning-rate", "must be > 0")
    need(0 <= strat["server-momentum"] < 1, "strategy.server-momentum", "must be in [0, 1)")
    need(tr["local-epochs"] >= 1, "training.local-epochs", "must be >= 1")
    need(tr["learning-rate"] > 0, "training.learning-rate", "must be > 0")
    need(tr["batch-size"] >= 1, "training.batch-size", "must be >= 1")
    need(0 < tr["test-fraction"] < 1, "training.test-fraction", "must be in (0, 1)")
    need(0 <= tr["val-fraction"] < 1, "training.val-fraction", "must be in [0, 1)")
    need(priv["unit"] in ("patient", "window"), "privacy.unit", "must be 'patient' or 'window'")
    need(priv["noise-multiplier"] > 0, "privacy.noise-multiplier", "must be > 0 (DP is required)")
    need(priv["clip-norm"] > 0, "privacy.clip-norm", "must be > 0")
    need(0 < priv["delta"] < 1, "privacy.delta", "must be in (0, 1)")
    need(priv["site-budget"] > 0, "privacy.site-budget", "must be > 0")
    need(priv["accountant"] in ("rdp", "prv"), "privacy.accountant", "must be 'rdp' or 'prv'")
    need(priv["eval-noise-multiplier"] > 0, "privacy.eval-noise-multiplier", "must be > 0")
    win = {**DEFAULTS["window"], **cfg.get("window", {})}
    for key in ("seconds", "fps", "hop", "reference-seconds"):
        need(win[key] > 0, f"window.{key}", "must be > 0")
    need(0 < win["min-event-coverage"] <= 1, "window.min-event-coverage", "must be in (0, 1]")
    need(win["max-gap-frames"] >= 0, "window.max-gap-frames", "must be >= 0")
    if sa["enabled"]:
        need(
            fed["strategy"] not in ROBUST,
            "federation.strategy",
            f"{fed['strategy']!r} needs every site's individual update, which secure "
            "aggregation hides (the server only learns the sum); use fedavg or fedprox with "
            "[secagg] enabled = true, or set [secagg] enabled = false",
        )
        need(fed["min-nodes"] >= 2, "federation.min-nodes", "secure aggregation needs >= 2 sites")
        need(sa["num-shares"] >= 3, "secagg.num-shares", "must be >= 3")
        need(
            2 <= sa["reconstruction-threshold"] < sa["num-shares"],
            "secagg.reconstruction-threshold",
            "must be >= 2 and < num-shares",
        )
        need(sa["clipping-range"] > 0, "secagg.clipping-range", "must be > 0")
        need(sa["quantization-range"] > 1, "secagg.quantization-range", "must be > 1")
    if cdp["enabled"]:
        need(cdp["noise-multiplier"] > 0, "central-dp.noise-multiplier", "must be > 0")
        need(cdp["clip-norm"] > 0, "central-dp.clip-norm", "must be > 0")
        need(0 < cdp["delta"] < 1, "central-dp.delta", "must be in (0, 1)")
        need(
            fed["fraction-train"] == 1.0,
            "federation.fraction-train",
            "must be 1 with central DP (its ε is accounted with every site in every round)",
        )
    if fed["strategy"] in ("krum", "multikrum"):
        need(
            fed["min-nodes"] >= 2 * strat["num-malicious"] + 3,
            "federation.min-nodes",
            "Krum needs min-nodes >= 2 * num-malicious + 3",
        )
    return cfg


def load_run_config(path: str | Path) -> dict[str, Any]:
    """Read and validate a TOML run configuration."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RunConfigError(f"{path}: cannot read run configuration ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise RunConfigError(f"{path}: not valid TOML ({exc})") from None
    return validate(raw, str(path))


def model_config(cfg: dict[str, Any]) -> Any:
    """The ``ModelConfig`` described by ``[model]`` (lists become tuples)."""
    from .model import ModelConfig

    fields = {
        k.replace("-", "_"): tuple(v) if isinstance(v, list) else v for k, v in cfg["model"].items()
    }
    try:
        return ModelConfig(**fields)
    except TypeError as exc:
        raise RunConfigError(f"[model]: {exc}") from None


def window_config(cfg: dict[str, Any]) -> Any:
    """The ``WindowConfig`` of ``[window]`` (defaults for the fields it does not set)."""
    from .windows import WindowConfig

    win = {**DEFAULTS["window"], **cfg.get("window", {})}
    return WindowConfig(**{k.replace("-", "_"): v for k, v in win.items()})


def server_optimizer(cfg: dict[str, Any]) -> bool:
    """Whether the server applies SGD with momentum to the aggregate (not plain averaging)."""
    st = cfg["strategy"]
    return st["server-learning-rate"] != 1.0 or st["server-momentum"] != 0.0


def approval_fields(cfg: dict[str, Any]) -> dict[str, Any]:
    """What a privacy officer approves: the architecture hash and the **whole** validated
    configuration (every field of every table, defaults included), so that changing any
    single field, e.g. a timeout or a SecAgg+ parameter, needs a new approval."""
    from .model import architecture_hash

    return {
        "architecture_hash": architecture_hash(model_config(cfg)),
        "run_config": copy.deepcopy(cfg),
    }


def config_digest(cfg: dict[str, Any]) -> str:
    """sha256 of the whole validated configuration (identifies a run for resumption)."""
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()


PAYLOAD_KEY = "semiofed"


def encode_payload(cfg: dict[str, Any], **extra: Any) -> str:
    """The run configuration (plus ``extra`` such as ``out_dir``) as one Flower run-config
    value: base64 of compact JSON (Flower's ``--run-config`` parser splits on spaces)."""
    import base64

    doc = {"config": cfg, **extra}
    return base64.urlsafe_b64encode(json.dumps(doc, separators=(",", ":")).encode()).decode()


def decode_payload(value: str, source: str = "Flower run config") -> dict[str, Any]:
    """Inverse of :func:`encode_payload`; the configuration is validated again."""
    import base64

    try:
        doc = json.loads(base64.urlsafe_b64decode(value.encode()).decode())
    except (ValueError, UnicodeDecodeError) as exc:
        raise RunConfigError(
            f"{source}: '{PAYLOAD_KEY}' is not a SemioFed run payload ({exc})"
        ) from None
    if not isinstance(doc, dict) or "config" not in doc:
        raise RunConfigError(f"{source}: '{PAYLOAD_KEY}' has no 'config'")
    doc["config"] = validate(doc["config"], source)
    return doc


def payload_of(run_config: Any) -> dict[str, Any]:
    """The SemioFed payload of a Flower run config."""
    value = run_config.get(PAYLOAD_KEY) if run_config else None
    if not value:
        raise RunConfigError(
            f"the run carries no '{PAYLOAD_KEY}' payload; submit runs with `semiofed server run`"
        )
    return decode_payload(str(value))
