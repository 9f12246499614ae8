"""``semiofed server pretrain``: the coordinator's round-0 model, trained on PUBLIC data only.

The data is the motion simulator (:mod:`semiofed.shared.synth`) run with a seed no site's
data uses (:data:`PUBLIC_SEED`) and far more simulated sites than a consortium has (18: every
archetype six times), so its site profiles cover what a site's camera and patients may look
like (the bed at 0° and at ±90° in the image, 25 and 30 fps, blankets, prevalences): no
patient's data is involved, and nothing of it needs a privacy budget. With the earlier 6
sites every public camera happened to see the bed at about ±90°, and the round-0 model was
poor at sites filming it at about 0° (README "The model"). Training is ordinary
(non-private) Adam with windows drawn half from background, half from events with the event
classes balanced, mirror/rotation/time augmentation; the checkpoint kept is the best on
public validation patients (type macro-F1, then AUROC), so hyper-parameters and the
checkpoint are chosen on public data only. A run may continue a previous public round-0
model (``init``: its SHA-256) with a cosine-decayed rate (``lr_end``): the model it starts
from is kept unless a checkpoint beats it, and its recipe is recorded in the new one's
(``init_recipe``), so a chain of continuations stays declared public-only. A continuation
may keep its encoders (``frozen``: the top trains on the windows' embeddings) and draw a
share of its background from the simulator truth's confounder episodes
(``confounder_share``: hard background).

The result is one safetensors file named by its SHA-256 (``<sha256>.safetensors``) holding
the model's state dict and, as metadata, the recipe (simulator seed, sites, patients,
minutes, steps, model configuration). A run configuration uses it with
``[model] pretrained = "<sha256>"`` and, to fine-tune only the heads under DP,
``frozen = ["encoders"]``; the file must be in ``shared/pretrained/`` of the installed
package (it ships with a release) or in ``$SEMIOFED_PRETRAINED_DIR`` at every site and at
the coordinator. Model cards state the recipe (``pretraining_statement``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from semiofed.shared.atomic import atomic_write_bytes
from semiofed.shared.errors import SemioFedError
from semiofed.shared.public_data import PUBLIC_SEED, confounder_windows

FORMAT = "semiofed-pretrained-1"


@dataclass(frozen=True)
class PretrainConfig:
    """Public data and training recipe of the round-0 model."""

    seed: int = PUBLIC_SEED  # simulator seed (public data)
    sites: int = 18  # simulated sites: every archetype, cameras at 0° and ±90°, 25/30 fps
    patients_per_site: int = 6
    minutes_per_patient: float = 6.0
    val_patients: int = 12  # public patients held out to pick the checkpoint
    steps: int = 1200
    batch_size: int = 64
    lr: float = 2e-3
    eval_every: int = 200
    train_seed: int = 0  # model initialisation and the train/validation patient split
    draw_seed: int = 0  # batch draws and augmentation
    lr_end: float | None = None  # None: constant lr; else cosine decay from lr to lr_end
    init: str = ""  # SHA-256 of a previous public round-0 model to continue from ("": fresh)
    # parameter name prefixes kept as ``init`` has them (("encoders",): the top only, trained
    # on the public windows' embeddings, without augmentation)
    frozen: tuple[str, ...] = ()
    # share of the background draws taken from windows inside the simulator's confounder
    # episodes (talking, eating, scratching, …: hard background); the rest uniform
    confounder_share: float = 0.0


def _balanced_weights(
    patients: list[Any], hard: dict[tuple[str, str], np.ndarray] | None = None, share: float = 0.0
) -> np.ndarray:
    """Per-window draw probabilities: half background, half events (event classes balanced);
    ``share`` of the background half on the windows ``hard`` marks (per patient key)."""
    from semiofed.shared.labels import IGNORE_INDEX

    y_det = np.concatenate([p.y_detect for p in patients])
    y_type = np.concatenate([p.y_type for p in patients])
    w = np.zeros(len(y_det))
    bg = y_det == 0
    marked = np.zeros(len(y_det), dtype=bool)
    if hard is not None and share > 0:
        marked = bg & np.concatenate([hard[p.key] for p in patients])
    if marked.any():
        w[bg] = 0.5 * (1 - share) / bg.sum()
        w[marked] += 0.5 * share / marked.sum()
    else:
        w[bg] = 0.5 / max(1, bg.sum())
    classes = [c for c in np.unique(y_type[~bg]) if c != IGNORE_INDEX]
    for c in classes:
        sel = ~bg & (y_type == c)
        w[sel] = 0.5 / len(classes) / sel.sum()
    return w / w.sum()


def learning_rate(pcfg: PretrainConfig, step: int) -> float:
    """Learning rate of ``step`` (1-based): constant, or cosine from ``lr`` to ``lr_end``."""
    if pcfg.lr_end is None:
        return pcfg.lr
    t = (step - 1) / max(1, pcfg.steps - 1)
    return pcfg.lr_end + 0.5 * (pcfg.lr - pcfg.lr_end) * (1 + math.cos(math.pi * t))


def init_recipe(digest: str) -> dict[str, Any]:
    """The public recipe of the round-0 model ``digest`` that a pretraining continues from;
    refuses weights not made by ``server pretrain`` on public data."""
    from semiofed.shared.model import load_pretrained

    meta = load_pretrained(digest)[1]
    recipe = json.loads(meta.get("recipe", "{}"))
    if meta.get("format") != FORMAT or not str(recipe.get("data", "")).startswith("public:"):
        raise SemioFedError(f"init = {digest!r}: not a public pretrained model ({FORMAT})")
    return recipe


def _scores(model: Any, patients: list[Any]) -> tuple[float, float]:
    """(type macro-F1, AUROC) of ``model`` on ``patients``."""
    import torch

    from semiofed.shared.dataset import WindowDataset, collate, embeddings_key
    from semiofed.shared.metrics import window_metrics

    model.eval()
    key = embeddings_key(patients, model.embedding_key())
    loader = torch.utils.data.DataLoader(
        WindowDataset(patients, embeddings=key), batch_size=256, collate_fn=collate
    )
    probs, types = [], []
    with torch.no_grad():
        for batch in loader:
            out = model(batch)
            probs.append(torch.sigmoid(out["detect_logit"]).numpy())
            types.append(out["type_logits"].argmax(1).numpy())
    model.train()
    m = window_metrics(
        np.concatenate([p.y_type for p in patients]),
        np.concatenate(types),
        np.concatenate([p.y_detect for p in patients]),
        np.concatenate(probs),
    )
    f1, auc = float(m["macro_f1"]), float(m["auroc_seizure"])
    return (0.0 if math.isnan(f1) else f1, 0.0 if math.isnan(auc) else auc)


def public_patients(pcfg: PretrainConfig, work: Path) -> list[Any]:
    """Windows of the public simulated consortium (generated under ``work``)."""
    from semiofed.shared import public_data as pub

    sites = pub.public_sites(
        work / "public-data",
        pcfg.sites,
        pcfg.patients_per_site,
        pcfg.minutes_per_patient,
        pcfg.seed,
    )
    return pub.public_patients(sites)


def _embedded(model: Any, patients: list[Any]) -> list[Any]:
    """``patients`` with their windows' embeddings under ``model``'s frozen encoders."""
    import torch

    from semiofed.shared.dataset import StreamEmbeddings, WindowDataset, collate
    from semiofed.shared.model import embed_windows

    loader = torch.utils.data.DataLoader(
        WindowDataset(patients), batch_size=256, shuffle=False, collate_fn=collate
    )
    emb, present = embed_windows(model, loader)
    bounds = np.cumsum([len(p) for p in patients])[:-1]
    key = model.embedding_key()
    return [
        dataclasses.replace(p, embedded=StreamEmbeddings(key, e, m))
        for p, e, m in zip(patients, np.split(emb, bounds), np.split(present, bounds), strict=True)
    ]


def pretrain_model(
    model_cfg: Any,
    pcfg: PretrainConfig,
    patients: list[Any],
    hard: dict[tuple[str, str], np.ndarray] | None = None,
) -> tuple[Any, dict]:
    """Train a SemioNet (fresh, or from ``init``) on public ``patients``; ``hard`` marks each
    patient's windows of hard background (``confounder_share``). Returns the model and its
    training summary."""
    import copy

    import torch

    from semiofed.shared.dataset import WindowDataset, collate
    from semiofed.shared.model import SemioNet, loss_per_window
    from semiofed.shared.splits import patient_split

    cfg = dataclasses.replace(model_cfg, pretrained=pcfg.init, frozen=pcfg.frozen)
    if pcfg.frozen and not pcfg.init:
        raise SemioFedError("frozen parameters need init (a previous public round-0 model)")
    if pcfg.init:
        init_recipe(pcfg.init)
    frac = pcfg.val_patients / len(patients)
    if not 0 < frac < 1:
        raise SemioFedError("pretraining needs more public patients than validation patients")
    train, val, _ = patient_split(patients, frac, 0.0, seed=pcfg.train_seed)
    torch.manual_seed(pcfg.train_seed)
    rng = np.random.default_rng(pcfg.draw_seed)
    model = SemioNet(cfg)
    key = model.embedding_key()
    if key is not None:  # frozen encoders: the top trains on the windows' embeddings
        train, val = _embedded(model, train), _embedded(model, val)
    data = WindowDataset(train, augment=key is None, seed=pcfg.draw_seed, embeddings=key)
    weights = _balanced_weights(train, hard, pcfg.confounder_share)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=pcfg.lr)
    best: tuple[tuple[float, float], int, dict] | None = None
    if pcfg.init:  # step 0: the continuation keeps its start unless it beats it
        best = (_scores(model, val), 0, copy.deepcopy(model.state_dict()))
    model.train()
    for step in range(1, pcfg.steps + 1):
        for group in opt.param_groups:
            group["lr"] = learning_rate(pcfg, step)
        idx = rng.choice(len(data), size=pcfg.batch_size, p=weights)
        batch = collate([data[int(i)] for i in idx])
        loss = loss_per_window(model(batch), batch, 1.0).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % pcfg.eval_every == 0 or step == pcfg.steps:
            score = _scores(model, val)
            if best is None or score > best[0]:
                best = (score, step, copy.deepcopy(model.state_dict()))
    assert best is not None
    model.load_state_dict(best[2])
    summary = {
        "best_step": best[1],
        "val_macro_f1": best[0][0],
        "val_auroc": best[0][1],
        "train_patients": len(train),
        "val_patients": len(val),
    }
    return model, summary


def save_pretrained(model: Any, recipe: dict[str, Any], out_dir: Path) -> tuple[str, Path]:
    """Write ``OUT/<sha256>.safetensors`` (state dict + recipe metadata); returns (sha256, path)."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    data = save(state, metadata={"format": FORMAT, "recipe": json.dumps(recipe, sort_keys=True)})
    digest = hashlib.sha256(data).hexdigest()
    path = Path(out_dir) / f"{digest}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)
    return digest, path


