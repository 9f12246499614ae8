"""The semiology-feature stream: documented shape, fixed transforms, determinism, known signs."""

from __future__ import annotations

import math

import torch

from semiofed.shared.features import STREAM_NAMES, STREAM_SHAPES
from semiofed.shared.model import MODEL_STREAMS, ModelConfig, SemioNet
from semiofed.shared.semiology_features import (
    BAND,
    FEATURE_NAMES,
    FPS,
    N_FEATURES,
    semiology_features,
)
from semiofed.shared.skeleton import POSE

T = 75  # a 5-s window at 15 fps


def still_batch(b: int = 2) -> dict[str, torch.Tensor]:
    """Windows of a patient lying still: every stream present, nothing moves."""
    g = torch.Generator().manual_seed(0)
    batch = {}
    for s in STREAM_NAMES:
        v, c = STREAM_SHAPES[s]
        batch[f"x_{s}"] = torch.rand(b, 1, v, c, generator=g).expand(b, T, v, c).clone()
        batch[f"m_{s}"] = torch.ones(b, T)
    return batch


def feature(feats: torch.Tensor, name: str) -> torch.Tensor:
    return feats[:, FEATURE_NAMES.index(name)]


def test_shape_names_and_finite_on_real_windows(small_consortium) -> None:
    from semiofed.shared.dataset import WindowDataset, collate, load_patient_windows

    patients = load_patient_windows(small_consortium / "site-01")[:2]
    data = WindowDataset(patients)
    batch = collate([data[i] for i in range(0, len(data), 7)])
    feats = semiology_features(batch)
    assert feats.shape == (len(batch["y_detect"]), N_FEATURES)
    assert len(set(FEATURE_NAMES)) == N_FEATURES
    assert feats.dtype == torch.float32 and torch.isfinite(feats).all()
    # deterministic, and a window's features do not depend on the other windows of the batch
    torch.testing.assert_close(semiology_features(batch), feats, rtol=0, atol=0)
    one = {k: v[3:4] for k, v in batch.items()}
    torch.testing.assert_close(semiology_features(one)[0], feats[3], rtol=1e-5, atol=1e-6)


def test_rhythmic_left_arm_reads_as_frequency_and_asymmetry() -> None:
    batch = still_batch()
    t = torch.arange(T) / FPS
    jerk = 0.3 * torch.sin(2 * math.pi * 4.0 * t)  # 4 Hz clonic left arm, torso lengths
    for node in (POSE["left_elbow"], POSE["left_wrist"]):
        batch["x_body"][0, :, node, 0] += jerk
    feats = semiology_features(batch)
    assert abs(feature(feats, "left_arm_f_dom")[0].item() * BAND[1] - 4.0) < 0.2
    assert feature(feats, "left_arm_p_mid")[0] > 0.9  # 2-6 Hz band
    assert feature(feats, "left_arm_peak")[0] > 0.8  # rhythmic
    assert feature(feats, "left_arm_speed")[0] > 2.0  # log1p(mean speed / 0.1)
    assert feature(feats, "asym_arm")[0] > 0.9  # left moves, right does not
    # the still window: no movement, no spectrum, no asymmetry
    for name in ("left_arm_speed", "left_arm_f_dom", "left_arm_p_mid", "asym_arm"):
        assert abs(feature(feats, name)[1].item()) < 1e-3, name


def test_absent_streams_give_zero_features_and_presence() -> None:
    batch = still_batch(b=1)
    batch["m_face"][:] = 0
    batch["m_left_hand"][:, : T // 2] = 0
    feats = semiology_features(batch)
    for name in ("mouth_seen", "eye_left", "yaw_mean", "present_face", "mouth_speed"):
        assert feature(feats, name).item() == 0.0, name
    assert abs(feature(feats, "present_left_hand").item() - (T - T // 2) / T) < 1e-6
    assert feature(feats, "present_body").item() == 1.0


def test_semiology_stream_in_the_model_and_its_gradients() -> None:
    torch.manual_seed(0)
    model = SemioNet(ModelConfig(streams=MODEL_STREAMS, embed_dim=16, groups=4)).eval()
    batch = still_batch(b=3)
    for s in STREAM_NAMES:  # window 2: nothing at all is present
        batch[f"m_{s}"][2] = 0
    batch["x_body"].requires_grad_(True)  # explanations take gradients through the features
    out = model(batch)
    assert out["emb_semiology"].shape == (3, 16)
    assert out["gates"].shape == (3, len(MODEL_STREAMS))
    assert out["gates"][2].abs().sum() == 0
    out["detect_logit"].sum().backward()
    assert torch.isfinite(batch["x_body"].grad).all()
