"""Site side: `site pull` installs only what verifies against the pinned coordinator key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from semiofed.client.model_pull import RetiredVersion, VerificationError, current_model, pull
from semiofed.privacy.keys import (
    canonical_json,
    generate_keypair,
    load_private_key,
    sha256_file,
    sign,
)
from semiofed.server.registry.app import create_app
from semiofed.server.registry.db import ModelVersion
from semiofed.server.registry.publish import check_stored, publish_local, retire_local
from semiofed.shared.errors import SemioFedError
from tests.registry_helpers import RegistrySetup, make_registry, make_run_dir


@pytest.fixture
def reg(tmp_path: Path) -> tuple[RegistrySetup, TestClient]:
    setup = make_registry(tmp_path / "data")
    publish_local(make_run_dir(tmp_path / "run1", seed=1), setup.registry, setup.private_key)
    publish_local(make_run_dir(tmp_path / "run2", seed=2), setup.registry, setup.private_key)
    return setup, TestClient(create_app(setup.registry))


def _pull(reg: tuple[RegistrySetup, TestClient], state: Path, version: str | None = None):  # type: ignore[no-untyped-def]
    setup, tc = reg
    return pull(tc, setup.tokens["site"], setup.public_key, state, version)


def _edit_row(setup: RegistrySetup, version: str, **changes: str) -> None:
    with setup.registry.sessions() as session:
        row = session.scalar(select(ModelVersion).where(ModelVersion.version == version))
        for key, value in changes.items():
            setattr(row, key, value)
        session.commit()


def _nothing_installed(state: Path) -> None:
    models = state / "models"
    assert current_model(state) is None
    assert not models.exists() or list(models.iterdir()) == []


def test_pull_installs_latest_verified_and_atomically(
    reg: tuple[RegistrySetup, TestClient], tmp_path: Path
) -> None:
    setup, _ = reg
    state = tmp_path / "state"
    model = _pull(reg, state)
    assert model.version == "v2" and not model.already_installed
    assert current_model(state) == (state / "models" / "v2").resolve()
    installed = state / "models" / "v2"
    assert sorted(p.name for p in installed.iterdir()) == [
        "manifest.json",
        "manifest.sig",
        "model.safetensors",
        "model_card.json",
        "model_config.json",  # from the signed card: the folder serves `site analyze --model`
    ]
    assert sha256_file(installed / "model.safetensors") == sha256_file(
        setup.data / "models/v2/model.safetensors"
    )
    card = json.loads((installed / "model_card.json").read_text())
    assert card["privacy"]["per_site"]["site-b"]["epsilon_final"] == 3.0
    assert _pull(reg, state).already_installed
    # a named older version on purpose is fine; a silent rollback is not
    assert _pull(reg, state, "v1").version == "v1"
    assert current_model(state) == (state / "models" / "v1").resolve()
    assert _pull(reg, state).version == "v2"
    retire_local(setup.registry, "v2", "recalled", setup.private_key)
    with pytest.raises(SemioFedError, match="refusing a rollback"):
        _pull(reg, state)
    assert current_model(state) == (state / "models" / "v2").resolve()
    with pytest.raises(RetiredVersion, match=r"signed retirement verified\): recalled"):
        _pull(reg, tmp_path / "other-state", "v2")
    _nothing_installed(tmp_path / "other-state")


def _retirement(setup: RegistrySetup, version: str) -> tuple[dict, str]:
    with setup.registry.sessions() as session:
        row = session.scalar(select(ModelVersion).where(ModelVersion.version == version))
        return json.loads(row.retirement_json), row.retirement_signature


@pytest.mark.parametrize("forgery", ["unsigned", "other key", "replayed from v1", "edited"])
def test_retirement_not_signed_by_the_coordinator_is_refused_as_unverified(
    reg: tuple[RegistrySetup, TestClient], tmp_path: Path, forgery: str
) -> None:
    """A registry (or whoever edits its database) cannot forge or alter a retirement: the
    registry refuses to start on it, and `site pull` reports it as not the coordinator's."""
    setup, _ = reg
    retire_local(setup.registry, "v1", "old", setup.private_key)
    statement, signature = _retirement(setup, "v1")
    if forgery == "unsigned":
        statement, signature = {}, ""
    elif forgery == "other key":
        signature = sign(generate_keypair(tmp_path / "attacker.pem"), canonical_json(statement))
    elif forgery == "edited":
        statement = {**statement, "reason": "edited by the registry host"}
    _edit_row(
        setup,
        "v2",
        status="retired",
        retired_at=statement.get("retired_at", "now"),
        retired_reason=statement.get("reason", "forged"),
        retirement_json=json.dumps(statement),
        retirement_signature=signature,
    )
    with pytest.raises(SemioFedError, match="version 'v2'"):
        check_stored(setup.registry)
    with pytest.raises(VerificationError, match="its retirement is not the pinned coordinator's"):
        _pull(reg, tmp_path / "state", "v2")
    _nothing_installed(tmp_path / "state")


