"""Demo baselines, run as ``python -m semiofed.client.baselines`` by ``semiofed demo``.

On the synthetic consortium only (where pooling is allowed because no real patient exists):
the federated model of RUN_DIR, a centralized non-private model trained on every site's
training patients pooled, and each site's local-only (non-private) model, all scored on
each site's held-out patients — the same by-patient split the ClientApp uses.
Prints one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from semiofed.shared.run_config import load_run_config

from . import site_task
from .dp_training import TrainConfig, train_local

#: Windows per step of the non-private references (the run's batch-size counts patients per
#: DP step; plain SGD over windows uses ordinary mini-batches).
PLAIN_BATCH = 32


def _fit_plain(cfg: dict[str, Any], patients: list[Any], epochs: int, device: str) -> Any:
    model = site_task.build_model(cfg)
    tr = cfg["training"]
    tcfg = TrainConfig(
        epochs=epochs,
        dp=False,
        batch_size=PLAIN_BATCH,
        lr=tr["learning-rate"],
        augment=False,
        device=device,
        seed=cfg["federation"]["seed"],
        purpose="demo baseline",
    )
    train_local(model, patients, tcfg, ledger=None, progress=False)
    return model


def compare(
    config: Path, data_root: Path, sites: list[str], run_dir: Path, device: str
) -> dict[str, Any]:
    from safetensors.torch import load_file

    cfg = load_run_config(config)
    data = {s: site_task.load_site(data_root / s, cfg) for s in sites}
    federated = site_task.build_model(cfg)
    federated.load_state_dict(load_file(str(run_dir / "model.safetensors")))
    epochs = cfg["federation"]["rounds"] * cfg["training"]["local-epochs"]
    pooled = [p for s in sites for p in data[s].train]
    central = _fit_plain(cfg, pooled, epochs, device)
    out: dict[str, Any] = {"epochs_baselines": epochs, "sites": {}}
    for s in sites:
        local = _fit_plain(cfg, data[s].train, epochs, device)
        row = {}
        for name, model in (("federated", federated), ("centralized", central), ("local", local)):
            loss, m = site_task.evaluate_patients(model, data[s].test, device)
            row[name] = {"loss": loss, **m}
        out["sites"][s] = row
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--data-root", type=Path, required=True)
    p.add_argument("--sites", nargs="+", required=True)
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    res = compare(args.config, args.data_root, args.sites, args.run_dir, args.device)
    json.dump(res, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
