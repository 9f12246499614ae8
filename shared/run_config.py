"""Federated run configuration: loaded from TOML in ``configs/``, validated with errors that
name the file and the field, and passed around as one frozen :class:`RunConfig`.

Tables (every key optional; every field, its default and its approval status are declared
once, in the table dataclasses below; :data:`FIELDS` lists them)::

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

A TOML key ``min-nodes`` of ``[federation]`` is the attribute ``cfg.federation.min_nodes``.
:meth:`RunConfig.as_dict` is the canonical validated table (what the approval digest, the
configuration digest, the Flower payload and ``run.json`` hold);
:meth:`RunConfig.approval_fields` is what a site's privacy officer approves (the whole
configuration); a site trains only for a configuration whose approval fields match an
approved record.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import functools
import hashlib
import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from .errors import SemioFedError
from .windows import WindowConfig

if TYPE_CHECKING:
    from .model import ModelConfig

STRATEGIES = ("fedavg", "fedprox", "fedtrimmedavg", "fedmedian", "krum", "multikrum")
ROBUST = ("fedtrimmedavg", "fedmedian", "krum", "multikrum")

DEFAULT_LEARNING_RATE = 2e-3  # Adam, as `site train --lr`
DEFAULT_DELTA = 1e-5  # as `site train --delta` and the empirical audits' δ


def _field(default: Any, meaning: str, approved: bool = True) -> Any:
    """A table field: its default, what it sets, and whether the privacy officer's approval
    covers it (part of :meth:`RunConfig.approval_fields`)."""
    return dataclasses.field(default=default, metadata={"meaning": meaning, "approved": approved})


# The tables of the run configuration. Every field is approved: a site trains only for the
# whole configuration its officer approved (changing a timeout needs a new approval too).
@dataclass(frozen=True)
class FederationTable:
    rounds: int = _field(5, "federated rounds")
    strategy: str = _field("fedavg", f"one of {STRATEGIES}")
    min_nodes: int = _field(2, "sites needed to start a round")
    fraction_train: float = _field(1.0, "share of sites asked to train")
    fraction_evaluate: float = _field(1.0, "share of sites asked to evaluate")
    round_timeout: float = _field(120.0, "seconds a round waits for replies")
    seed: int = _field(0, "public seed: initialisation and patient split")


@dataclass(frozen=True)
class StrategyTable:
    proximal_mu: float = _field(0.01, "FedProx proximal term")
    trim_beta: float = _field(0.2, "FedTrimmedAvg trimmed fraction")
    num_malicious: int = _field(0, "Krum/MultiKrum assumed attackers")
    num_keep: int = _field(0, "MultiKrum updates kept")
    server_learning_rate: float = _field(1.0, "server SGD step on the aggregate")
    server_momentum: float = _field(0.0, "server heavy-ball momentum")


@dataclass(frozen=True)
class TrainingTable:
    local_epochs: int = _field(1, "passes over the site's patients a round")
    learning_rate: float = _field(DEFAULT_LEARNING_RATE, "Adam learning rate")
    batch_size: int = _field(8, "expected patients per DP-SGD step")
    val_fraction: float = _field(0.0, "validation patients (no round uses them)")
    test_fraction: float = _field(0.25, "held-out test patients")


@dataclass(frozen=True)
class PrivacyTable:
    unit: str = _field("patient", "privacy unit")
    noise_multiplier: float = _field(1.0, "DP-SGD σ")
    clip_norm: float = _field(1.0, "per-patient clipping bound C")
    delta: float = _field(DEFAULT_DELTA, "δ of every ε reported")
    site_budget: float = _field(10.0, "ε a site may spend in the run")
    accountant: str = _field("rdp", "'rdp' or 'prv'")
    eval_noise_multiplier: float = _field(2.0, "σ of the DP evaluation table")


@dataclass(frozen=True)
class SecAggTable:
    enabled: bool = _field(True, "SecAgg+ on the updates")
    num_shares: int = _field(3, "SecAgg+ shares")
    reconstruction_threshold: int = _field(2, "SecAgg+ threshold")
    clipping_range: float = _field(8.0, "SecAgg+ clipping range")
    quantization_range: int = _field(4194304, "SecAgg+ quantization range")


@dataclass(frozen=True)
class CentralDPTable:
    enabled: bool = _field(False, "server-side DP on the aggregate")
    noise_multiplier: float = _field(0.5, "central DP σ")
    clip_norm: float = _field(5.0, "central DP clipping of a site's update")
    delta: float = _field(DEFAULT_DELTA, "central DP δ")


#: TOML table → its dataclass; ``[window]`` is the windowing's own :class:`WindowConfig`.
TABLES: dict[str, type] = {
    "federation": FederationTable,
    "strategy": StrategyTable,
    "training": TrainingTable,
    "privacy": PrivacyTable,
    "secagg": SecAggTable,
    "central-dp": CentralDPTable,
    "window": WindowConfig,
}
# Tables added after approvals existed: in the canonical configuration (and so in its
# digests) only when the file sets them, so earlier approvals stay valid unchanged.
OPTIONAL_TABLES = ("window",)


@dataclass(frozen=True)
class RunField:
    """One field of the run configuration: its table, key, default, whether the privacy
    officer's approval covers it (part of :meth:`RunConfig.approval_fields`) and what it
    sets."""

    table: str
    key: str
    default: Any
    approved: bool
    meaning: str

    @property
    def attribute(self) -> str:
        return self.key.replace("-", "_")


def _fields_of(table: str, cls: type) -> tuple[RunField, ...]:
    return tuple(
        RunField(
            table,
            f.name.replace("_", "-"),
            f.default,
            f.metadata.get("approved", True),
            f.metadata.get("meaning", f"{cls.__name__}.{f.name}"),
        )
        for f in dataclasses.fields(cls)
    )


#: The one table of the run configuration (every field of every table, in file order).
FIELDS: tuple[RunField, ...] = tuple(f for t, cls in TABLES.items() for f in _fields_of(t, cls))

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


@dataclass(frozen=True)
class RunConfig:
    """A validated run configuration: one frozen table per TOML table (build it with
    :meth:`parse` or :func:`load_run_config`, never by hand: only they validate)."""

    model: Mapping[str, Any]  # the [model] table as written (read-only); see model_config
    federation: FederationTable = field(default_factory=FederationTable)
    strategy: StrategyTable = field(default_factory=StrategyTable)
    training: TrainingTable = field(default_factory=TrainingTable)
    privacy: PrivacyTable = field(default_factory=PrivacyTable)
    secagg: SecAggTable = field(default_factory=SecAggTable)
    central_dp: CentralDPTable = field(default_factory=CentralDPTable)
    window: WindowConfig = field(default_factory=WindowConfig)
    given_optional: tuple[str, ...] = ()  # the OPTIONAL_TABLES the file sets
    source: str = field(default="<run config>", compare=False, repr=False)

    @classmethod
    def parse(cls, raw: Any, source: str = "<run config>") -> RunConfig:
        """Defaults merged in and every field checked (errors name ``source`` and the field)."""
        if not isinstance(raw, dict):
            raise RunConfigError(f"{source}: a run configuration must be a table")
        unknown = sorted(set(raw) - set(DEFAULTS))
        if unknown:
            raise RunConfigError(f"{source}: unknown table(s) {unknown}; known: {sorted(DEFAULTS)}")
        model: dict[str, Any] = {}
        given: dict[str, dict[str, Any]] = {}
        for table, values in raw.items():
            if not isinstance(values, dict):
                raise RunConfigError(f"{source}: [{table}] must be a table")
            if table == "model":
                model = copy.deepcopy(values)
                continue
            for key, value in values.items():
                if key not in DEFAULTS[table]:
                    raise _fail(
                        source, f"{table}.{key}", f"unknown field; known: {sorted(DEFAULTS[table])}"
                    )
                _check_type(source, f"{table}.{key}", value, DEFAULTS[table][key])
                given.setdefault(table, {})[key.replace("-", "_")] = value
        cfg = cls(
            model=MappingProxyType(model),
            **{t.replace("-", "_"): TABLES[t](**v) for t, v in given.items()},
            given_optional=tuple(t for t in OPTIONAL_TABLES if t in given),
            source=source,
        )
        _check(cfg, source)
        return cfg

    def as_dict(self) -> dict[str, Any]:
        """The canonical validated configuration (a new dict): ``[model]`` as written, every
        other table with its defaults, the optional tables only when the file sets them; the
        digests, the approval, the Flower payload and ``run.json`` are computed from it."""
        out: dict[str, Any] = {"model": copy.deepcopy(dict(self.model))}
        for table in TABLES:
            if table not in OPTIONAL_TABLES or table in self.given_optional:
                values = getattr(self, table.replace("-", "_"))
                out[table] = {
                    f.key: getattr(values, f.attribute) for f in FIELDS if f.table == table
                }
        return out

    def updated(self, changes: dict[str, dict[str, Any]], source: str | None = None) -> RunConfig:
        """A new configuration with the fields of ``changes`` (table → fields; ``[model]`` is
        replaced whole), validated again; errors name ``source`` (default: this one's)."""
        raw = self.as_dict()
        for table, values in changes.items():
            raw[table] = dict(values) if table == "model" else {**raw.get(table, {}), **values}
        return RunConfig.parse(raw, self.source if source is None else source)

    @property
    def model_config(self) -> ModelConfig:
        """The ``ModelConfig`` described by ``[model]`` (lists become tuples)."""
        from .model import ModelConfig

        fields = {
            k.replace("-", "_"): tuple(v) if isinstance(v, list) else v
            for k, v in self.model.items()
        }
        try:
            return ModelConfig(**fields)
        except TypeError as exc:
            raise RunConfigError(f"[model]: {exc}") from None

    @property
    def server_optimizer(self) -> bool:
        """Whether the server applies SGD with momentum to the aggregate (not plain averaging)."""
        st = self.strategy
        return st.server_learning_rate != 1.0 or st.server_momentum != 0.0

    def approval_fields(self) -> dict[str, Any]:
        """What a privacy officer approves: the architecture hash and the **whole** validated
        configuration (every field of every table, defaults included), so that changing any
        single field, e.g. a timeout or a SecAgg+ parameter, needs a new approval."""
        from .model import architecture_hash

        return {
            "architecture_hash": architecture_hash(self.model_config),
            "run_config": self.as_dict(),
        }

    def config_digest(self) -> str:
        """sha256 of the whole validated configuration (identifies a run for resumption)."""
        return hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()


def _check(cfg: RunConfig, source: str) -> None:
    """The ranges and the combinations of fields a run needs."""
    fed, strat, tr, priv = cfg.federation, cfg.strategy, cfg.training, cfg.privacy
    sa, cdp, win = cfg.secagg, cfg.central_dp, cfg.window

    def need(cond: bool, field: str, problem: str) -> None:
        if not cond:
            raise _fail(source, field, problem)

    need(fed.rounds >= 1, "federation.rounds", "must be >= 1")
    need(fed.strategy in STRATEGIES, "federation.strategy", f"must be one of {STRATEGIES}")
    need(fed.min_nodes >= 1, "federation.min-nodes", "must be >= 1")
    need(0 < fed.fraction_train <= 1, "federation.fraction-train", "must be in (0, 1]")
    need(0 < fed.fraction_evaluate <= 1, "federation.fraction-evaluate", "must be in (0, 1]")
    need(fed.round_timeout > 0, "federation.round-timeout", "must be > 0 seconds")
    need(strat.proximal_mu >= 0, "strategy.proximal-mu", "must be >= 0")
    need(0 <= strat.trim_beta < 0.5, "strategy.trim-beta", "must be in [0, 0.5)")
    need(strat.num_malicious >= 0, "strategy.num-malicious", "must be >= 0")
    need(strat.num_keep >= 0, "strategy.num-keep", "must be >= 0")
    need(strat.server_learning_rate > 0, "strategy.server-learning-rate", "must be > 0")
    need(0 <= strat.server_momentum < 1, "strategy.server-momentum", "must be in [0, 1)")
    need(tr.local_epochs >= 1, "training.local-epochs", "must be >= 1")
    need(tr.learning_rate > 0, "training.learning-rate", "must be > 0")
    need(tr.batch_size >= 1, "training.batch-size", "must be >= 1")
    need(0 < tr.test_fraction < 1, "training.test-fraction", "must be in (0, 1)")
    need(0 <= tr.val_fraction < 1, "training.val-fraction", "must be in [0, 1)")
    need(priv.unit in ("patient", "window"), "privacy.unit", "must be 'patient' or 'window'")
    need(priv.noise_multiplier > 0, "privacy.noise-multiplier", "must be > 0 (DP is required)")
    need(priv.clip_norm > 0, "privacy.clip-norm", "must be > 0")
    need(0 < priv.delta < 1, "privacy.delta", "must be in (0, 1)")
    need(priv.site_budget > 0, "privacy.site-budget", "must be > 0")
    need(priv.accountant in ("rdp", "prv"), "privacy.accountant", "must be 'rdp' or 'prv'")
    need(priv.eval_noise_multiplier > 0, "privacy.eval-noise-multiplier", "must be > 0")
    need(win.seconds > 0, "window.seconds", "must be > 0")
    need(win.fps > 0, "window.fps", "must be > 0")
    need(win.hop > 0, "window.hop", "must be > 0")
    need(win.reference_seconds > 0, "window.reference-seconds", "must be > 0")
    need(0 < win.min_event_coverage <= 1, "window.min-event-coverage", "must be in (0, 1]")
    need(win.max_gap_frames >= 0, "window.max-gap-frames", "must be >= 0")
    if sa.enabled:
        need(
            fed.strategy not in ROBUST,
            "federation.strategy",
            f"{fed.strategy!r} needs every site's individual update, which secure "
            "aggregation hides (the server only learns the sum); use fedavg or fedprox with "
            "[secagg] enabled = true, or set [secagg] enabled = false",
        )
        need(fed.min_nodes >= 2, "federation.min-nodes", "secure aggregation needs >= 2 sites")
        need(sa.num_shares >= 3, "secagg.num-shares", "must be >= 3")
        need(
            2 <= sa.reconstruction_threshold < sa.num_shares,
            "secagg.reconstruction-threshold",
            "must be >= 2 and < num-shares",
        )
        need(sa.clipping_range > 0, "secagg.clipping-range", "must be > 0")
        need(sa.quantization_range > 1, "secagg.quantization-range", "must be > 1")
    if cdp.enabled:
        need(cdp.noise_multiplier > 0, "central-dp.noise-multiplier", "must be > 0")
        need(cdp.clip_norm > 0, "central-dp.clip-norm", "must be > 0")
        need(0 < cdp.delta < 1, "central-dp.delta", "must be in (0, 1)")
        need(
            fed.fraction_train == 1.0,
            "federation.fraction-train",
            "must be 1 with central DP (its ε is accounted with every site in every round)",
        )
    if fed.strategy in ("krum", "multikrum"):
        need(
            fed.min_nodes >= 2 * strat.num_malicious + 3,
            "federation.min-nodes",
            "Krum needs min-nodes >= 2 * num-malicious + 3",
        )


def load_run_config(path: str | Path) -> RunConfig:
    """Read and validate a TOML run configuration."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RunConfigError(f"{path}: cannot read run configuration ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise RunConfigError(f"{path}: not valid TOML ({exc})") from None
    return RunConfig.parse(raw, str(path))


PAYLOAD_KEY = "semiofed"


@dataclass(frozen=True)
class RunPayload:
    """What a run carries in its Flower run config: the configuration and the submitter's
    ``extra`` values (``out_dir``, ``run_name``, ``data``, ``sim_root``, ``sim_data_sites``)."""

    config: RunConfig
    extra: Mapping[str, Any]


def encode_payload(cfg: RunConfig, **extra: Any) -> str:
    """The run configuration (plus ``extra`` such as ``out_dir``) as one Flower run-config
    value: base64 of compact JSON (Flower's ``--run-config`` parser splits on spaces)."""
    doc = {"config": cfg.as_dict(), **extra}
    return base64.urlsafe_b64encode(json.dumps(doc, separators=(",", ":")).encode()).decode()


@functools.lru_cache(maxsize=8)
def decode_payload(value: str, source: str = "Flower run config") -> RunPayload:
    """Inverse of :func:`encode_payload`, the configuration validated; decoded once per
    payload in a process (a message's mods and handler share the one result)."""
    try:
        doc = json.loads(base64.urlsafe_b64decode(value.encode()).decode())
    except (ValueError, UnicodeDecodeError) as exc:
        raise RunConfigError(
            f"{source}: '{PAYLOAD_KEY}' is not a SemioFed run payload ({exc})"
        ) from None
    if not isinstance(doc, dict) or "config" not in doc:
        raise RunConfigError(f"{source}: '{PAYLOAD_KEY}' has no 'config'")
    extra = {k: v for k, v in doc.items() if k != "config"}
    return RunPayload(RunConfig.parse(doc["config"], source), MappingProxyType(extra))


def payload_of(run_config: Any) -> RunPayload:
    """The SemioFed payload of a Flower run config."""
    value = run_config.get(PAYLOAD_KEY) if run_config else None
    if not value:
        raise RunConfigError(
            f"the run carries no '{PAYLOAD_KEY}' payload; submit runs with `semiofed server run`"
        )
    return decode_payload(str(value))