def test_tampered_weights_refused(reg: tuple[RegistrySetup, TestClient], tmp_path: Path) -> None:
    setup, _ = reg
    weights = setup.data / "models" / "v2" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(VerificationError, match=r"SHA-256 .* signed manifest says"):
        _pull(reg, tmp_path / "state")
    _nothing_installed(tmp_path / "state")


def test_oversized_weights_refused(reg: tuple[RegistrySetup, TestClient], tmp_path: Path) -> None:
    setup, _ = reg
    weights = setup.data / "models" / "v2" / "model.safetensors"
    weights.write_bytes(weights.read_bytes() + b"\x00" * 64)
    with pytest.raises(VerificationError, match="larger than the signed size"):
        _pull(reg, tmp_path / "state")
    _nothing_installed(tmp_path / "state")


def test_tampered_card_refused(reg: tuple[RegistrySetup, TestClient], tmp_path: Path) -> None:
    setup, _ = reg
    with setup.registry.sessions() as session:
        row = session.scalar(select(ModelVersion).where(ModelVersion.version == "v2"))
        manifest = json.loads(row.manifest_json)
    manifest["card"]["privacy"]["per_site"]["site-c"]["epsilon_final"] = 0.1  # understate ε
    _edit_row(setup, "v2", manifest_json=json.dumps(manifest))
    with pytest.raises(VerificationError, match="does not verify against the pinned"):
        _pull(reg, tmp_path / "state")
    _nothing_installed(tmp_path / "state")


@pytest.mark.parametrize("signature", ["", "   "])
def test_unsigned_refused(
    reg: tuple[RegistrySetup, TestClient], tmp_path: Path, signature: str
) -> None:
    setup, _ = reg
    _edit_row(setup, "v2", signature=signature)
    with pytest.raises(VerificationError, match="not signed"):
        _pull(reg, tmp_path / "state")
    _nothing_installed(tmp_path / "state")


def test_signed_manifest_failing_the_registry_schema_refused(
    reg: tuple[RegistrySetup, TestClient], tmp_path: Path
) -> None:
    """The site checks the one manifest schema the registry checks (shared/manifest.py): a
    manifest the coordinator did sign but with a card field of the wrong type is refused."""
    setup, _ = reg
    with setup.registry.sessions() as session:
        row = session.scalar(select(ModelVersion).where(ModelVersion.version == "v2"))
        manifest = json.loads(row.manifest_json)
    manifest["card"]["rounds"] = "3"
    signature = sign(load_private_key(setup.private_key), canonical_json(manifest))
    _edit_row(setup, "v2", manifest_json=json.dumps(manifest), signature=signature)
    with pytest.raises(VerificationError, match=r"manifest: card\.rounds"):
        _pull(reg, tmp_path / "state")
    _nothing_installed(tmp_path / "state")


