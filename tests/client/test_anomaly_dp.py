"""The federated DP anomaly model: a patient changes a site's sum by at most 1 in L2 however
large its embeddings or many its windows; the release is charged to the ledger before it
exists, refused over budget or with a broken ledger, and its noise is secret; the merged
class Gaussians separate a class no site has from the known ones."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from semiofed.client.anomaly import PURPOSE, share_anomaly
from semiofed.privacy.accounting import epsilon
from semiofed.privacy.audit_trail import read_entries, site_trail
from semiofed.privacy.ledger import BudgetExceeded, PrivacyLedger
from semiofed.shared.analysis import calibration as cal
from semiofed.shared.analysis.anomaly import (
    SEIZURE_CLASSES,
    dp_anomaly_summary,
    merge_anomaly,
    patient_contribution,
)
from semiofed.shared.analysis.openset import OpenSetScorer, ProjectionSpace, event_scores
from semiofed.shared.errors import SemioFedError
from semiofed.shared.metrics import auroc
from tests.anomaly_helpers import assert_each_worst_case_moves_the_sum_by_at_most_one
from tests.ledger_helpers import new_ledger

D, RANK = 16, 4
CENTRES = np.random.default_rng(0).normal(0.0, 3.0, (len(SEIZURE_CLASSES) + 1, D))


def _windows(rng: np.random.Generator, k: int, n: int) -> np.ndarray:
    return CENTRES[k] + rng.normal(0.0, 1.0, (n, D))


def _space() -> ProjectionSpace:
    rng = np.random.default_rng(1)
    return ProjectionSpace.public(np.concatenate([_windows(rng, k, 50) for k in range(6)]), RANK)


def _site(rng: np.random.Generator, n: int, classes: tuple[int, ...]) -> list:
    """n patients, each with 3–30 windows of one class of ``classes`` (index into CENTRES)."""
    out = []
    for i in range(n):
        k = classes[i % len(classes)]
        out.append((_windows(rng, k, int(rng.integers(3, 30))), np.full(1, SEIZURE_CLASSES[k])))
        out[-1] = (out[-1][0], np.repeat(out[-1][1], len(out[-1][0])))
    return out


def test_a_worst_case_patient_moves_the_sum_by_at_most_one() -> None:
    space, rng = _space(), np.random.default_rng(2)
    others = _site(rng, 10, (0, 1, 2))
    direction = space.basis[:, 0] / space.scale
    worst = [
        # huge embeddings, many windows, every class (and background windows, ignored)
        (rng.normal(0, 1e6, (5000, D)), rng.integers(0, 6, 5000)),
        # all mass along one public direction: the clipped mean and square are both maximal
        (np.tile(1e9 * direction, (10_000, 1)), np.full(10_000, SEIZURE_CLASSES[0])),
        (np.zeros((1, D)) + 1e12, np.array([SEIZURE_CLASSES[-1]])),
    ]
    assert_each_worst_case_moves_the_sum_by_at_most_one(space, others, worst, rng)
    # the bound is attained (no slack hidden in the weights): one class, along a direction
    assert np.linalg.norm(patient_contribution(space, *worst[1])) == pytest.approx(1.0)
    # a patient without seizure windows contributes nothing
    assert not patient_contribution(space, rng.normal(0, 1, (5, D)), np.zeros(5, int)).any()


def test_merged_gaussians_recover_the_means_and_flag_an_unseen_class() -> None:
    space, rng = _space(), np.random.default_rng(3)
    known = (0, 1, 2, 3)  # class index 4 is never seen by any site
    sites = [_site(rng, 30, known) for _ in range(3)]
    # almost no noise: the merged means are the patient-weighted means of clipped features
    exact = merge_anomaly([dp_anomaly_summary(s, space, 1e-9, rng) for s in sites], space)
    assert exact.classes == [SEIZURE_CLASSES[k] for k in known]
    for row, k in enumerate(known):
        per_patient = [
            space.clipped(e).mean(0) for s in sites for e, y in s if y[0] == SEIZURE_CLASSES[k]
        ]
        assert np.allclose(exact.means[row], np.mean(per_patient, axis=0), atol=1e-6)
    # σ = 3 per site: still separates new patients' events of the unseen class
    model = merge_anomaly([dp_anomaly_summary(s, space, 3.0, rng) for s in sites], space)
    events = [(_windows(rng, k, 8), k == 4) for k in (0, 1, 2, 3, 4) * 12]
    emb = np.concatenate([e for e, _ in events])
    groups = np.repeat(np.arange(len(events)), 8)
    _, ev = event_scores(model.mahalanobis(emb), groups.tolist())
    assert auroc(np.array([new for _, new in events]), ev) > 0.9
    restored = OpenSetScorer.from_dict(json.loads(json.dumps(model.to_dict())))
    assert np.allclose(restored.mahalanobis(emb), model.mahalanobis(emb))


def test_merge_refuses_summaries_of_another_space() -> None:
    space, rng = _space(), np.random.default_rng(4)
    other = ProjectionSpace(space.centre + 1.0, space.basis, space.scale)
    doc = dp_anomaly_summary(_site(rng, 5, (0,)), other, 1.0, rng)
    with pytest.raises(SemioFedError, match="another public projection"):
        merge_anomaly([doc], space)


@pytest.fixture
def patients() -> list:
    return _site(np.random.default_rng(5), cal.MIN_PATIENTS + 2, (0, 1, 2))


def test_the_release_is_charged_recorded_secret_and_refused_without_budget(
    tmp_path: Path, patients: list
) -> None:
    space, state = _space(), tmp_path / "state"
    new_ledger(state, 20.0, 1e-5, "rdp")
    released = []
    for _ in range(2):
        np.random.seed(0)  # public seeds do not make the noise reproducible
        torch.manual_seed(0)
        released.append(share_anomaly(state, patients, space, 3.0))
    (a, _), (b, total) = released
    assert a["noisy_sums"] != b["noisy_sums"]
    eps_one = epsilon([(3.0, 1.0, 1)], 1e-5, "rdp")
    assert a["epsilon"] == pytest.approx(eps_one) and a["delta"] == 1e-5
    runs = PrivacyLedger(state).load()["runs"]
    assert [(r["purpose"], r["status"]) for r in runs] == [(PURPOSE, "completed")] * 2
    assert total == pytest.approx(PrivacyLedger(state).spent()) and total > eps_one
    trail = [e for e in read_entries(site_trail(state).path) if e["kind"] == "summary_released"]
    assert [e["payload"]["summary"] for e in trail] == [a, b]
    assert set(a) == {
        "format", "version", "kind", "privacy_unit", "mechanism", "noise_multiplier",
        "classes", "rank", "space", "noisy_sums", "epsilon", "delta", "accountant",
    }  # fmt: skip

    poor = tmp_path / "poor"
    new_ledger(poor, 0.5, 1e-5, "rdp")  # one release at σ = 3 costs ε ≈ 1.4
    with pytest.raises(BudgetExceeded):
        share_anomaly(poor, patients, space, 3.0)
    assert [r["status"] for r in PrivacyLedger(poor).load()["runs"]] == ["refused"]
    assert PrivacyLedger(poor).history() == []

    ledger_file = PrivacyLedger(state).path
    ledger_file.write_text(ledger_file.read_text()[:-40])  # a truncated ledger
    with pytest.raises(SemioFedError):
        share_anomaly(state, patients, space, 3.0)
    with pytest.raises(SemioFedError, match="no privacy ledger"):
        share_anomaly(tmp_path / "none", patients, space, 3.0)
    with pytest.raises(SemioFedError, match=f"needs at least {cal.MIN_PATIENTS}"):
        share_anomaly(state, patients[: cal.MIN_PATIENTS - 1], space, 3.0)
    after = [e for e in read_entries(site_trail(state).path) if e["kind"] == "summary_released"]
    assert len(after) == 2
