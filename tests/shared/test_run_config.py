"""The typed run configuration: its canonical table and digests are those of the dict-based
configuration it replaced (approvals and checkpoints made before stay valid), and a run's
payload is decoded once per process."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from semiofed.shared.model import architecture_hash
from semiofed.shared.run_config import (
    DEFAULTS,
    OPTIONAL_TABLES,
    RunConfig,
    RunConfigError,
    encode_payload,
    load_run_config,
    payload_of,
)

ROOT = Path(__file__).resolve().parents[2]

# As a file may state it: [model] as written, an integer for a float field, a [window].
KNOWN = {
    "model": {"embed-dim": 16, "channels": [8]},
    "federation": {"round-timeout": 30, "rounds": 3},
    "window": {"seconds": 4, "hop": 0.5, "rotate": False},
    "privacy": {"delta": 1e-3},
}
# config_digest of KNOWN with and without [window], computed by the dict-based
# `validate` + `config_digest` of main before RunConfig existed (commit 3bc5e2b).
KNOWN_DIGEST = "8134f656441f83a5f85ceb57170c48da5ffeaf0efe3768e30b20e38f6a523c20"
KNOWN_DIGEST_NO_WINDOW = "e4f9e1382d01c98b573471acf4d9b2357f1bec47256743d74a1221925c279afa"


def _canonical(raw: dict) -> dict:
    """The canonical table by its definition: [model] as written, every other table's
    defaults overridden by the file, an optional table only when the file sets a field."""
    out = {"model": raw.get("model", {})}
    for table, defaults in DEFAULTS.items():
        if table != "model" and (table not in OPTIONAL_TABLES or raw.get(table)):
            out[table] = {**defaults, **raw.get(table, {})}
    return out


def test_digests_are_those_of_the_dict_based_configuration():
    cfg = RunConfig.parse(KNOWN, "known.toml")
    assert cfg.config_digest() == KNOWN_DIGEST
    no_window = {t: v for t, v in KNOWN.items() if t != "window"}
    for raw in (no_window, {**no_window, "window": {}}):  # an empty [window] sets nothing
        assert RunConfig.parse(raw).config_digest() == KNOWN_DIGEST_NO_WINDOW
    fields = cfg.approval_fields()
    assert fields == {
        "architecture_hash": architecture_hash(cfg.model_config),
        "run_config": _canonical(KNOWN),
    }
    assert isinstance(fields["run_config"]["federation"]["round-timeout"], int)  # as written


def test_shipped_configs_canonical_table_and_typed_fields():
    for path in sorted((ROOT / "configs").glob("*.toml")):
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
        cfg = load_run_config(path)
        assert cfg.as_dict() == _canonical(raw), path.name
        assert list(cfg.as_dict()) == list(_canonical(raw)), path.name  # the table order too
        assert RunConfig.parse(cfg.as_dict()) == cfg  # the canonical table parses to itself
        fed = raw.get("federation", {})
        assert cfg.federation.min_nodes == fed.get("min-nodes", DEFAULTS["federation"]["min-nodes"])


def test_frozen_and_updated_revalidates():
    cfg = RunConfig.parse(KNOWN, "known.toml")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.federation.rounds = 9
    with pytest.raises(TypeError):
        cfg.model["embed-dim"] = 32
    more = cfg.updated({"federation": {"rounds": 7}})
    assert (more.federation.rounds, cfg.federation.rounds) == (7, 3)
    assert more.federation.round_timeout == 30 and more.window == cfg.window
    with pytest.raises(RunConfigError, match=r"^--rounds: \[federation\] rounds: must be >= 1"):
        cfg.updated({"federation": {"rounds": 0}}, "--rounds")


def test_payload_round_trip_is_decoded_once_per_process():
    cfg = RunConfig.parse(KNOWN)
    run_config = {"semiofed": encode_payload(cfg, out_dir="/x", run_name="r")}
    first = payload_of(run_config)
    assert first.config == cfg and dict(first.extra) == {"out_dir": "/x", "run_name": "r"}
    assert payload_of(dict(run_config)) is first  # the mods and the handler share one parse