def test_signature_by_another_key_refused(
    reg: tuple[RegistrySetup, TestClient], tmp_path: Path
) -> None:
    setup, _ = reg
    other = generate_keypair(tmp_path / "attacker.pem")
    with setup.registry.sessions() as session:
        row = session.scalar(select(ModelVersion).where(ModelVersion.version == "v2"))
        manifest = json.loads(row.manifest_json)
    _edit_row(setup, "v2", signature=sign(other, canonical_json(manifest)))
    with pytest.raises(VerificationError, match="does not verify"):
        _pull(reg, tmp_path / "state")
    _nothing_installed(tmp_path / "state")


def test_replayed_manifest_of_another_version_refused(
    reg: tuple[RegistrySetup, TestClient], tmp_path: Path
) -> None:
    setup, _ = reg
    with setup.registry.sessions() as session:
        v1 = session.scalar(select(ModelVersion).where(ModelVersion.version == "v1"))
        old_manifest, old_sig = v1.manifest_json, v1.signature
    _edit_row(setup, "v2", manifest_json=old_manifest, signature=old_sig)
    with pytest.raises(VerificationError, match="signed manifest is for version 'v1'"):
        _pull(reg, tmp_path / "state")
    _nothing_installed(tmp_path / "state")


def test_failed_pull_keeps_previous_model(
    reg: tuple[RegistrySetup, TestClient], tmp_path: Path
) -> None:
    setup, _ = reg
    state = tmp_path / "state"
    _pull(reg, state, "v1")
    weights = setup.data / "models" / "v2" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x01")
    with pytest.raises(VerificationError):
        _pull(reg, state)
    assert current_model(state) == (state / "models" / "v1").resolve()
    assert sorted(p.name for p in (state / "models").iterdir()) == ["current", "v1"]


def test_every_received_model_is_in_the_site_audit_trail(
    reg: tuple[RegistrySetup, TestClient], tmp_path: Path
) -> None:
    from semiofed.privacy.audit_trail import TRAIL_FILE, read_entries, site_public_key_path
    from semiofed.privacy.audit_trail import verify as verify_trail
    from semiofed.privacy.keys import load_public_key

    setup, _ = reg
    state = tmp_path / "state"
    _pull(reg, state, "v1")
    weights = setup.data / "models" / "v2" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(VerificationError):
        _pull(reg, state, "v2")
    trail = state / TRAIL_FILE
    received = [e["payload"] for e in read_entries(trail) if e["kind"] == "model_received"]
    assert [(r["version"], r["signature_ok"], r["installed"]) for r in received] == [
        ("v1", True, True),
        ("v2", False, False),
    ]
    assert "signed manifest says" in received[1]["error"]
    assert verify_trail(trail, load_public_key(site_public_key_path(state))).ok


def test_a_retirement_without_signature_is_refused_until_signed(
    reg: tuple[RegistrySetup, TestClient], tmp_path: Path
) -> None:
    setup, _ = reg
    _edit_row(setup, "v2", status="retired", retired_reason="by hand")  # as schema 2 stored it
    with pytest.raises(SemioFedError, match=r"v2.*retired without a signed retirement"):
        check_stored(setup.registry)
    retire_local(setup.registry, "v2", "recalled", setup.private_key)
    check_stored(setup.registry)
    with pytest.raises(RetiredVersion, match="recalled"):
        _pull(reg, tmp_path / "state", "v2")