def pretrain(model_cfg: Any, pcfg: PretrainConfig, out_dir: Path) -> dict[str, Any]:
    """Public data → trained round-0 model → ``OUT/<sha256>.safetensors``; returns a summary."""
    chain = init_recipe(pcfg.init) if pcfg.init else None  # before the data is generated
    with tempfile.TemporaryDirectory(prefix="semiofed-pretrain-") as tmp:
        patients = public_patients(pcfg, Path(tmp))
        hard = None
        if pcfg.confounder_share > 0:
            hard = confounder_windows(Path(tmp) / "public-data", patients)
        model, summary = pretrain_model(model_cfg, pcfg, patients, hard)
    base = dataclasses.replace(model_cfg, pretrained="", frozen=())
    recipe = {
        "data": "public: SemioFed motion simulator (shared/synth), no patient data",
        "simulator": {
            "seed": pcfg.seed,
            "sites": pcfg.sites,
            "patients_per_site": pcfg.patients_per_site,
            "minutes_per_patient": pcfg.minutes_per_patient,
        },
        "training": asdict(pcfg) | summary,
        "model": asdict(base),
    }
    if chain is not None:
        recipe["init_recipe"] = chain
    digest, path = save_pretrained(model, recipe, out_dir)
    return {"sha256": digest, "path": str(path), **summary}
