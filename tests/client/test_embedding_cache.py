"""The frozen-encoder embedding cache: the cached path is the full model's function, the
site's entries are reused, keyed by the encoder weights and never trusted when damaged, and
training on cached embeddings is training on the windows."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from semiofed.client.dp_training import TrainConfig, train_local
from semiofed.client.evaluation import predict
from semiofed.client.feature_cache import CACHE_DIR, EMBEDDING_DIR, EmbeddingCache, embed_patients
from semiofed.shared.dataset import PatientWindows, WindowDataset, collate, load_patient_windows
from semiofed.shared.features import STREAM_NAMES
from semiofed.shared.model import (
    EMBEDDINGS,
    MODEL_STREAMS,
    PRESENCE,
    ModelConfig,
    SemioNet,
    embed_windows,
)
from tests.client.test_feature_cache import _write_site
from tests.ledger_helpers import new_ledger
from tests.server.test_pretrained_model import SMALL as PRETRAIN_SMALL
from tests.shared.test_model import random_batch

SMALL = replace(PRETRAIN_SMALL, frozen=("encoders",))


def _model(cfg: ModelConfig = SMALL, seed: int = 0) -> SemioNet:
    torch.manual_seed(seed)
    return SemioNet(cfg)


def _entries(state: Path) -> list[Path]:
    return sorted((state / CACHE_DIR / EMBEDDING_DIR).glob("*.npz"))


def test_cached_path_gives_the_full_models_outputs_with_missing_streams() -> None:
    model = _model().eval()
    batch = random_batch(b=5)
    batch["m_face"][0] = 0  # no face at all
    batch["m_motion"][0] = 0
    for s in STREAM_NAMES:  # nothing at all
        batch[f"m_{s}"][1] = 0
    batch["m_body"][2, 40:] = 0  # body lost half-way
    batch["m_left_hand"][3, ::2] = 0  # a hand seen every other frame
    full = model(batch)
    emb, present = embed_windows(model, [batch])
    assert not present[1].any() and not present[0][MODEL_STREAMS.index("face")]
    cached = model({EMBEDDINGS: torch.from_numpy(emb), PRESENCE: torch.from_numpy(present)})
    assert cached.keys() == full.keys()
    for k, v in full.items():
        torch.testing.assert_close(cached[k], v, atol=1e-6, rtol=0)


def test_embedding_key_follows_the_encoder_weights_and_needs_frozen_encoders() -> None:
    a, b = _model(), _model()
    assert a.embedding_key() is not None and a.embedding_key() == b.embedding_key()
    with torch.no_grad():
        b.encoders["body"].proj.bias.add_(1e-3)
    assert b.embedding_key() != a.embedding_key()
    with torch.no_grad():
        a.detect_head.bias.add_(1.0)  # the trainable top is not part of the key
    assert a.embedding_key() == _model().embedding_key()
    assert _model(replace(SMALL, frozen=())).embedding_key() is None
    assert _model(replace(SMALL, frozen=("encoders.body",))).embedding_key() is None


def _same_embeddings(a: list[PatientWindows], b: list[PatientWindows]) -> None:
    for pa, pb in zip(a, b, strict=True):
        assert pa.embedded is not None and pb.embedded is not None
        assert pa.embedded.key == pb.embedded.key
        np.testing.assert_allclose(pa.embedded.emb, pb.embedded.emb, atol=1e-6, rtol=0)
        np.testing.assert_array_equal(pa.embedded.present, pb.embedded.present)


def test_site_entries_are_reused_rekeyed_and_never_trusted_when_damaged(tmp_path: Path) -> None:
    site, state = _write_site(tmp_path), tmp_path / "state"
    patients, model = load_patient_windows(site), _model()
    first = embed_patients(model, patients, EmbeddingCache(state))
    assert len(_entries(state)) == 2
    cache = EmbeddingCache(state)
    again = embed_patients(model, patients, cache)
    assert (cache.hits, cache.misses) == (2, 0)
    _same_embeddings(first, again)
    _same_embeddings(first, embed_patients(model, patients))  # what computing gives
    # a damaged entry is recomputed and rewritten
    entry = _entries(state)[0]
    with np.load(entry) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["emb"] = arrays["emb"] + 1.0
    with open(entry, "wb") as fh:
        np.savez(fh, **arrays)
    cache = EmbeddingCache(state)
    _same_embeddings(first, embed_patients(model, patients, cache))
    assert (cache.hits, cache.misses) == (1, 1)
    # other encoder weights: other entries, the old ones removed
    other = _model(seed=1)
    cache = EmbeddingCache(state)
    embed_patients(other, patients, cache)
    assert (cache.hits, cache.misses) == (0, 2) and len(_entries(state)) == 2
    # encoders that train: nothing attached, nothing cached
    trains = embed_patients(_model(replace(SMALL, frozen=())), patients, EmbeddingCache(state))
    assert all(p.embedded is None for p in trains)


def test_training_on_cached_embeddings_is_training_on_the_windows(tmp_path: Path) -> None:
    site = _write_site(tmp_path)
    patients = load_patient_windows(site)
    cached = embed_patients(_model(), patients)
    tcfg = TrainConfig(
        epochs=2, dp=False, batch_size=8, steps_per_epoch=3, lr=1e-2, device="cpu", seed=3
    )
    full_model, cached_model = _model(), _model()
    train_local(full_model, patients, tcfg, progress=False)  # augmentation off: frozen encoders
    train_local(cached_model, cached, tcfg, progress=False)
    for (name, p), q in zip(full_model.named_parameters(), cached_model.parameters(), strict=True):
        torch.testing.assert_close(q, p, atol=1e-5, rtol=0, msg=name)
    a, b = predict(full_model, patients, "cpu"), predict(cached_model, cached, "cpu")
    np.testing.assert_allclose(b["detect_prob"], a["detect_prob"], atol=1e-6, rtol=0)
    assert WindowDataset(cached, embeddings=cached[0].embedded.key)[0].keys() >= {EMBEDDINGS}
    with pytest.raises(ValueError, match="augmentation"):
        WindowDataset(cached, augment=True, embeddings=cached[0].embedded.key)


def test_dp_steps_on_cached_embeddings_clip_the_trainable_parameters(tmp_path: Path) -> None:
    site, state = _write_site(tmp_path), tmp_path / "state"
    model = _model()
    cached = embed_patients(model, load_patient_windows(site))
    ledger = new_ledger(state, 50.0, 1e-3, "rdp", site)  # the officer creates the ledger
    seen: list[set[str]] = []

    def check(batch: dict, gsm: torch.nn.Module, _: object) -> None:
        assert EMBEDDINGS in batch and not any(k.startswith("x_") for k in batch)
        seen.append(
            {n for n, p in model.named_parameters() if getattr(p, "grad_sample", None) is not None}
        )

    tcfg = TrainConfig(epochs=2, batch_size=2, delta=1e-3, device="cpu")  # q = 1
    res = train_local(model, cached, tcfg, ledger=ledger, progress=False, step_callback=check)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and not any(n.startswith("encoders.") for n in trainable)
    assert seen and all(s == trainable for s in seen)
    assert res.steps == 2 * int(1 / res.sample_rate) == ledger.load()["runs"][-1]["steps_counted"]
    out = model(collate([WindowDataset(cached)[0]]))  # the model still reads windows
    assert torch.isfinite(out["detect_logit"]).all()