def _federated_calibration(sites: tuple[str, ...]) -> dict:
    """What `make demo` writes into its run directory (server/demo_privacy.py), from a
    calibration result of the demo's shape."""
    import numpy as np

    from semiofed.server.demo_privacy import ANOMALY_KINDS, federated_calibration
    from semiofed.shared.analysis import calibration as cal
    from semiofed.shared.analysis.openset import SEMIOLOGY_EVENTS, OpenSetScorer, ProjectionSpace
    from semiofed.shared.labels import CLASSES

    space = ProjectionSpace(np.zeros(8), np.eye(8)[:, :4], 2.0)
    scorer = OpenSetScorer(
        [1, 3], np.ones((2, 4)), np.eye(4), threshold=1.75, space=space,
        representation=SEMIOLOGY_EVENTS,
    )  # fmt: skip
    kinds = [*cal.FEDERATED_KINDS, *ANOMALY_KINDS]
    return federated_calibration(
        {
            "temperature": 1.3,
            "coverage": 0.9,
            "conformal_threshold": 0.85,
            "class_thresholds": {c: 0.5 + 0.05 * i for i, c in enumerate(CLASSES)},
            "noise_multiplier": 3.0,
            "delta": 1e-5,
            "accountant": "rdp",
            "sites": {
                s: {
                    "summaries": [
                        {"kind": k, "epsilon_total_after": 2.0 + i} for i, k in enumerate(kinds)
                    ]
                }
                for s in sites
            },
            "anomaly": {
                "scorer": scorer.to_dict(),
                "classes": ["automatisms", "f2b"],
                "threshold": 1.75,
                "public_threshold": 1.5,
                "flag_rate": 0.05,
                "public_events": 40,
                "noise_multiplier": 3.0,
            },
        }
    )


def test_a_version_with_the_federated_calibration_and_anomaly_model_installs_them(
    reg: tuple[RegistrySetup, TestClient], tmp_path: Path
) -> None:
    """`make demo`'s run directory: the DP calibration and anomaly model are signed into the
    same version as the weights (the card's sections), shown on its page, and `site pull`
    installs them as the folder's calibration.json, the aberrant flag `site analyze` uses."""
    from semiofed.client.analysis.pipeline import SiteCalibration
    from semiofed.privacy.accounting import epsilon
    from semiofed.server.registry.cards import FEDERATED_CALIBRATION_FILE
    from semiofed.shared.labels import CLASSES
    from tests.registry_helpers import SITES

    setup, tc = reg
    run = make_run_dir(tmp_path / "run3", seed=3)
    doc = _federated_calibration(SITES)
    (run / FEDERATED_CALIBRATION_FILE).write_text(json.dumps(doc))
    publish_local(run, setup.registry, setup.private_key)
    state = tmp_path / "state"
    model = _pull(reg, state)
    assert model.version == "v3"
    anomaly = model.card["anomaly"]
    site = anomaly["privacy"]["per_site"]["site-a"]
    # its two releases (class sums, then the threshold) composed
    assert site["epsilon"] == pytest.approx(epsilon([(3.0, 1.0, 1)] * 2, 1e-5, "rdp"))
    assert site["epsilon_total_after"] == 6.0  # the site's ledger after its threshold release
    calib_alone = model.card["calibration"]["privacy"]["per_site"]["site-a"]["epsilon"]
    assert calib_alone == pytest.approx(epsilon([(3.0, 1.0, 3)], 1e-5, "rdp"))
    calib = SiteCalibration.load(state / "models" / "v3" / "calibration.json")
    assert calib.openset is not None
    assert calib.openset.to_dict() == doc["anomaly"]["scorer"]
    assert calib.class_thresholds == [doc["calibration"]["class_thresholds"][c] for c in CLASSES]
    assert (calib.temperature, calib.conformal_threshold) == (1.3, 0.85)
    assert "published federated DP anomaly model" in calib.source

    auditor = {"Authorization": f"Bearer {setup.tokens['auditor']}"}
    page = tc.get("/versions/v3", headers=auditor).text
    assert 'id="anomaly-privacy"' in page and "a second DP release per site" in page
    assert "No anomaly model published" in tc.get("/versions/v1", headers=auditor).text

    (run / FEDERATED_CALIBRATION_FILE).write_text(
        json.dumps({**doc, "anomaly": {**doc["anomaly"], "flag_rate": 2}})
    )
    from semiofed.server.registry.cards import build_card
    from semiofed.shared.errors import FormatError

    with pytest.raises(FormatError, match=r"anomaly\.flag_rate"):
        build_card(run)
